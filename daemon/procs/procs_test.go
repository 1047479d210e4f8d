package procs

import (
	"context"
	"testing"
	"time"
)

// rig is a controller on a fake CPU clock and a recorded GOMAXPROCS.
type rig struct {
	c   *Controller
	set []int
}

func newRig(cfg Config) *rig {
	r := &rig{}
	cfg.cpu = func() time.Duration { return 0 }
	cfg.set = func(n int) { r.set = append(r.set, n) }
	r.c = New(cfg)
	return r
}

// TestPolicy walks the controller through load changes: down to one P
// only after DownAfter quiet samples, up at once on one busy sample, and
// no change in the gap between Down and Up.
func TestPolicy(t *testing.T) {
	r := newRig(Config{Max: 2, DownAfter: 3})
	want := func(step string, procs int, sets []int) {
		t.Helper()
		if st := r.c.Stats(); st.Procs != procs {
			t.Fatalf("%s: procs %d, want %d", step, st.Procs, procs)
		}
		if len(r.set) != len(sets) {
			t.Fatalf("%s: GOMAXPROCS calls %v, want %v", step, r.set, sets)
		}
		for i := range sets {
			if r.set[i] != sets[i] {
				t.Fatalf("%s: GOMAXPROCS calls %v, want %v", step, r.set, sets)
			}
		}
	}
	want("start", 2, nil)
	r.c.step(0.1)
	r.c.step(0.1)
	want("two quiet samples", 2, nil)
	r.c.step(0.7) // in the gap: the quiet run starts over
	r.c.step(0.1)
	r.c.step(0.1)
	want("quiet run broken by a sample in the gap", 2, nil)
	r.c.step(0.1)
	want("three quiet samples in a row", 1, []int{1})
	r.c.step(0.8)
	r.c.step(0.5)
	want("one P, below Up", 1, []int{1})
	r.c.step(0.9)
	want("one P saturated", 2, []int{1, 2})
	r.c.step(1.6)
	want("two Ps busy", 2, []int{1, 2})
	if st := r.c.Stats(); st.Raises != 1 || st.Lowers != 1 || !st.Auto || st.Max != 2 {
		t.Fatalf("stats %+v, want 1 raise, 1 lower, auto, max 2", st)
	}
}

// TestRunRestoresMax: Run samples on its ticker, lowers an idle process
// to one P and gives back Max when its context ends.
func TestRunRestoresMax(t *testing.T) {
	r := newRig(Config{Max: 2, DownAfter: 1, Interval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.c.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for r.c.Stats().Procs != 1 {
		if time.Now().After(deadline) {
			t.Fatal("an idle process was not lowered to one P")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if st := r.c.Stats(); st.Procs != 2 || r.set[len(r.set)-1] != 2 {
		t.Fatalf("after Run: procs %d, calls %v; want Max restored", st.Procs, r.set)
	}
}

func TestFixedAndOneCPU(t *testing.T) {
	r := newRig(Config{Max: 4, Fixed: 1})
	r.c.Run(context.Background()) // returns at once
	if st := r.c.Stats(); st.Procs != 1 || st.Auto || len(r.set) != 1 {
		t.Fatalf("fixed 1: %+v calls %v", st, r.set)
	}
	r = newRig(Config{Max: 1})
	r.c.Run(context.Background()) // nothing to choose from
	if st := r.c.Stats(); st.Procs != 1 || st.Auto || len(r.set) != 0 {
		t.Fatalf("max 1: %+v calls %v", st, r.set)
	}
}

func TestParseFlag(t *testing.T) {
	for _, tc := range []struct {
		in    string
		fixed int
		ok    bool
	}{{"auto", 0, true}, {"1", 1, true}, {"2", 2, true}, {"3", 0, false}, {"0", 0, false}, {"x", 0, false}, {"", 0, false}} {
		cfg, err := ParseFlag(tc.in, 2)
		if (err == nil) != tc.ok || cfg.Fixed != tc.fixed {
			t.Errorf("ParseFlag(%q) = %+v, %v", tc.in, cfg, err)
		}
	}
}
