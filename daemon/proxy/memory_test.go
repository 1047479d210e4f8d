package proxy

import (
	"context"
	"io"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// rawListener is a loopback TCP listener whose accepted connections are
// bare fds (no Go object, no goroutine each), so what a benchmark counts
// on the heap is the engine's. Each accepted connection is sent one byte.
type rawListener struct {
	fd   int
	port uint16
	mu   sync.Mutex
	fds  []int
	done chan struct{}
}

func newRawListener(tb testing.TB) *rawListener {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	must(tb, err)
	must(tb, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1))
	must(tb, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	must(tb, unix.Listen(fd, 4096))
	sa, err := unix.Getsockname(fd)
	must(tb, err)
	l := &rawListener{fd: fd, port: uint16(sa.(*unix.SockaddrInet4).Port), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			if err != nil {
				return
			}
			unix.Write(c, []byte{1})
			l.mu.Lock()
			l.fds = append(l.fds, c)
			l.mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		unix.Shutdown(fd, unix.SHUT_RDWR) // ends the blocked accept
		<-l.done
		unix.Close(fd)
		l.mu.Lock()
		for _, c := range l.fds {
			unix.Close(c)
		}
		l.mu.Unlock()
	})
	return l
}

// heapNow is the live heap plus goroutine stacks after a GC.
func heapNow() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse, runtime.NumGoroutine()
}

// reportFlowMemory reports the heap and goroutines each of n flows holds
// once open and quiet: open opens one (the first warms the pools and
// tables and is not counted), active says how many the engine has open,
// n+1 by then.
func reportFlowMemory(b *testing.B, n int, open func(), active func() int, kind string) {
	b.Helper()
	open()
	before, g0 := heapNow()
	for range n {
		open()
	}
	after, g1 := heapNow()
	if got := active(); got != n+1 {
		b.Fatalf("%d %s flows open, want %d", got, kind, n+1)
	}
	b.ReportMetric(float64(after-before)/float64(n), "B/flow")
	b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/flow")
}

// idleConns opens n connections from the pod, each moving one byte each
// way (a pod write, the server's byte read back), then left idle; relay
// says whether they go through the relay to the raw listener or end in
// the engine's stack (a listener on the gateway). It returns the memory
// and goroutines they hold, per connection.
func idleConns(b *testing.B, n int, relay bool) (perConn float64, goroutines float64) {
	r := newRig(b, nil)
	dst, port := server, uint16(0)
	var held []*tcp.Conn
	if relay {
		port = newRawListener(b).port
	} else {
		ln, err := r.node.ListenTCP(netip.AddrPortFrom(gwAddr, 7777))
		must(b, err)
		b.Cleanup(func() { ln.Close() })
		dst, port = gwAddr, 7777
		go func() {
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					return
				}
				c.Write([]byte{1})
				held = append(held, c)
			}
		}()
	}
	// Warm the pools and the tables with one connection, as a
	// running daemon has them.
	warm, err := r.dialPod(context.Background(), dst, port)
	must(b, err)
	defer warm.Close()
	before, g0 := heapNow()
	conns := make([]*tcp.Conn, 0, n)
	var p [1]byte
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := r.dialPod(ctx, dst, port)
		cancel()
		must(b, err)
		tc := c.(*tcp.Conn)
		if _, err := tc.Write(p[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(tc, p[:]); err != nil {
			b.Fatal(err)
		}
		conns = append(conns, tc)
	}
	// Let the last ACKs and window updates settle.
	time.Sleep(200 * time.Millisecond)
	after, g1 := heapNow()
	runtime.KeepAlive(conns)
	runtime.KeepAlive(held)
	return float64(after-before) / float64(n), float64(g1-g0) / float64(n)
}

// BenchmarkIdleRelayMemory is the daemon's memory per idle relayed
// connection (the target: at most 8 KiB): n connections through
// the relay, each after a byte each way, held idle. The pod's stack
// shares the process, so the same n connections ending in the engine's
// stack are measured too (a stack socket at each end and a conntrack
// entry): B/relay is relayed − stack-only/2, the engine's side of a
// relayed connection — its stack socket, relay, host fd, flow entry and
// conntrack entry — less half a conntrack entry (about 0.3 KiB), and
// goroutines/relay what each added (0: no goroutine per flow). Kernel
// memory (the host socket's buffers) is not on Go's heap.
func BenchmarkIdleRelayMemory(b *testing.B) {
	const n = 2000
	for i := 0; i < b.N; i++ {
		relayed, g := idleConns(b, n, true)
		stackOnly, _ := idleConns(b, n, false)
		b.ReportMetric(relayed-stackOnly/2, "B/relay")
		b.ReportMetric(stackOnly/2, "B/stack-socket")
		b.ReportMetric(g, "goroutines/relay")
	}
}
