package netfilter

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of this package's drop reasons (`cni-userstack stats`, the
// cni_userstack_drops_total metric): rule verdicts, NAT, conntrack limits
// and defragmentation before tracking.
func init() {
	buf.SetDropLayer("netfilter", DropResetNoRoute, DropPolicy, DropDefragOverlap, DropDefragDup,
		DropDefragMem, DropDefragTooBig, DropDefragTimeout, DropDefragTooMany, DropDefragMalform,
		DropConntrackFull, DropNATNoTuple, DropNATNoAddress, DropNATMangle, DropReject, DropJumpDepth)
}
