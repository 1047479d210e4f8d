package tcp

import (
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/tcp/cc"
)

// RACK (RFC 8985 §6; tcp_recovery.c tcp_rack_*): time-based loss
// detection. A segment is lost when a segment sent after it was
// delivered and it is still missing RACK.rtt + RACK.reo_wnd after it was
// sent.
//
// Transmit times live beside the send queue, not per segment: txq holds
// the send times of the latest in-order pass over the sequence space
// (new data, or go-back-N after a timeout), one record per run of bytes
// sent at the same instant, seq-ordered and therefore time-ordered;
// rtxq holds the times of hole retransmissions (fast recovery, TLP,
// PMTU), seq-ordered. Both are allocated on first use (txq grows by
// doubling) and bounded (maxTxRecs, maxRtxRecs); past the bound the newest record absorbs the
// sends and keeps its earliest and latest time, so detection only gets
// coarser (holes use the latest time, deliveries the earliest: later
// marking, never earlier).
//
// Loss marks are not stored (RFC 8985 sets Segment.lost): rackLost
// evaluates the rule for a hole when recovery asks (holeLost), which
// gives the same answer at the same instant, and the reordering timer
// (§6.3) re-evaluates when the earliest candidate expires.

// txRec is the send time of [start, end): first and last are the
// earliest and latest instants (since Proto.epoch) bytes of it went out.
type txRec struct {
	start, end  uint32
	first, last time.Duration
}

// maxTxRecs bounds txq: with sends at distinct instants, records for
// this many bursts in flight (one per ACK in steady state).
const maxTxRecs = 512

// maxRtxRecs bounds rtxq, like the scoreboard.
const maxRtxRecs = maxSackRanges

// rackReoWndPersist is RFC 8985 §6.2 step 4's count of DSACK-free
// recoveries after which reo_wnd_mult returns to 1.
const rackReoWndPersist = 16

// rackState is RFC 8985 §6.1's per-connection state.
type rackState struct {
	xmitTS        time.Duration // RACK.xmit_ts (valid when have)
	endSeq        uint32        // RACK.end_seq
	rtt           time.Duration // RACK.rtt
	fack          uint32        // RACK.fack (valid when have)
	have          bool
	reorderSeen   bool   // RACK.reordering_seen
	reoWndMult    int    // RACK.reo_wnd_mult (0 means 1)
	reoWndPersist int    // RACK.reo_wnd_persist
	dsackRound    uint32 // RACK.dsack_round (valid when dsackRoundOK)
	dsackRoundOK  bool
	prevFack      uint32 // RACK.fack after the previous ACK (valid when prevFackOK)
	prevFackOK    bool

	recStart     uint32        // txq record of RACK.end_seq (recOrig)
	recOrig      bool          // RACK.end_seq was an original send
	lastStamp    time.Duration // the last send stamp (sendStamp)
	txq          []txRec       // ring, cap maxTxRecs
	txHead, txN  int
	rtxq         []txRec // sorted by start, cap maxRtxRecs
	dsackThisAck bool
	dsackLastAck bool // the ACK just fed carried a D-SACK (tlpProcessAck)
	// dsackProbe and dsackProbeLast: the same for a D-SACK of the last
	// loss probe (sackRcv matches it against probeSeq).
	dsackProbe, dsackProbeLast bool
	dupAckNow                  bool   // the ACK being processed is a duplicate (tlpProcessAck)
	probeSeq                   uint32 // the last TLP retransmission (probeOK)
	probeOK                    bool

	// RFC 8985 §7.4.2's TLP episode: TLP.end_seq (valid when
	// tlpEpisode) and TLP.is_retrans. Kept apart from Sock.tlpHigh,
	// which ends as soon as SND.UNA reaches the probe.
	tlpEnd     uint32
	tlpEpisode bool
	tlpRetrans bool

	// RTO recovery (RFC 8985 §6.2 step 4 "Fast or RTO recovery",
	// Linux TCP_CA_Loss): from a timeout until SND.UNA passes
	// rtoRecover, SND.MAX when the timer fired.
	rtoRecovery bool
	rtoRecover  uint32
}

