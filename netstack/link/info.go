package link

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of the drop reasons of the link package and its endpoints
// (afpacket, pipe, fault declare theirs as "link" too).
func init() { buf.SetDropLayer("link", DropTxClosed) }
