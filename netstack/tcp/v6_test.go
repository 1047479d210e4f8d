package tcp

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// IPv6 at the protocol, with the fake family recording what TCP sends.

// newProto6 is a Proto with IPv4 and IPv6 through one recording fakeIP.
func newProto6(t testing.TB) (*Proto, *fakeIP, *clock.Manual) {
	t.Helper()
	clk := clock.NewManual()
	ip := &fakeIP{local: localAddr, local6: localAddr6}
	return New(ip, ip, Config{Clock: clk}), ip, clk
}

// synSent opens a nonblocking connection to remoteAddr6:80 and returns
// it with its SYN.
func synSent(t *testing.T, p *Proto, ip *fakeIP) (*Sock, seg) {
	t.Helper()
	s := p.NewSock()
	s.SetNonblock(true)
	if err := s.ConnectContext(context.Background(), netip.AddrPortFrom(remoteAddr6, 80)); err != syscall.EINPROGRESS {
		t.Fatalf("connect: %v", err)
	}
	out := ip.take()
	if len(out) != 1 {
		t.Fatalf("%d segments", len(out))
	}
	return s, parseSeg(t, out[0])
}

// icmp6About is an ICMPv6 error's body as ipv6 hands it to V6Err: the
// quoted IPv6 header and the first 8 bytes of the quoted segment.
func icmp6About(sg seg) *buf.SKB {
	b := make([]byte, header.IPv6MinSize+8)
	header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: 20, NextHeader: header.ProtoTCP, HopLimit: 64,
		Src: sg.src.Addr(), Dst: sg.dst.Addr()})
	binary.BigEndian.PutUint16(b[40:], sg.src.Port())
	binary.BigEndian.PutUint16(b[42:], sg.dst.Port())
	binary.BigEndian.PutUint32(b[44:], sg.seq)
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.SetNetworkHeader()
	skb.SetTransportHeaderAt(header.IPv6MinSize)
	return skb
}

// The SYN over IPv6 comes from the IPv6 source with an MSS of the MTU
// less 60 bytes (RFC 8200 §8.3) and a checksum over the IPv6
// pseudo-header (§8.1).
func TestSYNOverIPv6(t *testing.T) {
	p, ip, _ := newProto6(t)
	_, sg := synSent(t, p, ip)
	if sg.src.Addr() != localAddr6 || sg.dst != netip.AddrPortFrom(remoteAddr6, 80) || sg.opts.MSS != 1440 {
		t.Fatalf("SYN %v MSS %d", sg, sg.opts.MSS)
	}
	if ip.v6 != 1 || ip.v4 != 0 {
		t.Fatalf("sent v4 %d v6 %d", ip.v4, ip.v6)
	}
}

// RFC 4443 §3.1 / RFC 1122 §4.2.3.9 through V6Err: a soft error
// (no route) is remembered, a hard one (port unreachable) aborts the
// connection being opened with ECONNREFUSED.
func TestV6ErrAbortsSynSent(t *testing.T) {
	p, ip, _ := newProto6(t)
	s, sg := synSent(t, p, ip)
	p.V6Err(icmp6About(sg), header.ICMPError{V6: true, Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6NoRoute,
		Errno: syscall.ENETUNREACH})
	if s.State() != SynSent {
		t.Fatalf("after a soft error: %v", s.State())
	}
	p.V6Err(icmp6About(sg), header.ICMPError{V6: true, Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6PortUnreachable,
		Errno: syscall.ECONNREFUSED, Hard: true})
	if s.State() != Closed {
		t.Fatalf("after port unreachable: %v", s.State())
	}
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("read: %v", err)
	}
}

// RFC 8201 §4: a Packet Too Big lowers the connection's MSS, never below
// what the IPv6 minimum MTU of 1280 allows (1220), whatever MTU the
// message claims.
func TestV6ErrPacketTooBig(t *testing.T) {
	p, ip, _ := newProto6(t)
	s, sg := synSent(t, p, ip)
	ptb := func(mtu uint32) {
		p.V6Err(icmp6About(sg), header.ICMPError{V6: true, Type: header.ICMPv6PacketTooBig, Errno: syscall.EMSGSIZE, Info: mtu})
	}
	ptb(1400)
	if m := s.advMSS(); m != 1400-60 {
		t.Fatalf("MSS after PTB 1400: %d", m)
	}
	ptb(600)
	if m := s.advMSS(); m != 1220 {
		t.Fatalf("MSS after PTB 600: %d", m)
	}
	if s.State() != SynSent {
		t.Fatalf("state %v", s.State())
	}
}

