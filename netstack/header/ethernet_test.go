package header

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestMAC(t *testing.T) {
	m, err := ParseMAC("02:AB:cd:00:10:ff")
	if err != nil {
		t.Fatal(err)
	}
	if m != (MAC{0x02, 0xab, 0xcd, 0x00, 0x10, 0xff}) || m.String() != "02:ab:cd:00:10:ff" {
		t.Fatalf("ParseMAC = %v", m)
	}
	if m2, err := ParseMAC("02-ab-cd-00-10-ff"); err != nil || m2 != m {
		t.Fatalf("dash form: %v %v", m2, err)
	}
	for _, bad := range []string{"", "02:ab:cd:00:10", "02:ab:cd:00:10:fg", "02:ab-cd:00:10:ff", "02.ab.cd.00.10.ff", "02:ab:cd:00:10:ff:"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) accepted", bad)
		}
	}
	tests := []struct {
		m               MAC
		bcast, mcast, z bool
	}{
		{BroadcastMAC, true, true, false},
		{MAC{0x01, 0x00, 0x5e, 0, 0, 1}, false, true, false},
		{MAC{0x02, 0, 0, 0, 0, 1}, false, false, false},
		{MAC{}, false, false, true},
	}
	for _, tt := range tests {
		if tt.m.IsBroadcast() != tt.bcast || tt.m.IsMulticast() != tt.mcast || tt.m.IsZero() != tt.z {
			t.Errorf("%v: broadcast %v multicast %v zero %v", tt.m, tt.m.IsBroadcast(), tt.m.IsMulticast(), tt.m.IsZero())
		}
	}
	if BroadcastMAC.String() != "ff:ff:ff:ff:ff:ff" {
		t.Error(BroadcastMAC.String())
	}
}

func TestEthernetRoundTrip(t *testing.T) {
	f := EthernetFields{Dst: MAC{1, 2, 3, 4, 5, 6}, Src: MAC{7, 8, 9, 10, 11, 12}, Type: EtherTypeARP}
	b := make([]byte, EthernetMinSize+3)
	copy(b[EthernetMinSize:], "abc")
	Ethernet(b).Encode(f)
	e, err := CheckEthernet(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Fields() != f || e.Dst() != f.Dst || e.Src() != f.Src || e.Type() != f.Type || string(e.Payload()) != "abc" {
		t.Fatalf("decoded %+v payload %q", e.Fields(), e.Payload())
	}
	want := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x06}
	if !bytes.Equal(b[:14], want) {
		t.Fatalf("wire % x", b[:14])
	}
}

func TestCheckEthernetMalformed(t *testing.T) {
	ok := make([]byte, 14)
	ok[12], ok[13] = 0x08, 0x00
	tagged := bytes.Clone(ok)
	tagged[12], tagged[13] = 0x81, 0x00
	qinq := bytes.Clone(ok)
	qinq[12], qinq[13] = 0x88, 0xa8
	tests := []struct {
		name string
		b    []byte
		err  error
	}{
		{"empty", nil, ErrTruncated},
		{"13 bytes", ok[:13], ErrTruncated},
		{"802.1Q", tagged, ErrVLANTagged},
		{"802.1ad", qinq, ErrVLANTagged},
		{"ok header only", ok, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := CheckEthernet(tt.b); err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
}

var (
	ip4a = netip.MustParseAddr("10.1.2.3")
	ip4b = netip.MustParseAddr("192.168.100.200")
)
