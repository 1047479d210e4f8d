package ipv4

import (
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// QueueXmit is ip_queue_xmit: route fl, push the IPv4 header, run
// LOCAL_OUT and POSTROUTING, fragment when the datagram is larger than the
// path MTU and not GSO, and hand it to the neighbour layer. It consumes
// skb, whose bytes start at the transport header (checksum done, or
// CsumPartial with CsumOffset relative to the transport header).
//
// Errors: the route's (ENETUNREACH for no route, counted OutNoRoutes),
// EMSGSIZE for a datagram over 65535 bytes or a DF datagram over the MTU,
// EPERM when a hook dropped it. Failures after the neighbour layer took the
// packet (resolution) are reported through ICMP, not here.
func (l *Layer) QueueXmit(skb *buf.SKB, fl route.Flow) error {
	skb.Drops = &l.drops
	res, err := l.fib.Output(fl)
	if err != nil {
		l.count(OutNoRoutes)
		skb.Free(DropOutNoRoutes)
		return err
	}
	payload := skb.Len()
	if payload+header.IPv4MinSize > 0xffff {
		l.count(OutDiscards)
		skb.Free(DropLocalOverflow)
		return syscall.EMSGSIZE
	}
	ttl := fl.TTL
	if ttl == 0 {
		ttl = l.defaultTTL
	}
	segs := 1
	if g := int(skb.GSOSize); g > 0 {
		segs = (payload + g - 1) / g
	}
	skb.SetTransportHeader()
	ip := header.IPv4(skb.Push(header.IPv4MinSize))
	skb.SetNetworkHeader()
	ip.Encode(header.IPv4Fields{
		TOS:      fl.TOS,
		TotalLen: uint16(header.IPv4MinSize + payload),
		ID:       l.selectID(res.Src, fl.Dst, fl.Proto, segs),
		DF:       fl.DontFragment,
		TTL:      ttl,
		Protocol: fl.Proto,
		Src:      res.Src,
		Dst:      fl.Dst,
	})
	skb.Protocol = uint16(header.EtherTypeIPv4)
	skb.InNIC = 0
	skb.OutNIC = res.NIC
	skb.Mark = fl.Mark
	l.count(OutRequests)
	return l.localOut(skb, res, fl)
}

// localOut is __ip_local_out: the LOCAL_OUT hook, then dst_output. When a
// hook rewrote the destination (DNAT of a local flow), the packet is routed
// again, as ip_route_me_harder does, and netfilter's reply-to NIC takes
// the stack's own reply-direction packets back where their flow came in
// (inet.Output.LocalOut: the same for IPv6).
func (l *Layer) localOut(skb *buf.SKB, res route.Result, fl route.Flow) error {
	if ok, err := l.xmit.LocalOut(skb, &res, &fl); !ok {
		return err
	}
	return l.output(skb, res)
}

// output is ip_output: the POSTROUTING hook (inet.Output.PostRouting),
// then finishOutput.
func (l *Layer) output(skb *buf.SKB, res route.Result) error {
	if ok, err := l.xmit.PostRouting(skb, &res); !ok {
		return err
	}
	return l.finishOutput(skb, res)
}

// finishOutput is ip_finish_output: loop local destinations back, fragment
// what exceeds the MTU (ip_fragment), then neigh output (ip_finish_output2).
func (l *Layer) finishOutput(skb *buf.SKB, res route.Result) error {
	if res.Type == route.Local {
		l.xmit.Loopback(skb)
		return nil
	}
	mtu := l.routeMTU(res)
	if skb.Len() <= mtu || skb.GSOSize > 0 {
		l.out(res.NIC, res.NextHop, skb)
		return nil
	}
	if header.IPv4(skb.Bytes()).DF() {
		// ip_fragment with DF: tell the sender (ourselves, through
		// loopback, so its Err handler learns the MTU; RFC 1191 §3).
		l.count(FragFails)
		l.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded, uint32(mtu))
		skb.Free(DropPktTooBig)
		return syscall.EMSGSIZE
	}
	return l.fragment(skb, mtu, func(f *buf.SKB) { l.out(res.NIC, res.NextHop, f) })
}

// neighFailure is the neighbour layer's failure handler (arp_error_report
// → ipv4_link_failure): for each packet that waited for a link address
// that never came, send ICMP host unreachable to its sender (RFC 1812
// §4.3.3.1; a local sender gets it through loopback, so its protocol's Err
// sees EHOSTUNREACH). The error is deferred to the backlog: the neighbour
// layer may hold its locks while calling us. skb is not consumed.
func (l *Layer) neighFailure(skb *buf.SKB) {
	l.xmit.DeferICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable)
}
