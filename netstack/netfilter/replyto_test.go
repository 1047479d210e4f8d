package netfilter_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// pre runs b, arriving on from, through PREROUTING and returns the NIC
// the conntrack hook asked it to be routed out of.
func (r *rig) pre(b []byte, from *dev.NIC) int {
	r.t.Helper()
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	defer skb.Consume()
	skb.SetNetworkHeader()
	skb.InNIC = from.ID()
	if v := r.hooks.Run(netfilter.PreRouting, skb, from.ID(), 0); !v.Accepted() {
		r.t.Fatalf("PREROUTING: %+v", v)
	}
	return netfilter.ReplyNIC(skb)
}

// The conntrack hook's reply-to: a flow whose first packet came in on the
// reply-to NIC (up0, the uplink) records it; its replies from elsewhere,
// and ICMP errors about it (also the stack's own, at OUTPUT), are asked
// out of up0; a reply that came in on up0 itself, the original
// direction, flows opened on another NIC and untracked packets are left
// to the FIB.
func TestReplyToHook(t *testing.T) {
	r := newRig(t, "", conntrack.Config{})
	up, pod := r.out, r.in
	if err := r.nf.SetReplyTo(up.ID(), true); err != nil {
		t.Fatal(err)
	}
	podA, podB := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.1.3")
	// The host DNATed pod A's packet to pod B and routed it back.
	if n := r.pre(udpDgram(podA, podB, 40000, 8080), up); n != 0 {
		t.Fatalf("original direction asked out of NIC %d", n)
	}
	if n := r.pre(udpDgram(podB, podA, 8080, 40000), pod); n != up.ID() {
		t.Fatalf("reply from the pod link: NIC %d, want the uplink %d", n, up.ID())
	}
	es := r.nf.Conntrack().List()
	if len(es) != 1 || es[0].ReplyNIC != up.ID() {
		t.Fatalf("conntrack: %+v", es)
	}
	if n := r.pre(udpDgram(podA, podB, 40000, 8080), up); n != 0 {
		t.Fatalf("second original packet asked out of NIC %d", n)
	}
	// A reply the peer routed straight back is not sent to it again.
	if n := r.pre(udpDgram(podB, podA, 8080, 40000), up); n != 0 {
		t.Fatalf("reply that came in on the uplink asked out of NIC %d", n)
	}
	// Pod B's port unreachable about the flow (RELATED, reply direction).
	quote := udpDgram(podA, podB, 40000, 8080)[:28]
	icmp := stacktest.Frame().IPv4Addr(podB, podA).ICMP(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0).Payload(quote).Bytes()
	if n := r.pre(icmp, pod); n != up.ID() {
		t.Fatalf("ICMP error from the pod: NIC %d, want %d", n, up.ID())
	}
	// The stack's own error about a packet of the flow (OUTPUT, in 0).
	own := stacktest.Frame().IPv4Addr(netip.MustParseAddr("192.0.2.1"), podA).ICMP(header.ICMPv4TimeExceeded, 0, 0).Payload(quote).Bytes()
	skb := buf.FromBytes(buf.MaxHeadroom, own)
	skb.SetNetworkHeader()
	if v := r.hooks.Run(netfilter.LocalOut, skb, 0, pod.ID()); !v.Accepted() || netfilter.ReplyNIC(skb) != up.ID() {
		t.Fatalf("the stack's ICMP error: verdict %+v, NIC %d, want %d", v, netfilter.ReplyNIC(skb), up.ID())
	}
	skb.Consume()

	// A flow opened on the pod link: nothing changes.
	r.pre(udpDgram(podA, podB, 40001, 8080), pod)
	if n := r.pre(udpDgram(podB, podA, 8080, 40001), pod); n != 0 {
		t.Fatalf("pod-to-pod reply asked out of NIC %d", n)
	}
	// A packet conntrack never saw carries nothing.
	if n := netfilter.ReplyNIC(buf.FromBytes(buf.MaxHeadroom, udpDgram(podB, podA, 1, 2))); n != 0 {
		t.Fatalf("untracked packet: NIC %d", n)
	}

	// Off: new flows from the uplink are left alone; recorded ones keep
	// their NIC until they end.
	if err := r.nf.SetReplyTo(up.ID(), false); err != nil {
		t.Fatal(err)
	}
	if got := r.nf.ReplyToNICs(); len(got) != 0 {
		t.Fatalf("reply-to NICs after off: %v", got)
	}
	r.pre(udpDgram(podA, podB, 40002, 8080), up)
	if n := r.pre(udpDgram(podB, podA, 8080, 40002), pod); n != 0 {
		t.Fatalf("flow opened after SetReplyTo(off): NIC %d", n)
	}
	if n := r.pre(udpDgram(podB, podA, 8080, 40000), pod); n != up.ID() {
		t.Fatalf("recorded flow after SetReplyTo(off): NIC %d, want %d", n, up.ID())
	}
}

