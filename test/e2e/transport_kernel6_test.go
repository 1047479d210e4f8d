package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

// TCP and UDP over IPv6 with the kernel as the peer: the IPv4 kernel
// tests' twins on a dual-stack veth (fd00:N::1 kernel, fd00:N::2 stack).

// newTCPPair6 is newTCPPair over IPv6: the kernel and the stack talk
// between their fd00:octet::/64 addresses.
func newTCPPair6(t *testing.T, octet int) *tcpPair {
	t.Helper()
	requireRoot(t)
	p := newKernelPeer6(t, fmt.Sprintf("10.%d.0.1/24", octet), fmt.Sprintf("10.%d.0.2/24", octet),
		fmt.Sprintf("fd00:%d::1/64", octet), fmt.Sprintf("fd00:%d::2/64", octet), 1500)
	s, _ := attachStack(t, p, os.Getenv("TCP_E2E_PCAP"))
	return &tcpPair{p: p, s: s, kernel: p.KernelAddr6.Addr(), stack: p.StackAddr6.Addr()}
}

// RFC 9293 over IPv6 against the Linux kernel, both directions,
// TCP_E2E_MB each way (1 GiB under make test) with the SHA-256 checked;
// the MSS each side sends with is the 1500-byte MTU less 60 bytes of
// IPv6 and TCP headers and 12 of timestamps (RFC 8200 §8.3).
func TestKernelTCP6BulkBothWays(t *testing.T) {
	tp := newTCPPair6(t, 231)

	// The handshake's MSS, seen from both ends.
	ln, err := tp.s.ListenTCP(netip.AddrPortFrom(tp.stack, 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	kc, err := tp.kernelDial(t, 5000)
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	sc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if in := sc.Info(); in.PeerMSS != 1440 || in.MSS != 1428 {
		t.Fatalf("stack: MSS %d, the kernel's %d", in.MSS, in.PeerMSS)
	}
	if ki := kernelTCPInfo(t, kc); ki.Snd_mss != 1428 {
		t.Fatalf("kernel: snd_mss %d", ki.Snd_mss)
	}
	if got := sc.RemoteAddr().(*net.TCPAddr).AddrPort(); got != kc.LocalAddr().(*net.TCPAddr).AddrPort() || !got.Addr().Is6() {
		t.Fatalf("stack sees the kernel at %v, kernel is %v", got, kc.LocalAddr())
	}

	kernelBulkBothWays(t, tp)
}

// A SYN to a stack port nobody listens on over IPv6 is reset (RFC 9293
// §3.10.7.1): the kernel's connect fails with ECONNREFUSED. And the
// stack's dial to a closed kernel port the same.
func TestKernelTCP6Refused(t *testing.T) {
	tp := newTCPPair6(t, 232)
	if _, err := tp.kernelDial(t, 9); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("kernel dial to a closed stack port: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tp.s.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(tp.kernel, 9)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("stack dial to a closed kernel port: %v", err)
	}
}

// UDP over IPv6 both ways between kernel and stack sockets (RFC 768,
// RFC 8200 §8.1): datagrams up to 60000 bytes, fragmented by each sender
// and reassembled by each receiver (RFC 8200 §4.5).
func TestKernelUDP6EchoBothWays(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer6(t, "10.233.0.1/24", "10.233.0.2/24", "fd00:233::1/64", "fd00:233::2/64", 1500)
	s, _ := attachStack(t, p, "")
	stackAddr := netip.AddrPortFrom(p.StackAddr6.Addr(), 7007)
	kernelAddr := netip.AddrPortFrom(p.KernelAddr6.Addr(), 7008)

	// Stack server (on ::, both families), kernel client.
	srv, err := s.ListenUDP(netip.AddrPortFrom(netip.IPv6Unspecified(), 7007))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go env.ServeUDPEcho(srv)
	var kc *net.UDPConn
	if err := p.Do(func() (err error) {
		kc, err = net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(stackAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	if _, err := env.CheckEcho(kc, []int{1, 100, 1452, 8000, 30000, 60000}, 3*time.Second); err != nil {
		t.Fatalf("kernel→stack: %v\n%s", err, s.Stats())
	}

	// Kernel server, stack client.
	var ks *net.UDPConn
	if err := p.Do(func() (err error) {
		ks, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(kernelAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	go env.ServeUDPEcho(ks)
	c, err := s.DialUDP(netip.AddrPort{}, kernelAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := env.CheckEcho(c, []int{1, 512, 1452, 4000, 60000}, 3*time.Second); err != nil {
		t.Fatalf("stack→kernel: %v\n%s", err, s.Stats())
	}
	st := s.Stats()
	if st.IP6.ReasmOKs == 0 || st.IP6.FragCreates == 0 || st.UDP.InCsumErrors != 0 {
		t.Fatalf("stack: IPv6 %+v UDP %+v", st.IP6, st.UDP)
	}
}

// RFC 4443 §3.1: a datagram to a closed port over IPv6 is answered with
// Destination Unreachable code 4, both ways: the stack's answer becomes
// ECONNREFUSED on the kernel's connected socket, the kernel's on the
// stack's (through V6Err and header.ICMPError, RFC 1122 §4.1.3.3).
func TestKernelUDP6ClosedPortIsRefused(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer6(t, "10.234.0.1/24", "10.234.0.2/24", "fd00:234::1/64", "fd00:234::2/64", 1500)
	s, _ := attachStack(t, p, "")
	var kc *net.UDPConn
	if err := p.Do(func() (err error) {
		kc, err = net.DialUDP("udp6", nil, &net.UDPAddr{IP: p.StackAddr6.Addr().AsSlice(), Port: 9})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	var lastErr error
	for i := 0; i < 5 && !errors.Is(lastErr, syscall.ECONNREFUSED); i++ {
		if _, err := kc.Write([]byte("anyone?")); err != nil {
			lastErr = err
			break
		}
		_ = kc.SetReadDeadline(time.Now().Add(time.Second))
		_, lastErr = kc.Read(make([]byte, 16))
	}
	if !errors.Is(lastErr, syscall.ECONNREFUSED) {
		t.Fatalf("kernel: want ECONNREFUSED, got %v\n%s", lastErr, s.Stats())
	}
	if st := s.Stats(); st.UDP.NoPorts == 0 || st.IP6.ICMP.OutDestUnreachs == 0 {
		t.Fatalf("stack: UDP %+v ICMPv6 %+v", st.UDP, st.IP6.ICMP)
	}

	// The other way: the stack's connected socket to a closed kernel port.
	c, err := s.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(p.KernelAddr6.Addr(), 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lastErr = nil
	for i := 0; i < 5 && !errors.Is(lastErr, syscall.ECONNREFUSED); i++ {
		if _, err := c.Write([]byte("anyone?")); err != nil {
			lastErr = err
			break
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, lastErr = c.Read(make([]byte, 16))
	}
	if !errors.Is(lastErr, syscall.ECONNREFUSED) {
		t.Fatalf("stack: want ECONNREFUSED, got %v\n%s", lastErr, s.Stats())
	}
	if st := s.Stats(); st.UDP.ICMPHardErrors == 0 || st.IP6.ICMP.InDestUnreachs == 0 {
		t.Fatalf("stack: UDP %+v ICMPv6 %+v", st.UDP, st.IP6.ICMP)
	}
}

// RFC 4291 §2.5.6 / RFC 4007 §6: the kernel connects to the stack's
// link-local address (fe80::/64 from its MAC) with the veth as the zone;
// the stack answers a peer it can only reach on that link through the
// NIC the SYN came in on, and data flows both ways. UDP the same.
func TestKernelTCP6LinkLocal(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer6(t, "10.236.0.1/24", "10.236.0.2/24", "fd00:236::1/64", "fd00:236::2/64", 1500)
	s, nicID := attachStack(t, p, "")
	ll := netstack.LinkLocal(s.Devices().ByID(nicID))
	ln, err := s.ListenTCP(netip.MustParseAddrPort("[::]:5050"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The kernel's own link-local address is tentative until its
	// duplicate address detection ends; a second one without DAD is the
	// source, so the stack's peer is link-local too.
	kll := netip.MustParseAddr("fe80::236:1")
	if _, err := env.Run("ip", "-n", p.NS, "-6", "addr", "add", kll.String()+"/64", "dev", p.If, "nodad"); err != nil {
		t.Fatal(err)
	}
	to := net.JoinHostPort(ll.String()+"%"+p.If, "5050")
	var kc net.Conn
	if err := p.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: kll.AsSlice(), Zone: p.If}}
		kc, err = d.Dial("tcp6", to)
		return err
	}); err != nil {
		t.Fatalf("kernel dial %s: %v", to, err)
	}
	defer kc.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	sc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	peer := sc.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
	if peer != kll || sc.LocalAddr().(*net.TCPAddr).AddrPort().Addr() != ll {
		t.Fatalf("accepted %v → %v", sc.RemoteAddr(), sc.LocalAddr())
	}
	msg := bytes.Repeat([]byte("link-local "), 20000)
	go func() {
		sc.Write(msg)
		sc.CloseWrite()
	}()
	kc.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(kc)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("kernel read %d of %d: %v", len(got), len(msg), err)
	}

	// UDP: the stack's socket on :: answers the kernel's link-local source.
	us, err := s.ListenUDP(netip.MustParseAddrPort("[::]:5051"))
	if err != nil {
		t.Fatal(err)
	}
	defer us.Close()
	go env.ServeUDPEcho(us)
	var ku net.Conn
	if err := p.Do(func() (err error) {
		ku, err = net.DialUDP("udp6", &net.UDPAddr{IP: kll.AsSlice(), Zone: p.If},
			&net.UDPAddr{IP: ll.AsSlice(), Zone: p.If, Port: 5051})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ku.Close()
	if _, err := env.CheckEcho(ku, []int{1, 1000, 4000}, 3*time.Second); err != nil {
		t.Fatalf("UDP echo over link-local: %v\n%s", err, s.Stats())
	}
}

// TCP and UDP through the stack as an IPv6 router with NAT66 MASQUERADE
// (RFC 6296's cousin as ip6tables does it: the source address and port
// rewritten, the TCP and UDP checksums with them over the IPv6
// pseudo-header): kernel A sends to kernel B, which has no route back to
// A's prefix and sees the stack's address; TCP_E2E_MB/4 with the SHA-256
// checked, UDP datagrams up to 8000 bytes echoed.
func TestKernelIPv6MasqueradeTCPUDP(t *testing.T) {
	requireRoot(t)
	a := newKernelPeer6(t, "10.237.0.1/24", "10.237.0.2/24", "fd00:237::1/64", "fd00:237::2/64", 1500)
	b := newKernelPeer6(t, "10.238.0.1/24", "10.238.0.2/24", "fd00:238::1/64", "fd00:238::2/64", 1500)
	s := netstack.New()
	t.Cleanup(func() { _ = s.Close() })
	for i, p := range []*env.Peer{a, b} {
		_, closeCapture, err := p.AttachAs(s, []string{"eth0", "eth1"}[i], "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(closeCapture)
	}
	s.SetForwarding6(true)
	if err := s.EnableNetfilter(netfilter.Config{}).LoadText("*nat\n-A POSTROUTING -o eth1 -s fd00:237::/64 -j MASQUERADE\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Run("ip", "-n", a.NS, "-6", "route", "add", "fd00:238::/64", "via", "fd00:237::2"); err != nil {
		t.Fatal(err)
	}
	bAddr := b.KernelAddr6.Addr()

	// TCP, A → B.
	var kl net.Listener
	if err := b.Do(func() (err error) {
		kl, err = net.Listen("tcp6", netip.AddrPortFrom(bAddr, 5060).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kl.Close()
	peers := make(chan net.Addr, 1)
	got := stacktest.AcceptAndDrain(peerRecorder{kl, peers}, 0)
	var kc net.Conn
	if err := a.Do(func() (err error) {
		kc, err = (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp6", netip.AddrPortFrom(bAddr, 5060).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	size := max(tcpBulkMB()/4, 8) << 20
	sum, err := sendPattern(kc, size)
	if err != nil {
		t.Fatalf("A write: %v\n%s", err, s.Stats())
	}
	kc.(*net.TCPConn).CloseWrite()
	r := <-got
	kc.Close()
	if r.Err != nil || r.N != int64(size) || r.Sum != sum {
		t.Fatalf("B received %d of %d bytes (checksum ok %v): %v\n%s", r.N, size, r.Sum == sum, r.Err, s.Stats())
	}
	if peer := (<-peers).(*net.TCPAddr).AddrPort().Addr(); peer != b.StackAddr6.Addr() {
		t.Fatalf("B saw the connection from %v, want the stack's %v", peer, b.StackAddr6.Addr())
	}

	// UDP, A → B and back.
	var ks *net.UDPConn
	if err := b.Do(func() (err error) {
		ks, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(bAddr, 5061)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	go env.ServeUDPEcho(ks)
	var ku *net.UDPConn
	if err := a.Do(func() (err error) {
		ku, err = net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(bAddr, 5061)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ku.Close()
	if _, err := env.CheckEcho(ku, []int{1, 1000, 1452, 8000}, 3*time.Second); err != nil {
		t.Fatalf("UDP through MASQUERADE: %v\n%s", err, s.Stats())
	}
}

// peerRecorder is a net.Listener that reports each accepted connection's
// remote address.
type peerRecorder struct {
	net.Listener
	peers chan<- net.Addr
}

func (p peerRecorder) Accept() (net.Conn, error) {
	c, err := p.Listener.Accept()
	if err == nil {
		select {
		case p.peers <- c.RemoteAddr():
		default:
		}
	}
	return c, err
}

// RFC 8201 §4 / RFC 4443 §3.2 with a kernel router: the stack's TCP
// sends full-sized segments (GSO super-packets of 1428-byte segments) to
// kernel B behind kernel router R, whose link to B carries 1280 bytes. R
// answers Packet Too Big 1280; the stack lowers the path MTU and the
// connection's MSS (1280 - 60 - 12) and resends, and B receives every
// byte.
func TestKernelTCP6PacketTooBigFromKernelRouter(t *testing.T) {
	requireRoot(t)
	r := newKernelPeer6(t, "10.239.0.1/24", "10.239.0.2/24", "fd00:239::1/64", "fd00:239::2/64", 1500)
	b := newKernelPeer6(t, "10.240.0.1/24", "10.240.0.2/24", "fd00:241::1/64", "fd00:241::2/64", 1500)
	s, _ := attachStack(t, r, "")
	// R ↔ B: a veth between R's and B's kernel namespaces (removed with
	// the namespaces), MTU 1280 on R's end and 1500 on B's, so B
	// announces an MSS of 1440 and only R knows the path is narrower.
	rIf, bIf := "r"+env.Suffix(), "b"+env.Suffix()
	for _, st := range [][]string{
		{"ip", "-n", r.NS, "link", "add", rIf, "mtu", "1280", "type", "veth", "peer", "name", bIf, "mtu", "1500", "netns", b.NS},
		{"ip", "-n", r.NS, "-6", "addr", "add", "fd00:240::1/64", "dev", rIf, "nodad"},
		{"ip", "-n", b.NS, "-6", "addr", "add", "fd00:240::2/64", "dev", bIf, "nodad"},
		{"ip", "-n", r.NS, "link", "set", rIf, "up"},
		{"ip", "-n", b.NS, "link", "set", bIf, "up"},
		{"ip", "netns", "exec", r.NS, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "-n", b.NS, "-6", "route", "add", "fd00:239::/64", "via", "fd00:240::1"},
	} {
		if _, err := env.Run(st[0], st[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddRoute(route.Route{Dst: netip.MustParsePrefix("fd00:240::/64"), Gateway: r.KernelAddr6.Addr(),
		NIC: s.Devices().List()[0].ID(), Type: route.Unicast}); err != nil {
		t.Fatal(err)
	}
	bAddr := netip.MustParseAddrPort("[fd00:240::2]:5070")
	var kl net.Listener
	if err := b.Do(func() (err error) {
		kl, err = net.Listen("tcp6", bAddr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kl.Close()
	got := stacktest.AcceptAndDrain(kl, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := s.DialTCP(ctx, netip.AddrPort{}, bAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if in := c.Info(); in.MSS != 1428 {
		t.Fatalf("MSS before: %d (B's %d)", in.MSS, in.PeerMSS)
	}
	size := 16 << 20
	c.SetDeadline(time.Now().Add(time.Minute))
	start := time.Now()
	sum, err := sendPattern(c, size)
	if err != nil {
		t.Fatalf("stack write: %v\n%s", err, s.Stats())
	}
	c.CloseWrite()
	res := <-got
	if res.Err != nil || res.N != int64(size) || res.Sum != sum {
		t.Fatalf("B received %d of %d bytes (checksum ok %v): %v\n%s", res.N, size, res.Sum == sum, res.Err, s.Stats())
	}
	in := c.Info()
	if in.MSS != 1208 {
		t.Fatalf("MSS after Packet Too Big: %d", in.MSS)
	}
	t.Logf("%d MiB through the narrower path in %v: retransmits %d", size>>20, time.Since(start).Round(time.Millisecond), in.TotalRetrans)
	st := s.Stats().IP6
	if st.ICMP.InPktTooBigs == 0 {
		t.Fatalf("no Packet Too Big reached the stack: %+v", st.ICMP)
	}
	if mtu, _ := s.IPv6().PathMTU(route.Flow{Dst: bAddr.Addr()}); mtu != 1280 {
		t.Fatalf("path MTU %d", mtu)
	}
}
