package route

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"
)

var (
	a   = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

// testTable is a node with a pod link (NIC 1, 10.1.0.1/24), an uplink
// (NIC 2, 192.168.0.2/30, default via 192.168.0.1) and a few special routes.
func testTable(t testing.TB) *Table {
	t.Helper()
	tb := NewTable()
	for _, r := range []Route{
		{Dst: pfx("10.1.0.0/24"), NIC: 1},
		{Dst: pfx("192.168.0.0/30"), NIC: 2},
		{Dst: pfx("0.0.0.0/0"), Gateway: a("192.168.0.1"), NIC: 2},
		{Dst: pfx("10.9.0.0/16"), Gateway: a("192.168.0.1"), NIC: 2, MTU: 1400, Src: a("10.1.0.1")},
		{Dst: pfx("10.9.9.0/24"), Type: Unreachable},
		{Dst: pfx("10.9.8.0/24"), Type: Prohibit},
		{Dst: pfx("10.9.7.0/24"), Type: Blackhole},
		{Dst: pfx("172.16.0.0/12"), Gateway: a("192.168.0.1"), NIC: 2, Metric: 10},
		{Dst: pfx("172.16.0.0/12"), Gateway: a("10.1.0.9"), NIC: 1, Metric: 5},
		{Dst: pfx("10.1.0.77/32"), NIC: 3}, // a pod on another link
	} {
		if err := tb.Add(r); err != nil {
			t.Fatalf("Add(%v): %v", r, err)
		}
	}
	tb.AddLocal(a("10.1.0.1"), 1)
	tb.AddLocal(a("10.1.0.254"), 1)
	tb.AddLocal(a("192.168.0.2"), 2)
	return tb
}

func TestLookup(t *testing.T) {
	tb := testTable(t)
	for _, tc := range []struct {
		name string
		dst  string
		ok   bool
		want Result
	}{
		{"local table first", "10.1.0.1", true, Result{Type: Local, NIC: 1, NextHop: a("10.1.0.1"), Src: a("10.1.0.1")}},
		{"connected", "10.1.0.5", true, Result{Type: Unicast, NIC: 1, NextHop: a("10.1.0.5"), Src: a("10.1.0.1")}},
		{"longest prefix wins over /24", "10.1.0.77", true, Result{Type: Unicast, NIC: 3, NextHop: a("10.1.0.77")}},
		{"default via gateway", "8.8.8.8", true, Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("192.168.0.2")}},
		{"route src and mtu", "10.9.1.1", true, Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("10.1.0.1"), MTU: 1400}},
		{"unreachable route", "10.9.9.9", true, Result{Type: Unreachable, NextHop: a("10.9.9.9")}},
		{"lower metric wins", "172.20.0.1", true, Result{Type: Unicast, NIC: 1, NextHop: a("10.1.0.9"), Src: a("10.1.0.1")}},
		{"directed broadcast", "10.1.0.255", true, Result{Type: Broadcast, NIC: 1, NextHop: a("10.1.0.255"), Src: a("10.1.0.1")}},
		{"limited broadcast", "255.255.255.255", true, Result{Type: Broadcast, NextHop: a("255.255.255.255")}},
		{"/30 has a broadcast", "192.168.0.3", true, Result{Type: Broadcast, NIC: 2, NextHop: a("192.168.0.3"), Src: a("192.168.0.2")}},
		{"ipv6 never matches", "::1", false, Result{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tb.Lookup(a(tc.dst))
			got.Route = Route{}
			if ok != tc.ok || got != tc.want {
				t.Fatalf("Lookup(%s) = %+v, %v; want %+v, %v", tc.dst, got, ok, tc.want, tc.ok)
			}
		})
	}
	empty := NewTable()
	if _, ok := empty.Lookup(a("1.2.3.4")); ok {
		t.Fatal("empty table matched")
	}
}

