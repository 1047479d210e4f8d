package tcp

import (
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// dsackAck acknowledges up to segment ack (exclusive) with a D-SACK
// (RFC 2883) of segment dup, which arrived twice.
func (c *peer) dsackAck(ack, dup int) {
	c.t.Helper()
	o := header.TCPOptions{NumSACK: 1}
	o.SACKBlocks[0] = header.SACKBlock{Start: c.segSeq(dup), End: c.segSeq(dup + 1)}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.segSeq(ack)).Opts(o))
}

// tlpState is the socket's RFC 8985 §7.4.2 episode and window.
func tlpState(s *Sock) (episode bool, cwnd, ssthresh uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rack.tlpEpisode, s.cs.Cwnd, s.cs.Ssthresh
}

// RFC 8985 §7.4.2: a loss probe that retransmits the last segment opens
// a TLP episode. If the probe alone repaired a loss (an ACK beyond
// TLP.end_seq and no D-SACK for the probe), the sender reduces cwnd
// once; if the peer reports the probe as a duplicate (D-SACK: the
// original had arrived, only its ACK was late), or the probe carried
// new data, there was no loss to respond to.
func TestTLPEpisodeCongestionResponse(t *testing.T) {
	const noSsthresh = 1 << 30
	for _, tc := range []struct {
		name string
		// after the probe, one RTT later, the peer answers:
		answer func(c *peer)
		// with the probe ACKed, is the episode still waiting?
		waiting bool
		reduce  bool
	}{
		{
			// The original of segment 3 was lost: the probe's ACK
			// covers it without a D-SACK. Ambiguous at TLP.end_seq
			// (the ACK of the original looks the same), so the
			// episode waits for an ACK beyond it.
			name:    "probe repaired the tail loss",
			answer:  func(c *peer) { c.ackSACK(4, 0, 0) },
			waiting: true,
			reduce:  true,
		},
		{
			// Everything arrived but the ACKs were late: the ACK
			// of the originals, then the probe's with a D-SACK.
			name: "spurious probe (D-SACK)",
			answer: func(c *peer) {
				c.ackSACK(4, 0, 0)
				c.clk.Advance(time.Millisecond)
				c.dsackAck(4, 3)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPeer(t, Config{NoTimestamps: true})
			s := c.establishRACK()
			t0 := c.now()
			c.sendSegs(s, 0, 4)
			// No ACK within PTO = 2·SRTT (RFC 8985 §7.2: more than
			// one segment in flight, no delayed-ACK allowance): the
			// probe retransmits the last segment (§7.3).
			p := c.ExpectAt(t0+2*rackRTT, "loss probe")
			if p.seq != c.segSeq(3) || len(p.data) != rackMSS {
				t.Fatalf("probe %v, want segment 3 again", p)
			}
			if ep, _, _ := tlpState(s); !ep || c.p.Counter(TCPLossProbes) != 1 {
				t.Fatalf("no TLP episode after the probe: %v", nonzero(c.p))
			}
			c.clk.Advance(rackRTT)
			tc.answer(c)
			ep, cwnd0, ss := tlpState(s)
			if ep != tc.waiting || ss != noSsthresh {
				t.Fatalf("probe ACKed: episode %v (want %v), ssthresh %d", ep, tc.waiting, ss)
			}
			// New data; its ACK goes beyond TLP.end_seq.
			c.Out()
			c.sendSegs(s, 4, 2)
			c.clk.Advance(rackRTT)
			c.ackSACK(6, 0, 0)
			ep, cwnd1, ss1 := tlpState(s)
			if ep {
				t.Fatalf("episode still open after an ACK beyond TLP.end_seq")
			}
			if tc.reduce {
				// Once: ssthresh from the algorithm (CUBIC's
				// beta 0.7) and cwnd = ssthresh.
				if ss1 == noSsthresh || cwnd1 != ss1 || cwnd1 >= cwnd0 {
					t.Fatalf("no congestion response: cwnd %d → %d, ssthresh %d", cwnd0, cwnd1, ss1)
				}
			} else if ss1 != noSsthresh || cwnd1 < cwnd0 {
				t.Fatalf("spurious probe reduced cwnd %d → %d (ssthresh %d)", cwnd0, cwnd1, ss1)
			}
			// Exactly once: later ACKs leave ssthresh alone.
			for i := 6; i < 12; i += 2 {
				c.sendSegs(s, i, 2)
				c.clk.Advance(rackRTT)
				c.ackSACK(i+2, 0, 0)
			}
			if _, cwnd2, ss2 := tlpState(s); ss2 != ss1 || cwnd2 < cwnd1 {
				t.Fatalf("second response: cwnd %d → %d, ssthresh %d → %d", cwnd1, cwnd2, ss1, ss2)
			}
			if want := map[bool]uint64{true: 1}[tc.reduce]; c.p.Counter(TCPLossProbeRecovery) != want {
				t.Fatalf("TCPLossProbeRecovery = %d, want %d", c.p.Counter(TCPLossProbeRecovery), want)
			}
			if c.p.Counter(TCPTimeouts) != 0 || c.p.Counter(TCPFastRetrans) != 0 || c.p.Counter(RetransSegs) != 1 {
				t.Fatalf("want the probe as the only retransmission: %v", nonzero(c.p))
			}
		})
	}
}

