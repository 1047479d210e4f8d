package pipe

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of this endpoint's drop reasons (`cni-userstack stats`).
func init() {
	buf.SetDropLayer("link", DropPipeQueueFull, DropPipeTooBig, DropPipeRunt, DropPipeClosed)
}
