package ipv6

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// counter indexes the layer's MIB (IPSTATS_MIB_*, ICMP6_MIB_*).
type counter int

const (
	InReceives counter = iota
	InHdrErrors
	InTooBigErrors
	InNoRoutes
	InAddrErrors
	InUnknownProtos
	InTruncatedPkts
	InDiscards
	InDelivers
	InMcastPkts
	OutForwDatagrams
	OutRequests
	OutDiscards
	OutNoRoutes
	ReasmTimeout
	ReasmReqds
	ReasmOKs
	ReasmFails
	ReasmOverlaps
	FragOKs
	FragFails
	FragCreates
	RPFilterDrops
	PMTUUpdates
	IcmpInMsgs
	IcmpInErrors
	IcmpInCsumErrors
	IcmpInDestUnreachs
	IcmpInPktTooBigs
	IcmpInTimeExcds
	IcmpInParmProblems
	IcmpInEchos
	IcmpInEchoReplies
	IcmpInGroupMembQueries
	IcmpInGroupMembResponses
	IcmpInGroupMembReductions
	IcmpInRouterSolicits
	IcmpInRouterAdvertisements
	IcmpInNeighborSolicits
	IcmpInNeighborAdvertisements
	IcmpInRedirects
	IcmpInMLDv2Reports
	IcmpOutMsgs
	IcmpOutErrors
	IcmpOutRateLimited
	IcmpOutDestUnreachs
	IcmpOutPktTooBigs
	IcmpOutTimeExcds
	IcmpOutParmProblems
	IcmpOutEchos
	IcmpOutEchoReplies
	IcmpInEchoDiverted
	IcmpInEchoDivertDrops
	numCounters
)

// counterNames are the nstat names (/proc/net/snmp6).
var counterNames = [numCounters]string{
	"Ip6InReceives", "Ip6InHdrErrors", "Ip6InTooBigErrors", "Ip6InNoRoutes", "Ip6InAddrErrors",
	"Ip6InUnknownProtos", "Ip6InTruncatedPkts", "Ip6InDiscards", "Ip6InDelivers", "Ip6InMcastPkts",
	"Ip6OutForwDatagrams", "Ip6OutRequests", "Ip6OutDiscards", "Ip6OutNoRoutes",
	"Ip6ReasmTimeout", "Ip6ReasmReqds", "Ip6ReasmOKs", "Ip6ReasmFails", "Ip6ReasmOverlaps",
	"Ip6FragOKs", "Ip6FragFails", "Ip6FragCreates", "Ip6ReversePathFilter", "Ip6PMTUUpdates",
	"Icmp6InMsgs", "Icmp6InErrors", "Icmp6InCsumErrors", "Icmp6InDestUnreachs", "Icmp6InPktTooBigs",
	"Icmp6InTimeExcds", "Icmp6InParmProblems", "Icmp6InEchos", "Icmp6InEchoReplies",
	"Icmp6InGroupMembQueries", "Icmp6InGroupMembResponses", "Icmp6InGroupMembReductions",
	"Icmp6InRouterSolicits", "Icmp6InRouterAdvertisements", "Icmp6InNeighborSolicits",
	"Icmp6InNeighborAdvertisements", "Icmp6InRedirects", "Icmp6InMLDv2Reports",
	"Icmp6OutMsgs", "Icmp6OutErrors", "Icmp6OutRateLimitGlobal", "Icmp6OutDestUnreachs",
	"Icmp6OutPktTooBigs", "Icmp6OutTimeExcds", "Icmp6OutParmProblems", "Icmp6OutEchos", "Icmp6OutEchoReplies",
	"Icmp6InEchoDiverted", "Icmp6InEchoDivertDrops",
}

// String is the nstat name.
func (c counter) String() string {
	if c >= 0 && c < numCounters {
		return counterNames[c]
	}
	return "?"
}

func (l *Layer) count(c counter) { l.mib[c].Add(1) }

func (l *Layer) countN(c counter, n int) { l.mib[c].Add(uint64(n)) }

func (l *Layer) get(c counter) uint64 { return l.mib[c].Load() }

// Stats is a snapshot of the IPv6 MIB (RFC 4293 ipSystemStats for IPv6,
// Linux's /proc/net/snmp6 Ip6 lines) with the ICMPv6 MIB in ICMP.
type Stats struct {
	InReceives, InHdrErrors, InTooBigErrors, InNoRoutes, InAddrErrors, InUnknownProtos uint64
	InTruncatedPkts, InDiscards, InDelivers, InMcastPkts                               uint64
	OutForwDatagrams, OutRequests, OutDiscards, OutNoRoutes                            uint64
	ReasmTimeout, ReasmReqds, ReasmOKs, ReasmFails, ReasmOverlaps                      uint64
	FragOKs, FragFails, FragCreates                                                    uint64
	// RPFilterDrops counts packets the reverse-path filter dropped;
	// PMTUUpdates counts path MTUs lowered by Packet Too Big (RFC 8201).
	RPFilterDrops, PMTUUpdates uint64
	ICMP                       ICMPStats
}

