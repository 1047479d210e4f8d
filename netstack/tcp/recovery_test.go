package tcp

import (
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// dropOnce loses the first transmission of the data segments whose
// offsets (from the first data byte) are listed.
func dropOnce(w *wire, offsets ...uint32) *int {
	var base uint32
	var haveBase bool
	lost := 0
	seen := map[uint32]bool{}
	drop := map[uint32]bool{}
	for _, o := range offsets {
		drop[o] = true
	}
	w.filter = func(dir int, s seg) bool {
		if dir != 0 || len(s.data) == 0 {
			return true
		}
		if !haveBase {
			base, haveBase = s.seq, true
		}
		off := s.seq - base
		if drop[off] && !seen[off] {
			seen[off] = true
			lost++
			return false
		}
		return true
	}
	return &lost
}

// RFC 2018 + RFC 6675: with SACK only the lost segments are
// retransmitted, each once, and no timeout is needed.
func TestSACKRetransmitsOnlyLostSegments(t *testing.T) {
	w := newWire(t, wireCfg{delay: 5 * time.Millisecond}, Config{NoTimestamps: true})
	mss := uint32(1460)
	lost := dropOnce(w, 20*mss, 40*mss, 41*mss, 90*mss, 300*mss)
	transfer(t, w, 1<<20, false)
	if *lost != 5 {
		t.Fatalf("dropped %d segments, want 5", *lost)
	}
	if got := w.a.Counter(RetransSegs); got != 5 {
		t.Fatalf("%d retransmissions for 5 lost segments (SACK): %v", got, nonzero(w.a))
	}
	if w.a.Counter(TCPTimeouts) != 0 || w.a.Counter(TCPSACKRecovery) == 0 {
		t.Fatalf("want SACK recovery without timeouts: %v", nonzero(w.a))
	}
}

// RFC 6582: without SACK, NewReno repairs one hole per RTT with partial
// ACKs, still without a timeout, for a few losses in one window.
func TestNewRenoPartialAcks(t *testing.T) {
	w := newWire(t, wireCfg{delay: 5 * time.Millisecond}, Config{NoTimestamps: true, NoSACK: true})
	mss := uint32(1460)
	lost := dropOnce(w, 20*mss, 40*mss, 41*mss)
	transfer(t, w, 1<<20, false)
	if *lost != 3 {
		t.Fatalf("dropped %d", *lost)
	}
	if w.a.Counter(TCPTimeouts) != 0 || w.a.Counter(TCPLossRecovery) != 1 {
		t.Fatalf("want one NewReno recovery, no timeout: %v", nonzero(w.a))
	}
	if got := w.a.Counter(RetransSegs); got != 3 {
		t.Fatalf("%d retransmissions for 3 losses: %v", got, nonzero(w.a))
	}
}

// Window scaling lets more than 64 KiB be in flight (RFC 7323 §2): the
// receiver's 1 MiB buffer is advertised with a shift and used.
func TestWindowScalingFillsLargeWindow(t *testing.T) {
	w := newWire(t, wireCfg{delay: 20 * time.Millisecond}, Config{})
	c, s := w.connect()
	if in := c.Info(); in.SndWscale == 0 || in.RcvWscale == 0 {
		t.Fatalf("window scale not negotiated: %+v", in)
	}
	big := make([]byte, 900<<10)
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	// After a few RTTs of slow start, more than 64 KiB is in flight.
	maxFlight := 0
	w.run(2*time.Second, func() bool {
		if f := c.Info().Unacked; f > maxFlight {
			maxFlight = f
		}
		s.Read(make([]byte, 1<<20))
		return c.Info().Unacked == 0 && c.Info().NotSent == 0
	})
	if maxFlight <= 65535 {
		t.Fatalf("at most %d bytes in flight: window scaling unused", maxFlight)
	}
	_ = header.TCPMaxWScale
}

// RFC 8985 §7: a loss of the last segment is repaired by the tail loss
// probe after about two RTTs instead of waiting for the RTO. With one
// segment after the lost one, its SACK lets RACK (§6.3, RACK.rtt +
// reo_wnd) find the loss before the probe is due.
func TestTailLossProbe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lost   []uint32
		byRACK bool
	}{
		{"last segment", []uint32{99}, false},
		{"second to last", []uint32{98}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWire(t, wireCfg{delay: 10 * time.Millisecond}, Config{NoTimestamps: true})
			mss := uint32(1460)
			var offs []uint32
			for _, l := range tc.lost {
				offs = append(offs, l*mss)
			}
			dropOnce(w, offs...)
			c, s := w.connect()
			// Warm up the RTT estimate, then send 100 segments at once.
			start := w.clk.Now()
			data := make([]byte, 100*1460)
			c.Write(data)
			got := 0
			w.run(10*time.Second, func() bool {
				n, _ := s.Read(make([]byte, len(data)))
				got += n
				return got == len(data)
			})
			el := w.clk.Now().Sub(start)
			if tc.byRACK {
				if w.a.Counter(TCPTimeouts) != 0 || w.a.Counter(TCPLossProbes) != 0 || w.a.Counter(TCPSACKRecovery) != 1 {
					t.Fatalf("want RACK recovery, no probe, no timeout: %v", nonzero(w.a))
				}
			} else if w.a.Counter(TCPTimeouts) != 0 || w.a.Counter(TCPLossProbes) == 0 {
				t.Fatalf("want a loss probe and no timeout: %v", nonzero(w.a))
			}
			if el >= MinRTO {
				t.Fatalf("took %v: no faster than the RTO", el)
			}
			t.Logf("recovered in %v: %v", el, nonzero(w.a))
		})
	}
}

