package ipv6

import (
	"net/netip"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inet"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// QueueXmit is ip6_xmit: route fl, push the IPv6 header (hop limit
// fl.TTL or the default, traffic class fl.TOS, a flow label, RFC 6437),
// run LOCAL_OUT and POSTROUTING, fragment when the packet exceeds the
// path MTU and is not GSO, and hand it to the neighbour layer. It
// consumes skb, whose bytes start at the upper-layer header (checksum
// done, or CsumPartial with CsumOffset relative to it).
//
// Errors: the route's (ENETUNREACH for no route, counted OutNoRoutes;
// EINVAL for a link-local destination without fl.NIC), EMSGSIZE for a
// payload over 65535 bytes or a fl.DontFragment packet over the path MTU
// (the sender also gets an ICMPv6 Packet Too Big through loopback, as
// ip6_fragment does for IPV6_DONTFRAG), EPERM when a hook dropped it.
func (l *Layer) QueueXmit(skb *buf.SKB, fl route.Flow) error {
	skb.Drops = &l.drops
	res, err := l.fib.Output(fl)
	if err != nil {
		l.count(OutNoRoutes)
		skb.Free(DropOutNoRoutes)
		return err
	}
	payload := skb.Len()
	if payload > header.IPv6MaxPayload {
		l.count(OutDiscards)
		skb.Free(DropLocalOverflow)
		return syscall.EMSGSIZE
	}
	hop := fl.TTL
	if hop == 0 {
		hop = l.defaultHop
	}
	skb.SetTransportHeader()
	ip := header.IPv6(skb.Push(header.IPv6MinSize))
	skb.SetNetworkHeader()
	ip.Encode(header.IPv6Fields{
		TrafficClass: fl.TOS,
		FlowLabel:    l.flowLabel(fl, res.Src),
		PayloadLen:   uint16(payload),
		NextHeader:   fl.Proto,
		HopLimit:     hop,
		Src:          res.Src,
		Dst:          fl.Dst.WithZone(""),
	})
	skb.Protocol = uint16(header.EtherTypeIPv6)
	skb.InNIC = 0
	skb.OutNIC = res.NIC
	skb.Mark = fl.Mark
	clear(skb.CB[:inet.CBBacklogEnd])
	if fl.DontFragment {
		skb.CB[cbFlags] |= flagDontFrag
	}
	l.count(OutRequests)
	return l.localOut(skb, res, fl)
}

// localOut is __ip6_local_out: LOCAL_OUT, then dst_output; a hook that
// rewrote the destination (DNAT) makes the packet route again
// (ip6_route_me_harder), and netfilter's reply-to NIC takes the stack's
// own reply-direction packets (an ICMPv6 error about a packet that came
// in there) back through that NIC. The body is IPv4's too
// (inet.Output.LocalOut).
func (l *Layer) localOut(skb *buf.SKB, res route.Result, fl route.Flow) error {
	if ok, err := l.xmit.LocalOut(skb, &res, &fl); !ok {
		return err
	}
	return l.output(skb, res)
}

// output is ip6_output: POSTROUTING (inet.Output.PostRouting), then
// finishOutput.
func (l *Layer) output(skb *buf.SKB, res route.Result) error {
	if ok, err := l.xmit.PostRouting(skb, &res); !ok {
		return err
	}
	return l.finishOutput(skb, res)
}

// finishOutput is ip6_finish_output: local destinations loop back, a
// packet over the path MTU is fragmented (only here, at its source: RFC
// 8200 §5 "fragmentation ... is performed only by source nodes"), the
// rest goes to the neighbour layer (ip6_finish_output2).
func (l *Layer) finishOutput(skb *buf.SKB, res route.Result) error {
	if res.Type == route.Local {
		l.xmit.Loopback(skb)
		return nil
	}
	if mtu, ok := l.nicMTU(res.NIC); ok && mtu < header.IPv6MinMTU {
		// RFC 8200 §5: every link carrying IPv6 has an MTU of at least
		// 1280; Linux turns IPv6 off on a device below it.
		l.count(OutDiscards)
		skb.Free(DropLinkMTU)
		return syscall.EMSGSIZE
	}
	forwarded := skb.CB[cbFlags]&flagForward != 0
	var mtu int
	if forwarded {
		mtu = l.routeMTU(res)
	} else {
		mtu = l.pathMTU(res, header.IPv6(skb.Bytes()).Dst())
	}
	if forwarded && skb.Len() > mtu {
		if fms := netfilter.FragMaxSize(skb); fms > 0 {
			// Reassembled by netfilter: fragmented again as it came.
			return l.fragment(skb, min(mtu, fms), func(f *buf.SKB) { l.out(res.NIC, res.NextHop, f) })
		}
	}
	if skb.Len() <= mtu || skb.GSOSize > 0 || forwarded {
		l.out(res.NIC, res.NextHop, skb)
		return nil
	}
	if skb.CB[cbFlags]&flagDontFrag != 0 {
		// IPV6_DONTFRAG: tell the sender through loopback (its Err sees
		// Packet Too Big with the MTU, RFC 8201 §4), fail the send.
		l.count(FragFails)
		l.sendICMPError(skb, header.ICMPv6PacketTooBig, 0, uint32(mtu), true)
		skb.Free(DropPktTooBig)
		return syscall.EMSGSIZE
	}
	return l.fragment(skb, mtu, func(f *buf.SKB) { l.out(res.NIC, res.NextHop, f) })
}

// routeMTU is the MTU towards res without the PMTU cache: the route's
// when set and not above the NIC's, else the NIC's, never below 1280
// (ip6_dst_mtu_maybe_forward, which clamps to IPV6_MIN_MTU).
func (l *Layer) routeMTU(res route.Result) int {
	mtu, ok := l.nicMTU(res.NIC)
	if !ok || mtu <= 0 {
		mtu = header.IPv6MaxPayload + header.IPv6MinSize
	}
	if res.MTU > 0 && res.MTU < mtu {
		mtu = res.MTU
	}
	return max(mtu, header.IPv6MinMTU)
}

// pathMTU is routeMTU lowered by a live PMTU entry for dst (RFC 8201).
func (l *Layer) pathMTU(res route.Result, dst netip.Addr) int {
	mtu := l.routeMTU(res)
	if p, ok := l.pmtu.get(dst); ok && p < mtu {
		mtu = p
	}
	return mtu
}

// neighFailure is the neighbour table's IPv6 failure handler
// (ndisc_error_report → ip6_link_failure): for each packet whose next hop
// never answered, RFC 4443 §3.1: Destination Unreachable, "inability to
// resolve the IPv6 destination address into a corresponding link address
// ... the Code field is set to 3". Deferred to the backlog: neigh may hold
// its locks. skb is not consumed.
func (l *Layer) neighFailure(skb *buf.SKB) {
	l.xmit.DeferICMPError(skb, header.ICMPv6DstUnreachable, header.ICMPv6AddrUnreachable)
}
