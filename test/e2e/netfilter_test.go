package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/link/fault"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

// attachNamed gives s a NIC called name on the peer's stack end.
// Faults, when given, wrap the endpoint (link/fault: this kernel has no netem).
func attachNamed(t *testing.T, s *netstack.Stack, p *env.Peer, name string, faults ...fault.Option) (int, *fault.Endpoint) {
	t.Helper()
	ep, err := afpacket.Open(afpacket.Config{NetNS: p.StackNSPath, Name: p.StackIf})
	if err != nil {
		t.Fatal(err)
	}
	var lep link.Endpoint = ep
	var fe *fault.Endpoint
	if len(faults) > 0 {
		fe = fault.Wrap(ep, faults...)
		lep = fe
	}
	nic, err := s.AddNIC(lep, netstack.NICConfig{Name: name, MAC: header.MAC(ep.MAC())})
	if err != nil {
		ep.Close()
		t.Fatal(err)
	}
	if err := s.AddAddress(nic.ID(), p.StackAddr); err != nil {
		t.Fatal(err)
	}
	return nic.ID(), fe
}

// Two kernel hosts in their own namespaces, our stack routing between
// them with netfilter: client 10.214.1.1 — cli0 10.214.1.254 [stack]
// srv0 10.214.2.254 — server 10.214.2.1.
func TestKernelNetfilterRouter(t *testing.T) {
	requireRoot(t)
	requireCmd(t, "ping")
	cp := newKernelPeer(t, "10.214.1.1/24", "10.214.1.254/24", 1500)
	sp := newKernelPeer(t, "10.214.2.1/24", "10.214.2.254/24", 1500)
	s := netstack.New(netstack.WithForwarding(true))
	t.Cleanup(func() { _ = s.Close() })
	attachNamed(t, s, cp, "cli0")
	attachNamed(t, s, sp, "srv0")
	nf := netfilter.New(netfilter.Config{Hooks: s.Hooks(), Clock: s.Clock(), Devices: s.Devices(), FIB: s.FIB(),
		Neigh: s.Neigh(), Sender: s.IPv4()})
	for _, c := range [][]string{
		{"ip", "-n", cp.NS, "route", "add", "default", "via", "10.214.1.254"},
		{"ip", "-n", sp.NS, "route", "add", "10.214.1.0/24", "via", "10.214.2.254"},
	} {
		if _, err := env.Run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	load := func(rules string) {
		t.Helper()
		if err := nf.LoadText(rules); err != nil {
			t.Fatal(err)
		}
	}
	diag := func() string {
		return fmt.Sprintf("stack:\n%s\nnetfilter: %+v\n%s", s.Stats(), nf.Stats(), nf.Ruleset())
	}

	// Plain routing through conntrack.
	if out, err := cp.Exec("ping", "-c", "3", "-i", "0.2", "-W", "2", "-q", "10.214.2.1"); err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping through the stack: %v\n%s\n%s", err, out, diag())
	}
	// RFC 1812 §5.3.1: TTL 1 gets time exceeded from the stack's cli0 address.
	out, _ := cp.Exec("ping", "-c", "1", "-t", "1", "-W", "2", "10.214.2.1")
	if !strings.Contains(out, "From 10.214.1.254") || !strings.Contains(out, "Time to live exceeded") {
		t.Fatalf("TTL-limited probe:\n%s\n%s", out, diag())
	}

	// Kernel TCP and UDP servers in the server namespace.
	var ln net.Listener
	var us *net.UDPConn
	if err := sp.Do(func() (err error) {
		if ln, err = net.Listen("tcp4", "10.214.2.1:8000"); err != nil {
			return err
		}
		us, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 214, 2, 1), Port: 8001})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); us.Close() })
	peers := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peers <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	go func() {
		b := make([]byte, 65536)
		for {
			n, from, err := us.ReadFromUDP(b)
			if err != nil {
				return
			}
			peers <- "udp " + from.IP.String()
			_, _ = us.WriteToUDP(b[:n], from)
		}
	}()
	// tcpEcho dials from the client namespace and echoes 256 KiB.
	tcpEcho := func(addr string) string {
		t.Helper()
		var c net.Conn
		if err := cp.Do(func() (err error) {
			c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
			return err
		}); err != nil {
			t.Fatalf("dial %s: %v\n%s", addr, err, diag())
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := bytes.Repeat([]byte("netfilter!"), 25600)
		go func() { _, _ = c.Write(msg) }()
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("tcp echo via %s: %v\n%s", addr, err, diag())
		}
		select {
		case p := <-peers:
			return p
		case <-time.After(3 * time.Second):
			t.Fatal("no peer seen")
		}
		return ""
	}
	udpEcho := func(addr string) string {
		t.Helper()
		var c net.Conn
		if err := cp.Do(func() (err error) {
			c, err = net.Dial("udp4", addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("datagram")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 100)
		if n, err := c.Read(b); err != nil || string(b[:n]) != "datagram" {
			t.Fatalf("udp echo via %s: %q %v\n%s", addr, b[:n], err, diag())
		}
		return <-peers
	}

	if p := tcpEcho("10.214.2.1:8000"); p != "10.214.1.1" {
		t.Fatalf("routed TCP seen from %s", p)
	}
	if p := udpEcho("10.214.2.1:8001"); p != "udp 10.214.1.1" {
		t.Fatalf("routed UDP seen from %s", p)
	}

	// Masquerade: the server sees the stack's srv0 address.
	load("*nat\n-A POSTROUTING -o srv0 -j MASQUERADE\n")
	if p := tcpEcho("10.214.2.1:8000"); p != "10.214.2.254" {
		t.Fatalf("masqueraded TCP seen from %s\n%s", p, diag())
	}
	if p := udpEcho("10.214.2.1:8001"); p != "udp 10.214.2.254" {
		t.Fatalf("masqueraded UDP seen from %s", p)
	}
	if out, err := cp.Exec("ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", "10.214.2.1"); err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping through masquerade: %v\n%s\n%s", err, out, diag())
	}
	var listing strings.Builder
	for _, e := range nf.Conntrack().List() {
		listing.WriteString(e.String() + "\n")
	}
	if !strings.Contains(listing.String(), "src=10.214.2.1 dst=10.214.2.254 sport=8000") {
		t.Fatalf("conntrack -L lacks the masqueraded TCP flow:\n%s", listing.String())
	}

	// DNAT: the client dials the stack's cli0 address, the server sees
	// the client's own address.
	load("*nat\n-A PREROUTING -i cli0 -p tcp --dport 8080 -j DNAT --to-destination 10.214.2.1:8000\n" +
		"-A PREROUTING -i cli0 -p udp --dport 8081 -j DNAT --to-destination 10.214.2.1:8001\n")
	if p := tcpEcho("10.214.1.254:8080"); p != "10.214.1.1" {
		t.Fatalf("DNAT TCP seen from %s", p)
	}
	if p := udpEcho("10.214.1.254:8081"); p != "udp 10.214.1.1" {
		t.Fatalf("DNAT UDP seen from %s", p)
	}

	// A DROP rule stops a flow and counts its packets.
	load("*filter\n-A FORWARD -p udp --dport 8001 -j DROP\n")
	var c net.Conn
	if err := cp.Do(func() (err error) {
		c, err = net.Dial("udp4", "10.214.2.1:8001")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		_, _ = c.Write([]byte("blocked"))
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := c.Read(make([]byte, 100)); err == nil {
		t.Fatalf("a dropped flow got an answer of %d bytes", n)
	}
	select {
	case p := <-peers:
		t.Fatalf("server saw %s through a DROP rule", p)
	default:
	}
	if p, by := nf.Ruleset().Chain("filter", "FORWARD").Rules[0].Counters(); p != 5 || by != 5*(20+8+7) {
		t.Fatalf("DROP counter %d packets %d bytes, want 5 and %d\n%s", p, by, 5*35, diag())
	}
}

// A kernel TCP transfer through our masquerade stays intact when the
// stack's client-side link loses 1% of IPv4 frames each way: conntrack's
// window tracking follows the retransmissions and NAT rewrites them alike.
func TestKernelTCPThroughNATUnderLoss(t *testing.T) {
	requireRoot(t)
	cp := newKernelPeer(t, "10.215.1.1/24", "10.215.1.254/24", 1500)
	sp := newKernelPeer(t, "10.215.2.1/24", "10.215.2.254/24", 1500)
	s := netstack.New(netstack.WithForwarding(true))
	t.Cleanup(func() { _ = s.Close() })
	ipOnly := func(f []byte) bool { return len(f) >= 14 && f[12] == 0x08 && f[13] == 0x00 }
	// MTU-sized frames from the client (no TSO), so 1% is dozens of losses.
	if _, err := env.Run("ip", "-n", cp.NS, "link", "set", cp.If, "gso_max_segs", "1"); err != nil {
		t.Fatal(err)
	}
	_, fe := attachNamed(t, s, cp, "cli0", fault.Loss(0.01), fault.OnReceive(), fault.Seed(7), fault.Match(ipOnly))
	attachNamed(t, s, sp, "srv0")
	nf := netfilter.New(netfilter.Config{Hooks: s.Hooks(), Clock: s.Clock(), Devices: s.Devices(), FIB: s.FIB(),
		Neigh: s.Neigh(), Sender: s.IPv4()})
	if err := nf.LoadText("*nat\n-A POSTROUTING -o srv0 -j MASQUERADE\n*filter\n-A FORWARD --ctstate INVALID -j LOG --log-prefix invalid\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Run("ip", "-n", cp.NS, "route", "add", "default", "via", "10.215.1.254"); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := sp.Do(func() (err error) { ln, err = net.Listen("tcp4", "10.215.2.1:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 8 << 20
	sum := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sum <- nil
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		b, _ := io.ReadAll(c)
		sum <- b
	}()
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i*7 + i>>11)
	}
	var c net.Conn
	if err := cp.Do(func() (err error) { c, err = net.DialTimeout("tcp4", "10.215.2.1:9000", 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v\n%s", err, s.Stats())
	}
	c.Close()
	var got []byte
	select {
	case got = <-sum:
	case <-time.After(70 * time.Second):
		t.Fatal("transfer timed out")
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("received %d of %d bytes, equal prefix: %v\n%s\nnetfilter %+v", len(got), size, bytes.HasPrefix(msg, got), s.Stats(), nf.Stats())
	}
	fs := fe.Stats()
	if fs.Lost+fs.RxLost < 10 {
		t.Fatalf("the fault link lost only %d frames: not a lossy transfer", fs.Lost+fs.RxLost)
	}
	t.Logf("8 MiB through NAT, %d frames lost; netfilter %+v", fs.Lost+fs.RxLost, nf.Stats())
}

// BenchmarkForwarding measures forwarding between two kernel namespaces
// through our stack (no rules; conntrack + masquerade; conntrack + 1000
// filter rules) beside the kernel forwarding the same traffic (ip_forward;
// iptables masquerade): 64-byte UDP frames per second received, and a
// 64 MiB kernel TCP transfer in Gbit/s. One run per case (b.N is not
// used): the numbers are rates over fixed work.
func BenchmarkForwarding(b *testing.B) {
	if testing.Short() {
		b.Skip("kernel forwarding benchmark")
	}
	requireRoot(b)
	var many strings.Builder
	many.WriteString("*filter\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&many, "-A FORWARD -s 172.16.%d.%d -p tcp --dport %d -j DROP\n", i/250, i%250+1, 1000+i)
	}
	// Our stack as the router.
	cp := newKernelPeer(b, "10.216.1.1/24", "10.216.1.254/24", 1500)
	sp := newKernelPeer(b, "10.216.2.1/24", "10.216.2.254/24", 1500)
	s := netstack.New(netstack.WithForwarding(true))
	b.Cleanup(func() { _ = s.Close() })
	attachNamedTB(b, s, cp, "cli0")
	attachNamedTB(b, s, sp, "srv0")
	nf := netfilter.New(netfilter.Config{Hooks: s.Hooks(), Clock: s.Clock(), Devices: s.Devices(), FIB: s.FIB(),
		Neigh: s.Neigh(), Sender: s.IPv4()})
	mustRun(b, "ip", "-n", cp.NS, "route", "add", "default", "via", "10.216.1.254")
	mustRun(b, "ip", "-n", sp.NS, "route", "add", "10.216.1.0/24", "via", "10.216.2.254")
	for _, c := range []struct{ name, rules string }{
		{"stack/no-rules", ""},
		{"stack/conntrack+masquerade", "*nat\n-A POSTROUTING -o srv0 -j MASQUERADE\n"},
		{"stack/conntrack+1000-rules", many.String()},
	} {
		b.Run(c.name, func(b *testing.B) {
			if c.name == "stack/no-rules" {
				for h := netfilter.Hook(0); h < netfilter.NumHooks; h++ {
					for _, n := range []string{"defrag", "conntrack", "nat-dst", "mangle", "filter", "nat-src", "confirm"} {
						s.Hooks().Unregister(h, n)
					}
				}
			} else if !s.Hooks().Active(netfilter.PreRouting) {
				nf = netfilter.New(netfilter.Config{Hooks: s.Hooks(), Clock: s.Clock(), Devices: s.Devices(), FIB: s.FIB(),
					Neigh: s.Neigh(), Sender: s.IPv4()})
			}
			if err := nf.LoadText(c.rules); err != nil {
				b.Fatal(err)
			}
			measure(b, cp, sp, "10.216.2.1")
		})
	}
	// The kernel as the router: both stack-side veth ends in one namespace.
	kc := newKernelPeer(b, "10.217.1.1/24", "10.217.1.254/24", 1500)
	ks := newKernelPeer(b, "10.217.2.1/24", "10.217.2.254/24", 1500)
	mustRun(b, "ip", "-n", ks.StackNS, "link", "set", ks.StackIf, "netns", kc.StackNS)
	for _, c := range [][]string{
		{"ip", "-n", kc.StackNS, "addr", "add", "10.217.1.254/24", "dev", kc.StackIf},
		{"ip", "-n", kc.StackNS, "addr", "add", "10.217.2.254/24", "dev", ks.StackIf},
		{"ip", "-n", kc.StackNS, "link", "set", ks.StackIf, "up"},
		{"ip", "netns", "exec", kc.StackNS, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "-n", kc.NS, "route", "add", "default", "via", "10.217.1.254"},
		{"ip", "-n", ks.NS, "route", "add", "10.217.1.0/24", "via", "10.217.2.254"},
	} {
		mustRun(b, c[0], c[1:]...)
	}
	b.Run("kernel/ip_forward", func(b *testing.B) { measure(b, kc, ks, "10.217.2.1") })
	b.Run("kernel/iptables-masquerade", func(b *testing.B) {
		requireCmd(b, "iptables")
		if _, err := env.Run("ip", "netns", "exec", kc.StackNS, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", ks.StackIf, "-j", "MASQUERADE"); err != nil {
			b.Skip(err)
		}
		measure(b, kc, ks, "10.217.2.1")
	})
}

func mustRun(tb testing.TB, name string, args ...string) {
	tb.Helper()
	if _, err := env.Run(name, args...); err != nil {
		tb.Fatal(err)
	}
}

func attachNamedTB(b *testing.B, s *netstack.Stack, p *env.Peer, name string) {
	b.Helper()
	ep, err := afpacket.Open(afpacket.Config{NetNS: p.StackNSPath, Name: p.StackIf})
	if err != nil {
		b.Fatal(err)
	}
	nic, err := s.AddNIC(ep, netstack.NICConfig{Name: name, MAC: header.MAC(ep.MAC())})
	if err != nil {
		ep.Close()
		b.Fatal(err)
	}
	if err := s.AddAddress(nic.ID(), p.StackAddr); err != nil {
		b.Fatal(err)
	}
}

// measure reports 64-byte UDP frames/s received by the server over one
// second of sending, and kernel TCP goodput for 64 MiB.
func measure(b *testing.B, cp, sp *env.Peer, server string) {
	var uc *net.UDPConn
	var ln net.Listener
	if err := sp.Do(func() (err error) {
		if uc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(server), Port: 9100}); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", server+":9101")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer uc.Close()
	defer ln.Close()
	var sc net.Conn
	if err := cp.Do(func() (err error) { sc, err = net.Dial("udp4", server+":9100"); return err }); err != nil {
		b.Fatal(err)
	}
	defer sc.Close()
	got := make(chan int, 1)
	const window = time.Second
	go func() {
		n := 0
		buf := make([]byte, 2048)
		_ = uc.SetReadDeadline(time.Now().Add(window + 500*time.Millisecond))
		for {
			if _, _, err := uc.ReadFromUDP(buf); err != nil {
				break
			}
			n++
		}
		got <- n
	}()
	payload := make([]byte, 64-14-20-8) // a 64-byte frame (no FCS)
	sent := 0
	for end := time.Now().Add(window); time.Now().Before(end); {
		if _, err := sc.Write(payload); err == nil {
			sent++
		}
	}
	recv := <-got
	b.ReportMetric(float64(recv)/window.Seconds(), "rx-pkt/s")
	b.ReportMetric(float64(sent)/window.Seconds(), "tx-pkt/s")

	const size = 64 << 20
	done := make(chan time.Duration, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- 0
			return
		}
		defer c.Close()
		start := time.Now()
		n, _ := io.Copy(io.Discard, c)
		if n != size {
			done <- 0
			return
		}
		done <- time.Since(start)
	}()
	var tc net.Conn
	if err := cp.Do(func() (err error) { tc, err = net.DialTimeout("tcp4", server+":9101", 3*time.Second); return err }); err != nil {
		b.Fatal(err)
	}
	_ = tc.SetDeadline(time.Now().Add(60 * time.Second))
	chunk := make([]byte, 1<<20)
	for i := 0; i < size/len(chunk); i++ {
		if _, err := tc.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	tc.Close()
	d := <-done
	if d == 0 {
		b.Fatal("TCP transfer incomplete")
	}
	b.ReportMetric(float64(size)*8/d.Seconds()/1e9, "TCP-Gbit/s")
}
