package stacktest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// TCP and UDP over IPv6 between whole stacks over pipes, on the manual
// clock (protocol time moves only in clk.Advance; stacktest.WaitFor waits
// for the NIC goroutines).

// tcpTap records the TCP segments a NIC receives.
type tcpTap struct {
	mu sync.Mutex
	tapCounts
}

// tapCounts are a tcpTap's records.
type tapCounts struct {
	v6, v4     int      // TCP segments by family
	badCsum    int      // IPv6 segments whose checksum fails the IPv6 pseudo-header
	synMSS     []uint16 // the MSS option of each SYN
	maxIPv6    int      // the largest IPv6 packet (header included)
	mappedAddr int      // IPv6 packets with an IPv4-mapped address
}

func newTCPTap(n *stacktest.Node) *tcpTap {
	tp := &tcpTap{}
	n.Devices().AddTap(func(nic *dev.NIC, skb *buf.SKB, dir dev.Direction) {
		if dir != dev.Rx {
			return
		}
		eth, err := header.CheckEthernet(skb.Bytes())
		if err != nil {
			return
		}
		tp.mu.Lock()
		defer tp.mu.Unlock()
		switch eth.Type() {
		case header.EtherTypeIPv4:
			if ip, err := header.CheckIPv4(eth.Payload()); err == nil && ip.Protocol() == header.ProtoTCP {
				tp.v4++
			}
		case header.EtherTypeIPv6:
			ip := header.IPv6(eth.Payload())
			if len(ip) < header.IPv6MinSize {
				return
			}
			if ip.Src().Is4In6() || ip.Dst().Is4In6() {
				tp.mappedAddr++
			}
			if ip.NextHeader() != header.ProtoTCP {
				return
			}
			tp.v6++
			tp.maxIPv6 = max(tp.maxIPv6, len(ip))
			th, err := header.CheckTCP(ip.Payload())
			if err != nil {
				tp.badCsum++
				return
			}
			if skb.Csum == buf.CsumNone && !th.ChecksumValid(ip.Src(), ip.Dst()) {
				tp.badCsum++
			}
			if th.Flags()&header.SYN != 0 {
				o, _ := header.ParseTCPOptions(th.Options())
				tp.synMSS = append(tp.synMSS, o.MSS)
			}
		}
	})
	return tp
}

func (tp *tcpTap) snapshot() tapCounts {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	c := tp.tapCounts
	c.synMSS = append([]uint16(nil), c.synMSS...)
	return c
}

// dial6 dials from a to to while the test advances clk (a handshake whose
// SYN waits on neighbour resolution needs no timer, but a lost one would).
func dialTCP(t *testing.T, clk *clock.Manual, a *stacktest.Node, laddr, to netip.AddrPort) (*tcp.Conn, error) {
	t.Helper()
	type res struct {
		c   *tcp.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := a.DialTCP(ctx, laddr, to)
		ch <- res{c, err}
	}()
	var r res
	stacktest.WaitFor(t, "the dial", func() bool {
		select {
		case r = <-ch:
			return true
		default:
			clk.Advance(time.Millisecond)
			return false
		}
	})
	if r.c != nil {
		t.Cleanup(func() { r.c.Close() })
	}
	return r.c, r.err
}

func acceptTCP(t *testing.T, ln *tcp.Listener) *tcp.Conn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// copyBoth writes n random bytes each way over the pair (c1 → c2 and
// c2 → c1 at once), reads them back and compares, advancing clk by a
// millisecond per poll for the delayed ACKs and any retransmission.
func copyBoth(t *testing.T, clk *clock.Manual, c1, c2 net.Conn, n int) {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(n), 6))
	out1, out2 := make([]byte, n), make([]byte, n)
	for i := range out1 {
		out1[i], out2[i] = byte(r.Uint32()), byte(r.Uint32())
	}
	in1, in2 := make([]byte, n), make([]byte, n)
	errc := make(chan error, 4)
	go func() { _, err := c1.Write(out1); errc <- err }()
	go func() { _, err := c2.Write(out2); errc <- err }()
	go func() { _, err := io.ReadFull(c2, in2); errc <- err }()
	go func() { _, err := io.ReadFull(c1, in1); errc <- err }()
	done := 0
	stacktest.WaitFor(t, "the transfer", func() bool {
		for {
			select {
			case err := <-errc:
				if err != nil {
					t.Fatalf("transfer: %v", err)
				}
				done++
				continue
			default:
			}
			break
		}
		if done < 4 {
			clk.Advance(time.Millisecond)
		}
		return done == 4
	})
	if !bytes.Equal(in2, out1) || !bytes.Equal(in1, out2) {
		t.Fatal("the data differs")
	}
}

