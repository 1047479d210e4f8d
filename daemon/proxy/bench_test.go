package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// BenchmarkTCPRelay is one pod TCP stream through the relay to a kernel
// sink on loopback (b.N chunks of 64 KiB); compare with the stack alone
// (netstack/tcp benchmarks) for the relay's cost.
//
// gso runs the pod's link as a veth with PACKET_VNET_HDR is (64 KiB
// segments, partial checksums), as in production; mtu1500 without.
func BenchmarkTCPRelay(b *testing.B) {
	for _, bc := range []struct {
		link, dir string
	}{{"gso", "pod-to-host"}, {"gso", "host-to-pod"}, {"mtu1500", "pod-to-host"}, {"mtu1500", "host-to-pod"}} {
		dir := bc.dir
		b.Run(bc.link+"/"+dir, func(b *testing.B) {
			var linkOpts []pipe.Option
			if bc.link == "gso" {
				linkOpts = gsoPipe
			}
			r := newRigLink(b, nil, linkOpts)
			chunk := fill(64<<10, 5)
			done := make(chan int64, 1)
			port := kernelListener(b, func(c *net.TCPConn) {
				if dir == "pod-to-host" {
					n, _ := io.Copy(io.Discard, c)
					done <- n
					return
				}
				for i := 0; i < b.N; i++ {
					if _, err := c.Write(chunk); err != nil {
						break
					}
				}
				c.CloseWrite()
				io.Copy(io.Discard, c)
			})
			c, err := r.dialPod(ctxT(b, 5*time.Second), server, port)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			c0 := r.node.Stats().Counters
			b.ResetTimer()
			if dir == "pod-to-host" {
				for i := 0; i < b.N; i++ {
					if _, err := c.Write(chunk); err != nil {
						b.Fatal(err)
					}
				}
				c.(*tcp.Conn).CloseWrite()
				<-done
			} else {
				n, err := io.Copy(io.Discard, c)
				if err != nil || n != int64(b.N)*int64(len(chunk)) {
					b.Fatalf("read %d, %v", n, err)
				}
			}
			b.StopTimer()
			// The relay's segments toward the pod whose payload was
			// copied, not cloned from the send queue (tcp/sndq.go).
			c1 := r.node.Stats().Counters
			if out := c1["TcpOutSegs"] - c0["TcpOutSegs"]; out > 0 && dir == "host-to-pod" {
				zc := c1["TcpExtTCPZeroCopySegs"] - c0["TcpExtTCPZeroCopySegs"]
				b.ReportMetric(float64(out-zc)/float64(b.N), "copied-segs/op")
				b.ReportMetric(float64(out)/float64(b.N), "segs/op")
			}
		})
	}
}

// BenchmarkTCPStackOnly is the same stream ending in the engine's stack
// (a listener on the gateway), without the relay: the reference for
// BenchmarkTCPRelay.
func BenchmarkTCPStackOnly(b *testing.B) {
	r := newRig(b, nil)
	ln, err := r.node.ListenTCP(netip.AddrPortFrom(gwAddr, 7777))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- 0
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		done <- n
	}()
	c, err := r.dialPod(ctxT(b, 5*time.Second), gwAddr, 7777)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := fill(64<<10, 5)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.(*tcp.Conn).CloseWrite()
	<-done
}

