package tcp

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// counter indexes the TCP MIB (TCP_MIB_* of RFC 4022 and the LINUX_MIB_TCP*
// extensions nstat shows as TcpExt).
type counter int

const (
	ActiveOpens counter = iota
	PassiveOpens
	AttemptFails
	EstabResets
	InSegs
	OutSegs
	RetransSegs
	InErrs
	OutRsts
	InCsumErrors
	ListenOverflows
	ListenDrops
	TCPChallengeACK
	TCPChallengeACKLimited
	PAWSEstab
	DelayedACKs
	TCPTimeouts
	TCPFastRetrans
	TCPOFOQueue
	TCPOFODrop
	TCPZeroWindowDrop
	TCPAbortOnData
	TCPAbortOnClose
	TCPAbortOnTimeout
	TCPLossRecovery
	TCPPersistProbes
	TCPKeepAlive
	TCPSACKRecovery
	TCPSackRetrans
	TCPWinProbe
	TCPSYNRetrans
	SyncookiesSent
	SyncookiesRecv
	SyncookiesFailed
	TCPECNReduce
	TCPLossProbes
	TCPLossProbeRecovery
	TCPACKSkippedSeq
	TCPLostRetransmit
	TCPSACKReorder
	TCPDSACKRecv
	InterceptRequests
	InterceptSynDups
	InterceptOverflows
	InterceptRefused
	InterceptNoInterceptor
	TWReopened
	TCPZeroCopySegs
	TimeWaitOverflow
	numCounters
)

var counterNames = [numCounters]string{
	"TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpEstabResets",
	"TcpInSegs", "TcpOutSegs", "TcpRetransSegs", "TcpInErrs", "TcpOutRsts", "TcpInCsumErrors",
	"TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPChallengeACK", "TcpExtTCPChallengeACKLimited",
	"TcpExtPAWSEstab", "TcpExtDelayedACKs", "TcpExtTCPTimeouts", "TcpExtTCPFastRetrans",
	"TcpExtTCPOFOQueue", "TcpExtTCPOFODrop", "TcpExtTCPZeroWindowDrop", "TcpExtTCPAbortOnData",
	"TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnTimeout", "TcpExtTCPLossRecovery", "TcpExtTCPPersistProbes",
	"TcpExtTCPKeepAlive", "TcpExtTCPSackRecovery", "TcpExtTCPSackRetrans", "TcpExtTCPWinProbe",
	"TcpExtTCPSynRetrans", "TcpExtSyncookiesSent", "TcpExtSyncookiesRecv", "TcpExtSyncookiesFailed",
	"TcpExtTCPECNReduce", "TcpExtTCPLossProbes", "TcpExtTCPLossProbeRecovery", "TcpExtTCPACKSkippedSeq",
	"TcpExtTCPLostRetransmit", "TcpExtTCPSACKReorder", "TcpExtTCPDSACKRecv",
	"TcpExtInterceptRequests", "TcpExtInterceptSynDups", "TcpExtInterceptOverflows", "TcpExtInterceptRefused",
	"TcpExtInterceptNoInterceptor", "TcpExtTWReopened", "TcpExtTCPZeroCopySegs", "TcpExtTCPTimeWaitOverflow",
}

// String is the nstat name.
func (c counter) String() string {
	if c >= 0 && c < numCounters {
		return counterNames[c]
	}
	return "?"
}

func (p *Proto) count(c counter)         { p.mib[c].Add(1) }
func (p *Proto) countN(c counter, n int) { p.mib[c].Add(uint64(n)) }

// Counter returns one counter's value.
func (p *Proto) Counter(c counter) uint64 { return p.mib[c].Load() }

// Counters returns every counter by its nstat name, zeros included, plus
// TcpCurrEstab.
func (p *Proto) Counters() map[string]uint64 {
	m := make(map[string]uint64, numCounters+1)
	for c := counter(0); c < numCounters; c++ {
		m[counterNames[c]] = p.mib[c].Load()
	}
	p.mu.RLock()
	var est uint64
	for _, s := range p.conns {
		if st := State(s.stateA.Load()); st == Established || st == CloseWait {
			est++
		}
	}
	p.mu.RUnlock()
	m["TcpCurrEstab"] = est
	return m
}

// Drop reasons of this layer (SKB_DROP_REASON_*).
var (
	DropTooSmall       = buf.NewDropReason("PKT_TOO_SMALL")
	DropCsum           = buf.NewDropReason("TCP_CSUM")
	DropFlags          = buf.NewDropReason("TCP_FLAGS")
	DropNoSocket       = buf.NewDropReason("NO_SOCKET")
	DropInvalidSeq     = buf.NewDropReason("TCP_INVALID_SEQUENCE")
	DropReset          = buf.NewDropReason("TCP_RESET")
	DropInvalidSyn     = buf.NewDropReason("TCP_INVALID_SYN")
	DropTooOldAck      = buf.NewDropReason("TCP_TOO_OLD_ACK")
	DropAckUnsent      = buf.NewDropReason("TCP_ACK_UNSENT_DATA")
	DropOFODrop        = buf.NewDropReason("TCP_OFO_DROP")
	DropZeroWindow     = buf.NewDropReason("TCP_ZEROWINDOW")
	DropOverWindow     = buf.NewDropReason("TCP_OVERWINDOW")
	DropOldData        = buf.NewDropReason("TCP_OLD_DATA")
	DropPAWS           = buf.NewDropReason("TCP_RFC7323_PAWS")
	DropListenOverflow = buf.NewDropReason("TCP_LISTEN_OVERFLOW")
	DropClose          = buf.NewDropReason("TCP_CLOSE")
	DropNoAck          = buf.NewDropReason("TCP_NO_ACK")
	DropState          = buf.NewDropReason("TCP_STATE")
	DropSocketFull     = buf.NewDropReason("SOCKET_FULL")
	// DropInterceptDup: a diverted SYN retransmitted for a request still
	// pending at the Interceptor (intercept.go).
	DropInterceptDup = buf.NewDropReason("TCP_INTERCEPT_DUP_SYN")
	// DropInterceptFull: a diverted SYN past the Interceptor's maxPending.
	DropInterceptFull = buf.NewDropReason("TCP_INTERCEPT_FULL")
)
