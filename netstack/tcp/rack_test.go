package tcp

import (
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// rackMSS is the MSS the scenario peer announces (no timestamps: all of
// it is data).
const rackMSS = 1000

// rackRTT is the path RTT the scenarios play: min_RTT and SRTT after the
// handshake, so RACK.reo_wnd = min_RTT/4 = 2.5 ms (RFC 8985 §6.2 step 4).
const rackRTT = 10 * time.Millisecond

// establishRACK opens a SACK connection whose one RTT sample (the
// SYN,ACK answered after rackRTT) is rackRTT.
func (c *peer) establishRACK() *Sock {
	c.t.Helper()
	l := c.listen()
	c.t.Cleanup(func() { l.Close() })
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Opts(header.TCPOptions{HasMSS: true, MSS: rackMSS, SACKPermitted: true}))
	c.IRS = c.Expect("SYN,ACK").seq
	c.clk.Advance(rackRTT)
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
	s, err := l.Accept(time.Time{})
	if err != nil {
		c.t.Fatalf("accept: %v", err)
	}
	s.SetNonblock(true)
	return s
}

// seg returns the sequence number of data segment i (from 0).
func (c *peer) segSeq(i int) uint32 { return c.IRS + 1 + uint32(i*rackMSS) }

// ackSACK acknowledges up to segment ack (exclusive) and SACKs segments
// [from, to).
func (c *peer) ackSACK(ack, from, to int) {
	c.t.Helper()
	o := header.TCPOptions{}
	if to > from {
		o.NumSACK = 1
		o.SACKBlocks[0] = header.SACKBlock{Start: c.segSeq(from), End: c.segSeq(to)}
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.segSeq(ack)).Opts(o))
}

// sendSegs writes n full segments and checks they all went out now.
func (c *peer) sendSegs(s *Sock, first, n int) {
	c.t.Helper()
	if _, err := s.Write(make([]byte, n*rackMSS)); err != nil {
		c.t.Fatal(err)
	}
	out := c.Out()
	if len(out) != n {
		c.t.Fatalf("want %d segments, got %v", n, out)
	}
	for i, o := range out {
		if o.seq != c.segSeq(first+i) || len(o.data) != rackMSS {
			c.t.Fatalf("segment %d: %v", first+i, o)
		}
	}
}

// RFC 8985 §6.2 step 5 and §6.3: a segment is lost when one sent after
// it was delivered RACK.rtt + RACK.reo_wnd ago. With one or two later
// segments SACKed (fewer than DupThresh: no fast retransmit by RFC 6675)
// the reordering timer retransmits it at send time + RACK.rtt +
// min_RTT/4, before the tail loss probe (2·SRTT) and the RTO.
func TestRACKDetectsLossByTime(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sacked int // segments SACKed above the lost one
	}{
		{"one SACKed", 1},
		{"two SACKed", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPeer(t, Config{NoTimestamps: true})
			s := c.establishRACK()
			t0 := c.now()
			n := 2 + tc.sacked
			c.sendSegs(s, 0, n) // segment 1 is lost
			// One RTT later: segment 0 acknowledged, the ones after
			// the hole SACKed, one ACK each (duplicates of the first).
			c.clk.Advance(rackRTT)
			c.ackSACK(1, 0, 0)
			for i := 2; i < n; i++ {
				c.ackSACK(1, 2, i+1)
			}
			c.ExpectNone("no fast retransmit below DupThresh")
			reo := rackRTT / 4
			r := c.ExpectAt(t0+rackRTT+reo, "RACK retransmission after RACK.rtt + reo_wnd")
			if r.seq != c.segSeq(1) || len(r.data) != rackMSS {
				t.Fatalf("retransmitted %v, want segment 1", r)
			}
			if got := c.p.Counter(RetransSegs); got != 1 {
				t.Fatalf("%d retransmissions, want 1: %v", got, nonzero(c.p))
			}
			if c.p.Counter(TCPLossProbes) != 0 || c.p.Counter(TCPTimeouts) != 0 {
				t.Fatalf("want neither probe nor timeout: %v", nonzero(c.p))
			}
			// The retransmission repairs the hole: everything ACKed.
			c.clk.Advance(rackRTT)
			c.ackSACK(n, 0, 0)
			if in := s.Info(); in.Unacked != 0 {
				t.Fatalf("unacked %d", in.Unacked)
			}
		})
	}
}

