package ipv4

import (
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// forward is ip_forward: the packet is for another host and res says
// where it goes. It consumes skb. The order is Linux's: link-layer
// broadcast check, TTL, MTU, TTL decrement, then the FORWARD hook.
func (l *Layer) forward(skb *buf.SKB, res route.Result) {
	if !l.forwarding.Load() {
		// ip_error with forwarding off: counted, no ICMP.
		l.count(InAddrErrors)
		skb.Free(DropInAddrErrors)
		return
	}
	// RFC 1812 §5.3.4: "A router MUST NOT forward any packet which the
	// router received as a Link Layer broadcast, unless it is directed to
	// an IP Multicast address."
	if linkBroadcast(skb) {
		l.count(InDiscards)
		skb.Free(DropFwdLinkBcast)
		return
	}
	h := header.IPv4(skb.Bytes())
	// RFC 1812 §5.3.1: a router MUST decrement the TTL; a packet it
	// receives with TTL 0 or 1 MUST NOT be forwarded and it MUST send
	// Time Exceeded (code 0).
	if h.TTL() <= 1 {
		l.count(InHdrErrors)
		l.SendICMPError(skb, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0)
		skb.Free(DropTTLExceeded)
		return
	}
	mtu := l.routeMTU(res)
	if exceedsMTU(skb, h, mtu) {
		// RFC 1191 §4: the router MUST include the next-hop MTU in the
		// low-order 16 bits of the Fragmentation Needed message.
		l.count(FragFails)
		l.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded, uint32(mtu))
		skb.Free(DropPktTooBig)
		return
	}
	skb.Writable() // skb_cow: a tap may share the bytes
	h = header.IPv4(skb.Bytes())
	h.SetTTL(h.TTL() - 1) // incremental checksum update, RFC 1624
	skb.OutNIC = res.NIC
	switch v := l.hooks.Run(netfilter.Forward, skb, skb.InNIC, res.NIC); {
	case v.Stolen():
		return
	case v.Dropped():
		skb.Free(v.Reason())
		return
	}
	l.forwardFinish(skb, res)
}

// forwardFinish is ip_forward_finish.
func (l *Layer) forwardFinish(skb *buf.SKB, res route.Result) {
	l.count(ForwDatagrams)
	_ = l.output(skb, res)
}

// exceedsMTU is ip_exceeds_mtu: a DF packet larger than mtu. A GSO
// super-packet exceeds it when one of its segments would.
func exceedsMTU(skb *buf.SKB, h header.IPv4, mtu int) bool {
	if skb.Len() <= mtu || !h.DF() {
		return false
	}
	if skb.GSOSize == 0 {
		return true
	}
	hl := h.HeaderLen()
	l4 := header.UDPSize
	if skb.GSOType == buf.GSOTCPv4 {
		t, err := header.CheckTCP(h.Payload())
		if err != nil {
			return true
		}
		l4 = t.DataOffset()
	}
	return hl+l4+int(skb.GSOSize) > mtu
}

// routeMTU is the MTU toward res: the route's when set and not above the
// NIC's, else the NIC's (ip_dst_mtu_maybe_forward). Unknown NICs get the
// IPv4 maximum: the link output drops the packet anyway.
func (l *Layer) routeMTU(res route.Result) int {
	mtu, ok := l.nicMTU(res.NIC)
	if !ok || mtu <= 0 {
		mtu = 0xffff
	}
	if res.MTU > 0 && res.MTU < mtu {
		mtu = res.MTU
	}
	return mtu
}
