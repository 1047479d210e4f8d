package tcp

import (
	"time"

	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/tcp/cc"
)

// maxGSO bounds a GSO super-packet's TCP payload so that IPv4 + TCP
// headers fit in 65535 bytes (GSO_MAX_SIZE); an IPv6 payload length
// (RFC 8200 §3) leaves the header out, so the bound holds for both.
const maxGSO = 65535 - header.IPv4MinSize - header.TCPMaxSize

// netHeaderLen is the fixed network header of a family: 20 bytes of IPv4,
// 40 of IPv6 (TCP sends no IPv6 extension headers).
func netHeaderLen(v6 bool) int {
	if v6 {
		return header.IPv6MinSize
	}
	return header.IPv4MinSize
}

// advMSS is the MSS we announce: the route MTU less the IP and TCP
// headers (RFC 9293 §3.7.1, RFC 6691: options excluded). Over IPv6 that
// is the MTU less 60 bytes (RFC 8200 §8.3: "the maximum payload size
// [...] computed [...] must take into account the larger size of the IPv6
// header"), 1220 at the minimum MTU of 1280.
func (s *Sock) advMSS() int { return s.routeMTU - netHeaderLen(s.v6) - header.TCPMinSize }

// syncMSS is tcp_sync_mss: the data bytes per segment, from the peer's
// MSS, our route MTU and the fixed options (timestamps take 12 bytes;
// RFC 6691 §3: the sender subtracts its options).
func (s *Sock) syncMSS() {
	m := min(s.peerMSS, s.advMSS())
	if s.tsOK {
		m -= 12
	}
	s.mss = max(m, 64)
}

// tsOptLen is the bytes the timestamp option takes in every segment of
// a connection that negotiated it (NOP, NOP, TSopt); syncMSS has taken
// it off s.mss already.
const tsOptLen = 12

// sackOptLen is the option bytes the SACK blocks of our next segment
// take (RFC 2018 §3: NOP, NOP, kind, length, 8 per block): a D-SACK due
// and the out-of-order ranges as sackBlocks reports them, as many as
// fit beside the timestamps (three; four without).
func (s *Sock) sackOptLen() int {
	if !s.sackOK || len(s.ofo) == 0 && !s.dsackPending {
		return 0
	}
	limit := header.TCPMaxSACKBlocks
	if s.tsOK {
		limit = (header.TCPMaxOptions - tsOptLen - 4) / 8
	}
	k := 0
	if s.dsackPending {
		k++
	}
	var end uint32
	for i := 0; i < len(s.ofo) && k < limit; i++ {
		e := s.ofo[i]
		eEnd := e.end
		if e.fin {
			eEnd--
		}
		if i > 0 && header.SeqLEQ(e.seq, end) {
			end = header.SeqMax(end, eEnd) // merged into the previous block
			continue
		}
		k++
		end = eEnd
	}
	return 4 + 8*k
}

// curMSS is tcp_current_mss: the data bytes the next segment may carry.
// RFC 9293 §3.7.1 (Eff.snd.MSS less the TCP header with its options) and
// RFC 6691 §3 ("the sender MUST reduce the TCP data length to account
// for any IP or TCP options that it is including"): s.mss leaves room
// for timestamps only, so while SACK blocks ride along (out-of-order data
// held, a D-SACK due) a segment of s.mss bytes would exceed the path MTU
// and, DF set, never leave: IP drops it (IpFragFails) on every
// retransmission until the out-of-order queue empties, which it cannot
// while the peer is stuck the same way.
func (s *Sock) curMSS() int { return max(s.mss-s.sackOptLen(), 8) }

