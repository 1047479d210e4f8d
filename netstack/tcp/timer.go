package tcp

import (
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/tcp/cc"
)

// Timers (tcp_timer.c). Each socket embeds four clock timers; none costs
// a goroutine. rtxTimer is the retransmission timer and, with nothing in
// flight and a zero window, the persist timer (ICSK_TIME_RETRANS /
// ICSK_TIME_PROBE0); delackTimer is the delayed ACK; kaTimer is keepalive,
// FIN-WAIT-2 and TIME-WAIT (as Linux's sk_timer); dlTimer wakes users
// blocked past a deadline. Every callback takes s.mu.

// backedOffRTO is the RTO doubled once per retransmission, capped
// (RFC 6298 §5.5).
func (s *Sock) backedOffRTO() time.Duration {
	d := s.rto
	for i := 0; i < s.backoff && d < MaxRTO; i++ {
		d *= 2
	}
	return min(d, MaxRTO)
}

// armRTO is RFC 6298 §5.1/§5.3: (re)start the timer to fire after RTO.
func (s *Sock) armRTO() {
	s.rtxMode = rtxRetrans
	s.rtxTimer.ResetAt(s.now().Add(s.backedOffRTO()))
}

// armProbe starts the persist timer (tcp_reset_xmit_timer(ICSK_TIME_PROBE0)).
func (s *Sock) armProbe() {
	s.rtxMode = rtxProbe
	s.rtxTimer.ResetAt(s.now().Add(s.backedOffRTO()))
}

// rttSample is RFC 6298 §2.2/§2.3: update SRTT, RTTVAR and RTO from one
// measurement, and clear the backoff (§5.7 keeps it until a new sample).
func (s *Sock) rttSample(r time.Duration) {
	if r <= 0 {
		r = time.Microsecond
	}
	if s.srtt == 0 {
		s.srtt, s.rttvar = r, r/2
	} else {
		d := s.srtt - r
		if d < 0 {
			d = -d
		}
		s.rttvar = (3*s.rttvar + d) / 4
		s.srtt = (7*s.srtt + r) / 8
	}
	if s.minRTT == 0 || r < s.minRTT {
		s.minRTT = r
	}
	// RTO = SRTT + max(G, K*RTTVAR) with K = 4; our clock granularity
	// G is 1 ms.
	s.rto = min(max(s.srtt+max(time.Millisecond, 4*s.rttvar), MinRTO), MaxRTO)
	s.cs.SRTT, s.cs.MinRTT = s.srtt, s.minRTT
}

