// Command holdserver is the host side of `make bench`'s memory benchmark:
// it listens on -ports ephemeral TCP ports of -addr, answers the first byte
// of each connection with one byte, and then holds the connection, reading
// until the peer closes. It is a process of its own so that its sockets
// count against its own open-file limit, not the harness's, which holds
// the pods' ends of the same connections.
//
// Protocol to the harness: one line "ready ports=<p1>,<p2>,…" on stdout
// once every port listens; on SIGUSR1 one line "held conns=<n>"; SIGTERM
// or SIGINT exits. Limit: -max connections held at once (past it a new one
// is closed at once); one goroutine each.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

func main() {
	var addr string
	var ports int
	var maxConns int64
	flag.StringVar(&addr, "addr", "", "address to listen on")
	flag.IntVar(&ports, "ports", 4, "how many ephemeral ports to listen on (1..64)")
	flag.Int64Var(&maxConns, "max", 65536, "connections held at once")
	flag.Parse()
	a, err := netip.ParseAddr(addr)
	if err != nil || ports < 1 || ports > 64 || maxConns < 1 {
		fmt.Fprintln(os.Stderr, "holdserver: need -addr, -ports 1..64, -max ≥ 1")
		os.Exit(2)
	}
	var held atomic.Int64
	var ps []string
	for i := 0; i < ports; i++ {
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
		if err != nil {
			fmt.Fprintln(os.Stderr, "holdserver:", err)
			os.Exit(1)
		}
		ps = append(ps, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		go func() {
			for {
				c, err := ln.AcceptTCP()
				if err != nil {
					fmt.Fprintln(os.Stderr, "holdserver: accept:", err)
					os.Exit(1)
				}
				if held.Add(1) > maxConns {
					held.Add(-1)
					c.Close()
					continue
				}
				go func() {
					defer held.Add(-1)
					defer c.Close()
					var b [1]byte
					if _, err := c.Read(b[:]); err != nil {
						return
					}
					if _, err := c.Write(b[:]); err != nil {
						return
					}
					for {
						if _, err := c.Read(b[:]); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	fmt.Println("ready ports=" + strings.Join(ps, ","))
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	for v := range sig {
		if v != syscall.SIGUSR1 {
			return
		}
		fmt.Printf("held conns=%d\n", held.Load())
	}
}