// transmit is tcp_transmit_skb: it builds one segment carrying n bytes
// of the send buffer from seq (SYN and FIN as flags say) with the options
// the state calls for, and hands it to IP. Errors from IP are counted and
// left to the retransmission timer, as Linux does (except where the
// caller needs them: connect).
func (s *Sock) transmit(seq uint32, n int, flags header.TCPFlags) error {
	var o header.TCPOptions
	syn := flags&header.SYN != 0
	if syn {
		// RFC 9293 §3.7.1: MSS only on SYNs; RFC 7323 §2.2 and §3.2
		// window scale and timestamps, RFC 2018 §2 SACK-permitted, on a
		// SYN when we offer them, on a SYN-ACK only when the SYN had them.
		o.HasMSS, o.MSS = true, uint16(s.advMSS())
		if s.wsOK {
			o.HasWScale, o.WScale = true, s.rcvWscale
		}
		o.SACKPermitted = s.sackOK
	}
	if s.tsOK {
		o.HasTS = true
		o.TSVal = s.tsNow() + s.tsOff
		o.TSEcr = s.tsRecent
		if syn && flags&header.ACK == 0 {
			o.TSEcr = 0
		}
	}
	if s.sackOK && !syn && (len(s.ofo) > 0 || s.dsackPending) {
		s.sackBlocks(&o)
	}
	// The payload is sized by curMSS; an MSS-sized wire segment must also
	// fit with the options actually encoded (RFC 6691 §3). A caller that
	// sized n by a larger MSS loses SACK blocks rather than the segment
	// (RFC 2018 §3 allows fewer blocks than the ranges held).
	wireMSS := s.mss
	if s.tsOK {
		wireMSS += tsOptLen
	}
	if !syn && !(s.gso && n > s.mss) {
		for o.NumSACK > 0 && n+header.TCPOptionsLen(&o) > wireMSS {
			o.NumSACK--
		}
	}
	wireMSS -= header.TCPOptionsLen(&o)
	ecnf, ect := s.ecnFlags(seq, n, flags)
	flags |= ecnf
	var ob [header.TCPMaxOptions]byte
	olen := header.EncodeTCPOptions(ob[:], &o)
	hl := header.TCPHeaderLen(olen)

	var wnd uint32
	if syn {
		// RFC 7323 §2.2: the window field of a SYN is never scaled.
		wnd = min(s.rcvWnd(), 0xffff)
	} else {
		// Round up to the scale unit: rounding down would move the right
		// edge we advertised back (Linux tcp_select_window aligns up).
		wnd = min((s.rcvWnd()+(1<<s.rcvWscale)-1)>>s.rcvWscale, 0xffff)
	}
	if flags&header.ACK != 0 {
		s.rcvAdv = s.rcvNxt + wnd<<s.rcvWscale
		if syn {
			s.rcvAdv = s.rcvNxt + wnd
		}
		s.lastAckSent = s.rcvNxt
		s.ackPending, s.unackedBytes = false, 0
		s.delackTimer.Stop()
	}

	// The payload: a clone of the send queue chunk it starts (the
	// header goes into the chunk's headroom, no copy), else a copy.
	var skb *buf.SKB
	if n > 0 {
		skb = s.sndBuf.segment(int(seq-s.bufSeq), n)
	}
	if skb != nil {
		skb.Push(hl)
		s.p.count(TCPZeroCopySegs)
	} else {
		skb = buf.Alloc(buf.MaxHeadroom, hl+n)
		b := skb.Put(hl + n)
		if n > 0 {
			s.sndBuf.peek(int(seq-s.bufSeq), b[hl:])
		}
	}
	b := skb.Bytes()
	th := header.TCP(b)
	th.Encode(header.TCPFields{SrcPort: s.id.lport, DstPort: s.id.rport, Seq: seq, Ack: s.rcvNxt,
		Flags: flags, Window: uint16(wnd), Options: ob[:olen]})
	if flags&header.ACK == 0 {
		th[8], th[9], th[10], th[11] = 0, 0, 0, 0
	}
	// Checksum offload: the pseudo-header sum goes in the field and the
	// device (or dev's checksum help) completes it (CHECKSUM_PARTIAL).
	th.SetChecksumField(header.Fold(header.PseudoHeaderSum(header.ProtoTCP, s.id.laddr, s.id.raddr, len(b))))
	skb.Csum, skb.CsumOffset = buf.CsumPartial, 16
	if s.gso && n > wireMSS {
		// Each wire segment repeats the options: GSOSize is what is
		// left of the MSS beside them.
		skb.GSOSize, skb.GSOType = uint16(max(wireMSS, 8)), buf.GSOTCPv4
		if s.v6 {
			skb.GSOType = buf.GSOTCPv6
		}
	}
	s.segsOut++
	s.p.count(OutSegs)
	if flags&header.RST != 0 {
		s.p.count(OutRsts)
	}
	s.lastSend = s.now()
	fl := s.flow
	if ect {
		fl.TOS |= ecnECT0
	}
	return s.ip.QueueXmit(skb, fl)
}

// sendAck is tcp_send_ack. A pure ACK carries SND.MAX, not SND.NXT: after
// a timeout SND.NXT went back to SND.UNA (go-back-N) while the peer may
// hold everything up to SND.MAX, and an ACK numbered below its RCV.NXT
// fails its acceptability test (RFC 9293 §3.10.7.4) before its ACK field
// is read. Two ends doing that to each other never recover. BSD
// tcp_output numbers ACK-only segments with snd_max for this reason; Linux
// keeps snd_nxt at the highest sequence sent (tcp_acceptable_seq).
func (s *Sock) sendAck() { _ = s.transmit(s.sndMax, 0, header.ACK) }