// ICMPStats is the ICMPv6 MIB (RFC 4293 icmpStatsTable and
// icmpMsgStatsTable for IPv6; /proc/net/snmp6 Icmp6 lines).
type ICMPStats struct {
	InMsgs, InErrors, InCsumErrors, InDestUnreachs, InPktTooBigs, InTimeExcds, InParmProblems uint64
	InEchos, InEchoReplies                                                                    uint64
	InGroupMembQueries, InGroupMembResponses, InGroupMembReductions, InMLDv2Reports           uint64
	InRouterSolicits, InRouterAdvertisements, InNeighborSolicits, InNeighborAdvertisements    uint64
	InRedirects                                                                               uint64
	OutMsgs, OutErrors, OutRateLimited, OutDestUnreachs, OutPktTooBigs, OutTimeExcds          uint64
	OutParmProblems, OutEchos, OutEchoReplies                                                 uint64
	// InEchoDiverted counts diverted echo requests handed to the echo
	// interceptor; InEchoDivertDrops those dropped for want of one.
	InEchoDiverted, InEchoDivertDrops uint64
}

// Stats returns the counters.
func (l *Layer) Stats() Stats {
	g := l.get
	return Stats{
		InReceives: g(InReceives), InHdrErrors: g(InHdrErrors), InTooBigErrors: g(InTooBigErrors),
		InNoRoutes: g(InNoRoutes), InAddrErrors: g(InAddrErrors), InUnknownProtos: g(InUnknownProtos),
		InTruncatedPkts: g(InTruncatedPkts), InDiscards: g(InDiscards), InDelivers: g(InDelivers),
		InMcastPkts: g(InMcastPkts), OutForwDatagrams: g(OutForwDatagrams), OutRequests: g(OutRequests),
		OutDiscards: g(OutDiscards), OutNoRoutes: g(OutNoRoutes), ReasmTimeout: g(ReasmTimeout),
		ReasmReqds: g(ReasmReqds), ReasmOKs: g(ReasmOKs), ReasmFails: g(ReasmFails), ReasmOverlaps: g(ReasmOverlaps),
		FragOKs: g(FragOKs), FragFails: g(FragFails), FragCreates: g(FragCreates),
		RPFilterDrops: g(RPFilterDrops), PMTUUpdates: g(PMTUUpdates),
		ICMP: ICMPStats{
			InMsgs: g(IcmpInMsgs), InErrors: g(IcmpInErrors), InCsumErrors: g(IcmpInCsumErrors),
			InDestUnreachs: g(IcmpInDestUnreachs), InPktTooBigs: g(IcmpInPktTooBigs), InTimeExcds: g(IcmpInTimeExcds),
			InParmProblems: g(IcmpInParmProblems), InEchos: g(IcmpInEchos), InEchoReplies: g(IcmpInEchoReplies),
			InGroupMembQueries: g(IcmpInGroupMembQueries), InGroupMembResponses: g(IcmpInGroupMembResponses),
			InGroupMembReductions: g(IcmpInGroupMembReductions), InMLDv2Reports: g(IcmpInMLDv2Reports),
			InRouterSolicits: g(IcmpInRouterSolicits), InRouterAdvertisements: g(IcmpInRouterAdvertisements),
			InNeighborSolicits: g(IcmpInNeighborSolicits), InNeighborAdvertisements: g(IcmpInNeighborAdvertisements),
			InRedirects: g(IcmpInRedirects), OutMsgs: g(IcmpOutMsgs), OutErrors: g(IcmpOutErrors),
			OutRateLimited: g(IcmpOutRateLimited), OutDestUnreachs: g(IcmpOutDestUnreachs),
			OutPktTooBigs: g(IcmpOutPktTooBigs), OutTimeExcds: g(IcmpOutTimeExcds),
			OutParmProblems: g(IcmpOutParmProblems), OutEchos: g(IcmpOutEchos), OutEchoReplies: g(IcmpOutEchoReplies),
			InEchoDiverted: g(IcmpInEchoDiverted), InEchoDivertDrops: g(IcmpInEchoDivertDrops),
		},
	}
}

// Counters returns every counter by its nstat name (Ip6InReceives,
// Icmp6OutPktTooBigs, ...), zeros included.
func (l *Layer) Counters() map[string]uint64 {
	m := make(map[string]uint64, numCounters)
	for c := counter(0); c < numCounters; c++ {
		m[counterNames[c]] = l.get(c)
	}
	return m
}