// rackNow is the send-time clock: time since the Proto's epoch.
func (s *Sock) rackNow() time.Duration { return s.now().Sub(s.p.epoch) }

// sendStamp is the send time of a segment going out now, strictly after
// the previous one's: sends within one clock tick keep their order, so
// RACK_sent_after (RFC 8985 §6.2) never orders a retransmission before
// new data sent ahead of it in the same tick (its end_seq tiebreak
// assumes sequence order is send order, which retransmissions break).
func (s *Sock) sendStamp() time.Duration {
	now := max(s.rackNow(), s.rack.lastStamp+1)
	s.rack.lastStamp = now
	return now
}

// sameTick is the coalescing rule for txq: sends whose stamps differ
// only by sendStamp's ordering nanoseconds share a record.
const sameTick = time.Microsecond

func (s *Sock) txAt(i int) *txRec { return &s.rack.txq[(s.rack.txHead+i)%len(s.rack.txq)] }

// txGrow doubles txq (from 16 up to maxTxRecs) when it is full, so a
// connection with little in flight holds little; steady state does not
// allocate.
func (s *Sock) txGrow() {
	r := &s.rack
	if r.txN < len(r.txq) || len(r.txq) >= maxTxRecs {
		return
	}
	nq := make([]txRec, min(max(2*len(r.txq), 16), maxTxRecs))
	for i := 0; i < r.txN; i++ {
		nq[i] = *s.txAt(i)
	}
	r.txq, r.txHead = nq, 0
}

// rackSent records a send of [seq, end) (RFC 8985 §6.1: Segment.xmit_ts)
// in the in-order pass (retrans false) or as a hole retransmission.
func (s *Sock) rackSent(seq, end uint32, retrans bool) {
	if !s.sackOK || !header.SeqLT(seq, end) {
		return
	}
	now := s.sendStamp()
	r := &s.rack
	if retrans {
		s.rtxRecord(seq, end, now)
		return
	}
	// A new pass (go-back-N) overwrites what it resends.
	for r.txN > 0 {
		t := s.txAt(r.txN - 1)
		if header.SeqLT(t.start, seq) {
			if header.SeqGT(t.end, seq) {
				t.end = seq
			}
			break
		}
		r.txN--
	}
	if r.txN > 0 {
		t := s.txAt(r.txN - 1)
		if t.end == seq && (now-t.last < sameTick || r.txN == maxTxRecs) {
			t.end, t.last = end, now
			return
		}
	}
	s.txGrow()
	if r.txN == maxTxRecs {
		t := s.txAt(r.txN - 1)
		t.end, t.last = end, now
		return
	}
	*s.txAt(r.txN) = txRec{start: seq, end: end, first: now, last: now}
	r.txN++
}

// rtxRecord notes a retransmission of [seq, end) at now.
func (s *Sock) rtxRecord(seq, end uint32, now time.Duration) {
	r := &s.rack
	if r.rtxq == nil {
		r.rtxq = make([]txRec, 0, maxRtxRecs)
	}
	i := 0
	for i < len(r.rtxq) && header.SeqLEQ(r.rtxq[i].end, seq) {
		i++
	}
	// Drop records the new one covers; keep the first one it overlaps
	// by trimming.
	j := i
	for j < len(r.rtxq) && header.SeqLT(r.rtxq[j].start, end) {
		j++
	}
	if j > i {
		if header.SeqLT(r.rtxq[i].start, seq) || header.SeqGT(r.rtxq[j-1].end, end) {
			// Partial overlap: merge into one record, latest time.
			seq = header.SeqMin(seq, r.rtxq[i].start)
			end = header.SeqMax(end, r.rtxq[j-1].end)
		}
		r.rtxq = append(r.rtxq[:i], r.rtxq[j:]...)
	}
	if len(r.rtxq) == maxRtxRecs && header.SeqLEQ(r.rtxq[0].end, s.sndUna) {
		// Full: the oldest acknowledged record goes first.
		r.rtxq = append(r.rtxq[:0], r.rtxq[1:]...)
		i = max(i-1, 0)
	}
	if len(r.rtxq) == maxRtxRecs {
		// Full: absorb into the neighbour below (or above).
		k := max(i-1, 0)
		t := &r.rtxq[k]
		t.start, t.end = header.SeqMin(t.start, seq), header.SeqMax(t.end, end)
		t.last = now
		return
	}
	r.rtxq = append(r.rtxq, txRec{})
	copy(r.rtxq[i+1:], r.rtxq[i:])
	r.rtxq[i] = txRec{start: seq, end: end, first: now, last: now}
}

