// Package fault owns a link.Endpoint wrapper that injects the faults of a
// bad wire: loss, duplication, reordering, corruption and delay. The
// kernel's netem qdisc (net/sched/sch_netem.c) does this for real links;
// this stack has no qdisc layer for it, so the fault sits at the link.
//
// Theory of operation: every fault draws from one math/rand/v2 PCG source
// seeded by Seed (default 1), in a fixed order per frame (loss, corrupt,
// duplicate, reorder), and only for faults whose probability is non-zero.
// So a given seed and a given sequence of calls always inject the same
// faults. Frames the Match predicate rejects pass untouched and draw
// nothing.
//
// On transmit (WriteBatch) a frame may be lost (freed with DropFaultLoss),
// corrupted (one random bit flipped in a random byte at or past
// CorruptOffset, default 14: past the Ethernet header, so the frame still
// reaches the layer whose checksum should catch it), duplicated (a deep
// copy follows the original), held for reordering (sent after Gap later
// frames have been sent), and delayed (queued and released by a clock
// timer at now+Delay). With OnReceive, loss, corruption and duplication
// also apply to frames returned by ReadBatch; reordering and delay are
// transmit-only.
//
// Limits: at most MaxReorderHeld frames wait for reordering and at most
// DelayQueueLen (default DefaultDelayQueueLen) frames wait in the delay
// queue; at most RxPendingLen duplicates wait for the next ReadBatch.
// Overflow frees the new frame with a named reason and counts it. Frames
// still held at Close are freed with DropFaultClosed; Flush sends held
// frames at once.
//
// Lock order: Endpoint.mu is held across the inner WriteBatch (so the
// order on the wire is the order of decisions) and is taken by the delay
// timer's callback, which therefore runs on the clock's goroutine (or in
// clock.Manual.Advance) and calls the inner WriteBatch there. The inner
// endpoint must not call back into this one.
//
// Not owned here: the wire itself (the inner endpoint), capture (link/pcap).
package fault

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// Bounds on frames the wrapper holds.
const (
	// DefaultDelayQueueLen bounds the delay queue unless DelayQueueLen says otherwise.
	DefaultDelayQueueLen = 1024
	// MaxReorderHeld bounds the frames held back for reordering.
	MaxReorderHeld = 64
	// RxPendingLen bounds received duplicates that did not fit the caller's batch.
	RxPendingLen = 64
	// DefaultCorruptOffset skips the Ethernet header.
	DefaultCorruptOffset = 14
)

// Drop reasons of injected faults and of the wrapper's bounds.
var (
	DropFaultLoss           = buf.NewDropReason("FAULT_LOSS")
	DropFaultDelayQueueFull = buf.NewDropReason("FAULT_DELAY_QUEUE_FULL")
	DropFaultReorderFull    = buf.NewDropReason("FAULT_REORDER_FULL")
	DropFaultRxPendingFull  = buf.NewDropReason("FAULT_RX_PENDING_FULL")
	DropFaultClosed         = buf.NewDropReason("FAULT_CLOSED")
)

// Option configures Wrap.
type Option func(*config)

type config struct {
	loss, dup, reorder, corrupt float64
	gap                         int
	corruptOffset               int
	delay                       time.Duration
	delayQueueLen               int
	clk                         clock.Clock
	seed                        uint64
	match                       func(frame []byte) bool
	onReceive                   bool
}

// Loss drops each frame with probability p.
func Loss(p float64) Option { return func(c *config) { c.loss = p } }

// Duplicate sends a copy after each frame with probability p.
func Duplicate(p float64) Option { return func(c *config) { c.dup = p } }

// Reorder holds each frame back with probability p until gap later frames
// (at least 1) have been sent, so it arrives gap places late.
func Reorder(p float64, gap int) Option {
	return func(c *config) {
		c.reorder = p
		c.gap = max(gap, 1)
	}
}

// Corrupt flips one random bit in a random byte at or past the corruption
// offset (CorruptOffset, default 14) with probability p. Frames no longer
// than the offset are left intact.
func Corrupt(p float64) Option { return func(c *config) { c.corrupt = p } }

// CorruptOffset sets the first byte Corrupt may touch.
func CorruptOffset(off int) Option { return func(c *config) { c.corruptOffset = max(off, 0) } }

// Delay queues every (matching) transmitted frame for d of clock time.
// Without Clock, Wrap starts a clock.NewReal that Close stops.
func Delay(d time.Duration) Option { return func(c *config) { c.delay = d } }