// BenchmarkTCPRelayRR is one byte each way through the relay per op (a
// pod's request, the kernel server's response, over one connection):
// the latency of the relay path in process, and its allocations per
// round trip (the pod's stack and the pipe included).
func BenchmarkTCPRelayRR(b *testing.B) {
	r := newRig(b, nil)
	port := kernelListener(b, func(c *net.TCPConn) {
		c.SetNoDelay(true)
		var p [1]byte
		for {
			if _, err := io.ReadFull(c, p[:]); err != nil {
				return
			}
			if _, err := c.Write(p[:]); err != nil {
				return
			}
		}
	})
	c, err := r.dialPod(ctxT(b, 5*time.Second), server, port)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.(*tcp.Conn).SetNoDelay(true)
	var p [1]byte
	rr := func() {
		if _, err := c.Write(p[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, p[:]); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ {
		rr()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rr()
	}
}

// BenchmarkTCPRelayConnect is one relayed connection per op: the pod
// connects (upstream first: the kernel server accepts before the pod's
// SYN is answered), sends a byte, reads the answer and closes — the
// bench's connections/s, in process. allocs/op is per connection.
func BenchmarkTCPRelayConnect(b *testing.B) {
	r := newRig(b, nil)
	port := kernelListener(b, func(c *net.TCPConn) {
		var p [1]byte
		if _, err := io.ReadFull(c, p[:]); err == nil {
			c.Write(p[:])
		}
		io.Copy(io.Discard, c)
	})
	var p [1]byte
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := r.dialPod(ctx, server, port)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(p[:]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, p[:]); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// rawUDPEcho is a loopback UDP server answering each datagram with its
// payload, on a bare fd (no Go object per flow), so what a benchmark
// counts on the heap and in goroutines is the engine's.
func rawUDPEcho(tb testing.TB) uint16 {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	must(tb, err)
	must(tb, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	must(tb, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}))
	sa, err := unix.Getsockname(fd)
	must(tb, err)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 2048)
		for !stop.Load() {
			n, from, err := unix.Recvfrom(fd, b, 0)
			if err == nil {
				unix.Sendto(fd, b[:n], 0, from)
			}
		}
	}()
	tb.Cleanup(func() { stop.Store(true); <-done; unix.Close(fd) })
	return uint16(sa.(*unix.SockaddrInet4).Port)
}

// BenchmarkUDPQueryNewFlow is one name lookup's shape per op: the pod
// opens a UDP socket (a new source port, so a new flow through the
// relay), sends a datagram, reads the answer and closes. allocs/op is
// per flow, both stacks' sockets included; the flows stay open until
// the idle timeout, as a resolver's do (limits raised). Each op binds
// the next of 10 000 source ports, so past 10 000 ops lookups reuse open
// flows (a host socket each: the process's descriptors bound how many
// can be open), and the stack's ephemeral choice cannot take a port
// whose flow is still open.
func BenchmarkUDPQueryNewFlow(b *testing.B) {
	benchUDPQueries(b, func(c *Config) { c.MaxFlowsPerPod, c.MaxUDPFlows = 1<<20, 1<<20 })
}

// BenchmarkUDPQueryAtLimit is BenchmarkUDPQueryNewFlow with the default
// limits: past MaxFlowsPerPod lookups every new flow evicts an answered
// one (udpEvictLocked), whose cost is in ns/op; evicted/op says how
// many ops did.
func BenchmarkUDPQueryAtLimit(b *testing.B) { benchUDPQueries(b, nil) }

func benchUDPQueries(b *testing.B, mod func(*Config)) {
	r := newRig(b, mod)
	must(b, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	dst := netip.AddrPortFrom(server, rawUDPEcho(b))
	p := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := r.pod.DialUDP(netip.AddrPortFrom(podAddr, uint16(10000+i%10000)), dst)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(p[:32]); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(p); err != nil {
			b.Fatalf("query %d: %v (%+v)", i, err, r.e.Stats())
		}
		c.Close()
	}
	b.ReportMetric(float64(r.e.Stats().UDPEvicted)/float64(b.N), "evicted/op")
}

