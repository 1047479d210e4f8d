package cc

import (
	"testing"
	"time"
)

var t0 = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// RFC 5681 §3.1: slow start grows cwnd by the segments ACKed up to
// ssthresh, then by about one segment per RTT.
func TestRenoGrowth(t *testing.T) {
	r := &Reno{}
	s := &State{Cwnd: InitialWindow, Ssthresh: 20}
	r.Init(s, t0)
	r.CongAvoid(s, 8, t0)
	if s.Cwnd != 18 {
		t.Fatalf("slow start: cwnd %d, want 18", s.Cwnd)
	}
	r.CongAvoid(s, 8, t0) // 2 to reach ssthresh, 6 towards linear growth
	if s.Cwnd != 20 || s.CwndCnt != 6 {
		t.Fatalf("at ssthresh: cwnd %d cnt %d, want 20, 6", s.Cwnd, s.CwndCnt)
	}
	r.CongAvoid(s, 20, t0)
	if s.Cwnd != 21 {
		t.Fatalf("one RTT of congestion avoidance: cwnd %d, want 21", s.Cwnd)
	}
	if got := r.SSThresh(&State{Cwnd: 3}); got != 2 {
		t.Fatalf("ssthresh floor: %d, want 2", got)
	}
	if got := r.SSThresh(&State{Cwnd: 40}); got != 20 {
		t.Fatalf("ssthresh: %d, want 20", got)
	}
}

// RFC 9438 §4.6: the window drops to beta_cubic*cwnd; §4.2: it then grows
// back to W_max along the cubic, reaching it at about K seconds.
func TestCubicRecoversToWmaxAtK(t *testing.T) {
	c := &Cubic{}
	s := &State{Cwnd: 100, Ssthresh: 1 << 30, SRTT: 100 * time.Millisecond} // long enough that the Reno-friendly region (§4.3) does not dominate
	c.Init(s, t0)
	s.Ssthresh = c.SSThresh(s)
	if s.Ssthresh != 70 {
		t.Fatalf("ssthresh %d, want 70", s.Ssthresh)
	}
	s.Cwnd = s.Ssthresh
	k := time.Duration(c.kFor(100, 70) * float64(time.Second))
	now := t0
	for now.Sub(t0) < k+time.Second {
		c.CongAvoid(s, s.Cwnd, now) // one RTT's worth of ACKs
		now = now.Add(s.SRTT)
		if now.Sub(t0) < k/2 && s.Cwnd >= 100 {
			t.Fatalf("cwnd %d reached W_max before K/2 (%v at %v)", s.Cwnd, k, now.Sub(t0))
		}
	}
	if s.Cwnd < 100 {
		t.Fatalf("cwnd %d did not reach W_max 100 by K+1s (K=%v)", s.Cwnd, k)
	}
	// §4.7 fast convergence: a loss below the previous W_max lowers W_max.
	s.Cwnd = 90
	c.SSThresh(s)
	if c.wMax >= 90 {
		t.Fatalf("fast convergence: W_max %v, want < 90", c.wMax)
	}
}

func (c *Cubic) kFor(wmax, cwnd float64) float64 {
	d := (wmax - cwnd) / cubicC
	k := 0.0
	for k*k*k < d {
		k += 0.001
	}
	return k
}

func TestNew(t *testing.T) {
	for _, n := range []string{"reno", "cubic", ""} {
		if _, err := New(n); err != nil {
			t.Fatal(n, err)
		}
	}
	if _, err := New("bbr9"); err == nil {
		t.Fatal("unknown name accepted")
	}
}
