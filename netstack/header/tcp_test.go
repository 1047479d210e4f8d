package header

import (
	"bytes"
	"reflect"
	"testing"
)

func TestTCPFlagsString(t *testing.T) {
	tests := []struct {
		f    TCPFlags
		want string
	}{
		{0, "none"},
		{SYN, "SYN"},
		{SYN | ACK, "SYN|ACK"},
		{FIN | PSH | ACK, "FIN|PSH|ACK"},
		{0xff, "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"},
	}
	for _, tt := range tests {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("%#x: %q, want %q", uint8(tt.f), got, tt.want)
		}
	}
}

func TestTCPRoundTrip(t *testing.T) {
	opts := make([]byte, TCPMaxOptions)
	n := EncodeTCPOptions(opts, &TCPOptions{HasMSS: true, MSS: 1460, SACKPermitted: true, HasTS: true, TSVal: 9, HasWScale: true, WScale: 7})
	tests := []struct {
		name string
		f    TCPFields
	}{
		{"bare ACK", TCPFields{SrcPort: 80, DstPort: 40000, Seq: 1, Ack: 0xfffffffe, Flags: ACK, Window: 512}},
		{"SYN with options", TCPFields{SrcPort: 40000, DstPort: 80, Seq: 0xdeadbeef, Flags: SYN | ECE | CWR, Window: 64240, Options: opts[:n]}},
		{"URG", TCPFields{SrcPort: 1, DstPort: 2, Flags: URG | ACK | PSH, Urgent: 3}},
		{"odd option length padded", TCPFields{SrcPort: 1, DstPort: 2, Flags: ACK, Options: []byte{1, 3, 3, 7}[:4]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hl := TCPHeaderLen(len(tt.f.Options))
			b := make([]byte, hl+4)
			copy(b[hl:], "data")
			h := TCP(b)
			h.Encode(tt.f)
			if h.Checksum() != 0 {
				t.Fatal("Encode must leave the checksum 0")
			}
			h.SetChecksum(ip4a, ip4b)
			c, err := CheckTCP(b)
			if err != nil {
				t.Fatal(err)
			}
			got := c.Fields()
			if !bytes.Equal(got.Options, tt.f.Options) {
				t.Fatalf("options % x", got.Options)
			}
			got.Options, tt.f.Options = nil, nil
			if !reflect.DeepEqual(got, tt.f) {
				t.Fatalf("fields %+v\nwant   %+v", got, tt.f)
			}
			if c.DataOffset() != hl || string(c.Payload()) != "data" || !c.ChecksumValid(ip4a, ip4b) || c.ChecksumValid(ip4a, ip4a) {
				t.Fatalf("offset %d payload %q", c.DataOffset(), c.Payload())
			}
			again := make([]byte, hl)
			TCP(again).Encode(c.Fields())
			again[16], again[17] = b[16], b[17]
			if !bytes.Equal(again, b[:hl]) {
				t.Fatal("re-encode differs")
			}
			c.SetSrcPort(12345)
			c.SetDstPort(443)
			if c.SrcPort() != 12345 || c.DstPort() != 443 || !c.ChecksumValid(ip4a, ip4b) {
				t.Fatal("port rewrite broke the checksum")
			}
		})
	}
}

