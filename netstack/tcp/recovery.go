package tcp

import (
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/tcp/cc"
)

// Loss recovery (tcp_input.c: tcp_fastretrans_alert). Without SACK:
// RFC 5681 §3.2 fast retransmit and RFC 6582 NewReno. With SACK: a
// conservative RFC 6675 recovery driven by a scoreboard of SACKed ranges.
//
// IsLost is RFC 6675 §4's: a hole is lost when DupThresh discontiguous
// SACKed ranges, or more than (DupThresh-1)·SMSS SACKed bytes, lie above
// it — or, after a tail loss probe was SACKed, when it lies below the
// probe (RFC 8985 §6.2: sent before a delivered segment). pipe =
// (SND.NXT - SND.UNA) - SACKed - lost holes not yet retransmitted.

// dupThresh is RFC 5681 §3.2 / RFC 6675 DupThresh.
const dupThresh = 3

// inFlight is FlightSize, or RFC 6675's pipe during SACK recovery, in
// bytes.
func (s *Sock) inFlight() int {
	f := int(int32(s.sndNxt - s.sndUna))
	if f < 0 {
		return 0
	}
	if len(s.sacked) > 0 {
		f -= s.sackedBelow(s.sndNxt)
		if s.inRecovery {
			f -= s.lostNotRetransmitted()
		}
	}
	return max(f, 0)
}

// segs converts bytes to segments, rounding up.
func (s *Sock) segs(n int) uint32 { return uint32((n + s.mss - 1) / s.mss) }

// recoveryAck runs for an ACK that advanced SND.UNA by acked bytes.
func (s *Sock) recoveryAck(ack uint32, acked int, prevUna uint32, now time.Time) {
	s.sackPrune()
	s.rtoRecoveryCheck()
	if s.inRecovery {
		if header.SeqGEQ(ack, s.recover) {
			// RFC 6582 §3.2 step 3 (full acknowledgment): cwnd =
			// min(ssthresh, max(FlightSize, SMSS) + SMSS).
			fl := s.segs(int(int32(s.sndNxt - s.sndUna)))
			s.cs.Cwnd = min(s.cs.Ssthresh, max(fl, 1)+1)
			s.inRecovery, s.dupAcks = false, 0
			s.lostBelow = 0
			s.rackRecoveryExit()
			s.ca.OnEvent(&s.cs, cc.EventRecoveryExit, now)
			return
		}
		if s.sackOK {
			// RFC 6675 §5 (C): an ACK during recovery sends what
			// pipe allows, holes first. A partial ACK that empties
			// the scoreboard is not NewReno's: what is still
			// missing is lost only when RACK says so (RFC 8985
			// §6.2 step 5), not because the ACK stopped short.
			s.sackXmit()
			return
		}
		// RFC 6582 §3.2 step 4 (partial acknowledgment): retransmit
		// the first unacknowledged segment, deflate cwnd by the amount
		// acknowledged and add back one SMSS if that was at least one.
		s.retransmitAt(s.sndUna)
		d := s.segs(acked)
		if acked < s.mss {
			d = 0
		}
		if s.cs.Cwnd > d {
			s.cs.Cwnd -= d
		} else {
			s.cs.Cwnd = 1
		}
		if acked >= s.mss {
			s.cs.Cwnd++
		}
		return
	}
	s.dupAcks = 0
	// RFC 7661 §4.1 spirit (tcp_is_cwnd_limited): grow cwnd only while
	// the window, not the application, limited sending.
	if int(int32(s.sndNxt-prevUna))+s.mss >= int(s.cs.Cwnd)*s.mss/2 {
		s.cs.InFlight = s.segs(int(int32(s.sndNxt - prevUna)))
		s.ca.CongAvoid(&s.cs, s.segs(acked), now)
	}
}

// dupAck handles a duplicate ACK (RFC 5681 §3.2, RFC 6582, RFC 6675).
func (s *Sock) dupAck(now time.Time) {
	s.dupAcks++
	s.rack.dupAckNow = true // for tlpProcessAck
	if s.inRecovery {
		if s.sackOK && len(s.sacked) > 0 {
			s.sackXmit()
			return
		}
		// RFC 6582 §3.2 step 5: inflate cwnd by one per further dup.
		s.cs.Cwnd++
		s.writeXmit()
		return
	}
	lost := s.dupAcks >= dupThresh ||
		s.sackOK && s.sackedBytes() >= dupThresh*s.mss // RFC 6675 §5: IsLost(HighACK+1)
	if s.sackOK && s.rack.reorderSeen && len(s.sacked) > 0 {
		// Reordering seen: DupThresh is off, RACK alone marks losses
		// (RFC 8985 §6.2 step 4; Linux tcp_time_to_recover with
		// tcp_recovery=1): rackCheck enters recovery.
		_, lost = s.nextHole()
	}
	if !lost {
		return
	}
	// RFC 6582 §3.2 step 2: no new recovery until SND.UNA passed the
	// previous "recover" point.
	if header.SeqLT(s.sndUna, s.recover) && s.recover != s.iss {
		return
	}
	s.enterRecovery()
}

// tlpAck runs for every ACK: RFC 8985 §7.4.2's episode first
// (tlpProcessAck), then §7.4.1 with §6.2's rule applied to the probe
// alone: once an ACK SACKs data while a tail loss probe is out, the
// probe (sent last) or data after a hole was delivered, so the holes
// sent before it are lost and recovery starts.
func (s *Sock) tlpAck() {
	dup := s.rack.dupAckNow
	s.rack.dupAckNow = false
	s.tlpProcessAck(dup)
	if s.tlpHigh == 0 || s.inRecovery || len(s.sacked) == 0 {
		return
	}
	s.lostBelow = s.tlpHigh
	if _, lost := s.nextHole(); lost {
		s.enterRecovery()
		return
	}
	s.lostBelow = 0
}

