package udp

import (
	"encoding/binary"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// V4Rcv is __udp4_lib_rcv: it consumes skb, whose Bytes() start at the UDP
// header and whose NetworkHeader() is the IPv4 header (the ipv4.Protocol
// Rcv contract). It runs on the receiving NIC's goroutine.
func (p *Proto) V4Rcv(skb *buf.SKB) {
	nh := skb.NetworkHeader()
	if len(nh) < header.IPv4MinSize {
		p.count(InErrors)
		skb.Free(DropTooSmall)
		return
	}
	ip := header.IPv4(nh)
	p.rcv(skb, ip.Src(), ip.Dst(), false)
}

// V6Rcv is __udp6_lib_rcv: V4Rcv for a datagram whose NetworkHeader() is
// the IPv6 header (the ipv6.Protocol Rcv contract: extension headers
// walked and reassembled, Bytes() starts at the UDP header). The checksum
// covers the IPv6 pseudo-header and is mandatory (RFC 8200 §8.1: "IPv6
// receivers must discard UDP packets containing a zero checksum"); a port
// nobody holds is answered with an ICMPv6 Destination Unreachable, code 4
// (RFC 4443 §3.1: "if the transport protocol has no listener").
func (p *Proto) V6Rcv(skb *buf.SKB) {
	nh := skb.NetworkHeader()
	if len(nh) < header.IPv6MinSize {
		p.count(InErrors)
		skb.Free(DropTooSmall)
		return
	}
	ip := header.IPv6(nh)
	p.rcv(skb, ip.Src(), ip.Dst(), true)
}

// rcv is the family-neutral part of V4Rcv and V6Rcv.
func (p *Proto) rcv(skb *buf.SKB, src, dst netip.Addr, v6 bool) {
	// RFC 768: Length "is the length in octets of this user datagram
	// including this header and the data"; CheckUDP verified 8 <= Length
	// <= the IP payload.
	u, err := header.CheckUDP(skb.Bytes())
	if err != nil {
		p.count(InErrors)
		skb.Free(DropTooSmall)
		return
	}
	ulen := u.Length()
	if ulen < skb.Len() {
		// Bytes past the UDP length are padding (pskb_trim_rcsum).
		skb.Trim(ulen)
		u = u[:ulen]
	}

	// RFC 768: "An all zero transmitted checksum value means that the
	// transmitter generated no checksum"; RFC 1122 §4.1.3.4: a datagram
	// with a bad checksum MUST be discarded silently. The link may have
	// verified it already (CsumUnnecessary), or the packet never left this
	// host's kernel (CsumPartial from a veth).
	if u.Checksum() == 0 && v6 {
		p.count(InCsumErrors)
		p.count(InErrors)
		skb.Free(DropCsum)
		return
	}
	if u.Checksum() != 0 && skb.Csum == buf.CsumNone {
		sum := header.Checksum(u, header.PseudoHeaderSum(header.ProtoUDP, src, dst, ulen))
		if header.Fold(sum) != 0xffff {
			p.count(InCsumErrors)
			p.count(InErrors)
			skb.Free(DropCsum)
			return
		}
	}
	sport, dport := u.SrcPort(), u.DstPort()
	if skb.Mark&netfilter.MarkDivert != 0 {
		p.divertRcv(skb, src, sport, dst, dport, v6)
		return
	}

	p.mu.RLock()
	s := p.lookup(src, sport, dst, dport)
	if s == nil {
		p.mu.RUnlock()
		// RFC 1122 §4.1.3.1: "If a datagram arrives addressed to a UDP
		// port for which there is no pending LISTEN call, UDP SHOULD send
		// an ICMP Port Unreachable message." ipv4 refuses to answer
		// broadcasts, multicasts and non-initial fragments.
		p.count(NoPorts)
		if v6 {
			p.ip6.SendICMPError(skb, header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, 0)
		} else {
			p.ip.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0)
		}
		skb.Free(DropNoSocket)
		return
	}
	notify := s.enqueue(skb, src, sport, dst, dport)
	p.mu.RUnlock()
	if notify != nil {
		notify()
	}
}

// V4Err is __udp4_lib_err: an ICMP error quoting one of our datagrams.
// It does not consume skb; skb.Bytes() starts at the quoted IPv4 header,
// followed by at least the quoted UDP ports.
//
// RFC 1122 §4.1.3.3 says UDP MUST pass every ICMP error up; as Linux does
// without IP_RECVERR, only a CONNECTED socket hears of one, and only of a
// hard one (header.ICMPError.Hard: port unreachable as ECONNREFUSED,
// protocol unreachable, parameter problem, the prohibited and unknown
// codes), stored as the socket's pending error: the next receive or send
// returns it once and the socket carries on. Soft errors (net and host
// unreachable, time exceeded, source route failed) are transient and do
// not reach the socket at all. Fragmentation needed reaches it as
// EMSGSIZE only when it sends with DF (SetDontFragment, IP_PMTUDISC_DO).
// An unconnected socket cannot tell which of its sends an error is about.
func (p *Proto) V4Err(skb *buf.SKB, e header.ICMPError) {
	b := skb.Bytes()
	if len(b) < header.IPv4MinSize {
		return
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < header.IPv4MinSize || len(b) < ihl+4 {
		return
	}
	// The quoted datagram went from us (source) to the peer (destination).
	local := netip.AddrFrom4([4]byte(b[12:16]))
	remote := netip.AddrFrom4([4]byte(b[16:20]))
	lport := binary.BigEndian.Uint16(b[ihl:])
	rport := binary.BigEndian.Uint16(b[ihl+2:])
	p.icmpError(e, local, lport, remote, rport)
}

// V6Err is __udp6_lib_err: V4Err for an ICMPv6 error (RFC 4443 §3, the
// ipv6.Protocol Err contract: skb.Bytes() starts at the quoted IPv6
// header, TransportHeader() at the quoted UDP header). Port unreachable
// is hard (ECONNREFUSED on a connected socket, RFC 4443 §3.1 / RFC 1122
// §4.1.3.3), as are the admin-prohibited codes and Parameter Problem;
// no route, address unreachable and Time Exceeded are soft; Packet Too
// Big (RFC 8201 §4) reaches a connected socket with SetDontFragment as
// EMSGSIZE (IPV6_DONTFRAG), as V4Err's fragmentation needed.
func (p *Proto) V6Err(skb *buf.SKB, e header.ICMPError) {
	b, th := skb.Bytes(), skb.TransportHeader()
	if len(b) < header.IPv6MinSize || len(th) < 4 {
		return
	}
	ip := header.IPv6(b)
	p.icmpError(e, ip.Src(), binary.BigEndian.Uint16(th), ip.Dst(), binary.BigEndian.Uint16(th[2:]))
}

// icmpError delivers an ICMP error about the datagram local:lport →
// remote:rport to the connected socket it came from (see V4Err), whatever
// the family of the message.
func (p *Proto) icmpError(e header.ICMPError, local netip.Addr, lport uint16, remote netip.Addr, rport uint16) {
	pmtu := e.PathMTU()
	if !e.Hard && !pmtu {
		p.count(ICMPSoftErrors)
		return
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	s := p.lookup(remote, rport, local, lport)
	if s == nil || !s.connected {
		// Linux without IP_RECVERR: unconnected sockets never hear of
		// ICMP errors.
		return
	}
	if pmtu && !s.dontFragment() {
		// IP_PMTUDISC_DONT: our datagrams may be fragmented on the
		// way; the error is not this socket's business.
		return
	}
	p.count(ICMPHardErrors)
	s.setError(e.Errno)
}
