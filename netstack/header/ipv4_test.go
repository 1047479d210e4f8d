package header

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func encodeIPv4(t testing.TB, f IPv4Fields, payload []byte) []byte {
	t.Helper()
	hl := IPv4HeaderLen(len(f.Options))
	b := make([]byte, hl+len(payload))
	copy(b[hl:], payload)
	if f.TotalLen == 0 {
		f.TotalLen = uint16(len(b))
	}
	IPv4(b).Encode(f)
	return b
}

func TestIPv4RoundTrip(t *testing.T) {
	tests := []struct {
		name string
		f    IPv4Fields
	}{
		{"plain", IPv4Fields{TOS: 0x10, ID: 0x1234, DF: true, TTL: 64, Protocol: ProtoTCP, Src: ip4a, Dst: ip4b}},
		{"fragment", IPv4Fields{ID: 7, MF: true, FragOffset: 1480, TTL: 1, Protocol: ProtoUDP, Src: ip4a, Dst: ip4b}},
		{"last fragment", IPv4Fields{ID: 7, FragOffset: 65528, TTL: 255, Protocol: ProtoICMP, Src: ip4b, Dst: ip4a}},
		{"router alert", IPv4Fields{TTL: 1, Protocol: 2, Src: ip4a, Dst: ip4b, Options: []byte{148, 4, 0, 0}}},
		{"record route", IPv4Fields{TTL: 9, Protocol: ProtoUDP, Src: ip4a, Dst: ip4b,
			Options: []byte{IPv4OptNOP, IPv4OptRR, 11, 4, 1, 2, 3, 4, 0, 0, 0, 0, IPv4OptEOL, 0, 0, 0}}},
		{"40 bytes of options", IPv4Fields{TTL: 9, Src: ip4a, Dst: ip4b, Options: append([]byte{7, 39, 4}, make([]byte, 37)...)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := encodeIPv4(t, tt.f, []byte("payload"))
			h, err := CheckIPv4(b)
			if err != nil {
				t.Fatal(err)
			}
			got := h.Fields()
			want := tt.f
			want.TotalLen = uint16(len(b))
			if !bytes.Equal(got.Options, want.Options) {
				t.Fatalf("options % x, want % x", got.Options, want.Options)
			}
			got.Options, want.Options = nil, nil
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("fields %+v\nwant   %+v", got, want)
			}
			if !h.ChecksumValid() {
				t.Fatal("checksum invalid after Encode")
			}
			if string(h.Payload()) != "payload" || h.HeaderLen() != IPv4HeaderLen(len(tt.f.Options)) {
				t.Fatalf("payload %q hl %d", h.Payload(), h.HeaderLen())
			}
			if h.IsFragment() != (tt.f.MF || tt.f.FragOffset != 0) {
				t.Fatal("IsFragment")
			}
			wantFlags := uint8(0)
			if tt.f.DF {
				wantFlags |= IPv4FlagDF
			}
			if tt.f.MF {
				wantFlags |= IPv4FlagMF
			}
			if h.Flags() != wantFlags {
				t.Fatalf("Flags = %b", h.Flags())
			}
			// Encode(decode(x)) reproduces the header bytes.
			again := make([]byte, h.HeaderLen())
			IPv4(again).Encode(h.Fields())
			if !bytes.Equal(again, b[:h.HeaderLen()]) {
				t.Fatalf("re-encode differs:\n% x\n% x", again, b[:h.HeaderLen()])
			}
		})
	}
}

func TestIPv4Wire(t *testing.T) {
	// Wikipedia's example header, checksum 0xb861.
	want := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
		0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	b := make([]byte, 20)
	IPv4(b).Encode(IPv4Fields{TotalLen: 0x73, DF: true, TTL: 64, Protocol: ProtoUDP,
		Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("192.168.0.199")})
	if !bytes.Equal(b, want) {
		t.Fatalf("got  % x\nwant % x", b, want)
	}
}

func TestCheckIPv4Malformed(t *testing.T) {
	good := encodeIPv4(t, IPv4Fields{TTL: 64, Protocol: ProtoUDP, Src: ip4a, Dst: ip4b}, make([]byte, 8))
	withOpt := func(opts ...byte) []byte {
		b := make([]byte, 20+len(opts))
		copy(b, good[:20])
		copy(b[20:], opts)
		b[0] = 0x40 | byte(len(b)/4)
		b[2], b[3] = 0, byte(len(b))
		return b
	}
	mod := func(i int, v byte) []byte { b := bytes.Clone(good); b[i] = v; return b }
	tests := []struct {
		name string
		b    []byte
		err  error
	}{
		{"empty", nil, ErrTruncated},
		{"19 bytes", good[:19], ErrTruncated},
		{"version 6", mod(0, 0x65), ErrBadVersion},
		{"version 0", mod(0, 0x05), ErrBadVersion},
		{"IHL 4", mod(0, 0x44), ErrBadHeaderLen},
		{"IHL 0", mod(0, 0x40), ErrBadHeaderLen},
		{"IHL past buffer", mod(0, 0x4f), ErrTruncated},
		{"total length past buffer", mod(3, 29), ErrBadTotalLen},
		{"total length below header", mod(3, 19), ErrBadTotalLen},
		{"total length 0", func() []byte { b := mod(3, 0); b[2] = 0; return b }(), ErrBadTotalLen},
		{"option length 0", withOpt(7, 0, 0, 0), ErrBadOption},
		{"option length 1", withOpt(7, 1, 0, 0), ErrBadOption},
		{"option overruns", withOpt(1, 7, 5, 0), ErrBadOption},
		{"option type without length", withOpt(1, 1, 1, 7), ErrBadOption},
		{"ok: NOP EOL garbage", withOpt(1, 0, 0xff, 0xff), nil},
		{"ok: exact fit", withOpt(148, 4, 0, 0), nil},
		{"ok", good, nil},
		{"ok with Ethernet padding", append(bytes.Clone(good), 0, 0, 0, 0), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := CheckIPv4(tt.b)
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err == nil && len(h.Payload()) != h.TotalLen()-h.HeaderLen() {
				t.Fatalf("payload %d bytes", len(h.Payload()))
			}
		})
	}
}

