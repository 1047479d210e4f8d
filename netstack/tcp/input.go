package tcp

import (
	"net/netip"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// segment is a received segment after validation (the fields of
// TCP_SKB_CB): the SKB still owns the bytes.
type segment struct {
	skb        *buf.SKB
	th         header.TCP
	src, dst   netip.Addr
	seq, ack   uint32
	flags      header.TCPFlags
	wnd        uint32 // raw window field
	opts       header.TCPOptions
	data       []byte
	len        uint32 // data plus SYN and FIN (SEG.LEN)
	hasAck     bool
	hasSyn     bool
	hasFin     bool
	hasRst     bool
	ce         bool // the IP header carried CE (RFC 3168 §5)
	nic        int  // the NIC it came in on (a link-local peer's link)
	divert     bool // skb.Mark has netfilter.MarkDivert (intercept.go)
	dataOffset int
	// twISN is the ISN of a connection this SYN reopens from TIME-WAIT
	// (timewait.go), when hasTWISN.
	twISN    uint32
	hasTWISN bool
}

// V4Rcv is tcp_v4_rcv: it consumes skb, whose Bytes() start at the TCP
// header and whose NetworkHeader() is the IPv4 header. It runs on the
// receiving NIC's goroutine (or the loopback backlog's timer) and carries
// the segment through the state machine to the socket's queues.
func (p *Proto) V4Rcv(skb *buf.SKB) {
	nh := skb.NetworkHeader()
	if len(nh) < header.IPv4MinSize {
		p.count(InErrs)
		skb.Free(DropTooSmall)
		return
	}
	ip := header.IPv4(nh)
	var seg segment
	seg.src, seg.dst = ip.Src(), ip.Dst()
	seg.ce = ip.TOS()&ecnMask == ecnCE
	p.segRcv(skb, &seg)
}

// V6Rcv is tcp_v6_rcv: V4Rcv for a segment whose NetworkHeader() is the
// IPv6 header (the ipv6.Protocol Rcv contract: extension headers were
// walked, Bytes() starts at the TCP header). The checksum covers the
// IPv6 pseudo-header (RFC 8200 §8.1); ECN is in the Traffic Class's low
// two bits as in IPv4's TOS (RFC 3168 §5). ipv6 dropped IPv4-mapped
// sources and destinations already (RFC 4291 §2.5.5.2).
func (p *Proto) V6Rcv(skb *buf.SKB) {
	nh := skb.NetworkHeader()
	if len(nh) < header.IPv6MinSize {
		p.count(InErrs)
		skb.Free(DropTooSmall)
		return
	}
	ip := header.IPv6(nh)
	var seg segment
	seg.src, seg.dst = ip.Src(), ip.Dst()
	seg.ce = ip.TrafficClass()&ecnMask == ecnCE
	p.segRcv(skb, &seg)
}

// segRcv is the family-neutral part of V4Rcv and V6Rcv: seg has the
// addresses and the CE mark of the network header.
func (p *Proto) segRcv(skb *buf.SKB, seg *segment) {
	seg.nic = skb.InNIC
	th, err := header.CheckTCP(skb.Bytes())
	if err != nil {
		p.count(InErrs)
		skb.Free(DropTooSmall)
		return
	}
	// RFC 9293 §3.10.7 (MUST-2/3): verify the checksum, unless the link
	// did (CsumUnnecessary) or the segment never left this host's kernel
	// or NIC (CsumPartial: a veth GSO super-segment, accepted whole as the
	// kernel accepts a GRO packet).
	if skb.Csum == buf.CsumNone && !th.ChecksumValid(seg.src, seg.dst) {
		p.count(InCsumErrors)
		p.count(InErrs)
		skb.Free(DropCsum)
		return
	}
	p.count(InSegs)
	seg.skb, seg.th = skb, th
	seg.seq, seg.ack, seg.flags = th.Seq(), th.Ack(), th.Flags()
	seg.wnd = uint32(th.Window())
	seg.opts, _ = header.ParseTCPOptions(th.Options()) // CheckTCP validated them
	seg.dataOffset = th.DataOffset()
	seg.data = th.Payload()
	seg.hasAck = seg.flags&header.ACK != 0
	seg.hasSyn = seg.flags&header.SYN != 0
	seg.hasFin = seg.flags&header.FIN != 0
	seg.hasRst = seg.flags&header.RST != 0
	seg.len = uint32(len(seg.data))
	if seg.hasSyn {
		seg.len++
	}
	if seg.hasFin {
		seg.len++
	}
	// SYN with FIN or RST is nonsense in every state (Linux tcp_v4_rcv
	// drops SYN+FIN in LISTEN and SYN+RST everywhere); a broadcast or
	// multicast destination never has a TCP peer (RFC 9293 §3.9.2,
	// RFC 1122 §4.2.3.10).
	if seg.hasSyn && (seg.hasFin || seg.hasRst) || seg.dst.IsMulticast() || seg.dst.IsUnspecified() || seg.dst == limitedBroadcast {
		p.count(InErrs)
		skb.Free(DropFlags)
		return
	}
	t := tuple{laddr: seg.dst, raddr: seg.src, lport: th.DstPort(), rport: th.SrcPort()}
	if skb.Mark&netfilter.MarkDivert != 0 {
		// A diverted flow: exact 4-tuple or the Interceptor, never a
		// listener (intercept.go).
		seg.divert = true
		p.divertRcv(seg, t)
		return
	}
	s, listener := p.lookup(t)
	switch {
	case s == nil:
		p.noSocket(seg)
	case listener:
		s.listenRcv(seg, t)
	case seg.hasSyn && !seg.hasAck && s.timeWaitReopen(seg, func() bool { return p.hasListener(t) }):
		// A new incarnation of a tuple in TIME-WAIT (timewait.go).
		if l := p.lookupListenerRLocked(t); l != nil {
			l.listenRcv(seg, t)
			return
		}
		p.noSocket(seg)
	default:
		s.rcv(seg)
	}
}

// noSocket answers a segment for no connection (RFC 9293 §3.10.7.1).
func (p *Proto) noSocket(seg *segment) {
	p.sendResetFor(seg)
	seg.skb.Free(DropNoSocket)
}

// rcv is tcp_v4_do_rcv for a connection: run to completion under the
// socket lock.
func (s *Sock) rcv(seg *segment) {
	s.mu.Lock()
	s.rxBatch = seg.skb.Batch
	if b := s.rxBatch; b != nil && !b.Now.IsZero() {
		s.nowScope(b.Now) // one clock reading per batch
	} else {
		s.nowScope(s.p.clk.Now())
	}
	s.segsIn++
	switch s.state {
	case Closed, Listen:
		s.p.noSocket(seg)
	case SynSent:
		s.synSentRcv(seg)
	default:
		s.rcvStateProcess(seg)
	}
	s.rxBatch = nil
	s.nowEnd()
	s.unlockNotify()
}

// synSentRcv is tcp_rcv_synsent_state_process (RFC 9293 §3.10.7.3).
func (s *Sock) synSentRcv(seg *segment) {
	if seg.hasAck && (header.SeqLEQ(seg.ack, s.iss) || header.SeqGT(seg.ack, s.sndMax)) {
		// "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset
		// (unless the RST bit is set ...) and discard the segment."
		s.p.sendResetFor(seg)
		seg.skb.Free(DropAckUnsent)
		return
	}
	if seg.hasRst {
		// RFC 5961 §3.2 and RFC 9293: an RST is acceptable in SYN-SENT
		// only if it acknowledges our SYN.
		if seg.hasAck {
			s.p.count(AttemptFails)
			s.done(syscall.ECONNREFUSED)
			seg.skb.Free(DropReset)
			return
		}
		seg.skb.Free(DropReset)
		return
	}
	if !seg.hasSyn {
		seg.skb.Free(DropFlags)
		return
	}
	s.irs, s.rcvNxt = seg.seq, seg.seq+1
	s.rcvAdv = s.rcvNxt
	s.negotiate(&seg.opts)
	// RFC 3168 §6.1.1: an ECN-setup SYN-ACK has ECE and not CWR.
	s.ecnOK = s.ecnOK && seg.flags&(header.ECE|header.CWR) == header.ECE
	if seg.hasAck {
		s.sndUna = seg.ack
		// RFC 7323 §2.2: the window of a SYN is not scaled.
		s.sndWnd, s.sndWl1, s.sndWl2 = seg.wnd, seg.seq, seg.ack
		s.maxSndWnd = s.sndWnd
		if s.backoff == 0 {
			s.rttSample(s.now().Sub(s.rttTime)) // Karn: only an unretransmitted SYN
		}
		s.backoff = 0
		s.rtxTimer.Stop()
		s.establish()
		s.quickAcks = quickAcks
		s.sendAck()
		s.writeXmit()
		seg.skb.Consume()
		return
	}
	// Simultaneous open (RFC 9293 §3.5, Figure 8): SYN-RECEIVED and a
	// SYN,ACK with our original ISS.
	s.sndWnd, s.sndWl1, s.sndWl2 = seg.wnd, seg.seq, seg.ack
	s.setState(SynReceived)
	_ = s.transmit(s.iss, 0, header.SYN|header.ACK)
	s.armRTO()
	seg.skb.Consume()
}

// negotiate takes the peer's SYN options: each of RFC 7323's and
// RFC 2018's options is on only when both sides sent it.
func (s *Sock) negotiate(o *header.TCPOptions) {
	s.wsOK = s.wsOK && o.HasWScale
	if s.wsOK {
		s.sndWscale = o.WScale
	} else {
		s.sndWscale, s.rcvWscale = 0, 0
	}
	s.tsOK = s.tsOK && o.HasTS
	if s.tsOK {
		s.tsRecent, s.tsRecentTime = o.TSVal, s.now()
	}
	s.sackOK = s.sackOK && o.SACKPermitted
	// RFC 9293 §3.7.1 (MUST-15): without an MSS option assume 536.
	s.peerMSS = 536
	if o.HasMSS && o.MSS > 0 {
		s.peerMSS = int(o.MSS)
	}
	s.syncMSS()
	s.rcvMSS = s.mss
}

// establish enters ESTABLISHED (tcp_finish_connect / tcp_set_state).
func (s *Sock) establish() {
	s.setState(Established)
	s.bufSeq = s.iss + 1
	s.armKeepalive()
	s.wake(EventReadable | EventWritable)
}

// acceptable is RFC 9293 §3.10.7.4's first check, the four cases of
// SEG.LEN and RCV.WND.
func (s *Sock) acceptable(seg *segment, wnd uint32) bool {
	if seg.len == 0 {
		if wnd == 0 {
			return seg.seq == s.rcvNxt
		}
		return header.SeqInWindow(seg.seq, s.rcvNxt, wnd)
	}
	if wnd == 0 {
		return false
	}
	return header.SeqInWindow(seg.seq, s.rcvNxt, wnd) || header.SeqInWindow(seg.seq+seg.len-1, s.rcvNxt, wnd)
}

// paws is RFC 7323 §5.3 R1: a segment whose TSval is older than
// TS.Recent is an old duplicate, unless TS.Recent is older than 24 days.
func (s *Sock) paws(seg *segment) bool {
	if !s.tsOK || !seg.opts.HasTS || seg.hasRst {
		return false
	}
	if int32(seg.opts.TSVal-s.tsRecent) >= 0 {
		return false
	}
	if s.now().Sub(s.tsRecentTime) > 24*24*time.Hour {
		s.tsRecent, s.tsRecentTime = seg.opts.TSVal, s.now()
		return false
	}
	return true
}

// rcvStateProcess is tcp_rcv_state_process (RFC 9293 §3.10.7.4) for
// every state after SYN-SENT.
func (s *Sock) rcvStateProcess(seg *segment) {
	if s.state == SynReceived && seg.hasSyn && !seg.hasAck && !seg.hasRst && seg.seq == s.irs {
		// A retransmitted SYN: the SYN,ACK went missing; send it again
		// (tcp_check_req).
		_ = s.transmit(s.iss, 0, header.SYN|header.ACK)
		seg.skb.Free(DropInvalidSyn)
		return
	}
	if s.paws(seg) {
		s.p.count(PAWSEstab)
		s.oowAck(seg)
		seg.skb.Free(DropPAWS)
		return
	}
	wnd := s.rcvWnd()
	ok := s.acceptable(seg, wnd)
	// "If the RCV.WND is zero, no segments will be acceptable, but
	// special allowance should be made to accept valid ACKs, URGs, and
	// RSTs": a segment at RCV.NXT has its control fields processed; its
	// data is dropped below.
	zeroWnd := !ok && wnd == 0 && seg.seq == s.rcvNxt
	if !ok && !zeroWnd {
		if !seg.hasRst {
			s.oowAck(seg)
		}
		if s.state == TimeWait && seg.hasFin {
			// RFC 9293 §3.10.7.4 TIME-WAIT: a retransmission of the
			// remote FIN: "Acknowledge it, and restart the 2 MSL
			// timeout."
			s.kaReset(s.p.cfg.TimeWait)
		}
		seg.skb.Free(DropInvalidSeq)
		return
	}

	// Second: RST. RFC 5961 §3.2: reset only on an exact match of
	// RCV.NXT; any other in-window RST gets a challenge ACK.
	if seg.hasRst {
		if seg.seq != s.rcvNxt {
			s.challengeAck()
			seg.skb.Free(DropReset)
			return
		}
		s.resetRcvd()
		seg.skb.Free(DropReset)
		return
	}

	// RFC 7323 §4.3: record TS.Recent from a segment that covers
	// Last.ACK.sent.
	if s.tsOK && seg.opts.HasTS && header.SeqLEQ(seg.seq, s.lastAckSent) {
		s.tsRecent, s.tsRecentTime = seg.opts.TSVal, s.now()
	}

	// Fourth: SYN. RFC 5961 §4.2: a SYN in a synchronized state gets a
	// challenge ACK whatever its sequence number; a retransmitted SYN in
	// SYN-RECEIVED gets the SYN,ACK again (tcp_check_req).
	if seg.hasSyn {
		s.challengeAck()
		seg.skb.Free(DropInvalidSyn)
		return
	}

	// Fifth: "if the ACK bit is off, drop the segment and return".
	if !seg.hasAck {
		seg.skb.Free(DropNoAck)
		return
	}
	if s.state == SynReceived {
		if !(header.SeqLT(s.sndUna, seg.ack) && header.SeqLEQ(seg.ack, s.sndMax)) {
			// "If the segment acknowledgment is not acceptable, form a
			// reset segment, <SEQ=SEG.ACK><CTL=RST>, and send it."
			s.p.sendResetFor(seg)
			seg.skb.Free(DropAckUnsent)
			return
		}
		if !s.synRcvdToEstablished(seg) {
			seg.skb.Free(DropListenOverflow)
			return
		}
	}
	if !s.ackRcv(seg) {
		return
	}
	if s.state == Closed {
		seg.skb.Consume()
		return
	}
	s.armKeepalive()

	// Seventh: segment text (URG, the sixth, is not supported: RFC 6093
	// §5 recommends against new uses; urgent data is read inline).
	switch s.state {
	case Established, FinWait1, FinWait2:
		if s.orphan && header.SeqGT(seg.seq+seg.len, s.rcvNxt) && len(seg.data) > 0 {
			// The user closed: new data cannot be delivered. Linux
			// resets (tcp_rcv_state_process, RFC 2525 §2.17).
			s.p.count(TCPAbortOnData)
			s.sendReset()
			s.done(syscall.ECONNRESET)
			seg.skb.Free(DropClose)
			return
		}
		if zeroWnd && len(seg.data) > 0 {
			s.p.count(TCPZeroWindowDrop)
			s.sendAck()
			seg.skb.Free(DropZeroWindow)
			return
		}
		if len(seg.data) > 0 || seg.hasFin {
			if seg.ce && s.ecnOK {
				// RFC 3168 §6.1.3: echo congestion until CWR; ACK at once.
				s.ecnEcho = true
				s.quickAcks = max(s.quickAcks, 1)
			}
			s.dataQueue(seg)
			return
		}
	case TimeWait:
		// A retransmitted FIN: ACK it and restart the 2 MSL timer
		// (RFC 9293 §3.10.7.4, eighth, TIME-WAIT).
		if seg.hasFin {
			s.sendAck()
			s.kaReset(s.p.cfg.TimeWait)
		}
	}
	seg.skb.Consume()
}

// resetRcvd is tcp_reset: the RST's effect by state (RFC 9293 §3.10.7.4,
// second).
func (s *Sock) resetRcvd() {
	switch s.state {
	case SynReceived:
		if s.parent != nil {
			// Passive open: back to LISTEN, i.e. the child goes away.
			s.done(nil)
			return
		}
		s.done(syscall.ECONNREFUSED)
	case Established, CloseWait:
		s.p.count(EstabResets)
		s.done(syscall.ECONNRESET)
	case FinWait1, FinWait2:
		s.done(syscall.ECONNRESET)
	default: // Closing, LastAck, TimeWait
		s.done(nil)
	}
}

// ackRcv is tcp_ack: RFC 9293 §3.10.7.4 fifth for the synchronized
// states, RFC 5961 §5.2's ACK range check, window update, RTT, loss
// recovery and the FIN-acknowledged transitions. It returns false when
// the segment was dropped.
func (s *Sock) ackRcv(seg *segment) bool {
	ack := seg.ack
	if header.SeqGT(ack, s.sndMax) {
		// "If the ACK acks something not yet sent (SEG.ACK > SND.NXT)
		// then send an ACK, drop the segment, and return."
		s.sendAck()
		seg.skb.Free(DropAckUnsent)
		return false
	}
	// RFC 5961 §5.2: an ACK older than SND.UNA - MAX.SND.WND is
	// dropped with an ACK.
	if header.SeqLT(ack, s.sndUna-max(s.maxSndWnd, 1)) {
		s.challengeAck()
		seg.skb.Free(DropTooOldAck)
		return false
	}
	now := s.now()
	wnd := seg.wnd << s.sndWscale
	prevUna := s.sndUna
	// The peer answers: zero-window probes so far were not in vain
	// (RFC 9293 §3.8.6.1 MUST-37: probing goes on while it does; Linux
	// tcp_ack resets icsk_probes_out on every ACK).
	s.probesOut = 0
	// Window update (RFC 9293 §3.10.7.4: "If SND.UNA =< SEG.ACK =<
	// SND.NXT ... if (SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and
	// SND.WL2 =< SEG.ACK)), set SND.WND <- SEG.WND").
	// As Linux (tcp_may_update_window), an ACK that advances SND.UNA
	// also updates the window: SND.WND is relative to SND.UNA, and a
	// stale window from an older ACK would overstate the right edge.
	wndUpdated := false
	if header.SeqGEQ(ack, s.sndUna) && (header.SeqGT(ack, s.sndUna) || header.SeqLT(s.sndWl1, seg.seq) ||
		s.sndWl1 == seg.seq && header.SeqLEQ(s.sndWl2, ack)) {
		wndUpdated = s.sndWnd != wnd
		s.sndWnd, s.sndWl1, s.sndWl2 = wnd, seg.seq, ack
		s.maxSndWnd = max(s.maxSndWnd, wnd)
	}
	if s.sackOK {
		// RFC 8985 §6.2 steps 1–4 for what this ACK delivers.
		tsecr, hasTS := seg.opts.TSEcr, s.tsOK && seg.opts.HasTS && seg.opts.TSEcr != 0
		if header.SeqGT(ack, s.sndUna) && header.SeqLEQ(ack, s.sndMax) {
			s.rackCumAck(ack, tsecr, hasTS)
		}
		if seg.opts.NumSACK > 0 {
			s.sackRcv(&seg.opts, ack, tsecr, hasTS)
		}
		s.rackUpdate()
	}
	if s.ecnOK {
		s.ecnRcv(seg)
	}
	if header.SeqGT(ack, s.sndUna) {
		acked := int(ack - s.sndUna)
		s.sndUna = ack
		if header.SeqLT(s.sndNxt, ack) {
			s.sndNxt = ack
		}
		// Drop acknowledged bytes (the FIN is not in the buffer).
		if d := int(int32(min32(ack, s.dataEnd()) - s.bufSeq)); d > 0 {
			s.sndBuf.discard(d)
			s.bufSeq += uint32(d)
		}
		s.rackPrune()
		s.bytesAcked += uint64(acked)
		// RTT (RFC 7323 §4.1: from TSecr of an ACK of new data, else
		// the Karn-timed segment, RFC 6298 §3).
		if s.tsOK && seg.opts.HasTS && seg.opts.TSEcr != 0 {
			if d := int32(s.tsNow() + s.tsOff - seg.opts.TSEcr); d >= 0 {
				s.rttSample(time.Duration(d)*time.Millisecond + time.Millisecond/2)
			}
		} else if s.rttTiming && header.SeqGEQ(ack, s.rttSeq) {
			s.rttTiming = false
			s.rttSample(now.Sub(s.rttTime))
		}
		s.backoff = 0
		s.recoveryAck(ack, acked, prevUna, now)
		// RFC 6298 §5.2/§5.3: stop the timer when everything is
		// acknowledged, otherwise restart it. A pending tail loss
		// probe goes too: with nothing in flight it has nothing to
		// probe (RFC 8985 §7.2 arms it for outstanding data; Linux
		// tcp_rearm_rto clears ICSK_TIME_RETRANS when packets_out is
		// 0, and the loss probe shares that timer). Left running it
		// would stand in for the persist timer that writeXmit arms
		// below when this ACK also closed the window (RFC 9293
		// §3.8.6.1), then fire and do nothing: a lost window update
		// would stall the connection for good. A persist timer
		// already running stays: the window still needs probing.
		if s.sndUna == s.sndMax {
			if s.rtxMode != rtxProbe {
				s.rtxTimer.Stop()
			}
		} else {
			s.armRTO() // RFC 6298 §5.3
			s.armRTOorPTO()
		}
		if s.tlpHigh != 0 && header.SeqGEQ(ack, s.tlpHigh) {
			s.tlpHigh = 0 // the probe episode is over (RFC 8985 §7.4)
		}
		s.wake(EventWritable) // send buffer space for writers
	} else if ack == s.sndUna && len(seg.data) == 0 && !seg.hasFin && !wndUpdated && s.sndMax != s.sndUna &&
		s.rtxMode != rtxProbe {
		// RFC 5681 §2 "DUPLICATE ACKNOWLEDGMENT" (a SACK block counts
		// too, RFC 6675 §2). Not the answer to a zero-window probe:
		// its byte beyond the window is no outstanding data lost (the
		// definition's (a)), and three answers to a peer holding its
		// window closed must not start a fast retransmit into it
		// (Linux probes with SND.UNA - 1, which leaves nothing in
		// flight: tcp_ack's no_queue path).
		s.dupAck(now)
	}
	if s.sackOK && s.state.synchronized() {
		s.tlpAck()
		s.rackCheck() // RFC 8985 §6.2 step 5, §6.3
	}
	if s.rtxMode == rtxProbe && s.sndWnd > 0 {
		s.rtxTimer.Stop()
		s.backoff = 0
		s.rtxMode = rtxRetrans
	}

	finAcked := s.finQueued && header.SeqGT(s.sndUna, s.dataEnd())
	switch s.state {
	case FinWait1:
		if finAcked {
			s.setState(FinWait2)
			s.rtxTimer.Stop()
			if s.orphan {
				s.kaReset(s.p.cfg.FinTimeout)
			}
			s.cond.Broadcast()
		}
	case Closing:
		if finAcked {
			s.enterTimeWait()
		}
	case LastAck:
		if finAcked {
			s.done(nil)
			seg.skb.Consume()
			return false
		}
	}
	s.writeXmit()
	return true
}

func min32(a, b uint32) uint32 { return header.SeqMin(a, b) }

// synRcvdToEstablished completes a passive (or simultaneous) open
// (tcp_check_req → inet_csk_complete_hashdance): the child moves to its
// listener's accept queue. A full accept queue drops the ACK, as Linux
// does (ListenOverflows); the SYN,ACK will be retransmitted.
func (s *Sock) synRcvdToEstablished(seg *segment) bool {
	if l := s.parent; l != nil {
		l.mu.Lock()
		if l.state != Listen {
			l.mu.Unlock()
			s.sendReset()
			s.done(nil)
			return false
		}
		if len(l.acceptQ) >= l.backlog {
			l.mu.Unlock()
			s.p.count(ListenOverflows)
			s.p.count(ListenDrops)
			return false
		}
		l.synQ--
		l.acceptQ = append(l.acceptQ, s)
		l.cond.Broadcast()
		l.mu.Unlock()
		s.p.count(PassiveOpens)
	} else if s.intercepted {
		s.p.count(PassiveOpens)
	}
	if s.backoff == 0 {
		s.rttSample(s.now().Sub(s.rttTime))
	}
	s.backoff = 0
	s.rtxTimer.Stop()
	s.sndUna = s.iss + 1
	s.sndWnd, s.sndWl1, s.sndWl2 = seg.wnd<<s.sndWscale, seg.seq, seg.ack
	s.maxSndWnd = s.sndWnd
	s.establish()
	s.quickAcks = quickAcks
	return true
}

// dataQueue is tcp_data_queue: in-order data goes to the receive buffer
// (and pulls in what the out-of-order queue now completes); data beyond
// RCV.NXT waits in the out-of-order queue; everything is trimmed to the
// window (RFC 9293 §3.10.7.4, seventh: "trim ... to the window").
func (s *Sock) dataQueue(seg *segment) {
	seq := seg.seq
	data := seg.data
	off := seg.dataOffset // data's offset in seg.skb.Bytes()
	fin := seg.hasFin
	if d := int(int32(s.rcvNxt - seq)); d > 0 {
		// Already received in part or whole.
		if d > len(data) {
			// Only old bytes (and perhaps an old FIN): a duplicate.
			// RFC 5681 §4.2: ACK at once, with a D-SACK (RFC 2883).
			s.noteDSACK(seq, seq+uint32(len(data)))
			s.sendAck()
			seg.skb.Free(DropOldData)
			return
		}
		data = data[d:]
		off += d
		seq = s.rcvNxt
	}
	wnd := s.rcvWnd()
	if over := int(int32(seq + uint32(len(data)) - (s.rcvNxt + wnd))); over > 0 {
		data = data[:max(len(data)-over, 0)]
		fin = false
	}
	if len(data) > s.rcvMSS {
		s.rcvMSS = min(len(data), s.mss)
	}
	if seq == s.rcvNxt {
		s.rcvNxt += uint32(len(data))
		s.bytesReceived += uint64(len(data))
		s.unackedBytes += len(data)
		s.rcvq.write(seg.skb, off, data) // consumes the SKB
		had := len(s.ofo) > 0
		if fin {
			s.finRcvdNow()
		} else if had {
			s.ofoDrain()
		}
		s.wake(EventReadable)
		// RFC 5681 §4.2: ACK at once when the segment fills a gap.
		s.scheduleAck(had || fin)
		return
	}
	s.ofoInsert(seg, seq, data, fin)
}

// finRcvdNow is tcp_fin (RFC 9293 §3.10.7.4, eighth).
func (s *Sock) finRcvdNow() {
	if s.finRcvd {
		return
	}
	s.finRcvd = true
	s.rcvNxt++
	switch s.state {
	case SynReceived, Established:
		s.setState(CloseWait)
	case FinWait1:
		// Our FIN was not yet acknowledged (else we would be in FIN-WAIT-2).
		s.setState(Closing)
	case FinWait2:
		s.enterTimeWait()
	}
	for i := range s.ofo {
		s.ofo[i].skb.Free(DropOldData)
	}
	s.ofo = s.ofo[:0]
	s.wake(EventReadable)
}

// ofoInsert queues an out-of-order segment (tcp_data_queue_ofo) and ACKs
// at once with SACK blocks (RFC 5681 §4.2, RFC 2018 §4). Bound: maxOFO
// segments; bytes are bounded by the window.
func (s *Sock) ofoInsert(seg *segment, seq uint32, data []byte, fin bool) {
	end := seq + uint32(len(data))
	if fin {
		end++
	}
	if len(data) == 0 && !fin {
		seg.skb.Free(DropOverWindow)
		s.sendAck()
		return
	}
	if len(s.ofo) >= maxOFO {
		s.p.count(TCPOFODrop)
		seg.skb.Free(DropOFODrop)
		s.sendAck()
		return
	}
	i := len(s.ofo)
	for i > 0 && header.SeqGT(s.ofo[i-1].seq, seq) {
		i--
	}
	// Drop a segment some queued one covers entirely.
	for j := max(i-1, 0); j < len(s.ofo) && j <= i; j++ {
		if header.SeqLEQ(s.ofo[j].seq, seq) && header.SeqGEQ(s.ofo[j].end, end) {
			s.noteDSACK(seq, seq+uint32(len(data)))
			seg.skb.Free(DropOldData)
			s.lastOFO = j
			s.sendAck()
			return
		}
	}
	skb := seg.skb
	// Keep only the trimmed payload in the SKB.
	off := seg.dataOffset + int(seq-seg.seq)
	skb.Pull(off)
	skb.Trim(len(data))
	s.ofo = append(s.ofo, ofoSeg{})
	copy(s.ofo[i+1:], s.ofo[i:])
	s.ofo[i] = ofoSeg{seq: seq, end: end, fin: fin, skb: skb}
	s.lastOFO = i
	s.p.count(TCPOFOQueue)
	s.sendAck()
}

// ofoDrain moves segments that RCV.NXT reached into the receive buffer
// (tcp_ofo_queue).
func (s *Sock) ofoDrain() {
	n := 0
	for n < len(s.ofo) && header.SeqLEQ(s.ofo[n].seq, s.rcvNxt) {
		e := s.ofo[n]
		n++
		data := e.skb.Bytes()
		if d := int(int32(s.rcvNxt - e.seq)); d < len(data) {
			d = max(d, 0)
			s.rcvNxt += uint32(len(data) - d)
			s.bytesReceived += uint64(len(data) - d)
			s.rcvq.write(e.skb, d, data[d:]) // consumes the SKB
		} else {
			e.skb.Consume()
		}
		if e.fin && s.rcvNxt+1 == e.end {
			copy(s.ofo, s.ofo[n:])
			s.ofo = s.ofo[:len(s.ofo)-n]
			s.finRcvdNow()
			return
		}
	}
	copy(s.ofo, s.ofo[n:])
	for i := len(s.ofo) - n; i < len(s.ofo); i++ {
		s.ofo[i] = ofoSeg{}
	}
	s.ofo = s.ofo[:len(s.ofo)-n]
	s.lastOFO = 0
}

// V4Err is tcp_v4_err: an ICMP error quoting one of our segments. It
// does not consume skb; skb.Bytes() starts at the quoted IPv4 header.
func (p *Proto) V4Err(skb *buf.SKB, e header.ICMPError) {
	b := skb.Bytes()
	if len(b) < header.IPv4MinSize {
		return
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < header.IPv4MinSize || len(b) < ihl+8 {
		return
	}
	p.icmpErr(netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), b[ihl:], e)
}

// V6Err is tcp_v6_err: an ICMPv6 error quoting one of our segments
// (RFC 4443 §3, the ipv6.Protocol Err contract: skb.Bytes() starts at the
// quoted IPv6 header, TransportHeader() at the quoted TCP header, at
// least 8 bytes of it). It does not consume skb. A Packet Too Big lowers
// the connection's MSS (RFC 8201 §4, Info is already at least 1280);
// Destination Unreachable port, admin and reject codes and a Parameter
// Problem are hard (abort an opening connection, RFC 1122 §4.2.3.9 as
// icmpv6_err_convert), the rest soft.
func (p *Proto) V6Err(skb *buf.SKB, e header.ICMPError) {
	b, th := skb.Bytes(), skb.TransportHeader()
	if len(b) < header.IPv6MinSize || len(th) < 8 {
		return
	}
	ip := header.IPv6(b)
	p.icmpErr(ip.Src(), ip.Dst(), th, e)
}

// icmpErr is the family-neutral part of V4Err and V6Err: the quoted
// segment went from src to dst and th holds at least its first 8 bytes.
func (p *Proto) icmpErr(src, dst netip.Addr, th []byte, e header.ICMPError) {
	t := tuple{laddr: src, raddr: dst,
		lport: uint16(th[0])<<8 | uint16(th[1]), rport: uint16(th[2])<<8 | uint16(th[3])}
	seq := uint32(th[4])<<24 | uint32(th[5])<<16 | uint32(th[6])<<8 | uint32(th[7])
	p.mu.RLock()
	s := p.conns[t]
	p.mu.RUnlock()
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.unlockNotify()
	// RFC 5927 §4.1 / RFC 5961 spirit: the quoted sequence number must
	// be in flight, else the error is forged or stale.
	if !(header.SeqLEQ(s.sndUna, seq) && header.SeqLT(seq, s.sndMax)) && s.state != SynSent {
		return
	}
	if e.PathMTU() {
		// RFC 1191 §6.1 and RFC 8201 §4 (PMTU): lower the MSS to the
		// next-hop MTU and resend what no longer fits. The floor is
		// IPv4's 576 (RFC 1191 §3's 68 is refused, as Linux's
		// min_pmtu) and IPv6's minimum link MTU of 1280 (RFC 8201 §4:
		// "A node MUST NOT reduce its estimate of the Path MTU below
		// the IPv6 minimum link MTU").
		floor := 576
		if e.V6 {
			floor = header.IPv6MinMTU
		}
		if e.Info >= 68 && int(e.Info) < s.routeMTU {
			s.routeMTU = max(int(e.Info), floor)
			s.syncMSS()
			s.retransmitAt(s.sndUna)
		}
		return
	}
	if e.Hard && (s.state == SynSent || s.state == SynReceived) {
		// RFC 1122 §4.2.3.9: hard errors (port and protocol
		// unreachable, parameter problem; and, as Linux's fatal
		// icmp_err_convert codes, the prohibited ones) abort a
		// connection being opened.
		s.done(e.Errno)
		return
	}
	// Soft errors (RFC 1122 §4.2.3.9: "MUST NOT abort"): remembered and
	// reported if the connection times out.
	s.softErr = e.Errno
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})
