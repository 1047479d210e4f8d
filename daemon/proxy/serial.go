package proxy

import (
	"sync"
	"sync/atomic"
)

// serial runs a piece of work on one goroutine at a time without making
// anyone wait: the goroutine that finds it running asks the runner to run
// it once more (again) and returns, so no event is lost and the work is
// never run twice at once (a relay's pump per direction, the UDP
// intercept socket's drain). The work takes its argument through a
// method expression, not a closure, so a run allocates nothing.
type serial[T any] struct {
	mu    sync.Mutex
	again atomic.Bool
}

// run runs fn(arg) on this goroutine, as often as asked meanwhile, or,
// when another goroutine runs it, makes that one run it again.
func (s *serial[T]) run(fn func(T), arg T) {
	s.again.Store(true)
	for s.mu.TryLock() {
		for s.again.Swap(false) {
			fn(arg)
		}
		s.mu.Unlock()
		if !s.again.Load() {
			return
		}
	}
}