// RFC 9293 over IPv6 (RFC 8200 §8.1, §8.3): the handshake between two
// stacks' IPv6 addresses, data both ways with checksums over the IPv6
// pseudo-header, an MSS of the MTU less 60 bytes, the close, and
// TIME-WAIT for the IPv6 4-tuple (2 MSL on the manual clock).
func TestTCPOverIPv6(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	tapA, tapB := newTCPTap(a), newTCPTap(b)
	ln, err := b.ListenTCP(netip.AddrPortFrom(b.Addr6(), 80))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(b.Addr6(), 80))
	if err != nil {
		t.Fatal(err)
	}
	s := acceptTCP(t, ln)
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if local.Addr() != a.Addr6() || s.RemoteAddr().(*net.TCPAddr).AddrPort() != local {
		t.Fatalf("client %v, server sees %v", local, s.RemoteAddr())
	}
	// RFC 8200 §8.3 / RFC 9293 §3.7.1: 1500 - 40 - 20 = 1440, less the
	// 12 bytes of timestamps per segment.
	if ia, ib := c.Info(), s.Info(); ia.PeerMSS != 1440 || ib.PeerMSS != 1440 || ia.MSS != 1428 || ib.MSS != 1428 {
		t.Fatalf("MSS: client %d/%d server %d/%d", ia.MSS, ia.PeerMSS, ib.MSS, ib.PeerMSS)
	}
	copyBoth(t, clk, c, s, 300<<10)

	// Active close from the client: it holds the IPv6 4-tuple in
	// TIME-WAIT for 2 MSL (RFC 9293 §3.6.1).
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("server read after FIN: %v", err)
	}
	s.Close()
	stacktest.WaitFor(t, "TIME-WAIT", func() bool { return c.Info().State == tcp.TimeWait })
	clk.Advance(tcp.DefaultTimeWait)
	stacktest.WaitFor(t, "TIME-WAIT to end", func() bool { return c.Info().State == tcp.Closed })

	ta, tb := tapA.snapshot(), tapB.snapshot()
	if ta.v4 != 0 || tb.v4 != 0 || ta.v6 == 0 || tb.v6 == 0 {
		t.Fatalf("segments: A got v4 %d v6 %d, B got v4 %d v6 %d", ta.v4, ta.v6, tb.v4, tb.v6)
	}
	if ta.badCsum != 0 || tb.badCsum != 0 {
		t.Fatalf("bad IPv6 checksums: %d at A, %d at B", ta.badCsum, tb.badCsum)
	}
	if len(tb.synMSS) != 1 || tb.synMSS[0] != 1440 || len(ta.synMSS) != 1 || ta.synMSS[0] != 1440 {
		t.Fatalf("SYN MSS options: to B %v, to A %v", tb.synMSS, ta.synMSS)
	}
	if tb.maxIPv6 > 1500 || ta.maxIPv6 > 1500 {
		t.Fatalf("IPv6 packets over the MTU: %d, %d", ta.maxIPv6, tb.maxIPv6)
	}
	if st := b.TCP().Counters(); st["TcpInCsumErrors"] != 0 {
		t.Fatalf("B's TCP counters %v", st)
	}
}

// RFC 8200 §5 / §8.3: on a link of the IPv6 minimum MTU (1280) the MSS
// is 1220 and no segment needs fragmentation.
func TestTCPIPv6MSSFromMTU(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack(), stacktest.MTU(1280))
	tapB := newTCPTap(b)
	ln, err := b.ListenTCP(netip.AddrPortFrom(b.Addr6(), 80))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(b.Addr6(), 80))
	if err != nil {
		t.Fatal(err)
	}
	s := acceptTCP(t, ln)
	if ia := c.Info(); ia.PeerMSS != 1220 || ia.MSS != 1208 {
		t.Fatalf("client MSS %d, peer's %d", ia.MSS, ia.PeerMSS)
	}
	copyBoth(t, clk, c, s, 100<<10)
	tb := tapB.snapshot()
	if len(tb.synMSS) != 1 || tb.synMSS[0] != 1220 || tb.maxIPv6 != 1280 {
		t.Fatalf("at B: SYN MSS %v, largest packet %d", tb.synMSS, tb.maxIPv6)
	}
	if fa, fb := a.Stats().IP6.FragCreates, b.Stats().IP6.FragCreates; fa != 0 || fb != 0 {
		t.Fatalf("fragments created: %d, %d", fa, fb)
	}
}

