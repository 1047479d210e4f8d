package ipv4

import (
	"encoding/binary"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
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
// again, as ip_route_me_harder does.
func (l *Layer) localOut(skb *buf.SKB, res route.Result, fl route.Flow) error {
	switch v := l.hooks.Run(netfilter.LocalOut, skb, 0, res.NIC); {
	case v.Stolen():
		return nil
	case v.Dropped():
		skb.Free(v.Reason())
		return syscall.EPERM
	}
	if h := header.IPv4(skb.Bytes()); h.Dst() != fl.Dst {
		fl.Dst, fl.Src = h.Dst(), h.Src()
		r2, err := l.fib.Output(fl)
		if err != nil {
			l.count(OutNoRoutes)
			skb.Free(DropOutNoRoutes)
			return err
		}
		res = r2
		skb.OutNIC = res.NIC
	}
	// Netfilter's reply-to: the stack's own reply-direction packets of a
	// flow that entered through a reply-to NIC (an ICMP error about a
	// packet that came in there, RELATED) leave through that NIC, as
	// ip_route_me_harder re-routes after mangle OUTPUT changed the mark.
	// The source stays the one QueueXmit chose.
	if n := netfilter.ReplyNIC(skb); n != 0 && n != res.NIC && res.Type == route.Unicast {
		if r, ok := l.fib.Via(header.IPv4(skb.Bytes()).Dst(), n); ok {
			res = r
			skb.OutNIC = res.NIC
		}
	}
	return l.output(skb, res)
}

// output is ip_output: the POSTROUTING hook, then finishOutput.
func (l *Layer) output(skb *buf.SKB, res route.Result) error {
	switch v := l.hooks.Run(netfilter.PostRouting, skb, skb.InNIC, res.NIC); {
	case v.Stolen():
		return nil
	case v.Dropped():
		skb.Free(v.Reason())
		return syscall.EPERM
	}
	return l.finishOutput(skb, res)
}

// finishOutput is ip_finish_output: loop local destinations back, fragment
// what exceeds the MTU (ip_fragment), then neigh output (ip_finish_output2).
func (l *Layer) finishOutput(skb *buf.SKB, res route.Result) error {
	if res.Type == route.Local {
		l.loopback(skb)
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

// The backlog is the stack's loopback device and softirq work queue
// (netif_rx's per-CPU backlog, process_backlog): packets to our own
// addresses and ICMP errors deferred from the neighbour layer are queued
// here and processed by a clock callback, never on the sender's call
// stack, so a transport that sends to itself while holding its socket lock
// does not re-enter itself. With the manual clock they are processed on
// the next Advance (Advance(0) suffices).
//
// Bound: backlogMax entries (netdev_max_backlog); overflow frees the new
// packet with DropBacklogFull. Each run processes at most backlogBudget
// entries, then re-arms (the NAPI weight).
const (
	backlogMax    = 1000
	backlogBudget = 64
)

// Backlog entry kinds (skb.CB[cbKind]).
const (
	kindLoop     = 1 // a looped-back datagram for local delivery
	kindICMPSend = 2 // send an ICMP error about this packet
)

// loopback is the loopback device's xmit: the datagram re-enters the
// receive path (PREROUTING, then local delivery) from the backlog.
func (l *Layer) loopback(skb *buf.SKB) {
	skb.CB[cbKind] = kindLoop
	if !l.backlog.Enqueue(skb) {
		l.count(OutDiscards)
		skb.Free(DropBacklogFull)
	}
}

func (l *Layer) backlogProcess(skb *buf.SKB) {
	switch skb.CB[cbKind] {
	case kindLoop:
		l.loopRcv(skb)
	case kindICMPSend:
		info := binary.BigEndian.Uint32(skb.CB[cbInfo:])
		l.SendICMPError(skb, skb.CB[cbType], skb.CB[cbCode], info)
		skb.Consume()
	default:
		skb.Free(buf.DropNotSpecified)
	}
}

// loopRcv is ip_rcv for a looped-back datagram: no validation (we built
// it), no route lookup (the output route said Local), checksums trusted
// (the loopback device's NETIF_F_HW_CSUM / CHECKSUM_UNNECESSARY).
func (l *Layer) loopRcv(skb *buf.SKB) {
	l.count(InReceives)
	skb.InNIC = 0
	skb.CB[cbFlags] = 0
	if skb.Csum != buf.CsumPartial {
		skb.Csum = buf.CsumUnnecessary
	}
	skb.SetNetworkHeader()
	switch v := l.hooks.Run(netfilter.PreRouting, skb, 0, 0); {
	case v.Stolen():
		return
	case v.Dropped():
		skb.Free(v.Reason())
		return
	}
	l.localDeliver(skb)
}

// neighFailure is the neighbour layer's failure handler (arp_error_report
// → ipv4_link_failure): for each packet that waited for a link address
// that never came, send ICMP host unreachable to its sender (RFC 1812
// §4.3.3.1; a local sender gets it through loopback, so its protocol's Err
// sees EHOSTUNREACH). The error is deferred to the backlog: the neighbour
// layer may hold its locks while calling us. skb is not consumed.
func (l *Layer) neighFailure(skb *buf.SKB) {
	c := skb.Clone()
	c.SetNetworkHeader()
	c.CB[cbKind] = kindICMPSend
	c.CB[cbType] = header.ICMPv4DstUnreachable
	c.CB[cbCode] = header.ICMPv4HostUnreachable
	binary.BigEndian.PutUint32(c.CB[cbInfo:], 0)
	if !l.backlog.Enqueue(c) {
		c.Free(DropBacklogFull)
	}
}
