package buf

import "time"

// Batch is what a receive batch defers to its end: the NAPI poll context
// in which the kernel flushes GRO and, through it, sends one ACK per
// merged segment instead of one per wire segment. A layer that would act
// once per packet (TCP's ACK and the socket's data-ready upcall) registers
// once per batch with Defer and acts once, in Flush, after every packet of
// the batch has been carried up.
//
// A Batch belongs to one receive goroutine (dev runs one per NIC) and is
// only touched by it: the SKBs it reads point at it (SKB.Batch) while they
// are carried up on that goroutine. Bound: a flusher registers at most once
// per batch (the layer keeps the flag), so a batch holds at most one entry
// per packet of the batch.
type Batch struct {
	// Now is the time the batch was read (the receive loop takes the
	// clock once per batch): layers use it instead of reading the clock
	// per packet, as Linux uses one timestamp per NAPI poll.
	Now time.Time
	fs  []Flusher
}

// Flusher is deferred work of one batch (a socket, typically).
type Flusher interface {
	// FlushBatch runs at the end of the batch on the receive goroutine,
	// with no lock of the caller held. It must not block.
	FlushBatch()
}

// Defer registers f to run at the end of the batch.
func (b *Batch) Defer(f Flusher) { b.fs = append(b.fs, f) }

// Flush runs and forgets the deferred work, in registration order.
// Work deferred by a flusher runs in the same Flush.
func (b *Batch) Flush() {
	for i := 0; i < len(b.fs); i++ {
		f := b.fs[i]
		b.fs[i] = nil
		f.FlushBatch()
	}
	b.fs = b.fs[:0]
}
