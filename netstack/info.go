package netstack

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The echo client's drop reason (ping_rcv finding no socket) counts as the
// IPv4 layer's, as net/ipv4/ping.c does.
func init() { buf.SetDropLayer("ipv4", DropNoPingWaiter) }
