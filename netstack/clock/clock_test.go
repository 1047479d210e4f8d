package clock

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestManualFiresInDeadlineOrder(t *testing.T) {
	m := NewManual()
	var got []string
	var at []time.Duration
	rec := func(name string) func() {
		return func() { got = append(got, name); at = append(at, m.Now().Sub(Epoch)) }
	}
	m.AfterFunc(3*time.Second, rec("c"))
	m.AfterFunc(1*time.Second, rec("a"))
	m.AfterFunc(2*time.Second, rec("b"))
	m.Advance(1500 * time.Millisecond)
	if len(got) != 1 || got[0] != "a" || at[0] != time.Second {
		t.Fatalf("after 1.5s: %v at %v", got, at)
	}
	m.Advance(10 * time.Second)
	if len(got) != 3 || got[1] != "b" || got[2] != "c" || at[2] != 3*time.Second {
		t.Fatalf("after 11.5s: %v at %v", got, at)
	}
	if m.Now().Sub(Epoch) != 11500*time.Millisecond {
		t.Fatalf("now %v", m.Now().Sub(Epoch))
	}
}

func TestTimerResetAndStop(t *testing.T) {
	m := NewManual()
	n := 0
	tm := m.NewTimer(func() { n++ })
	if tm.Armed() || tm.Stop() {
		t.Fatal("new timer must be stopped")
	}
	tm.Reset(time.Second)
	if was := tm.Reset(5 * time.Second); !was {
		t.Fatal("Reset of an armed timer must report it was armed")
	}
	m.Advance(2 * time.Second)
	if n != 0 {
		t.Fatal("fired at the replaced deadline")
	}
	if !tm.Stop() {
		t.Fatal("Stop of an armed timer must report true")
	}
	m.Advance(10 * time.Second)
	if n != 0 || m.Pending() != 0 {
		t.Fatalf("stopped timer fired %d, pending %d", n, m.Pending())
	}
}

// A callback that re-arms itself (a retransmission timer) fires once per
// period as time advances.
func TestPeriodicRearm(t *testing.T) {
	m := NewManual()
	var times []time.Duration
	var tm *Timer
	tm = m.NewTimer(func() {
		times = append(times, m.Now().Sub(Epoch))
		if len(times) < 4 {
			tm.Reset(time.Duration(len(times)) * time.Second)
		}
	})
	tm.Reset(time.Second)
	m.Advance(time.Minute)
	want := []time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 7 * time.Second}
	if len(times) != len(want) {
		t.Fatalf("fired at %v", times)
	}
	for i := range want {
		if times[i] != want[i] {
			t.Fatalf("fired at %v, want %v", times, want)
		}
	}
}

func TestStepGoesToNextDeadline(t *testing.T) {
	m := NewManual()
	fired := false
	m.AfterFunc(time.Hour, func() { fired = true })
	if !m.Step() || !fired || m.Now().Sub(Epoch) != time.Hour {
		t.Fatalf("step: fired %v now %v", fired, m.Now().Sub(Epoch))
	}
	if m.Step() {
		t.Fatal("step with nothing armed must report false")
	}
}

func TestRealClockFires(t *testing.T) {
	r := NewReal()
	defer r.Close()
	done := make(chan struct{})
	var n atomic.Int32
	r.AfterFunc(50*time.Millisecond, func() { n.Add(1) })
	// An earlier timer armed later must wake the clock goroutine.
	r.AfterFunc(time.Millisecond, func() { close(done) })
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("real timer did not fire within 5s")
	}
	deadline := time.Now().Add(5 * time.Second)
	for n.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n.Load() != 1 {
		t.Fatal("second real timer did not fire")
	}
}

func BenchmarkTimerReset(b *testing.B) {
	m := NewManual()
	timers := make([]*Timer, 10000)
	for i := range timers {
		timers[i] = m.NewTimer(func() {})
		timers[i].Reset(time.Duration(i) * time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		timers[i%len(timers)].Reset(time.Duration(i%5000) * time.Millisecond)
	}
}

// The driver is woken only for a timer due before the instant it already
// sleeps until: re-arming for later (a retransmission timer on every
// segment) costs no wake-up, an earlier deadline does.
func TestWakeOnlyForEarlierDeadline(t *testing.T) {
	base := time.Unix(1000, 0)
	q := newQueue(func() time.Time { return base })
	wakes := 0
	q.wake = func(time.Time) { wakes++ }
	a, b, c := q.newTimer(func() {}), q.newTimer(func() {}), q.newTimer(func() {})
	a.Reset(100 * time.Millisecond) // nothing armed: wake
	b.Reset(200 * time.Millisecond)
	a.Reset(150 * time.Millisecond) // still the head, later than the driver's target
	if wakes != 1 {
		t.Fatalf("%d wakes after arming later deadlines, want 1", wakes)
	}
	c.Reset(50 * time.Millisecond) // earlier than the target: wake
	if wakes != 2 {
		t.Fatalf("%d wakes after an earlier deadline, want 2", wakes)
	}
	if next := q.expire(base); !next.Equal(base.Add(50 * time.Millisecond)) {
		t.Fatalf("next %v", next)
	}
	c.Stop()
	c.Reset(60 * time.Millisecond) // the driver wakes at 50 ms and sees it
	if wakes != 2 {
		t.Fatalf("%d wakes, want 2", wakes)
	}
	if next := q.expire(base.Add(50 * time.Millisecond)); !next.Equal(base.Add(60 * time.Millisecond)) {
		t.Fatalf("after the target the driver sleeps until %v, want the new head", next)
	}
}

type firedTimers struct{ got []*Timer }

func (f *firedTimers) Fire(t *Timer) { f.got = append(f.got, t) }

// Timers embedded in their owner (InitTimer) fire through the owner's
// Handler with their own address, re-arm and stop like NewTimer's, and
// arming them allocates nothing.
func TestEmbeddedTimers(t *testing.T) {
	m := NewManual()
	var owner struct {
		a, b Timer
		h    firedTimers
	}
	m.InitTimer(&owner.a, &owner.h)
	m.InitTimer(&owner.b, &owner.h)
	if owner.a.Armed() || owner.b.Stop() {
		t.Fatal("an initialised timer must be stopped")
	}
	var zero Timer
	if zero.Stop() {
		t.Fatal("a zero timer must be stopped")
	}
	if n := testing.AllocsPerRun(100, func() {
		owner.a.Reset(2 * time.Second)
		owner.b.Reset(time.Second)
	}); n != 0 {
		t.Fatalf("%v allocations per re-arm", n)
	}
	owner.a.Reset(2 * time.Second)
	owner.b.Reset(time.Second)
	m.Advance(3 * time.Second)
	if len(owner.h.got) != 2 || owner.h.got[0] != &owner.b || owner.h.got[1] != &owner.a {
		t.Fatalf("fired %v, want b then a", owner.h.got)
	}
	owner.a.Reset(time.Second)
	owner.a.Stop()
	m.Advance(2 * time.Second)
	if len(owner.h.got) != 2 {
		t.Fatal("a stopped embedded timer fired")
	}
}