// SetReplyTo is bounded and idempotent.
func TestSetReplyToBound(t *testing.T) {
	r := newRig(t, "", conntrack.Config{})
	for i := 1; i <= netfilter.MaxReplyToNICs; i++ {
		if err := r.nf.SetReplyTo(i, true); err != nil {
			t.Fatalf("NIC %d: %v", i, err)
		}
	}
	if err := r.nf.SetReplyTo(1, true); err != nil {
		t.Fatalf("again: %v", err)
	}
	if err := r.nf.SetReplyTo(netfilter.MaxReplyToNICs+1, true); !errors.Is(err, netfilter.ErrReplyToFull) {
		t.Fatalf("one too many: %v", err)
	}
	if err := r.nf.SetReplyTo(1, false); err != nil || len(r.nf.ReplyToNICs()) != netfilter.MaxReplyToNICs-1 {
		t.Fatalf("off: %v %v", err, r.nf.ReplyToNICs())
	}
}

// The Service case of a Kubernetes node, in memory: pods A (10.1.0.2) and
// B (10.1.0.3) behind the stack, the host DNATs the "service" 10.96.0.10
// to B as kube-proxy does and routes it back into the stack.
var svcAddr = netip.MustParseAddr("10.96.0.10")

// txCount counts the IPv4 frames from src that nic transmits (a tap runs
// before the frame leaves, so the count is up to date once the frame has
// arrived anywhere).
func txCount(s *stacktest.Node, nic *dev.NIC, src netip.Addr) *atomic.Int64 {
	var n atomic.Int64
	s.Devices().AddTap(func(x *dev.NIC, skb *buf.SKB, d dev.Direction) {
		b := skb.Bytes()
		if d != dev.Tx || x != nic || len(b) < header.EthernetMinSize+header.IPv4MinSize || header.Ethernet(b).Type() != header.EtherTypeIPv4 {
			return
		}
		if header.IPv4(b[header.EthernetMinSize:]).Src() == src {
			n.Add(1)
		}
	})
	return &n
}

const svcRules = `*nat
-A PREROUTING -d 10.96.0.10 -p tcp --dport 80 -j DNAT --to-destination 10.1.0.3:8080
-A PREROUTING -d 10.96.0.10 -p udp --dport 53 -j DNAT --to-destination 10.1.0.3:5353
-A PREROUTING -d 10.96.0.10 -p udp --dport 54 -j DNAT --to-destination 10.1.0.3:5354
`

// hairpinNode is stacktest.PodNode with two pods on a manual clock (or
// the options given), the host's DNAT rules, netfilter on the stack and,
// with replyTo, the uplink as its reply-to NIC (what the daemon sets up).
func hairpinNode(t *testing.T, replyTo bool, opts ...stacktest.TopoOption) (n *stacktest.PodNodeTopo, stackNF, hostNF *netfilter.Netfilter) {
	t.Helper()
	if len(opts) == 0 {
		opts = []stacktest.TopoOption{stacktest.WithClock(clock.NewManual())}
	}
	n = stacktest.PodNode(t, 2, opts...)
	stackNF = n.Stack.EnableNetfilter(netfilter.Config{})
	if replyTo {
		if err := stackNF.SetReplyTo(n.Uplink.ID(), true); err != nil {
			t.Fatal(err)
		}
	}
	hostNF = n.Host.EnableNetfilter(netfilter.Config{})
	if err := hostNF.LoadText(svcRules); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, p := range n.Pods {
		if _, err := p.Ping(ctx, stacktest.PodGateway, uint16(i), nil); err != nil {
			t.Fatalf("pod %d → gateway: %v", i, err)
		}
	}
	if _, err := n.Host.Ping(ctx, stacktest.UplinkStack.Addr(), 9, nil); err != nil {
		t.Fatalf("host → stack: %v", err)
	}
	return n, stackNF, hostNF
}