// BenchmarkIdleUDPFlowMemory is the engine's memory and goroutines per
// open, quiet UDP flow: n flows (n source ports), each after one
// datagram each way. The pod's sockets are closed, so what stays is the engine's flow (its
// host socket's kernel memory is not on Go's heap).
func BenchmarkIdleUDPFlowMemory(b *testing.B) {
	const n = 2000
	for i := 0; i < b.N; i++ {
		r := newRig(b, func(c *Config) { c.MaxFlowsPerPod, c.MaxUDPFlows = 1<<20, 1<<20 })
		must(b, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
		dst := netip.AddrPortFrom(server, rawUDPEcho(b))
		p := make([]byte, 64)
		query := func(port uint16) {
			c, err := r.pod.DialUDP(netip.AddrPortFrom(podAddr, port), dst)
			must(b, err)
			defer c.Close()
			if _, err := c.Write(p[:32]); err != nil {
				b.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(p); err != nil {
				b.Fatalf("%v; engine %+v", err, r.e.Stats())
			}
		}
		port := uint16(10000)
		reportFlowMemory(b, n, func() { query(port); port++ }, func() int { return r.e.Stats().ActiveUDP }, "UDP")
		r.e.Close() // its sockets now, not at cleanup: b.N rigs' would run out of descriptors
	}
}

// BenchmarkIdlePortMapUDPFlowMemory is the engine's memory and goroutines
// per open, quiet UDP port-mapping flow: n host clients (bare sockets, so
// the test's own Go heap does not grow with them) each send one datagram
// to a mapped host port and read the pod's reply.
func BenchmarkIdlePortMapUDPFlowMemory(b *testing.B) {
	const n = 1000
	for i := 0; i < b.N; i++ {
		r := newRig(b, func(c *Config) { c.MaxFlowsPerPod, c.MaxUDPFlows = 1<<20, 1<<20 })
		r.podUDPServer(b, 9090)
		hp := r.addMappedPod(b, "udp", 9090)
		to := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(hp)}
		p := make([]byte, 64)
		var fds []int
		query := func() {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			must(b, err)
			fds = append(fds, fd)
			must(b, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}))
			must(b, unix.Sendto(fd, p[:32], 0, to))
			for {
				_, _, err := unix.Recvfrom(fd, p, 0)
				if err == unix.EINTR { // the runtime's preemption signal
					continue
				}
				if err != nil {
					b.Fatalf("%v; engine %+v", err, r.e.Stats())
				}
				break
			}
		}
		reportFlowMemory(b, n, query, func() int { return r.e.Stats().ActiveUDP }, "port-mapping UDP")
		r.e.Close()
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
}

// BenchmarkPortMapUDPRR is a datagram each way per op through a UDP port
// mapping's flow: a host client's request to the mapped port, the pod's
// reply back (relayed by the flow's drain). allocs/op is per request and
// reply, both stacks and the pod's server (podUDPServer, which reuses its
// buffer) included; the client is a bare socket.
func BenchmarkPortMapUDPRR(b *testing.B) {
	r := newRig(b, nil)
	r.podUDPServer(b, 9090)
	hp := r.addMappedPod(b, "udp", 9090)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	must(b, err)
	defer unix.Close(fd)
	must(b, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}))
	must(b, unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(hp)}))
	p := make([]byte, 64)
	rr := func() {
		if _, err := unix.Write(fd, p[:32]); err != nil {
			b.Fatal(err)
		}
		for {
			_, err := unix.Read(fd, p)
			if err == unix.EINTR { // the runtime's preemption signal
				continue
			}
			if err != nil {
				b.Fatalf("%v; engine %+v", err, r.e.Stats())
			}
			return
		}
	}
	rr()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rr()
	}
}

// BenchmarkUDPRelayRR is a datagram each way per op on one flow (a
// stream's steady state): allocs/op is per relayed request and reply,
// both stacks and the echo server included — the server's recvfrom
// allocates two (the sender's sockaddr); the stacks and the relay none.
func BenchmarkUDPRelayRR(b *testing.B) {
	r := newRig(b, nil)
	must(b, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, rawUDPEcho(b)))
	must(b, err)
	defer c.Close()
	p := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(p[:32]); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(p); err != nil {
			b.Fatalf("datagram %d: %v", i, err)
		}
	}
}

