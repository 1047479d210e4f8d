package udp

import (
	"net/netip"
	"sort"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// Read-only introspection for `cni-userstack ss -u` (`ss -uan`): every
// bound socket and the intercept socket, read under Proto.mu (read) and
// each Socket.mu in the lock order (Proto.mu > Socket.mu). Not on a packet
// path.

func init() {
	buf.SetDropLayer("udp", DropTooSmall, DropCsum, DropNoSocket, DropRcvBuf, DropClose, DropBadPort,
		DropNotToLocal)
}

// SockInfo is one line of `ss -uan`.
type SockInfo struct {
	Local     netip.AddrPort
	Remote    netip.AddrPort // invalid unless Connected
	Connected bool
	// RecvQ is the truesize charged by queued datagrams (sk_rmem_alloc);
	// RcvBuf its bound; Drops the datagrams refused for want of room
	// (sk_drops).
	RecvQ, RcvBuf int
	Drops         uint64
	Transparent   bool
	// Intercept marks the proxy's intercept socket (every diverted
	// datagram without a connected socket of its own arrives there).
	Intercept bool
}

// Sockets returns every bound socket and the intercept socket, sorted by
// local then remote address.
func (p *Proto) Sockets() []SockInfo {
	p.mu.RLock()
	var out []SockInfo
	for _, list := range p.ports {
		for _, s := range list {
			out = append(out, s.info())
		}
	}
	if p.icpt != nil {
		out = append(out, p.icpt.info())
	}
	p.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Local.Compare(out[j].Local); c != 0 {
			return c < 0
		}
		return out[i].Remote.Compare(out[j].Remote) < 0
	})
	return out
}

// info is called with p.mu held (read): the address fields are stable.
func (s *Socket) info() SockInfo {
	laddr := s.laddr
	if !laddr.IsValid() {
		laddr = netip.IPv4Unspecified()
	}
	si := SockInfo{Local: netip.AddrPortFrom(laddr, s.lport), Connected: s.connected, Intercept: s.intercept}
	if s.connected {
		si.Remote = netip.AddrPortFrom(s.raddr, s.rport)
	}
	s.mu.Lock()
	si.RecvQ, si.RcvBuf, si.Drops, si.Transparent = s.rmem, s.rcvbuf, s.drops, s.transparent
	s.mu.Unlock()
	return si
}
