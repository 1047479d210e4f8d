package procs

import (
	"context"
	"sync"
	"testing"
	"time"
)

var (
	quiet = window{cpu: 0.3, rate: 1 << 20}      // a relayed RR or connection stream
	busy  = window{cpu: 0.75, rate: 1 << 20}     // not quiet, not full
	full  = window{cpu: FullCPU, rate: 0}        // one P saturated
	bulk  = window{cpu: 0.5, rate: BulkRate}     // a stream
	trick = window{cpu: 0.2, rate: BulkRate / 4} // bytes keep it spread
)

// run feeds windows to decide from s and returns the last state and the
// actions taken, by window index.
func run(s state, ws ...window) (state, map[int]action) {
	acts := map[int]action{}
	for i, w := range ws {
		var a action
		s, a = decide(s, w)
		if a != keep {
			acts[i] = a
		}
	}
	return s, acts
}

func repeat(w window, n int) []window {
	out := make([]window, n)
	for i := range out {
		out[i] = w
	}
	return out
}

func TestDecideNarrowsAfterHoldAndQuiet(t *testing.T) {
	s, acts := run(initial(), repeat(quiet, HoldWindows+QuietWindows)...)
	if len(acts) != 1 || acts[HoldWindows+QuietWindows-1] != narrowIn || s.spread {
		t.Fatalf("actions %v, state %+v: want one narrowing at the last window", acts, s)
	}
	// One busy window in the quiet run restarts the count.
	ws := append(repeat(quiet, HoldWindows+QuietWindows-1), busy)
	ws = append(ws, repeat(quiet, QuietWindows-1)...)
	if s, acts = run(initial(), ws...); len(acts) != 0 || !s.spread {
		t.Fatalf("busy window: actions %v, state %+v: want none", acts, s)
	}
	for _, w := range []window{busy, trick} {
		if s, acts = run(initial(), repeat(w, 100)...); len(acts) != 0 || !s.spread {
			t.Fatalf("%+v: actions %v: want spread throughout", w, acts)
		}
	}
}

func TestDecideSpreadsOnBulkOrFullCPU(t *testing.T) {
	narrow, _ := run(initial(), repeat(quiet, HoldWindows+QuietWindows)...)
	for _, w := range []window{bulk, full} {
		// Far from the last narrowing: the first hold.
		s, _ := run(narrow, repeat(quiet, 2*HoldWindows)...)
		s2, a := decide(s, w)
		if a != spreadOut || !s2.spread || s2.hold != HoldWindows {
			t.Fatalf("%+v: action %v, state %+v: want spread with a hold of %d", w, a, s2, HoldWindows)
		}
	}
	for _, w := range []window{quiet, busy} {
		if s, acts := run(narrow, repeat(w, 100)...); len(acts) != 0 || s.spread {
			t.Fatalf("%+v: actions %v: want narrow throughout", w, acts)
		}
	}
}

// A load on the line (narrowed, then full again at once) doubles the hold
// each time, up to MaxHoldWindows, and a quiet spell resets it.
func TestDecideHoldBacksOff(t *testing.T) {
	s := initial()
	hold := HoldWindows
	for i := 0; i < 12; i++ {
		var acts map[int]action
		s, acts = run(s, repeat(quiet, s.hold+QuietWindows)...)
		if s.spread || len(acts) != 1 {
			t.Fatalf("round %d: not narrowed: %v %+v", i, acts, s)
		}
		var a action
		s, a = decide(s, full)
		hold = min(2*hold, MaxHoldWindows)
		if a != spreadOut || s.holdLen != hold || s.hold != hold {
			t.Fatalf("round %d: action %v, state %+v: want a hold of %d", i, a, s, hold)
		}
	}
	s, _ = run(s, repeat(quiet, s.hold+QuietWindows+HoldWindows+MaxHoldWindows+1)...)
	s, a := decide(s, bulk)
	if a != spreadOut || s.holdLen != HoldWindows {
		t.Fatalf("after a quiet spell: action %v, state %+v: want the first hold", a, s)
	}
}

