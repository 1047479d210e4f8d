package ipv4

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of this package's drop reasons (`cni-userstack stats`, the
// cni_userstack_drops_total metric). ICMP lives in this package and its
// reasons count as the IPv4 layer's, as the kernel's icmp.c sits in
// net/ipv4.
func init() {
	buf.SetDropLayer("ipv4", DropHdrError, DropSourceRoute, DropCsum, DropTooSmall, DropInvalidSource,
		DropInvalidDest, DropMulticast, DropInAddrErrors, DropInNoRoutes, DropRPFilter, DropNoProto,
		DropOutNoRoutes, DropNoDevice, DropTTLExceeded, DropPktTooBig, DropFwdLinkBcast, DropFragFailed,
		DropFragDup, DropFragOverlap, DropFragTimeout, DropFragTooFar, DropFragBad, DropFragMem,
		DropFragQueueFull, DropBacklogFull, DropICMPCsum, DropICMPInvalid, DropICMPIgnored,
		DropICMPNoHandler, DropLocalOverflow, DropRouteError, DropEchoNoInterceptor)
}
