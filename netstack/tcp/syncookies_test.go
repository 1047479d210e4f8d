package tcp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// RFC 4987 §3.6: under a SYN flood that fills the SYN queue, SYN cookies
// let legitimate clients connect, with their options carried in the
// timestamp; forged ACKs are refused.
func TestSynCookiesUnderFlood(t *testing.T) {
	c := newPeer(t, Config{MaxSynBacklog: 128})
	l := c.listen()
	defer l.Close()
	l.mu.Lock()
	l.backlog = MaxBacklog
	l.mu.Unlock()
	legit := c.raddr
	for i := 0; i < 10000; i++ {
		// Spoofed sources that never complete the handshake.
		c.raddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), uint16(1024+i))
		c.Send(c.Seg().Flags(SYN).Seq(uint32(i) * 7919))
	}
	if n := len(c.Out()); n != 10000 {
		t.Fatalf("%d SYN,ACKs for 10000 SYNs", n)
	}
	if got := c.p.Counter(SyncookiesSent); got != 10000-128 {
		t.Fatalf("SyncookiesSent %d, want %d", got, 10000-128)
	}
	if len(c.p.conns) != 128 {
		t.Fatalf("%d embryonic connections, want the SYN queue bound 128", len(c.p.conns))
	}

	// A legitimate client with every option connects through a cookie.
	c.raddr = legit
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Opts(header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7,
		SACKPermitted: true, HasTS: true, TSVal: 100}))
	sa := c.Expect("cookie SYN,ACK")
	if sa.flags != SYN|ACK || !sa.opts.HasTS || !sa.opts.HasWScale || !sa.opts.SACKPermitted {
		t.Fatalf("cookie SYN,ACK %v %+v", sa, sa.opts)
	}
	c.clk.Advance(70 * time.Second) // still valid in the next period
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(sa.seq + 1).Data([]byte("hi")).
		Opts(header.TCPOptions{HasTS: true, TSVal: 200, TSEcr: sa.opts.TSVal}))
	s, err := l.Accept(time.Time{})
	if err != nil {
		t.Fatalf("accept after the cookie ACK: %v (%v)", err, nonzero(c.p))
	}
	in := s.Info()
	if in.State != Established || !in.Options.Timestamps || !in.Options.SACK || in.SndWscale != 7 || in.PeerMSS != 1460 {
		t.Fatalf("cookie connection %+v", in)
	}
	b := make([]byte, 4)
	if n, _ := s.Read(b); string(b[:n]) != "hi" {
		t.Fatalf("data with the cookie ACK: %q", b[:n])
	}

	// A forged ACK gets an RST; an expired cookie too.
	c.raddr = netip.AddrPortFrom(remoteAddr, 50000)
	c.Out()
	c.Send(c.Seg().Flags(ACK).Seq(5).Ack(12345))
	if r := c.Expect("RST for a forged cookie"); r.flags&RST == 0 {
		t.Fatalf("got %v", r)
	}
	// A cookie older than two periods is refused.
	c.raddr = netip.AddrPortFrom(remoteAddr, 50001)
	tp := tuple{laddr: c.laddr.Addr(), raddr: c.raddr.Addr(), lport: c.laddr.Port(), rport: c.raddr.Port()}
	cookie := c.p.makeCookie(tp, c.ISS, 1460)
	if _, ok := c.p.checkCookie(tp, cookie, c.ISS); !ok {
		t.Fatal("fresh cookie refused")
	}
	c.clk.Advance(200 * time.Second)
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(cookie + 1))
	if r := c.Expect("RST for an expired cookie"); r.flags&RST == 0 {
		t.Fatalf("got %v", r)
	}
	if c.p.Counter(SyncookiesRecv) != 1 || c.p.Counter(SyncookiesFailed) != 2 {
		t.Fatalf("counters %v", nonzero(c.p))
	}
}
