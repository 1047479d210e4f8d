package ipv4

import (
	"errors"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Layout of skb.CB while ipv4 owns a packet (struct inet_skb_parm): byte
// cbFlags; bytes inet.CBBacklog..inet.CBBacklogEnd-1 are the backlog
// entry's (netstack/inet) while a packet waits there.
const cbFlags = 0 // flag* bits set by rcvFinish

// flagBroadcast marks a packet routed as a broadcast (RTCF_BROADCAST).
const flagBroadcast = 1

// Rcv is ip_rcv, the dev.Handler for EtherTypeIPv4. It consumes skb, whose
// bytes start at the IPv4 header. nic may be nil when skb.InNIC is set
// (loopback and tests).
func (l *Layer) Rcv(nic *dev.NIC, skb *buf.SKB) {
	if nic != nil {
		skb.InNIC = nic.ID()
	}
	l.count(InReceives)
	skb.CB[cbFlags] = 0
	// RFC 1122 §3.2.1.1–3.2.1.2: version 4, IHL ≥ 5, total length within
	// the buffer (CheckIPv4); the header checksum below.
	h, err := header.CheckIPv4(skb.Bytes())
	if err != nil {
		l.badHeader(skb, err)
		return
	}
	// RFC 1122 §3.2.1.2: "A host MUST verify the IP header checksum on
	// every received datagram and silently discard every datagram that
	// has a bad checksum." Always, as ip_rcv_core does: a link's checksum
	// offload (skb.Csum) speaks for the transport checksum only.
	if !h.ChecksumValid() {
		l.count(InCsumErrors)
		l.count(InHdrErrors)
		skb.Free(DropCsum)
		return
	}
	// Trim link-layer padding (pskb_trim_rcsum): an Ethernet frame is at
	// least 60 bytes, so a short datagram arrives with trailing zeros.
	skb.Trim(h.TotalLen())
	skb.SetNetworkHeader()
	// RFC 7126 §4.3–4.4: source-routed datagrams are dropped by default
	// (Linux accept_source_route=0, ip_rcv_options); other options pass
	// through unprocessed.
	if h.HeaderLen() > header.IPv4MinSize && sourceRouted(h) {
		l.count(InDiscards)
		skb.Free(DropSourceRoute)
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

// sourceRouted reports whether h carries LSRR or SSRR.
func sourceRouted(h header.IPv4) bool {
	srr := false
	_ = header.WalkIPv4Options(h.Options(), func(typ uint8, _ []byte) bool {
		if typ == header.IPv4OptLSRR || typ == header.IPv4OptSSRR {
			srr = true
			return false
		}
		return true
	})
	return srr
}

// badHeader counts and frees a datagram CheckIPv4 rejected. As ip_rcv_core
// does, a datagram shorter than its total length is InTruncatedPkts (after
// its header checksum was found good); anything else is InHdrErrors.
func (l *Layer) badHeader(skb *buf.SKB, err error) {
	b := skb.Bytes()
	if errors.Is(err, header.ErrBadTotalLen) && len(b) >= header.IPv4MinSize {
		v := header.IPv4(b)
		if hl := v.HeaderLen(); hl >= header.IPv4MinSize && hl <= len(b) && v.TotalLen() > len(b) {
			if header.ChecksumFinal(header.Checksum(b[:hl], 0)) != 0 {
				l.count(InCsumErrors)
				l.count(InHdrErrors)
				skb.Free(DropCsum)
				return
			}
			l.count(InTruncatedPkts)
			skb.Free(DropTooSmall)
			return
		}
	}
	l.count(InHdrErrors)
	skb.Free(DropHdrError)
}

// rcvFinish is ip_rcv_finish: route the packet (ip_route_input_noref),
// apply the reverse-path filter, then deliver or forward.
func (l *Layer) rcvFinish(skb *buf.SKB) {
	h := header.IPv4(skb.Bytes())
	src := h.Src()
	// A flow diverted by netfilter's DIVERT (TPROXY-style) is local
	// whatever its destination, as "ip rule fwmark → table local" makes it.
	// Its source is validated all the same (ip_route_input_slow runs
	// fib_validate_source for a local route too): a pod cannot hand the
	// proxy a flow from an address that is not its own.
	if skb.Mark&netfilter.MarkDivert != 0 {
		if l.rp.Strict(skb.InNIC) && !l.fib.ReversePathOK(src, skb.InNIC) {
			l.count(RPFilterDrops)
			skb.Free(DropRPFilter)
			return
		}
		l.localDeliver(skb)
		return
	}
	res, err := l.fib.Input(src, h.Dst(), skb.InNIC)
	if err != nil {
		l.inputRouteError(skb, err)
		return
	}
	// RFC 3704 §2.2 strict reverse-path forwarding, per NIC
	// (fib_validate_source with rp_filter=1): -EXDEV, LINUX_MIB_IPRPFILTER.
	if l.rp.Strict(skb.InNIC) && !l.fib.ReversePathOK(src, skb.InNIC) {
		l.count(RPFilterDrops)
		skb.Free(DropRPFilter)
		return
	}
	switch res.Type {
	case route.Local:
		l.localDeliver(skb)
	case route.Broadcast:
		// RFC 1812 §5.3.5: broadcasts are received, never forwarded
		// (bc_forwarding off).
		skb.CB[cbFlags] |= flagBroadcast
		l.localDeliver(skb)
	default:
		// Netfilter's reply-to (policy routing by the flow's conntrack
		// entry): a reply of a flow that entered through a reply-to NIC
		// leaves through that NIC. One read of skb.CB when there is none.
		if n := netfilter.ReplyNIC(skb); n != 0 && n != res.NIC {
			l.replyRoute(&res, h.Dst(), n)
		}
		l.forward(skb, res)
	}
}

// replyRoute sets *res to the route of a reply that netfilter's reply-to
// sends out of nic: the route to dst through nic, if there is one (else
// *res, the FIB's own choice, stays). Out of line, so the forwarding
// path's frame does not carry its Result.
//
//go:noinline
func (l *Layer) replyRoute(res *route.Result, dst netip.Addr, nic int) {
	if r, ok := l.fib.Via(dst, nic); ok {
		*res = r
	}
}

// inputRouteError handles a failed input route, as ip_route_input_slow's
// martian paths and ip_error do.
func (l *Layer) inputRouteError(skb *buf.SKB, err error) {
	switch err {
	case route.ErrMartianSource:
		l.count(InAddrErrors)
		skb.Free(DropInvalidSource)
		return
	case route.ErrMartianDest:
		l.count(InAddrErrors)
		skb.Free(DropInvalidDest)
		return
	case route.ErrMulticast:
		// RFC 4293 ipSystemStatsInAddrErrors: "not a valid address to
		// be received at this entity": we join no groups.
		l.count(InAddrErrors)
		skb.Free(DropMulticast)
		return
	}
	// Not for us and no usable route: ip_error.
	if !l.forwarding.Load() {
		l.count(InAddrErrors)
		skb.Free(DropInAddrErrors)
		return
	}
	// RFC 1812 §4.3.3.1 / §5.2.7.1: a router that cannot forward sends
	// Destination Unreachable with the code of the failure.
	switch err {
	case route.ErrNoRoute:
		l.count(InNoRoutes)
		l.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable, 0)
		skb.Free(DropInNoRoutes)
	case route.ErrHostUnreach:
		l.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0)
		skb.Free(DropRouteError)
	case route.ErrProhibited:
		// RFC 1812 §5.2.7.1: code 13, communication administratively prohibited.
		l.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0)
		skb.Free(DropRouteError)
	default: // Blackhole: silently.
		skb.Free(DropRouteError)
	}
}