// RFC 8201 §4 / RFC 4443 §3.2: R's link to B carries 1280 bytes, B's own
// NIC 1500. A sends segments of B's MSS (1440); R answers Packet Too Big
// 1280; A's connection lowers its MSS to 1280 - 60 - 12 and resends, and
// the data arrives whole in packets of at most 1280 bytes. A second
// connection starts from the path MTU A learnt, and R sends no more.
func TestTCPIPv6PacketTooBig(t *testing.T) {
	clk := clock.NewManual()
	a, r, b := stacktest.Chain(t, stacktest.WithClock(clk), stacktest.DualStack())
	if err := r.NICs[1].SetMTU(1280); err != nil {
		t.Fatal(err)
	}
	tapB := newTCPTap(b)
	ln, err := b.ListenTCP(netip.AddrPortFrom(b.Addr6(), 80))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(b.Addr6(), 80))
	if err != nil {
		t.Fatal(err)
	}
	s := acceptTCP(t, ln)
	if ia := c.Info(); ia.MSS != 1428 {
		t.Fatalf("MSS before: %d", ia.MSS)
	}
	copyBoth(t, clk, c, s, 200<<10)
	if n := r.Stats().IP6.ICMP.OutPktTooBigs; n == 0 {
		t.Fatal("R sent no Packet Too Big")
	}
	if ia := c.Info(); ia.MSS != 1208 {
		t.Fatalf("MSS after Packet Too Big: %d", ia.MSS)
	}
	if tb := tapB.snapshot(); tb.maxIPv6 > 1280 {
		t.Fatalf("B got a %d-byte packet", tb.maxIPv6)
	}
	ptbs := r.Stats().IP6.ICMP.OutPktTooBigs
	c2, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(b.Addr6(), 80))
	if err != nil {
		t.Fatal(err)
	}
	s2 := acceptTCP(t, ln)
	if ia := c2.Info(); ia.MSS != 1208 {
		t.Fatalf("a new connection's MSS: %d", ia.MSS)
	}
	copyBoth(t, clk, c2, s2, 100<<10)
	if n := r.Stats().IP6.ICMP.OutPktTooBigs; n != ptbs {
		t.Fatalf("R sent %d more Packet Too Big", n-ptbs)
	}
}

// RFC 3493 §3.7 and §5.3 as Linux applies them (bindv6only=0): a
// listener on :: takes both families, one on 0.0.0.0 only IPv4, so an
// IPv6 SYN to it is answered with a reset (ECONNREFUSED).
func TestTCPDualStackListener(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	ln, err := b.ListenTCP(netip.MustParseAddrPort("[::]:80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	for _, to := range []netip.Addr{b.Addr(), b.Addr6()} {
		c, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(to, 80))
		if err != nil {
			t.Fatalf("dial %v: %v", to, err)
		}
		s := acceptTCP(t, ln)
		if got := s.LocalAddr().(*net.TCPAddr).AddrPort(); got != netip.AddrPortFrom(to, 80) {
			t.Fatalf("accepted on %v, dialled %v", got, to)
		}
		copyBoth(t, clk, c, s, 1000)
	}
	if _, err := b.ListenTCP(netip.MustParseAddrPort("0.0.0.0:80")); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("0.0.0.0:80 beside [::]:80: %v", err)
	}
	ln4, err := b.ListenTCP(netip.MustParseAddrPort("0.0.0.0:81"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln4.Close() })
	if _, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(b.Addr6(), 81)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("IPv6 dial to a 0.0.0.0 listener: %v", err)
	}
	if _, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(b.Addr(), 81)); err != nil {
		t.Fatalf("IPv4 dial to a 0.0.0.0 listener: %v", err)
	}
}