// Via: the route through one NIC only (netfilter's reply-to), the
// longest of that NIC's prefixes; nothing when the NIC has none.
func TestVia(t *testing.T) {
	tb := testTable(t)
	for _, tc := range []struct {
		name string
		dst  string
		nic  int
		ok   bool
		want Result
	}{
		{"a pod's reply to the uplink: its default route", "10.1.0.5", 2, true,
			Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("192.168.0.2")}},
		{"a more specific route of the NIC wins", "10.9.1.1", 2, true,
			Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("10.1.0.1"), MTU: 1400}},
		{"error routes are skipped", "10.9.9.9", 2, true,
			Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("10.1.0.1"), MTU: 1400}},
		{"a higher-metric route through the NIC", "172.20.0.1", 2, true,
			Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("192.168.0.2")}},
		{"same as the FIB's choice", "10.1.0.77", 3, true, Result{Type: Unicast, NIC: 3, NextHop: a("10.1.0.77")}},
		{"the NIC has no route there", "8.8.8.8", 1, false, Result{}},
		{"unknown NIC", "8.8.8.8", 9, false, Result{}},
		{"NIC 0 is no NIC", "8.8.8.8", 0, false, Result{}},
		{"ipv6 never matches", "::1", 2, false, Result{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tb.Via(a(tc.dst), tc.nic)
			got.Route = Route{}
			if ok != tc.ok || got != tc.want {
				t.Fatalf("Via(%s, %d) = %+v, %v; want %+v, %v", tc.dst, tc.nic, got, ok, tc.want, tc.ok)
			}
		})
	}
	if n := testing.AllocsPerRun(100, func() { tb.Via(a("10.1.0.5"), 2) }); n != 0 {
		t.Fatalf("Via allocates %.1f times", n)
	}
}