// sendReset is tcp_send_active_reset: RST at SND.MAX (see sendAck; the
// peer accepts an RST only at its RCV.NXT, RFC 5961 §3.2).
func (s *Sock) sendReset() { _ = s.transmit(s.sndMax, 0, header.RST|header.ACK) }

// oowRateLimit spaces the ACKs answering out-of-window and PAWS-failed
// segments (Linux tcp_invalid_ratelimit, 500 ms), so two confused peers
// cannot drive an ACK storm; RFC 9293 says "should be sent".
const oowRateLimit = 500 * time.Millisecond

// oowAck is tcp_send_dupack for an unacceptable segment, rate limited
// unless the segment carries data (tcp_oow_rate_limited: data without
// SYN is unlikely to be part of an ACK loop). A segment of old data
// gets a D-SACK (RFC 2883).
func (s *Sock) oowAck(seg *segment) {
	if len(seg.data) > 0 && !seg.hasSyn {
		if end := seg.seq + uint32(len(seg.data)); header.SeqLEQ(end, s.rcvNxt) {
			s.noteDSACK(seg.seq, end)
		}
		s.sendAck()
		return
	}
	now := s.now()
	if !s.lastOOW.IsZero() && now.Sub(s.lastOOW) < oowRateLimit {
		s.p.count(TCPACKSkippedSeq)
		return
	}
	s.lastOOW = now
	s.sendAck()
}

// challengeAck is RFC 5961 §3.2/§4.2/§5.2's ACK, rate limited (§7).
func (s *Sock) challengeAck() {
	s.p.count(TCPChallengeACK)
	if s.p.allowChallenge() {
		s.sendAck()
	}
}

// sizeGoal is tcp_xmit_size_goal: one MSS (mss, from curMSS), or as
// many as a GSO super-packet holds when the output NIC segments for us.
func (s *Sock) sizeGoal(mss int) int {
	if !s.gso {
		return mss
	}
	return max(maxGSO/mss, 1) * mss
}

// chunkGoal is the size of the send queue's chunks: the size goal of a
// full segment at the base MSS, so that segments line up with chunks
// and go out without a copy (sndQueue.segment).
func (s *Sock) chunkGoal() int {
	mss := max(s.mss, 64)
	if !s.gso {
		// One MSS per chunk would cost an SKB per segment: take 16 KiB
		// worth, and copy the segments that do not start a chunk.
		return max(16<<10/mss, 1) * mss
	}
	return s.sizeGoal(mss)
}

// canSendData reports the states in which queued data and the FIN may
// go out.
func (s *Sock) canSendData() bool {
	switch s.state {
	case Established, CloseWait, FinWait1, Closing, LastAck:
		return true
	}
	return false
}

// dataEnd is the sequence number after the last queued byte (where the
// FIN goes).
func (s *Sock) dataEnd() uint32 { return s.bufSeq + uint32(s.sndBuf.len()) }