func TestWindowOf(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := Sample{At: t0, CPU: time.Second, Bytes: 1000}
	for _, tt := range []struct {
		name string
		cur  Sample
		want window
		ok   bool
	}{
		{"rates", Sample{At: t0.Add(100 * time.Millisecond), CPU: time.Second + 50*time.Millisecond, Bytes: 1000 + 1<<20},
			window{cpu: 0.5, rate: 10 << 20}, true},
		{"a NIC removed: the byte sum went down", Sample{At: t0.Add(time.Second), CPU: 2 * time.Second, Bytes: 10},
			window{cpu: 1}, true},
		{"no time passed", Sample{At: t0, CPU: 2 * time.Second, Bytes: 5000}, window{}, false},
		{"clock went back", Sample{At: t0.Add(-time.Second), CPU: 2 * time.Second}, window{}, false},
	} {
		w, ok := windowOf(a, tt.cur)
		near := func(x, y float64) bool { return x-y < 1e-9 && y-x < 1e-9 }
		if ok != tt.ok || !near(w.cpu, tt.want.cpu) || !near(w.rate, tt.want.rate) {
			t.Errorf("%s: %+v %v, want %+v %v", tt.name, w, ok, tt.want, tt.ok)
		}
	}
}

// fakeRuntime stands for the runtime's GOMAXPROCS.
type fakeRuntime struct {
	mu    sync.Mutex
	procs int
	max   int
	calls int
}

func (f *fakeRuntime) config(read func() Sample) Config {
	return Config{Read: read, Interval: time.Millisecond,
		Spread: func() { f.mu.Lock(); f.procs = f.max; f.calls++; f.mu.Unlock() },
		Narrow: func() { f.mu.Lock(); f.procs = 1; f.calls++; f.mu.Unlock() },
		Procs:  func() int { f.mu.Lock(); defer f.mu.Unlock(); return f.procs },
	}
}

// Step turns samples into windows and the runtime follows the decisions.
func TestGovernorStep(t *testing.T) {
	rt := &fakeRuntime{procs: 4, max: 4}
	g := New(rt.config(nil))
	now := time.Unix(0, 0)
	var cpu time.Duration
	var bytes uint64
	step := func(dcpu time.Duration, dbytes uint64) {
		now, cpu, bytes = now.Add(100*time.Millisecond), cpu+dcpu, bytes+dbytes
		g.Step(Sample{At: now, CPU: cpu, Bytes: bytes})
	}
	step(0, 0) // the first sample only sets the origin
	for i := 0; i < HoldWindows+QuietWindows; i++ {
		step(30*time.Millisecond, 1000)
	}
	if st := g.Status(); st.Procs != 1 || st.Spread || st.Narrows != 1 || st.Spreads != 0 {
		t.Fatalf("after a quiet spell: %+v", st)
	}
	step(20*time.Millisecond, 100<<20) // 1000 MiB/s
	st := g.Status()
	if st.Procs != 4 || !st.Spread || st.Spreads != 1 || st.Rate < BulkRate || st.CPU < 0.19 || st.CPU > 0.21 {
		t.Fatalf("after a bulk window: %+v", st)
	}
	if rt.calls != 2 {
		t.Fatalf("runtime changed %d times, want 2", rt.calls)
	}
}

// Run samples until its context ends and then gives the runtime its
// default back.
func TestGovernorRunRestores(t *testing.T) {
	rt := &fakeRuntime{procs: 2, max: 2}
	var mu sync.Mutex
	now := time.Unix(0, 0)
	reads := 0
	read := func() Sample {
		mu.Lock()
		defer mu.Unlock()
		reads++
		now = now.Add(100 * time.Millisecond)
		return Sample{At: now} // idle: no CPU, no bytes
	}
	g := New(rt.config(read))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx); close(done) }()
	// Bounded wait for the narrowing (HoldWindows+QuietWindows samples
	// of a 1 ms ticker).
	deadline := time.Now().Add(10 * time.Second)
	for g.Status().Narrows == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := g.Status(); st.Narrows == 0 || st.Procs != 1 {
		cancel()
		<-done
		t.Fatalf("never narrowed: %+v", st)
	}
	cancel()
	<-done
	if st := g.Status(); st.Procs != 2 || !st.Spread {
		t.Fatalf("after Run: %+v, want the default back", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if reads < HoldWindows+QuietWindows+1 {
		t.Fatalf("%d reads", reads)
	}
}