func TestOutput(t *testing.T) {
	tb := testTable(t)
	for _, tc := range []struct {
		name string
		fl   Flow
		want Result
		err  error
	}{
		{"source from the NIC's primary address", Flow{Dst: a("10.1.0.5")},
			Result{Type: Unicast, NIC: 1, NextHop: a("10.1.0.5"), Src: a("10.1.0.1")}, nil},
		{"flow source honoured", Flow{Dst: a("10.1.0.5"), Src: a("10.1.0.254")},
			Result{Type: Unicast, NIC: 1, NextHop: a("10.1.0.5"), Src: a("10.1.0.254")}, nil},
		{"flow source must be local", Flow{Dst: a("10.1.0.5"), Src: a("10.1.0.3")}, Result{}, ErrBadSource},
		{"flow source 0/8 rejected", Flow{Dst: a("10.1.0.5"), Src: a("0.0.0.1")}, Result{}, ErrBadSource},
		{"transparent flow: any source, route by destination", Flow{Dst: a("10.1.0.5"), Src: a("203.0.113.9"), Transparent: true},
			Result{Type: Unicast, NIC: 1, NextHop: a("10.1.0.5"), Src: a("203.0.113.9")}, nil},
		{"transparent flow: still no 0/8 source", Flow{Dst: a("10.1.0.5"), Src: a("0.0.0.1"), Transparent: true}, Result{}, ErrBadSource},
		{"transparent flow: still no multicast source", Flow{Dst: a("10.1.0.5"), Src: a("224.0.0.5"), Transparent: true}, Result{}, ErrBadSource},
		{"transparent flow: no foreign loopback source", Flow{Dst: a("10.1.0.5"), Src: a("127.0.0.1"), Transparent: true}, Result{}, ErrBadSource},
		{"route source preferred", Flow{Dst: a("10.9.0.1")},
			Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("10.1.0.1"), MTU: 1400}, nil},
		{"oif restricts the match", Flow{Dst: a("172.16.1.1"), NIC: 2},
			Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("192.168.0.2")}, nil},
		{"oif skips the better route through another NIC", Flow{Dst: a("10.1.0.5"), NIC: 2},
			Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("192.168.0.2")}, nil},
		{"oif with no route: assume on-link", Flow{Dst: a("8.8.8.8"), NIC: 1},
			Result{Type: Unicast, NIC: 1, NextHop: a("8.8.8.8"), Src: a("10.1.0.1")}, nil},
		{"local destination loops back", Flow{Dst: a("192.168.0.2")},
			Result{Type: Local, NIC: 2, NextHop: a("192.168.0.2"), Src: a("192.168.0.2")}, nil},
		{"limited broadcast on bound NIC", Flow{Dst: a("255.255.255.255"), NIC: 1},
			Result{Type: Broadcast, NIC: 1, NextHop: a("255.255.255.255"), Src: a("10.1.0.1")}, nil},
		{"limited broadcast follows the source", Flow{Dst: a("255.255.255.255"), Src: a("10.1.0.254")},
			Result{Type: Broadcast, NIC: 1, NextHop: a("255.255.255.255"), Src: a("10.1.0.254")}, nil},
		{"directed broadcast", Flow{Dst: a("10.1.0.255")},
			Result{Type: Broadcast, NIC: 1, NextHop: a("10.1.0.255"), Src: a("10.1.0.1")}, nil},
		{"unreachable → EHOSTUNREACH", Flow{Dst: a("10.9.9.1")}, Result{}, ErrHostUnreach},
		{"prohibit → EACCES", Flow{Dst: a("10.9.8.1")}, Result{}, ErrProhibited},
		{"blackhole → EINVAL", Flow{Dst: a("10.9.7.1")}, Result{}, ErrBlackhole},
		{"error routes ignore oif", Flow{Dst: a("10.9.9.1"), NIC: 1}, Result{}, ErrHostUnreach},
		{"multicast not routed", Flow{Dst: a("224.0.0.1")}, Result{}, ErrMulticast},
		{"0/8 destination", Flow{Dst: a("0.1.2.3")}, Result{}, ErrMartianDest},
		{"no source on NIC 3", Flow{Dst: a("10.1.0.77")}, Result{}, ErrNoSource},
		{"ipv6 loopback is not ours", Flow{Dst: a("::1")}, Result{}, ErrMartianDest},
		{"RFC 4291 §2.5.5.2: no IPv4-mapped destination", Flow{Dst: a("::ffff:10.1.0.5")}, Result{}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tb.Output(tc.fl)
			got.Route = Route{}
			if err != tc.err || got != tc.want {
				t.Fatalf("Output(%+v) = %+v, %v; want %+v, %v", tc.fl, got, err, tc.want, tc.err)
			}
		})
	}
	// RFC 1122 §3.3.1.1: no route at all is ENETUNREACH.
	empty := NewTable()
	_, err := empty.Output(Flow{Dst: a("8.8.8.8")})
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("empty table: %v, want ENETUNREACH", err)
	}
	var re *Error
	if !errors.As(err, &re) || re.Errno() != syscall.ENETUNREACH {
		t.Fatalf("errno of %v", err)
	}
}

