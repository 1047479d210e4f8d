package tcp

import (
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTransferInMemory is one connection's throughput through two
// Protos on the simulated wire (no IP, no links: TCP's own cost, both
// ends on one goroutine), with and without GSO-sized segments. allocs/op
// counts allocations per 64 KiB written (about 45 wire segments).
func BenchmarkTransferInMemory(b *testing.B) {
	for _, gso := range []bool{false, true} {
		b.Run(fmt.Sprintf("gso=%v", gso), func(b *testing.B) {
			w := newWire(b, wireCfg{delay: 50 * time.Microsecond, gso: gso}, Config{})
			c, s := w.connect()
			buf := make([]byte, 64<<10)
			rb := make([]byte, 256<<10)
			var segs0 uint64 = w.a.Counter(OutSegs)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sent, rcvd := 0, 0
				w.run(time.Minute, func() bool {
					if sent < len(buf) {
						n, _ := c.Write(buf[sent:])
						sent += n
					}
					for {
						n, err := s.Read(rb)
						rcvd += n
						if err != nil || n == 0 {
							break
						}
					}
					return rcvd == len(buf)
				})
			}
			b.StopTimer()
			b.ReportMetric(float64(w.a.Counter(OutSegs)-segs0)/float64(b.N), "segs/op")
		})
	}
}

// The bytes an idle established connection costs, buffers excluded
// (they are allocated on first use): the target is under
// 16 KiB. 10 000 connections are held at once.
func TestMemoryPerIdleConnection(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 2000
	}
	w := newWire(t, wireCfg{}, Config{})
	l := w.b.NewSock()
	l.Bind(netip.AddrPortFrom(remoteAddr, 80))
	l.Listen(MaxBacklog)
	l.SetNonblock(true)
	socks := make([]*Sock, 0, 2*n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		c := w.a.NewSock()
		c.SetNonblock(true)
		if err := c.Connect(netip.AddrPortFrom(remoteAddr, 80)); err != syscall.EINPROGRESS {
			t.Fatalf("connect %d: %v", i, err)
		}
		socks = append(socks, c)
		if i%512 == 511 || i == n-1 {
			w.run(time.Minute, func() bool {
				for {
					s, err := l.Accept(time.Time{})
					if err != nil {
						break
					}
					socks = append(socks, s)
				}
				return len(socks) == 2*(i+1)
			})
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	for _, s := range socks {
		if st := s.State(); st != Established {
			t.Fatalf("%v", st)
		}
	}
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(len(socks))
	t.Logf("%d established connections (both ends): %.0f bytes per connection end, heap %d MiB",
		len(socks), per, after.HeapAlloc>>20)
	if per > 16<<10 {
		t.Fatalf("%.0f bytes per idle connection, want < 16 KiB", per)
	}
	runtime.KeepAlive(socks)
}
