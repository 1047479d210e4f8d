package tcp

import (
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/tcp/cc"
)

// ECN codepoints in the IP TOS byte (RFC 3168 §5).
const (
	ecnMask = 0x03
	ecnECT0 = 0x02
	ecnCE   = 0x03
)

// ecnFlags returns the ECN bits a segment carries and whether its IP
// header is ECT (RFC 3168 §6.1.1–§6.1.5): SYN and SYN-ACK negotiate;
// ACKs echo congestion with ECE; new data is ECT(0) and carries CWR
// after a reduction; retransmissions and pure ACKs are not ECT.
func (s *Sock) ecnFlags(seq uint32, n int, flags header.TCPFlags) (header.TCPFlags, bool) {
	syn := flags&header.SYN != 0
	switch {
	case syn && flags&header.ACK == 0:
		if s.ecnOK {
			return header.ECE | header.CWR, false
		}
		return 0, false
	case syn:
		if s.ecnOK {
			return header.ECE, false
		}
		return 0, false
	case !s.ecnOK:
		return 0, false
	}
	var f header.TCPFlags
	if s.ecnEcho {
		f |= header.ECE
	}
	newData := n > 0 && header.SeqGEQ(seq, s.sndMax)
	if newData && s.cwrPending {
		f |= header.CWR
		s.cwrPending = false
	}
	return f, newData
}

// ecnRcv handles ECE and CWR on an arriving segment (RFC 3168 §6.1.2,
// §6.1.3).
func (s *Sock) ecnRcv(seg *segment) {
	if seg.flags&header.CWR != 0 {
		s.ecnEcho = false
	}
	if seg.flags&header.ECE == 0 || !header.SeqGT(seg.ack, s.ecnRecover) && s.ecnRecover != 0 {
		return
	}
	// "the TCP source halves the congestion window cwnd and reduces the
	// slow start threshold ssthresh" — at most once per window.
	s.p.count(TCPECNReduce)
	if !s.inRecovery {
		s.cs.Ssthresh = s.ca.SSThresh(&s.cs)
		s.cs.Cwnd = max(s.cs.Ssthresh, 1)
		s.ca.OnEvent(&s.cs, cc.EventECN, s.now())
	}
	s.ecnRecover = s.sndMax
	s.cwrPending = true
}
