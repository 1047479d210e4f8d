package fault

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of this wrapper's drop reasons (`cni-userstack stats`).
func init() {
	buf.SetDropLayer("link", DropFaultLoss, DropFaultDelayQueueFull, DropFaultReorderFull,
		DropFaultRxPendingFull, DropFaultClosed)
}
