// Command floorrelay is the relay of the "floor" variants of `make bench`:
// the least a proxy in the host can cost on top of the kernel's veth path.
// The pod's TCP ends in the host kernel (a listener on -listen, the pod's
// ptp gateway address, one per port of -ports); each accepted connection
// gets a second host TCP connection to -upstream at the same port, and the
// bytes go across with splice(2) through a pipe: no copy into this
// process. What is left is what every host-socket relay pays beyond the
// kernel path — a second TCP connection over loopback, its softirq work and
// the wake-ups of whatever moves the bytes — with no userspace TCP/IP
// stack and no AF_PACKET. Each of -listen and -upstream is an IPv4 or an
// IPv6 address, its sockets of its own family (make bench's floors over
// IPv6: both IPv6).
//
// Two shapes (-mode): goroutines, the Go way (a goroutine per direction,
// io.Copy between two *net.TCPConn, which the runtime turns into splice
// and parks on its netpoller; what a Go proxy pays with a free stack), and
// epoll (epoll.go: an event loop per worker thread, edge-triggered, splice
// by hand; what any relay pays with no runtime in between).
//
// Protocol to the harness: one line "ready" on stdout once every port
// listens; on SIGUSR1 a runtime.GC and one line
// "memstats heap_inuse=<B> heap_alloc=<B> stack_inuse=<B> sys=<B> goroutines=<n> tcp_flows=<n>";
// SIGTERM or SIGINT exits. Limits: -max-flows relayed connections at once
// (past it a new one is closed at once, an RST in -mode epoll); each holds
// two sockets and two pipes (goroutines: the pipe Go's splice keeps while
// it waits; epoll: one per direction) and, in -mode goroutines, two
// goroutines.
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

// maxLoggedErrors bounds the errors written to stderr (the first few).
const maxLoggedErrors = 10

func main() {
	var listen, upstream, ports, mode string
	var maxFlows int64
	var timeout time.Duration
	var workers int
	flag.StringVar(&listen, "listen", "", "address the pod dials (its gateway)")
	flag.StringVar(&upstream, "upstream", "", "address the servers listen on (the host's primary address)")
	flag.StringVar(&ports, "ports", "", "comma list of TCP ports relayed listen:port → upstream:port")
	flag.StringVar(&mode, "mode", "goroutines", "goroutines: a goroutine per direction, io.Copy (splice); epoll: an event loop per worker thread, splice")
	flag.IntVar(&workers, "workers", runtime.NumCPU(), "-mode epoll: event loops (threads)")
	flag.Int64Var(&maxFlows, "max-flows", 65536, "relayed connections at once")
	flag.DurationVar(&timeout, "connect-timeout", 10*time.Second, "-mode goroutines: bound of one upstream connect")
	flag.Parse()
	l, err1 := netip.ParseAddr(listen)
	u, err2 := netip.ParseAddr(upstream)
	ps, err3 := parsePorts(ports)
	if err1 != nil || err2 != nil || err3 != nil || l.Is4In6() || u.Is4In6() || l.Zone() != "" || u.Zone() != "" || maxFlows < 1 || timeout <= 0 ||
		(mode != "goroutines" && mode != "epoll") || workers < 1 {
		fmt.Fprintf(os.Stderr, "floorrelay: need -listen, -upstream IPv4 or IPv6 addresses (not IPv4-mapped, no zone), -ports (%v), -mode goroutines|epoll, -workers ≥ 1\n", err3)
		os.Exit(2)
	}
	var flows atomic.Int64
	fatal := make(chan error, workers)
	if mode == "epoll" {
		if err := runEpoll(l, u, ps, workers, &flows, maxFlows, fatal); err != nil {
			fmt.Fprintln(os.Stderr, "floorrelay:", err)
			os.Exit(1)
		}
	} else if err := runGoroutines(l, u, ps, timeout, &flows, maxFlows, fatal); err != nil {
		fmt.Fprintln(os.Stderr, "floorrelay:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case err := <-fatal:
			fmt.Fprintln(os.Stderr, "floorrelay:", err)
			os.Exit(1)
		case v := <-sig:
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
}

// runGoroutines starts the goroutine relay: per port a listener whose
// connections each get an upstream dial and copyBoth. It returns once
// every port listens; an accept error is fatal.
func runGoroutines(l, u netip.Addr, ports []uint16, timeout time.Duration, flows *atomic.Int64, maxFlows int64, fatal chan<- error) error {
	var dialErrors atomic.Int64
	for _, p := range ports {
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(l, p)))
		if err != nil {
			return err
		}
		dst := netip.AddrPortFrom(u, p).String()
		go func() {
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					fatal <- fmt.Errorf("accept: %w", err)
					return
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
	return nil
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