// writeXmit is tcp_write_xmit: send queued data as the congestion window
// (RFC 5681), the peer's window, Nagle (RFC 9293 §3.7.4) and sender-side
// silly window avoidance (§3.8.6.2.1) allow, then the FIN.
func (s *Sock) writeXmit() {
	if !s.canSendData() {
		return
	}
	now := s.now()
	if s.sndNxt == s.sndUna && !s.lastSend.IsZero() && now.Sub(s.lastSend) > s.rto {
		// RFC 5681 §4.1: after an idle period longer than the RTO,
		// cwnd restarts from min(IW, cwnd).
		if s.cs.Cwnd > cc.InitialWindow {
			s.cs.Cwnd = cc.InitialWindow
		}
		s.ca.OnEvent(&s.cs, cc.EventIdleRestart, now)
	}
	sent := false
	// One MSS for the whole pass: the options only shrink within it (a
	// D-SACK goes out once).
	mss := s.curMSS()
	goal := s.sizeGoal(mss)
	for {
		end := s.dataEnd()
		avail := int(int32(end - s.sndNxt))
		if avail < 0 {
			avail = 0
		}
		inflight := s.inFlight()
		cwndLeft := int(s.cs.Cwnd)*s.mss - inflight
		wndLeft := int(int32(s.sndUna + s.sndWnd - s.sndNxt))
		finNext := s.finQueued && s.sndNxt == end && avail == 0
		if finNext {
			// The FIN needs no window (tcp_send_fin queues it
			// regardless), only the congestion window.
			if cwndLeft <= 0 && inflight > 0 {
				break
			}
			s.sendSeg(s.sndNxt, 0, header.FIN|header.ACK, now)
			sent = true
			break
		}
		n := min(avail, goal, max(cwndLeft, 0), max(wndLeft, 0))
		if len(s.sacked) > 0 && header.SeqLT(s.sndNxt, s.sndMax) {
			seq, room := s.sackedSkip(s.sndNxt)
			if seq != s.sndNxt {
				s.sndNxt = seq
				continue
			}
			if room >= 0 {
				n = min(n, room)
			}
		}
		if n <= 0 {
			break
		}
		// End the segment where its send-queue chunk ends, as Linux
		// sends its write queue skb by skb (tcp_write_xmit): a segment
		// that started inside a chunk (the chunk was sent while still
		// being filled) is copied, and one that ran on into the next
		// chunk would leave every later segment misaligned, and
		// copied, too. Not below one MSS: that would change what
		// Nagle holds back.
		if r := s.sndBuf.chunkRest(int(s.sndNxt - s.bufSeq)); r >= mss && r < n {
			n = r
		}
		if n < mss {
			// RFC 9293 §3.8.6.2.1: send a partial segment only if it
			// is everything queued and Nagle allows (MUST-27: no new
			// small segment while data is unacknowledged, unless
			// TCP_NODELAY), or it is at least half the largest window
			// the peer offered.
			nagleOK := !s.cork && (s.nodelay || inflight == 0)
			if !(n == avail && nagleOK) && uint32(n) < s.maxSndWnd/2 {
				break
			}
		}
		flags := header.ACK
		if s.sndNxt+uint32(n) == end {
			flags |= header.PSH
			if s.finQueued {
				flags |= header.FIN
			}
		}
		s.sendSeg(s.sndNxt, n, flags, now)
		sent = true
	}
	if sent {
		s.armRTOorPTO()
		return
	}
	// RFC 9293 §3.8.6.1: with data queued, nothing in flight and a zero
	// window, the persist timer probes the window; with a window too
	// small for the sender's SWS rule it is §3.8.6.2.1's override
	// timeout (tcp_check_probe_timer arms the same timer).
	if s.sndNxt == s.sndUna && int(int32(s.dataEnd()-s.sndNxt)) > 0 && !s.rtxPending() {
		s.armProbe()
	}
}

// rtxPending reports whether the retransmission timer has work to do
// when it fires (tcp_check_probe_timer's icsk_pending): it is armed, and
// as the persist timer, or as the RTO or loss probe with data
// outstanding (SND.UNA < SND.MAX). A retransmission or loss probe timer
// with everything acknowledged does nothing when it fires (rtxFired,
// tlpFired), so it must not keep the persist timer from being armed;
// ackRcv stops such a timer (Linux tcp_rearm_rto), and this keeps the
// persist decision right should one survive.
func (s *Sock) rtxPending() bool {
	if !s.rtxTimer.Armed() {
		return false
	}
	return s.rtxMode == rtxProbe || s.sndUna != s.sndMax
}

// sendSeg sends a data or FIN segment at seq and advances SND.NXT.
func (s *Sock) sendSeg(seq uint32, n int, flags header.TCPFlags, now time.Time) {
	if header.SeqLT(seq, s.sndMax) {
		s.p.count(RetransSegs)
		s.retransTotal++
	} else {
		if !s.tsOK && !s.rttTiming {
			// RFC 6298 §3 (Karn): time one segment of new data at a time.
			s.rttTiming, s.rttSeq, s.rttTime = true, seq+uint32(n), now
		}
	}
	_ = s.transmit(seq, n, flags)
	s.sndNxt = seq + uint32(n)
	if flags&header.FIN != 0 {
		s.sndNxt++
	}
	s.rackSent(seq, s.sndNxt, false) // RFC 8985 §6.1 Segment.xmit_ts
	if header.SeqGT(s.sndNxt, s.sndMax) {
		s.sndMax = s.sndNxt
	}
}

// retransmitHead is tcp_retransmit_skb for the first unacknowledged
// segment (or the SYN, or the FIN).
func (s *Sock) retransmitHead() {
	switch s.state {
	case SynSent:
		s.p.count(TCPSYNRetrans)
		s.p.count(RetransSegs)
		_ = s.transmit(s.iss, 0, header.SYN)
		return
	case SynReceived:
		s.p.count(TCPSYNRetrans)
		s.p.count(RetransSegs)
		_ = s.transmit(s.iss, 0, header.SYN|header.ACK)
		return
	}
	s.retransmitAt(s.sndUna)
}