// DelayQueueLen bounds the delay queue (frames, >= 1).
func DelayQueueLen(n int) Option {
	return func(c *config) {
		if n >= 1 {
			c.delayQueueLen = n
		}
	}
}

// Clock sets the clock whose timers release delayed frames.
func Clock(clk clock.Clock) Option { return func(c *config) { c.clk = clk } }

// Seed seeds the random source (default 1).
func Seed(n uint64) Option { return func(c *config) { c.seed = n } }

// Match limits every fault to frames for which f returns true; f sees the
// frame from the Ethernet header and must not keep or modify it.
func Match(f func(frame []byte) bool) Option { return func(c *config) { c.match = f } }

// OnReceive also applies loss, corruption and duplication to received frames.
func OnReceive() Option { return func(c *config) { c.onReceive = true } }

// delayed is a frame in the delay queue with its release time.
type delayed struct {
	skb *buf.SKB
	at  time.Time
}

// held is a frame waiting for reordering; left counts the frames still to
// be sent before it.
type held struct {
	skb  *buf.SKB
	left int
}

// Endpoint is a faulty link. It implements link.Endpoint.
type Endpoint struct {
	inner    link.Endpoint
	cfg      config
	ownClock *clock.Real // started by Wrap, stopped by Close

	mu     sync.Mutex
	rng    *rand.Rand
	closed bool
	// reorder: bound MaxReorderHeld, overflow frees with DropFaultReorderFull.
	reorder []held
	// delayQ: a ring of cfg.delayQueueLen frames in release order (the
	// delay is constant, so arrival order is release order); overflow
	// frees with DropFaultDelayQueueFull.
	delayQ         []delayed
	dqHead, dqLen  int
	timer          *clock.Timer
	out            []*buf.SKB // scratch for the inner WriteBatch, reused
	rxMu           sync.Mutex
	rxPending      buf.Queue // bound RxPendingLen
	stats          counters
	drops          buf.DropStats
	innerShortfall int // frames the inner endpoint freed in the last flushOut
}

type counters struct {
	lost, duplicated, reordered, corrupted, delayed atomic.Uint64
	rxLost, rxDuplicated, rxCorrupted               atomic.Uint64
	overflow                                        atomic.Uint64
}

// Stats counts the injected faults.
type Stats struct {
	Lost, Duplicated, Reordered, Corrupted, Delayed uint64 // on transmit
	RxLost, RxDuplicated, RxCorrupted               uint64 // on receive (OnReceive)
	Overflow                                        uint64 // frames freed because a bound was reached
	Held                                            int    // frames now held for reorder or delay
	Drops                                           map[string]uint64
}

// Wrap returns inner with faults. It owns inner: Close closes it.
func Wrap(inner link.Endpoint, opts ...Option) *Endpoint {
	cfg := config{seed: 1, corruptOffset: DefaultCorruptOffset, delayQueueLen: DefaultDelayQueueLen, gap: 1}
	for _, o := range opts {
		o(&cfg)
	}
	e := &Endpoint{inner: inner, cfg: cfg}
	e.rng = rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15))
	if cfg.delay > 0 {
		if cfg.clk == nil {
			e.ownClock = clock.NewReal()
			e.cfg.clk = e.ownClock
		}
		e.delayQ = make([]delayed, cfg.delayQueueLen)
		e.timer = e.cfg.clk.NewTimer(e.releaseDelayed)
	}
	return e
}

// MTU is the inner endpoint's.
func (e *Endpoint) MTU() int { return e.inner.MTU() }

// Caps are the inner endpoint's.
func (e *Endpoint) Caps() link.Caps { return e.inner.Caps() }

// Inner is the wrapped endpoint.
func (e *Endpoint) Inner() link.Endpoint { return e.inner }

func (e *Endpoint) hit(p float64) bool { return p > 0 && e.rng.Float64() < p }

func (e *Endpoint) matches(s *buf.SKB) bool { return e.cfg.match == nil || e.cfg.match(s.Bytes()) }

// corruptFrame flips one bit past the offset; it reports false when the frame
// is too short to corrupt.
func (e *Endpoint) corruptFrame(s *buf.SKB) bool {
	off := e.cfg.corruptOffset
	if s.Len() <= off {
		return false
	}
	s.Writable() // a tap may hold a clone
	b := s.Bytes()
	i := off + e.rng.IntN(len(b)-off)
	b[i] ^= 1 << e.rng.UintN(8)
	return true
}

