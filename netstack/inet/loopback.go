package inet

import (
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// The backlog is the stack's loopback device and softirq work queue
// (loopback_xmit → netif_rx's per-CPU backlog, process_backlog: code the
// kernel shares between families too): packets to our own addresses and
// ICMP errors deferred from the neighbour layer are queued here and
// processed by a clock callback, never on the sender's call stack, so a
// transport that sends to itself while holding its socket lock does not
// re-enter itself. With the manual clock they are processed on the next
// Advance (Advance(0) suffices).
//
// Bound: BacklogMax entries (netdev_max_backlog); overflow frees the new
// packet with DropBacklogFull. Each run processes at most BacklogBudget
// entries, then re-arms (the NAPI weight). One backlog per layer.
const (
	BacklogMax    = 1000
	BacklogBudget = 64
)

// DropBacklogFull: the backlog was full (CPU_BACKLOG).
var DropBacklogFull = buf.NewDropReason("CPU_BACKLOG")

// Layout of skb.CB while a packet waits on the backlog. Byte 0 stays the
// family's (its flags); bytes CBBacklog..CBBacklogEnd-1 are the backlog's.
const (
	CBBacklog    = 1
	CBBacklogEnd = 8

	cbKind = CBBacklog     // entry kind
	cbType = CBBacklog + 1 // deferred ICMP error type
	cbCode = CBBacklog + 2 // deferred ICMP error code
)

// Backlog entry kinds (skb.CB[cbKind]).
const (
	kindLoop     = 1 // a looped-back packet for the family's receive path
	kindICMPSend = 2 // send an ICMP error about this packet
)

// Loopback is the loopback device's xmit: skb, its IP header first,
// re-enters the receive path from the backlog (loopRcv: PREROUTING, then
// the family's local delivery). It consumes skb; a full backlog frees it
// (OutDiscards, CPU_BACKLOG).
func (o *Output) Loopback(skb *buf.SKB) {
	skb.CB[cbKind] = kindLoop
	if !o.backlog.Enqueue(skb) {
		o.mib.OutDiscards.Add(1)
		skb.Free(DropBacklogFull)
	}
}

// DeferICMPError queues an ICMP error of typ and code (rest of header 0)
// about the packet whose IP header starts skb's bytes, to be sent by
// OutputConfig.SendICMPError from the backlog: the neighbour layer's failure
// handlers (ipv4_link_failure, ip6_link_failure) call it with neigh's
// locks held. It does not consume skb (a clone is queued); a full backlog
// drops the error (CPU_BACKLOG).
func (o *Output) DeferICMPError(skb *buf.SKB, typ, code uint8) {
	c := skb.Clone()
	c.SetNetworkHeader()
	c.CB[cbKind] = kindICMPSend
	c.CB[cbType] = typ
	c.CB[cbCode] = code
	if !o.backlog.Enqueue(c) {
		c.Free(DropBacklogFull)
	}
}

// backlogProcess is process_backlog's per-packet step.
func (o *Output) backlogProcess(skb *buf.SKB) {
	switch skb.CB[cbKind] {
	case kindLoop:
		o.loopRcv(skb)
	case kindICMPSend:
		o.sendError(skb, skb.CB[cbType], skb.CB[cbCode], 0)
		skb.Consume()
	default:
		skb.Free(buf.DropNotSpecified)
	}
}

// loopRcv is ip_rcv and ipv6_rcv for a packet the loopback device handed
// back, the same for both families: no validation (we built it), no route
// lookup (the output route said Local), checksums trusted (the loopback
// device's NETIF_F_HW_CSUM / CHECKSUM_UNNECESSARY), the family's flags and
// the backlog's bytes of skb.CB cleared; PREROUTING (in NIC 0), then the
// family's local delivery. It consumes skb.
func (o *Output) loopRcv(skb *buf.SKB) {
	o.mib.InReceives.Add(1)
	skb.InNIC = 0
	clear(skb.CB[:CBBacklogEnd])
	if skb.Csum != buf.CsumPartial {
		skb.Csum = buf.CsumUnnecessary
	}
	skb.SetNetworkHeader()
	if ok, _ := o.hook(netfilter.PreRouting, skb, 0, 0); !ok {
		return
	}
	o.deliver(skb)
}
