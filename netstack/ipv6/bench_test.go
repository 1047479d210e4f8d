package ipv6

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

func rcvLocal(tn *testNet, b []byte) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.InNIC = 1
	skb.Drops = &tn.drops
	tn.l.Rcv(nil, skb)
}

// The receive → local delivery → Protocol.Rcv path and local output
// allocate nothing, as IPv4's (the FIB snapshot, the PMTU cache's empty
// fast path and the hash-based flow label are allocation-free).
func TestNoAllocsPerPacket(t *testing.T) {
	tn := newTestNet(t)
	tn.noCopy = true
	b := pkt{src: pod, dst: gw, proto: header.ProtoUDP, payload: udpish(1000)}.bytes()
	rcvLocal(tn, b) // warm the pools
	if n := testing.AllocsPerRun(1000, func() { rcvLocal(tn, b) }); n != 0 {
		t.Fatalf("%.1f allocs per received packet", n)
	}
	if tn.counter("Ip6InDelivers") != 1002 {
		t.Fatalf("delivered %d", tn.counter("Ip6InDelivers"))
	}
	fwd := pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(1000)}.bytes()
	rcvLocal(tn, fwd)
	if n := testing.AllocsPerRun(1000, func() { rcvLocal(tn, fwd) }); n != 0 {
		t.Fatalf("%.1f allocs per forwarded packet", n)
	}
	fl := flowTo(pod)
	p := udpish(1000)
	if n := testing.AllocsPerRun(1000, func() {
		_ = tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, p), fl)
	}); n != 0 {
		t.Fatalf("%.1f allocs per transmitted packet", n)
	}
}

func BenchmarkRcvLocalDeliver(b *testing.B) {
	tn := newTestNet(b)
	tn.noCopy = true
	p := pkt{src: pod, dst: gw, proto: header.ProtoUDP, payload: udpish(1400)}.bytes()
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		rcvLocal(tn, p)
	}
}

func BenchmarkForward(b *testing.B) {
	tn := newTestNet(b)
	tn.noCopy = true
	p := pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(900)}.bytes()
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		rcvLocal(tn, p)
	}
}

func BenchmarkQueueXmit(b *testing.B) {
	tn := newTestNet(b)
	tn.noCopy = true
	fl := flowTo(pod)
	p := udpish(1400)
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, p), fl); err != nil {
			b.Fatal(err)
		}
	}
}