// RFC 4291 §2.5.5.2 / RFC 4038 §4.2: an IPv4-mapped address names the
// IPv4 node; the socket API unmaps it, so the flow is IPv4 on the wire
// and no IPv6 packet ever carries ::ffff:a.b.c.d. Mixing families on one
// socket is refused.
func TestIPv4MappedNeverOnTheWire(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	tapB := newTCPTap(b)
	ln, err := b.ListenTCP(netip.AddrPortFrom(netip.Addr{}, 80))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	mapped := netip.AddrFrom16(b.Addr().As16())
	if !mapped.Is4In6() {
		t.Fatal("not mapped")
	}
	c, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(mapped, 80))
	if err != nil {
		t.Fatal(err)
	}
	s := acceptTCP(t, ln)
	if l := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); l != a.Addr() {
		t.Fatalf("local address %v", l)
	}
	copyBoth(t, clk, c, s, 1000)
	if tb := tapB.snapshot(); tb.v6 != 0 || tb.v4 == 0 || tb.mappedAddr != 0 {
		t.Fatalf("at B: %+v", tb)
	}

	// UDP: sent to the mapped address, received from A's IPv4 address.
	srv, err := b.ListenUDP(netip.AddrPortFrom(netip.IPv6Unspecified(), 53))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cli := a.UDP().NewSocket()
	t.Cleanup(func() { cli.Close() })
	if _, err := cli.SendTo([]byte("mapped"), netip.AddrPortFrom(mapped, 53)); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := srv.ReadFrom(make([]byte, 64))
	if err != nil || n != 6 || from.(*net.UDPAddr).AddrPort().Addr() != a.Addr() {
		t.Fatalf("received %d from %v: %v", n, from, err)
	}

	// One family per bound socket.
	s4 := a.TCP().NewSock()
	if err := s4.Bind(netip.AddrPortFrom(a.Addr(), 0)); err != nil {
		t.Fatal(err)
	}
	if err := s4.Connect(netip.AddrPortFrom(b.Addr6(), 80)); !errors.Is(err, syscall.EAFNOSUPPORT) {
		t.Fatalf("IPv4-bound socket to an IPv6 peer: %v", err)
	}
	u4 := a.UDP().NewSocket()
	t.Cleanup(func() { u4.Close() })
	if err := u4.Bind(netip.AddrPortFrom(a.Addr(), 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := u4.SendTo([]byte("x"), netip.AddrPortFrom(b.Addr6(), 53)); !errors.Is(err, syscall.EAFNOSUPPORT) {
		t.Fatalf("IPv4-bound UDP socket to an IPv6 peer: %v", err)
	}
	// A zone that names no NIC.
	if err := a.TCP().NewSock().Connect(netip.MustParseAddrPort("[fe80::1%nosuch0]:80")); !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("zoned address: %v", err)
	}
}

// RFC 4291 §2.5.6 / RFC 4007 §6, §11: TCP and UDP between link-local
// addresses, the zone naming the NIC by name or by ID ("%2", Linux's
// scope ID); the receiver's view of a link-local peer carries the zone
// of the NIC it came in on, so its reply leaves there. Without a zone the
// link is unknown (EINVAL).
func TestLinkLocalTCPAndUDP(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	llA, llB := netstack.LinkLocal(a.NIC()), netstack.LinkLocal(b.NIC())
	ln, err := b.ListenTCP(netip.MustParseAddrPort("[::]:80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	for _, zone := range []string{a.NIC().Name(), strconv.Itoa(a.NIC().ID())} {
		c, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(llB.WithZone(zone), 80))
		if err != nil {
			t.Fatalf("dial %v%%%s: %v", llB, zone, err)
		}
		s := acceptTCP(t, ln)
		if l, r := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(), s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); l != llA || r != llA {
			t.Fatalf("client %v, server sees %v", l, r)
		}
		copyBoth(t, clk, c, s, 10000)
	}
	if _, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(llB, 80)); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("link-local without a zone: %v", err)
	}

	srv := b.UDP().NewSocket()
	t.Cleanup(func() { srv.Close() })
	if err := srv.Bind(netip.MustParseAddrPort("[::]:53")); err != nil {
		t.Fatal(err)
	}
	cli := a.UDP().NewSocket()
	t.Cleanup(func() { cli.Close() })
	if err := cli.Connect(netip.AddrPortFrom(llB.WithZone(a.NIC().Name()), 53)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Send([]byte("ll")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 16)
	var m udp.Meta
	stacktest.WaitFor(t, "the datagram at B", func() bool {
		var err error
		_, m, err = srv.RecvMsg(got, udp.MsgDontWait)
		return err == nil
	})
	if m.From.Addr() != llA.WithZone(b.NIC().Name()) || m.To.Addr() != llB.WithZone(b.NIC().Name()) {
		t.Fatalf("from %v to %v", m.From, m.To)
	}
	if _, err := srv.SendTo([]byte("back"), m.From); err != nil {
		t.Fatal(err)
	}
	stacktest.WaitFor(t, "the answer at A", func() bool {
		n, m, err := cli.RecvMsg(got, udp.MsgDontWait)
		return err == nil && string(got[:n]) == "back" && m.From.Addr().WithZone("") == llB
	})
	if _, err := srv.SendTo([]byte("x"), netip.AddrPortFrom(llA, m.From.Port())); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("link-local without a zone: %v", err)
	}
}