// RFC 8985 §6.2 steps 3–5: once reordering was seen (an original
// delivered below RACK.fack), DupThresh no longer marks losses: a
// segment overtaken by DupThresh or more later ones is given
// reo_wnd = min_RTT/4 and, arriving within it, is not retransmitted.
// Before any reordering was seen, the same SACKs are RFC 6675's fast
// retransmit at once (reo_wnd = 0 with DupThresh segments SACKed).
func TestRACKReorderingWithinReoWnd(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reordered bool // play a reordering first
		wantRetx  int
	}{
		{"no reordering seen: DupThresh", false, 1},
		{"reordering seen: reo_wnd", true, 0},
		{"reordering seen: lost after reo_wnd", true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPeer(t, Config{NoTimestamps: true})
			s := c.establishRACK()
			next := 0
			if tc.reordered {
				// Segment 1 arrives after 2 and 3, within reo_wnd.
				c.sendSegs(s, 0, 4)
				c.clk.Advance(rackRTT)
				c.ackSACK(1, 0, 0)
				c.ackSACK(1, 2, 3)
				c.ackSACK(1, 2, 4)
				c.clk.Advance(time.Millisecond)
				c.ackSACK(4, 0, 0)
				c.ExpectNone("a reordered segment inside reo_wnd is not retransmitted")
				if c.p.Counter(TCPSACKReorder) != 1 {
					t.Fatalf("reordering not detected (RFC 8985 §6.2 step 3): %v", nonzero(c.p))
				}
				c.Out()
				next = 4
			}
			// Segment next is overtaken by four later ones.
			c.sendSegs(s, next, 6)
			c.clk.Advance(rackRTT)
			for i := next + 1; i < next+5; i++ {
				c.ackSACK(next, next+1, i+1)
			}
			out := c.Out()
			if tc.reordered && tc.wantRetx > 0 {
				// Really lost: RACK marks it reo_wnd after
				// RACK.rtt (RFC 8985 §6.3), not before.
				if len(out) != 0 {
					t.Fatalf("retransmitted before reo_wnd: %v", out)
				}
				out = []seg{c.ExpectAt(c.now()+rackRTT/4, "retransmission after reo_wnd")}
			}
			if len(out) != tc.wantRetx {
				t.Fatalf("after 4 SACKed segments: %v, want %d retransmissions", out, tc.wantRetx)
			}
			if tc.wantRetx > 0 {
				if out[0].seq != c.segSeq(next) {
					t.Fatalf("retransmitted %v, want segment %d", out[0], next)
				}
				return
			}
			// It arrives 2 ms later, inside reo_wnd (2.5 ms): no
			// retransmission then or later.
			c.clk.Advance(2 * time.Millisecond)
			c.ackSACK(next+6, 0, 0)
			c.clk.Advance(time.Second)
			c.ExpectNone("nothing to retransmit")
			if got := c.p.Counter(RetransSegs); got != 0 {
				t.Fatalf("%d spurious retransmissions: %v", got, nonzero(c.p))
			}
		})
	}
}

// RFC 8985 §6.2 step 4: a D-SACK (RFC 2883) reporting a spurious
// retransmission widens reo_wnd by min_RTT/4 per round, so the next
// loss by time waits RACK.rtt + 2·min_RTT/4.
func TestRACKDSACKWidensReoWnd(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishRACK()
	// A spurious retransmission: segment 1 is retransmitted by time,
	// then the original arrives (cumulative ACK), then the copy (D-SACK).
	c.sendSegs(s, 0, 3)
	t0 := c.now()
	c.clk.Advance(rackRTT)
	c.ackSACK(1, 2, 3)
	c.ExpectAt(t0+rackRTT+rackRTT/4, "RACK retransmission")
	c.clk.Advance(time.Millisecond)
	c.ackSACK(3, 0, 0)
	c.clk.Advance(rackRTT)
	o := header.TCPOptions{NumSACK: 1}
	o.SACKBlocks[0] = header.SACKBlock{Start: c.segSeq(1), End: c.segSeq(2)}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.segSeq(3)).Opts(o))
	if c.p.Counter(TCPDSACKRecv) != 1 || c.p.Counter(TCPSACKReorder) != 1 {
		t.Fatalf("D-SACK of a retransmission not taken as reordering: %v", nonzero(c.p))
	}
	c.Out()
	// The next loss (segment 3; cwnd is 2 after the recovery):
	// detected after RACK.rtt + 2·min_RTT/4.
	c.sendSegs(s, 3, 2)
	t1 := c.now()
	c.clk.Advance(rackRTT)
	c.ackSACK(3, 4, 5)
	r := c.ExpectAt(t1+rackRTT+2*rackRTT/4, "RACK retransmission with a doubled reo_wnd")
	if r.seq != c.segSeq(3) {
		t.Fatalf("retransmitted %v, want segment 3", r)
	}
}

// RFC 8985 §6.2 step 3 compares with RACK.fack as earlier ACKs left it
// (Linux prior_fack): RFC 2018 §4 lists the newest block first, so one
// ACK may SACK a higher range before a lower one whose first report was
// lost with an ACK; that is not reordering. An original arriving below
// what an earlier ACK SACKed is.
func TestRACKReorderingAcrossACKsOnly(t *testing.T) {
	for _, tc := range []struct {
		name    string
		acks    func(c *peer)
		reorder uint64
	}{
		{"lower block listed second", func(c *peer) {
			c.sackBlocks(1, [2]int{4, 5}, [2]int{2, 3})
		}, 0},
		{"lower block in a later ACK", func(c *peer) {
			c.sackBlocks(1, [2]int{4, 5})
			c.sackBlocks(1, [2]int{2, 3}, [2]int{4, 5})
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPeer(t, Config{NoTimestamps: true})
			s := c.establishRACK()
			c.sendSegs(s, 0, 6) // 1 and 3 missing
			c.clk.Advance(rackRTT)
			c.ackSACK(1, 0, 0)
			tc.acks(c)
			if got := c.p.Counter(TCPSACKReorder); got != tc.reorder {
				t.Fatalf("TCPSACKReorder %d, want %d", got, tc.reorder)
			}
		})
	}
}
