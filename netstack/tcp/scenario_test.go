package tcp

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

const (
	SYN = header.SYN
	ACK = header.ACK
	FIN = header.FIN
	RST = header.RST
	PSH = header.PSH
)

// listen opens a listener on the scenario's local address.
func (c *peer) listen() *Sock {
	c.t.Helper()
	l := c.p.NewSock()
	if err := l.Bind(c.laddr); err != nil {
		c.t.Fatal(err)
	}
	if err := l.Listen(4); err != nil {
		c.t.Fatal(err)
	}
	l.SetNonblock(true)
	return l
}

// establishPassive runs the three-way handshake against a listener
// (RFC 9293 §3.5 Figure 6) and returns the accepted socket; c.IRS is the
// stack's ISS.
func (c *peer) establishPassive(synOpts header.TCPOptions) *Sock {
	c.t.Helper()
	l := c.listen()
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Opts(synOpts))
	sa := c.Expect("SYN,ACK")
	if sa.flags != SYN|ACK || sa.ack != c.ISS+1 {
		c.t.Fatalf("want SYN,ACK ack %d, got %v", c.ISS+1, sa)
	}
	c.IRS = sa.seq
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
	s, err := l.Accept(time.Time{})
	if err != nil {
		c.t.Fatalf("accept: %v", err)
	}
	c.t.Cleanup(func() { l.Close() })
	s.SetNonblock(true)
	return s
}

// connect starts an active open and returns the SYN; c.laddr becomes
// the chosen local address and c.IRS the stack's ISS.
func (c *peer) connect() (*Sock, seg) {
	c.t.Helper()
	s := c.p.NewSock()
	s.SetNonblock(true)
	if err := s.ConnectContext(context.Background(), c.raddr); err != syscall.EINPROGRESS {
		c.t.Fatalf("connect: %v", err)
	}
	syn := c.Expect("SYN")
	c.IRS, c.laddr = syn.seq, syn.src
	return s, syn
}

// establishActive runs the handshake for a connect to the test's address.
func (c *peer) establishActive() *Sock {
	c.t.Helper()
	s := c.p.NewSock()
	s.SetNonblock(true)
	if err := s.ConnectContext(context.Background(), c.raddr); err != syscall.EINPROGRESS {
		c.t.Fatalf("connect: %v", err)
	}
	syn := c.Expect("SYN")
	c.IRS = syn.seq
	c.laddr = syn.src
	c.Send(c.Seg().Flags(SYN | ACK).Seq(c.ISS).Ack(c.IRS + 1))
	if a := c.Expect("ACK"); a.flags != ACK || a.ack != c.ISS+1 || a.seq != c.IRS+1 {
		c.t.Fatalf("want ACK seq %d ack %d, got %v", c.IRS+1, c.ISS+1, a)
	}
	if s.State() != Established {
		c.t.Fatalf("state %v", s.State())
	}
	return s
}

// RFC 9293 §3.5 (passive open) with RFC 7323 and RFC 2018 options: the
// SYN,ACK carries MSS, window scale, SACK-permitted and timestamps only
// because the SYN did, and echoes TSval.
func TestPassiveOpenNegotiatesOptions(t *testing.T) {
	c := newPeer(t, Config{})
	s := c.establishPassive(header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7,
		SACKPermitted: true, HasTS: true, TSVal: c.TSVal})
	in := s.Info()
	if !in.Options.Timestamps || !in.Options.SACK || !in.Options.WindowScale || in.SndWscale != 7 {
		t.Fatalf("options not negotiated: %+v", in)
	}
	if in.MSS != 1460-12 {
		t.Fatalf("MSS %d, want 1448 (1460 less timestamps, RFC 6691)", in.MSS)
	}
	if c.p.Counter(PassiveOpens) != 1 {
		t.Fatal("PassiveOpens not counted")
	}

	// Without options in the SYN, the SYN,ACK has none but MSS.
	c2 := newPeer(t, Config{})
	l := c2.listen()
	defer l.Close()
	c2.Send(c2.Seg().Flags(SYN).Seq(c2.ISS))
	sa := c2.Expect("SYN,ACK")
	if !sa.opts.HasMSS || sa.opts.HasTS || sa.opts.HasWScale || sa.opts.SACKPermitted {
		t.Fatalf("SYN,ACK options %+v to a SYN without options", sa.opts)
	}
	if sa.opts.MSS != 1460 {
		t.Fatalf("MSS option %d, want 1460 for a 1500-byte MTU", sa.opts.MSS)
	}
}

