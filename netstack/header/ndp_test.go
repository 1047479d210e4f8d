package header

import (
	"net/netip"
	"reflect"
	"testing"
)

var (
	ndpMAC  = MAC{0x02, 0, 0, 0, 0, 0x0a}
	ndpMAC2 = MAC{0x02, 0, 0, 0, 0, 0x0b}
)

func TestNDPNeighborSolicitRoundTrip(t *testing.T) {
	f := NDPNeighborSolicitFields{Target: ip6b, Options: NDPOptionFields{SourceLinkAddr: ndpMAC}}
	m := make([]byte, f.Len())
	NDPNeighborSolicit(m).Encode(&f)
	ICMPv6(m).SetChecksum(ip6a, SolicitedNodeAddr(ip6b))
	if len(m) != 32 || m[0] != ICMPv6NeighborSolicit || m[24] != NDPOptSourceLinkAddr || m[25] != 1 {
		t.Fatalf("% x", m)
	}
	v, err := CheckNDPNeighborSolicit(m)
	if err != nil {
		t.Fatal(err)
	}
	if g := v.Fields(); !reflect.DeepEqual(g, f) {
		t.Fatalf("%+v, want %+v", g, f)
	}
	if sll, ok := v.Options().SourceLinkAddr(); !ok || sll != ndpMAC {
		t.Fatal("SLLAO")
	}
	if _, ok := v.Options().TargetLinkAddr(); ok {
		t.Fatal("phantom TLLAO")
	}
	if !ICMPv6(m).ChecksumValid(ip6a, SolicitedNodeAddr(ip6b)) {
		t.Fatal("checksum")
	}
}

func TestNDPNeighborAdvertFlags(t *testing.T) {
	for _, f := range []NDPNeighborAdvertFields{
		{Router: true, Solicited: true, Override: true, Target: ip6a, Options: NDPOptionFields{TargetLinkAddr: ndpMAC}},
		{Solicited: true, Target: ip6a},
		{Override: true, Target: ip6b, Options: NDPOptionFields{TargetLinkAddr: ndpMAC2}},
	} {
		m := make([]byte, f.Len())
		NDPNeighborAdvert(m).Encode(&f)
		v, err := CheckNDPNeighborAdvert(m)
		if err != nil {
			t.Fatal(err)
		}
		if g := v.Fields(); !reflect.DeepEqual(g, f) {
			t.Fatalf("%+v, want %+v", g, f)
		}
	}
}

func TestNDPRouterAdvertRoundTrip(t *testing.T) {
	f := NDPRouterAdvertFields{
		CurHopLimit: 64, Other: true, RouterLifetime: 1800, ReachableTime: 30000, RetransTimer: 1000,
		Options: NDPOptionFields{
			SourceLinkAddr: ndpMAC, MTU: 1500,
			Prefixes: []NDPPrefixInfo{{Prefix: netip.MustParsePrefix("fd00:1::/64"), OnLink: true, Autonomous: true,
				ValidLifetime: 86400, PreferredLifetime: 14400}},
			RDNSS: []netip.Addr{ip6a, ip6b}, RDNSSLifetime: 600,
		},
	}
	m := make([]byte, f.Len())
	NDPRouterAdvert(m).Encode(&f)
	// 16 fixed + 8 SLLAO + 8 MTU + 32 prefix + 8+32 RDNSS.
	if len(m) != 104 {
		t.Fatalf("len %d", len(m))
	}
	v, err := CheckNDPRouterAdvert(m)
	if err != nil {
		t.Fatal(err)
	}
	if g := v.Fields(); !reflect.DeepEqual(g, f) {
		t.Fatalf("%+v\nwant %+v", g, f)
	}
}

// RFC 4861 §4.6: an option of length zero, or one running past the
// message, makes the message invalid.
func TestNDPOptionsMalformed(t *testing.T) {
	base := make([]byte, NDPNeighborSolicitSize)
	ICMPv6(base).Encode(ICMPv6Fields{Type: ICMPv6NeighborSolicit})
	for name, opts := range map[string][]byte{
		"zero length": {NDPOptSourceLinkAddr, 0, 1, 2, 3, 4, 5, 6},
		"overrun":     {NDPOptSourceLinkAddr, 2, 1, 2, 3, 4, 5, 6},
		"lone octet":  {NDPOptSourceLinkAddr},
	} {
		if _, err := CheckNDPNeighborSolicit(append(base[:len(base):len(base)], opts...)); err != ErrBadOption {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := CheckNDPNeighborSolicit(base[:23]); err != ErrTruncated {
		t.Fatalf("short NS: %v", err)
	}
	if _, err := CheckNDPRouterSolicit(base[:8]); err != nil {
		t.Fatalf("RS without options: %v", err)
	}
	r := make([]byte, NDPRedirectSize)
	copy(r[8:], ip6a.AsSlice())
	copy(r[24:], ip6b.AsSlice())
	rd, err := CheckNDPRedirect(r)
	if err != nil || rd.Target() != ip6a || rd.Destination() != ip6b || len(rd.Options()) != 0 {
		t.Fatalf("redirect: %v", err)
	}
}
