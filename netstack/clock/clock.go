// Package clock owns time for the stack (jiffies and the kernel timer
// lists): a Clock that reads the time and runs timers, a real clock driven
// by one goroutine, and a manual clock for tests that only moves when told.
//
// Theory of operation: every Clock keeps its timers in one min-heap ordered
// by deadline. A Timer is armed and re-armed without allocating. An owner
// with timers of its own (a TCP socket has five) embeds them as values and
// initialises them with InitTimer: they fire through the owner's Handler,
// which tells them apart by address, so neither the Timer nor a callback
// closure is allocated (as timer_setup embeds a timer_list in its owner);
// NewTimer and AfterFunc allocate both, for one-off users. The real
// clock runs one goroutine that sleeps until the earliest deadline and then
// runs every due callback in deadline order; the manual clock runs them
// inside Advance. So no timer costs a goroutine, and callbacks must be short
// and must not block (they run like softirq timers). A callback may re-arm
// or stop any timer, including its own.
//
// Lock order: a callback runs with no clock lock held, so it may take its
// owner's locks; owners may call Reset/Stop while holding their own locks.
//
// Not owned here: what timers do (their owners), per-packet timestamps
// (the link reader takes Now once per batch).
package clock

import (
	"container/heap"
	"sync"
	"time"
)

// Clock reads time and runs timers.
type Clock interface {
	// Now is the current time. Only differences between values are
	// meaningful for the manual clock.
	Now() time.Time
	// NewTimer returns a stopped timer that runs f when it fires.
	NewTimer(f func()) *Timer
	// AfterFunc runs f once after d.
	AfterFunc(d time.Duration, f func()) *Timer
	// InitTimer makes t, a Timer embedded in its owner, a stopped timer
	// that calls h.Fire(t) when it fires: no allocation, neither for
	// the Timer nor for a callback closure.
	InitTimer(t *Timer, h Handler)
}

// Handler is the owner of embedded Timers (InitTimer): Fire(t) runs
// when t fires, so one owner can tell its timers apart by address.
type Handler interface{ Fire(t *Timer) }

// Timer is one pending callback. Get one from a Clock (NewTimer,
// AfterFunc) or initialise an embedded one (InitTimer); a zero Timer may
// only be stopped.
type Timer struct {
	q    *queue
	f    func()  // NewTimer's callback, or nil
	h    Handler // InitTimer's owner, or nil
	when time.Time
	idx  int // position in the heap, -1 when not armed
}

// Reset arms t to fire d from now, replacing any earlier deadline. It
// reports whether the timer was armed before.
func (t *Timer) Reset(d time.Duration) bool {
	return t.ResetAt(t.q.now().Add(d))
}

// ResetAt arms t to fire at when.
func (t *Timer) ResetAt(when time.Time) bool {
	return t.q.arm(t, when)
}

// Stop disarms t, reporting whether it was armed. A zero Timer (an
// embedded one its owner never initialised) is stopped: false.
func (t *Timer) Stop() bool {
	if t.q == nil {
		return false
	}
	return t.q.disarm(t)
}

// Armed reports whether t is waiting to fire.
func (t *Timer) Armed() bool {
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	return t.idx >= 0
}

// Deadline is when an armed timer fires (zero when stopped).
func (t *Timer) Deadline() time.Time {
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	if t.idx < 0 {
		return time.Time{}
	}
	return t.when
}

// queue is the heap of armed timers shared by a clock's Timers.
type queue struct {
	mu   sync.Mutex
	h    timerHeap
	now  func() time.Time
	wake func(earliest time.Time) // called with mu held when a timer is due before target
	// target is when the driver (the real clock's goroutine) wakes up
	// next, as expire left it; zero when no timer was armed then. Arming
	// a timer for later than that needs no wake-up: the driver wakes
	// at target anyway and then sleeps until the new head. So a socket
	// that re-arms its retransmission timer on every segment does not
	// wake the driver every time.
	target time.Time
	seq    uint64
	fired  []*Timer // scratch for expire, reused
}

func newQueue(now func() time.Time) *queue {
	return &queue{now: now, wake: func(time.Time) {}}
}

func (q *queue) newTimer(f func()) *Timer { return &Timer{q: q, f: f, idx: -1} }

func (q *queue) initTimer(t *Timer, h Handler) { *t = Timer{q: q, h: h, idx: -1} }

// fire runs t's callback.
func (t *Timer) fire() {
	if t.f != nil {
		t.f()
		return
	}
	t.h.Fire(t)
}

func (q *queue) arm(t *Timer, when time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	was := t.idx >= 0
	t.when = when
	if was {
		heap.Fix(&q.h, t.idx)
	} else {
		heap.Push(&q.h, t)
	}
	if q.h[0] == t && (q.target.IsZero() || when.Before(q.target)) {
		q.target = when
		q.wake(when)
	}
	return was
}

func (q *queue) disarm(t *Timer) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if t.idx < 0 {
		return false
	}
	heap.Remove(&q.h, t.idx)
	return true
}

// expire runs every timer due at or before now, earliest first, and
// returns the next deadline (zero when none is armed). Callbacks run
// without the lock; a timer re-armed for a time <= now by its own callback
// runs again in the same call, bounded by maxRounds to keep a buggy owner
// from spinning forever.
func (q *queue) expire(now time.Time) time.Time {
	const maxRounds = 1 << 16
	for round := 0; round < maxRounds; round++ {
		q.mu.Lock()
		if len(q.h) == 0 || q.h[0].when.After(now) {
			var next time.Time
			if len(q.h) > 0 {
				next = q.h[0].when
			}
			q.target = next
			q.mu.Unlock()
			return next
		}
		t := heap.Pop(&q.h).(*Timer)
		q.mu.Unlock()
		t.fire()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.target = time.Time{}
	if len(q.h) > 0 {
		q.target = q.h[0].when
	}
	return q.target
}

// pending is the number of armed timers.
func (q *queue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.h)
}

type timerHeap []*Timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].when.Before(h[j].when) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *timerHeap) Push(x any) {
	t := x.(*Timer)
	t.idx = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	n := len(old)
	t := old[n-1]
	old[n-1] = nil
	t.idx = -1
	*h = old[:n-1]
	return t
}