// RFC 9293 §3.5 (active open): the SYN offers every option; TSecr is 0.
func TestActiveOpen(t *testing.T) {
	c := newPeer(t, Config{})
	s, syn := c.connect()
	if syn.flags != SYN || !syn.opts.HasMSS || !syn.opts.HasWScale || !syn.opts.SACKPermitted || !syn.opts.HasTS || syn.opts.TSEcr != 0 {
		t.Fatalf("SYN %v options %+v", syn, syn.opts)
	}
	c.IRS = syn.seq
	c.Send(c.Seg().Flags(SYN | ACK).Seq(c.ISS).Ack(c.IRS + 1).Wnd(1000).Opts(header.TCPOptions{HasMSS: true, MSS: 1000}))
	a := c.Expect("ACK")
	if a.flags != ACK || a.ack != c.ISS+1 {
		t.Fatalf("third segment %v", a)
	}
	in := s.Info()
	if in.State != Established || in.MSS != 1000 || in.Options.Timestamps || in.SndWnd != 1000 {
		t.Fatalf("info %+v", in)
	}
}

// RFC 9293 §3.5 Figure 8: simultaneous open. Each side's SYN crosses;
// each answers SYN,ACK from SYN-RECEIVED, and the final ACK establishes.
func TestSimultaneousOpen(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s, _ := c.connect()
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS))
	sa := c.Expect("SYN,ACK from SYN-RECEIVED")
	if sa.flags != SYN|ACK || sa.seq != c.IRS || sa.ack != c.ISS+1 || s.State() != SynReceived {
		t.Fatalf("got %v in %v", sa, s.State())
	}
	// Our SYN,ACK crossing theirs: theirs is a duplicate of the SYN
	// (not acceptable), answered with an ACK.
	c.Send(c.Seg().Flags(SYN | ACK).Seq(c.ISS).Ack(c.IRS + 1))
	if a := c.Expect("ACK"); a.flags != ACK {
		t.Fatalf("got %v", a)
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
	if s.State() != Established {
		t.Fatalf("state %v, want ESTABLISHED", s.State())
	}
}

// RFC 6298 §5.5 and RFC 9293 §3.8.1: the SYN is retransmitted with the
// RTO doubling from 1 s (§2.1), tcp_syn_retries times, then ETIMEDOUT.
func TestSynRetransmitBackoffThenTimeout(t *testing.T) {
	c := newPeer(t, Config{})
	s, syn := c.connect()
	at := time.Duration(0)
	for i, d := 0, time.Second; i < DefaultSynRetries; i, d = i+1, d*2 {
		at += d
		r := c.ExpectAt(at, "SYN retransmission")
		if r.flags != SYN || r.seq != syn.seq {
			t.Fatalf("retransmission %d at %v: %v", i+1, at, r)
		}
	}
	at += 64 * time.Second
	c.clk.AdvanceTo(c.clk.Now().Add(at - c.now()))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("after %v: read %v, want ETIMEDOUT (state %v)", at, err, s.State())
	}
}

// RFC 9293 §3.10.7.3: an RST acknowledging our SYN refuses the
// connection (ECONNREFUSED); one that does not is ignored.
func TestSynSentRST(t *testing.T) {
	c := newPeer(t, Config{})
	s, syn := c.connect()
	c.Send(c.Seg().Flags(RST | ACK).Seq(0).Ack(syn.seq + 2))
	if s.State() != SynSent {
		t.Fatalf("RST with a bad ACK changed the state to %v", s.State())
	}
	c.ExpectNone("an RST is never answered with an RST")
	c.Send(c.Seg().Flags(RST | ACK).Seq(0).Ack(syn.seq + 1))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("read: %v, want ECONNREFUSED", err)
	}
}

// RFC 9293 §3.10.7.1: a segment to a port with no socket gets an RST,
// <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK> for a SYN.
func TestClosedPortAnswersRST(t *testing.T) {
	c := newPeer(t, Config{})
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS))
	r := c.Expect("RST")
	if r.flags != RST|ACK || r.seq != 0 || r.ack != c.ISS+1 {
		t.Fatalf("got %v", r)
	}
	c.Send(c.Seg().Flags(ACK).Seq(5).Ack(777))
	if r := c.Expect("RST"); r.flags != RST || r.seq != 777 {
		t.Fatalf("got %v", r)
	}
	c.Send(c.Seg().Flags(RST).Seq(5))
	c.ExpectNone("never an RST for an RST")
}