func TestInput(t *testing.T) {
	tb := testTable(t)
	for _, tc := range []struct {
		name     string
		src, dst string
		in       int
		want     Result
		err      error
	}{
		{"to us", "10.1.0.5", "10.1.0.1", 1, Result{Type: Local, NIC: 1, NextHop: a("10.1.0.1"), Src: a("10.1.0.1")}, nil},
		{"to our address on another NIC (weak host model)", "10.1.0.5", "192.168.0.2", 1,
			Result{Type: Local, NIC: 1, NextHop: a("192.168.0.2"), Src: a("192.168.0.2")}, nil},
		{"forward", "10.1.0.5", "8.8.8.8", 1, Result{Type: Unicast, NIC: 2, NextHop: a("192.168.0.1"), Src: a("192.168.0.2")}, nil},
		{"limited broadcast", "10.1.0.5", "255.255.255.255", 1,
			Result{Type: Broadcast, NIC: 1, NextHop: a("255.255.255.255"), Src: a("10.1.0.1")}, nil},
		{"DHCP discover from 0.0.0.0", "0.0.0.0", "255.255.255.255", 1,
			Result{Type: Broadcast, NIC: 1, NextHop: a("255.255.255.255"), Src: a("10.1.0.1")}, nil},
		{"directed broadcast", "10.1.0.5", "10.1.0.255", 1,
			Result{Type: Broadcast, NIC: 1, NextHop: a("10.1.0.255"), Src: a("10.1.0.1")}, nil},
		{"RFC 1812 §5.3.7: loopback source", "127.0.0.1", "10.1.0.1", 1, Result{}, ErrMartianSource},
		{"RFC 1812 §5.3.7: multicast source", "224.0.0.5", "10.1.0.1", 1, Result{}, ErrMartianSource},
		{"RFC 1812 §5.3.7: limited broadcast source", "255.255.255.255", "10.1.0.1", 1, Result{}, ErrMartianSource},
		{"RFC 1812 §5.3.7: 0/8 source to unicast", "0.0.0.0", "10.1.0.1", 1, Result{}, ErrMartianSource},
		{"RFC 1812 §5.3.7: directed broadcast source", "10.1.0.255", "10.1.0.1", 1, Result{}, ErrMartianSource},
		{"our own address as source from outside", "10.1.0.1", "10.1.0.254", 1, Result{}, ErrMartianSource},
		{"RFC 1812 §5.3.7: 0/8 destination", "10.1.0.5", "0.0.0.9", 1, Result{}, ErrMartianDest},
		{"RFC 1812 §5.3.7: loopback destination", "10.1.0.5", "127.0.0.1", 1, Result{}, ErrMartianDest},
		{"multicast destination", "10.1.0.5", "224.0.0.1", 1, Result{}, ErrMulticast},
		{"unreachable route", "10.1.0.5", "10.9.9.9", 1, Result{}, ErrHostUnreach},
		{"prohibit route", "10.1.0.5", "10.9.8.9", 1, Result{}, ErrProhibited},
		{"blackhole route", "10.1.0.5", "10.9.7.9", 1, Result{}, ErrBlackhole},
		{"ipv6 source", "::1", "10.1.0.1", 1, Result{}, ErrMartianSource},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tb.Input(a(tc.src), a(tc.dst), tc.in)
			got.Route = Route{}
			if err != tc.err || got != tc.want {
				t.Fatalf("Input(%s, %s, %d) = %+v, %v; want %+v, %v", tc.src, tc.dst, tc.in, got, err, tc.want, tc.err)
			}
		})
	}
	if _, err := NewTable().Input(a("10.0.0.1"), a("10.0.0.2"), 1); err != ErrNoRoute {
		t.Fatalf("empty table input: %v", err)
	}
}

// RFC 3704 §2.2: strict reverse-path forwarding.
func TestReversePathOK(t *testing.T) {
	tb := testTable(t)
	for _, tc := range []struct {
		name string
		src  string
		in   int
		want bool
	}{
		{"pod source on pod link", "10.1.0.5", 1, true},
		{"pod source on uplink (spoofed)", "10.1.0.5", 2, false},
		{"internet source on uplink via default", "8.8.8.8", 2, true},
		{"internet source on pod link", "8.8.8.8", 1, false},
		{"more specific /32 on NIC 3", "10.1.0.77", 3, true},
		{"more specific /32 not on NIC 1", "10.1.0.77", 1, false},
		{"multipath: either metric's NIC", "172.16.0.1", 2, true},
		{"multipath: either metric's NIC (2)", "172.16.0.1", 1, true},
		{"source behind an unreachable route", "10.9.9.1", 2, false},
		{"unspecified source (DHCP)", "0.0.0.0", 1, true},
		{"ipv6", "::1", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tb.ReversePathOK(a(tc.src), tc.in); got != tc.want {
				t.Fatalf("ReversePathOK(%s, %d) = %v, want %v", tc.src, tc.in, got, tc.want)
			}
		})
	}
	if NewTable().ReversePathOK(a("1.1.1.1"), 1) {
		t.Fatal("no route back must fail")
	}
}

