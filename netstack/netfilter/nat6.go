package netfilter

import (
	"encoding/binary"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// NAT for IPv6 (nf_nat_ipv6_manip_pkt, nf_nat_icmpv6_reply_translation):
// stateful NAT66 as ip6tables does it, on the same bindings as IPv4. The
// IPv6 header has no checksum; the transport checksums cover the
// addresses through the pseudo-header (RFC 8200 §8.1), and so does
// ICMPv6's, unlike ICMP's.

// manipPkt6 is manipPkt for an IPv6 packet.
func manipPkt6(skb *buf.SKB, c *conntrack.Conn, dir conntrack.Dir, m conntrack.Manip) bool {
	skb.Writable()
	ip, err := header.CheckIPv6(skb.Bytes())
	if err != nil {
		return false
	}
	ip = ip[:ip.TotalLen()]
	u, err := header.IPv6SkipExtHeaders(ip)
	if err != nil {
		return false
	}
	t := target(c, dir)
	addr, port := t.Dst, t.DstPort
	if m == conntrack.ManipSrc {
		addr, port = t.Src, t.SrcPort
	}
	if u.Proto == header.ProtoICMPv6 {
		port = t.SrcPort // the identifier, in SrcPort both ways
	}
	var l4 []byte
	if u.FragOffset == 0 {
		l4 = ip[u.Offset:]
	}
	return manipL4v6(ip, u.Proto, l4, skb.Csum == buf.CsumPartial, m, addr, port, false)
}

// manipL4v6 is manipL4 for IPv6: the address of m becomes addr and, in
// l4 (nil for a non-first fragment), the port or ICMPv6 identifier port.
func manipL4v6(ip header.IPv6, proto uint8, l4 []byte, partial bool, m conntrack.Manip, addr netip.Addr, port uint16, inner bool) bool {
	var old netip.Addr
	if m == conntrack.ManipSrc {
		old = ip.Src()
		ip.SetSrc(addr)
	} else {
		old = ip.Dst()
		ip.SetDst(addr)
	}
	portOff := 0
	if m == conntrack.ManipDst {
		portOff = 2
	}
	switch proto {
	case header.ProtoTCP:
		if len(l4) < 4 {
			return l4 == nil || inner
		}
		oldPort := binary.BigEndian.Uint16(l4[portOff:])
		binary.BigEndian.PutUint16(l4[portOff:], port)
		if len(l4) >= 18 {
			updateL4Csum(l4[16:18], partial, old, addr, oldPort, port, false)
		}
	case header.ProtoUDP:
		if len(l4) < 4 {
			return l4 == nil || inner
		}
		oldPort := binary.BigEndian.Uint16(l4[portOff:])
		binary.BigEndian.PutUint16(l4[portOff:], port)
		if len(l4) >= 8 {
			// RFC 8200 §8.1: UDP over IPv6 always carries a checksum.
			updateL4Csum(l4[6:8], partial, old, addr, oldPort, port, true)
		}
	case header.ProtoICMPv6:
		if len(l4) < header.ICMPv6MinSize {
			return l4 == nil || inner
		}
		ic := header.ICMPv6(l4)
		// RFC 4443 §2.3: the checksum covers the pseudo-header, so the
		// address is folded in; a query's identifier too (icmpv6_manip_pkt).
		c := header.ChecksumUpdateAddr(ic.Checksum(), old, addr)
		if !ic.IsError() {
			if oldID := ic.ID(); oldID != port {
				binary.BigEndian.PutUint16(l4[4:], port)
				c = header.ChecksumUpdate16(c, oldID, port)
			}
		}
		binary.BigEndian.PutUint16(l4[2:], c)
	}
	return true
}

// icmpReplyTranslation6 is icmpReplyTranslation for an ICMPv6 error: the
// quoted packet is changed back to what its sender sent, the outer header
// like any packet of the flow, and the ICMPv6 checksum is recomputed over
// the final pseudo-header and message.
func icmpReplyTranslation6(skb *buf.SKB, c *conntrack.Conn, dir conntrack.Dir, m conntrack.Manip) bool {
	skb.Writable()
	ip, err := header.CheckIPv6(skb.Bytes())
	if err != nil {
		return false
	}
	ip = ip[:ip.TotalLen()]
	u, err := header.IPv6SkipExtHeaders(ip)
	if err != nil || u.Proto != header.ProtoICMPv6 || u.FragOffset != 0 || u.Offset+header.ICMPv6MinSize > len(ip) {
		return false
	}
	msg := header.ICMPv6(ip[u.Offset:])
	inner, off, ok := conntrack.CheckQuoted6(msg.Payload())
	if !ok {
		return false
	}
	iu, err := header.IPv6SkipExtHeaders(inner)
	if err != nil {
		return false
	}
	t := target(c, dir)
	innerL4 := inner[off:]
	port := t.SrcPort
	if iu.Proto != header.ProtoICMPv6 && m == conntrack.ManipDst {
		port = t.DstPort
	}
	if m == conntrack.ManipDst {
		manipL4v6(inner, iu.Proto, innerL4, false, conntrack.ManipSrc, t.Dst, port, true)
		ip.SetDst(t.Dst)
	} else {
		manipL4v6(inner, iu.Proto, innerL4, false, conntrack.ManipDst, t.Src, port, true)
		ip.SetSrc(t.Src)
	}
	msg.SetChecksum(ip.Src(), ip.Dst())
	return true
}
