package conntrack

import "github.com/cni-userstack/cni-userstack/netstack/header"

// IPv6 tracking (nf_conntrack_l3proto_ipv6 / nf_conntrack_proto_icmpv6):
// the tuple is found past the extension headers (ipv6_skip_exthdr), ICMPv6
// echo requests open flows keyed by their identifier as ICMP's do, ICMPv6
// errors are RELATED to the flow of the packet they quote, and Neighbor
// Discovery, MLD and router messages are not tracked.

// icmp6Query reports whether typ is an ICMPv6 query that opens a flow and
// the type of its answer (icmpv6_invmap: echo, and node information RFC
// 4620).
func icmp6Query(typ uint8) (reply uint8, ok bool) {
	switch typ {
	case header.ICMPv6EchoRequest:
		return header.ICMPv6EchoReply, true
	case 139: // node information query
		return 140, true
	}
	return 0, false
}

func icmp6Reply(typ uint8) bool { return typ == header.ICMPv6EchoReply || typ == 140 }

// parse6 is Parse for an IPv6 packet.
func parse6(b []byte, p *Packet) error {
	ip, err := header.CheckIPv6(b)
	if err != nil {
		return ErrMalformed
	}
	b = b[:ip.TotalLen()]
	p.IP6 = ip
	p.Length = ip.TotalLen()
	p.Tuple = Tuple{Src: ip.Src(), Dst: ip.Dst()}
	u, err := header.IPv6SkipExtHeaders(b)
	if err != nil {
		return ErrMalformed
	}
	p.Tuple.Proto = u.Proto
	if u.FragOffset != 0 {
		return ErrFragment
	}
	l4 := b[u.Offset:]
	p.L4, p.L4Off = l4, u.Offset
	switch u.Proto {
	case header.ProtoTCP:
		t, err := header.CheckTCP(l4)
		if err != nil {
			return ErrMalformed
		}
		p.TCP = t
		p.Tuple.SrcPort, p.Tuple.DstPort = t.SrcPort(), t.DstPort()
	case header.ProtoUDP:
		if len(l4) < header.UDPSize {
			return ErrMalformed
		}
		u := header.UDP(l4)
		p.Tuple.SrcPort, p.Tuple.DstPort = u.SrcPort(), u.DstPort()
	case header.ProtoICMPv6:
		ic, err := header.CheckICMPv6(l4)
		if err != nil {
			return ErrMalformed
		}
		p.ICMP6 = ic
		if ic.IsError() {
			inner, off, ok := CheckQuoted6(ic.Payload())
			if !ok {
				return ErrMalformed
			}
			p.Inner6, p.InnerL4Off = inner, off
		} else if _, q := icmp6Query(ic.Type()); q || icmp6Reply(ic.Type()) {
			p.Tuple.SrcPort = ic.ID()
		}
	}
	return nil
}

// CheckQuoted6 validates the packet quoted in an ICMPv6 error: an IPv6
// header and its extension headers, then at least 8 bytes of the upper
// layer (RFC 4443 §2.4(c) quotes as much as fits; §2.4(d) finds the upper
// layer past the extension headers). Its payload length may exceed the
// quote. It returns the upper layer's offset.
func CheckQuoted6(b []byte) (header.IPv6, int, bool) {
	if len(b) < header.IPv6MinSize || b[0]>>4 != 6 {
		return nil, 0, false
	}
	u, err := header.IPv6SkipExtHeaders(b)
	if err != nil || u.FragOffset != 0 || u.Offset+8 > len(b) {
		return nil, 0, false
	}
	return header.IPv6(b), u.Offset, true
}

// innerTuple6 is the tuple of the packet quoted by an ICMPv6 error.
func innerTuple6(in header.IPv6, off int) (Tuple, bool) {
	u, err := header.IPv6SkipExtHeaders(in)
	if err != nil {
		return Tuple{}, false
	}
	t := Tuple{Src: in.Src(), Dst: in.Dst(), Proto: u.Proto}
	l4 := in[off:]
	switch t.Proto {
	case header.ProtoTCP, header.ProtoUDP:
		t.SrcPort = uint16(l4[0])<<8 | uint16(l4[1])
		t.DstPort = uint16(l4[2])<<8 | uint16(l4[3])
	case header.ProtoICMPv6:
		ic := header.ICMPv6(l4)
		if ic.IsError() {
			return t, false // RFC 4443 §2.4(e.1): no error about an error
		}
		t.SrcPort = ic.ID()
	}
	return t, true
}
