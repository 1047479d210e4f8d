package ipv4

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// BenchmarkReassemble receives a 60000-byte UDP datagram as 41 fragments
// and reassembles it; allocs/op are per datagram.
func BenchmarkReassemble(b *testing.B) {
	sender := newTestNet(b)
	if err := sender.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(60000)), flowTo("10.1.0.5")); err != nil {
		b.Fatal(err)
	}
	frags := sender.take()
	rx := newTestNet(b, withPeerFIB)
	rx.fib = rx.l.fib
	rx.noCopy = true
	b.ReportAllocs()
	b.SetBytes(60000)
	for b.Loop() {
		for _, f := range frags {
			rx.rcv(1, f.b)
		}
	}
	if rx.counter("IpReasmFails") != 0 {
		b.Fatalf("counters %v", rx.l.Counters())
	}
}
