package ipv6

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of this package's drop reasons (`cni-userstack stats`, the
// cni_userstack_drops_total metric). ICMPv6 lives in this package, as the
// kernel's icmp.c sits in net/ipv6. Reasons IPv4 shares by name (IP_INHDR,
// FRAG_OVERLAP, ...) count as both layers'.
func init() {
	buf.SetDropLayer("ipv6", DropHdrError, DropTooSmall, DropDisabled, DropInvalidSource, DropInvalidDest,
		DropInAddrErrors, DropInNoRoutes, DropRPFilter, DropNoProto, DropOutNoRoutes, DropNoDevice,
		DropRouteError, DropPktTooBig, DropLocalOverflow, DropBacklogFull, DropMcastNotJoined, DropBadExtHdr,
		DropUnknownOption, DropRoutingHeader, DropHopLimit, DropBeyondScope, DropFwdLinkMcast, DropLinkMTU,
		DropFragFailed, DropFragDup, DropFragOverlap, DropFragTimeout, DropFragTooFar, DropFragBad,
		DropFragMem, DropFragQueueFull, DropFragIncomplete, DropICMPCsum, DropICMPInvalid, DropICMPIgnored,
		DropICMPNoHandler, DropEchoNoInterceptor)
}
