package ipv6

import (
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Extension header processing (net/ipv6/exthdrs.c): the option TLVs of
// the Hop-by-Hop and Destination Options headers, and the Routing header.
// This node recognises no option but padding and Router Alert (RFC 2711,
// Hop-by-Hop only, which it notes and ignores: we run no MLD or RSVP), and
// processes no routing type.

// hopByHop is ipv6_parse_hopopts: check and process the Hop-by-Hop
// Options header right after the fixed header. It reports whether the
// packet goes on; when not, skb was freed.
func (l *Layer) hopByHop(skb *buf.SKB) bool {
	o, err := header.CheckIPv6Options(skb.Bytes()[header.IPv6MinSize:])
	if err != nil {
		// The header or an option runs past the packet: a header error,
		// without ICMPv6 (ip6_rcv_core's "fail_and_free").
		l.count(InHdrErrors)
		skb.Free(DropBadExtHdr)
		return false
	}
	return l.processOptions(skb, header.IPv6MinSize, o, true)
}

// processOptions is ip6_parse_tlv for the options header at off. RFC 8200
// §4.2: an unrecognised option's two high-order bits say what to do:
//
//	00 - skip over this option and continue processing the header.
//	01 - discard the packet.
//	10 - discard the packet and, regardless of whether or not the
//	     packet's Destination Address was a multicast address, send an
//	     ICMP Parameter Problem, Code 2, message to the packet's Source
//	     Address, pointing to the unrecognized Option Type.
//	11 - discard the packet and, only if the packet's Destination
//	     Address was not a multicast address, send an ICMP Parameter
//	     Problem, Code 2, message to the packet's Source Address,
//	     pointing to the unrecognized Option Type.
//
// It reports whether the packet goes on; when not, skb was freed.
func (l *Layer) processOptions(skb *buf.SKB, off int, o header.IPv6Options, hbh bool) bool {
	action, ptr := header.IPv6OptActionSkip, 0
	_ = header.WalkIPv6Options(o.Options(), func(typ uint8, data []byte, at int) bool {
		if hbh && typ == header.IPv6OptRouterAlert && len(data) == 2 {
			return true
		}
		if a := header.IPv6OptionAction(typ); a != header.IPv6OptActionSkip {
			action, ptr = a, off+2+at
			return false
		}
		return true
	})
	if action == header.IPv6OptActionSkip {
		return true
	}
	l.count(InHdrErrors)
	dst := header.IPv6(skb.NetworkHeader()).Dst()
	switch action {
	case header.IPv6OptActionDiscardICMP:
		l.sendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6UnknownOption, uint32(ptr), true)
	case header.IPv6OptActionDiscardICMPUnicast:
		if !dst.IsMulticast() {
			l.sendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6UnknownOption, uint32(ptr), false)
		}
	}
	skb.Free(DropUnknownOption)
	return false
}

// routingHeader is ipv6_rthdr_rcv for a node that implements no routing
// type. RFC 8200 §4.4: "If Segments Left is zero, the node must ignore the
// Routing header and proceed to process the next header in the packet";
// otherwise, for an unrecognised Routing Type, "the node must discard the
// packet and send an ICMP Parameter Problem, Code 0, message to the
// packet's Source Address, pointing to the unrecognized Routing Type".
// RFC 5095 §3 makes type 0 exactly such a type: "IPv6 nodes MUST NOT
// process RH0 in packets whose destination address in the IPv6 header is
// an address assigned to them." It reports whether the packet goes on.
func (l *Layer) routingHeader(skb *buf.SKB, off int, r header.IPv6Routing) bool {
	if r.SegmentsLeft() == 0 {
		return true
	}
	l.count(InHdrErrors)
	l.SendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6ErroneousHeader, uint32(off+header.IPv6RoutingTypeOffset))
	skb.Free(DropRoutingHeader)
	return false
}