// rackPrune forgets send times below SND.UNA (retransmissions: a
// window below).
func (s *Sock) rackPrune() {
	r := &s.rack
	for r.txN > 0 {
		t := s.txAt(0)
		if header.SeqGT(t.end, s.sndUna) {
			break
		}
		r.txHead = (r.txHead + 1) % len(r.txq)
		r.txN--
	}
	// Retransmissions are remembered a window below SND.UNA, so a
	// late D-SACK still finds them (RFC 2883 §4).
	keep := s.sndUna - max(s.maxSndWnd, 1)
	n := 0
	for _, t := range r.rtxq {
		if header.SeqGT(t.end, keep) {
			r.rtxq[n] = t
			n++
		}
	}
	r.rtxq = r.rtxq[:n]
}

// rackReset forgets every send time (a timeout: go-back-N restarts the
// pass, RFC 8985 §6.1 xmit_ts of the resends).
func (s *Sock) rackReset() {
	s.rack.txHead, s.rack.txN = 0, 0
	s.rack.rtxq = s.rack.rtxq[:0]
	s.rackTimer.Stop()
}

// rackRelease frees the records (connection end).
func (s *Sock) rackRelease() {
	s.rack.txq, s.rack.rtxq = nil, nil
	s.rack.txHead, s.rack.txN = 0, 0
}

