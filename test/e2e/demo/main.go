// Command demo is what `make demo` runs: real kernel hosts in network
// namespaces exchange real traffic with the userspace stack, and a report
// says what happened. It exits non-zero when any step fails and removes
// every namespace it made, on success, failure or interrupt.
package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

// report collects step results and prints them as they happen.
type report struct {
	w      io.Writer
	failed int
	passed int
}

func (r *report) section(title string) {
	fmt.Fprintf(r.w, "\n== %s\n", title)
}

func (r *report) step(name string, fn func() (string, error)) {
	start := time.Now()
	detail, err := fn()
	d := time.Since(start).Round(time.Millisecond)
	if err != nil {
		r.failed++
		fmt.Fprintf(r.w, "  FAIL  %-52s %8v  %v\n", name, d, err)
		if detail != "" {
			fmt.Fprintf(r.w, "        %s\n", indent(detail))
		}
		return
	}
	r.passed++
	fmt.Fprintf(r.w, "  ok    %-52s %8v  %s\n", name, d, detail)
}

func indent(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n        ")
}

func main() {
	outDir := flag.String("out", "demo-report", "directory for the report and the packet capture")
	bin := flag.String("bin", "bin/cni-userstack", "the cni-userstack binary the CNI part installs as the plugin")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it creates network namespaces and veth pairs)")
		os.Exit(2)
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	logFile, err := os.Create(filepath.Join(*outDir, "report.txt"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	defer logFile.Close()
	r := &report{w: io.MultiWriter(os.Stdout, logFile)}

	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		cleanups = nil
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "demo: interrupted, cleaning up")
		cleanup()
		os.Exit(130)
	}()

	stackOnVeth(r, *outDir, &cleanups)
	cleanup()
	cniPods(r, *outDir, *bin, &cleanups)
	cleanup()

	fmt.Fprintf(r.w, "\n%d steps passed, %d failed. Report: %s\n", r.passed, r.failed, filepath.Join(*outDir, "report.txt"))
	if r.failed > 0 {
		os.Exit(1)
	}
}

// stackOnVeth: a kernel host and the userspace stack on the two ends of
// one veth pair.
func stackOnVeth(r *report, outDir string, cleanups *[]func()) {
	r.section("The userspace stack on a veth, talking to a kernel host")
	var p *env.Peer
	var s *netstack.Stack
	capture := filepath.Join(outDir, "stack.pcap")
	ok := true
	r.step("create namespaces and the veth pair", func() (string, error) {
		var err error
		p, err = env.NewPeer("10.250.0.1/24", "10.250.0.2/24", 1500)
		if err != nil {
			ok = false
			return "", err
		}
		*cleanups = append(*cleanups, p.Close)
		if err = p.AddIPv6("fd00:250::1/64", "fd00:250::2/64"); err != nil {
			ok = false
			return "", err
		}
		return fmt.Sprintf("kernel %s and %s in netns %s; stack end %s in netns %s", p.KernelAddr, p.KernelAddr6, p.NS, p.StackIf, p.StackNS), nil
	})
	if !ok {
		return
	}
	r.step("attach the stack over AF_PACKET", func() (string, error) {
		s = netstack.New()
		*cleanups = append(*cleanups, func() { _ = s.Close() })
		nic, closeCapture, err := p.Attach(s, capture)
		if err != nil {
			ok = false
			return "", err
		}
		*cleanups = append(*cleanups, closeCapture)
		return fmt.Sprintf("NIC %s mac %s addresses %s and %s (link-local %s), capturing to %s", nic.Name(), nic.MAC(), p.StackAddr, p.StackAddr6,
			netstack.LinkLocal(nic), capture), nil
	})
	if !ok {
		return
	}
	vethSteps(r, p, s, capture, false)
	r.section("The same veth over IPv6: Neighbor Discovery, ICMPv6, UDP and TCP")
	vethSteps(r, p, s, capture, true)
	fmt.Fprintf(r.w, "\n  stack counters (nstat style):\n        %s\n", indent(s.Stats().String()))
}

