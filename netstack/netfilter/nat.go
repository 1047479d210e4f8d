package netfilter

import (
	"encoding/binary"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// natDst runs at PREROUTING and OUTPUT (nf_nat_ipv4_pre_routing,
// nf_nat_ipv4_local_fn): DNAT bindings of new flows, then the destination
// rewrite of every packet that needs one.
func (nf *Netfilter) natDst(skb *buf.SKB, st State) Verdict {
	return nf.natHook(conntrack.ManipDst, skb, st)
}

// natSrc runs at POSTROUTING and INPUT (nf_nat_ipv4_out, nf_nat_ipv4_fn).
func (nf *Netfilter) natSrc(skb *buf.SKB, st State) Verdict {
	return nf.natHook(conntrack.ManipSrc, skb, st)
}

// natHook is nf_nat_inet_fn.
func (nf *Netfilter) natHook(m conntrack.Manip, skb *buf.SKB, st State) Verdict {
	c, dir, info, ok := nf.ref(skb)
	if !ok || c == nil {
		return Accept()
	}
	if info == conntrack.InfoRelated {
		if needsManip(c, dir, m) {
			if !nf.icmpReplyTranslation(skb, c, dir, m) {
				nf.stats.mangleFailed.Add(1)
				return Drop(DropNATMangle)
			}
		}
		return Accept()
	}
	if !c.Done(m) {
		if info == conntrack.InfoNew && dir == conntrack.Original {
			if ch := nf.rules.Load().byHook[tiNAT][st.Hook]; ch != nil && len(ch.Rules) > 0 {
				p := nf.getPkt(skb, st)
				v := p.run(ch)
				putPkt(p)
				if v.kind == vDrop {
					if c.Status()&conntrack.StatusConfirmed == 0 {
						nf.ct.Kill(c)
					}
					return toVerdict(v)
				}
			} else if ch != nil {
				ch.packets.Add(1)
				ch.bytes.Add(uint64(skb.Len()))
			}
		}
		if !c.Done(m) {
			nf.ct.NullBinding(c, m)
		}
	}
	if needsManip(c, dir, m) {
		if !manipPkt(skb, c, dir, m) {
			nf.stats.mangleFailed.Add(1)
			return Drop(DropNATMangle)
		}
	}
	return Accept()
}

// needsManip reports whether packets of c in dir get manip m: the
// original direction gets the binding's own manip, the reply direction the
// opposite one (undoing it).
func needsManip(c *conntrack.Conn, dir conntrack.Dir, m conntrack.Manip) bool {
	if dir == conntrack.Original {
		return c.Translated(m)
	}
	return c.Translated(m ^ 1)
}

// target is what a packet of c in dir must look like when it leaves: the
// inverse of the other direction's tuple.
func target(c *conntrack.Conn, dir conntrack.Dir) conntrack.Tuple {
	return c.Tuple(dir ^ 1).Reverse()
}

// manipPkt rewrites the source (ManipSrc) or destination of a datagram to
// the flow's target tuple, updating the IP, TCP, UDP and ICMP checksums
// incrementally (RFC 1624; nf_nat_ipv4_manip_pkt).
func manipPkt(skb *buf.SKB, c *conntrack.Conn, dir conntrack.Dir, m conntrack.Manip) bool {
	if isIPv6(skb) {
		return manipPkt6(skb, c, dir, m)
	}
	skb.Writable()
	ip, err := header.CheckIPv4(skb.Bytes())
	if err != nil {
		return false
	}
	t := target(c, dir)
	var addr netip.Addr
	var port uint16
	if m == conntrack.ManipSrc {
		addr, port = t.Src, t.SrcPort
	} else {
		addr, port = t.Dst, t.DstPort
	}
	if ip.Protocol() == header.ProtoICMP {
		port = t.SrcPort // the identifier, in SrcPort both ways
	}
	var l4 []byte
	if ip.FragOffset() == 0 {
		l4 = ip.Payload()
	}
	return manipL4(ip, l4, skb.Csum == buf.CsumPartial, m, addr, port, false)
}

// manipL4 rewrites ip's address for m to addr and, in l4 (nil for a
// non-first fragment), the port (or ICMP identifier) to port. partial says
// the transport checksum field holds an uncomplemented pseudo-header sum
// (CHECKSUM_PARTIAL). For a quoted datagram (inner) the L4 header may be
// truncated: fields beyond it are left alone.
func manipL4(ip header.IPv4, l4 []byte, partial bool, m conntrack.Manip, addr netip.Addr, port uint16, inner bool) bool {
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
	switch ip.Protocol() {
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
		if len(l4) >= 8 && (partial || binary.BigEndian.Uint16(l4[6:]) != 0) {
			// RFC 768: a zero checksum means none and stays zero.
			updateL4Csum(l4[6:8], partial, old, addr, oldPort, port, true)
		}
	case header.ProtoICMP:
		if len(l4) < header.ICMPv4MinSize {
			return l4 == nil || inner
		}
		ic := header.ICMPv4(l4)
		if ic.IsError() {
			return true
		}
		// Only queries and their answers carry an identifier to map
		// (icmp_manip_pkt); no pseudo-header, so the address is free.
		if oldID := ic.ID(); oldID != port {
			binary.BigEndian.PutUint16(l4[4:], port)
			binary.BigEndian.PutUint16(l4[2:], header.ChecksumUpdate16(ic.Checksum(), oldID, port))
		}
	}
	return true
}

// updateL4Csum updates a TCP or UDP checksum field for an address in the
// pseudo-header and a port in the header changing. A full checksum takes
// both (RFC 1624 eqn. 3). A partial one (CHECKSUM_PARTIAL) holds the
// uncomplemented pseudo-header sum the device completes, which excludes
// the ports: only the address is folded in, in the uncomplemented sense
// (inet_proto_csum_replace4 with pseudohdr).
func updateL4Csum(f []byte, partial bool, oldA, newA netip.Addr, oldP, newP uint16, udp bool) {
	c := binary.BigEndian.Uint16(f)
	if partial {
		c = ^header.ChecksumUpdateAddr(^c, oldA, newA)
	} else {
		c = header.ChecksumUpdateAddr(c, oldA, newA)
		c = header.ChecksumUpdate16(c, oldP, newP)
		if udp && c == 0 {
			c = 0xffff
		}
	}
	binary.BigEndian.PutUint16(f, c)
}

// icmpReplyTranslation translates an ICMP error about a translated flow
// (nf_nat_icmp_reply_translation): the quoted datagram, which travelled
// the other way, is changed back to what its sender sent, and the outer
// header like any packet of the flow. The ICMP checksum is recomputed over
// the message, as the kernel does.
func (nf *Netfilter) icmpReplyTranslation(skb *buf.SKB, c *conntrack.Conn, dir conntrack.Dir, m conntrack.Manip) bool {
	if isIPv6(skb) {
		return icmpReplyTranslation6(skb, c, dir, m)
	}
	skb.Writable()
	ip, err := header.CheckIPv4(skb.Bytes())
	if err != nil || ip.Protocol() != header.ProtoICMP || ip.FragOffset() != 0 {
		return false
	}
	msg := ip.Payload()
	if len(msg) < header.ICMPv4MinSize {
		return false
	}
	inner, ok := conntrack.CheckQuoted(msg[header.ICMPv4MinSize:])
	if !ok {
		return false
	}
	t := target(c, dir)
	// The quote is a packet of the other direction: our destination
	// manip is its source manip and the reverse.
	innerL4 := inner[inner.HeaderLen():]
	if m == conntrack.ManipDst {
		manipL4(inner, innerL4, false, conntrack.ManipSrc, t.Dst, innerPort(inner, t, m), true)
	} else {
		manipL4(inner, innerL4, false, conntrack.ManipDst, t.Src, innerPort(inner, t, m), true)
	}
	header.ICMPv4(msg).SetChecksum()
	if m == conntrack.ManipSrc {
		ip.SetSrc(t.Src)
	} else {
		ip.SetDst(t.Dst)
	}
	return true
}

// isIPv6 reports whether skb's bytes are an IPv6 packet (by version).
func isIPv6(skb *buf.SKB) bool {
	b := skb.Bytes()
	return len(b) > 0 && b[0]>>4 == 6
}

// innerPort is the port (or ICMP identifier) the quoted datagram gets.
func innerPort(inner header.IPv4, t conntrack.Tuple, m conntrack.Manip) uint16 {
	if inner.Protocol() == header.ProtoICMP {
		return t.SrcPort
	}
	if m == conntrack.ManipDst {
		return t.DstPort
	}
	return t.SrcPort
}
