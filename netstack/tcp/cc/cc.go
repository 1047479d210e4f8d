// Package cc owns TCP congestion control behind one small interface
// (struct tcp_congestion_ops, net/ipv4/tcp_cong.c): NewReno (RFC 5681
// §3.1, tcp_reno_cong_avoid) and CUBIC (RFC 9438, tcp_cubic.c), the
// default. An algorithm only decides windows: it reads and writes the
// fields of a State the connection owns and calls it under the
// connection's lock, so algorithms hold no locks and start no timers.
//
// Not owned here: loss detection and recovery (tcp: fast retransmit,
// NewReno partial ACKs, RFC 6675), which call SSThresh on a loss and set
// Cwnd themselves during recovery as RFC 6582 and RFC 6675 prescribe.
//
// Units are segments of MSS bytes, as in Linux (snd_cwnd).
package cc

import (
	"fmt"
	"time"
)

// InitialWindow is the initial congestion window in segments (RFC 6928 §2,
// TCP_INIT_CWND).
const InitialWindow = 10

// State is what an algorithm reads and writes: the connection's window
// variables and the measurements the connection makes for it.
type State struct {
	// Cwnd and Ssthresh are the congestion window and slow start
	// threshold in segments (RFC 5681 §3.1).
	Cwnd, Ssthresh uint32
	// CwndCnt counts ACKed segments towards the next linear increase
	// (snd_cwnd_cnt).
	CwndCnt uint32
	// SRTT and MinRTT are the smoothed and the lowest RTT seen.
	SRTT, MinRTT time.Duration
	// InFlight is the number of segments in flight when the ACK arrived.
	InFlight uint32
}

// InSlowStart reports Cwnd < Ssthresh (RFC 5681 §3.1).
func (s *State) InSlowStart() bool { return s.Cwnd < s.Ssthresh }

// Event is a connection event an algorithm may react to (enum tcp_ca_event).
type Event uint8

const (
	// EventLoss: the retransmission timer fired (TCP_CA_Loss); the
	// connection has set Ssthresh from SSThresh and Cwnd to 1.
	EventLoss Event = iota + 1
	// EventIdleRestart: sending resumes after an idle period longer
	// than the RTO (CA_EVENT_TX_START, RFC 5681 §4.1).
	EventIdleRestart
	// EventRecoveryExit: fast recovery ended (a full ACK).
	EventRecoveryExit
	// EventECN: the peer echoed congestion (RFC 3168 §6.1.2).
	EventECN
)

// Algorithm is tcp_congestion_ops. Every call runs under the connection's
// lock and must not block.
type Algorithm interface {
	Name() string
	// Init sets up a new connection's state (init).
	Init(s *State, now time.Time)
	// SSThresh returns the slow start threshold after a loss (ssthresh).
	SSThresh(s *State) uint32
	// CongAvoid grows the window for acked newly ACKed segments outside
	// recovery (cong_avoid).
	CongAvoid(s *State, acked uint32, now time.Time)
	// OnEvent tells the algorithm about an event (cwnd_event).
	OnEvent(s *State, ev Event, now time.Time)
}

// Default is the default algorithm's name (net.ipv4.tcp_congestion_control).
const Default = "cubic"

// New returns a fresh algorithm instance by name: "reno" or "cubic".
// Each connection needs its own instance (algorithms keep per-connection
// state, like inet_csk_ca).
func New(name string) (Algorithm, error) {
	switch name {
	case "reno", "newreno":
		return &Reno{}, nil
	case "cubic", "":
		return &Cubic{}, nil
	}
	return nil, fmt.Errorf("cc: unknown congestion control %q", name)
}

// slowStart is tcp_slow_start: RFC 5681 §3.1 grows cwnd by the number of
// segments acked (RFC 3465 byte counting with L = unbounded, as Linux),
// never past ssthresh; it returns the ACKed segments left over.
func slowStart(s *State, acked uint32) uint32 {
	cwnd := min(s.Cwnd+acked, s.Ssthresh)
	acked -= cwnd - s.Cwnd
	s.Cwnd = cwnd
	return acked
}

// congAvoidAI is tcp_cong_avoid_ai: one segment per w segments ACKed.
func congAvoidAI(s *State, w, acked uint32) {
	w = max(w, 1)
	if s.CwndCnt >= w {
		s.CwndCnt = 0
		s.Cwnd++
	}
	s.CwndCnt += acked
	if s.CwndCnt >= w {
		delta := s.CwndCnt / w
		s.CwndCnt -= delta * w
		s.Cwnd += delta
	}
}

// Reno is NewReno's window growth: slow start then one segment per RTT
// (RFC 5681 §3.1), halving on loss.
type Reno struct{}

func (*Reno) Name() string { return "reno" }

func (*Reno) Init(s *State, now time.Time) {}

// SSThresh is RFC 5681 §3.1 equation (4), in segments: max(FlightSize/2, 2).
func (*Reno) SSThresh(s *State) uint32 { return max(s.Cwnd/2, 2) }

func (*Reno) CongAvoid(s *State, acked uint32, now time.Time) {
	if s.InSlowStart() {
		if acked = slowStart(s, acked); acked == 0 {
			return
		}
	}
	congAvoidAI(s, s.Cwnd, acked)
}

func (*Reno) OnEvent(s *State, ev Event, now time.Time) {}
