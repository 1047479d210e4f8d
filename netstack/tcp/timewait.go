package tcp

import "github.com/cni-userstack/cni-userstack/netstack/header"

// TIME-WAIT reopening (tcp_minisocks.c, tcp_timewait_state_process's
// TCP_TW_SYN), one place for every path: a SYN for a 4-tuple we hold in
// TIME-WAIT that is newer than the old incarnation ends the TIME-WAIT and
// goes on as a SYN for no connection, to the listener of its port (V4Rcv)
// or, for a diverted flow, to the Interceptor (divertRcv). Without a
// taker the TIME-WAIT socket answers it as any other segment (an ACK, as
// Linux's TCP_TW_SYN falls through to TCP_TW_ACK).
//
// RFC 1122 §4.2.2.13: a connection "MAY accept a new SYN from the remote
// TCP to reopen the connection directly from TIME-WAIT state, if it:
// (1) assigns its initial sequence number for the new connection to be
// larger than the largest sequence number it used on the previous
// connection incarnation, and (2) returns to TIME-WAIT state if the SYN
// turns out to be an old duplicate". RFC 6191 §2 adds timestamps: a SYN
// with a newer timestamp reopens too, one with an older timestamp never
// does (PAWS), whatever the sequence numbers say. A pod's
// kernel reuses ports long before our 60 s TIME-WAIT ends when our side
// closed first (the proxied server closed, a DNS relay answered); without
// reopening, its SYN would get a challenge ACK and a 1 s retransmission.

// timeWaitReopen decides on a SYN (no ACK, RST or FIN: V4Rcv dropped
// those combinations) for s. When s is in TIME-WAIT, the SYN is newer
// than the old incarnation and taker reports that a listener or the
// Interceptor will take it, s is closed and unhashed, seg carries the ISN
// of the new incarnation and true is returned. taker runs under s.mu, so
// it may take Proto.mu (the lock order) but nothing else.
func (s *Sock) timeWaitReopen(seg *segment, taker func() bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != TimeWait {
		return false
	}
	// The SYN is newer than the old incarnation when its sequence number
	// is beyond RCV.NXT (RFC 1122 §4.2.2.13) or, with timestamps on both
	// incarnations, its TSval is beyond TS.Recent (RFC 6191 §2), and PAWS
	// does not reject it (a TSval older than TS.Recent: an old duplicate,
	// RFC 7323 §5). This is Linux's rule (tcp_timewait_state_process):
	// RFC 6191 would let the timestamp alone decide, so a pod reconnecting
	// within the same millisecond (an equal TSval) with a new sequence
	// number would be refused, and its SYN retried a second later.
	var newer bool
	if s.tsOK && seg.opts.HasTS {
		d := int32(seg.opts.TSVal - s.tsRecent)
		newer = d > 0 || d == 0 && header.SeqGT(seg.seq, s.rcvNxt)
	} else {
		newer = header.SeqGT(seg.seq, s.rcvNxt)
	}
	if !newer || !taker() {
		return false
	}
	// RFC 1122 §4.2.2.13 (1): the new ISN beyond anything the old
	// incarnation sent; Linux's tw_snd_nxt + 65535 + 2, never 0.
	isn := s.sndNxt + 65535 + 2
	if isn == 0 {
		isn = 1
	}
	seg.twISN, seg.hasTWISN = isn, true
	s.p.count(TWReopened)
	s.done(nil)
	return true
}

// hasListener is the taker of a SYN on the normal path: a listener of
// the tuple's local address and port.
func (p *Proto) hasListener(t tuple) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.lookupListener(t.laddr, t.lport) != nil
}
