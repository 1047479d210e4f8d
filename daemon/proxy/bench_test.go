package proxy

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// BenchmarkTCPRelay is one pod TCP stream through the relay to a kernel
// sink on loopback (b.N chunks of 64 KiB); compare with the stack alone
// (netstack/tcp benchmarks) for the relay's cost.
func BenchmarkTCPRelay(b *testing.B) {
	for _, dir := range []string{"pod-to-host", "host-to-pod"} {
		b.Run(dir, func(b *testing.B) {
			r := newRig(b, nil)
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
