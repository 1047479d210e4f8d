package ipv6

import (
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// forward is ip6_forward: the packet is for another node and res says
// where it goes. It consumes skb. Order as Linux: forwarding on, unicast
// on the link, hop limit, scope, MTU, hop limit decrement, FORWARD hook.
// A router never fragments (RFC 8200 §5) and we never send Redirects.
func (l *Layer) forward(skb *buf.SKB, res route.Result) {
	if !l.forwarding.Load() {
		l.count(InAddrErrors)
		skb.Free(DropInAddrErrors)
		return
	}
	if linkMulticast(skb) {
		// ip6_forward: "if (skb->pkt_type != PACKET_HOST) goto drop".
		l.count(InDiscards)
		skb.Free(DropFwdLinkMcast)
		return
	}
	h := header.IPv6(skb.Bytes())
	// RFC 8200 §3: the hop limit is "decremented by 1 by each node that
	// forwards the packet. ... the packet is discarded if Hop Limit was
	// decremented to zero"; RFC 4443 §3.3: "If a router receives a packet
	// with a Hop Limit of zero, or if a router decrements a packet's Hop
	// Limit to zero, it MUST discard the packet and originate an ICMPv6
	// Time Exceeded message with Code 0".
	if h.HopLimit() <= 1 {
		l.count(InHdrErrors)
		l.SendICMPError(skb, header.ICMPv6TimeExceeded, header.ICMPv6HopLimitExceeded, 0)
		skb.Free(DropHopLimit)
		return
	}
	// RFC 4291 §2.5.6: "Routers must not forward any packets with
	// Link-Local source or destination addresses to other links"; RFC
	// 4443 §3.1: the Code is 2, "beyond scope of source address". (A
	// link-local destination that is not ours never routes: route.Input.)
	if h.Src().IsLinkLocalUnicast() && res.NIC != skb.InNIC {
		l.count(InAddrErrors)
		l.SendICMPError(skb, header.ICMPv6DstUnreachable, header.ICMPv6BeyondScope, 0)
		skb.Free(DropBeyondScope)
		return
	}
	mtu := l.routeMTU(res)
	// A packet netfilter reassembled at PREROUTING (nf_defrag_ipv6) is
	// judged by its largest original fragment and, if that fits, leaves
	// fragmented again (ip6_forward's frag_max_size check): conntrack's
	// reassembly must not change what crosses the router.
	if fms := netfilter.FragMaxSize(skb); fms > 0 {
		if fms > mtu {
			l.count(InTooBigErrors)
			l.count(FragFails)
			l.sendICMPError(skb, header.ICMPv6PacketTooBig, 0, uint32(mtu), true)
			skb.Free(DropPktTooBig)
			return
		}
	} else if exceedsMTU(skb, mtu) {
		// RFC 4443 §3.2: "A Packet Too Big MUST be sent by a router in
		// response to a packet that it cannot forward because the packet
		// is larger than the MTU of the outgoing link", carrying that MTU.
		l.count(InTooBigErrors)
		l.count(FragFails)
		l.sendICMPError(skb, header.ICMPv6PacketTooBig, 0, uint32(mtu), true)
		skb.Free(DropPktTooBig)
		return
	}
	skb.Writable() // skb_cow: a tap may share the bytes
	h = header.IPv6(skb.Bytes())
	h.SetHopLimit(h.HopLimit() - 1)
	skb.OutNIC = res.NIC
	skb.CB[cbFlags] |= flagForward
	switch v := l.hooks.Run(netfilter.Forward, skb, skb.InNIC, res.NIC); {
	case v.Stolen():
		return
	case v.Dropped():
		skb.Free(v.Reason())
		return
	}
	l.count(OutForwDatagrams)
	_ = l.output(skb, res)
}

// exceedsMTU is ip6_pkt_too_big: the packet is larger than mtu; a GSO
// super-packet is when one of its segments would be.
func exceedsMTU(skb *buf.SKB, mtu int) bool {
	if skb.Len() <= mtu {
		return false
	}
	if skb.GSOSize == 0 {
		return true
	}
	u, err := header.IPv6SkipExtHeaders(skb.Bytes())
	if err != nil {
		return true
	}
	l4 := header.UDPSize
	if u.Proto == header.ProtoTCP {
		t, err := header.CheckTCP(skb.Bytes()[u.Offset:])
		if err != nil {
			return true
		}
		l4 = t.DataOffset()
	}
	return u.Offset+l4+int(skb.GSOSize) > mtu
}
