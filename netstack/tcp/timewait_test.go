package tcp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// twListen runs a handshake against a new listener (the test's options on
// the SYN), has the stack close first and the peer answer with its FIN, so
// the accepted socket sits in TIME-WAIT. It returns the listener and the
// old socket; c.IRS is the old incarnation's ISS.
func (c *peer) twListen(opts header.TCPOptions) (l, old *Sock) {
	c.t.Helper()
	l = c.listen()
	c.t.Cleanup(func() { l.Close() })
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Opts(opts))
	sa := c.Expect("SYN,ACK")
	c.IRS = sa.seq
	ack := c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1)
	if opts.HasTS {
		ack = ack.Opts(header.TCPOptions{HasTS: true, TSVal: opts.TSVal + 1, TSEcr: sa.opts.TSVal})
	}
	c.Send(ack)
	old, err := l.Accept(time.Time{})
	if err != nil {
		c.t.Fatalf("accept: %v", err)
	}
	old.Close()
	fin := c.Expect("FIN")
	finAck := c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2)
	if opts.HasTS {
		finAck = finAck.Opts(header.TCPOptions{HasTS: true, TSVal: opts.TSVal + 2, TSEcr: fin.opts.TSVal})
	}
	c.Send(finAck)
	c.Expect("ACK of the peer's FIN")
	if old.State() != TimeWait {
		c.t.Fatalf("old socket in %v, want TIME-WAIT", old.State())
	}
	return l, old
}

// RFC 1122 §4.2.2.13, on the listener's path (tcp_timewait_state_process
// TCP_TW_SYN): a SYN beyond RCV.NXT of a tuple in TIME-WAIT reopens it; the
// listener answers with an ISN beyond anything the old incarnation sent
// (condition 1: Linux's SND.NXT + 65537) and accepts the new connection.
// An old duplicate SYN does not: it gets the TIME-WAIT's ACK.
func TestListenerReopensTimeWait(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, TimeWait: 60 * time.Second})
	l, old := c.twListen(header.TCPOptions{})
	oldSndNxt := c.IRS + 2 // SYN and FIN

	c.clk.Advance(time.Second)
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS)) // an old duplicate of the first SYN
	if a := c.Expect("ACK from TIME-WAIT"); a.flags != ACK || a.ack != c.ISS+2 || old.State() != TimeWait {
		t.Fatalf("old SYN: %v, old socket %v", a, old.State())
	}

	newISS := c.ISS + 100000
	c.Send(c.Seg().Flags(SYN).Seq(newISS))
	sa := c.Expect("SYN,ACK of the new incarnation")
	if sa.flags != SYN|ACK || sa.ack != newISS+1 || sa.seq != oldSndNxt+65535+2 {
		t.Fatalf("got %v, want SYN,ACK seq %d ack %d", sa, oldSndNxt+65535+2, newISS+1)
	}
	if old.State() != Closed || c.p.Counter(TWReopened) != 1 {
		t.Fatalf("old socket %v, TWReopened %d", old.State(), c.p.Counter(TWReopened))
	}
	c.Send(c.Seg().Flags(ACK).Seq(newISS + 1).Ack(sa.seq + 1))
	s, err := l.Accept(time.Time{})
	if err != nil || s.State() != Established || s.RemoteAddr() != c.raddr {
		t.Fatalf("accept on the reopened tuple: %v %v", s, err)
	}
}

// RFC 6191 §2 and PAWS (RFC 7323 §5), as Linux applies them: with
// timestamps on both incarnations a newer TSval reopens even below
// RCV.NXT; an older one never does (an old duplicate), even above it; an
// equal one (a reconnect within the same millisecond) does when the
// sequence number is beyond RCV.NXT.
func TestListenerReopensTimeWaitByTimestamp(t *testing.T) {
	c := newPeer(t, Config{TimeWait: 60 * time.Second})
	ts := header.TCPOptions{HasTS: true, TSVal: 5000}
	l, old := c.twListen(ts)

	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 500000).Opts(header.TCPOptions{HasTS: true, TSVal: 4000}))
	if a := c.Expect("ACK from TIME-WAIT"); a.flags != ACK || old.State() != TimeWait {
		t.Fatalf("older TSval: %v, old socket %v", a, old.State())
	}
	c.clk.Advance(time.Second) // past the rate limit of out-of-window ACKs
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS - 500000).Opts(header.TCPOptions{HasTS: true, TSVal: 5002}))
	if a := c.Expect("ACK from TIME-WAIT"); a.flags != ACK || old.State() != TimeWait {
		t.Fatalf("equal TSval, old sequence number: %v, old socket %v", a, old.State())
	}
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS - 500000).Opts(header.TCPOptions{HasTS: true, TSVal: 6000}))
	sa := c.Expect("SYN,ACK")
	if sa.flags != SYN|ACK || sa.ack != c.ISS-500000+1 || old.State() != Closed {
		t.Fatalf("newer TSval: %v, old socket %v", sa, old.State())
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS - 500000 + 1).Ack(sa.seq + 1).
		Opts(header.TCPOptions{HasTS: true, TSVal: 6001, TSEcr: sa.opts.TSVal}))
	if s, err := l.Accept(time.Time{}); err != nil || s.State() != Established {
		t.Fatalf("accept: %v %v", s, err)
	}
}

