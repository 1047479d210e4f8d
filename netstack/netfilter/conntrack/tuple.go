package conntrack

import (
	"fmt"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Dir is a flow direction (enum ip_conntrack_dir).
type Dir uint8

const (
	Original Dir = iota
	Reply
)

func (d Dir) String() string {
	if d == Original {
		return "original"
	}
	return "reply"
}

// Tuple identifies one direction of a flow (struct nf_conntrack_tuple).
// For ICMP queries SrcPort holds the identifier and DstPort is 0; for
// protocols without ports both are 0.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
}

// Reverse is the tuple of the other direction (nf_ct_invert_tuple). An
// ICMP query's identifier stays in SrcPort.
func (t Tuple) Reverse() Tuple {
	r := Tuple{Src: t.Dst, Dst: t.Src, Proto: t.Proto, SrcPort: t.DstPort, DstPort: t.SrcPort}
	if isICMP(t.Proto) {
		r.SrcPort, r.DstPort = t.SrcPort, 0
	}
	return r
}

func (t Tuple) String() string {
	switch t.Proto {
	case header.ProtoTCP, header.ProtoUDP:
		return fmt.Sprintf("src=%v dst=%v sport=%d dport=%d", t.Src, t.Dst, t.SrcPort, t.DstPort)
	case header.ProtoICMP, header.ProtoICMPv6:
		return fmt.Sprintf("src=%v dst=%v id=%d", t.Src, t.Dst, t.SrcPort)
	}
	return fmt.Sprintf("src=%v dst=%v", t.Src, t.Dst)
}

// hasPorts reports whether the protocol's tuple carries ports (or an ICMP id).
func hasPorts(proto uint8) bool {
	return proto == header.ProtoTCP || proto == header.ProtoUDP || isICMP(proto)
}

// isICMP reports ICMP or ICMPv6, whose queries keep their identifier in
// SrcPort both ways.
func isICMP(proto uint8) bool { return proto == header.ProtoICMP || proto == header.ProtoICMPv6 }

// icmpQuery reports whether typ is an ICMP query that opens a flow and the
// type of its answer (nf_conntrack_proto_icmp's invmap).
func icmpQuery(typ uint8) (reply uint8, ok bool) {
	switch typ {
	case header.ICMPv4Echo:
		return header.ICMPv4EchoReply, true
	case header.ICMPv4Timestamp:
		return header.ICMPv4TimestampReply, true
	case 15: // information request (RFC 792)
		return 16, true
	case 17: // address mask request (RFC 950)
		return 18, true
	}
	return 0, false
}

func icmpReply(typ uint8) bool {
	return typ == header.ICMPv4EchoReply || typ == header.ICMPv4TimestampReply || typ == 16 || typ == 18
}

// Packet is what tracking needs of a datagram, parsed once. Parse fills it
// from an IPv4 datagram or an IPv6 packet (the IPv4 or the IPv6 fields);
// the views alias the packet.
type Packet struct {
	IP     header.IPv4
	L4     []byte // transport header and payload; nil for a non-first fragment
	Tuple  Tuple
	TCP    header.TCP // set for TCP
	ICMP   header.ICMPv4
	Inner  header.IPv4 // for an ICMP error: the quoted datagram
	Length int

	// IPv6 (ipv6.go): the packet, its ICMPv6 message, and for an ICMPv6
	// error the quoted packet with the offset of its upper-layer header.
	IP6        header.IPv6
	L4Off      int // offset of L4 in the packet (IPv6: past the extension headers)
	ICMP6      header.ICMPv6
	Inner6     header.IPv6
	InnerL4Off int
}

// Parse errors.
var (
	ErrMalformed = fmt.Errorf("conntrack: malformed datagram")
	ErrFragment  = fmt.Errorf("conntrack: non-first fragment")
)

// Parse reads an IPv4 datagram or, by its version, an IPv6 packet into p
// (nf_ct_get_tuple). It never panics: a datagram whose transport header
// is cut short is ErrMalformed.
func Parse(b []byte, p *Packet) error {
	*p = Packet{}
	if len(b) > 0 && b[0]>>4 == 6 {
		return parse6(b, p)
	}
	ip, err := header.CheckIPv4(b)
	if err != nil {
		return ErrMalformed
	}
	p.IP = ip
	p.Length = ip.TotalLen()
	p.L4Off = ip.HeaderLen()
	p.Tuple = Tuple{Src: ip.Src(), Dst: ip.Dst(), Proto: ip.Protocol()}
	if ip.FragOffset() != 0 {
		return ErrFragment
	}
	l4 := ip.Payload()
	p.L4 = l4
	switch p.Tuple.Proto {
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
	case header.ProtoICMP:
		ic, err := header.CheckICMPv4(l4)
		if err != nil {
			return ErrMalformed
		}
		p.ICMP = ic
		if ic.IsError() {
			inner, ok := CheckQuoted(ic.Payload())
			if !ok {
				return ErrMalformed
			}
			p.Inner = inner
		} else if _, ok := icmpQuery(ic.Type()); ok || icmpReply(ic.Type()) {
			p.Tuple.SrcPort = ic.ID()
		}
	}
	return nil
}

// innerTuple is the tuple of the datagram quoted by an ICMP error; the
// quote holds at least 8 bytes of its transport header (RFC 792), enough
// for ports and an ICMP identifier.
func innerTuple(in header.IPv4) (Tuple, bool) {
	t := Tuple{Src: in.Src(), Dst: in.Dst(), Proto: in.Protocol()}
	if in.FragOffset() != 0 {
		return t, false
	}
	l4 := in[in.HeaderLen():]
	switch t.Proto {
	case header.ProtoTCP, header.ProtoUDP:
		if len(l4) < 4 {
			return t, false
		}
		t.SrcPort = uint16(l4[0])<<8 | uint16(l4[1])
		t.DstPort = uint16(l4[2])<<8 | uint16(l4[3])
	case header.ProtoICMP:
		if len(l4) < header.ICMPv4MinSize {
			return t, false
		}
		ic := header.ICMPv4(l4)
		if ic.IsError() {
			return t, false // RFC 1122 §3.2.2: no error about an error
		}
		t.SrcPort = ic.ID()
	}
	return t, true
}

// CheckQuoted validates the datagram quoted in an ICMP error: a whole IPv4
// header with at least 8 bytes after it (RFC 792). Its total length may
// exceed the quote, so only HeaderLen, addresses, protocol, fragment
// fields and the bytes after the header may be used.
func CheckQuoted(b []byte) (header.IPv4, bool) {
	if len(b) < header.IPv4MinSize || b[0]>>4 != 4 {
		return nil, false
	}
	hl := int(b[0]&0xf) * 4
	if hl < header.IPv4MinSize || hl+8 > len(b) {
		return nil, false
	}
	return header.IPv4(b), true
}