// vethSteps are the kernel ↔ stack steps in one family (v6: IPv6, the
// IPv4 steps' twins): pings both ways with small and fragmented
// payloads, the kernel's neighbour entry for the stack (ARP or NDP), UDP
// and TCP both ways, and the capture read back.
func vethSteps(r *report, p *env.Peer, s *netstack.Stack, capture string, v6 bool) {
	stackAddr, kernelAddr := p.StackAddr.Addr(), p.KernelAddr.Addr()
	fam, ping, neighCmd, resolved, filter := "4", []string{"ping"}, []string{"ip", "neigh", "show"}, "ARP", "icmp"
	fragStats := func() (uint64, uint64) { st := s.IPv4().Stats(); return st.ReasmOKs, st.FragCreates }
	if v6 {
		stackAddr, kernelAddr = p.StackAddr6.Addr(), p.KernelAddr6.Addr()
		fam, ping, neighCmd, resolved, filter = "6", []string{"ping", "-6"}, []string{"ip", "-6", "neigh", "show"}, "Neighbor Discovery", "icmp6"
		fragStats = func() (uint64, uint64) { st := s.IPv6().Stats(); return st.ReasmOKs, st.FragCreates }
	}
	stackIP := stackAddr.String()
	r.step(fmt.Sprintf("kernel pings the stack at %s (50 echoes)", stackIP), func() (string, error) {
		out, err := p.Exec(ping[0], append(ping[1:], "-c", "50", "-i", "0.01", "-W", "2", "-q", stackIP)...)
		return lastLines(out, 2), pingErr(out, err)
	})
	r.step("kernel pings with 4000-byte payloads (fragments)", func() (string, error) {
		out, err := p.Exec(ping[0], append(ping[1:], "-c", "5", "-i", "0.05", "-W", "2", "-s", "4000", "-q", stackIP)...)
		reasm, frags := fragStats()
		return fmt.Sprintf("%s; stack reassembled %d, created %d fragments", lastLines(out, 1), reasm, frags), pingErr(out, err)
	})
	r.step("the kernel learned the stack's MAC by "+resolved, func() (string, error) {
		out, err := p.Exec(neighCmd[0], append(neighCmd[1:], stackIP)...)
		mac := s.Devices().ByName("eth0").MAC().String()
		if err == nil && !strings.Contains(out, mac) {
			err = fmt.Errorf("kernel neighbour table has no %s", mac)
		}
		return strings.TrimSpace(out), err
	})
	r.step(fmt.Sprintf("the stack pings the kernel at %s", kernelAddr), func() (string, error) {
		var rtts []string
		for seq := uint16(1); seq <= 5; seq++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			rtt, err := s.Ping(ctx, kernelAddr, seq, []byte("cni-userstack demo"))
			cancel()
			if err != nil {
				return "", fmt.Errorf("echo %d: %w", seq, err)
			}
			rtts = append(rtts, rtt.Round(time.Microsecond).String())
		}
		return "rtt " + strings.Join(rtts, " "), nil
	})
	r.step("UDP: kernel client → stack echo server", func() (string, error) {
		return udpKernelToStack(p, s, stackAddr, fam)
	})
	r.step("UDP: stack client → kernel echo server", func() (string, error) {
		return udpStackToKernel(p, s, kernelAddr, fam)
	})
	r.step("TCP: kernel client → stack server, 64 MiB, SHA-256", func() (string, error) {
		ln, err := s.ListenTCP(netip.AddrPortFrom(stackAddr, 5001))
		if err != nil {
			return "", err
		}
		defer ln.Close()
		var c net.Conn
		dial := func() error {
			return p.Do(func() (err error) {
				c, err = net.DialTimeout("tcp"+fam, netip.AddrPortFrom(stackAddr, 5001).String(), 5*time.Second)
				return err
			})
		}
		return tcpTransfer(ln, dial, &c, 64<<20)
	})
	r.step("TCP: stack client → kernel server, 64 MiB, SHA-256", func() (string, error) {
		var ln net.Listener
		if err := p.Do(func() (err error) {
			ln, err = net.Listen("tcp"+fam, netip.AddrPortFrom(kernelAddr, 5002).String())
			return err
		}); err != nil {
			return "", err
		}
		defer ln.Close()
		var c net.Conn
		dial := func() (err error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err = s.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(kernelAddr, 5002))
			return err
		}
		return tcpTransfer(ln, dial, &c, 64<<20)
	})
	r.step("read the capture back with tcpdump ("+filter+")", func() (string, error) {
		out, err := exec.Command("tcpdump", "-r", capture, "-nn", "-c", "4", filter).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	})
}

