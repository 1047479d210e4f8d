package ipv6

import (
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inet"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Layout of skb.CB while ipv6 owns a packet (struct inet6_skb_parm): byte
// cbFlags; bytes inet.CBBacklog..inet.CBBacklogEnd-1 are the backlog
// entry's (netstack/inet) while a packet waits there; the path that takes
// a packet in clears CB[:inet.CBBacklogEnd]. Bytes 12..14 hold
// frag_max_size, written by netfilter's reassembly
// (netfilter.FragMaxSize); bytes 16.. are netfilter's.
const cbFlags = 0 // flag* bits

// CB flag bits.
const (
	// flagMulticast: delivered for a multicast group we listen to.
	flagMulticast = 1 << iota
	// flagDontFrag: a local sender asked not to fragment (IPV6_DONTFRAG).
	flagDontFrag
	// flagForward: a forwarded packet: never fragmented here (RFC 8200
	// §5: only sources fragment), and sized without our PMTU cache.
	flagForward
)

// Rcv is ipv6_rcv (ip6_rcv_core), the dev.Handler for EtherTypeIPv6. It
// consumes skb, whose bytes start at the IPv6 header. nic may be nil when
// skb.InNIC is set (tests).
func (l *Layer) Rcv(nic *dev.NIC, skb *buf.SKB) {
	if nic != nil {
		skb.InNIC = nic.ID()
	}
	l.count(InReceives)
	clear(skb.CB[:inet.CBBacklogEnd])
	h, err := header.CheckIPv6(skb.Bytes())
	if err != nil {
		if err == header.ErrBadTotalLen {
			// ip6_rcv_core: a payload length past the buffer is a
			// truncated packet, not a header error.
			l.count(InTruncatedPkts)
			skb.Free(DropTooSmall)
			return
		}
		l.count(InHdrErrors)
		skb.Free(DropHdrError)
		return
	}
	// A NIC without an IPv6 address has IPv6 off (disable_ipv6): the
	// packet is not ours to look at.
	if skb.InNIC != 0 && !l.fib.HasIPv6(skb.InNIC) {
		l.count(InDiscards)
		skb.Free(DropDisabled)
		return
	}
	src, dst := h.Src(), h.Dst()
	// RFC 4291 §2.7: "Multicast addresses must not be used as source
	// addresses"; §2.5.3: the loopback address "must never be sent
	// outside a single node"; §2.5.5.2: IPv4-mapped addresses are not for
	// IPv6 headers; §2.7: scope 0 is reserved and interface-local (1)
	// multicast never leaves the node; §2.5.2: the unspecified address is
	// never a destination. ip6_rcv_core drops all of these as header
	// errors.
	switch {
	case src.IsMulticast() || src.Is4In6() || (skb.InNIC != 0 && src.IsLoopback()):
		l.count(InHdrErrors)
		skb.Free(DropInvalidSource)
		return
	case dst.IsUnspecified() || dst.Is4In6() || (skb.InNIC != 0 && dst.IsLoopback()) ||
		(dst.IsMulticast() && dst.As16()[1]&0x0f <= 1):
		l.count(InHdrErrors)
		skb.Free(DropInvalidDest)
		return
	}
	// Trim link-layer padding (pskb_trim_rcsum).
	skb.Trim(h.TotalLen())
	skb.SetNetworkHeader()
	// RFC 8200 §4.3: the Hop-by-Hop Options header "is examined and
	// processed by every node along a packet's delivery path", before
	// PREROUTING (ipv6_parse_hopopts in ip6_rcv_core).
	if h.NextHeader() == header.ProtoHopByHop && !l.hopByHop(skb) {
		return
	}
	switch v := l.hooks.Run(netfilter.PreRouting, skb, skb.InNIC, 0); {
	case v.Stolen():
		return
	case v.Dropped():
		skb.Free(v.Reason())
		return
	}
	l.rcvFinish(skb)
}

// rcvFinish is ip6_rcv_finish: multicast to ip6_mc_input, the rest routed
// (ip6_route_input), reverse-path checked, then delivered or forwarded.
func (l *Layer) rcvFinish(skb *buf.SKB) {
	h := header.IPv6(skb.Bytes())
	src, dst := h.Src(), h.Dst()
	// A flow diverted by netfilter's DIVERT (proxy mode) is local
	// whatever its destination, as for IPv4; its source is validated all
	// the same: a pod cannot hand the proxy a flow from an address that
	// is not its own.
	if skb.Mark&netfilter.MarkDivert != 0 && !dst.IsMulticast() {
		if l.reversePathOK(skb, src) {
			l.localDeliver(skb)
		}
		return
	}
	if dst.IsMulticast() {
		if !l.reversePathOK(skb, src) {
			return
		}
		l.mcInput(skb, dst)
		return
	}
	res, err := l.fib.Input(src, dst, skb.InNIC)
	if err != nil {
		l.inputRouteError(skb, err)
		return
	}
	if !l.reversePathOK(skb, src) {
		return
	}
	if res.Type == route.Local {
		l.localDeliver(skb)
		return
	}
	// Netfilter's reply-to, as IPv4's: a reply of a flow that entered
	// through a reply-to NIC leaves through that NIC.
	if n := netfilter.ReplyNIC(skb); n != 0 && n != res.NIC {
		l.replyRoute(&res, dst, n)
	}
	l.forward(skb, res)
}

// replyRoute sets *res to the route to dst through nic, if there is one
// (else the FIB's own choice stays). Out of line, as ipv4's.
//
//go:noinline
func (l *Layer) replyRoute(res *route.Result, dst netip.Addr, nic int) {
	if r, ok := l.fib.Via(dst, nic); ok {
		*res = r
	}
}

// reversePathOK applies the NIC's reverse-path policy (RFC 3704 §2.2
// strict: the route back to src must leave through the input NIC),
// freeing skb when it fails.
func (l *Layer) reversePathOK(skb *buf.SKB, src netip.Addr) bool {
	if skb.InNIC == 0 || !l.rp.Strict(skb.InNIC) || l.fib.ReversePathOK(src, skb.InNIC) {
		return true
	}
	l.count(RPFilterDrops)
	skb.Free(DropRPFilter)
	return false
}

// mcInput is ip6_mc_input for a node that routes unicast only: the
// link-scope groups every IPv6 router belongs to are delivered locally —
// all-nodes (ff02::1), all-routers (ff02::2, RFC 4291 §2.7.1), all
// MLDv2-capable routers (ff02::16, RFC 3810 §7: where hosts send their
// reports, which are then counted and dropped) and every solicited-node
// group, since we answer Neighbor Solicitations for every address the
// proxy policy covers (RFC 4861 §7.2.1). We send no MLD reports: a veth
// has no snooping switch to tell. Other groups are not ours, and
// multicast is never forwarded.
func (l *Layer) mcInput(skb *buf.SKB, dst netip.Addr) {
	l.count(InMcastPkts)
	if dst == header.IPv6AllNodes || dst == header.IPv6AllRouters || dst == allMLDv2Routers || header.IsSolicitedNodeAddr(dst) {
		skb.CB[cbFlags] |= flagMulticast
		l.localDeliver(skb)
		return
	}
	// RFC 4293 ipSystemStatsInAddrErrors: "not a valid address to be
	// received at this entity".
	l.count(InAddrErrors)
	skb.Free(DropMcastNotJoined)
}

// allMLDv2Routers is ff02::16 (RFC 3810 §11).
var allMLDv2Routers = netip.MustParseAddr("ff02::16")

// inputRouteError handles a failed input route (ip6_pkt_drop's cases).
func (l *Layer) inputRouteError(skb *buf.SKB, err error) {
	switch err {
	case route.ErrMartianSource:
		l.count(InAddrErrors)
		skb.Free(DropInvalidSource)
		return
	case route.ErrMartianDest, route.ErrMulticast:
		l.count(InAddrErrors)
		skb.Free(DropInvalidDest)
		return
	}
	if !l.forwarding.Load() {
		// Not for us and not forwarding (ip6_forward's first check):
		// counted, no ICMPv6.
		l.count(InAddrErrors)
		skb.Free(DropInAddrErrors)
		return
	}
	// RFC 4443 §3.1: "If the reason for the failure to deliver is lack of
	// a matching entry in the forwarding node's routing table, the Code
	// field is set to 0"; "administrative prohibition ... Code 1".
	switch err {
	case route.ErrNoRoute, route.ErrHostUnreach:
		l.count(InNoRoutes)
		l.SendICMPError(skb, header.ICMPv6DstUnreachable, header.ICMPv6NoRoute, 0)
		skb.Free(DropInNoRoutes)
	case route.ErrProhibited:
		l.SendICMPError(skb, header.ICMPv6DstUnreachable, header.ICMPv6AdminProhibited, 0)
		skb.Free(DropRouteError)
	default: // blackhole: silently
		skb.Free(DropRouteError)
	}
}

// localDeliver is ip6_input_finish's walk over the extension headers of
// a packet for this node (RFC 8200 §4.1 order: the Hop-by-Hop header was
// done in Rcv; Destination Options, Routing and Fragment headers here;
// reassembly happens at the Fragment header), ending at the upper layer.
// It consumes skb.
func (l *Layer) localDeliver(skb *buf.SKB) {
	b := skb.Bytes()
	nh := header.IPv6(b).NextHeader()
	nhoff := header.IPv6NextHeaderOffset // where the current Next Header value sits
	off := header.IPv6MinSize            // where the header it names starts
	for i := 0; ; i++ {
		if i > header.MaxIPv6ExtHeaders {
			l.count(InHdrErrors)
			skb.Free(DropBadExtHdr)
			return
		}
		switch nh {
		case header.ProtoHopByHop:
			if i != 0 {
				// RFC 8200 §4.1: "The Hop-by-Hop Options header, when
				// present, must immediately follow the IPv6 header";
				// elsewhere it is an unrecognised Next Header (Linux: no
				// inet6_protos handler for 0).
				l.unknownNextHeader(skb, nhoff)
				return
			}
			n, _ := header.IPv6ExtHeaderLen(nh, b[off:]) // checked in Rcv
			nhoff, nh, off = off, b[off], off+n
		case header.ProtoDestOpts:
			o, err := header.CheckIPv6Options(b[off:])
			if err != nil {
				l.badExtHeader(skb, off)
				return
			}
			if !l.processOptions(skb, off, o, false) {
				return
			}
			nhoff, nh, off = off, o.NextHeader(), off+o.Len()
		case header.ProtoRouting:
			r, err := header.CheckIPv6Routing(b[off:])
			if err != nil {
				l.badExtHeader(skb, off)
				return
			}
			if !l.routingHeader(skb, off, r) {
				return
			}
			nhoff, nh, off = off, r.NextHeader(), off+r.Len()
		case header.ProtoFragment:
			f, err := header.CheckIPv6Fragment(b[off:])
			if err != nil {
				l.badExtHeader(skb, off)
				return
			}
			l.count(ReasmReqds)
			if f.IsAtomic() {
				// RFC 8200 §4.5 / RFC 6946 §4: an atomic fragment is
				// processed in isolation, its Fragment header skipped.
				l.count(ReasmOKs)
				nhoff, nh, off = off, f.NextHeader(), off+header.IPv6FragmentSize
				continue
			}
			if skb = l.reasm.add(skb, off, nhoff); skb == nil {
				return
			}
			// The reassembled packet: the unfragmentable part, then the
			// fragmentable part where the Fragment header was.
			b = skb.Bytes()
			nh = b[nhoff]
		case header.ProtoNoNextHeader:
			// RFC 8200 §4.7: nothing follows; bytes past the header are
			// ignored.
			l.count(InDelivers)
			skb.Consume()
			return
		default:
			l.localDeliverFinish(skb, nh, off, nhoff)
			return
		}
	}
}

// localDeliverFinish runs LOCAL_IN on the whole packet, then hands it to
// its upper layer (ip6_protocol_deliver_rcu). skb.TransportHeader() is
// set for the hook.
func (l *Layer) localDeliverFinish(skb *buf.SKB, proto uint8, off, nhoff int) {
	skb.SetTransportHeaderAt(off)
	switch v := l.hooks.Run(netfilter.LocalIn, skb, skb.InNIC, 0); {
	case v.Stolen():
		return
	case v.Dropped():
		skb.Free(v.Reason())
		return
	}
	if proto == header.ProtoICMPv6 {
		skb.Pull(off)
		l.icmpRcv(skb)
		return
	}
	if p := l.protos[proto].Load(); p != nil && p.Rcv != nil {
		skb.Pull(off)
		l.count(InDelivers)
		p.Rcv(skb)
		return
	}
	l.unknownNextHeader(skb, nhoff)
}

// unknownNextHeader is RFC 8200 §4: "If ... the Next Header value in the
// current header is unrecognized by the node, it should discard the packet
// and send an ICMP Parameter Problem message to the source of the packet,
// with an ICMP Code value of 1 ... and the ICMP Pointer field containing
// the offset of the unrecognized value within the original packet."
func (l *Layer) unknownNextHeader(skb *buf.SKB, nhoff int) {
	l.count(InUnknownProtos)
	l.SendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6UnknownNextHeader, uint32(nhoff))
	skb.Free(DropNoProto)
}

// badExtHeader drops a packet whose extension header at off runs past
// the packet (its length field points nowhere): Parameter Problem code 0
// pointing at the length (ipv6_rthdr_rcv / ipv6_destopt_rcv).
func (l *Layer) badExtHeader(skb *buf.SKB, off int) {
	l.count(InHdrErrors)
	l.SendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6ErroneousHeader, uint32(off+1))
	skb.Free(DropBadExtHdr)
}

// linkMulticast reports whether a received packet came as a link-layer
// broadcast or multicast (skb->pkt_type != PACKET_HOST).
func linkMulticast(skb *buf.SKB) bool {
	if skb.InNIC == 0 {
		return false
	}
	mh := skb.MACHeader()
	if len(mh) < header.EthernetMinSize {
		return false
	}
	return header.Ethernet(mh).Dst().IsMulticast()
}
