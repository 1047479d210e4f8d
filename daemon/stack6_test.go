package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// req6 is req with the IPv6 side of a dual-stack pod (fd00:1::last/64,
// gateway fd00:1::1).
func req6(ctr, network string, last byte) api.AttachRequest {
	r := req(ctr, network, last)
	r.IP6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 15: last}), 64)
	r.Gateway6 = netip.MustParseAddr("fd00:1::1")
	r.Range6 = netip.MustParsePrefix("fd00:1::/64")
	return r
}

// endStack6 adds the IPv6 side to an endStack: addr and, when gw is
// valid, the IPv6 default route via gw.
func endStack6(t *testing.T, s *netstack.Stack, addr netip.Prefix, gw netip.Addr) {
	t.Helper()
	if err := s.AddAddress(1, addr); err != nil {
		t.Fatal(err)
	}
	if gw.IsValid() {
		if err := s.AddRoute(route.Route{Dst: netip.MustParsePrefix("::/0"), Gateway: gw, NIC: 1, Type: route.Unicast}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStackAttacherDualStack attaches two dual-stack pods over pipes and
// checks, in IPv6, what TestStackAttacherWiring checks in IPv4: NDP for
// the gateway, pod to pod inside the stack, pod to host and host to pod
// through the uplink (its IPv6 set up once, by the first dual-stack pod),
// the host route of the IPv6 range, strict rp_filter against a pod
// sourcing another pod's IPv6 address, proxy NDP never answering for the
// pod's own address, and a detach that removes the IPv6 host route with
// the last pod of the range.
func TestStackAttacherDualStack(t *testing.T) {
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkSubnet6: DefaultUplinkSubnet6,
		UplinkHostIfName: "up", Logger: discardLogger()}, k)
	t.Cleanup(func() { a.Close() })
	gw, gw6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1::1")
	rng6 := netip.MustParsePrefix("fd00:1::/64")
	hostAddr6, stackAddr6, _ := UplinkAddrs6(DefaultUplinkSubnet6)

	attach := func(ctr string, last byte, r api.AttachRequest) (*api.Attachment, *netstack.Stack) {
		t.Helper()
		r.PodMAC = podMAC(last).String()
		at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
		if err := a.Attach(at); err != nil {
			t.Fatalf("attach %s: %v", ctr, err)
		}
		s := endStack(t, k.peer(r.HostIfName), podMAC(last), r.IP, gw)
		if r.IP6.IsValid() {
			endStack6(t, s, r.IP6, gw6)
		}
		return at, s
	}
	// An IPv4-only pod first: the uplink stays IPv4-only.
	at4, _ := attach("v4", 4, req("v4", "n1", 4))
	if strings.Contains(strings.Join(k.calls, "\n"), "uplink6") {
		t.Fatalf("an IPv4-only pod set up the uplink's IPv6: %v", k.calls)
	}
	atA, podA := attach("a", 5, req6("a", "n1", 5))
	_, podB := attach("b", 6, req6("b", "n1", 6))
	host := endStack(t, k.peer(UplinkStackIfName), header.MAC{0x02, 0xcc, 0, 0, 0, 1}, netip.MustParsePrefix("169.254.100.1/30"), netip.Addr{})
	endStack6(t, host, hostAddr6, netip.Addr{})
	if err := host.AddRoute(route.Route{Dst: rng6, Gateway: stackAddr6.Addr(), NIC: 1, Type: route.Unicast}); err != nil {
		t.Fatal(err)
	}
	if got := k.routes[rng6]; got != stackAddr6.Addr() {
		t.Fatalf("host route for %v: %v (calls %v)", rng6, got, k.calls)
	}

	for _, c := range []struct {
		name string
		from *netstack.Stack
		to   netip.Addr
	}{
		{"pod A → gateway6", podA, gw6},
		{"pod A → pod B", podA, netip.MustParseAddr("fd00:1::6")},
		{"pod B → pod A", podB, netip.MustParseAddr("fd00:1::5")},
		{"pod A → host", podA, hostAddr6.Addr()},
		{"host → pod B", host, netip.MustParseAddr("fd00:1::6")},
		{"pod B → pod A (IPv4 still)", podB, netip.MustParseAddr("10.1.0.5")},
	} {
		if err := ping(c.from, c.to, 10); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}

	// The NIC owns its link-local address (the gateway's, for NDP) and
	// answers NS for any other target (proxy NDP, RFC 4861 §7.2.8): pod A
	// (a netstack, its /64 on-link, unlike the plugin's pods) resolved
	// pod B itself above and got the stack's MAC, through which it
	// reached B.
	nic := a.Stack().Devices().ByID(atA.NIC)
	if ll := netstack.LinkLocal(nic); !a.Stack().FIB().IsLocal(ll) {
		t.Fatalf("the pod link's link-local address %v is not local", ll)
	}
	podB6 := netip.MustParseAddr("fd00:1::6")
	if e, ok := podA.Neigh().Lookup(1, podB6); !ok || e.MAC != nic.MAC() {
		t.Fatalf("pod A's neighbour entry for %v: %+v %v, want the stack's MAC %v", podB6, e, ok, nic.MAC())
	}

	// Pod C claims pod A's IPv6 address as its source: strict rp_filter
	// drops it (its /128 routes through A's NIC).
	rc := req6("c", "n1", 7)
	_, podC := attach("c", 7, rc)
	if err := podC.RemoveAddress(1, rc.IP6); err != nil {
		t.Fatal(err)
	}
	endStack6(t, podC, netip.MustParsePrefix("fd00:1::5/64"), netip.Addr{})
	before := a.Stack().Stats().Drops["IP_RPFILTER"]
	if err := ping(podC, netip.MustParseAddr("fd00:1::6"), 2); err == nil {
		t.Fatalf("pod C reached pod B with pod A's IPv6 address as its source")
	}
	if after := a.Stack().Stats().Drops["IP_RPFILTER"]; after <= before {
		t.Fatalf("rp_filter drops %d → %d: the spoofed packets were not dropped by it (%v)", before, after, a.Stack().Stats().Drops)
	}

	st := &api.Status{}
	a.Status(st)
	if st.Uplink == nil || st.Uplink.HostAddr6 != hostAddr6 || st.Uplink.StackAddr6 != stackAddr6 || len(st.Uplink.Routes) != 2 {
		t.Fatalf("status uplink: %+v", st.Uplink)
	}
	for _, id := range []string{atA.ID, req6("b", "n1", 6).HostIfName, rc.HostIfName} {
		if _, ok := k.routes[rng6]; !ok {
			t.Fatalf("IPv6 host route removed while pods remain")
		}
		if err := a.Detach(&api.Attachment{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := k.routes[rng6]; ok {
		t.Fatalf("IPv6 host route left after the last dual-stack pod: %v", k.calls)
	}
	if err := a.Detach(at4); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.Join(k.calls, "\n"), "uplink6 "); n != 1 {
		t.Fatalf("uplink IPv6 set up %d times: %v", n, k.calls)
	}
}