func TestIPv4Setters(t *testing.T) {
	b := encodeIPv4(t, IPv4Fields{TTL: 64, ID: 1, Protocol: ProtoTCP, Src: ip4a, Dst: ip4b, DF: true}, make([]byte, 30))
	h, err := CheckIPv4(b)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name  string
		set   func()
		check func() bool
	}{
		{"TTL", func() { h.SetTTL(63) }, func() bool { return h.TTL() == 63 }},
		{"TTL 0", func() { h.SetTTL(0) }, func() bool { return h.TTL() == 0 }},
		{"TOS", func() { h.SetTOS(0xb8) }, func() bool { return h.TOS() == 0xb8 }},
		{"ID", func() { h.SetID(0xbeef) }, func() bool { return h.ID() == 0xbeef }},
		{"total len", func() { h.SetTotalLen(40) }, func() bool { return h.TotalLen() == 40 && len(h.Payload()) == 20 }},
		{"frag", func() { h.SetFragOffset(1480, true) }, func() bool { return h.FragOffset() == 1480 && h.MF() && h.DF() }},
		{"frag clear", func() { h.SetFragOffset(0, false) }, func() bool { return h.FragOffset() == 0 && !h.MF() && h.DF() }},
		{"DF off", func() { h.SetDF(false) }, func() bool { return !h.DF() }},
		{"src", func() { h.SetSrc(netip.MustParseAddr("100.64.0.1")) }, func() bool { return h.Src() == netip.MustParseAddr("100.64.0.1") }},
		{"dst", func() { h.SetDst(netip.MustParseAddr("255.255.255.255")) }, func() bool { return h.Dst() == netip.MustParseAddr("255.255.255.255") }},
		{"proto unchanged", func() {}, func() bool { return h.Protocol() == ProtoTCP }},
	}
	for _, s := range steps {
		s.set()
		if !s.check() {
			t.Fatalf("%s: value not stored: %+v", s.name, h.Fields())
		}
		if !h.ChecksumValid() {
			t.Fatalf("%s: incremental update broke the checksum", s.name)
		}
		stored := h.Checksum()
		h.SetChecksum()
		if h.Checksum() != stored {
			t.Fatalf("%s: incremental %#04x != full %#04x", s.name, stored, h.Checksum())
		}
	}
	// SetTotalLen past the view: Payload clamps instead of panicking.
	h.SetTotalLen(5000)
	if len(h.Payload()) != len(b)-20 {
		t.Fatal("Payload not clamped")
	}
	h.SetTotalLen(3)
	if len(h.Payload()) != 0 {
		t.Fatal("Payload below header not empty")
	}
}

func TestIPv4Options(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want []IPv4Option
		err  error
	}{
		{"empty", nil, nil, nil},
		{"NOPs and EOL", []byte{1, 1, 0, 0}, nil, nil},
		{"after EOL ignored", []byte{0, 7, 0, 9}, nil, nil},
		{"router alert", []byte{148, 4, 0, 0}, []IPv4Option{{148, []byte{0, 0}}}, nil},
		{"two", []byte{1, 7, 3, 9, 131, 3, 5, 0}, []IPv4Option{{7, []byte{9}}, {131, []byte{5}}}, nil},
		{"length 2, no data", []byte{68, 2, 0, 0}, []IPv4Option{{68, []byte{}}}, nil},
		{"length 0", []byte{7, 0, 0, 0}, nil, ErrBadOption},
		{"length 1", []byte{7, 1, 0, 0}, nil, ErrBadOption},
		{"overrun", []byte{7, 5, 0, 0}, nil, ErrBadOption},
		{"no length byte", []byte{1, 1, 1, 7}, nil, ErrBadOption},
		{"more than 40 bytes", make([]byte, 44), nil, ErrBadOption},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIPv4Options(tt.b)
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i].Type != tt.want[i].Type || !bytes.Equal(got[i].Data, tt.want[i].Data) {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
	// The walker stops reporting when fn returns false but still validates.
	n := 0
	err := WalkIPv4Options([]byte{7, 3, 0, 7, 3, 0, 7, 0}, func(uint8, []byte) bool { n++; return false })
	if n != 1 || !errors.Is(err, ErrBadOption) {
		t.Fatalf("n=%d err=%v", n, err)
	}
	opts := []byte{1, 7, 3, 9, 131, 3, 5, 0}
	seen := 0
	count := func(uint8, []byte) bool { seen++; return true }
	if a := testing.AllocsPerRun(100, func() {
		_ = WalkIPv4Options(opts, count)
	}); a != 0 || seen == 0 {
		t.Fatalf("walker allocates %v", a)
	}
}

func TestIPv4EncodeOptionsTooLongPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	IPv4(make([]byte, 64)).Encode(IPv4Fields{Options: make([]byte, 41)})
}
