package ipv4

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// counter indexes the layer's MIB (IPSTATS_MIB_*, ICMP_MIB_*).
type counter int

const (
	InReceives counter = iota
	InHdrErrors
	InTruncatedPkts
	InCsumErrors
	InAddrErrors
	InNoRoutes
	InUnknownProtos
	InDiscards
	InDelivers
	OutRequests
	OutNoRoutes
	OutDiscards
	ForwDatagrams
	ReasmReqds
	ReasmOKs
	ReasmFails
	ReasmTimeout
	ReasmOverlaps
	FragOKs
	FragFails
	FragCreates
	RPFilterDrops
	IcmpInMsgs
	IcmpInErrors
	IcmpInCsumErrors
	IcmpInDestUnreachs
	IcmpInTimeExcds
	IcmpInParmProbs
	IcmpInSrcQuenchs
	IcmpInRedirects
	IcmpInEchos
	IcmpInEchoReps
	IcmpOutMsgs
	IcmpOutErrors
	IcmpOutRateLimited
	IcmpOutDestUnreachs
	IcmpOutTimeExcds
	IcmpOutParmProbs
	IcmpOutEchoReps
	IcmpInEchoDiverted
	IcmpInEchoDivertDrops
	numCounters
)

// counterNames are the nstat names.
var counterNames = [numCounters]string{
	"IpInReceives", "IpInHdrErrors", "IpExtInTruncatedPkts", "IpExtInCsumErrors", "IpInAddrErrors",
	"IpExtInNoRoutes", "IpInUnknownProtos", "IpInDiscards", "IpInDelivers", "IpOutRequests",
	"IpExtOutNoRoutes", "IpOutDiscards", "IpForwDatagrams", "IpReasmReqds", "IpReasmOKs", "IpReasmFails",
	"IpReasmTimeout", "IpExtReasmOverlaps", "IpFragOKs", "IpFragFails", "IpFragCreates", "TcpExtIPReversePathFilter",
	"IcmpInMsgs", "IcmpInErrors", "IcmpInCsumErrors", "IcmpInDestUnreachs", "IcmpInTimeExcds",
	"IcmpInParmProbs", "IcmpInSrcQuenchs", "IcmpInRedirects", "IcmpInEchos", "IcmpInEchoReps",
	"IcmpOutMsgs", "IcmpOutErrors", "IcmpOutRateLimitGlobal", "IcmpOutDestUnreachs", "IcmpOutTimeExcds",
	"IcmpOutParmProbs", "IcmpOutEchoReps", "IcmpInEchoDiverted", "IcmpInEchoDivertDrops",
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

// Stats is a snapshot of the IP MIB (RFC 4293 ipSystemStats, Linux's
// /proc/net/snmp Ip: and IpExt: lines) with the ICMP MIB in ICMP.
type Stats struct {
	InReceives, InHdrErrors, InTruncatedPkts, InCsumErrors, InAddrErrors, InNoRoutes uint64
	InUnknownProtos, InDiscards, InDelivers                                          uint64
	OutRequests, OutNoRoutes, OutDiscards, ForwDatagrams                             uint64
	ReasmReqds, ReasmOKs, ReasmFails, ReasmTimeout, ReasmOverlaps                    uint64
	FragOKs, FragFails, FragCreates                                                  uint64
	// RPFilterDrops counts packets dropped by the reverse-path filter
	// (LINUX_MIB_IPRPFILTER).
	RPFilterDrops uint64
	ICMP          ICMPStats
}

// ICMPStats is the ICMP MIB (RFC 4293 icmpStatsTable, /proc/net/snmp Icmp:).
type ICMPStats struct {
	InMsgs, InErrors, InCsumErrors, InDestUnreachs, InTimeExcds, InParmProbs uint64
	InSrcQuenchs, InRedirects, InEchos, InEchoReps                           uint64
	OutMsgs, OutErrors, OutRateLimited, OutDestUnreachs, OutTimeExcds        uint64
	OutParmProbs, OutEchoReps                                                uint64
	// InEchoDiverted counts diverted echo requests handed to the echo
	// interceptor; InEchoDivertDrops those dropped for want of one.
	InEchoDiverted, InEchoDivertDrops uint64
}

// Stats returns the counters.
func (l *Layer) Stats() Stats {
	g := l.get
	return Stats{
		InReceives: g(InReceives), InHdrErrors: g(InHdrErrors), InTruncatedPkts: g(InTruncatedPkts),
		InCsumErrors: g(InCsumErrors), InAddrErrors: g(InAddrErrors), InNoRoutes: g(InNoRoutes),
		InUnknownProtos: g(InUnknownProtos), InDiscards: g(InDiscards), InDelivers: g(InDelivers),
		OutRequests: g(OutRequests), OutNoRoutes: g(OutNoRoutes), OutDiscards: g(OutDiscards),
		ForwDatagrams: g(ForwDatagrams), ReasmReqds: g(ReasmReqds), ReasmOKs: g(ReasmOKs),
		ReasmFails: g(ReasmFails), ReasmTimeout: g(ReasmTimeout), ReasmOverlaps: g(ReasmOverlaps),
		FragOKs: g(FragOKs), FragFails: g(FragFails), FragCreates: g(FragCreates),
		RPFilterDrops: g(RPFilterDrops),
		ICMP: ICMPStats{
			InMsgs: g(IcmpInMsgs), InErrors: g(IcmpInErrors), InCsumErrors: g(IcmpInCsumErrors),
			InDestUnreachs: g(IcmpInDestUnreachs), InTimeExcds: g(IcmpInTimeExcds), InParmProbs: g(IcmpInParmProbs),
			InSrcQuenchs: g(IcmpInSrcQuenchs), InRedirects: g(IcmpInRedirects), InEchos: g(IcmpInEchos),
			InEchoReps: g(IcmpInEchoReps), OutMsgs: g(IcmpOutMsgs), OutErrors: g(IcmpOutErrors),
			OutRateLimited: g(IcmpOutRateLimited), OutDestUnreachs: g(IcmpOutDestUnreachs),
			OutTimeExcds: g(IcmpOutTimeExcds), OutParmProbs: g(IcmpOutParmProbs), OutEchoReps: g(IcmpOutEchoReps),
			InEchoDiverted: g(IcmpInEchoDiverted), InEchoDivertDrops: g(IcmpInEchoDivertDrops),
		},
	}
}

// Counters returns every counter by its nstat name (IpInReceives,
// IcmpOutRateLimitGlobal, ...), zeros included, for `nstat`-like output.
func (l *Layer) Counters() map[string]uint64 {
	m := make(map[string]uint64, numCounters)
	for c := counter(0); c < numCounters; c++ {
		m[counterNames[c]] = l.get(c)
	}
	return m
}

// Drop reasons of this layer (SKB_DROP_REASON_*).
var (
	DropHdrError      = buf.NewDropReason("IP_INHDR")
	DropSourceRoute   = buf.NewDropReason("IP_SOURCE_ROUTE")
	DropCsum          = buf.NewDropReason("IP_CSUM")
	DropTooSmall      = buf.NewDropReason("PKT_TOO_SMALL")
	DropInvalidSource = buf.NewDropReason("IP_INVALID_SOURCE")
	DropInvalidDest   = buf.NewDropReason("IP_INVALID_DEST")
	DropMulticast     = buf.NewDropReason("IP_MULTICAST")
	DropInAddrErrors  = buf.NewDropReason("IP_INADDRERRORS")
	DropInNoRoutes    = buf.NewDropReason("IP_INNOROUTES")
	DropRPFilter      = buf.NewDropReason("IP_RPFILTER")
	DropNoProto       = buf.NewDropReason("IP_NOPROTO")
	DropOutNoRoutes   = buf.NewDropReason("IP_OUTNOROUTES")
	DropNoDevice      = buf.NewDropReason("IP_NO_DEVICE")
	DropTTLExceeded   = buf.NewDropReason("IP_TTL_EXCEEDED")
	DropPktTooBig     = buf.NewDropReason("PKT_TOO_BIG")
	DropFwdLinkBcast  = buf.NewDropReason("IP_FWD_LINK_BROADCAST")
	DropFragFailed    = buf.NewDropReason("IP_FRAG_FAILED")
	DropFragDup       = buf.NewDropReason("DUP_FRAG")
	DropFragOverlap   = buf.NewDropReason("FRAG_OVERLAP")
	DropFragTimeout   = buf.NewDropReason("FRAG_REASM_TIMEOUT")
	DropFragTooFar    = buf.NewDropReason("FRAG_TOO_FAR")
	DropFragBad       = buf.NewDropReason("FRAG_BAD")
	DropFragMem       = buf.NewDropReason("FRAG_MEM_LIMIT")
	DropFragQueueFull = buf.NewDropReason("FRAG_QUEUE_FULL")
	DropBacklogFull   = buf.NewDropReason("CPU_BACKLOG")
	DropICMPCsum      = buf.NewDropReason("ICMP_CSUM")
	DropICMPInvalid   = buf.NewDropReason("ICMP_INVALID")
	DropICMPIgnored   = buf.NewDropReason("ICMP_IGNORED")
	DropICMPNoHandler = buf.NewDropReason("ICMP_NO_HANDLER")
	DropLocalOverflow = buf.NewDropReason("IP_LOCAL_TOO_BIG")
	DropRouteError    = buf.NewDropReason("IP_ROUTE_ERROR")
	// DropEchoNoInterceptor: a diverted echo request with no echo
	// interceptor set (SetEchoInterceptor).
	DropEchoNoInterceptor = buf.NewDropReason("ICMP_ECHO_NO_INTERCEPTOR")
)