// UDP over IPv6 both ways (RFC 768 with RFC 8200 §8.1's pseudo-header):
// a 3000-byte datagram is fragmented and reassembled, the receiver sees
// the sender's IPv6 address and the datagram's IPv6 header, and a socket
// on :: takes IPv4 too.
func TestUDPOverIPv6(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	srv := b.UDP().NewSocket()
	t.Cleanup(func() { srv.Close() })
	if err := srv.Bind(netip.MustParseAddrPort("[::]:53")); err != nil {
		t.Fatal(err)
	}
	cli := a.UDP().NewSocket()
	t.Cleanup(func() { cli.Close() })
	if err := cli.Connect(netip.AddrPortFrom(b.Addr6(), 53)); err != nil {
		t.Fatal(err)
	}
	if l := cli.LocalAddr(); l.Addr() != a.Addr6() {
		t.Fatalf("connected from %v", l)
	}
	msg := bytes.Repeat([]byte("v6"), 1500)
	if _, err := cli.Send(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4000)
	var h udp.Header
	var n int
	var m udp.Meta
	stacktest.WaitFor(t, "the datagram at B", func() bool {
		var err error
		n, m, err = srv.RecvMsgHeader(got, &h, udp.MsgDontWait)
		return err == nil
	})
	if !bytes.Equal(got[:n], msg) || m.From != cli.LocalAddr() || m.To != netip.AddrPortFrom(b.Addr6(), 53) {
		t.Fatalf("got %d bytes %v → %v", n, m.From, m.To)
	}
	if hb := h.Bytes(); len(hb) != header.IPv6MinSize+header.UDPSize || hb[0]>>4 != 6 || header.IPv6(hb).Src() != a.Addr6() {
		t.Fatalf("header % x", hb)
	}
	if st := b.Stats().IP6; st.ReasmOKs != 1 {
		t.Fatalf("B reassembled %d", st.ReasmOKs)
	}
	// And back.
	if _, err := srv.SendTo([]byte("answer"), m.From); err != nil {
		t.Fatal(err)
	}
	stacktest.WaitFor(t, "the answer at A", func() bool {
		n, m, err := cli.RecvMsg(got, udp.MsgDontWait)
		return err == nil && string(got[:n]) == "answer" && m.From == netip.AddrPortFrom(b.Addr6(), 53)
	})
	// The same socket over IPv4.
	cli4 := a.UDP().NewSocket()
	t.Cleanup(func() { cli4.Close() })
	if _, err := cli4.SendTo([]byte("v4"), netip.AddrPortFrom(b.Addr(), 53)); err != nil {
		t.Fatal(err)
	}
	stacktest.WaitFor(t, "the IPv4 datagram at B", func() bool {
		n, m, err := srv.RecvMsg(got, udp.MsgDontWait)
		return err == nil && string(got[:n]) == "v4" && m.From.Addr() == a.Addr()
	})
	if st := b.Stats().UDP; st.InCsumErrors != 0 || st.InDatagrams != 2 {
		t.Fatalf("B's UDP %+v", st)
	}
}

