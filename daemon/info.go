package daemon

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of the daemon's drop reasons (its PREROUTING hooks: the
// source-MAC check and proxy mode's divert rule), for `cni-userstack
// stats` and cni_userstack_drops_total.
func init() { buf.SetDropLayer("daemon", DropPodSrcMAC, DropProxyProto, DropProxyInvalid) }
