package procs

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"time"
)

// The Governor's thresholds (the package doc says where they come from).
const (
	// DefaultInterval is the sampling window.
	DefaultInterval = 100 * time.Millisecond
	// BulkRate is the byte rate through the stack's NICs (received plus
	// sent) at or above which the traffic is bulk: the daemon spreads.
	BulkRate = 64 << 20
	// FullCPU is the CPU use, in CPUs, at or above which one P counts
	// as full: the daemon spreads.
	FullCPU = 0.85
	// QuietCPU is the CPU use under which a spread window is quiet (with
	// a byte rate under BulkRate/4).
	QuietCPU = 0.7
	// QuietWindows quiet windows in a row narrow the daemon to one P.
	QuietWindows = 5
	// HoldWindows is the shortest stay spread; MaxHoldWindows bounds its
	// doubling for a load that keeps crossing the line.
	HoldWindows    = 10
	MaxHoldWindows = 600
)

// Sample is one reading of what the Governor follows.
type Sample struct {
	At    time.Time     // when (its monotonic reading is used)
	CPU   time.Duration // the process's CPU time so far, user and system
	Bytes uint64        // bytes the stack's NICs received and sent so far
}

// window is the use between two samples: CPU in CPUs, bytes per second.
type window struct {
	cpu  float64
	rate float64
}

// windowOf returns the use between prev and cur; ok is false when no
// time passed. Counters that went down (a NIC removed, its bytes gone
// from the sum) count as nothing moved.
func windowOf(prev, cur Sample) (w window, ok bool) {
	dt := cur.At.Sub(prev.At)
	if dt <= 0 {
		return w, false
	}
	s := dt.Seconds()
	if cur.CPU > prev.CPU {
		w.cpu = (cur.CPU - prev.CPU).Seconds() / s
	}
	if cur.Bytes > prev.Bytes {
		w.rate = float64(cur.Bytes-prev.Bytes) / s
	}
	return w, true
}

// state is the Governor's memory between windows.
type state struct {
	spread  bool
	hold    int // windows left before a narrowing may start counting
	holdLen int // the hold given at the last spread
	quiet   int // quiet windows in a row (spread, hold over)
	// sinceNarrow counts windows since the last narrowing; -1 before
	// the first.
	sinceNarrow int
}

// initial is the state at start: spread (the runtime's default), for one
// hold, so start-up recovery has every CPU.
func initial() state {
	return state{spread: true, hold: HoldWindows, holdLen: HoldWindows, sinceNarrow: -1}
}

// action is what decide asks of the runtime.
type action int

const (
	keep action = iota
	spreadOut
	narrowIn
)

// decide is the Governor's policy: the next state and the action for one
// window. It is a pure function of its arguments.
func decide(s state, w window) (state, action) {
	if !s.spread {
		if s.sinceNarrow >= 0 {
			s.sinceNarrow++
		}
		if w.rate < BulkRate && w.cpu < FullCPU {
			return s, keep
		}
		// Back within a hold of the last narrowing: the load sits on the
		// line; stay spread twice as long this time.
		if s.sinceNarrow >= 0 && s.sinceNarrow <= s.holdLen {
			s.holdLen = min(2*s.holdLen, MaxHoldWindows)
		} else {
			s.holdLen = HoldWindows
		}
		s.spread, s.hold, s.quiet = true, s.holdLen, 0
		return s, spreadOut
	}
	if s.hold > 0 {
		s.hold--
		return s, keep
	}
	if w.rate >= BulkRate/4 || w.cpu >= QuietCPU {
		s.quiet = 0
		return s, keep
	}
	if s.quiet++; s.quiet < QuietWindows {
		return s, keep
	}
	s.spread, s.quiet, s.sinceNarrow = false, 0, 0
	return s, narrowIn
}

// Config is a Governor's wiring; Read is required.
type Config struct {
	// Interval is the sampling window; 0 is DefaultInterval.
	Interval time.Duration
	// Read samples the counters.
	Read func() Sample
	// Spread gives the runtime its default count of Ps back
	// (runtime.SetDefaultGOMAXPROCS); Narrow sets one
	// (runtime.GOMAXPROCS(1)); Procs reads the count
	// (runtime.GOMAXPROCS(0)). Tests replace them.
	Spread func()
	Narrow func()
	Procs  func() int
	Logger *slog.Logger
}

// Governor changes the daemon's count of Ps with its traffic (the
// package doc).
type Governor struct {
	cfg Config

	mu       sync.Mutex
	st       state
	last     Sample
	sampled  bool
	spreads  uint64
	narrows  uint64
	lastCPU  float64
	lastRate float64
}

// New returns a Governor; Run starts it.
func New(cfg Config) *Governor {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Spread == nil {
		cfg.Spread = runtime.SetDefaultGOMAXPROCS
	}
	if cfg.Narrow == nil {
		cfg.Narrow = func() { runtime.GOMAXPROCS(1) }
	}
	if cfg.Procs == nil {
		cfg.Procs = func() int { return runtime.GOMAXPROCS(0) }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Governor{cfg: cfg, st: initial()}
}

// Run samples every Interval until ctx ends, then gives the runtime its
// default back.
func (g *Governor) Run(ctx context.Context) {
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	defer g.restore()
	g.Step(g.cfg.Read())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.Step(g.cfg.Read())
		}
	}
}

// Step takes one sample: with the one before it, a window to decide on.
// Run calls it every Interval.
func (g *Governor) Step(cur Sample) {
	g.mu.Lock()
	defer g.mu.Unlock()
	prev, had := g.last, g.sampled
	g.last, g.sampled = cur, true
	if !had {
		return
	}
	w, ok := windowOf(prev, cur)
	if !ok {
		return
	}
	g.lastCPU, g.lastRate = w.cpu, w.rate
	var a action
	g.st, a = decide(g.st, w)
	switch a {
	case spreadOut:
		g.cfg.Spread()
		g.spreads++
		g.cfg.Logger.Debug("procs: spread", "procs", g.cfg.Procs(), "cpu", w.cpu, "bytesPerSec", uint64(w.rate), "holdWindows", g.st.holdLen)
	case narrowIn:
		g.cfg.Narrow()
		g.narrows++
		g.cfg.Logger.Debug("procs: narrowed to one", "cpu", w.cpu, "bytesPerSec", uint64(w.rate))
	}
}

// restore spreads for good (Run's end).
func (g *Governor) restore() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.st.spread {
		g.cfg.Spread()
		g.st.spread = true
	}
}

// Status is what the Governor did.
type Status struct {
	Procs   int     // Ps now
	Spread  bool    // at the runtime's default (else one P)
	Spreads uint64  // changes to the default
	Narrows uint64  // changes to one P
	CPU     float64 // the last window's CPU use, in CPUs
	Rate    float64 // the last window's bytes per second through the NICs
}

// Status reports the Governor.
func (g *Governor) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Status{Procs: g.cfg.Procs(), Spread: g.st.spread, Spreads: g.spreads, Narrows: g.narrows,
		CPU: g.lastCPU, Rate: g.lastRate}
}
