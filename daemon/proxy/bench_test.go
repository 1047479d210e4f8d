package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

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
