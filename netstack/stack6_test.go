package netstack_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// A NIC's first IPv6 address brings its link-local address (RFC 4291
// §2.1, §2.5.6: fe80::/64 with the modified EUI-64 of its MAC), both
// become local with connected routes, and the NIC speaks IPv6.
func TestAddAddress6(t *testing.T) {
	s, _ := newStack(t)
	mac := header.MAC{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	id := addNIC(t, s, netstack.NICConfig{MAC: mac})
	if s.FIB().HasIPv6(id) {
		t.Fatal("IPv6 before any IPv6 address")
	}
	if err := s.AddAddress(id, netip.MustParsePrefix("fd00:1::1/64")); err != nil {
		t.Fatal(err)
	}
	ll := netip.MustParseAddr("fe80::11:22ff:fe33:4455")
	nic := s.Devices().ByID(id)
	if netstack.LinkLocal(nic) != ll || !nic.HasAddress(ll) || !s.FIB().IsLocal(ll) || !s.FIB().IsLocal(netip.MustParseAddr("fd00:1::1")) {
		t.Fatalf("addresses %v", nic.Addresses())
	}
	if !hasRoute(s, "fe80::/64", id) || !hasRoute(s, "fd00:1::/64", id) || !s.FIB().HasIPv6(id) {
		t.Fatalf("routes %v", s.FIB().Routes())
	}
	if err := s.AddAddress(id, netip.MustParsePrefix("fd00:2::1/128")); err != nil {
		t.Fatal(err)
	}
	if n := len(nic.Addresses()); n != 3 {
		t.Fatalf("a second IPv6 address added %d addresses", n-2)
	}
	if err := s.RemoveAddress(id, netip.MustParsePrefix("fd00:1::1/64")); err != nil {
		t.Fatal(err)
	}
	if hasRoute(s, "fd00:1::/64", id) || s.FIB().IsLocal(netip.MustParseAddr("fd00:1::1")) {
		t.Fatal("RemoveAddress left state")
	}
	// A link-local first address is the NIC's link-local address.
	id2 := addNIC(t, s, netstack.NICConfig{})
	if err := s.AddAddress(id2, netip.MustParsePrefix("fe80::1/64")); err != nil {
		t.Fatal(err)
	}
	if as := s.Devices().ByID(id2).Addresses(); len(as) != 1 {
		t.Fatalf("addresses %v", as)
	}
	if err := s.RemoveNIC(id); err != nil {
		t.Fatal(err)
	}
	if s.FIB().HasIPv6(id) || s.FIB().IsLocal(ll) || slices.ContainsFunc(s.FIB().Routes(), func(r route.Route) bool { return r.NIC == id }) {
		t.Fatal("RemoveNIC left IPv6 state")
	}
}

// An IPv4-only NIC takes no part in IPv6: frames are dropped as with
// disable_ipv6, Neighbor Solicitations are not answered, nothing is sent.
func TestIPv4OnlyNICIgnoresIPv6(t *testing.T) {
	a, b := stacktest.Pair(t)
	before := b.Stats()
	sn := header.SolicitedNodeAddr(netip.MustParseAddr("fd00::2"))
	ns := stacktest.Frame().Eth(a.NIC().MAC(), header.IPv6MulticastMAC(sn)).IPv6Addr(netip.MustParseAddr("fe80::1"), sn).
		NS(netip.MustParseAddr("fd00::2"), a.NIC().MAC()).Bytes()
	a.NIC().Xmit(buf.FromBytes(buf.MaxHeadroom, ns))
	stacktest.WaitFor(t, "B to drop the frame", func() bool { return b.Stats().IP6.InDiscards == 1 })
	st := b.Stats()
	if st.Drops["IPV6DISABLED"] != 1 || st.Neigh.NDPOutAdverts != 0 || st.NICs[0].TxPackets != before.NICs[0].TxPackets {
		t.Fatalf("B answered or sent: %+v", st.Neigh)
	}
}