// RFC 8985 §7.3/§7.4.2: a probe that carries new data (the window
// allows it) is not a retransmission: its ACK ends the episode with no
// congestion response, and the tail it was probing is repaired by RACK
// (§7.4.1) only if something below it is missing.
func TestTLPNewDataProbe(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishRACK()
	t0 := c.now()
	// Twelve segments queued, the initial window (10) sent.
	if _, err := s.Write(make([]byte, 12*rackMSS)); err != nil {
		t.Fatal(err)
	}
	if out := c.Out(); len(out) != 10 {
		t.Fatalf("want the initial window of 10 segments, got %d", len(out))
	}
	p := c.ExpectAt(t0+2*rackRTT, "loss probe")
	if p.seq != c.segSeq(10) {
		t.Fatalf("probe %v, want new segment 10", p)
	}
	c.clk.Advance(rackRTT)
	c.ackSACK(11, 0, 0)
	ep, _, ss := tlpState(s)
	if ep || ss != 1<<30 {
		t.Fatalf("after the new-data probe's ACK: episode %v, ssthresh %d", ep, ss)
	}
	if c.p.Counter(RetransSegs) != 0 {
		t.Fatalf("a new-data probe is no retransmission: %v", nonzero(c.p))
	}
}

// rackReoWndNow is RACK.reo_wnd as the socket would use it now.
func rackReoWndNow(s *Sock) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rackReoWnd(), s.rack.rtoRecovery
}

// RFC 8985 §6.2 step 4 and §6.3: after a timeout the sender is in RTO
// recovery until SND.UNA passes SND.MAX of the timeout. It resends from
// SND.UNA (§6.3 marks the first segment lost), and with no reordering
// seen reo_wnd is 0 in it, so a hole below a single SACKed segment is
// retransmitted as soon as RACK.rtt has passed — not min_RTT/4 later
// as outside recovery. Leaving RTO recovery restores reo_wnd.
func TestRACKRTORecovery(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishRACK()
	t0 := c.now()
	c.sendSegs(s, 0, 4)
	if reo, rto := rackReoWndNow(s); reo != rackRTT/4 || rto {
		t.Fatalf("before the timeout: reo_wnd %v, RTO recovery %v", reo, rto)
	}
	// Nothing comes back: the probe at 2·SRTT, then the RTO (200 ms
	// floor) from the probe.
	c.ExpectAt(t0+2*rackRTT, "loss probe")
	r := c.ExpectAt(t0+2*rackRTT+MinRTO, "timeout retransmission")
	if r.seq != c.segSeq(0) {
		t.Fatalf("RTO resent %v, want SND.UNA (segment 0)", r)
	}
	if reo, rto := rackReoWndNow(s); reo != 0 || !rto {
		t.Fatalf("in RTO recovery: reo_wnd %v (want 0), RTO recovery %v", reo, rto)
	}
	if ep, _, _ := tlpState(s); ep {
		t.Fatalf("the timeout did not end the TLP episode")
	}
	// Segment 0 arrives; cwnd 2 sends segments 1 and 2 again.
	c.clk.Advance(rackRTT)
	c.ackSACK(1, 0, 0)
	out := c.Out()
	if len(out) != 2 || out[0].seq != c.segSeq(1) || out[1].seq != c.segSeq(2) {
		t.Fatalf("go-back-N after the first ACK: %v", out)
	}
	// Segment 1 is lost again; segment 2, sent after it, is SACKed one
	// RTT later: with reo_wnd 0, RACK finds 1 lost at once.
	c.clk.Advance(rackRTT)
	c.ackSACK(1, 2, 3)
	out = c.Out()
	if len(out) == 0 || out[0].seq != c.segSeq(1) {
		t.Fatalf("RTO recovery: want segment 1 resent at once, got %v", out)
	}
	// Everything up to SND.MAX of the timeout acknowledged: RTO
	// recovery is over, reo_wnd is min_RTT/4 again.
	c.clk.Advance(rackRTT)
	c.ackSACK(4, 0, 0)
	if reo, rto := rackReoWndNow(s); reo != rackRTT/4 || rto {
		t.Fatalf("after RTO recovery: reo_wnd %v (want %v), RTO recovery %v", reo, rackRTT/4, rto)
	}
}