// Linux (TCP_TW_SYN falls through to TCP_TW_ACK): with nothing to take a
// new SYN — an active opener's TIME-WAIT, no listener on its port — the
// TIME-WAIT socket stays and answers with its ACK.
func TestTimeWaitWithoutListenerStays(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, TimeWait: 60 * time.Second})
	s := c.establishActive()
	s.Close()
	c.Expect("FIN")
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2))
	c.Expect("ACK of the peer's FIN")
	if s.State() != TimeWait {
		t.Fatalf("state %v", s.State())
	}
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 100000))
	if a := c.Expect("ACK from TIME-WAIT"); a.flags != ACK || s.State() != TimeWait || c.p.Counter(TWReopened) != 0 {
		t.Fatalf("got %v, state %v", a, s.State())
	}
}

// A reconnect within the same millisecond: the SYN's TSval equals
// TS.Recent, its sequence number is beyond RCV.NXT: Linux reopens.
func TestListenerReopensTimeWaitEqualTimestamp(t *testing.T) {
	c := newPeer(t, Config{TimeWait: 60 * time.Second})
	l, old := c.twListen(header.TCPOptions{HasTS: true, TSVal: 5000})
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 100000).Opts(header.TCPOptions{HasTS: true, TSVal: 5002}))
	sa := c.Expect("SYN,ACK")
	if sa.flags != SYN|ACK || old.State() != Closed {
		t.Fatalf("equal TSval, new sequence number: %v, old socket %v", sa, old.State())
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 100001).Ack(sa.seq + 1).
		Opts(header.TCPOptions{HasTS: true, TSVal: 5003, TSEcr: sa.opts.TSVal}))
	if s, err := l.Accept(time.Time{}); err != nil || s.State() != Established {
		t.Fatalf("accept: %v %v", s, err)
	}
}

// tcp_max_tw_buckets: at most MaxTimeWait sockets wait in TIME-WAIT; one
// more that would enter it closes at once instead (tcp_time_wait without
// a timewait sock, TCPTimeWaitOverflow). TIME-WAIT is the closer's to
// pay, and the stack closes first whenever a proxied server does: with
// 60 s of it, a node answering more than MaxSockets / 60 s such
// connections would otherwise fill the connection table with them and
// refuse every new connection.
func TestTimeWaitBound(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, MaxSockets: 6, MaxTimeWait: 3})
	l := c.listen()
	defer l.Close()
	conns := func() int {
		c.p.mu.RLock()
		defer c.p.mu.RUnlock()
		return len(c.p.conns)
	}
	for i := range 10 {
		c.raddr = netip.AddrPortFrom(remoteAddr, uint16(41000+i))
		c.Send(c.Seg().Flags(SYN).Seq(c.ISS))
		sa := c.Expect("SYN,ACK")
		if sa.flags != SYN|ACK {
			t.Fatalf("connection %d: %v, want SYN,ACK (the table holds %d)", i, sa, conns())
		}
		c.IRS = sa.seq
		c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
		s, err := l.Accept(time.Time{})
		if err != nil {
			t.Fatalf("connection %d: accept: %v", i, err)
		}
		s.Close()
		c.Expect("FIN")
		c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2))
		c.Expect("ACK of the peer's FIN")
		want := TimeWait
		if i >= 3 {
			want = Closed
		}
		if s.State() != want {
			t.Fatalf("connection %d: %v, want %v", i, s.State(), want)
		}
	}
	if n := c.p.Counter(TimeWaitOverflow); n != 7 {
		t.Fatalf("TcpExtTCPTimeWaitOverflow %d, want 7", n)
	}
	// TIME-WAIT's end frees its place for the next closer.
	c.clk.Advance(61 * time.Second)
	if n := conns(); n != 0 {
		t.Fatalf("%d sockets after TIME-WAIT, want none", n)
	}
}