// RFC 9293 §3.8.1 for the SYN,ACK: retransmitted from 1 s doubling; after
// tcp_synack_retries the child is dropped and leaves the SYN queue.
func TestSynAckRetransmitThenDrop(t *testing.T) {
	c := newPeer(t, Config{})
	l := c.listen()
	defer l.Close()
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS))
	sa := c.Expect("SYN,ACK")
	at := time.Duration(0)
	for i, d := 0, time.Second; i < DefaultSynAckRetries; i, d = i+1, d*2 {
		at += d
		if r := c.ExpectAt(at, "SYN,ACK retransmission"); r.flags != SYN|ACK || r.seq != sa.seq {
			t.Fatalf("retransmission %d: %v", i+1, r)
		}
	}
	c.clk.Advance(64 * time.Second)
	c.ExpectNone("no RST for a dropped embryonic connection")
	l.mu.Lock()
	q := l.synQ
	l.mu.Unlock()
	if q != 0 || len(c.p.conns) != 0 {
		t.Fatalf("SYN queue %d, table %d after giving up", q, len(c.p.conns))
	}
	// A retransmitted SYN in SYN-RECEIVED gets the SYN,ACK again.
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 50))
	sa = c.Expect("SYN,ACK")
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 50))
	if r := c.Expect("SYN,ACK again"); r.seq != sa.seq {
		t.Fatalf("got %v", r)
	}
}

// The accept queue is bounded by the backlog; past it SYNs are dropped
// (ListenOverflows) and queued connections are still accepted.
func TestListenBacklog(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	l := c.listen() // backlog 4
	defer l.Close()
	for i := 0; i < 6; i++ {
		c.raddr = netip.AddrPortFrom(remoteAddr, uint16(41000+i))
		c.Send(c.Seg().Flags(SYN).Seq(c.ISS))
		out := c.Out()
		if i >= 4 {
			if len(out) != 0 {
				t.Fatalf("SYN %d past the backlog answered: %v", i, out)
			}
			continue
		}
		c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(out[0].seq + 1))
	}
	if c.p.Counter(ListenOverflows) != 2 {
		t.Fatalf("ListenOverflows %d, want 2", c.p.Counter(ListenOverflows))
	}
	for i := 0; i < 4; i++ {
		if _, err := l.Accept(time.Time{}); err != nil {
			t.Fatalf("accept %d: %v", i, err)
		}
	}
	if _, err := l.Accept(time.Time{}); err != syscall.EAGAIN {
		t.Fatalf("empty queue: %v", err)
	}
}

// RFC 6298 §5: data is retransmitted after the RTO (200 ms floor, like
// Linux), doubling each time (§5.5); after tcp_retries2 the connection
// ends with ETIMEDOUT and an RST.
func TestRTOBackoffTiming(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, Retries2: 4})
	s := c.establishPassive(header.TCPOptions{})
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	d := c.Expect("data")
	if string(d.data) != "hello" || d.seq != c.IRS+1 {
		t.Fatalf("got %v", d)
	}
	at := c.now()
	for i, rto := 0, MinRTO; i < 4; i, rto = i+1, rto*2 {
		at += rto
		r := c.ExpectAt(at, "retransmission")
		if r.seq != d.seq || string(r.data) != "hello" {
			t.Fatalf("retransmission %d: %v", i, r)
		}
		if got := s.Info().Backoff; got != i+1 {
			t.Fatalf("backoff %d, want %d", got, i+1)
		}
	}
	at += 16 * MinRTO
	r := c.ExpectAt(at, "RST on giving up")
	if r.flags&RST == 0 {
		t.Fatalf("got %v", r)
	}
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("read: %v", err)
	}
}

// RFC 9293 §3.10.7.4: a segment is acceptable only at or beyond RCV.NXT,
// and an unacceptable one's ACK field is never read. After a timeout we
// resend from SND.UNA (go-back-N: SND.NXT back at SND.UNA) though the peer
// may have everything up to SND.MAX; our pure ACKs must then be numbered
// SND.MAX (BSD tcp_output, Linux tcp_acceptable_seq), or a peer that did
// the same to us and we would drop each other's ACKs for ever.
func TestPureACKAfterTimeoutCarriesSndMax(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, NoSACK: true})
	s := c.establishPassive(header.TCPOptions{HasMSS: true, MSS: 1000})
	s.Write(make([]byte, 3000))
	if out := c.Out(); len(out) != 3 {
		t.Fatalf("sent %v, want 3 segments", out) // the peer gets all and sends no ACK
	}
	sndMax := c.IRS + 1 + 3000
	r := c.ExpectAt(c.now()+MinRTO, "retransmission from SND.UNA")
	if r.seq != c.IRS+1 || len(r.data) != 1000 {
		t.Fatalf("retransmission %v", r)
	}
	// The peer's own data (its ACK field acknowledges nothing new):
	// we ACK it with a pure ACK the peer can accept.
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Data([]byte("x")))
	a := c.Expect("ACK of the peer's data")
	if len(a.data) != 0 || a.ack != c.ISS+2 || a.seq != sndMax {
		t.Fatalf("pure ACK %v, want seq SND.MAX %d", a, sndMax)
	}
}