// BenchmarkIdleEchoFlowMemory is the engine's memory and goroutines per
// open, quiet ICMP echo flow: n flows (Stack.Ping takes a new identifier
// each time, so a flow each), each after one request and its reply.
// ping: each flow through its own ping socket (opened in a private netns
// where ping sockets are allowed, pingNetns, to its loopback); raw: the
// engine's raw ICMP socket (ping sockets refused), an identifier each.
func BenchmarkIdleEchoFlowMemory(b *testing.B) {
	for _, mode := range []string{"ping", "raw"} {
		b.Run(mode, func(b *testing.B) {
			const n = 1000
			for i := 0; i < b.N; i++ {
				r := newRig(b, func(c *Config) { c.MaxFlowsPerPod = 1 << 20 })
				must(b, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
				echoMode(b, r, mode)
				payload := make([]byte, 56)
				ping := func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					if _, err := r.pod.Ping(ctx, server, 1, payload); err != nil {
						b.Fatalf("%v; engine %+v", err, r.e.Stats())
					}
				}
				reportFlowMemory(b, n, ping, func() int { return r.e.Stats().ActiveEcho }, "echo")
				r.e.Close() // its sockets now: b.N rigs' would run out of descriptors
			}
		})
	}
}

// refusePing is an openPing that fails as a host refusing ping sockets
// does (EACCES), of open's type.
func refusePing[T any](open func(netip.Addr) (T, error)) func(netip.Addr) (T, error) {
	return func(netip.Addr) (T, error) {
		var zero T
		return zero, os.NewSyscallError("socket", syscall.EACCES)
	}
}

// BenchmarkEchoNewFlow is one ping per op from the pod through a new echo
// flow (Stack.Ping takes a new identifier each time): the request path
// (intercept, flow open, send), the reply path and the pod's stack, in
// process; allocs/op per flow. ping and raw as in
// BenchmarkIdleEchoFlowMemory. Flows stay open (a socket each in ping
// mode): run it with -benchtime of at most a few thousand ops.
func BenchmarkEchoNewFlow(b *testing.B) {
	for _, mode := range []string{"ping", "raw"} {
		b.Run(mode, func(b *testing.B) {
			r := newRig(b, func(c *Config) { c.MaxFlowsPerPod = 1 << 20 })
			must(b, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			echoMode(b, r, mode)
			payload := make([]byte, 56)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := r.pod.Ping(ctx, server, 1, payload)
				cancel()
				if err != nil {
					b.Fatalf("ping %d: %v; engine %+v", i, err, r.e.Stats())
				}
			}
		})
	}
}

// BenchmarkEchoRelayRR is one echo request and its reply per op on one
// open flow (a ping's steady state), from the engine's side: the request
// handed to the interceptor as the NIC's goroutine does, the reply seen
// arriving at the pod (a tap on its link). What it measures is the
// relay's path both ways — its hand-offs between goroutines included —
// and its allocations per round trip (the benchmark itself allocates
// none). ping and raw as in BenchmarkIdleEchoFlowMemory.
func BenchmarkEchoRelayRR(b *testing.B) {
	for _, mode := range []string{"ping", "raw"} {
		b.Run(mode, func(b *testing.B) {
			r := newRig(b, nil)
			must(b, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			echoMode(b, r, mode)
			const id = 0x4242
			replies := make(chan struct{}, 1)
			remove := r.pod.Devices().AddTap(func(_ *dev.NIC, skb *buf.SKB, dir dev.Direction) {
				if dir != dev.Rx {
					return
				}
				ip, ok := icmpFrame(skb)
				if !ok {
					return
				}
				if m := header.ICMPv4(ip.Payload()); m.Type() == header.ICMPv4EchoReply && m.ID() == id {
					select {
					case replies <- struct{}{}:
					default:
					}
				}
			})
			defer remove()
			payload := make([]byte, 56)
			// One timer for every wait, so that allocs/op is the relay's.
			timeout := time.NewTimer(time.Hour)
			defer timeout.Stop()
			rr := func(seq uint16) {
				r.e.echo.intercept(ipv4.EchoRequest{Src: podAddr, Dst: server, ID: id, Seq: seq, Payload: payload})
				timeout.Reset(5 * time.Second)
				select {
				case <-replies:
				case <-timeout.C:
					b.Fatalf("no reply to request %d; engine %+v", seq, r.e.Stats())
				}
			}
			for i := 0; i < 100; i++ {
				rr(uint16(i))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rr(uint16(i))
			}
		})
	}
}