// Any bytes after an IPv6 header, to a dual-stack listener and a
// connection being opened, or quoted by an ICMPv6 error about that
// connection, are dropped and counted or answered; never a panic.
func FuzzV6(f *testing.F) {
	all := header.TCPOptions{HasMSS: true, MSS: 1440, HasWScale: true, WScale: 7, SACKPermitted: true, HasTS: true, TSVal: 1}
	pr := &peer{ISS: 1000}
	for _, m := range []tmpl{
		pr.Seg().Flags(SYN).Seq(1000).Opts(all),
		pr.Seg().Flags(SYN | ACK).Seq(1000).Ack(1).Opts(all),
		pr.Seg().Flags(RST | ACK).Seq(0).Ack(1),
	} {
		b := seedSegment(m)
		f.Add(b, false, uint8(0))
		f.Add(b, true, uint8(2))
	}
	f.Add([]byte{0, 1, 2}, true, uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, asErr bool, kind uint8) {
		p, ip, clk := newProto6(t)
		l := p.NewSock()
		if err := l.Bind(netip.MustParseAddrPort("[::]:80")); err != nil {
			t.Fatal(err)
		}
		if err := l.Listen(4); err != nil {
			t.Fatal(err)
		}
		c, sg := synSent(t, p, ip)
		src, dst := remoteAddr6, localAddr6
		if asErr {
			src, dst = localAddr6, remoteAddr6
		}
		if len(b) >= 4 && !asErr {
			port := uint16(80)
			if kind&1 != 0 {
				port = sg.src.Port() // to the connection being opened
			}
			binary.BigEndian.PutUint16(b[2:], port)
		}
		if len(b) >= header.TCPMinSize && !asErr && kind&2 == 0 {
			header.TCP(b).SetChecksum(src, dst)
		}
		h := make([]byte, header.IPv6MinSize)
		header.IPv6(h).Encode(header.IPv6Fields{PayloadLen: uint16(len(b)), NextHeader: header.ProtoTCP, HopLimit: 64,
			TrafficClass: kind, Src: src, Dst: dst})
		skb := buf.FromBytes(buf.MaxHeadroom, append(h, b...))
		skb.SetNetworkHeader()
		if asErr {
			skb.SetTransportHeaderAt(header.IPv6MinSize)
			e := header.ICMPError{V6: true, Type: header.ICMPv6DstUnreachable, Code: kind % 8, Errno: syscall.EHOSTUNREACH, Hard: kind&8 != 0}
			if kind&16 != 0 {
				e = header.ICMPError{V6: true, Type: header.ICMPv6PacketTooBig, Errno: syscall.EMSGSIZE, Info: uint32(kind) * 100}
			}
			p.V6Err(skb, e)
			skb.Consume()
		} else {
			skb.Pull(header.IPv6MinSize)
			p.V6Rcv(skb)
		}
		clk.Advance(200 * time.Second)
		for _, o := range ip.take() {
			o.Consume()
		}
		_ = c.Close()
		_ = l.Close()
		clk.Advance(200 * time.Second)
	})
}

// RFC 1122 §4.2.2.13 for an IPv6 4-tuple: a SYN beyond RCV.NXT of a
// tuple in TIME-WAIT reopens it through the listener; an old duplicate
// gets the TIME-WAIT's ACK.
func TestListenerReopensTimeWaitIPv6(t *testing.T) {
	c := newPeer6(t, Config{NoTimestamps: true, TimeWait: 60 * time.Second})
	l, old := c.twListen(header.TCPOptions{})
	oldSndNxt := c.IRS + 2
	c.clk.Advance(time.Second)
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS))
	if a := c.Expect("ACK from TIME-WAIT"); a.flags != ACK || a.dst != c.raddr || old.State() != TimeWait {
		t.Fatalf("old SYN: %v, old socket %v", a, old.State())
	}
	newISS := c.ISS + 100000
	c.Send(c.Seg().Flags(SYN).Seq(newISS))
	sa := c.Expect("SYN,ACK of the new incarnation")
	if sa.flags != SYN|ACK || sa.ack != newISS+1 || sa.seq != oldSndNxt+65535+2 || sa.src != c.laddr {
		t.Fatalf("got %v", sa)
	}
	c.Send(c.Seg().Flags(ACK).Seq(newISS + 1).Ack(sa.seq + 1))
	s, err := l.Accept(time.Time{})
	if err != nil || s.State() != Established || s.RemoteAddr() != c.raddr {
		t.Fatalf("accept on the reopened tuple: %v %v", s, err)
	}
}