// A retransmission resends what was sent, never more: the hole it is in,
// below SND.MAX. The last segments out were short (TCP_NODELAY writes)
// and more data waits behind a closed window; the peer SACKs the last
// one, and RACK resends the two before it. The second, 500 bytes when it
// was sent, once went out as a full MSS of bytes never sent (past
// SND.MAX and the peer's window): a peer that took them acknowledged
// past SND.MAX, an ACK dropped as acknowledging unsent data (RFC 9293
// §3.10.7.4), like every ACK after it — a relay's transfer to a pod
// stalled for good (TestTCPBackpressureToPod/gso in daemon/proxy).
func TestRetransmissionStaysBelowSndMax(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{HasMSS: true, MSS: 1000, SACKPermitted: true})
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(1600))
	s.SetNoDelay(true)
	s.Write(make([]byte, 1500)) // [1,1001) [1001,1501)
	s.Write(make([]byte, 100))  // [1501,1601): the window is full
	if out := c.Out(); len(out) != 3 {
		t.Fatalf("sent %v, want 3 segments", out)
	}
	s.Write(make([]byte, 3000))
	sndMax := c.IRS + 1601
	o := header.TCPOptions{NumSACK: 1}
	o.SACKBlocks[0] = header.SACKBlock{Start: c.IRS + 1501, End: sndMax}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(1600).Opts(o))
	c.clk.Advance(MinRTO / 4) // RACK's reordering window passes
	high := c.IRS + 1
	for _, r := range c.Out() {
		end := r.seq + uint32(len(r.data))
		if header.SeqGT(end, sndMax) {
			t.Errorf("retransmission %v ends at %d, past SND.MAX %d", r, end-c.IRS, sndMax-c.IRS)
		}
		if r.seq == c.IRS+1001 && len(r.data) != 500 {
			t.Errorf("the 500-byte segment resent as %d bytes: %v", len(r.data), r)
		}
		high = header.SeqMax(high, end)
	}
	// The peer has everything it was sent and acknowledges it all, as a
	// receiver with room to spare does even past the window it offered.
	high = header.SeqMax(high, sndMax)
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(high).Wnd(1600))
	if got, want := s.Info().BytesAcked, uint64(high-c.IRS-1); got != want {
		t.Fatalf("bytes acknowledged %d after the peer acknowledged %d", got, want)
	}
}

// RFC 6298 §5.3 and Karn's rule: an ACK of new data restarts the timer
// and clears the backoff.
func TestAckResetsBackoff(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.Write([]byte("ab"))
	c.Expect("data")
	c.ExpectAt(c.now()+MinRTO, "retransmission")
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 3))
	if in := s.Info(); in.Backoff != 0 || in.Unacked != 0 {
		t.Fatalf("after the ACK: %+v", in)
	}
	if c.clk.Pending() == 0 {
		return
	}
	c.clk.Advance(10 * time.Second)
	c.ExpectNone("no retransmission once everything is acknowledged")
}

// RFC 5961 §3.2: an RST whose sequence number is in the window but not
// RCV.NXT draws a challenge ACK and changes nothing; the exact one
// resets; one outside the window is dropped silently.
func TestChallengeACKForInexactRST(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	c.Send(c.Seg().Flags(RST).Seq(c.ISS + 1 + 100))
	a := c.Expect("challenge ACK")
	if a.flags != ACK || a.ack != c.ISS+1 || s.State() != Established {
		t.Fatalf("got %v in %v", a, s.State())
	}
	if c.p.Counter(TCPChallengeACK) != 1 {
		t.Fatal("TCPChallengeACK not counted")
	}
	c.Send(c.Seg().Flags(RST).Seq(c.ISS + 1 + 1<<30))
	c.ExpectNone("out-of-window RST")
	c.Send(c.Seg().Flags(RST).Seq(c.ISS + 1))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("exact RST: read %v, want ECONNRESET", err)
	}
	c.ExpectNone("no answer to the exact RST")
}