// rtxFired is tcp_retransmit_timer / tcp_probe_timer.
func (s *Sock) rtxFired() {
	s.mu.Lock()
	defer s.unlockNotify()
	if s.rtxTimer.Armed() {
		return // re-armed after this expiry was taken
	}
	switch s.state {
	case Closed, Listen, TimeWait:
		return
	}
	if s.rtxMode == rtxProbe {
		s.probeTimer()
		return
	}
	if s.rtxMode == rtxTLP {
		s.tlpFired()
		return
	}

	if s.sndUna == s.sndMax && s.state != SynSent && s.state != SynReceived {
		return
	}
	limit := s.p.cfg.Retries2
	switch s.state {
	case SynSent:
		limit = s.p.cfg.SynRetries
	case SynReceived:
		limit = s.p.cfg.SynAckRetries
	}
	if s.backoff >= limit {
		// RFC 9293 §3.8.3 (R2): give up and report the timeout.
		s.p.count(TCPAbortOnTimeout)
		if s.state == SynSent {
			s.p.count(AttemptFails)
		}
		if s.state != SynReceived {
			s.sendReset()
		}
		// RFC 1122 §4.2.3.9: a soft ICMP error explains the timeout
		// (Linux reports sk_err_soft instead of ETIMEDOUT).
		var err error = syscall.ETIMEDOUT
		if s.softErr != nil {
			err = s.takeSoftErr()
		}
		s.done(err)
		return
	}
	s.p.count(TCPTimeouts)
	now := s.now()
	if s.state.synchronized() {
		// RFC 5681 §3.1 eq. 4 on a timeout, then cwnd = 1 (the loss
		// window); go back to SND.UNA and resend as the window opens
		// (Linux marks everything lost; RFC 6298 §5.4 resends the
		// earliest segment, which this does first).
		if !s.inRecovery || s.backoff == 0 {
			s.cs.Ssthresh = s.ca.SSThresh(&s.cs)
		}
		s.cs.Cwnd, s.cs.CwndCnt = 1, 0
		s.ca.OnEvent(&s.cs, cc.EventLoss, now)
		s.inRecovery, s.dupAcks = false, 0
		s.rttTiming = false
		s.tlpHigh, s.lostBelow = 0, 0
		s.sndNxt, s.highRxt = s.sndUna, s.sndUna
		// RFC 8985 §6.2 step 4: RTO recovery until SND.UNA passes
		// SND.MAX of now; reo_wnd is 0 in it while no reordering was
		// seen. A TLP episode ends with the timeout (Linux
		// tcp_retransmit_timer), the timeout being the response.
		if !s.rack.rtoRecovery {
			s.rack.rtoRecovery, s.rack.rtoRecover = true, s.sndMax
		}
		s.rack.tlpEpisode = false
		// RFC 8985 §6.3 RACK_mark_losses_on_RTO marks SND.UNA lost and
		// every segment sent RACK.rtt + reo_wnd ago; go-back-N resends
		// from SND.UNA what is not SACKed (RFC 6675 §5.1) in sequence
		// order, which is send order, so those go first. Deviation:
		// a segment sent within RACK.rtt + reo_wnd of the timeout is
		// not spared; the pass, cwnd growing from one, reaches it an
		// RTT or more later, when it is SACKed (skipped) or overdue.
		s.rackReset() // go-back-N: a new pass records new send times
	}
	s.backoff++ // RFC 6298 §5.5
	if !s.state.synchronized() {
		s.retransmitHead()
	} else {
		s.writeXmit()
		if s.rtxTimer.Armed() {
			return
		}
	}
	s.armRTO() // RFC 6298 §5.6
}

// wcDelAckT is RFC 8985 §7.2's worst-case delayed ACK time.
const wcDelAckT = 200 * time.Millisecond

// armRTOorPTO arms the tail loss probe (RFC 8985 §7.2) when it may be
// used — SACK negotiated, an RTT sample, not in recovery, no probe
// outstanding — and it would fire before the RTO; otherwise it keeps a
// running retransmission timer (RFC 6298 §5.1) or starts one.
func (s *Sock) armRTOorPTO() {
	if s.sackOK && s.srtt > 0 && !s.inRecovery && !s.rack.rtoRecovery && s.tlpHigh == 0 && !s.rack.tlpEpisode && s.backoff == 0 &&
		(s.state == Established || s.state == CloseWait) {
		// PTO = 2*SRTT, plus WCDelAckT when one segment is in flight
		// (its ACK may be delayed), never beyond the RTO.
		pto := 2 * s.srtt
		if s.inFlight() <= s.mss {
			pto += wcDelAckT
		}
		if pto < s.rto {
			s.rtxMode = rtxTLP
			s.rtxTimer.ResetAt(s.now().Add(pto))
			return
		}
	}
	if !s.rtxTimer.Armed() || s.rtxMode != rtxRetrans {
		s.armRTO()
	}
}