// Receive buffer auto-tuning (tcp_rcv_space_adjust): on a path whose
// bandwidth-delay product exceeds the initial buffer, the buffer grows
// with the reader's pace and the transfer finishes much sooner than with
// the buffer fixed (as SetBuffers does). The sender's 1 MiB send buffer
// bounds what one RTT can carry, so the buffer settles near 2 MiB.
func TestReceiveBufferAutotuning(t *testing.T) {
	run := func(fixed bool) (time.Duration, int) {
		w := newWire(t, wireCfg{delay: 25 * time.Millisecond, rate: 100e6, queue: 4096}, Config{})
		c, s := w.connect()
		if fixed {
			s.mu.Lock()
			s.rcvAutoOff = true
			s.mu.Unlock()
		}
		size := 32 << 20
		start := w.clk.Now()
		sent, got := 0, 0
		buf := make([]byte, 1<<20)
		w.run(time.Hour, func() bool {
			if sent < size {
				n, _ := c.Write(buf[:min(len(buf), size-sent)])
				sent += n
			}
			for {
				n, _ := s.Read(buf)
				got += n
				if n == 0 {
					break
				}
			}
			return got == size
		})
		s.mu.Lock()
		defer s.mu.Unlock()
		return w.clk.Now().Sub(start), s.rcvBufLimit
	}
	tFixed, bFixed := run(true)
	tAuto, bAuto := run(false)
	t.Logf("fixed %d KiB: %v; autotuned to %d KiB: %v", bFixed>>10, tFixed, bAuto>>10, tAuto)
	if bAuto <= 2*DefaultRcvBuf || tAuto*2 > tFixed {
		t.Fatalf("auto-tuning did not help: fixed %v, auto %v (buffer %d)", tFixed, tAuto, bAuto)
	}
}

// A retransmission lost in recovery is sent again once DupThresh
// segments sent after it are SACKed (Linux tcp_mark_lost_retrans), not
// after an RTO.
func TestLostRetransmission(t *testing.T) {
	w := newWire(t, wireCfg{delay: 5 * time.Millisecond}, Config{NoTimestamps: true})
	var base uint32
	var haveBase bool
	drops := 0
	w.filter = func(dir int, s seg) bool {
		if dir != 0 || len(s.data) == 0 {
			return true
		}
		if !haveBase {
			base, haveBase = s.seq, true
		}
		if s.seq-base == 50*1460 && drops < 2 { // the original and the first retransmission
			drops++
			return false
		}
		return true
	}
	transfer(t, w, 2<<20, false)
	if drops != 2 {
		t.Fatalf("dropped %d", drops)
	}
	if w.a.Counter(TCPTimeouts) != 0 || w.a.Counter(TCPLostRetransmit) == 0 {
		t.Fatalf("want the lost retransmission detected without a timeout: %v", nonzero(w.a))
	}
}