func TestAddRemove(t *testing.T) {
	tb := NewTable()
	for _, tc := range []struct {
		name string
		r    Route
		err  error
	}{
		{"ok, stored masked", Route{Dst: pfx("10.0.0.7/8"), NIC: 1}, nil},
		{"duplicate", Route{Dst: pfx("10.0.0.0/8"), NIC: 1}, ErrExists},
		{"other metric is fine", Route{Dst: pfx("10.0.0.0/8"), NIC: 1, Metric: 1}, nil},
		{"unicast needs a NIC", Route{Dst: pfx("10.0.0.0/8")}, ErrInvalid},
		{"IPv4-mapped prefix", Route{Dst: pfx("::ffff:0.0.0.0/96"), NIC: 1}, ErrInvalid},
		{"ipv6 prefix, ipv4 gateway", Route{Dst: pfx("2001:db8::/32"), NIC: 1, Gateway: a("10.0.0.1")}, ErrInvalid},
		{"multicast prefix", Route{Dst: pfx("ff00::/8"), NIC: 1}, ErrInvalid},
		{"ipv6 gateway", Route{Dst: pfx("11.0.0.0/8"), NIC: 1, Gateway: a("::1")}, ErrInvalid},
		{"local via Add", Route{Dst: pfx("11.0.0.0/8"), NIC: 1, Type: Local}, ErrInvalid},
		{"invalid prefix", Route{NIC: 1}, ErrInvalid},
		{"negative mtu", Route{Dst: pfx("12.0.0.0/8"), NIC: 1, MTU: -1}, ErrInvalid},
		{"unreachable needs no NIC", Route{Dst: pfx("13.0.0.0/8"), Type: Unreachable}, nil},
	} {
		if err := tb.Add(tc.r); err != tc.err {
			t.Errorf("%s: Add = %v, want %v", tc.name, err, tc.err)
		}
	}
	if rs := tb.Routes(); len(rs) != 3 || rs[0].Dst != pfx("10.0.0.0/8") || rs[0].Metric != 0 {
		t.Fatalf("routes %v", rs)
	}
	if err := tb.Remove(pfx("10.0.0.0/8"), 2); err != ErrNotFound {
		t.Fatalf("remove wrong NIC: %v", err)
	}
	if err := tb.Remove(pfx("10.1.2.3/8"), 0); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, ok := tb.Lookup(a("10.1.1.1")); ok {
		t.Fatal("removed route still matches")
	}
	tb.AddLocal(a("10.0.0.1"), 1)
	tb.AddLocal(a("10.0.0.2"), 1)
	tb.AddLocal(a("10.0.0.1"), 1) // no-op
	if got := tb.Addresses(1); len(got) != 2 || got[0] != a("10.0.0.1") {
		t.Fatalf("addresses %v", got)
	}
	tb.RemoveLocal(a("10.0.0.1"))
	if p, _ := tb.PrimaryAddr(1); p != a("10.0.0.2") || tb.IsLocal(a("10.0.0.1")) {
		t.Fatalf("primary after remove %v", p)
	}
	// The same address on two NICs (a gateway address on every pod link).
	tb.AddLocal(a("10.0.0.2"), 4)
	if nic, _ := tb.LocalNIC(a("10.0.0.2")); nic != 1 {
		t.Fatalf("LocalNIC %d, want the first NIC", nic)
	}
	if p4, _ := tb.PrimaryAddr(4); p4 != a("10.0.0.2") {
		t.Fatalf("NIC 4 primary %v", p4)
	}
	tb.RemoveLocalFrom(a("10.0.0.2"), 1)
	if nic, ok := tb.LocalNIC(a("10.0.0.2")); !ok || nic != 4 {
		t.Fatalf("after removal from NIC 1: NIC %d %v", nic, ok)
	}
	if _, ok := tb.PrimaryAddr(1); ok {
		t.Fatal("NIC 1 still has an address")
	}
	_ = tb.Add(Route{Dst: pfx("20.0.0.0/8"), NIC: 4})
	tb.FlushNIC(4)
	if tb.IsLocal(a("10.0.0.2")) || len(tb.Routes()) != 1 {
		t.Fatalf("flush left %v", tb.Routes())
	}
	if !tb.IsBroadcast(a("255.255.255.255")) || tb.IsBroadcast(a("1.2.3.4")) {
		t.Fatal("IsBroadcast")
	}
}