// WriteBatch applies the transmit faults and consumes every frame: n
// counts the frames sent now or accepted into the reorder or delay queues.
func (e *Endpoint) WriteBatch(pkts []*buf.SKB) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		for _, s := range pkts {
			e.free(s, link.DropTxClosed)
		}
		return 0, link.ErrClosed
	}
	e.out = e.out[:0]
	accepted := 0
	for i, s := range pkts {
		pkts[i] = nil
		if !e.matches(s) {
			accepted += e.emit(s)
			continue
		}
		if e.hit(e.cfg.loss) {
			e.stats.lost.Add(1)
			e.free(s, DropFaultLoss)
			continue
		}
		if e.hit(e.cfg.corrupt) && e.corruptFrame(s) {
			e.stats.corrupted.Add(1)
		}
		var dup *buf.SKB
		if e.hit(e.cfg.dup) {
			dup = s.Copy()
			e.stats.duplicated.Add(1)
		}
		if e.hit(e.cfg.reorder) {
			if len(e.reorder) >= MaxReorderHeld {
				e.free(s, DropFaultReorderFull)
				e.stats.overflow.Add(1)
			} else {
				e.reorder = append(e.reorder, held{skb: s, left: e.cfg.gap})
				e.stats.reordered.Add(1)
				accepted++
			}
		} else {
			accepted += e.emit(s)
		}
		if dup != nil {
			e.emit(dup)
		}
	}
	e.innerShortfall = 0
	err := e.flushOut()
	// Frames the inner endpoint freed were not sent; the batch may also
	// carry earlier reordered frames and duplicates, so this is the
	// closest count the caller can get.
	return max(accepted-e.innerShortfall, 0), err
}

// emit passes s to the delay queue or the output batch, releasing held
// reordered frames whose gap is now covered. It reports 1 when s was
// accepted.
func (e *Endpoint) emit(s *buf.SKB) int {
	ok := e.enqueue(s)
	// Each frame that goes out ahead of a held one shortens its wait.
	for i := 0; i < len(e.reorder); {
		e.reorder[i].left--
		if e.reorder[i].left > 0 {
			i++
			continue
		}
		r := e.reorder[i].skb
		copy(e.reorder[i:], e.reorder[i+1:])
		e.reorder[len(e.reorder)-1] = held{}
		e.reorder = e.reorder[:len(e.reorder)-1]
		e.enqueue(r)
	}
	if ok {
		return 1
	}
	return 0
}

// enqueue delays s or appends it to the output batch.
func (e *Endpoint) enqueue(s *buf.SKB) bool {
	if e.cfg.delay <= 0 || !e.matches(s) {
		e.out = append(e.out, s)
		return true
	}
	if e.dqLen == len(e.delayQ) {
		e.free(s, DropFaultDelayQueueFull)
		e.stats.overflow.Add(1)
		return false
	}
	at := e.cfg.clk.Now().Add(e.cfg.delay)
	e.delayQ[(e.dqHead+e.dqLen)%len(e.delayQ)] = delayed{skb: s, at: at}
	e.dqLen++
	e.stats.delayed.Add(1)
	if e.dqLen == 1 {
		e.timer.ResetAt(at)
	}
	return true
}

// flushOut writes the output batch to the inner endpoint. Called with mu held.
func (e *Endpoint) flushOut() error {
	if len(e.out) == 0 {
		return nil
	}
	want := len(e.out)
	n, err := e.inner.WriteBatch(e.out)
	e.innerShortfall = want - n
	clear(e.out)
	e.out = e.out[:0]
	return err
}

// releaseDelayed is the delay timer's callback: it sends every frame whose
// time has come and re-arms for the next.
func (e *Endpoint) releaseDelayed() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	now := e.cfg.clk.Now()
	e.out = e.out[:0]
	for e.dqLen > 0 {
		d := &e.delayQ[e.dqHead]
		if d.at.After(now) {
			e.timer.ResetAt(d.at)
			break
		}
		e.out = append(e.out, d.skb)
		*d = delayed{}
		e.dqHead = (e.dqHead + 1) % len(e.delayQ)
		e.dqLen--
	}
	e.flushOut()
}

// Flush sends every frame held for reordering now (they still pass the
// delay queue when Delay is set).
func (e *Endpoint) Flush() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return link.ErrClosed
	}
	e.out = e.out[:0]
	for i := range e.reorder {
		e.enqueue(e.reorder[i].skb)
		e.reorder[i] = held{}
	}
	e.reorder = e.reorder[:0]
	return e.flushOut()
}

