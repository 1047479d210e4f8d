package clock

import (
	"sync"
	"time"
)

// Real is the wall clock. One goroutine sleeps until the earliest timer and
// runs the due callbacks; Close stops it.
type Real struct {
	q      *queue
	kick   chan struct{}
	done   chan struct{}
	closed sync.Once
}

// NewReal starts a real clock.
func NewReal() *Real {
	r := &Real{q: newQueue(time.Now), kick: make(chan struct{}, 1), done: make(chan struct{})}
	r.q.wake = func(time.Time) {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
	go r.run()
	return r
}

func (r *Real) run() {
	sleep := time.NewTimer(time.Hour)
	defer sleep.Stop()
	for {
		next := r.q.expire(time.Now())
		d := time.Hour
		if !next.IsZero() {
			d = time.Until(next)
		}
		sleep.Reset(d)
		select {
		case <-sleep.C:
		case <-r.kick:
			if !sleep.Stop() {
				select {
				case <-sleep.C:
				default:
				}
			}
		case <-r.done:
			return
		}
	}
}

// Now is time.Now.
func (r *Real) Now() time.Time { return time.Now() }

// NewTimer returns a stopped timer.
func (r *Real) NewTimer(f func()) *Timer { return r.q.newTimer(f) }

// InitTimer makes the embedded t a stopped timer of this clock.
func (r *Real) InitTimer(t *Timer, h Handler) { r.q.initTimer(t, h) }

// AfterFunc runs f once after d.
func (r *Real) AfterFunc(d time.Duration, f func()) *Timer {
	t := r.q.newTimer(f)
	t.Reset(d)
	return t
}

// Pending is the number of armed timers.
func (r *Real) Pending() int { return r.q.pending() }

// Close stops the timer goroutine; armed timers never fire afterwards.
func (r *Real) Close() {
	r.closed.Do(func() { close(r.done) })
}
