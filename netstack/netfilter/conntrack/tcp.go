package conntrack

import (
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// TCPState is a tracked TCP flow's state (enum tcp_conntrack).
type TCPState uint8

const (
	TCPNone TCPState = iota
	TCPSynSent
	TCPSynRecv
	TCPEstablished
	TCPFinWait
	TCPCloseWait
	TCPLastAck
	TCPTimeWait
	TCPClose
	TCPSynSent2 // simultaneous open
)

var tcpStateNames = [...]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
	"LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func (s TCPState) String() string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return "TCPState?"
}

// tcpPeer is what we know of one end's sequence space (struct
// ip_ct_tcp_state): td_end, td_maxend, td_maxwin, td_scale.
type tcpPeer struct {
	end, maxEnd uint32
	maxWin      uint32
	scale       uint8
	init        bool
	finSeen     bool
	finEnd      uint32 // sequence number just past its FIN
	wscaleOK    bool   // sent the window scale option on its SYN
}

type tcpConn struct {
	state   TCPState
	peer    [2]tcpPeer
	liberal bool
	// lastDir and finAcked drive the closing states.
	finAcked [2]bool
}

type tcpResult uint8

const (
	tcpOK tcpResult = iota
	tcpInvalid
	tcpReopen
)

// maxAckWindow is MAXACKWINDOW's floor when a peer's window is unknown.
const maxAckWindow = 66000

// tcpMayOpen reports whether a segment may open a flow (tcp_new): a SYN
// without ACK or RST, or with pickup any segment that is not RST.
func tcpMayOpen(h header.TCP, pickup bool) bool {
	f := h.Flags()
	if f&header.RST != 0 {
		return false
	}
	if f&header.SYN != 0 {
		return f&header.ACK == 0
	}
	return pickup && f&header.ACK != 0
}

// segEnd is the sequence number just past the segment (SYN and FIN count).
func segEnd(h header.TCP, l4 []byte) uint32 {
	n := uint32(len(l4) - h.DataOffset())
	f := h.Flags()
	if f&header.SYN != 0 {
		n++
	}
	if f&header.FIN != 0 {
		n++
	}
	return h.Seq() + n
}

// open initialises the flow from its first segment.
func (c *tcpConn) open(h header.TCP, l4 []byte) {
	f := h.Flags()
	p := &c.peer[Original]
	end := segEnd(h, l4)
	p.end, p.init = end, true
	p.maxWin = max(uint32(h.Window()), 1)
	if f&header.SYN != 0 {
		c.state = TCPSynSent
		if o, err := header.ParseTCPOptions(h.Options()); err == nil && o.HasWScale {
			p.wscaleOK, p.scale = true, min(o.WScale, header.TCPMaxWScale)
		}
	} else {
		// Picked up mid-stream (tcp_new with nf_conntrack_tcp_loose):
		// we know nothing of the window; both sides start liberal.
		c.state = TCPEstablished
		c.liberal = true
	}
	p.maxEnd = end + p.maxWin
}

// packet runs the state machine and the window check for one segment of
// an existing flow (tcp_packet, tcp_in_window).
func (c *tcpConn) packet(dir Dir, h header.TCP, l4 []byte) tcpResult {
	f := h.Flags()
	old := c.state
	if f&header.SYN != 0 && f&header.ACK == 0 && dir == Original && (old == TCPTimeWait || old == TCPClose) {
		return tcpReopen // RFC 9293 §3.10.7.4 allows a new SYN to reopen TIME-WAIT
	}
	if !c.inWindow(dir, h, l4) {
		return tcpInvalid
	}
	other := dir ^ 1
	switch {
	case f&header.RST != 0:
		c.state = TCPClose
	case f&header.SYN != 0 && f&header.ACK != 0:
		if dir == Reply && (old == TCPSynSent || old == TCPSynSent2) {
			c.state = TCPSynRecv
		} else if old == TCPSynSent2 && dir == Original {
			c.state = TCPSynRecv
		}
	case f&header.SYN != 0:
		if dir == Reply && old == TCPSynSent {
			c.state = TCPSynSent2
		}
	default:
		if f&header.FIN != 0 {
			p := &c.peer[dir]
			p.finSeen = true
			p.finEnd = segEnd(h, l4)
		}
		if f&header.ACK != 0 {
			if old == TCPSynRecv && dir == Original || old == TCPSynRecv && dir == Reply && c.peer[Original].init {
				c.state = TCPEstablished
			}
			if o := &c.peer[other]; o.finSeen && header.SeqGEQ(h.Ack(), o.finEnd) {
				c.finAcked[other] = true
			}
		}
		if c.state >= TCPEstablished && c.state <= TCPTimeWait {
			c.state = c.closingState()
		}
	}
	return tcpOK
}

