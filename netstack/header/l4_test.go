package header

import (
	"bytes"
	"testing"
)

func TestICMPv4RoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		f     ICMPv4Fields
		check func(h ICMPv4) bool
	}{
		{"echo", ICMPv4Fields{Type: ICMPv4Echo, RestOfHeader: EchoRest(0x1234, 7)},
			func(h ICMPv4) bool { return h.ID() == 0x1234 && h.Seq() == 7 && !h.IsError() }},
		{"echo reply", ICMPv4Fields{Type: ICMPv4EchoReply, RestOfHeader: EchoRest(1, 0xffff)},
			func(h ICMPv4) bool { return h.ID() == 1 && h.Seq() == 0xffff && !h.IsError() }},
		{"frag needed (RFC 1191)", ICMPv4Fields{Type: ICMPv4DstUnreachable, Code: ICMPv4FragNeeded, RestOfHeader: FragNeededRest(1400)},
			func(h ICMPv4) bool { return h.MTU() == 1400 && h.IsError() }},
		{"param problem", ICMPv4Fields{Type: ICMPv4ParamProblem, RestOfHeader: ParamProblemRest(20)},
			func(h ICMPv4) bool { return h.Pointer() == 20 && h.IsError() }},
		{"redirect", ICMPv4Fields{Type: ICMPv4Redirect, Code: 1, RestOfHeader: 0x0a010203},
			func(h ICMPv4) bool { return h.Gateway() == ip4a && h.IsError() }},
		{"time exceeded", ICMPv4Fields{Type: ICMPv4TimeExceeded, Code: ICMPv4ReassemblyTimeout},
			func(h ICMPv4) bool { return h.IsError() }},
		{"timestamp is not an error", ICMPv4Fields{Type: ICMPv4Timestamp},
			func(h ICMPv4) bool { return !h.IsError() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := make([]byte, ICMPv4MinSize+5)
			copy(b[8:], "quote")
			h := ICMPv4(b)
			h.Encode(tt.f)
			h.SetChecksum()
			c, err := CheckICMPv4(b)
			if err != nil {
				t.Fatal(err)
			}
			if c.Fields() != tt.f || c.Type() != tt.f.Type || c.Code() != tt.f.Code || c.RestOfHeader() != tt.f.RestOfHeader {
				t.Fatalf("fields %+v", c.Fields())
			}
			if !c.ChecksumValid() || string(c.Payload()) != "quote" || !tt.check(c) {
				t.Fatalf("valid %v payload %q", c.ChecksumValid(), c.Payload())
			}
			b[9] ^= 1
			if c.ChecksumValid() {
				t.Fatal("corruption not detected")
			}
		})
	}
	if _, err := CheckICMPv4(make([]byte, 7)); err != ErrTruncated {
		t.Fatalf("7 bytes: %v", err)
	}
	// RFC 792 echo with a known checksum: type 8, id 1, seq 1, no data.
	b := make([]byte, 8)
	h := ICMPv4(b)
	h.Encode(ICMPv4Fields{Type: ICMPv4Echo, RestOfHeader: EchoRest(1, 1)})
	h.SetChecksum()
	if h.Checksum() != 0xf7fd {
		t.Fatalf("echo checksum %#04x, want 0xf7fd", h.Checksum())
	}
}

func TestUDPRoundTrip(t *testing.T) {
	b := make([]byte, UDPSize+5)
	copy(b[8:], "hello")
	u := UDP(b)
	u.Encode(UDPFields{SrcPort: 1000, DstPort: 53, Length: uint16(len(b))})
	u.SetChecksum(ip4a, ip4b)
	c, err := CheckUDP(b)
	if err != nil {
		t.Fatal(err)
	}
	f := c.Fields()
	if f.SrcPort != 1000 || f.DstPort != 53 || f.Length != 13 || f.Checksum == 0 || string(c.Payload()) != "hello" {
		t.Fatalf("fields %+v payload %q", f, c.Payload())
	}
	if !c.ChecksumValid(ip4a, ip4b) || c.ChecksumValid(ip4b, ip4b) {
		t.Fatal("checksum")
	}
	again := make([]byte, UDPSize)
	UDP(again).Encode(f)
	if !bytes.Equal(again, b[:8]) {
		t.Fatal("re-encode differs")
	}
	c.SetSrcPort(40000)
	c.SetDstPort(5353)
	if c.SrcPort() != 40000 || c.DstPort() != 5353 || !c.ChecksumValid(ip4a, ip4b) {
		t.Fatal("port rewrite broke the checksum")
	}
	// RFC 768: zero checksum means none; the port setters keep it zero.
	c.Encode(UDPFields{SrcPort: 1, DstPort: 2, Length: 13})
	if !c.ChecksumValid(ip4a, ip4b) {
		t.Fatal("zero checksum must be accepted")
	}
	c.SetSrcPort(9)
	if c.Checksum() != 0 {
		t.Fatal("SetSrcPort invented a checksum")
	}
	// Trailing bytes beyond Length are not payload nor summed.
	b2 := append(bytes.Clone(b), 0xde, 0xad)
	u2 := UDP(b2)
	u2.SetChecksum(ip4a, ip4b)
	if v, _ := CheckUDP(b2); string(v.Payload()) != "hello" || !v.ChecksumValid(ip4a, ip4b) {
		t.Fatal("trailer handling")
	}
}

func TestUDPComputedZeroIsAllOnes(t *testing.T) {
	// Find a payload word that makes the sum 0xffff: RFC 768 sends 0xffff.
	b := make([]byte, 10)
	u := UDP(b)
	u.Encode(UDPFields{SrcPort: 1, DstPort: 2, Length: 10})
	rest := Fold(Checksum(b, PseudoHeaderSum(ProtoUDP, ip4a, ip4b, 10)))
	b[8], b[9] = byte(^rest>>8), byte(^rest)
	u.SetChecksum(ip4a, ip4b)
	if u.Checksum() != 0xffff || !u.ChecksumValid(ip4a, ip4b) {
		t.Fatalf("checksum %#04x", u.Checksum())
	}
}

func TestCheckUDPMalformed(t *testing.T) {
	mk := func(l uint16, n int) []byte {
		b := make([]byte, n)
		UDP(b[:8]).Encode(UDPFields{Length: l})
		return b
	}
	tests := []struct {
		name string
		b    []byte
		err  error
	}{
		{"7 bytes", make([]byte, 7), ErrTruncated},
		{"length 7", mk(7, 20), ErrBadLength},
		{"length 0", mk(0, 20), ErrBadLength},
		{"length past buffer", mk(21, 20), ErrBadLength},
		{"ok exact", mk(20, 20), nil},
		{"ok shorter than buffer", mk(8, 20), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := CheckUDP(tt.b); err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
}