// Drop reasons of this layer (SKB_DROP_REASON_*). Reasons IPv4 shares
// have the same name and so the same value (buf.NewDropReason).
var (
	DropHdrError      = buf.NewDropReason("IP_INHDR")
	DropTooSmall      = buf.NewDropReason("PKT_TOO_SMALL")
	DropDisabled      = buf.NewDropReason("IPV6DISABLED")
	DropInvalidSource = buf.NewDropReason("IP_INVALID_SOURCE")
	DropInvalidDest   = buf.NewDropReason("IP_INVALID_DEST")
	DropInAddrErrors  = buf.NewDropReason("IP_INADDRERRORS")
	DropInNoRoutes    = buf.NewDropReason("IP_INNOROUTES")
	DropRPFilter      = buf.NewDropReason("IP_RPFILTER")
	DropNoProto       = buf.NewDropReason("IP_NOPROTO")
	DropOutNoRoutes   = buf.NewDropReason("IP_OUTNOROUTES")
	DropNoDevice      = buf.NewDropReason("IP_NO_DEVICE")
	DropRouteError    = buf.NewDropReason("IP_ROUTE_ERROR")
	DropPktTooBig     = buf.NewDropReason("PKT_TOO_BIG")
	DropLocalOverflow = buf.NewDropReason("IP_LOCAL_TOO_BIG")
	DropBacklogFull   = buf.NewDropReason("CPU_BACKLOG")
	// DropMcastNotJoined: a multicast destination we are not listening
	// to (we listen to all-nodes, all-routers and solicited-node groups).
	DropMcastNotJoined = buf.NewDropReason("IPV6_MC_NOT_JOINED")
	// DropBadExtHdr: a malformed extension header or chain.
	DropBadExtHdr = buf.NewDropReason("IPV6_BAD_EXTHDR")
	// DropUnknownOption: an option whose action bits say discard (RFC
	// 8200 §4.2).
	DropUnknownOption = buf.NewDropReason("IPV6_UNKNOWN_OPTION")
	// DropRoutingHeader: a Routing header with segments left that we do
	// not process (RFC 8200 §4.4, RFC 5095 for type 0).
	DropRoutingHeader = buf.NewDropReason("IPV6_ROUTING_HEADER")
	// DropHopLimit: hop limit exhausted in forwarding (RFC 8200 §3).
	DropHopLimit = buf.NewDropReason("IP_TTL_EXCEEDED")
	// DropBeyondScope: a link-local source would leave its link (RFC 4291
	// §2.5.6, RFC 4443 §3.1 code 2).
	DropBeyondScope = buf.NewDropReason("IPV6_BEYOND_SCOPE")
	// DropFwdLinkMcast: a packet received as link-layer multicast is not
	// forwarded (ip6_forward's PACKET_HOST check).
	DropFwdLinkMcast = buf.NewDropReason("IP_FWD_LINK_BROADCAST")
	// DropLinkMTU: the output NIC's MTU is below 1280, on which IPv6
	// cannot run (RFC 8200 §5; Linux disables IPv6 on such a device).
	DropLinkMTU       = buf.NewDropReason("IPV6_LINK_MTU_TOO_SMALL")
	DropFragFailed    = buf.NewDropReason("IP_FRAG_FAILED")
	DropFragDup       = buf.NewDropReason("DUP_FRAG")
	DropFragOverlap   = buf.NewDropReason("FRAG_OVERLAP")
	DropFragTimeout   = buf.NewDropReason("FRAG_REASM_TIMEOUT")
	DropFragTooFar    = buf.NewDropReason("FRAG_TOO_FAR")
	DropFragBad       = buf.NewDropReason("FRAG_BAD")
	DropFragMem       = buf.NewDropReason("FRAG_MEM_LIMIT")
	DropFragQueueFull = buf.NewDropReason("FRAG_QUEUE_FULL")
	// DropFragIncomplete: a first fragment without the whole header
	// chain (RFC 7112 §5, RFC 8200 §4.5).
	DropFragIncomplete = buf.NewDropReason("IPV6_FRAG_INCOMPLETE_CHAIN")
	DropICMPCsum       = buf.NewDropReason("ICMP_CSUM")
	DropICMPInvalid    = buf.NewDropReason("ICMP_INVALID")
	DropICMPIgnored    = buf.NewDropReason("ICMP_IGNORED")
	DropICMPNoHandler  = buf.NewDropReason("ICMP_NO_HANDLER")
	// DropEchoNoInterceptor: a diverted echo request with no echo
	// interceptor set (SetEchoInterceptor).
	DropEchoNoInterceptor = buf.NewDropReason("ICMP_ECHO_NO_INTERCEPTOR")
)
