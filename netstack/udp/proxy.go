package udp

import (
	"net/netip"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Proxy mode (see the package doc, "Transparent proxying"): the intercept
// socket, transparent sends and transparent connected sockets.

// divertRcv delivers a datagram carrying netfilter.MarkDivert: to the
// connected socket with its exact 4-tuple, else to the intercept socket,
// never to a bound or wildcard socket. With neither, RFC 1122 §4.1.3.1's
// port unreachable is sent from the foreign destination. It consumes skb.
func (p *Proto) divertRcv(skb *buf.SKB, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, v6 bool) {
	p.mu.RLock()
	s := p.lookupConnected(src, sport, dst, dport)
	if s == nil {
		s = p.icpt
	}
	if s == nil {
		p.mu.RUnlock()
		p.count(NoPorts)
		p.count(DivertNoPorts)
		// The quote is the IP header and the datagram; ipv4 trims it
		// to fit 576 bytes (ipv6: 1280, RFC 4443 §2.4(c)) and refuses
		// what must not be answered.
		if v6 {
			_ = p.ip6.SendICMPErrorQuote(dst, src, header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, 0,
				skb.NetworkHeader())
		} else {
			_ = p.ip.SendICMPErrorQuote(dst, src, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0,
				skb.NetworkHeader())
		}
		skb.Free(DropNoSocket)
		return
	}
	p.count(InDiverted)
	notify := s.enqueue(skb, src, sport, dst, dport)
	p.mu.RUnlock()
	if notify != nil {
		notify()
	}
}

// lookupConnected finds the connected socket whose 4-tuple is exactly
// daddr:dport ← saddr:sport. Called with p.mu held for reading.
func (p *Proto) lookupConnected(saddr netip.Addr, sport uint16, daddr netip.Addr, dport uint16) *Socket {
	for _, s := range p.ports[dport] {
		if s.connected && s.laddr == daddr && s.raddr == saddr && s.rport == sport {
			return s
		}
	}
	return nil
}

// Intercept returns the Proto's intercept socket: it receives every
// diverted datagram that matches no connected socket by 4-tuple, with
// RecvMsg's Meta.From the sender (the pod) and Meta.To the original
// destination. It is not bound to a port: Bind, Connect and SendTo fail
// with EINVAL (Send with EDESTADDRREQ); it answers with SendFromTo. One per Proto: a second
// is EADDRINUSE until the first is closed. Its receive queue is bounded
// like any socket's (SetReadBuffer; overflow is dropped and counted in
// RcvbufErrors).
func (p *Proto) Intercept() (*Socket, error) {
	s := p.NewSocket()
	s.intercept = true
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.icpt != nil {
		return nil, syscall.EADDRINUSE
	}
	p.icpt = s
	return s, nil
}

// SetTransparent sets IP_TRANSPARENT: Bind, Connect and sends may use a
// local address that is not the stack's, and every datagram carries
// route.Flow.Transparent and netfilter.MarkDivert, so the conntrack hook
// at OUTPUT marks the flow and the peer's replies to that address are
// diverted to this socket (a connected socket gets them by 4-tuple).
func (s *Socket) SetTransparent(on bool) {
	s.mu.Lock()
	s.transparent = on
	s.mu.Unlock()
}

// SendFromTo sends p as one datagram from `from` to `to`; from need not
// be an address of the stack (route.Flow.Transparent) and the datagram
// carries netfilter.MarkDivert. The intercept socket answers a pod this
// way, from the address and port the pod sent to. Any socket may use it;
// its own binding is neither needed nor used. Errors as SendTo, and
// EINVAL for a zero port or addresses of two families (IPv4-mapped ones
// are IPv4).
func (s *Socket) SendFromTo(p []byte, from, to netip.AddrPort) (int, error) {
	src := from.Addr().Unmap().WithZone("")
	dst, znic, err := s.p.zoneNIC(to.Addr().Unmap())
	if err != nil {
		return 0, err
	}
	ip, ok := s.p.af(dst)
	if !ok || src.Is4() != dst.Is4() || !src.IsValid() || from.Port() == 0 || to.Port() == 0 {
		return 0, syscall.EINVAL
	}
	if len(p) > maxPayload(dst) {
		return 0, syscall.EMSGSIZE
	}
	s.mu.Lock()
	if err := s.sendCheckLocked(); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	fl := route.Flow{Src: src, Dst: dst, Proto: header.ProtoUDP, TOS: s.tos, TTL: s.ttl, NIC: s.nic,
		DontFragment: s.dontFrag, SrcPort: from.Port(), DstPort: to.Port(),
		Transparent: true, Mark: netfilter.MarkDivert}
	if znic != 0 {
		fl.NIC = znic
	}
	broadcastOK := s.broadcast
	s.mu.Unlock()
	res, err := ip.RouteOutput(fl)
	if err != nil {
		return 0, errnoOf(err)
	}
	if res.Type == route.Broadcast && !broadcastOK {
		return 0, syscall.EACCES
	}
	return s.xmit(ip, p, fl)
}

// DialTransparent returns a transparent socket (SetTransparent) bound to
// laddr, which need not be local (port 0 picks an ephemeral one), and
// connected to raddr: the proxy's per-client socket of a UDP port
// mapping, sending into a pod from the client's address. Two such
// sockets conflict only when their 4-tuples are equal (EADDRINUSE), as
// with SO_REUSEADDR: a diverted reply is matched by 4-tuple first, and a
// foreign laddr never receives undiverted traffic. Errors: EADDRNOTAVAIL
// for an laddr that is not a single IPv4 or IPv6 host, EAFNOSUPPORT for
// an raddr of another family, EINVAL for a zero raddr port, the routing
// errors, ENOBUFS past MaxSockets.
func (p *Proto) DialTransparent(laddr, raddr netip.AddrPort) (*Socket, error) {
	la := laddr.Addr().Unmap()
	if !la.IsValid() || la.IsUnspecified() || la.IsMulticast() || la == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || la.Zone() != "" {
		return nil, syscall.EADDRNOTAVAIL
	}
	ra, znic, err := p.zoneNIC(raddr.Addr().Unmap())
	if err != nil {
		return nil, err
	}
	ip, ok := p.af(ra)
	if !ok || ra.Is4() != la.Is4() {
		return nil, syscall.EAFNOSUPPORT
	}
	if raddr.Port() == 0 {
		return nil, syscall.EINVAL
	}
	s := p.NewSocket()
	s.transparent = true
	res, err := ip.RouteOutput(route.Flow{Src: la, Dst: ra, Proto: header.ProtoUDP, Transparent: true,
		Mark: netfilter.MarkDivert, SrcPort: laddr.Port(), DstPort: raddr.Port(), NIC: znic})
	if err != nil {
		return nil, errnoOf(err)
	}
	if res.Type == route.Broadcast {
		return nil, syscall.EACCES
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.nbound >= p.cfg.MaxSockets {
		return nil, syscall.ENOBUFS
	}
	taken := func(port uint16) bool { return p.lookupConnected(ra, raddr.Port(), la, port) != nil }
	port := laddr.Port()
	if port == 0 {
		var ok bool
		if port, ok = p.pickEphemeral(taken); !ok {
			return nil, syscall.EADDRINUSE
		}
	} else if taken(port) {
		return nil, syscall.EADDRINUSE
	}
	p.ports[port] = append(p.ports[port], s)
	p.nbound++
	s.laddr, s.lport, s.addrLocked = la, port, true
	s.raddr, s.rport, s.rnic, s.connected = ra, raddr.Port(), znic, true
	return s, nil
}
