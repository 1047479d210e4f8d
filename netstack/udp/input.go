package udp

import (
	"encoding/binary"
	"net/netip"
	"syscall"

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
	src, dst := ip.Src(), ip.Dst()

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
		p.divertRcv(skb, src, sport, dst, dport)
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
		p.ip.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0)
		skb.Free(DropNoSocket)
		return
	}
	s.enqueue(skb, src, sport, dst, dport)
	p.mu.RUnlock()
}

// V4Err is __udp4_lib_err: an ICMP error quoting one of our datagrams.
// It does not consume skb; skb.Bytes() starts at the quoted IPv4 header,
// followed by at least the quoted UDP ports.
func (p *Proto) V4Err(skb *buf.SKB, errno syscall.Errno, info uint32) {
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

	if !hardError(errno) {
		return
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	s := p.lookup(remote, rport, local, lport)
	if s == nil || !s.connected {
		// Linux without IP_RECVERR: unconnected sockets never hear of
		// ICMP errors (see the package doc for RFC 1122 §4.1.3.3).
		return
	}
	s.setError(errno)
}

// hardError reports whether an ICMP error is fatal in icmp_err_convert's
// sense, the only ones __udp4_lib_err reports without IP_RECVERR: port and
// protocol unreachable, parameter problem, host unknown or isolated, and
// fragmentation needed (EMSGSIZE, unless IP_PMTUDISC_DONT). ipv4 hands us
// the errno, not the code, so the administratively prohibited codes, which
// Linux deems fatal but which share EHOSTUNREACH/ENETUNREACH with the soft
// unreachables and time exceeded, are treated as soft here.
func hardError(errno syscall.Errno) bool {
	switch errno {
	case syscall.ECONNREFUSED, syscall.ENOPROTOOPT, syscall.EPROTO, syscall.EHOSTDOWN,
		syscall.ENONET, syscall.EMSGSIZE:
		return true
	}
	return false
}
