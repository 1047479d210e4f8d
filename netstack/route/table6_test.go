package route

import (
	"net/netip"
	"testing"
)

// testTable6 is a node with two pod links (NIC 1, NIC 3) that each own
// the gateway fd00:1::1 and a link-local address, an uplink (NIC 2,
// 2001:db8:ff::2/64, default via its link-local router), and special
// routes, beside testTable's IPv4 routes.
func testTable6(t testing.TB) *Table {
	t.Helper()
	tb := testTable(t)
	for _, r := range []Route{
		{Dst: pfx("fd00:1::/64"), NIC: 1},
		{Dst: pfx("fd00:1::77/128"), NIC: 3}, // a pod on another link
		{Dst: pfx("fe80::/64"), NIC: 1},
		{Dst: pfx("fe80::/64"), NIC: 2},
		{Dst: pfx("fe80::/64"), NIC: 3},
		{Dst: pfx("2001:db8:ff::/64"), NIC: 2},
		{Dst: pfx("::/0"), Gateway: a("fe80::1"), NIC: 2},
		{Dst: pfx("2001:db8:9::/48"), Gateway: a("fe80::1"), NIC: 2, MTU: 1400, Src: a("fd00:1::1")},
		{Dst: pfx("2001:db8:99::/48"), Type: Unreachable},
		{Dst: pfx("2001:db8:98::/48"), Type: Prohibit},
		{Dst: pfx("2001:db8:97::/48"), Type: Blackhole},
	} {
		if err := tb.Add(r); err != nil {
			t.Fatalf("Add(%v): %v", r, err)
		}
	}
	tb.AddLocal(a("fd00:1::1"), 1)
	tb.AddLocal(a("fe80::a"), 1)
	tb.AddLocal(a("fd00:1::1"), 3)
	tb.AddLocal(a("fe80::c"), 3)
	tb.AddLocal(a("fe80::b"), 2)
	tb.AddLocal(a("2001:db8:ff::2"), 2)
	return tb
}

func TestLookup6(t *testing.T) {
	tb := testTable6(t)
	for _, tc := range []struct {
		name string
		dst  string
		ok   bool
		want Result
	}{
		{"local table first", "fd00:1::1", true, Result{Type: Local, NIC: 1, NextHop: a("fd00:1::1"), Src: a("fd00:1::1")}},
		{"connected", "fd00:1::5", true, Result{Type: Unicast, NIC: 1, NextHop: a("fd00:1::5"), Src: a("fd00:1::1")}},
		{"/128 beats /64", "fd00:1::77", true, Result{Type: Unicast, NIC: 3, NextHop: a("fd00:1::77"), Src: a("fd00:1::1")}},
		{"default via link-local gateway", "2606:4700::1", true, Result{Type: Unicast, NIC: 2, NextHop: a("fe80::1"), Src: a("2001:db8:ff::2")}},
		{"route src and mtu", "2001:db8:9::1", true, Result{Type: Unicast, NIC: 2, NextHop: a("fe80::1"), Src: a("fd00:1::1"), MTU: 1400}},
		{"unreachable route", "2001:db8:99::1", true, Result{Type: Unreachable, NextHop: a("2001:db8:99::1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tb.Lookup(a(tc.dst))
			got.Route = Route{}
			if ok != tc.ok || got != tc.want {
				t.Fatalf("Lookup(%s) = %+v, %v; want %+v, %v", tc.dst, got, ok, tc.want, tc.ok)
			}
		})
	}
	// The IPv4 half is untouched by IPv6 routes.
	if r, ok := tb.Lookup(a("8.8.8.8")); !ok || r.NextHop != a("192.168.0.1") {
		t.Fatalf("IPv4 default: %+v", r)
	}
}

func TestOutput6(t *testing.T) {
	tb := testTable6(t)
	for _, tc := range []struct {
		name string
		fl   Flow
		want Result
		err  error
	}{
		{"RFC 6724 rule 8: the pod link's global address", Flow{Dst: a("fd00:1::5")},
			Result{Type: Unicast, NIC: 1, NextHop: a("fd00:1::5"), Src: a("fd00:1::1")}, nil},
		{"default route, uplink's global source", Flow{Dst: a("2606:4700::1")},
			Result{Type: Unicast, NIC: 2, NextHop: a("fe80::1"), Src: a("2001:db8:ff::2")}, nil},
		{"RFC 4291 §2.5.6: link-local needs the NIC", Flow{Dst: a("fe80::99")}, Result{}, ErrInvalid},
		{"RFC 6724 rule 2: link-local source for a link-local destination", Flow{Dst: a("fe80::99"), NIC: 1},
			Result{Type: Unicast, NIC: 1, NextHop: a("fe80::99"), Src: a("fe80::a")}, nil},
		{"link-scope multicast on a named NIC", Flow{Dst: a("ff02::1"), NIC: 2},
			Result{Type: Unicast, NIC: 2, NextHop: a("ff02::1"), Src: a("fe80::b")}, nil},
		{"link-scope multicast without a NIC", Flow{Dst: a("ff02::1")}, Result{}, ErrInvalid},
		{"global multicast is not routed", Flow{Dst: a("ff0e::1")}, Result{}, ErrMulticast},
		{"local destination", Flow{Dst: a("2001:db8:ff::2")},
			Result{Type: Local, NIC: 2, NextHop: a("2001:db8:ff::2"), Src: a("2001:db8:ff::2")}, nil},
		{"foreign source", Flow{Src: a("fd00:9::1"), Dst: a("fd00:1::5")}, Result{}, ErrBadSource},
		{"transparent foreign source", Flow{Src: a("2606:4700::1"), Dst: a("fd00:1::5"), Transparent: true},
			Result{Type: Unicast, NIC: 1, NextHop: a("fd00:1::5"), Src: a("2606:4700::1")}, nil},
		{"RFC 4291 §2.7: multicast source", Flow{Src: a("ff02::1"), Dst: a("fd00:1::5"), Transparent: true}, Result{}, ErrBadSource},
		{"unreachable", Flow{Dst: a("2001:db8:99::1")}, Result{}, ErrHostUnreach},
		{"prohibit", Flow{Dst: a("2001:db8:98::1")}, Result{}, ErrProhibited},
		{"blackhole", Flow{Dst: a("2001:db8:97::1")}, Result{}, ErrBlackhole},
		{"unspecified destination", Flow{Dst: a("::")}, Result{}, ErrMartianDest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tb.Output(tc.fl)
			got.Route = Route{}
			if err != tc.err || got != tc.want {
				t.Fatalf("Output(%+v) = %+v, %v; want %+v, %v", tc.fl, got, err, tc.want, tc.err)
			}
		})
	}
	// A NIC with no address of a global destination's scope borrows a
	// global address of the stack (NIC 4 has only a link-local one).
	tb.AddLocal(a("fe80::d"), 4)
	if err := tb.Add(Route{Dst: pfx("2001:db8:4::/64"), NIC: 4}); err != nil {
		t.Fatal(err)
	}
	r, err := tb.Output(Flow{Dst: a("2001:db8:4::9")})
	if err != nil || r.NIC != 4 || !r.Src.IsGlobalUnicast() || r.Src.IsLinkLocalUnicast() {
		t.Fatalf("borrowed source: %+v %v", r, err)
	}
	// A NIC with no address at all cannot speak link-local.
	if _, err := tb.Output(Flow{Dst: a("fe80::1"), NIC: 9}); err != ErrNoSource {
		t.Fatalf("no link-local source: %v", err)
	}
}

