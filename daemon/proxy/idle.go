package proxy

import (
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// idleOwner is a flow that ends after UDPIdleTimeout without a message
// either way (a UDP or an echo flow).
type idleOwner interface {
	// idleEnd ends the flow for its idle timeout and counts it, unless
	// it has ended already.
	idleEnd()
}

// idle is a flow's idle timeout, on the stack's clock. A message either
// way only stores the time (touch): the timer, armed once the flow is
// open (arm), fires at most once per timeout and then ends the flow or
// waits for the rest, so no timer is touched per message (as a conntrack
// entry stores its deadline per packet and one collector expires them).
// The stack's clock and not the wall clock, so that a manual clock moves
// every part of it in tests, and a flow's opening, its last message and
// the engine's "now" (udpEvictLocked) are read from one clock.
type idle struct {
	e     *Engine
	owner idleOwner
	born  int64        // the stack clock's UnixNano when the flow started
	last  atomic.Int64 // ... of its last message either way
	timer clock.Timer
}

// init starts the times of owner's flow, which opens now; its timer is
// armed once the flow is in its table (arm): a flow whose opening fails
// has nothing to stop, and its socket may deliver (touch) meanwhile.
func (d *idle) init(e *Engine, owner idleOwner) {
	d.e, d.owner = e, owner
	d.born = e.now()
	d.last.Store(d.born)
	e.st.Clock().InitTimer(&d.timer, d)
}

// arm starts the timeout.
func (d *idle) arm() { d.timer.Reset(d.e.cfg.UDPIdleTimeout) }

// touch records a message of the flow: its quiet time starts again.
func (d *idle) touch() { d.last.Store(d.e.now()) }

// stop disarms the timer (the flow ended another way); a flow that never
// started has nothing to stop.
func (d *idle) stop() { d.timer.Stop() }

// Fire is the timer's clock.Handler: the flow ends once it has been
// quiet for UDPIdleTimeout, or the timer waits for the rest of it.
func (d *idle) Fire(*clock.Timer) {
	timeout := d.e.cfg.UDPIdleTimeout
	if quiet := time.Duration(d.e.now() - d.last.Load()); quiet < timeout {
		d.timer.Reset(timeout - quiet)
		return
	}
	d.owner.idleEnd()
}

// now is the stack clock's time in UnixNano, the unit of idle's times.
func (e *Engine) now() int64 { return e.st.Clock().Now().UnixNano() }