// RFC 5961 §4.2: a SYN on an established connection gets a challenge
// ACK, whatever its sequence number. RFC 5961 §7: challenge ACKs are
// rate limited.
func TestChallengeACKForSYNAndRateLimit(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 1))
	if a := c.Expect("challenge ACK"); a.flags != ACK || s.State() != Established {
		t.Fatalf("got %v in %v", a, s.State())
	}
	for i := 0; i < ChallengeACKLimit+10; i++ {
		c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 7))
	}
	if n := len(c.Out()); n != ChallengeACKLimit-1 {
		t.Fatalf("%d challenge ACKs in one second, want %d", n, ChallengeACKLimit-1)
	}
	if c.p.Counter(TCPChallengeACKLimited) == 0 {
		t.Fatal("TCPChallengeACKLimited not counted")
	}
}

// RFC 9293 §3.10.7.4 fifth and RFC 5961 §5.2: an ACK for data not yet
// sent is answered with an ACK and dropped; a segment without ACK is
// dropped.
func TestBadAcks(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1000).Data([]byte("x")))
	if a := c.Expect("ACK for the unsent-data ACK"); a.ack != c.ISS+1 {
		t.Fatalf("data of a segment with a bad ACK was accepted: %v", a)
	}
	c.Send(c.Seg().Flags(PSH).Seq(c.ISS + 1).Data([]byte("y")))
	c.ExpectNone("segment without ACK")
	if n, _ := s.Read(make([]byte, 4)); n != 0 {
		t.Fatalf("read %d bytes of dropped segments", n)
	}
}

// RFC 9293 §3.8.6.1: with the peer's window zero, the persist timer sends
// a one-byte probe, backing off; when the window opens, data flows.
func TestZeroWindowProbe(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(0))
	if _, err := s.Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	c.ExpectNone("nothing into a zero window")
	t0 := c.now()
	p1 := c.ExpectAt(t0+MinRTO, "first probe")
	if len(p1.data) != 1 || p1.seq != c.IRS+1 {
		t.Fatalf("probe %v", p1)
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(0))
	p2 := c.ExpectAt(t0+3*MinRTO, "second probe after backoff")
	if len(p2.data) != 1 {
		t.Fatalf("probe %v", p2)
	}
	if c.p.Counter(TCPWinProbe) != 2 {
		t.Fatalf("TCPWinProbe %d", c.p.Counter(TCPWinProbe))
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(100))
	d := c.Expect("data once the window opens")
	if string(d.data) != "0123456789" {
		t.Fatalf("got %v", d)
	}
}

// nextOut steps the clock to the next segments the stack sends (at most
// 100 timer deadlines) and returns them with the time they left.
func (c *peer) nextOut() ([]seg, time.Duration) {
	c.t.Helper()
	for k := 0; k < 100; k++ {
		if out := c.Out(); len(out) > 0 {
			return out, c.now()
		}
		if !c.clk.Step() {
			break
		}
	}
	return c.Out(), c.now()
}

// RFC 9293 §3.8.6.1 MUST-37: "As long as the receiving TCP peer
// continues to send acknowledgments in response to the probe segments,
// the sending TCP peer MUST allow the connection to stay open." Probes the
// peer answers (its window still zero) do not count towards Retries2;
// probes it leaves unanswered do, and Retries2 of them in a row end the
// connection. A socket the user closed gives up after Retries2 probes
// answered or not (Linux tcp_probe_timer for a dead socket).
func TestZeroWindowProbesWhileAnswered(t *testing.T) {
	const retries = 3
	for _, orphan := range []bool{false, true} {
		t.Run(map[bool]string{false: "open", true: "closed-by-user"}[orphan], func(t *testing.T) {
			c := newPeer(t, Config{NoTimestamps: true, Retries2: retries})
			s := c.establishPassive(header.TCPOptions{})
			c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(0))
			if _, err := s.Write([]byte("0123456789")); err != nil {
				t.Fatal(err)
			}
			if orphan {
				s.Close()
			}
			answered := 3 * retries
			if orphan {
				answered = retries
			}
			var last time.Duration
			for i := 0; i < answered; i++ {
				out, at := c.nextOut()
				if len(out) != 1 || len(out[0].data) != 1 || out[0].seq != c.IRS+1 {
					t.Fatalf("probe %d: %v (state %v)\n%s", i, out, s.State(), s.DebugString())
				}
				if i > 1 && at-last < MinRTO<<min(i-1, 9) {
					t.Fatalf("probe %d %v after the last: no backoff", i, at-last)
				}
				last = at
				// Still zero: the byte is not taken.
				c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(0))
			}
			if orphan {
				if out, _ := c.nextOut(); len(out) != 0 || s.State() != Closed || c.p.Counter(TCPAbortOnTimeout) != 1 {
					t.Fatalf("closed by the user, %d probes answered: want it ended, got %v (state %v, %v)",
						retries, out, s.State(), nonzero(c.p))
				}
				return
			}
			if st := s.State(); st != Established {
				t.Fatalf("after %d answered probes (Retries2 %d): %v", answered, retries, st)
			}
			// Now the peer falls silent: Retries2 unanswered probes,
			// then the connection times out.
			for i := 0; i < retries; i++ {
				if out, _ := c.nextOut(); len(out) != 1 || len(out[0].data) != 1 {
					t.Fatalf("unanswered probe %d: %v (state %v)", i, out, s.State())
				}
			}
			c.nextOut()
			if _, err := s.Write([]byte("x")); s.State() != Closed || !errors.Is(err, syscall.ETIMEDOUT) ||
				c.p.Counter(TCPFastRetrans) != 0 || c.p.Counter(RetransSegs) != 0 {
				t.Fatalf("after %d unanswered probes: state %v, write %v, %v", retries, s.State(), err, nonzero(c.p))
			}
		})
	}
}

