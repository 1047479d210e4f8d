package netfilter

import (
	"encoding/binary"
	"errors"
	"slices"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// Reply-to: the replies of a flow that entered the stack through a
// reply-to NIC leave through that NIC again, whatever the FIB says about
// their destination (OpenBSD pf's reply-to; on Linux, CONNMARK
// --save-mark on the NIC's ingress, --restore-mark, and an `ip rule
// fwmark` lookup of a table whose default route is that NIC).
//
// The conntrack hook does it in two halves. When the first packet of a
// flow arrives (PREROUTING, conntrack NEW, original direction) on a NIC
// given to SetReplyTo, that NIC is recorded in the flow's Conn
// (Conn.SetReplyNIC). Every later reply-direction packet of the flow,
// the replies themselves and the ICMP errors about the original direction
// (RELATED, including those the stack itself sends), reads the NIC back
// (one atomic load per packet) and leaves it in skb.CB for the IPv4
// routing decision, which then routes the packet through that NIC only
// (route.Table.Via) when the FIB would have chosen another: ipv4.rcvFinish
// for forwarded packets, ipv4.localOut for the stack's own. A reply that
// itself arrived on the recorded NIC is left to the FIB, so a peer that
// routes such a reply straight back cannot make a loop.
//
// The daemon sets it on the uplink: a pod's flow the host DNATs back into
// the stack (kube-proxy, a Service whose backend is a pod of this stack)
// has its replies sent back to the host, whose conntrack undoes the DNAT,
// instead of straight to the client pod, which would see an answer from
// the backend's address.

// MaxReplyToNICs bounds the NICs SetReplyTo accepts.
const MaxReplyToNICs = 64

// ErrReplyToFull: SetReplyTo of a NIC beyond MaxReplyToNICs.
var ErrReplyToFull = errors.New("netfilter: too many reply-to NICs")

// skb.CB[cbReplyNIC:cbReplyNIC+4] is the NIC the conntrack hook asks the
// packet to be routed out of (little endian, 0 = the FIB's choice),
// valid with the conntrack reference before it.
const cbReplyNIC = cbCT + 12

// SetReplyTo makes nic a reply-to NIC (on) or an ordinary one. Flows
// already recorded keep their NIC until they end.
func (nf *Netfilter) SetReplyTo(nic int, on bool) error {
	nf.loadMu.Lock()
	defer nf.loadMu.Unlock()
	cur := *nf.replyTo.Load()
	has := slices.Contains(cur, nic)
	switch {
	case on == has:
		return nil
	case on && len(cur) >= MaxReplyToNICs:
		return ErrReplyToFull
	case on:
		next := append(slices.Clone(cur), nic)
		nf.replyTo.Store(&next)
	default:
		next := slices.DeleteFunc(slices.Clone(cur), func(n int) bool { return n == nic })
		nf.replyTo.Store(&next)
	}
	return nil
}

// ReplyToNICs lists the reply-to NICs.
func (nf *Netfilter) ReplyToNICs() []int { return slices.Clone(*nf.replyTo.Load()) }

// ReplyNIC is the NIC the conntrack hook asked skb to be routed out of: a
// reply-direction packet of a flow that entered through a reply-to NIC.
// 0 when the FIB chooses (no such flow, conntrack did not see skb, or the
// packet came in through that NIC itself). It reads skb.CB only.
func ReplyNIC(skb *buf.SKB) int {
	if skb.CB[cbCT] != cbCTValid {
		return 0
	}
	return int(binary.LittleEndian.Uint32(skb.CB[cbReplyNIC:]))
}

// replyToNew is the first half (see above), for a new flow's packet that
// arrived on in: c records in when it is a reply-to NIC.
func (nf *Netfilter) replyToNew(c *conntrack.Conn, in int) {
	if slices.Contains(*nf.replyTo.Load(), in) {
		c.SetReplyNIC(in)
	}
}

// setReplyNIC is the second half's store, for ReplyNIC.
func setReplyNIC(skb *buf.SKB, nic int) {
	binary.LittleEndian.PutUint32(skb.CB[cbReplyNIC:], uint32(nic))
}