// closingState derives the closing state from the FINs seen and acked in
// each direction (the FIN_WAIT … TIME_WAIT rows of tcp_conntracks).
func (c *tcpConn) closingState() TCPState {
	a, b := c.peer[Original].finSeen, c.peer[Reply].finSeen
	switch {
	case a && b && c.finAcked[Original] && c.finAcked[Reply]:
		return TCPTimeWait
	case a && b:
		return TCPLastAck
	case a && c.finAcked[Original] || b && c.finAcked[Reply]:
		return TCPCloseWait
	case a || b:
		return TCPFinWait
	}
	return TCPEstablished
}

// inWindow is tcp_in_window: the segment must lie in the receiver's window
// and its ACK must acknowledge nothing the receiver has not sent (RFC 9293
// §3.10.7.4 acceptability, seen from the middle). With liberal tracking
// only the bookkeeping runs.
func (c *tcpConn) inWindow(dir Dir, h header.TCP, l4 []byte) bool {
	snd, rcv := &c.peer[dir], &c.peer[dir^1]
	f := h.Flags()
	seq, ack := h.Seq(), h.Ack()
	end := segEnd(h, l4)
	win := uint32(h.Window())
	if f&header.SYN != 0 {
		// The SYN-ACK (or simultaneous SYN) initialises this side.
		if o, err := header.ParseTCPOptions(h.Options()); err == nil && o.HasWScale {
			snd.wscaleOK, snd.scale = true, min(o.WScale, header.TCPMaxWScale)
		} else {
			snd.wscaleOK, snd.scale = false, 0
		}
		if dir == Reply && !(c.peer[Original].wscaleOK && snd.wscaleOK) {
			// RFC 7323 §2.2: scaling only when both sides offered it.
			c.peer[Original].scale, snd.scale = 0, 0
		}
		if !snd.init || dir == Reply {
			snd.end, snd.maxEnd, snd.maxWin, snd.init = end, end+max(win, 1), max(win, 1), true
			if f&header.ACK != 0 && !rcv.init {
				return true
			}
			if f&header.ACK == 0 {
				return true
			}
		}
	} else {
		win <<= snd.scale
	}
	if !snd.init {
		// First segment from this side after a picked-up flow.
		snd.end, snd.maxEnd, snd.maxWin, snd.init = end, end+max(win, 1), max(win, 1), true
	}
	if f&header.ACK == 0 {
		ack = rcv.end
	}
	if f&header.RST != 0 && f&header.ACK != 0 && ack == 0 {
		ack = rcv.end
	}
	maxAck := max(snd.maxWin, maxAckWindow)
	ok := c.liberal ||
		header.SeqLEQ(seq, snd.maxEnd) && // not past what the receiver may accept
			header.SeqGEQ(end, snd.end-rcv.maxWin) && // not older than the window
			header.SeqLEQ(ack, rcv.end) && // acks nothing unsent
			header.SeqGEQ(ack, rcv.end-maxAck) // not an ancient ack
	if !ok {
		if f&header.RST != 0 || !c.liberal {
			return false
		}
	}
	// Update the bookkeeping (the "Update state" half of tcp_in_window).
	if header.SeqGT(end, snd.end) {
		snd.end = end
	}
	if win == 0 && f&header.ACK != 0 {
		win = 1
	}
	if snd.maxWin < win {
		snd.maxWin = win
	}
	if f&header.ACK != 0 {
		if e := ack + win; header.SeqGT(e, rcv.maxEnd) || !rcv.init {
			rcv.maxEnd = e
		}
	}
	if header.SeqGT(snd.end, rcv.maxEnd-0) && !rcv.init {
		rcv.maxEnd = snd.end
	}
	return true
}

// timeout is the idle timeout of the state (tcp_timeouts).
func (c *tcpConn) timeout(to *Timeouts) time.Duration {
	switch c.state {
	case TCPSynSent, TCPSynSent2:
		return to.TCPSynSent
	case TCPSynRecv:
		return to.TCPSynRecv
	case TCPEstablished:
		return to.TCPEstablished
	case TCPFinWait:
		return to.TCPFinWait
	case TCPCloseWait:
		return to.TCPCloseWait
	case TCPLastAck:
		return to.TCPLastAck
	case TCPTimeWait:
		return to.TCPTimeWait
	case TCPClose:
		return to.TCPClose
	}
	return to.TCPUnacknowledged
}