func TestConcurrentReadersSeeWholeSnapshots(t *testing.T) {
	tb := testTable(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i), 0, 0}), 16)
			_ = tb.Add(Route{Dst: p, NIC: 2})
			_ = tb.Remove(p, 2)
		}
	}()
	for i := 0; i < 2000; i++ {
		if r, ok := tb.Lookup(a("10.1.0.5")); !ok || r.NIC != 1 {
			t.Fatalf("lookup during update: %+v %v", r, ok)
		}
	}
	<-done
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tb := testTable(t)
	fl := Flow{Dst: a("8.8.8.8")}
	n := testing.AllocsPerRun(1000, func() {
		_, _ = tb.Lookup(a("10.1.0.5"))
		_, _ = tb.Output(fl)
		_, _ = tb.Input(a("10.1.0.5"), a("8.8.8.8"), 1)
		_ = tb.ReversePathOK(a("10.1.0.5"), 1)
	})
	if n != 0 {
		t.Fatalf("%.1f allocs per lookup", n)
	}
}

func benchTable(b *testing.B) *Table {
	tb := testTable(b)
	for i := 0; i < 1000; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), 32)
		if err := tb.Add(Route{Dst: p, NIC: 1 + i%4}); err != nil {
			b.Fatal(err)
		}
	}
	return tb
}

func BenchmarkLookup(b *testing.B) {
	tb := benchTable(b)
	dst := a("8.8.8.8")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := tb.Lookup(dst); !ok {
			b.Fatal("no route")
		}
	}
}

func BenchmarkOutput(b *testing.B) {
	tb := benchTable(b)
	fl := Flow{Dst: a("10.2.1.1")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tb.Output(fl); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInput(b *testing.B) {
	tb := benchTable(b)
	src, dst := a("10.1.0.5"), a("10.2.0.7")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tb.Input(src, dst, 1); err != nil {
			b.Fatal(err)
		}
	}
}

// ARCHITECTURE "Pod link addressing": the gateway address is ours on every
// pod link; each pod is a /32 through its link, and replies leave with the
// gateway address as source.
func TestGatewayOnEveryPodLink(t *testing.T) {
	tb := NewTable()
	gw := a("10.244.0.1")
	for nic, pod := range map[int]string{1: "10.244.0.5", 2: "10.244.0.6", 3: "10.244.0.7"} {
		tb.AddLocal(gw, nic)
		if err := tb.Add(Route{Dst: netip.PrefixFrom(a(pod), 32), NIC: nic}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		pod string
		nic int
	}{{"10.244.0.5", 1}, {"10.244.0.6", 2}, {"10.244.0.7", 3}} {
		res, err := tb.Output(Flow{Dst: a(tc.pod)})
		if err != nil || res.NIC != tc.nic || res.Src != gw || res.NextHop != a(tc.pod) {
			t.Fatalf("Output(%s) = %+v, %v", tc.pod, res, err)
		}
		if r, err := tb.Input(a(tc.pod), gw, tc.nic); err != nil || r.Type != Local {
			t.Fatalf("Input(%s → gw) = %+v, %v", tc.pod, r, err)
		}
		if !tb.ReversePathOK(a(tc.pod), tc.nic) || tb.ReversePathOK(a(tc.pod), tc.nic%3+1) {
			t.Fatalf("rp_filter for %s", tc.pod)
		}
	}
	// A pod leaving takes the gateway address off its link only.
	tb.RemoveLocalFrom(gw, 2)
	if !tb.IsLocal(gw) {
		t.Fatal("gateway address gone from every link")
	}
	if _, err := tb.Output(Flow{Dst: a("10.244.0.6")}); err != ErrNoSource {
		t.Fatalf("NIC 2 without address: %v", err)
	}
}