func pingErr(out string, err error) error {
	if err != nil {
		return err
	}
	if !strings.Contains(out, " 0% packet loss") {
		return fmt.Errorf("packet loss")
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

func udpKernelToStack(p *env.Peer, s *netstack.Stack, stackAddr netip.Addr, fam string) (string, error) {
	addr := netip.AddrPortFrom(stackAddr, 7)
	srv, err := s.ListenUDP(addr)
	if err != nil {
		return "", err
	}
	defer srv.Close()
	go env.ServeUDPEcho(srv)
	var c *net.UDPConn
	if err := p.Do(func() (err error) {
		c, err = net.DialUDP("udp"+fam, nil, net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	return env.CheckEcho(c, []int{64, 1472, 20000}, 3*time.Second)
}

func udpStackToKernel(p *env.Peer, s *netstack.Stack, kernelAddr netip.Addr, fam string) (string, error) {
	addr := netip.AddrPortFrom(kernelAddr, 7)
	var srv *net.UDPConn
	if err := p.Do(func() (err error) {
		srv, err = net.ListenUDP("udp"+fam, net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		return "", err
	}
	defer srv.Close()
	go env.ServeUDPEcho(srv)
	c, err := s.DialUDP(netip.AddrPort{}, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return env.CheckEcho(c, []int{64, 1472, 20000}, 3*time.Second)
}

// tcpTransfer accepts one connection on ln, dials it with dial (which sets
// *c), sends n random bytes and checks the receiver's SHA-256.
func tcpTransfer(ln net.Listener, dial func() error, c *net.Conn, n int64) (string, error) {
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		rc, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer rc.Close()
		_ = rc.SetDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		m, err := io.Copy(h, rc)
		var res result
		copy(res.sum[:], h.Sum(nil))
		res.n, res.err = m, err
		got <- res
	}()
	if err := dial(); err != nil {
		return "", err
	}
	start := time.Now()
	h := sha256.New()
	_ = (*c).SetDeadline(time.Now().Add(60 * time.Second))
	// ChaCha8 makes data faster than the link moves it; crypto/rand would
	// be the bottleneck the report measured.
	_, err := io.CopyN(io.MultiWriter(*c, h), rand.NewChaCha8([32]byte{1}), n)
	(*c).Close()
	if err != nil {
		return "", err
	}
	select {
	case res := <-got:
		d := time.Since(start)
		if res.err != nil || res.n != n || string(res.sum[:]) != string(h.Sum(nil)) {
			return "", fmt.Errorf("received %d of %d bytes, checksum equal %v: %v", res.n, n, string(res.sum[:]) == string(h.Sum(nil)), res.err)
		}
		return fmt.Sprintf("%d MiB in %v (%.2f Gbit/s), checksum equal", n>>20, d.Round(time.Millisecond), float64(n*8)/d.Seconds()/1e9), nil
	case <-time.After(60 * time.Second):
		return "", fmt.Errorf("receiver did not finish in 60s")
	}
}