// localDeliver is ip_local_deliver: reassemble, run LOCAL_IN, then
// localDeliverFinish hands the packet to its L4 handler (inet_protos).
func (l *Layer) localDeliver(skb *buf.SKB) {
	h := header.IPv4(skb.Bytes())
	if h.MF() || h.FragOffset() != 0 {
		l.count(ReasmReqds)
		if skb = l.reasm.add(skb); skb == nil {
			return
		}
	}
	switch v := l.hooks.Run(netfilter.LocalIn, skb, skb.InNIC, 0); {
	case v.Stolen():
		return
	case v.Dropped():
		skb.Free(v.Reason())
		return
	}
	l.localDeliverFinish(skb)
}

// localDeliverFinish is ip_local_deliver_finish / ip_protocol_deliver_rcu:
// pull the IP header and dispatch by protocol number.
func (l *Layer) localDeliverFinish(skb *buf.SKB) {
	h := header.IPv4(skb.Bytes())
	proto := h.Protocol()
	skb.Pull(h.HeaderLen())
	skb.SetTransportHeader()
	if proto == header.ProtoICMP {
		l.icmpRcv(skb)
		return
	}
	if p := l.protos[proto].Load(); p != nil && p.Rcv != nil {
		l.count(InDelivers)
		p.Rcv(skb)
		return
	}
	// RFC 1122 §3.2.2.1: a host SHOULD generate Destination Unreachable
	// messages with code 2 (Protocol) when the protocol is not supported.
	l.count(InUnknownProtos)
	l.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4ProtoUnreachable, 0)
	skb.Free(DropNoProto)
}

// linkBroadcast reports whether a received packet came as a link-layer
// broadcast or multicast (skb->pkt_type != PACKET_HOST).
func linkBroadcast(skb *buf.SKB) bool {
	if skb.InNIC == 0 {
		return false
	}
	mh := skb.MACHeader()
	if len(mh) < header.EthernetMinSize {
		return false
	}
	d := header.Ethernet(mh).Dst()
	return d.IsBroadcast() || d.IsMulticast()
}