// RFC 9293 §3.10.7.4: our window closes when the reader does not read,
// a segment beyond it is dropped with an ACK, and reading reopens it
// with a window update (receiver SWS avoidance, §3.8.6.2.2).
func TestReceiveWindowClosesAndReopens(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, NoWindowScaling: true, RcvBuf: 4096})
	s := c.establishPassive(header.TCPOptions{})
	data := make([]byte, 1000)
	seq := c.ISS + 1
	for i := 0; i < 5; i++ {
		c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data(data))
		seq += 1000
	}
	var last seg
	for _, o := range c.Out() {
		last = o
	}
	c.clk.Advance(time.Second)
	for _, o := range c.Out() {
		last = o
	}
	if last.ack != c.ISS+1+4096 || last.wnd != 0 {
		t.Fatalf("last ACK %v, want ack %d wnd 0", last, c.ISS+1+4096)
	}
	buf := make([]byte, 4096)
	if n, _ := s.Read(buf); n != 4096 {
		t.Fatalf("read %d", n)
	}
	u := c.Expect("window update")
	if u.wnd != 4096 {
		t.Fatalf("window update %v", u)
	}
}

// RFC 9293 §3.8.6.3 (MUST-58, SHOULD-40): after the quick-ACK start, a
// lone segment is ACKed after the delayed-ACK timeout, two full-sized
// segments at once.
func TestDelayedACK(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{HasMSS: true, MSS: 1000})
	seq := c.ISS + 1
	for i := 0; i < quickAcks; i++ {
		c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data([]byte("q")))
		seq++
		c.Expect("quick ACK")
	}
	c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data([]byte("d")))
	seq++
	a := c.ExpectAt(c.now()+delAckTimeout, "delayed ACK")
	if a.ack != seq {
		t.Fatalf("got %v", a)
	}
	full := make([]byte, 1000)
	c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data(full))
	c.ExpectNone("first full segment waits")
	c.Send(c.Seg().Flags(ACK).Seq(seq + 1000).Ack(c.IRS + 1).Data(full))
	if a := c.Expect("ACK of the second full segment"); a.ack != seq+2000 {
		t.Fatalf("got %v", a)
	}
	_ = s
}

// RFC 9293 §3.7.4 (Nagle, MUST-17): a small segment waits while data is
// unacknowledged, unless TCP_NODELAY.
func TestNagleAndNoDelay(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.Write([]byte("a"))
	c.Expect("first small segment")
	s.Write([]byte("b"))
	c.ExpectNone("Nagle holds the second")
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 2))
	if d := c.Expect("released by the ACK"); string(d.data) != "b" {
		t.Fatalf("got %v", d)
	}
	s.SetNoDelay(true)
	s.Write([]byte("c"))
	if d := c.Expect("no delay"); string(d.data) != "c" {
		t.Fatalf("got %v", d)
	}
}

