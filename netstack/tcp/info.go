package tcp

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// Read-only introspection for `cni-userstack ss -t` (`ss -tin`) and the
// TCP metrics. Sockets copies the socket pointers out of the tables under
// Proto.mu (read) and then takes each socket's lock on its own, as the
// lock order (Sock.mu > Proto.mu) requires; a socket closing meanwhile is
// listed in the state it had. StateCounts reads the lock-free state
// mirror under Proto.mu only. Nothing here runs on a packet path.

func init() {
	buf.SetDropLayer("tcp", DropTooSmall, DropCsum, DropFlags, DropNoSocket, DropInvalidSeq, DropReset,
		DropInvalidSyn, DropTooOldAck, DropAckUnsent, DropOFODrop, DropZeroWindow, DropOverWindow,
		DropOldData, DropPAWS, DropListenOverflow, DropClose, DropNoAck, DropState, DropSocketFull,
		DropInterceptDup, DropInterceptFull)
}

// SockInfo is one line of `ss -tin`.
type SockInfo struct {
	Local, Remote netip.AddrPort // Remote is invalid for a listener
	State         State
	// RecvQ and SendQ are ss's columns: for a connection the bytes
	// received and not read by the user, and the bytes written and not
	// acknowledged (sent or not); for a listener the connections waiting
	// in the accept queue and the backlog.
	RecvQ, SendQ int
	// Transparent is IP_TRANSPARENT (an intercepted child or a
	// DialTransparent socket: Local need not be an address of the stack).
	Transparent bool
	Mark        uint32
	// Info is TCP_INFO; zero for a listener.
	Info Info
}

// Sockets returns every connection (TIME-WAIT included) and listener,
// sorted by local then remote address.
func (p *Proto) Sockets() []SockInfo {
	p.mu.RLock()
	socks := make([]*Sock, 0, len(p.conns)+len(p.listeners))
	for _, s := range p.conns {
		socks = append(socks, s)
	}
	for _, l := range p.listeners {
		socks = append(socks, l...)
	}
	p.mu.RUnlock()
	out := make([]SockInfo, 0, len(socks))
	for _, s := range socks {
		out = append(out, s.sockInfo())
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Local.Compare(out[j].Local); c != 0 {
			return c < 0
		}
		return out[i].Remote.Compare(out[j].Remote) < 0
	})
	return out
}

func (s *Sock) sockInfo() SockInfo {
	s.mu.Lock()
	si := SockInfo{Local: netip.AddrPortFrom(s.id.laddr, s.id.lport), State: s.state,
		Transparent: s.transparent, Mark: s.mark}
	if s.id.raddr.IsValid() {
		si.Remote = netip.AddrPortFrom(s.id.raddr, s.id.rport)
	}
	listener := s.state == Listen
	if listener {
		si.RecvQ, si.SendQ = len(s.acceptQ), s.backlog
	} else {
		si.RecvQ = s.rcvq.len()
	}
	s.mu.Unlock()
	if !listener {
		si.Info = s.Info()
		si.SendQ = si.Info.Unacked + si.Info.NotSent
	}
	return si
}

// StateCounts returns the sockets in each state: every connection of the
// table (TIME-WAIT included) and every listener.
func (p *Proto) StateCounts() map[State]int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	m := make(map[State]int, len(stateNames))
	for _, s := range p.conns {
		m[State(s.stateA.Load())]++
	}
	for _, l := range p.listeners {
		m[Listen] += len(l)
	}
	return m
}

// States lists every state in RFC 9293 §3.3.2's order.
func States() []State {
	out := make([]State, len(stateNames))
	for i := range out {
		out[i] = State(i)
	}
	return out
}