func TestInput6(t *testing.T) {
	tb := testTable6(t)
	for _, tc := range []struct {
		name     string
		src, dst string
		in       int
		want     Result
		err      error
	}{
		{"to the gateway", "fd00:1::5", "fd00:1::1", 1, Result{Type: Local, NIC: 1, NextHop: a("fd00:1::1"), Src: a("fd00:1::1")}, nil},
		{"to our link-local on its link", "fe80::99", "fe80::a", 1, Result{Type: Local, NIC: 1, NextHop: a("fe80::a"), Src: a("fe80::a")}, nil},
		{"RFC 4291 §2.5.6: our link-local on another link", "fe80::99", "fe80::a", 2, Result{}, ErrMartianDest},
		{"RFC 4291 §2.5.6: a foreign link-local is not forwarded", "fe80::99", "fe80::98", 1, Result{}, ErrMartianDest},
		{"forward to the uplink", "fd00:1::5", "2606:4700::1", 1,
			Result{Type: Unicast, NIC: 2, NextHop: a("fe80::1"), Src: netip.Addr{}}, nil},
		{"RFC 4291 §2.5.3: loopback source", "::1", "fd00:1::1", 1, Result{}, ErrMartianSource},
		{"RFC 4291 §2.7: multicast source", "ff02::1", "fd00:1::1", 1, Result{}, ErrMartianSource},
		{"RFC 4291 §2.5.2: unspecified source to unicast", "::", "fd00:1::1", 1, Result{}, ErrMartianSource},
		{"RFC 4291 §2.5.5.2: IPv4-mapped source", "::ffff:10.0.0.1", "fd00:1::1", 1, Result{}, ErrMartianSource},
		{"our own address as source (spoof)", "fd00:1::1", "fd00:1::5", 1, Result{}, ErrMartianSource},
		{"loopback destination", "fd00:1::5", "::1", 1, Result{}, ErrMartianDest},
		{"multicast destination is ipv6's", "fd00:1::5", "ff02::1", 1, Result{}, ErrMulticast},
		{"unreachable", "fd00:1::5", "2001:db8:99::1", 1, Result{}, ErrHostUnreach},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tb.Input(a(tc.src), a(tc.dst), tc.in)
			got.Route = Route{}
			if err != tc.err || got != tc.want {
				t.Fatalf("Input(%s, %s, %d) = %+v, %v; want %+v, %v", tc.src, tc.dst, tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

// RFC 3704 §2.2 for IPv6 (Linux leaves this to rpfilter; we apply the
// same strict rule as for IPv4).
func TestReversePathOK6(t *testing.T) {
	tb := testTable6(t)
	for _, tc := range []struct {
		src  string
		in   int
		want bool
	}{
		{"fd00:1::5", 1, true},
		{"fd00:1::5", 2, false},
		{"fd00:1::77", 3, true},
		{"fd00:1::77", 1, false},
		{"2606:4700::1", 2, true},
		{"2606:4700::1", 1, false},
		{"fe80::99", 1, true}, // every IPv6 link has fe80::/64
		{"fe80::99", 3, true},
		{"fe80::99", 7, false}, // a NIC without IPv6
		{"::", 1, true},        // DAD (RFC 4862 §5.4.2)
	} {
		if got := tb.ReversePathOK(a(tc.src), tc.in); got != tc.want {
			t.Errorf("ReversePathOK(%s, %d) = %v, want %v", tc.src, tc.in, got, tc.want)
		}
	}
}

func TestLocal6(t *testing.T) {
	tb := testTable6(t)
	if !tb.HasIPv6(1) || !tb.HasIPv6(2) || tb.HasIPv6(5) {
		t.Fatal("HasIPv6")
	}
	if got := tb.Addresses(1); len(got) != 4 || got[0] != a("10.1.0.1") || got[2] != a("fd00:1::1") || got[3] != a("fe80::a") {
		t.Fatalf("Addresses(1) = %v", got)
	}
	if p, _ := tb.PrimaryAddr(2); p != a("192.168.0.2") {
		t.Fatalf("IPv4 primary must stay IPv4: %v", p)
	}
	if nic, ok := tb.LocalNIC(a("fd00:1::1")); !ok || nic != 1 {
		t.Fatalf("LocalNIC %d %v", nic, ok)
	}
	tb.AddLocal(a("::ffff:10.0.0.9"), 1)
	tb.AddLocal(a("ff02::1"), 1)
	tb.AddLocal(a("::"), 1)
	if len(tb.Addresses6(1)) != 2 {
		t.Fatalf("refused addresses were added: %v", tb.Addresses6(1))
	}
	tb.RemoveLocalFrom(a("fd00:1::1"), 1)
	if nic, ok := tb.LocalNIC(a("fd00:1::1")); !ok || nic != 3 {
		t.Fatalf("the gateway stays local on NIC 3: %d %v", nic, ok)
	}
	tb.FlushNIC(3)
	if tb.IsLocal(a("fd00:1::1")) || tb.HasIPv6(3) {
		t.Fatal("FlushNIC left IPv6 state")
	}
}

// RFC 6724 §5 rules on candidate lists.
func TestSelectSource6Rules(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cands []string
		dst   string
		want  string
	}{
		{"rule 1: same address", []string{"fd00::1", "fd00::2"}, "fd00::2", "fd00::2"},
		{"rule 2: global for global", []string{"fe80::1", "2001:db8::1"}, "2001:db8:5::5", "2001:db8::1"},
		{"rule 2: link-local for link-local", []string{"2001:db8::1", "fe80::1"}, "fe80::9", "fe80::1"},
		{"rule 8: longest prefix", []string{"2001:db8:1::1", "2001:db8:2::1"}, "2001:db8:2::9", "2001:db8:2::1"},
		{"ULA is global scope (RFC 6724 §3.1)", []string{"fe80::1", "fd00::1"}, "2001:db8::9", "fd00::1"},
	} {
		var cs []netip.Addr
		for _, c := range tc.cands {
			cs = append(cs, a(c))
		}
		if got, ok := selectSource6(cs, a(tc.dst)); !ok || got != a(tc.want) {
			t.Errorf("%s: %v, want %s", tc.name, got, tc.want)
		}
	}
	if _, ok := selectSource6(nil, a("fd00::1")); ok {
		t.Fatal("no candidates")
	}
}

// The local table dump lists IPv6 addresses too (`cni-userstack route`).
func TestLocals6(t *testing.T) {
	tb := testTable6(t)
	var gw []LocalEntry
	for _, l := range tb.Locals() {
		if l.Addr == a("fd00:1::1") {
			gw = append(gw, l)
		}
	}
	if len(gw) != 2 || !gw[0].Primary || gw[0].NIC != 1 || gw[1].Primary || gw[1].NIC != 3 {
		t.Fatalf("gateway entries %+v", gw)
	}
}

// Via for IPv6: the longest route through the given NIC only.
func TestVia6(t *testing.T) {
	tb := testTable6(t)
	r, ok := tb.Via(a("fd00:1::77"), 2)
	if !ok || r.NIC != 2 || r.NextHop != a("fe80::1") || r.Src != a("2001:db8:ff::2") {
		t.Fatalf("via the uplink: %+v %v", r, ok)
	}
	if r, ok := tb.Via(a("fd00:1::77"), 3); !ok || r.NIC != 3 || r.NextHop != a("fd00:1::77") {
		t.Fatalf("via NIC 3: %+v", r)
	}
	if _, ok := tb.Via(a("2606:4700::1"), 1); ok {
		t.Fatal("NIC 1 has no route there")
	}
}
