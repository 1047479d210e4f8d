package ipv4

import (
	"net/netip"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

func rcvLocalDeliver(tn *testNet, b []byte) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.InNIC = 1
	skb.Drops = &tn.drops
	tn.l.Rcv(nil, skb)
}

// The rcv → localDeliver → Protocol.Rcv path allocates nothing.
func TestRcvLocalDeliverDoesNotAllocate(t *testing.T) {
	tn := newTestNet(t)
	tn.noCopy = true
	b := pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoUDP, payload: udpish(1000)}.bytes()
	rcvLocalDeliver(tn, b) // warm the pools
	if n := testing.AllocsPerRun(1000, func() { rcvLocalDeliver(tn, b) }); n != 0 {
		t.Fatalf("%.1f allocs per received datagram", n)
	}
	if tn.counter("IpInDelivers") != 1002 {
		t.Fatalf("delivered %d", tn.counter("IpInDelivers"))
	}
	fl := flowTo("10.1.0.5")
	p := udpish(1000)
	if n := testing.AllocsPerRun(1000, func() {
		_ = tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, p), fl)
	}); n != 0 {
		t.Fatalf("%.1f allocs per transmitted datagram", n)
	}
}

func BenchmarkRcvLocalDeliver(b *testing.B) {
	tn := newTestNet(b)
	tn.noCopy = true
	p := pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoUDP, payload: udpish(1400)}.bytes()
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		rcvLocalDeliver(tn, p)
	}
}

func BenchmarkForward(b *testing.B) {
	tn := newTestNet(b)
	tn.noCopy = true
	p := pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, payload: udpish(900)}.bytes()
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		rcvLocalDeliver(tn, p)
	}
}

// QueueXmit to a resolved (static) neighbour through real neigh and dev
// onto a pipe whose far end is drained.
func BenchmarkQueueXmit(b *testing.B) {
	clk := clock.NewManual()
	ea, eb := pipe.New(1500)
	h := newHost(b, clk, ea, "a0", macA, "10.1.0.1")
	h.nic.Up()
	go drain(eb)
	if err := h.neigh.AddStatic(h.nic.ID(), ip("10.1.0.5"), macB); err != nil {
		b.Fatal(err)
	}
	fl := route.Flow{Dst: ip("10.1.0.5"), Proto: header.ProtoUDP}
	p := udpish(1400)
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if err := h.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, p), fl); err != nil {
			b.Fatal(err)
		}
	}
}

// replyToNet is the test node with netfilter (conntrack, no rules) and
// NIC 2, the uplink, as its reply-to NIC, as the daemon sets it up. A flow
// 10.1.0.5 → 10.1.0.6 is tracked, opened on NIC 2 (hostFlow: the host
// sent it in) or on NIC 1 (pod to pod); the returned datagram is its
// reply from NIC 1, which reply-to routes back to NIC 2 for a host flow
// and the FIB to NIC 1 for the other.
func replyToNet(tb testing.TB, hostFlow bool) (*testNet, []byte) {
	tn := newTestNet(tb)
	tn.noCopy = true
	nf := netfilter.New(netfilter.Config{Hooks: tn.hooks, Clock: tn.clk})
	if err := nf.SetReplyTo(2, true); err != nil {
		tb.Fatal(err)
	}
	tn.l.SetRPFilter(2, false)
	in := 1
	if hostFlow {
		in = 2
	}
	tn.rcv(in, pkt{src: "10.1.0.5", dst: "10.1.0.6", proto: header.ProtoUDP, payload: udpSeg(40000, 8080, 900)}.bytes())
	reply := pkt{src: "10.1.0.6", dst: "10.1.0.5", proto: header.ProtoUDP, payload: udpSeg(8080, 40000, 900)}.bytes()
	tn.rcv(1, reply) // the flow has seen its reply: every later one is ESTABLISHED
	return tn, reply
}

// Forwarding a reply of a tracked flow allocates nothing, rerouted by
// reply-to or not.
func TestForwardReplyToDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	for _, hostFlow := range []bool{false, true} {
		tn, reply := replyToNet(t, hostFlow)
		var out []sent
		tn.l.out = func(nic int, nh netip.Addr, skb *buf.SKB) {
			if len(out) == 0 {
				out = append(out, sent{nic: nic, nextHop: nh})
			}
			skb.Consume()
		}
		rcv := func() {
			skb := buf.FromBytes(buf.MaxHeadroom, reply)
			skb.InNIC = 1
			skb.Drops = &tn.drops
			tn.l.Rcv(nil, skb)
		}
		rcv()
		if want := map[bool]int{false: 1, true: 2}[hostFlow]; len(out) != 1 || out[0].nic != want {
			t.Fatalf("host flow %v: sent %+v, want out of NIC %d", hostFlow, out, want)
		}
		if n := testing.AllocsPerRun(1000, rcv); n != 0 {
			t.Fatalf("host flow %v: %.1f allocs per forwarded reply", hostFlow, n)
		}
	}
}

// BenchmarkForwardTracked forwards the reply of a tracked flow through
// rcv, PREROUTING (conntrack), the routing decision, FORWARD and
// POSTROUTING to the link, with the uplink as reply-to NIC: "pod-to-pod"
// is a flow the FIB routes (what reply-to costs it: the load of the
// Conn's reply NIC and a read of skb.CB), "reply-to" a flow the host sent
// in, whose reply is rerouted to the uplink (route.Via on top).
func BenchmarkForwardTracked(b *testing.B) {
	for _, bc := range []struct {
		name     string
		hostFlow bool
	}{{"pod-to-pod", false}, {"reply-to", true}} {
		b.Run(bc.name, func(b *testing.B) {
			tn, reply := replyToNet(b, bc.hostFlow)
			b.ReportAllocs()
			b.SetBytes(int64(len(reply)))
			for b.Loop() {
				skb := buf.FromBytes(buf.MaxHeadroom, reply)
				skb.InNIC = 1
				skb.Drops = &tn.drops
				tn.l.Rcv(nil, skb)
			}
		})
	}
}
