package clock

import (
	"sync"
	"time"
)

// Manual is a clock for tests: time stands still until Advance, which runs
// every timer that falls due, in deadline order, on the caller's goroutine.
type Manual struct {
	mu  sync.Mutex
	now time.Time
	q   *queue
}

// Epoch is where every manual clock starts, so simulated times in test
// output are the same on every run.
var Epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// NewManual returns a manual clock at Epoch.
func NewManual() *Manual {
	m := &Manual{now: Epoch}
	m.q = newQueue(m.Now)
	return m
}

// Now is the simulated time.
func (m *Manual) Now() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// NewTimer returns a stopped timer.
func (m *Manual) NewTimer(f func()) *Timer { return m.q.newTimer(f) }

// InitTimer makes the embedded t a stopped timer of this clock.
func (m *Manual) InitTimer(t *Timer, h Handler) { m.q.initTimer(t, h) }

// AfterFunc runs f once after d of simulated time.
func (m *Manual) AfterFunc(d time.Duration, f func()) *Timer {
	t := m.q.newTimer(f)
	t.Reset(d)
	return t
}

// Advance moves time forward by d, stopping at each timer deadline on the
// way so that a callback sees Now equal to its deadline.
func (m *Manual) Advance(d time.Duration) {
	m.AdvanceTo(m.Now().Add(d))
}

// AdvanceTo moves time forward to t (never backward).
func (m *Manual) AdvanceTo(t time.Time) {
	for {
		m.q.mu.Lock()
		var next time.Time
		if len(m.q.h) > 0 {
			next = m.q.h[0].when
		}
		m.q.mu.Unlock()
		if next.IsZero() || next.After(t) {
			break
		}
		m.set(next)
		m.q.expire(next)
	}
	m.set(t)
}

// Step advances to the next timer deadline and runs what is due there,
// reporting false when no timer is armed.
func (m *Manual) Step() bool {
	m.q.mu.Lock()
	if len(m.q.h) == 0 {
		m.q.mu.Unlock()
		return false
	}
	next := m.q.h[0].when
	m.q.mu.Unlock()
	m.set(next)
	m.q.expire(next)
	return true
}

// NextDeadline is the earliest armed deadline, zero when none.
func (m *Manual) NextDeadline() time.Time {
	m.q.mu.Lock()
	defer m.q.mu.Unlock()
	if len(m.q.h) == 0 {
		return time.Time{}
	}
	return m.q.h[0].when
}

// Pending is the number of armed timers.
func (m *Manual) Pending() int { return m.q.pending() }

func (m *Manual) set(t time.Time) {
	m.mu.Lock()
	if t.After(m.now) {
		m.now = t
	}
	m.mu.Unlock()
}
