package tcp

import (
	"fmt"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// BenchmarkRcvInOrder is the receive hot path of one established
// connection, one op per in-order data segment: V4Rcv (validation,
// lookup, the state machine, queueing, the ACK it sends) and the read
// that empties the queue. The segment's SKB is built by the test as a
// link would hand it over (a pooled buffer, one copy). allocs/op is per
// segment and must stay 0; acks/op is how many ACKs the stack sent.
// 1448 bytes is an MTU-sized segment, 65000 a veth GSO super-segment;
// batch is the segments per receive batch (buf.Batch, flushed after
// them as dev does), 0 for segments outside any batch.
func BenchmarkRcvInOrder(b *testing.B) {
	for _, bc := range []struct{ size, batch int }{{1448, 0}, {1448, 16}, {65000, 0}, {65000, 16}} {
		size := bc.size
		b.Run(fmt.Sprintf("size=%d/batch=%d", size, bc.batch), func(b *testing.B) {
			c := newPeer(b, Config{})
			s := c.establishPassive(header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7,
				SACKPermitted: true, HasTS: true, TSVal: c.TSVal})
			acks := 0
			c.ip.out = func(skb *buf.SKB) { acks++; skb.Consume() }
			payload := make([]byte, size)
			rb := make([]byte, 256<<10)
			seq := c.ISS + 1
			opts := header.TCPOptions{HasTS: true, TSVal: c.TSVal}
			var batch *buf.Batch
			if bc.batch > 0 {
				batch = new(buf.Batch)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				opts.TSVal++
				c.Send(c.Seg().Flags(ACK | PSH).Seq(seq).Ack(c.IRS + 1).Opts(opts).Data(payload).Batch(batch))
				seq += uint32(size)
				if batch != nil && (i%bc.batch == bc.batch-1 || i == b.N-1) {
					batch.Flush()
				}
				for {
					n, _ := s.Read(rb)
					if n == 0 {
						break
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(acks)/float64(b.N), "acks/op")
			if s.State() != Established {
				b.Fatalf("state %v", s.State())
			}
		})
	}
}