// RFC 9293 §3.10.4 and §3.10.7.4: active close through FIN-WAIT-1,
// FIN-WAIT-2 and TIME-WAIT; a retransmitted FIN in TIME-WAIT is ACKed
// again and restarts the 2 MSL timer; then the connection is gone.
func TestActiveCloseTimeWait(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, TimeWait: 60 * time.Second})
	s := c.establishPassive(header.TCPOptions{})
	s.Close()
	f := c.Expect("FIN")
	if f.flags != FIN|ACK|PSH && f.flags != FIN|ACK || s.State() != FinWait1 {
		t.Fatalf("got %v in %v", f, s.State())
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 2))
	if s.State() != FinWait2 {
		t.Fatalf("state %v", s.State())
	}
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2))
	if a := c.Expect("ACK of FIN"); a.ack != c.ISS+2 || s.State() != TimeWait {
		t.Fatalf("got %v in %v", a, s.State())
	}
	c.clk.Advance(30 * time.Second)
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2))
	c.Expect("ACK of the retransmitted FIN")
	c.clk.Advance(59 * time.Second)
	if s.State() != TimeWait {
		t.Fatalf("TIME-WAIT ended early: %v", s.State())
	}
	c.clk.Advance(2 * time.Second)
	if s.State() != Closed || len(c.p.conns) != 0 {
		t.Fatalf("after 2 MSL: %v, %d connections", s.State(), len(c.p.conns))
	}
}

// RFC 9293 §3.6 simultaneous close: FIN-WAIT-1 → CLOSING → TIME-WAIT.
func TestSimultaneousClose(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.Shutdown(false, true)
	c.Expect("FIN")
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
	c.Expect("ACK")
	if s.State() != Closing {
		t.Fatalf("state %v, want CLOSING", s.State())
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 2).Ack(c.IRS + 2))
	if s.State() != TimeWait {
		t.Fatalf("state %v, want TIME-WAIT", s.State())
	}
}

// Passive close: FIN from the peer → CLOSE-WAIT, EOF for the reader;
// the writer may go on (half-close), then LAST-ACK → CLOSED.
func TestPassiveCloseHalfClose(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
	c.Expect("ACK of FIN")
	if _, err := s.Read(make([]byte, 1)); err != io.EOF || s.State() != CloseWait {
		t.Fatalf("read %v in %v", err, s.State())
	}
	if _, err := s.Write([]byte("late")); err != nil {
		t.Fatalf("write in CLOSE-WAIT: %v", err)
	}
	if d := c.Expect("data after the peer's FIN"); string(d.data) != "late" {
		t.Fatalf("got %v", d)
	}
	s.Close()
	f := c.Expect("FIN")
	if f.flags&FIN == 0 || s.State() != LastAck {
		t.Fatalf("got %v in %v", f, s.State())
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 2).Ack(f.seq + 1))
	if s.State() != Closed {
		t.Fatalf("state %v", s.State())
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("write after close")
	}
}

// RFC 2525 §2.17 / Linux tcp_close: closing with unread data sends RST.
// Linger 0 aborts the same way.
func TestCloseWithUnreadDataResets(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	c.Send(c.Seg().Flags(ACK | PSH).Seq(c.ISS + 1).Ack(c.IRS + 1).Data([]byte("unread")))
	c.Out()
	s.Close()
	if r := c.Expect("RST"); r.flags&RST == 0 {
		t.Fatalf("got %v", r)
	}
	if c.p.Counter(TCPAbortOnClose) != 1 || s.State() != Closed {
		t.Fatal("abort not counted or not closed")
	}
}

// Closing while data arrives later: data for a closed socket is answered
// with RST (Linux, RFC 2525 §2.17).
func TestDataAfterCloseResets(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.Close()
	c.Expect("FIN")
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 2).Data([]byte("too late")))
	if r := c.Expect("RST"); r.flags&RST == 0 {
		t.Fatalf("got %v", r)
	}
}

// RFC 7323 §5.3: PAWS drops a segment whose TSval is older than TS.Recent
// and ACKs it.
func TestPAWS(t *testing.T) {
	c := newPeer(t, Config{})
	s := c.establishPassive(header.TCPOptions{HasTS: true, TSVal: 1000})
	ts := func(v uint32) header.TCPOptions { return header.TCPOptions{HasTS: true, TSVal: v} }
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Data([]byte("new")).Opts(ts(2000)))
	c.Out()
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 4).Ack(c.IRS + 1).Data([]byte("old")).Opts(ts(1500)))
	c.Expect("ACK for the PAWS drop")
	b := make([]byte, 10)
	if n, _ := s.Read(b); string(b[:n]) != "new" {
		t.Fatalf("read %q", b[:n])
	}
	if c.p.Counter(PAWSEstab) != 1 {
		t.Fatal("PAWSEstab not counted")
	}
}

// Bad input is dropped and counted: checksum errors, SYN+FIN.
func TestBadSegmentsDropped(t *testing.T) {
	c := newPeer(t, Config{})
	l := c.listen()
	defer l.Close()
	m := c.Seg().Flags(SYN).Seq(c.ISS)
	m.badCsum = true
	c.Send(m)
	c.ExpectNone("bad checksum")
	if c.p.Counter(InCsumErrors) != 1 {
		t.Fatal("InCsumErrors not counted")
	}
	c.Send(c.Seg().Flags(SYN | FIN).Seq(c.ISS))
	c.ExpectNone("SYN+FIN")
	if c.p.Counter(InErrs) != 2 {
		t.Fatalf("InErrs %d", c.p.Counter(InErrs))
	}
}