// sackBlocks acknowledges up to segment ack (exclusive) with the SACK
// blocks given as segment ranges [from, to), first block first.
func (c *peer) sackBlocks(ack int, blocks ...[2]int) {
	c.t.Helper()
	o := header.TCPOptions{NumSACK: len(blocks)}
	for i, b := range blocks {
		o.SACKBlocks[i] = header.SACKBlock{Start: c.segSeq(b[0]), End: c.segSeq(b[1])}
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.segSeq(ack)).Opts(o))
}

// countSent tallies the data segments sent, by segment index.
func (c *peer) countSent(n map[int]int) {
	for _, o := range c.Out() {
		if len(o.data) > 0 {
			n[int(o.seq-c.segSeq(0))/rackMSS]++
		}
	}
}

// RFC 6675 §5 with RFC 8985 §6.2: in SACK recovery, a partial ACK that
// leaves nothing SACKed is not RFC 6582's partial acknowledgment: the
// segment now at SND.UNA, sent before the retransmission that was just
// delivered but in the same burst as the highest SACKed segment, is
// not lost by RACK, so it is neither retransmitted nor is cwnd
// deflated. (Segments 4–9 are late, not lost, and arrive after.)
func TestSACKPartialAckIsNotNewReno(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishRACK()
	c.sendSegs(s, 0, 10) // segment 0 is lost
	c.clk.Advance(rackRTT)
	for k := 2; k <= 4; k++ {
		c.ackSACK(0, 1, k)
	}
	if r := c.Expect("fast retransmit"); r.seq != c.segSeq(0) {
		t.Fatalf("retransmitted %v, want segment 0", r)
	}
	_, cwnd, ss := tlpState(s)
	c.clk.Advance(rackRTT)
	c.ackSACK(4, 0, 0) // the retransmission arrived; 4–9 are late
	c.ExpectNone("no retransmission on a partial ACK with nothing SACKed")
	if _, cwnd1, _ := tlpState(s); cwnd1 != cwnd || cwnd != ss {
		t.Fatalf("partial ACK deflated cwnd %d → %d (ssthresh %d)", cwnd, cwnd1, ss)
	}
	c.clk.Advance(time.Millisecond)
	c.ackSACK(10, 0, 0)
	if in := s.Info(); in.Unacked != 0 || in.InRecovery {
		t.Fatalf("after the full ACK: %+v", in)
	}
	if got := c.p.Counter(RetransSegs); got != 1 {
		t.Fatalf("%d retransmissions for one loss: %v", got, nonzero(c.p))
	}
}

// RFC 6675 §5 with RFC 8985: losses in consecutive windows make
// back-to-back recoveries (a hole of the next window is found lost
// while the first recovery still runs, and retransmitted in it). Each
// lost segment is retransmitted once: the scoreboard and HighRxt
// survive the end of a recovery, so the next one neither takes
// forgotten SACKed data for holes nor resends a retransmission still in
// flight, and no D-SACK ever reports a spurious retransmission.
func TestBackToBackRecoveriesRetransmitOnce(t *testing.T) {
	mss := uint32(1460)
	for _, tc := range []struct {
		name string
		lost []uint32 // segment numbers, first transmission lost
	}{
		{"two windows", []uint32{20, 36, 53}},
		{"two windows, later", []uint32{20, 39, 54}},
		{"two windows, wider", []uint32{20, 42, 57}},
		{"three windows", []uint32{20, 36, 53, 90, 95, 170}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWire(t, wireCfg{delay: 5 * time.Millisecond}, Config{NoTimestamps: true})
			var offs []uint32
			for _, l := range tc.lost {
				offs = append(offs, l*mss)
			}
			lost := dropOnce(w, offs...)
			transfer(t, w, 1<<20, false)
			if *lost != len(tc.lost) {
				t.Fatalf("dropped %d", *lost)
			}
			if got := w.a.Counter(RetransSegs); got != uint64(len(tc.lost)) || w.a.Counter(TCPDSACKRecv) != 0 ||
				w.a.Counter(TCPTimeouts) != 0 {
				t.Fatalf("%d retransmissions for %d losses: %v", got, len(tc.lost), nonzero(w.a))
			}
		})
	}
}