// DebugString is the sender's and receiver's whole state, one field
// group a line, for a test that found a connection stuck (a transfer past
// its deadline): sequence numbers relative to the ISS and the IRS, the
// send queue, congestion control, every timer (mode, armed, when it fires
// from now), the recovery, SACK, RACK and TLP state, ACK scheduling and
// the user side. Not on any packet path; it takes s.mu.
func (s *Sock) DebugString() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.p.clk.Now()
	var b strings.Builder
	rel := func(x uint32) int64 { return int64(int32(x - s.iss)) }
	// opt is rel for the fields where 0 means none (tlpHigh, lostBelow).
	opt := func(x uint32) string {
		if x == 0 {
			return "none"
		}
		return fmt.Sprint(rel(x))
	}
	timer := func(name string, t *clock.Timer) {
		if d := t.Deadline(); !d.IsZero() {
			fmt.Fprintf(&b, " %s=in %v", name, d.Sub(now))
		} else {
			fmt.Fprintf(&b, " %s=off", name)
		}
	}
	ago := func(t time.Time) string {
		switch {
		case t.IsZero():
			return "never"
		case t.After(now):
			return "in " + t.Sub(now).String()
		}
		return now.Sub(t).String() + " ago"
	}
	fmt.Fprintf(&b, "%v:%d>%v:%d %v err=%v softErr=%v\n", s.id.laddr, s.id.lport, s.id.raddr, s.id.rport,
		s.state, s.err, s.softErr)
	fmt.Fprintf(&b, "snd: una=%d nxt=%d max=%d bufSeq=%d dataEnd=%d wnd=%d maxWnd=%d wl1=%d wl2=%d wscale=%d mss=%d curMSS=%d gso=%v finQueued=%v\n",
		rel(s.sndUna), rel(s.sndNxt), rel(s.sndMax), rel(s.bufSeq), rel(s.dataEnd()), s.sndWnd, s.maxSndWnd,
		int64(int32(s.sndWl1-s.irs)), rel(s.sndWl2), s.sndWscale, s.mss, s.curMSS(), s.gso, s.finQueued)
	q := &s.sndBuf
	fmt.Fprintf(&b, "sndq: bytes=%d limit=%d chunks=%d chunkBytes=%d reserved=%v released=%v writing=%v curOff=%d",
		q.len(), s.sndBufLimit, q.q.Len(), q.q.Bytes(), q.reserved, q.released, s.writing, q.curOff)
	if c := q.q.Front(); c != nil {
		fmt.Fprintf(&b, " front{len=%d shared=%v}", c.Len(), c.Shared())
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "cc: %s cwnd=%d ssthresh=%d cwndCnt=%d inFlight=%d (segs %d) dupAcks=%d inRecovery=%v recover=%d highRxt=%d tlpHigh=%s lostBelow=%s headRtx=%v@%d/%d\n",
		s.ccName(), s.cs.Cwnd, s.cs.Ssthresh, s.cs.CwndCnt, s.inFlight(), s.segs(s.inFlight()), s.dupAcks, s.inRecovery,
		rel(s.recover), rel(s.highRxt), opt(s.tlpHigh), opt(s.lostBelow), s.headRtxValid, rel(s.headRtxSeq), rel(s.headRtxMark))
	fmt.Fprintf(&b, "rtt: srtt=%v rttvar=%v minRTT=%v rto=%v backoff=%d backedOff=%v timing=%v lastSend=%s retrans=%d\n",
		s.srtt, s.rttvar, s.minRTT, s.rto, s.backoff, s.backedOffRTO(), s.rttTiming, ago(s.lastSend), s.retransTotal)
	modes := [...]string{rtxRetrans: "retrans", rtxProbe: "probe", rtxTLP: "tlp"}
	fmt.Fprintf(&b, "timers: rtxMode=%s", modes[s.rtxMode])
	timer("rtx", &s.rtxTimer)
	timer("delack", &s.delackTimer)
	timer("ka", &s.kaTimer)
	timer("deadline", &s.dlTimer)
	timer("rack", &s.rackTimer)
	fmt.Fprintf(&b, " kaArmed=%v\n", s.kaArmed)
	fmt.Fprintf(&b, "sacked(%d):", len(s.sacked))
	for _, r := range s.sacked {
		fmt.Fprintf(&b, " [%d,%d)", rel(r.start), rel(r.end))
	}
	r := &s.rack
	fmt.Fprintf(&b, "\nrack: have=%v xmitTS=%v endSeq=%d rtt=%v fack=%d reorderSeen=%v reoWnd=%v mult=%d rtoRecovery=%v rtoRecover=%d tlpEpisode=%v tlpEnd=%d tlpRetrans=%v txRecs=%d rtxRecs=%d\n",
		r.have, r.xmitTS, rel(r.endSeq), r.rtt, rel(r.fack), r.reorderSeen, s.rackReoWnd(), r.reoWndMult,
		r.rtoRecovery, rel(r.rtoRecover), r.tlpEpisode, rel(r.tlpEnd), r.tlpRetrans, r.txN, len(r.rtxq))
	fmt.Fprintf(&b, "rcv: nxt=%d adv=%d wnd=%d q=%d limit=%d ofo=%d finRcvd=%v ackPending=%v ackDeferred=%v inBatch=%v unacked=%d quickAcks=%d lastRcv=%s\n",
		int64(int32(s.rcvNxt-s.irs)), int64(int32(s.rcvAdv-s.irs)), s.rcvWnd(), s.rcvq.len(), s.rcvBufLimit, len(s.ofo),
		s.finRcvd, s.ackPending, s.ackDeferred, s.inBatch, s.unackedBytes, s.quickAcks, ago(s.lastRcv))
	fmt.Fprintf(&b, "user: wrShut=%v rdShut=%v orphan=%v nonblock=%v nodelay=%v cork=%v wrDeadline=%s events=%d notify=%v segsOut=%d segsIn=%d acked=%d\n",
		s.wrShut, s.rdShut, s.orphan, s.nonblock, s.nodelay, s.cork, ago(s.wrDeadline), s.events, s.notify != nil,
		s.segsOut, s.segsIn, s.bytesAcked)
	return b.String()
}

// DebugDump is DebugString of every connection of p, TIME-WAIT's
// included, for a test that found a transfer stuck and cannot reach the
// sockets itself (a relay's, behind an interceptor). Not on any packet
// path. The sockets are copied out of the table first (lock order:
// Sock.mu > Proto.mu).
func (p *Proto) DebugDump() string {
	p.mu.RLock()
	socks := make([]*Sock, 0, len(p.conns))
	for _, s := range p.conns {
		socks = append(socks, s)
	}
	p.mu.RUnlock()
	var b strings.Builder
	for _, s := range socks {
		b.WriteString(s.DebugString())
	}
	return b.String()
}

func (s *Sock) ccName() string {
	if s.ca == nil {
		return "none"
	}
	return s.ca.Name()
}