// udpEcho answers every datagram on c with "echo:" + the datagram until c
// closes.
func udpEcho(c interface {
	ReadFrom([]byte) (int, net.Addr, error)
	WriteTo([]byte, net.Addr) (int, error)
}) {
	b := make([]byte, 2048)
	for {
		n, from, err := c.ReadFrom(b)
		if err != nil {
			return
		}
		c.WriteTo(append([]byte("echo:"), b[:n]...), from)
	}
}

// Pod A → the service → pod B, UDP: with reply-to the answer comes back
// from the service address (through the host, whose conntrack undoes the
// DNAT); without it A gets it from B's own address, the bug of a
// Kubernetes node whose stack forwards B's reply straight to A. B sees
// A's own address either way (route mode keeps the pod's source).
func TestReplyToServiceHairpinUDP(t *testing.T) {
	for _, replyTo := range []bool{true, false} {
		t.Run(fmt.Sprintf("replyTo=%v", replyTo), func(t *testing.T) {
			n, stackNF, _ := hairpinNode(t, replyTo)
			a, b := n.Pods[0], n.Pods[1]
			srv := udpListen(t, b, 5353)
			seen := make(chan netip.AddrPort, 1)
			go func() {
				buf := make([]byte, 64)
				n, from, err := srv.ReadFrom(buf)
				if err != nil {
					return
				}
				seen <- from.(*net.UDPAddr).AddrPort()
				srv.WriteTo(append([]byte("echo:"), buf[:n]...), from)
			}()
			cli := udpListen(t, a, 40000)
			if _, err := cli.WriteTo([]byte("hi"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(svcAddr, 53))); err != nil {
				t.Fatal(err)
			}
			msg, from := readFrom(t, cli)
			if got := <-seen; got != netip.AddrPortFrom(a.Addr(), 40000) {
				t.Fatalf("B saw the request from %v, want pod A's %v:40000", got, a.Addr())
			}
			want := netip.AddrPortFrom(svcAddr, 53)
			if !replyTo {
				// The bug, shown: the answer skipped the host.
				if from != netip.AddrPortFrom(b.Addr(), 5353) {
					t.Fatalf("without reply-to A got %q from %v, want it from B's %v:5353", msg, from, b.Addr())
				}
				return
			}
			if string(msg) != "echo:hi" || from != want {
				t.Fatalf("A got %q from %v, want the echo from the service %v", msg, from, want)
			}
			var hairpin []conntrack.Entry
			for _, e := range stackNF.Conntrack().List() {
				if e.Original.Dst == b.Addr() {
					hairpin = append(hairpin, e)
				}
			}
			if len(hairpin) != 1 || hairpin[0].ReplyNIC != n.Uplink.ID() || hairpin[0].Original.Src != a.Addr() {
				t.Fatalf("the stack's flow A → B: %+v, want one with ReplyNIC %d", hairpin, n.Uplink.ID())
			}
		})
	}
}