// The send buffer bounds Write: non-blocking writes return EAGAIN when it
// is full, blocking ones wait and honour the write deadline.
func TestSendBufferLimitAndDeadline(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true, SndBuf: MinBuf})
	s := c.establishPassive(header.TCPOptions{})
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Wnd(0))
	n, err := s.Write(make([]byte, 3*MinBuf))
	if n != MinBuf || err != syscall.EAGAIN && err != nil {
		t.Fatalf("non-blocking write: %d, %v", n, err)
	}
	if _, err := s.Write([]byte("x")); err != syscall.EAGAIN {
		t.Fatalf("full buffer: %v", err)
	}
	s.SetNonblock(false)
	s.SetWriteDeadline(c.clk.Now().Add(5 * time.Second))
	done := make(chan error, 1)
	go func() {
		_, err := s.Write([]byte("blocked"))
		done <- err
	}()
	waitBlocked(t, s)
	c.clk.Advance(5 * time.Second)
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked write: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("write deadline did not fire")
	}
}

// waitBlocked waits (wall time, bounded) until a goroutine blocks on s.
func waitBlocked(t *testing.T, s *Sock) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if !s.dlTimer.Deadline().IsZero() {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("nobody blocked")
}

// A blocking read honours its deadline on the stack's clock.
func TestReadDeadline(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.SetNonblock(false)
	s.SetReadDeadline(c.clk.Now().Add(time.Second))
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 1))
		done <- err
	}()
	waitBlocked(t, s)
	c.clk.Advance(time.Second)
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v", err)
	}
}

// Out-of-window segments are answered with an ACK (RFC 9293 §3.10.7.4),
// at most one per 500 ms for segments without data (Linux
// tcp_invalid_ratelimit, tcp_oow_rate_limited) against ACK storms.
func TestOutOfWindowACKRateLimit(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	c.establishPassive(header.TCPOptions{})
	for i := 0; i < 5; i++ {
		c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1 + 1<<30).Ack(c.IRS + 1))
	}
	c.Expect("one ACK for five out-of-window ACKs")
	c.clk.Advance(time.Second)
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1 + 1<<30).Ack(c.IRS + 1))
	c.Expect("an ACK again after the interval")
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1 + 1<<30).Ack(c.IRS + 1).Data([]byte("x")))
	c.Expect("segments with data are not rate limited")
	if c.p.Counter(TCPACKSkippedSeq) != 4 {
		t.Fatalf("TCPACKSkippedSeq %d", c.p.Counter(TCPACKSkippedSeq))
	}
}

func TestCounterNames(t *testing.T) {
	seen := map[string]bool{}
	for c := counter(0); c < numCounters; c++ {
		n := c.String()
		if n == "" || seen[n] {
			t.Fatalf("counter %d: name %q", c, n)
		}
		seen[n] = true
	}
}

// A lost FIN is retransmitted by the RTO like data (RFC 9293 §3.10.4:
// the FIN occupies sequence space), alone or with the last data.
func TestFINRetransmission(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.Write([]byte("bye"))
	s.Close()
	out := c.Out()
	if len(out) == 0 {
		t.Fatal("nothing sent")
	}
	last := out[len(out)-1]
	if last.flags&FIN == 0 {
		t.Fatalf("no FIN: %v", out)
	}
	r := c.ExpectAt(c.now()+MinRTO, "retransmission with FIN")
	if r.flags&FIN == 0 || string(r.data) != "bye" || r.seq != c.IRS+1 {
		t.Fatalf("got %v", r)
	}
	// The data is acknowledged but not the FIN: the FIN alone again.
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 4))
	r = c.ExpectAt(c.now()+MinRTO, "FIN alone")
	if r.flags&FIN == 0 || len(r.data) != 0 || r.seq != c.IRS+4 {
		t.Fatalf("got %v", r)
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 5))
	if s.State() != FinWait2 {
		t.Fatalf("state %v", s.State())
	}
	// FIN-WAIT-2 of a closed socket ends after tcp_fin_timeout.
	c.clk.Advance(DefaultFinTimeout + time.Second)
	if s.State() != Closed {
		t.Fatalf("state %v after the FIN-WAIT-2 timeout", s.State())
	}
}
