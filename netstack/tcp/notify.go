package tcp

// Event is what a socket reports to its Notify callback (sk_data_ready,
// sk_write_space, sk_state_change seen from an event-driven owner).
type Event uint8

const (
	// EventReadable: in-order data, the peer's FIN or an error can be
	// read (ReadVec or Read would not block).
	EventReadable Event = 1 << iota
	// EventWritable: send buffer space was freed, the connection became
	// established, or an error ends the write side.
	EventWritable
)

// SetNotify makes fn the socket's event callback, nil removes it. fn runs
// with no lock of the stack held, on the goroutine that raised the event:
// at the end of a receive batch (buf.Batch) on the NIC's receive
// goroutine, after a timer callback on the clock's goroutine, or after a
// segment that arrived outside a batch. It must not block (it may call
// the socket's methods). Events raised inside the owner's own calls
// (Write, Close, ...) are not delivered on that call; they ride along
// with the next delivery. Events before SetNotify are not recorded: the
// caller checks the socket itself after setting fn.
func (s *Sock) SetNotify(fn func(Event)) {
	s.mu.Lock()
	s.notify, s.events = fn, 0
	s.mu.Unlock()
}

// wake wakes blocked callers and records ev for the Notify callback.
func (s *Sock) wake(ev Event) {
	s.cond.Broadcast()
	if s.notify != nil {
		s.events |= ev
		s.deferToBatch()
	}
}

// deferToBatch registers s with the receive batch of the segment being
// processed, once per batch, and reports whether it is registered: its
// FlushBatch then runs when the batch ends. False outside a batch.
func (s *Sock) deferToBatch() bool {
	if s.rxBatch == nil {
		return s.inBatch
	}
	if !s.inBatch {
		s.inBatch = true
		s.rxBatch.Defer(s)
	}
	return true
}

// unlockNotify releases s.mu and delivers the recorded events, unless a
// batch's FlushBatch will.
func (s *Sock) unlockNotify() {
	ev, fn := s.events, s.notify
	if ev == 0 || fn == nil || s.inBatch {
		s.mu.Unlock()
		return
	}
	s.events = 0
	s.mu.Unlock()
	fn(ev)
}

// FlushBatch is the end of a receive batch for s (buf.Flusher): the
// Notify callback gets the batch's events first — a relay that drains
// the receive queue then leaves the window open — and then the one ACK
// the batch's in-order data asked for goes out, carrying that window
// (where Linux sends one ACK per GRO super-segment, we send one per
// batch and socket).
func (s *Sock) FlushBatch() {
	s.mu.Lock()
	s.inBatch = false
	if ev, fn := s.events, s.notify; ev != 0 && fn != nil {
		s.events = 0
		s.mu.Unlock()
		fn(ev)
		s.mu.Lock()
	}
	if s.ackDeferred {
		s.ackDeferred = false
		if s.ackPending && s.state != Closed && s.state != Listen {
			s.sendAck()
		}
	}
	s.mu.Unlock()
}