// RFC 4443 §3.1 / RFC 1122 §4.1.3.3: a datagram to a closed port over
// IPv6 is answered with Destination Unreachable code 4, which reaches the
// connected sender through ipv6's error input and header.ICMPError as
// ECONNREFUSED, once.
func TestUDPIPv6PortUnreachable(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	cli := a.UDP().NewSocket()
	t.Cleanup(func() { cli.Close() })
	if err := cli.Connect(netip.AddrPortFrom(b.Addr6(), 9)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Send([]byte("anyone?")); err != nil {
		t.Fatal(err)
	}
	var err error
	stacktest.WaitFor(t, "the error", func() bool {
		_, _, err = cli.RecvMsg(make([]byte, 10), udp.MsgDontWait)
		return !errors.Is(err, syscall.EAGAIN)
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("receive: %v", err)
	}
	if st := b.Stats(); st.UDP.NoPorts != 1 || st.IP6.ICMP.OutDestUnreachs != 1 {
		t.Fatalf("B: UDP %+v ICMPv6 %+v", st.UDP, st.IP6.ICMP)
	}
	if st := a.Stats(); st.UDP.ICMPHardErrors != 1 || st.IP6.ICMP.InDestUnreachs != 1 {
		t.Fatalf("A: UDP %+v ICMPv6 %+v", st.UDP, st.IP6.ICMP)
	}
	if _, _, err := cli.RecvMsg(make([]byte, 10), udp.MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("second receive: %v", err)
	}
}

// RFC 8200 §8.1: "IPv6 receivers must discard UDP packets containing a
// zero checksum"; one with a wrong checksum is discarded too (RFC 1122
// §4.1.3.4), and neither is answered.
func TestUDPIPv6ZeroChecksumDropped(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	if _, err := a.Ping(pingCtx(t), b.Addr6(), 1, nil); err != nil { // resolve both ways
		t.Fatal(err)
	}
	srv := b.UDP().NewSocket()
	t.Cleanup(func() { srv.Close() })
	if err := srv.Bind(netip.AddrPortFrom(b.Addr6(), 53)); err != nil {
		t.Fatal(err)
	}
	frame := func() *stacktest.Builder {
		return stacktest.Frame().Eth(a.NIC().MAC(), b.NIC().MAC()).IPv6Addr(a.Addr6(), b.Addr6()).UDP(1000, 53).Payload([]byte("hello"))
	}
	inject(a, frame().NoUDPChecksum().Bytes())
	inject(a, frame().BadL4Checksum().Bytes())
	inject(a, frame().Bytes())
	// The good datagram is queued after the two bad ones are counted:
	// wait until it is there too (a peek leaves it for the receive below).
	stacktest.WaitFor(t, "B to see three datagrams", func() bool {
		if b.Stats().UDP.InErrors != 2 {
			return false
		}
		_, _, err := srv.RecvMsg(make([]byte, 10), udp.MsgDontWait|udp.MsgPeek)
		return err == nil
	})
	n, m, err := srv.RecvMsg(make([]byte, 10), udp.MsgDontWait)
	if err != nil || n != 5 || m.From != netip.AddrPortFrom(a.Addr6(), 1000) {
		t.Fatalf("received %d from %v: %v", n, m.From, err)
	}
	if st := b.Stats(); st.UDP.InCsumErrors != 2 || st.IP6.ICMP.OutDestUnreachs != 0 {
		t.Fatalf("B: UDP %+v", st.UDP)
	}
}

// RFC 4443 §3.1 / RFC 1122 §4.2.3.9 on the wire: B's firewall answers
// SYNs with ICMPv6 Destination Unreachable (REJECT); A's connection
// being opened hears of it through ipv6's error input and V6Err and
// fails at once: port unreachable as ECONNREFUSED, administratively
// prohibited as EACCES (icmpv6_err_convert's fatal codes).
func TestTCPIPv6HardICMPv6ErrorsAbortConnect(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	nf := b.EnableNetfilter(netfilter.Config{})
	if err := nf.LoadText("*filter\n-A INPUT -p tcp --dport 81 -j REJECT --reject-with icmp6-port-unreachable\n" +
		"-A INPUT -p tcp --dport 82 -j REJECT --reject-with icmp6-adm-prohibited\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		port uint16
		want syscall.Errno
	}{{81, syscall.ECONNREFUSED}, {82, syscall.EACCES}} {
		if _, err := dialTCP(t, clk, a, netip.AddrPort{}, netip.AddrPortFrom(b.Addr6(), tc.port)); !errors.Is(err, tc.want) {
			t.Fatalf("dial port %d: %v, want %v", tc.port, err, tc.want)
		}
	}
	if st := a.Stats().IP6.ICMP; st.InDestUnreachs != 2 {
		t.Fatalf("A's ICMPv6 %+v", st)
	}
	if n := b.TCP().Counters()["TcpOutRsts"]; n != 0 {
		t.Fatalf("B sent %d resets", n)
	}
}
