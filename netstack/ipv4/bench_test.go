package ipv4

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
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
