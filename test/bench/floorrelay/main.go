// Command floorrelay is the relay of the "floor" variant of `make bench`:
// the least a proxy in the host can cost on top of the kernel's veth path.
// The pod's TCP ends in the host kernel (a listener on -listen, the pod's
// ptp gateway address, one per port of -ports); each accepted connection
// gets a second host TCP connection to -upstream at the same port, and the
// bytes go across with io.Copy between the two *net.TCPConn, which the Go
// runtime turns into splice(2) through a pipe: no copy into this process.
// What is left is exactly what every host-socket relay pays beyond the
// kernel path — a second TCP connection over loopback, its softirq work and
// two wake-ups per batch — with no userspace TCP/IP stack and no AF_PACKET.
//
// Protocol to the harness: one line "ready" on stdout once every port
// listens; on SIGUSR1 a runtime.GC and one line
// "memstats heap_inuse=<B> heap_alloc=<B> stack_inuse=<B> sys=<B> goroutines=<n> tcp_flows=<n>";
// SIGTERM or SIGINT exits. Limits: -max-flows relayed connections at once
// (past it a new one is closed at once); each holds two goroutines and,
// while bytes move, a pooled pipe.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	var listen, upstream, ports string
	var maxFlows int64
	var timeout time.Duration
	flag.StringVar(&listen, "listen", "", "address the pod dials (its gateway)")
	flag.StringVar(&upstream, "upstream", "", "address the servers listen on (the host's primary address)")
	flag.StringVar(&ports, "ports", "", "comma list of TCP ports relayed listen:port → upstream:port")
	flag.Int64Var(&maxFlows, "max-flows", 65536, "relayed connections at once")
	flag.DurationVar(&timeout, "connect-timeout", 10*time.Second, "bound of one upstream connect")
	flag.Parse()
	l, err1 := netip.ParseAddr(listen)
	u, err2 := netip.ParseAddr(upstream)
	ps, err3 := parsePorts(ports)
	if err1 != nil || err2 != nil || err3 != nil || maxFlows < 1 || timeout <= 0 {
		fmt.Fprintf(os.Stderr, "floorrelay: need -listen, -upstream addresses, -ports (%v)\n", err3)
		os.Exit(2)
	}
	var flows, dialErrors atomic.Int64
	const maxLoggedErrors = 10 // the first few dial errors go to stderr
	for _, p := range ps {
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(l, p)))
		if err != nil {
			fmt.Fprintln(os.Stderr, "floorrelay:", err)
			os.Exit(1)
		}
		dst := netip.AddrPortFrom(u, p).String()
		go func() {
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					fmt.Fprintln(os.Stderr, "floorrelay: accept:", err)
					os.Exit(1)
				}
				if flows.Add(1) > maxFlows {
					flows.Add(-1)
					c.Close()
					continue
				}
				go func() {
					defer flows.Add(-1)
					d := net.Dialer{Timeout: timeout}
					up, err := d.Dial("tcp", dst)
					if err != nil {
						if dialErrors.Add(1) <= maxLoggedErrors {
							fmt.Fprintln(os.Stderr, "floorrelay: dial:", err)
						}
						c.SetLinger(0)
						c.Close()
						return
					}
					copyBoth(c, up.(*net.TCPConn))
				}()
			}
		}()
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	for v := range sig {
		if v != syscall.SIGUSR1 {
			return
		}
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Printf("memstats heap_inuse=%d heap_alloc=%d stack_inuse=%d sys=%d goroutines=%d tcp_flows=%d\n",
			m.HeapInuse, m.HeapAlloc, m.StackInuse, m.Sys, runtime.NumGoroutine(), flows.Load())
	}
}

// parsePorts reads "p1,p2,…" (1..65535 each, at least one, at most 64).
func parsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q", f)
		}
		out = append(out, uint16(n))
	}
	if len(out) > 64 {
		return nil, fmt.Errorf("%d ports, at most 64", len(out))
	}
	return out, nil
}

// copyBoth copies a→b and b→a (splice between TCP sockets). EOF on one
// side becomes CloseWrite on the other and the other direction goes on; an
// error on either closes both. Both are closed when both directions end.
func copyBoth(a, b *net.TCPConn) {
	done := make(chan struct{})
	one := func(dst, src *net.TCPConn) {
		_, err := io.Copy(dst, src)
		if err == nil {
			err = dst.CloseWrite()
		}
		if err != nil {
			a.Close()
			b.Close()
		}
	}
	go func() { one(b, a); close(done) }()
	one(a, b)
	<-done
	a.Close()
	b.Close()
}