// tlpFired is RFC 8985 §7.3: send one segment of new data if the window
// allows, else retransmit the last segment; then the RTO takes over.
func (s *Sock) tlpFired() {
	if s.sndUna == s.sndMax || !s.canSendData() {
		return
	}
	s.p.count(TCPLossProbes)
	now := s.now()
	end := s.dataEnd()
	avail := int(int32(end - s.sndNxt))
	wndLeft := int(int32(s.sndUna + s.sndWnd - s.sndNxt))
	if avail > 0 && wndLeft > 0 && s.sndNxt == s.sndMax {
		n := min(avail, s.curMSS(), wndLeft)
		flags := header.ACK
		if s.sndNxt+uint32(n) == end {
			flags |= header.PSH
		}
		s.sendSeg(s.sndNxt, n, flags, now)
		s.tlpSent(false)
	} else {
		seq := s.sndUna
		if m := s.curMSS(); int(int32(end-s.sndUna)) > m {
			seq = end - uint32(m)
		}
		s.retransmitAt(seq)
		s.rack.probeSeq, s.rack.probeOK = seq, true
		s.tlpSent(true)
	}
	s.tlpHigh = s.sndMax
	s.armRTO()
}

// probeTimer is tcp_probe_timer / tcp_send_probe0: RFC 9293 §3.8.6.1
// zero-window probing. A probe carries one byte of new data beyond the
// window (MUST-36: probes MUST be sent while the window is zero, and the
// connection MUST stay open as long as the peer answers, MUST-37).
func (s *Sock) probeTimer() {
	avail := int(int32(s.dataEnd() - s.sndNxt))
	if s.sndNxt != s.sndUna || avail <= 0 {
		s.writeXmit()
		return
	}
	if s.sndWnd != 0 {
		// RFC 9293 §3.8.6.2.1 (d): the override timeout sends what the
		// window allows though it is smaller than SWS would like.
		n := min(avail, s.curMSS(), int(s.sndWnd))
		flags := header.ACK
		if n == avail {
			flags |= header.PSH
		}
		s.sendSeg(s.sndNxt, n, flags, s.now())
		s.armRTO()
		return
	}
	// MUST-37: "As long as the receiving TCP peer continues to send
	// acknowledgments in response to the probe segments, the sending
	// TCP peer MUST allow the connection to stay open": only Retries2
	// probes in a row that the peer left unanswered end it (Linux
	// tcp_probe_timer with icsk_probes_out). An orphan (closed by the
	// user) gives up after Retries2 probes answered or not, as Linux
	// does for a dead socket (by icsk_backoff), so a peer that never
	// opens its window cannot hold it forever.
	if s.probesOut >= s.p.cfg.Retries2 || s.orphan && s.backoff >= s.p.cfg.Retries2 {
		s.p.count(TCPAbortOnTimeout)
		s.done(syscall.ETIMEDOUT)
		return
	}
	s.p.count(TCPWinProbe)
	s.p.count(TCPPersistProbes)
	// The byte is sent but not counted in SND.NXT: if the peer accepts
	// it, its ACK moves SND.UNA (and SND.NXT) past it.
	_ = s.transmit(s.sndNxt, 1, header.ACK)
	if header.SeqGT(s.sndNxt+1, s.sndMax) {
		s.sndMax = s.sndNxt + 1
	}
	s.backoff++
	s.probesOut++
	s.armProbe()
}

// scheduleAck is tcp_event_data_recv + __tcp_ack_snd_check: RFC 9293
// §3.8.6.3 (MUST-58/SHOULD-40): ACK at least every second full-sized
// segment, otherwise within the delayed ACK timeout; at once during
// quick-ack at the start and when asked (out of order, FIN).
//
// The ACK due at once goes out at the end of the receive batch when the
// segment came in one (FlushBatch): one ACK per batch for a burst of
// in-order segments, carrying the window the reader left.
func (s *Sock) scheduleAck(now bool) {
	s.ackPending = true
	if now || s.quickAcks > 0 || s.unackedBytes >= 2*max(s.rcvMSS, s.mss) {
		if s.quickAcks > 0 {
			s.quickAcks--
		}
		if s.deferToBatch() {
			s.ackDeferred = true
			return
		}
		s.sendAck()
		return
	}
	if !s.delackTimer.Armed() {
		s.delackTimer.ResetAt(s.now().Add(delAckTimeout))
	}
}

// delackFired is tcp_delack_timer.
func (s *Sock) delackFired() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ackPending && s.state != Closed && s.state != Listen {
		s.p.count(DelayedACKs)
		s.sendAck()
	}
}