// The intercept (the proxy's SYN interception) for an IPv6 flow: the
// diverted SYN to a foreign IPv6 address is a Request; Accept answers
// from that address; after the proxy closes first, a new SYN reopens the
// tuple from TIME-WAIT and is intercepted again.
func TestInterceptIPv6ReopensTimeWait(t *testing.T) {
	c := newPeer6(t, Config{})
	c.laddr = netip.AddrPortFrom(netip.MustParseAddr("2001:db8::9"), 80)
	i, err := c.p.Intercept(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { i.Close() })
	conn := c.acceptIntercepted(i)
	if conn.LocalAddr().String() != "[2001:db8::9]:80" {
		t.Fatalf("proxy side %v", conn.LocalAddr())
	}
	conn.Close()
	if fin := c.Expect("FIN"); fin.flags != FIN|ACK || fin.src != c.laddr {
		t.Fatalf("got %v", fin)
	}
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2).Mark(netfilter.MarkDivert))
	c.Expect("ACK of the pod's FIN")
	if st := conn.Sock().State(); st != TimeWait {
		t.Fatalf("state %v", st)
	}
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 100000).Mark(netfilter.MarkDivert))
	c.ExpectNone("a new SYN to TIME-WAIT: no challenge ACK")
	if i.Pending() != 1 || conn.Sock().State() != Closed {
		t.Fatalf("pending %d, old state %v", i.Pending(), conn.Sock().State())
	}
}

// RFC 4987 §3.6 over IPv6: with the SYN queue full, a cookie SYN,ACK
// announces the MSS of the IPv6 MTU (1440) and the cookie ACK opens the
// connection.
func TestSynCookiesIPv6(t *testing.T) {
	c := newPeer6(t, Config{MaxSynBacklog: 4})
	l := c.listen()
	defer l.Close()
	legit := c.raddr
	for i := range 8 {
		c.raddr = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(100 + i)}), uint16(2000+i))
		c.Send(c.Seg().Flags(SYN).Seq(uint32(i) * 7919))
	}
	c.Out()
	if got := c.p.Counter(SyncookiesSent); got != 4 {
		t.Fatalf("SyncookiesSent %d", got)
	}
	c.raddr = legit
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Opts(header.TCPOptions{HasMSS: true, MSS: 1440, HasTS: true, TSVal: 100}))
	sa := c.Expect("cookie SYN,ACK")
	if sa.flags != SYN|ACK || sa.opts.MSS != 1440 || sa.dst != legit {
		t.Fatalf("cookie SYN,ACK %v MSS %d", sa, sa.opts.MSS)
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(sa.seq + 1).Opts(header.TCPOptions{HasTS: true, TSVal: 200, TSEcr: sa.opts.TSVal}))
	s, err := l.Accept(time.Time{})
	if err != nil || s.RemoteAddr() != legit || s.Info().PeerMSS != 1440 {
		t.Fatalf("accept after the cookie ACK: %v %v", s, err)
	}
}

// Listeners share a port across families as AF_INET and AF_INET6 ones
// do on Linux (bindv6only=0): 0.0.0.0 beside fd00::1 is fine, :: beside
// either is not; a SYN to fd00::1 goes to its listener, one to an IPv4
// address to 0.0.0.0's.
func TestListenAcrossFamilies(t *testing.T) {
	p, _, _ := newProto6(t)
	l4, err := p.Listen(netip.MustParseAddrPort("0.0.0.0:80"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	l6, err := p.Listen(netip.AddrPortFrom(localAddr6, 80), 0)
	if err != nil {
		t.Fatalf("fd00::1:80 beside 0.0.0.0:80: %v", err)
	}
	defer l6.Close()
	if _, err := p.Listen(netip.MustParseAddrPort("[::]:80"), 0); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf(":: beside them: %v", err)
	}
	if got := p.lookupListenerRLocked(tuple{laddr: localAddr6, lport: 80}); got != l6.Sock() {
		t.Fatal("the IPv6 SYN missed its listener")
	}
	if got := p.lookupListenerRLocked(tuple{laddr: localAddr, lport: 80}); got != l4.Sock() {
		t.Fatal("the IPv4 SYN missed 0.0.0.0")
	}
	if got := p.lookupListenerRLocked(tuple{laddr: netip.MustParseAddr("fd00::9"), lport: 80}); got != nil {
		t.Fatal("0.0.0.0 took an IPv6 SYN")
	}
}