// sendTime returns the record holding seq: a retransmission's first,
// else the in-order pass's.
func (s *Sock) sendTime(seq uint32) (rec txRec, retrans, ok bool) {
	for _, t := range s.rack.rtxq {
		if header.SeqLEQ(t.start, seq) && header.SeqLT(seq, t.end) {
			return t, true, true
		}
	}
	lo, hi := 0, s.rack.txN
	for lo < hi {
		m := (lo + hi) / 2
		if header.SeqLEQ(s.txAt(m).end, seq) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < s.rack.txN {
		if t := s.txAt(lo); header.SeqLEQ(t.start, seq) {
			return *t, false, true
		}
	}
	return txRec{}, false, false
}

// sentAfter is RFC 8985 §6.2 RACK_sent_after.
func sentAfter(t1 time.Duration, seq1 uint32, t2 time.Duration, seq2 uint32) bool {
	return t1 > t2 || t1 == t2 && header.SeqGT(seq1, seq2)
}

// rackDelivered is RFC 8985 §6.2 steps 1 and 3 for a newly delivered
// (cumulatively or selectively) segment ending at end.
func (s *Sock) rackDelivered(end uint32, tsecr uint32, hasTS bool) {
	rec, retrans, ok := s.sendTime(end - 1)
	if !ok {
		return
	}
	r := &s.rack
	// Step 3: an original delivered below RACK.fack was reordered.
	// RACK.fack is compared as an earlier ACK left it (Linux
	// prior_fack): blocks of one ACK come in any order (RFC 2018 §4
	// puts the newest first), and a lower block reported beside a
	// higher one, its first report lost with an ACK, is no reordering.
	if !r.have || header.SeqGT(end, r.fack) {
		r.fack = end
	}
	if r.prevFackOK && header.SeqLT(end, r.prevFack) && !retrans && !r.reorderSeen {
		r.reorderSeen = true
		s.p.count(TCPSACKReorder)
	}
	ts := rec.first // the earliest: never overstates RACK.xmit_ts
	rtt := s.rackNow() - ts
	// The TSval the retransmission carried (tsNow of its send time).
	tsecrOld := hasTS && int32(tsecr-(uint32(ts.Milliseconds())+s.tsOff)) < 0
	if retrans && (tsecrOld || rtt < s.minRTT) {
		// Step 1: the ACK may be for the original; no sample.
		return
	}
	// Step 2 (RACK.min_RTT) is s.minRTT, kept by rttSample.
	if !r.have || sentAfter(ts, end, r.xmitTS, r.endSeq) {
		r.xmitTS, r.endSeq, r.rtt, r.have = ts, end, rtt, true
		r.recStart, r.recOrig = rec.start, !retrans
	}
}

// rackCumAck feeds RFC 8985 §6.2 the bytes a cumulative ACK delivers
// that were not SACKed before: the highest of them ends the segment.
// It runs before the scoreboard takes the ACK's blocks.
func (s *Sock) rackCumAck(ack, tsecr uint32, hasTS bool) {
	end := ack
	for i := len(s.sacked) - 1; i >= 0; i-- {
		r := s.sacked[i]
		if header.SeqGEQ(r.start, end) {
			continue
		}
		if header.SeqLT(r.end, end) {
			break
		}
		end = r.start
	}
	if header.SeqGT(end, s.sndUna) {
		s.rackDelivered(end, tsecr, hasTS)
	}
}

// rackReoWnd is RFC 8985 §6.2 step 4's RACK_update_reo_wnd (the DSACK
// round bookkeeping is in rackUpdate) and returns RACK.reo_wnd.
func (s *Sock) rackReoWnd() time.Duration {
	r := &s.rack
	if !r.reorderSeen {
		// Without reordering: 0 in fast or RTO recovery or once
		// DupThresh segments are SACKed, which is RFC 6675's rule
		// (§6.2 step 4).
		if s.inRecovery || r.rtoRecovery || s.segs(s.sackedBytes()) >= dupThresh {
			return 0
		}
	}
	return min(time.Duration(max(r.reoWndMult, 1))*s.minRTT/4, s.srtt)
}

// rackUpdate runs at the end of RFC 8985 §6.2 step 1–3's feeding: the
// DSACK rounds of step 4.
func (s *Sock) rackUpdate() {
	r := &s.rack
	if r.dsackRoundOK && header.SeqGEQ(s.sndUna, r.dsackRound) {
		r.dsackRoundOK = false
	}
	if !r.dsackRoundOK && r.dsackThisAck {
		// Grow reo_wnd by min_RTT/4 per round that saw a DSACK.
		r.dsackRound, r.dsackRoundOK = s.sndNxt, true
		r.reoWndMult = max(r.reoWndMult, 1) + 1
		r.reoWndPersist = rackReoWndPersist
	}
	r.dsackLastAck, r.dsackThisAck = r.dsackThisAck, false
	r.dsackProbeLast, r.dsackProbe = r.dsackProbe, false
	r.prevFack, r.prevFackOK = r.fack, r.have
}

// rackRecoveryExit is §6.2 step 4's "exiting Fast or RTO recovery".
func (s *Sock) rackRecoveryExit() {
	r := &s.rack
	if r.reoWndPersist > 0 {
		r.reoWndPersist--
		if r.reoWndPersist == 0 {
			r.reoWndMult = 1
		}
	}
}

// rackRemaining is RFC 8985 §6.2 step 5 for the segment at seq:
// whether it is a candidate (sent before RACK.xmit_ts) and the time
// left before it is lost (<= 0: lost).
func (s *Sock) rackRemaining(seq uint32, reo time.Duration, now time.Duration) (time.Duration, bool) {
	r := &s.rack
	if !r.have || !s.sackOK {
		return 0, false
	}
	rec, retrans, ok := s.sendTime(seq)
	if !ok {
		return 0, false
	}
	ts := rec.last // a hole's latest time: never marks early
	if !retrans && r.recOrig && rec.start == r.recStart {
		// The same in-order run as RACK.end_seq: sent in sequence
		// order at one instant, the end_seq tiebreak decides.
		ts = r.xmitTS
	}
	if !sentAfter(r.xmitTS, r.endSeq, ts, seq+1) {
		return 0, false
	}
	return ts + r.rtt + reo - now, true
}

// rackLost is RFC 8985 §6.2 step 5's verdict for the hole byte seq.
func (s *Sock) rackLost(seq uint32) bool {
	rem, ok := s.rackRemaining(seq, s.rackReoWnd(), s.rackNow())
	return ok && rem <= 0
}

// rackDetect is RFC 8985 §6.2 step 5 / §6.3 RACK_detect_loss_and_arm_timer
// over the holes: it reports whether a hole not yet retransmitted is
// lost and arms the reordering timer for the earliest candidate that is
// not lost yet.
func (s *Sock) rackDetect() (lost bool) {
	if !s.rack.have || len(s.sacked) == 0 {
		s.rackTimer.Stop()
		return false
	}
	reo, now := s.rackReoWnd(), s.rackNow()
	var timeout time.Duration
	x := s.sndUna
	floor := s.rxtFloor()
	for _, sr := range s.sacked {
		if header.SeqLT(x, sr.start) {
			// A hole [x, sr.start): its in-order records are time
			// ordered, so the first one not lost bounds the timer.
			for y := x; header.SeqLT(y, sr.start); {
				rec, retrans, ok := s.sendTime(y)
				if !ok {
					break
				}
				rem, cand := s.rackRemaining(y, reo, now)
				if !cand {
					break
				}
				if rem > 0 {
					if timeout == 0 || rem < timeout {
						timeout = rem
					}
					break
				}
				if !retrans && header.SeqGEQ(y, floor) || retrans && s.inRecovery {
					lost = true
				}
				y = rec.end
			}
		}
		x = header.SeqMax(x, sr.end)
	}
	if timeout > 0 {
		s.rackTimer.ResetAt(s.now().Add(timeout))
	} else {
		s.rackTimer.Stop()
	}
	return lost
}

// rackLostRetransmits is RFC 8985 §6.2 step 5 for retransmissions: a
// retransmitted hole that RACK finds lost goes out again (Linux
// tcp_rack_mark_lost on a TCPCB_SACKED_RETRANS skb).
func (s *Sock) rackLostRetransmits() {
	if !s.rack.have || len(s.rack.rtxq) == 0 {
		return
	}
	reo, now := s.rackReoWnd(), s.rackNow()
	for i := 0; i < len(s.rack.rtxq); i++ {
		if s.inFlight()+s.mss > int(s.cs.Cwnd)*s.mss {
			return
		}
		t := s.rack.rtxq[i]
		seq := header.SeqMax(t.start, s.sndUna)
		if !header.SeqLT(seq, t.end) || s.isSacked(seq) {
			continue
		}
		if rem, ok := s.rackRemaining(seq, reo, now); ok && rem <= 0 {
			s.p.count(TCPLostRetransmit)
			s.retransmitAt(seq)
		}
	}
}

// isSacked reports whether seq is in a SACKed range.
func (s *Sock) isSacked(seq uint32) bool {
	for _, r := range s.sacked {
		if header.SeqLEQ(r.start, seq) && header.SeqLT(seq, r.end) {
			return true
		}
	}
	return false
}

// rackFired is RFC 8985 §6.3: the reordering timer expired; holes
// whose time is up are lost, recovery starts or resends them.
func (s *Sock) rackFired() {
	s.mu.Lock()
	defer s.unlockNotify()
	if s.rackTimer.Armed() || !s.state.synchronized() || s.state == TimeWait || s.sndUna == s.sndMax {
		return
	}
	s.rackCheck()
}

// rackCheck acts on RACK's verdict after an ACK or the timer: a lost
// hole starts recovery (RFC 8985 §6.2: RACK marks, RFC 6675 §5
// retransmits) or, in recovery, is sent as pipe allows.
func (s *Sock) rackCheck() {
	if !s.sackOK {
		return
	}
	if !s.rackDetect() {
		return
	}
	if s.inRecovery {
		s.sackXmit()
		return
	}
	// RFC 6582 §3.2 step 2, as dupAck.
	if header.SeqLT(s.sndUna, s.recover) && s.recover != s.iss {
		return
	}
	s.enterRecovery()
}

// tlpSent opens RFC 8985 §7.4.2's TLP episode for a probe just sent:
// TLP.end_seq = SND.NXT, TLP.is_retrans as the probe was.
func (s *Sock) tlpSent(retrans bool) {
	r := &s.rack
	r.tlpEnd, r.tlpEpisode, r.tlpRetrans = s.sndMax, true, retrans
}

// tlpProcessAck is RFC 8985 §7.4.2 TLP_process_ack for the ACK just
// processed (SND.UNA is its acknowledgment number; dupAck tells a
// duplicate ACK): once the ACK covers TLP.end_seq, a probe of new data
// or one the peer reports with a D-SACK (the original had arrived)
// ends the episode; an ACK beyond TLP.end_seq without that D-SACK means
// the retransmitted probe alone repaired a loss, which gets one
// congestion response (tcp_process_tlp_ack).
func (s *Sock) tlpProcessAck(dupAck bool) {
	r := &s.rack
	if !r.tlpEpisode || header.SeqLT(s.sndUna, r.tlpEnd) {
		return
	}
	switch {
	case !r.tlpRetrans:
		r.tlpEpisode = false // TLP of new data delivered
	case r.dsackProbeLast:
		// The peer reports the probe twice (RFC 2883 D-SACK): the
		// original had arrived, no loss to answer.
		r.tlpEpisode = false
	case header.SeqGT(s.sndUna, r.tlpEnd):
		r.tlpEpisode = false
		s.tlpRepaired()
	case dupAck && len(s.sacked) == 0:
		// A duplicate ACK without SACK information: the peer got
		// the probe twice but did not say so with a D-SACK.
		r.tlpEpisode = false
	}
	// Else the ACK is for the probe or its original: wait for the
	// next one (a D-SACK, or an ACK beyond TLP.end_seq).
}

// tlpRepaired is the congestion response of RFC 8985 §7.4.2 ("invoke
// congestion control to react to the loss event the probe has
// repaired"), as Linux: a CWR reduction that completes at once,
// ssthresh from the algorithm and cwnd = ssthresh. RFC 6582's recover
// is left alone: a hole found later in the window still starts fast
// recovery rather than waiting for the RTO.
func (s *Sock) tlpRepaired() {
	if s.inRecovery || s.rack.rtoRecovery {
		return // recovery already reduced cwnd for this window
	}
	s.p.count(TCPLossProbeRecovery)
	s.cs.Ssthresh = s.ca.SSThresh(&s.cs)
	s.cs.Cwnd = max(s.cs.Ssthresh, 1)
	s.cs.CwndCnt = 0
	s.ca.OnEvent(&s.cs, cc.EventRecoveryExit, s.now())
}

// rtoRecoveryCheck ends RTO recovery once SND.UNA passed the point the
// timeout recorded (RFC 8985 §6.2 step 4 counts it as a recovery for
// reo_wnd_persist).
func (s *Sock) rtoRecoveryCheck() {
	r := &s.rack
	if r.rtoRecovery && header.SeqGEQ(s.sndUna, r.rtoRecover) {
		r.rtoRecovery = false
		s.rackRecoveryExit()
	}
}