// The same over TCP (our TCP on both pods): A connects to the service,
// and 64 KiB echo back intact on a connection whose peer is the service.
// On the real clock: the echo's tail waits for delayed ACKs and Nagle,
// which a manual clock would hold forever.
func TestReplyToServiceHairpinTCP(t *testing.T) {
	n, _, _ := hairpinNode(t, true, stacktest.MTU(stacktest.DefaultMTU))
	a, b := n.Pods[0], n.Pods[1]
	t.Cleanup(func() {
		if t.Failed() {
			for _, x := range []*stacktest.Node{n.Stack, n.Host, a, b} {
				t.Logf("%s: %s", x.Name, x.Stats())
			}
		}
	})
	ln, err := b.ListenTCP(netip.AddrPortFrom(b.Addr(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(svcAddr, 80))
	if err != nil {
		t.Fatalf("pod A → service: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != netip.AddrPortFrom(svcAddr, 80) {
		t.Fatalf("A's peer %v", got)
	}
	msg := make([]byte, 64<<10)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	got := make([]byte, len(msg))
	within(t, "echo through the service", func() {
		go c.Write(msg)
		_, err = io.ReadFull(c, got)
	})
	if err != nil || string(got) != string(msg) {
		t.Fatalf("echo: %v (intact %v)", err, string(got) == string(msg))
	}
}

// TTL and ICMP through the hairpin: A's answer has crossed the stack, the
// host and the stack again (TTL 64-3); a direct pod → pod answer only the
// stack (TTL 63) and never touches the uplink; B's port unreachable and
// the stack's own time exceeded about a hairpinned packet reach A
// translated by the host (quoting A → service, from the service, as
// nf_nat_icmp_reply_translation rewrites them).
func TestReplyToHairpinTTLAndICMP(t *testing.T) {
	n, _, _ := hairpinNode(t, true)
	a, b := n.Pods[0], n.Pods[1]
	rx := tapRx(a)
	srv := udpListen(t, b, 5353)
	go udpEcho(srv)
	cli := udpListen(t, a, 40000)
	cli.WriteTo([]byte("via service"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(svcAddr, 53)))
	readFrom(t, cli)
	ip := rx.find(t, "the service's answer", func(ip header.IPv4) bool { return ip.Src() == svcAddr && ip.Protocol() == header.ProtoUDP })
	if ip.TTL() != 61 {
		t.Fatalf("the service's answer arrived with TTL %d, want 61 (stack, host, stack)", ip.TTL())
	}

	upTx := txCount(n.Stack, n.Uplink, b.Addr())
	direct := udpListen(t, b, 7000)
	go udpEcho(direct)
	cli.WriteTo([]byte("direct"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Addr(), 7000)))
	if _, from := readFrom(t, cli); from != netip.AddrPortFrom(b.Addr(), 7000) {
		t.Fatalf("direct answer from %v", from)
	}
	ip = rx.find(t, "B's direct answer", func(ip header.IPv4) bool { return ip.Src() == b.Addr() })
	if ip.TTL() != 63 {
		t.Fatalf("B's direct answer arrived with TTL %d, want 63", ip.TTL())
	}
	if d := upTx.Load(); d != 0 {
		t.Fatalf("pod → pod traffic sent %d packets out of the uplink", d)
	}

	quotes := func(ic header.IPv4, typ, code uint8, dport uint16) bool {
		m := header.ICMPv4(ic.Payload())
		if ic.Protocol() != header.ProtoICMP || m.Type() != typ || m.Code() != code {
			return false
		}
		in, ok := conntrack.CheckQuoted(m.Payload())
		return ok && in.Src() == a.Addr() && in.Dst() == svcAddr && header.UDP(in[in.HeaderLen():]).DstPort() == dport
	}
	// Nothing listens on B:5354 (the service's port 54).
	cli.WriteTo([]byte("closed"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(svcAddr, 54)))
	ic := rx.find(t, "port unreachable quoting A → service:54", func(ip header.IPv4) bool {
		return quotes(ip, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 54)
	})
	if ic.Src() != svcAddr {
		t.Fatalf("port unreachable from %v, want the service %v", ic.Src(), svcAddr)
	}

	// TTL 3: the stack forwards it with 2, the host with 1, and the stack
	// expires it on its way to B.
	seg := stacktest.Frame().IPv4Addr(a.Addr(), svcAddr).UDP(40001, 53).Payload([]byte("ttl")).Bytes()[header.IPv4MinSize:]
	if err := a.IPv4().QueueXmit(buf.FromBytes(buf.MaxHeadroom, seg), route.Flow{Dst: svcAddr, Proto: header.ProtoUDP, TTL: 3}); err != nil {
		t.Fatal(err)
	}
	ic = rx.find(t, "time exceeded quoting A → service:53", func(ip header.IPv4) bool {
		return quotes(ip, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 53)
	})
	if ic.Src() != svcAddr {
		t.Fatalf("time exceeded from %v, want the service %v (the host translates it)", ic.Src(), svcAddr)
	}
}

// The host reaches a pod (kubelet probes, node → pod): its flows enter on
// the uplink and their replies leave there, as before.
func TestReplyToHostToPod(t *testing.T) {
	n, _, _ := hairpinNode(t, true)
	b := n.Pods[1]
	srv := udpListen(t, b, 7000)
	go udpEcho(srv)
	c := udpDial(t, n.Host, netip.AddrPortFrom(b.Addr(), 7000))
	if _, err := c.Write([]byte("probe")); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, c); err != nil || got != "echo:probe" {
		t.Fatalf("host → pod: %q %v", got, err)
	}
}

// A peer that routes a reply straight back (here: the host's DNAT entry is
// gone, so it forwards B's answer as any packet to the pod range) gets it
// once and no more: a reply that came in on the uplink is routed by the
// FIB, so no loop burns the TTL between stack and host.
func TestReplyToNoLoop(t *testing.T) {
	n, _, hostNF := hairpinNode(t, true)
	a, b := n.Pods[0], n.Pods[1]
	srv := udpListen(t, b, 5353)
	cli := udpListen(t, a, 40000)
	cli.WriteTo([]byte("first"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(svcAddr, 53)))
	_, from := readFrom(t, srv)
	for _, e := range hostNF.Conntrack().List() {
		if c, _, ok := hostNF.Conntrack().Lookup(e.Original); ok {
			hostNF.Conntrack().Kill(c)
		}
	}
	upTx := txCount(n.Stack, n.Uplink, b.Addr())
	srv.WriteTo([]byte("late"), net.UDPAddrFromAddrPort(from))
	msg, got := readFrom(t, cli)
	if string(msg) != "late" || got != netip.AddrPortFrom(b.Addr(), 5353) {
		t.Fatalf("A got %q from %v", msg, got)
	}
	if d := upTx.Load(); d != 1 {
		t.Fatalf("the late answer left through the uplink %d times, want once", d)
	}
}

// flush empties a connection table, as a daemon restart leaves the
// stack's (conntrack -F).
func flush(nf *netfilter.Netfilter) {
	ct := nf.Conntrack()
	for _, e := range ct.List() {
		if c, _, ok := ct.Lookup(e.Original); ok {
			ct.Kill(c)
		}
	}
}

// After the stack's conntrack is emptied (a daemon restart), a Service
// flow whose client sends first recovers: its packet through the host
// opens a new entry on the uplink. One whose backend sends first opens
// the entry from the pod link and goes straight to the client, from the
// backend's address (docs/kubernetes.md says so).
func TestReplyToAfterConntrackFlush(t *testing.T) {
	n, stackNF, _ := hairpinNode(t, true)
	a, b := n.Pods[0], n.Pods[1]
	srv := udpListen(t, b, 5353)
	go udpEcho(srv)
	cli := udpListen(t, a, 40000)
	svc := net.UDPAddrFromAddrPort(netip.AddrPortFrom(svcAddr, 53))
	for _, m := range []string{"before", "client first"} {
		cli.WriteTo([]byte(m), svc)
		if msg, from := readFrom(t, cli); string(msg) != "echo:"+m || from != netip.AddrPortFrom(svcAddr, 53) {
			t.Fatalf("%s: A got %q from %v", m, msg, from)
		}
		flush(stackNF)
	}
	srv.WriteTo([]byte("backend first"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.Addr(), 40000)))
	if msg, from := readFrom(t, cli); string(msg) != "backend first" || from != netip.AddrPortFrom(b.Addr(), 5353) {
		t.Fatalf("backend first: A got %q from %v, want it from B itself", msg, from)
	}
}
