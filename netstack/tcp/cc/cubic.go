package cc

import (
	"math"
	"time"
)

// CUBIC constants (RFC 9438 §4.6: beta_cubic 0.7, §5: C 0.4).
const (
	cubicBeta = 0.7
	cubicC    = 0.4
)

// Cubic is RFC 9438 CUBIC (tcp_cubic.c without HyStart).
type Cubic struct {
	wMax       float64   // W_max: window before the last reduction, segments
	wLastMax   float64   // for fast convergence (§4.7)
	k          float64   // K in seconds (§4.2, eq. 2)
	epoch      time.Time // start of the current congestion avoidance stage
	cwndEpoch  float64   // cwnd at the start of the epoch
	wEst       float64   // W_est, the Reno-friendly estimate (§4.3)
	inProgress bool
}

func (*Cubic) Name() string { return "cubic" }

func (c *Cubic) Init(s *State, now time.Time) { *c = Cubic{} }

// SSThresh is RFC 9438 §4.6 (multiplicative decrease) with §4.7 fast
// convergence: W_max is remembered, ssthresh = cwnd * beta_cubic.
func (c *Cubic) SSThresh(s *State) uint32 {
	cwnd := float64(s.Cwnd)
	// RFC 9438 §4.7: "if cwnd < W_max ... W_max = cwnd * (1 + beta_cubic) / 2".
	if cwnd < c.wLastMax {
		c.wMax = cwnd * (1 + cubicBeta) / 2
	} else {
		c.wMax = cwnd
	}
	c.wLastMax = cwnd
	c.inProgress = false
	return max(uint32(cwnd*cubicBeta), 2)
}

// CongAvoid is §4.2–§4.4: in slow start as Reno; in congestion avoidance
// cwnd moves towards W_cubic(t+RTT), never below the Reno-friendly W_est.
func (c *Cubic) CongAvoid(s *State, acked uint32, now time.Time) {
	if s.InSlowStart() {
		if acked = slowStart(s, acked); acked == 0 {
			return
		}
	}
	cwnd := float64(s.Cwnd)
	if !c.inProgress {
		c.inProgress = true
		c.epoch = now
		c.cwndEpoch = cwnd
		if c.wMax < cwnd {
			// No loss yet or cwnd grew past W_max: K = 0 (§4.2 note).
			c.wMax = cwnd
			c.k = 0
		} else {
			// §4.2 eq. 2: K = cubic_root((W_max - cwnd_epoch) / C).
			c.k = math.Cbrt((c.wMax - cwnd) / cubicC)
		}
		c.wEst = cwnd
	}
	rtt := s.SRTT
	if rtt <= 0 {
		rtt = 100 * time.Millisecond
	}
	t := now.Sub(c.epoch) + rtt
	d := t.Seconds() - c.k
	target := cubicC*d*d*d + c.wMax // §4.2 eq. 1 at t+RTT

	// §4.3: W_est grows by alpha_cubic per cwnd of ACKed segments,
	// alpha_cubic = 3 (1 - beta) / (1 + beta).
	alpha := 3 * (1 - cubicBeta) / (1 + cubicBeta)
	c.wEst += alpha * float64(acked) / cwnd
	if c.wEst > target {
		target = c.wEst
	}
	// §4.4: cwnd grows by (target - cwnd)/cwnd per ACKed segment, bounded
	// to at most 1.5x per RTT.
	if target > cwnd*1.5 {
		target = cwnd * 1.5
	}
	if target <= cwnd {
		// §4.4: the concave plateau: grow very slowly (one per 100 cwnd).
		congAvoidAI(s, 100*s.Cwnd, acked)
		return
	}
	w := uint32(cwnd / (target - cwnd))
	congAvoidAI(s, w, acked)
}

func (c *Cubic) OnEvent(s *State, ev Event, now time.Time) {
	switch ev {
	case EventLoss:
		// §4.8: after an RTO the epoch restarts from slow start.
		c.inProgress = false
	case EventIdleRestart:
		// §5.8: the idle period must not count towards t.
		c.inProgress = false
	case EventRecoveryExit:
		c.inProgress = false
	}
}
