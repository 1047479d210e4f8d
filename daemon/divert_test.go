package daemon

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// TestPlanDivert is the divert rule as data: what a packet from a
// proxy-mode pod becomes, by conntrack state, protocol and destination.
func TestPlanDivert(t *testing.T) {
	outside := netip.MustParseAddr("203.0.113.9")
	outside6 := netip.MustParseAddr("2001:db8::9")
	routed := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("198.51.100.0/24")}
	newTCP := divertFacts{proto: header.ProtoTCP, tracked: true, state: netfilter.CtNew, dst: outside, routed: routed}
	with := func(f divertFacts, mod func(f *divertFacts)) divertFacts { mod(&f); return f }
	for _, tc := range []struct {
		name string
		f    divertFacts
		want divertAction
	}{
		{"new TCP flow to the outside is diverted", newTCP, divertDivert},
		{"new UDP flow is diverted", with(newTCP, func(f *divertFacts) { f.proto = header.ProtoUDP }), divertDivert},
		{"new ICMP echo request is diverted", with(newTCP, func(f *divertFacts) { f.proto, f.icmpType = header.ProtoICMP, header.ICMPv4Echo }), divertDivert},
		{"ICMP timestamp request is dropped", with(newTCP, func(f *divertFacts) { f.proto, f.icmpType = header.ProtoICMP, 13 }), divertDropProto},
		{"GRE is dropped", with(newTCP, func(f *divertFacts) { f.proto = 47 }), divertDropProto},
		{"SCTP is dropped", with(newTCP, func(f *divertFacts) { f.proto = 132 }), divertDropProto},
		{"a diverted flow's later packet passes", with(newTCP, func(f *divertFacts) { f.marked, f.state = true, netfilter.CtEstablished }), divertPass},
		{"ESTABLISHED (a host→pod flow's reply) is forwarded", with(newTCP, func(f *divertFacts) { f.state = netfilter.CtEstablished }), divertPass},
		{"RELATED (an ICMP error about one) is forwarded", with(newTCP, func(f *divertFacts) { f.proto, f.state = header.ProtoICMP, netfilter.CtRelated }), divertPass},
		{"INVALID to the outside is dropped", with(newTCP, func(f *divertFacts) { f.state = netfilter.CtInvalid }), divertDropInvalid},
		{"UNTRACKED to the outside is dropped", with(newTCP, func(f *divertFacts) { f.proto, f.state = header.ProtoICMP, netfilter.CtUntracked }), divertDropInvalid},
		{"no conntrack verdict is dropped", with(newTCP, func(f *divertFacts) { f.tracked, f.state = false, 0 }), divertDropInvalid},
		{"the gateway (local) is not diverted", with(newTCP, func(f *divertFacts) { f.local = true }), divertPass},
		{"another pod is not diverted", with(newTCP, func(f *divertFacts) { f.pod = true }), divertPass},
		{"a routed range is forwarded", with(newTCP, func(f *divertFacts) { f.dst = netip.MustParseAddr("10.244.7.1") }), divertPass},
		{"a routed range is forwarded whatever the protocol", with(newTCP, func(f *divertFacts) { f.dst, f.proto = netip.MustParseAddr("198.51.100.1"), 47 }), divertPass},
		{"just outside a routed range is diverted", with(newTCP, func(f *divertFacts) { f.dst = netip.MustParseAddr("10.245.0.1") }), divertDivert},
		{"no routed ranges: diverted", with(newTCP, func(f *divertFacts) { f.dst, f.routed = netip.MustParseAddr("10.244.7.1"), nil }), divertDivert},
		{"limited broadcast passes", with(newTCP, func(f *divertFacts) { f.proto, f.dst = header.ProtoUDP, netip.MustParseAddr("255.255.255.255") }), divertPass},
		{"a directed broadcast passes", with(newTCP, func(f *divertFacts) { f.proto, f.bcast = header.ProtoUDP, true }), divertPass},
		{"multicast passes", with(newTCP, func(f *divertFacts) { f.proto, f.dst = header.ProtoUDP, netip.MustParseAddr("224.0.0.251") }), divertPass},
		{"an Ethernet broadcast passes", with(newTCP, func(f *divertFacts) { f.proto, f.l2Group = header.ProtoUDP, true }), divertPass},
		{"new IPv6 TCP flow is diverted", with(newTCP, func(f *divertFacts) { f.dst = outside6 }), divertDivert},
		{"new IPv6 UDP flow is diverted", with(newTCP, func(f *divertFacts) { f.dst, f.proto = outside6, header.ProtoUDP }), divertDivert},
		{"new ICMPv6 echo request is diverted", with(newTCP, func(f *divertFacts) {
			f.dst, f.proto, f.icmpType = outside6, header.ProtoICMPv6, header.ICMPv6EchoRequest
		}), divertDivert},
		{"an ICMPv4 echo type in ICMPv6 is dropped", with(newTCP, func(f *divertFacts) { f.dst, f.proto, f.icmpType = outside6, header.ProtoICMPv6, 8 }), divertDropProto},
		{"ICMPv6 echo request over IPv4 is dropped", with(newTCP, func(f *divertFacts) { f.proto, f.icmpType = header.ProtoICMPv6, header.ICMPv6EchoRequest }), divertDropProto},
		{"an IPv6 fragment past the first (no upper layer) is dropped", with(newTCP, func(f *divertFacts) { f.dst, f.proto = outside6, header.ProtoNoNextHeader }), divertDropProto},
		{"IPv6 multicast passes", with(newTCP, func(f *divertFacts) { f.dst, f.proto = netip.MustParseAddr("ff02::1:ff00:5"), header.ProtoICMPv6 }), divertPass},
		{"an IPv6 routed range is forwarded", with(newTCP, func(f *divertFacts) {
			f.dst, f.routed = netip.MustParseAddr("fd00:244::7"), []netip.Prefix{netip.MustParsePrefix("fd00:244::/64")}
		}), divertPass},
		{"the IPv6 gateway (local) is not diverted", with(newTCP, func(f *divertFacts) { f.dst, f.local = outside6, true }), divertPass},
		{"INVALID IPv6 to the outside is dropped", with(newTCP, func(f *divertFacts) { f.dst, f.state = outside6, netfilter.CtInvalid }), divertDropInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := planDivert(tc.f); got != tc.want {
				t.Fatalf("planDivert(%+v) = %v, want %v", tc.f, got, tc.want)
			}
		})
	}
}