// ReadBatch reads from the inner endpoint and, with OnReceive, applies
// loss, corruption and duplication. Duplicates that do not fit pkts wait
// (bounded by RxPendingLen) for the next call, which returns them without
// blocking.
func (e *Endpoint) ReadBatch(pkts []*buf.SKB) (int, error) {
	if len(pkts) == 0 {
		return 0, nil
	}
	e.rxMu.Lock()
	defer e.rxMu.Unlock()
	n := 0
	for n < len(pkts) {
		s := e.rxPending.PopFront()
		if s == nil {
			break
		}
		pkts[n] = s
		n++
	}
	if n > 0 {
		return n, nil
	}
	for {
		got, err := e.inner.ReadBatch(pkts)
		if err != nil || !e.cfg.onReceive {
			return got, err
		}
		n = e.receiveFaults(pkts, got)
		if n > 0 {
			return n, nil
		}
		// Every frame of the batch was lost: read again, as a NIC whose
		// wire lost them would.
	}
}

// receiveFaults applies the receive faults to pkts[:got] in place and
// returns the new count.
func (e *Endpoint) receiveFaults(pkts []*buf.SKB, got int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	// Everything, duplicates right after their originals, goes through
	// rxPending (empty on entry) so order is kept across short batches.
	for i := 0; i < got; i++ {
		s := pkts[i]
		pkts[i] = nil
		if !e.matches(s) {
			e.rxPending.PushBack(s)
			continue
		}
		if e.hit(e.cfg.loss) {
			e.stats.rxLost.Add(1)
			e.free(s, DropFaultLoss)
			continue
		}
		if e.hit(e.cfg.corrupt) && e.corruptFrame(s) {
			e.stats.rxCorrupted.Add(1)
		}
		e.rxPending.PushBack(s)
		if e.hit(e.cfg.dup) {
			e.stats.rxDuplicated.Add(1)
			e.rxPending.PushBack(s.Copy())
		}
	}
	n := 0
	for n < len(pkts) {
		s := e.rxPending.PopFront()
		if s == nil {
			break
		}
		pkts[n] = s
		n++
	}
	// What is left are duplicates beyond the caller's batch (at most
	// got of them); keep at most RxPendingLen, dropping the newest.
	for e.rxPending.Len() > RxPendingLen {
		var keep buf.Queue
		for keep.Len() < RxPendingLen {
			keep.PushBack(e.rxPending.PopFront())
		}
		for s := e.rxPending.PopFront(); s != nil; s = e.rxPending.PopFront() {
			e.free(s, DropFaultRxPendingFull)
			e.stats.overflow.Add(1)
		}
		e.rxPending = keep
	}
	return n
}

func (e *Endpoint) free(s *buf.SKB, r buf.DropReason) {
	e.drops.Add(r)
	s.Free(r)
}

// Close frees every held frame with DropFaultClosed, stops the delay timer
// and closes the inner endpoint. Safe to call more than once.
func (e *Endpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	if e.timer != nil {
		e.timer.Stop()
	}
	for i := range e.reorder {
		e.free(e.reorder[i].skb, DropFaultClosed)
	}
	e.reorder = nil
	for ; e.dqLen > 0; e.dqLen-- {
		e.free(e.delayQ[e.dqHead].skb, DropFaultClosed)
		e.delayQ[e.dqHead] = delayed{}
		e.dqHead = (e.dqHead + 1) % len(e.delayQ)
	}
	e.mu.Unlock()
	if e.ownClock != nil {
		e.ownClock.Close()
	}
	err := e.inner.Close()
	e.rxMu.Lock()
	for s := e.rxPending.PopFront(); s != nil; s = e.rxPending.PopFront() {
		e.free(s, DropFaultClosed)
	}
	e.rxMu.Unlock()
	return err
}

// Stats returns the fault counters.
func (e *Endpoint) Stats() Stats {
	e.mu.Lock()
	h := len(e.reorder) + e.dqLen
	e.mu.Unlock()
	return Stats{
		Lost: e.stats.lost.Load(), Duplicated: e.stats.duplicated.Load(), Reordered: e.stats.reordered.Load(),
		Corrupted: e.stats.corrupted.Load(), Delayed: e.stats.delayed.Load(),
		RxLost: e.stats.rxLost.Load(), RxDuplicated: e.stats.rxDuplicated.Load(), RxCorrupted: e.stats.rxCorrupted.Load(),
		Overflow: e.stats.overflow.Load(), Held: h, Drops: e.drops.Snapshot(),
	}
}

// Drops counts the frames this wrapper freed, by reason.
func (e *Endpoint) Drops() *buf.DropStats { return &e.drops }

var _ link.Endpoint = (*Endpoint)(nil)
