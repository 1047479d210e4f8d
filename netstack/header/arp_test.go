package header

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestARPRoundTrip(t *testing.T) {
	f := ARPFields{Op: ARPReply, SenderMAC: MAC{2, 0, 0, 0, 0, 1}, SenderIP: ip4a,
		TargetMAC: MAC{2, 0, 0, 0, 0, 2}, TargetIP: ip4b}
	b := make([]byte, ARPSize)
	ARP(b).Encode(f)
	want := []byte{0, 1, 8, 0, 6, 4, 0, 2, 2, 0, 0, 0, 0, 1, 10, 1, 2, 3, 2, 0, 0, 0, 0, 2, 192, 168, 100, 200}
	if !bytes.Equal(b, want) {
		t.Fatalf("wire % x", b)
	}
	a, err := CheckARP(b)
	if err != nil {
		t.Fatal(err)
	}
	if a.Fields() != f || a.Op() != ARPReply || a.SenderMAC() != f.SenderMAC || a.SenderIP() != ip4a ||
		a.TargetMAC() != f.TargetMAC || a.TargetIP() != ip4b {
		t.Fatalf("decoded %+v", a.Fields())
	}
	// A zero address encodes as 0.0.0.0 rather than panicking.
	ARP(b).Encode(ARPFields{Op: ARPRequest})
	if a.SenderIP() != netip.IPv4Unspecified() {
		t.Fatalf("zero addr -> %v", a.SenderIP())
	}
}

func TestCheckARPMalformed(t *testing.T) {
	good := make([]byte, ARPSize)
	ARP(good).Encode(ARPFields{Op: ARPRequest, SenderIP: ip4a, TargetIP: ip4b})
	mod := func(i int, v byte) []byte { b := bytes.Clone(good); b[i] = v; return b }
	tests := []struct {
		name string
		b    []byte
		err  error
	}{
		{"truncated", good[:27], ErrTruncated},
		{"empty", nil, ErrTruncated},
		{"htype 6 (IEEE 802)", mod(1, 6), ErrBadARPFormat},
		{"ptype IPv6", mod(2, 0x86), ErrBadARPFormat},
		{"hlen 8", mod(4, 8), ErrBadARPFormat},
		{"plen 16", mod(5, 16), ErrBadARPFormat},
		{"ok", good, nil},
		{"ok with padding", append(bytes.Clone(good), make([]byte, 18)...), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := CheckARP(tt.b); err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
}