// rawFrame builds an Ethernet+IPv4 frame of protocol proto with payload.
func rawFrame(src, dst header.MAC, from, to netip.Addr, proto uint8, payload []byte) *buf.SKB {
	n := header.EthernetMinSize + header.IPv4MinSize + len(payload)
	skb := buf.Alloc(0, n)
	b := skb.Put(n)
	header.Ethernet(b).Encode(header.EthernetFields{Dst: dst, Src: src, Type: header.EtherTypeIPv4})
	copy(b[header.EthernetMinSize+header.IPv4MinSize:], payload)
	header.IPv4(b[header.EthernetMinSize:]).Encode(header.IPv4Fields{TotalLen: uint16(header.IPv4MinSize + len(payload)),
		TTL: 64, Protocol: proto, Src: from, Dst: to, ID: 1})
	return skb
}

// waitCounter polls a status counter until it reaches want (bounded).
func waitCounter(t *testing.T, a *StackAttacher, name string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		st := &api.Status{}
		a.Status(st)
		if st.Stack.Counters[name] >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter %s = %d, want %d", name, st.Stack.Counters[name], want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProxyDivertHook runs the divert rule in the attacher's stack over
// pipes: proxy-mode pods reach the gateway, each other and their routed
// range as before, the host reaches them (ESTABLISHED replies are
// forwarded), while their new flows to anything else are diverted away
// from the uplink, and other protocols are dropped and counted. A
// route-mode pod beside them is untouched.
func TestProxyDivertHook(t *testing.T) {
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
	t.Cleanup(func() { a.Close() })
	gw := netip.MustParseAddr("10.1.0.1")
	routedRange := netip.MustParsePrefix("198.51.100.0/24")
	attach := func(ctr string, last byte, mode api.Mode) (*api.Attachment, *netstack.Stack) {
		t.Helper()
		r := req(ctr, "n1", last)
		r.PodMAC, r.Mode = podMAC(last).String(), mode
		if mode == api.ModeProxy {
			r.RoutedRanges = []netip.Prefix{routedRange}
		}
		at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
		if err := a.Attach(at); err != nil {
			t.Fatalf("attach %s: %v", ctr, err)
		}
		return at, endStack(t, k.peer(r.HostIfName), podMAC(last), r.IP, gw)
	}
	atP, podP := attach("p", 5, api.ModeProxy)
	_, podQ := attach("q", 6, api.ModeProxy)
	_, podR := attach("r", 7, api.ModeRoute)
	host := endStack(t, k.peer(UplinkStackIfName), header.MAC{0x02, 0xcc, 0, 0, 0, 1}, netip.MustParsePrefix("169.254.100.1/30"), netip.Addr{})
	if err := host.AddAddress(1, netip.MustParsePrefix("198.51.100.1/32")); err != nil {
		t.Fatal(err)
	}
	if err := host.AddRoute(route.Route{Dst: netip.MustParsePrefix("10.1.0.0/24"), Gateway: netip.MustParseAddr("169.254.100.2"), NIC: 1, Type: route.Unicast}); err != nil {
		t.Fatal(err)
	}
	hostAddr := netip.MustParseAddr("169.254.100.1")

	for _, c := range []struct {
		name string
		from *netstack.Stack
		to   string
	}{
		{"proxy pod → gateway (local: the stack answers)", podP, "10.1.0.1"},
		{"proxy pod → proxy pod (pod-to-pod stays routed)", podP, "10.1.0.6"},
		{"proxy pod → route pod", podQ, "10.1.0.7"},
		{"proxy pod → routed range through the uplink", podP, "198.51.100.1"},
		{"host → proxy pod (its replies are ESTABLISHED)", host, "10.1.0.5"},
		{"route pod → host", podR, "169.254.100.1"},
	} {
		if err := ping(c.from, netip.MustParseAddr(c.to), 10); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	st := &api.Status{}
	a.Status(st)
	if n := st.Stack.Counters["ProxyDiverted"]; n != 0 {
		t.Fatalf("%d packets diverted by flows that must be routed", n)
	}

	// A new flow of a proxy pod to the host's own address is diverted:
	// it never reaches the host over the uplink.
	if err := ping(podP, hostAddr, 2); err == nil {
		t.Fatalf("proxy pod's echo request to %v went through the uplink", hostAddr)
	}
	waitCounter(t, a, "ProxyDiverted", 1)

	// TCP: the host reaches a listener in the proxy pod (the pod's
	// SYN,ACK is the reply of a flow the host opened), and a route pod
	// reaches the host; the proxy pod's own SYN to the host is diverted.
	ln, err := podP.ListenTCP(netip.AddrPortFrom(netip.IPv4Unspecified(), 80))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dial := func(s *netstack.Stack, to netip.AddrPort) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := s.DialTCP(ctx, netip.AddrPort{}, to)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(host, netip.AddrPortFrom(atP.IP.Addr(), 80)); err != nil {
		t.Fatalf("host → proxy pod TCP: %v", err)
	}
	hln, err := host.ListenTCP(netip.AddrPortFrom(hostAddr, 7000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hln.Close() })
	if err := dial(podR, netip.AddrPortFrom(hostAddr, 7000)); err != nil {
		t.Fatalf("route pod → host TCP: %v", err)
	}
	before := counter(a, "ProxyDiverted")
	if err := dial(podP, netip.AddrPortFrom(hostAddr, 7000)); err == nil {
		t.Fatalf("proxy pod's TCP connect reached the host's listener over the uplink")
	}
	waitCounter(t, a, "ProxyDiverted", before+1)

	// Protocols the proxy does not relay are dropped with a reason, and
	// packets of no flow are dropped too; both only for proxied
	// destinations.
	stackMAC, err := header.ParseMAC(atP.StackMAC)
	if err != nil {
		t.Fatal(err)
	}
	inject := func(to netip.Addr, proto uint8, payload []byte) {
		t.Helper()
		skb := rawFrame(podMAC(5), stackMAC, atP.IP.Addr(), to, proto, payload)
		if _, err := k.peer(atP.HostIfName).WriteBatch([]*buf.SKB{skb}); err != nil {
			t.Fatal(err)
		}
	}
	gre := make([]byte, 8)
	inject(netip.MustParseAddr("203.0.113.9"), 47, gre)
	waitCounter(t, a, "ProxyProtoDrops", 1)
	rst := make([]byte, header.TCPMinSize)
	header.TCP(rst).Encode(header.TCPFields{SrcPort: 40000, DstPort: 80, Seq: 1, Flags: header.RST})
	header.TCP(rst).SetChecksum(atP.IP.Addr(), netip.MustParseAddr("203.0.113.9"))
	inject(netip.MustParseAddr("203.0.113.9"), header.ProtoTCP, rst)
	waitCounter(t, a, "ProxyInvalidDrops", 1)
	inject(netip.MustParseAddr("198.51.100.1"), 47, gre) // routed: forwarded
	inject(netip.MustParseAddr("203.0.113.10"), 47, gre)
	waitCounter(t, a, "ProxyProtoDrops", 2)
	st = &api.Status{}
	a.Status(st)
	if st.Stack.Counters["ProxyProtoDrops"] != 2 || st.Stack.Drops[DropProxyProto.String()] != 2 || st.Stack.Drops[DropProxyInvalid.String()] != 1 {
		t.Fatalf("drops: counters %v, reasons %v", st.Stack.Counters, st.Stack.Drops)
	}

	// Detach takes the pod out of the hook's tables.
	if err := a.Detach(atP); err != nil {
		t.Fatal(err)
	}
	if _, ok := (*a.proxyNICs.Load())[atP.NIC]; ok {
		t.Fatalf("detached pod still in the divert table")
	}
	if _, ok := (*a.podAddrs.Load())[atP.IP.Addr()]; ok {
		t.Fatalf("detached pod's address still a pod destination")
	}
}

func counter(a *StackAttacher, name string) uint64 {
	st := &api.Status{}
	a.Status(st)
	return st.Stack.Counters[name]
}

// BenchmarkProxyDivert is the divert hook's cost per packet of a tracked
// flow from a proxy-mode pod (the conntrack hook ran once before).
func BenchmarkProxyDivert(b *testing.B) {
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "bench", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
	b.Cleanup(func() { a.Close() })
	r := req("p", "n1", 5)
	r.PodMAC, r.Mode = podMAC(5).String(), api.ModeProxy
	r.RoutedRanges = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("198.51.100.0/24")}
	at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
	if err := a.Attach(at); err != nil {
		b.Fatal(err)
	}
	udp := make([]byte, header.UDPSize+32)
	header.UDP(udp).Encode(header.UDPFields{SrcPort: 40000, DstPort: 53, Length: uint16(len(udp))})
	skb := rawFrame(podMAC(5), header.MAC{0x02, 0xaa, 0, 0, 0, 1}, at.IP.Addr(), netip.MustParseAddr("203.0.113.9"), header.ProtoUDP, udp)
	skb.SetMACHeader()
	skb.Pull(header.EthernetMinSize)
	skb.SetNetworkHeader()
	skb.InNIC = at.NIC
	if v := a.s.Hooks().Run(netfilter.PreRouting, skb, at.NIC, 0); !v.Accepted() || skb.Mark&netfilter.MarkDivert == 0 {
		b.Fatalf("first packet: verdict %+v, mark %#x", v, skb.Mark)
	}
	st := netfilter.State{Hook: netfilter.PreRouting, In: at.NIC}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		skb.Mark = 0
		if v := a.proxyDivert(skb, st); !v.Accepted() {
			b.Fatal("dropped")
		}
	}
}