// RFC 9293 §3.8.6.1 (MUST-36) beside RFC 8985 §7.2: the receiver
// acknowledges everything in flight with a zero window while data is
// still queued (its reader is slow), and the window update it sends when
// the reader catches up is lost. Only the persist timer can find the
// window open again. The loss probe timer armed by the last send is
// still pending at that ACK; it must not stand in for the persist timer
// (with nothing in flight a loss probe has nothing to probe). The stack
// probes the window one RTO after the ACK, and when the probe's ACK
// shows the window open, the queued data goes out. The e2e stall of
// TestKernelTCPUnderLoss under CPU load (a starved kernel receiver) was
// this: the loss probe timer fired, did nothing, and no timer was left.
func TestZeroWindowAfterLossProbeArmed(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishRACK()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sender: %s", s.DebugString())
		}
	})
	// Twelve segments queued, the initial window (10) sent: the loss
	// probe timer is armed for 2·SRTT (RFC 8985 §7.2), before the RTO.
	if _, err := s.Write(make([]byte, 12*rackMSS)); err != nil {
		t.Fatal(err)
	}
	if out := c.Out(); len(out) != 10 {
		t.Fatalf("want the initial window of 10 segments, got %d", len(out))
	}
	c.clk.Advance(rackRTT / 2)
	if in := s.Info(); in.RTO <= 2*in.RTT {
		t.Fatalf("scenario: RTO %v not after the PTO (SRTT %v)", in.RTO, in.RTT)
	}
	// Everything acknowledged, the window zero; the update that would
	// reopen it is lost.
	tAck := c.now()
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.segSeq(10)).Wnd(0))
	c.ExpectNone("nothing into a zero window")
	rto := s.Info().RTO
	p := c.ExpectAt(tAck+rto, "zero-window probe one RTO after the ACK")
	if p.seq != c.segSeq(10) || len(p.data) != 1 {
		t.Fatalf("probe %v, want one byte at segment 10", p)
	}
	if c.p.Counter(TCPWinProbe) != 1 || c.p.Counter(TCPLossProbes) != 0 {
		t.Fatalf("want one window probe and no loss probe: %v", nonzero(c.p))
	}
	// The peer's window is open again: it takes the byte and says so.
	// The queued data follows (its 999-byte tail once the full segment
	// before it is acknowledged: Nagle, RFC 9293 §3.7.4).
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.segSeq(10) + 1).Wnd(65535))
	d := c.Expect("data once the window is open")
	if d.seq != c.segSeq(10)+1 || len(d.data) != rackMSS {
		t.Fatalf("after the window opened: %v, want %d bytes from segment 10 + 1", d, rackMSS)
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(d.seq + rackMSS).Wnd(65535))
	if d := c.Expect("the tail"); d.seq != c.segSeq(11)+1 || len(d.data) != rackMSS-1 {
		t.Fatalf("tail %v, want %d bytes from segment 11 + 1", d, rackMSS-1)
	}
}