func TestCheckTCPMalformed(t *testing.T) {
	mk := func(doff byte, n int, opts ...byte) []byte {
		b := make([]byte, n)
		b[12] = doff << 4
		copy(b[20:], opts)
		return b
	}
	tests := []struct {
		name string
		b    []byte
		err  error
	}{
		{"19 bytes", make([]byte, 19), ErrTruncated},
		{"data offset 4", mk(4, 40), ErrBadHeaderLen},
		{"data offset 0", mk(0, 40), ErrBadHeaderLen},
		{"data offset past buffer", mk(6, 23), ErrTruncated},
		{"data offset 15 past buffer", mk(15, 59), ErrTruncated},
		{"option length 0", mk(6, 24, 2, 0, 0, 0), ErrBadOption},
		{"option length 1", mk(6, 24, 30, 1, 0, 0), ErrBadOption},
		{"option overruns header", mk(6, 40, 30, 6, 0, 0), ErrBadOption},
		{"kind without length", mk(6, 24, 1, 1, 1, 30), ErrBadOption},
		{"MSS length 3", mk(6, 24, 2, 3, 0, 0), ErrBadOption},
		{"ok", mk(5, 20), nil},
		{"ok with data", mk(5, 100), nil},
		{"ok unknown option", mk(6, 24, 30, 4, 9, 9), nil},
		{"ok EOL then garbage", mk(6, 24, 0, 0xff, 0xff, 0xff), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := CheckTCP(tt.b); err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
}

func TestParseTCPOptions(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want TCPOptions
		err  error
	}{
		{"empty", nil, TCPOptions{}, nil},
		{"MSS", []byte{2, 4, 0x05, 0xb4}, TCPOptions{MSS: 1460, HasMSS: true}, nil},
		{"Linux SYN", []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 3, 3, 7},
			TCPOptions{MSS: 1460, HasMSS: true, SACKPermitted: true, HasTS: true, TSVal: 1, TSEcr: 2, WScale: 7, HasWScale: true}, nil},
		{"window scale 15 clamps to 14 (RFC 7323 §2.3)", []byte{3, 3, 15, 0}, TCPOptions{WScale: 14, HasWScale: true}, nil},
		{"SACK two blocks", []byte{1, 1, 5, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40},
			TCPOptions{NumSACK: 2, SACKBlocks: [4]SACKBlock{{10, 20}, {30, 40}}}, nil},
		{"SACK four blocks", append([]byte{1, 1, 5, 34}, make([]byte, 32)...), TCPOptions{NumSACK: 4}, nil},
		{"unknown skipped", []byte{254, 6, 1, 2, 3, 4, 2, 4, 1, 0}, TCPOptions{MSS: 256, HasMSS: true}, nil},
		{"EOL stops", []byte{0, 2, 4, 1, 0}, TCPOptions{}, nil},
		{"length 0", []byte{2, 0, 0, 0}, TCPOptions{}, ErrBadOption},
		{"length 1", []byte{99, 1, 0, 0}, TCPOptions{}, ErrBadOption},
		{"overrun", []byte{99, 5, 0, 0}, TCPOptions{}, ErrBadOption},
		{"no length byte", []byte{1, 1, 1, 8}, TCPOptions{}, ErrBadOption},
		{"MSS length 5", []byte{2, 5, 0, 0, 0}, TCPOptions{}, ErrBadOption},
		{"WS length 4", []byte{3, 4, 0, 0}, TCPOptions{}, ErrBadOption},
		{"SACK-perm length 3", []byte{4, 3, 0, 0}, TCPOptions{}, ErrBadOption},
		{"TS length 8", []byte{8, 8, 0, 0, 0, 0, 0, 0}, TCPOptions{}, ErrBadOption},
		{"SACK length 2", []byte{5, 2, 0, 0}, TCPOptions{}, ErrBadOption},
		{"SACK length 11", append([]byte{5, 11}, make([]byte, 10)...), TCPOptions{}, ErrBadOption},
		{"more than 40 bytes", make([]byte, 44), TCPOptions{}, ErrBadOption},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTCPOptions(tt.b)
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
	b := []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 3, 3, 7, 1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	if a := testing.AllocsPerRun(100, func() { _, _ = ParseTCPOptions(b) }); a != 0 {
		t.Fatalf("ParseTCPOptions allocates %v", a)
	}
}

func TestEncodeTCPOptions(t *testing.T) {
	blocks := [4]SACKBlock{{1, 2}, {3, 4}, {5, 6}, {7, 8}}
	tests := []struct {
		name      string
		o         TCPOptions
		want      []byte // nil: check length and round trip only
		wantLen   int
		wantSACKs int
	}{
		{"none", TCPOptions{}, []byte{}, 0, 0},
		{"MSS", TCPOptions{HasMSS: true, MSS: 536}, []byte{2, 4, 2, 0x18}, 4, 0},
		{"Linux SYN layout", TCPOptions{HasMSS: true, MSS: 1460, SACKPermitted: true, HasTS: true, TSVal: 1, TSEcr: 2, HasWScale: true, WScale: 7},
			[]byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 3, 3, 7}, 20, 0},
		{"TS only", TCPOptions{HasTS: true, TSVal: 5, TSEcr: 6}, []byte{1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6}, 12, 0},
		{"SACK-perm only", TCPOptions{SACKPermitted: true}, []byte{1, 1, 4, 2}, 4, 0},
		{"WS only", TCPOptions{HasWScale: true, WScale: 14}, []byte{1, 3, 3, 14}, 4, 0},
		{"4 SACK blocks fit alone", TCPOptions{NumSACK: 4, SACKBlocks: blocks}, nil, 36, 4},
		{"3 SACK blocks beside TS", TCPOptions{HasTS: true, NumSACK: 4, SACKBlocks: blocks}, nil, 40, 3},
		{"NumSACK out of range clamps", TCPOptions{NumSACK: 9, SACKBlocks: blocks}, nil, 36, 4},
		{"negative NumSACK", TCPOptions{NumSACK: -1}, []byte{}, 0, 0},
		{"everything: SACKs squeezed", TCPOptions{HasMSS: true, MSS: 1, SACKPermitted: true, HasTS: true, HasWScale: true, NumSACK: 4, SACKBlocks: blocks}, nil, 40, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, TCPMaxOptions)
			n := EncodeTCPOptions(dst, &tt.o)
			if n != tt.wantLen || n%4 != 0 || n > TCPMaxOptions || TCPOptionsLen(&tt.o) != n {
				t.Fatalf("length %d, want %d", n, tt.wantLen)
			}
			if tt.want != nil && !bytes.Equal(dst[:n], tt.want) {
				t.Fatalf("got  % x\nwant % x", dst[:n], tt.want)
			}
			got, err := ParseTCPOptions(dst[:n])
			if err != nil {
				t.Fatal(err)
			}
			want := tt.o
			want.NumSACK = tt.wantSACKs
			want.SACKBlocks = [4]SACKBlock{}
			copy(want.SACKBlocks[:], tt.o.SACKBlocks[:tt.wantSACKs])
			if got != want {
				t.Fatalf("round trip %+v\nwant       %+v", got, want)
			}
		})
	}
	o := TCPOptions{HasMSS: true, MSS: 1460, HasTS: true, NumSACK: 2, SACKBlocks: blocks}
	dst := make([]byte, TCPMaxOptions)
	if a := testing.AllocsPerRun(100, func() { EncodeTCPOptions(dst, &o) }); a != 0 {
		t.Fatalf("EncodeTCPOptions allocates %v", a)
	}
}