// retransmitAt resends one segment at seq (which must be below SND.MAX)
// without moving SND.NXT; it returns the data bytes sent.
func (s *Sock) retransmitAt(seq uint32) int {
	end := s.dataEnd()
	n := min(int(int32(end-seq)), s.curMSS())
	// A retransmission resends bytes sent before, never more (Linux's
	// tcp_retransmit_skb resends one sent skb): only below SND.MAX, or
	// a peer that took them would acknowledge past SND.MAX, an ACK we
	// must drop as acknowledging data not yet sent (RFC 9293
	// §3.10.7.4) — every ACK after it too, and the connection stalls
	// for good; and only the hole seq is in, up to the next SACKed
	// range (RFC 6675 §4, NextSeg: the bytes of the hole).
	n = min(n, int(int32(s.sndMax-seq)))
	// Not trimmed to the peer's window: those bytes were inside it when
	// first sent, and a peer that shrank it since may drop them — RFC
	// 9293 §3.8.6: "The sender MAY also retransmit old data beyond
	// SND.UNA+SND.WND" (MAY-7). Linux's __tcp_retransmit_skb trims
	// instead; a receiver SHOULD NOT shrink (SHLD-14), so it rarely
	// matters.
	for _, r := range s.sacked {
		if header.SeqLT(seq, r.start) {
			n = min(n, int(r.start-seq))
			break
		}
	}
	if n < 0 {
		n = 0
	}
	flags := header.ACK
	if seq+uint32(n) == end {
		if n > 0 {
			flags |= header.PSH
		}
		if s.finQueued && header.SeqGT(s.sndMax, end) {
			flags |= header.FIN
		}
	}
	if n == 0 && flags&header.FIN == 0 {
		return 0
	}
	if s.rttTiming && header.SeqLT(seq, s.rttSeq) {
		s.rttTiming = false // Karn: no sample from a retransmitted segment
	}
	s.p.count(RetransSegs)
	s.retransTotal++
	if s.inRecovery && seq == s.sndUna {
		// Remember what was sent after this retransmission (lostRetransmit).
		s.headRtxSeq, s.headRtxMark, s.headRtxValid = seq, s.sndMax, true
	}
	_ = s.transmit(seq, n, flags)
	rend := seq + uint32(n)
	if flags&header.FIN != 0 {
		rend++
	}
	s.rackSent(seq, rend, true) // RFC 8985 §6.1: retransmitted, new xmit_ts
	return n
}

// sendResetFor is tcp_v4_send_reset: the RST answering a segment that
// has no connection (RFC 9293 §3.10.7.1): <SEQ=SEG.ACK><CTL=RST> when it
// had an ACK, else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>. Never in
// answer to a RST. The answer to a diverted segment leaves from its
// foreign destination (route.Flow.Transparent).
func (p *Proto) sendResetFor(seg *segment) {
	th := seg.th
	if th.Flags()&header.RST != 0 {
		return
	}
	var f header.TCPFields
	f.SrcPort, f.DstPort = th.DstPort(), th.SrcPort()
	if th.Flags()&header.ACK != 0 {
		f.Seq, f.Flags = th.Ack(), header.RST
	} else {
		f.Ack, f.Flags = th.Seq()+seg.len, header.RST|header.ACK
	}
	p.sendControl(seg.dst, seg.src, f, seg.nic, seg.divert)
}

// sendControl sends a connectionless segment from laddr to raddr;
// transparent lets laddr be a foreign address (route.Flow.Transparent).
// nic is the NIC a link-local raddr is on (the segment answered came in
// there; RFC 4007 §6), ignored for other addresses.
func (p *Proto) sendControl(laddr, raddr netip.Addr, f header.TCPFields, nic int, transparent bool) {
	ip, ok := p.af(raddr)
	if !ok {
		return
	}
	fl := route.Flow{Src: laddr, Dst: raddr, Proto: header.ProtoTCP, DontFragment: true,
		SrcPort: f.SrcPort, DstPort: f.DstPort, Transparent: transparent}
	if raddr.IsLinkLocalUnicast() {
		fl.NIC = nic
	}
	skb := buf.Alloc(buf.MaxHeadroom, header.TCPMinSize+len(f.Options))
	b := skb.Put(header.TCPHeaderLen(len(f.Options)))
	th := header.TCP(b)
	th.Encode(f)
	th.SetChecksum(laddr, raddr)
	p.count(OutSegs)
	if f.Flags&header.RST != 0 {
		p.count(OutRsts)
	}
	_ = ip.QueueXmit(skb, fl)
}
