package tcp

import (
	"net/netip"
	"sort"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
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