// kaFired is tcp_keepalive_timer: TIME-WAIT expiry, the FIN-WAIT-2
// timeout of a closed socket, and keepalive probes (RFC 9293 §3.8.4,
// RFC 1122 §4.2.3.6: off by default, idle at least two hours).
func (s *Sock) kaFired() {
	s.mu.Lock()
	defer s.unlockNotify()
	s.kaArmed = false
	switch s.state {
	case TimeWait:
		s.done(nil)
		return
	case FinWait2:
		if s.orphan {
			s.done(nil)
			return
		}
	}
	if !s.keepalive || !s.state.synchronized() || s.state == Closed {
		return
	}
	if s.sndMax != s.sndUna || s.dataEnd() != s.sndUna {
		// Data in flight: the retransmission timer watches the peer.
		s.kaReset(s.keepIdle)
		return
	}
	if s.keepProbes == 0 {
		// The peer was heard from since the timer was armed
		// (armKeepalive does not re-arm per segment): wait out the
		// rest of the idle time, as Linux's tcp_keepalive_timer does
		// with keepalive_time_elapsed.
		if idle := s.now().Sub(s.lastRcv); idle < s.keepIdle {
			s.kaReset(s.keepIdle - idle)
			return
		}
	}
	if s.keepProbes >= s.keepCnt {
		// RFC 1122 §4.2.3.6: a dead peer ends the connection; Linux
		// resets it (tcp_keepalive_timer).
		s.sendReset()
		s.done(syscall.ETIMEDOUT)
		return
	}
	// A keepalive is a segment with SEG.SEQ = SND.NXT-1 and no data
	// (RFC 1122 §4.2.3.6), which the peer must answer with an ACK.
	s.p.count(TCPKeepAlive)
	_ = s.transmit(s.sndNxt-1, 0, header.ACK)
	s.keepProbes++
	s.kaReset(s.keepIntvl)
}

// armKeepalive notes traffic from the peer: the idle time restarts. The
// timer is armed if it is not; a running one is left alone and, when it
// fires, waits out the rest of the idle time since lastRcv (kaFired), so
// a busy connection does not re-arm a timer per segment.
func (s *Sock) armKeepalive() {
	s.keepProbes = 0
	if s.keepalive && s.state.synchronized() && s.state != TimeWait {
		s.lastRcv = s.now()
		if !s.kaArmed {
			s.kaReset(s.keepIdle)
		}
	}
}

// kaReset arms the keepalive timer (also TIME-WAIT's and FIN-WAIT-2's)
// d from now; kaStop stops it.
func (s *Sock) kaReset(d time.Duration) {
	s.kaArmed = true
	s.kaTimer.ResetAt(s.now().Add(d))
}

func (s *Sock) kaStop() {
	s.kaArmed = false
	s.kaTimer.Stop()
}

// enterTimeWait is tcp_time_wait: RFC 9293 §3.10.7.4: stay 2 MSL so a
// lost final ACK can be repeated and old duplicates die out.
func (s *Sock) enterTimeWait() {
	// tcp_time_wait: past tcp_max_tw_buckets the socket closes without
	// waiting (inet_twsk_alloc fails: TCPTimeWaitOverflow). TIME-WAIT only
	// guards against old duplicates of this incarnation; a full table of
	// it would refuse new connections instead.
	if s.p.timeWait.Add(1) > int64(s.p.cfg.MaxTimeWait) {
		s.p.timeWait.Add(-1)
		s.p.count(TimeWaitOverflow)
		s.done(nil)
		return
	}
	s.setState(TimeWait)
	s.rtxTimer.Stop()
	s.delackTimer.Stop()
	s.rackTimer.Stop()
	s.rackRelease()
	s.sndBuf.release()
	s.kaReset(s.p.cfg.TimeWait)
	s.wake(EventReadable | EventWritable)
}

// deadlineFired wakes every waiter so each rechecks its deadline.
func (s *Sock) deadlineFired() {
	s.mu.Lock()
	s.cond.Broadcast()
	s.mu.Unlock()
}