// enterRecovery is the fast retransmit (RFC 5681 §3.2 steps 2–4;
// RFC 6675 §5 steps 1–4).
func (s *Sock) enterRecovery() {
	s.cs.Ssthresh = s.ca.SSThresh(&s.cs)
	s.recover = s.sndMax
	s.inRecovery = true
	s.rttTiming = false
	// The recovery is the congestion response to whatever a TLP
	// episode was probing (Linux tcp_init_cwnd_reduction clears
	// tlp_high_seq): it does not get a second one (RFC 8985 §7.4.2).
	s.rack.tlpEpisode = false
	s.p.count(TCPFastRetrans)
	if s.sackOK && len(s.sacked) > 0 {
		s.p.count(TCPSACKRecovery)
		s.cs.Cwnd = s.cs.Ssthresh // RFC 6675 §5 step 4.2
		if !(header.SeqLT(s.sndUna, s.highRxt) && header.SeqLEQ(s.highRxt, s.sndMax)) {
			// RFC 6675 §5 step 4.1 (HighRxt = HighACK), unless the
			// episode just ended retransmitted holes above
			// SND.UNA: they are not sent again (RACK, RFC 8985
			// §6.2 step 5, resends them if they are lost again).
			s.highRxt = s.sndUna
		}
		s.sackXmit()
		return
	}
	s.p.count(TCPLossRecovery)
	s.retransmitAt(s.sndUna)
	s.cs.Cwnd = s.cs.Ssthresh + dupThresh // RFC 5681 §3.2 step 4
	s.armRTO()
}

// sackXmit is RFC 6675 §5 step (C): while pipe allows, send NextSeg():
// the first hole above HighRxt (rule 1), else new data (rule 2).
func (s *Sock) sackXmit() {
	s.lostRetransmit()
	s.rackLostRetransmits()
	sentHole := false
	for s.inFlight()+s.mss <= int(s.cs.Cwnd)*s.mss {
		h, ok := s.nextHole()
		if !ok {
			break
		}
		s.p.count(TCPSackRetrans)
		n := s.retransmitAt(h)
		s.highRxt = h + uint32(min(max(n, 1), int(int32(s.holeEnd(h)-h))))
		sentHole = true
	}
	if sentHole {
		s.armRTO()
	}
	s.writeXmit()
}

// lostRetransmit is tcp_mark_lost_retrans for the head of the window:
// the retransmission of SND.UNA is lost when DupThresh segments sent
// after it were SACKed and SND.UNA still has not moved; it goes out
// again at once instead of after an RTO (the case RFC 8985 covers by
// time; RFC 6675 alone leaves it to the timer).
func (s *Sock) lostRetransmit() {
	if !s.headRtxValid || len(s.sacked) == 0 {
		return
	}
	if s.sndUna != s.headRtxSeq {
		s.headRtxValid = false
		return
	}
	hi := s.sacked[len(s.sacked)-1].end
	if header.SeqGT(hi, s.headRtxMark+uint32((dupThresh-1)*s.mss)) {
		s.p.count(TCPLostRetransmit)
		s.retransmitAt(s.sndUna)
	}
}

// nextHole returns the first unSACKed, unretransmitted sequence number
// at or above max(HighRxt, SND.UNA) and below the highest SACKed byte.
func (s *Sock) nextHole() (uint32, bool) {
	if len(s.sacked) == 0 {
		return 0, false
	}
	x := s.rxtFloor()
	for i, r := range s.sacked {
		if header.SeqLT(x, r.start) {
			// Holes further up have fewer SACKs above them: if this
			// one is not lost, none is (RFC 6675 NextSeg rule 1).
			return x, s.holeLost(x, i)
		}
		if header.SeqLT(x, r.end) {
			x = r.end
		}
	}
	return 0, false
}

// holeLost is IsLost for a hole at x whose next SACKed range is
// s.sacked[i].
func (s *Sock) holeLost(x uint32, i int) bool {
	if s.lostBelow != 0 && header.SeqLT(x, s.lostBelow) {
		return true
	}
	if s.rackLost(x) { // RFC 8985 §6.2 step 5
		return true
	}
	if s.rack.reorderSeen {
		// RFC 8985 §6.2 step 4: once reordering was seen, DupThresh
		// would retransmit what is merely late; RACK's reo_wnd decides.
		return false
	}
	if len(s.sacked)-i >= dupThresh {
		return true
	}
	above := 0
	for _, r := range s.sacked[i:] {
		above += int(r.end - r.start)
	}
	return above > (dupThresh-1)*s.mss
}

// rxtFloor is where the search for holes starts: HighRxt during
// recovery (it is only meaningful there), SND.UNA otherwise.
func (s *Sock) rxtFloor() uint32 {
	if !s.inRecovery || header.SeqLT(s.highRxt, s.sndUna) {
		return s.sndUna
	}
	return s.highRxt
}

// holeEnd is where the hole starting at x ends (the next SACKed range).
func (s *Sock) holeEnd(x uint32) uint32 {
	for _, r := range s.sacked {
		if header.SeqLT(x, r.start) {
			return r.start
		}
	}
	return s.sndMax
}

// lostNotRetransmitted is the bytes in holes at or above HighRxt below
// the highest SACKed byte.
func (s *Sock) lostNotRetransmitted() int {
	x := s.rxtFloor()
	t := 0
	for i, r := range s.sacked {
		if header.SeqLT(x, r.start) {
			if !s.holeLost(x, i) {
				break
			}
			t += int(r.start - x)
		}
		x = header.SeqMax(x, r.end)
	}
	return t
}
