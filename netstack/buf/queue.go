package buf

// Queue is a FIFO of SKBs linked through the SKBs themselves
// (sk_buff_head), so queueing allocates nothing. It is not safe for
// concurrent use: its owner holds the lock. Bounds are the owner's policy;
// Queue only counts packets and bytes.
type Queue struct {
	head, tail *SKB
	n, bytes   int
}

// Len is the number of packets queued.
func (q *Queue) Len() int { return q.n }

// Bytes is the sum of the queued packets' lengths.
func (q *Queue) Bytes() int { return q.bytes }

// PushBack appends s; the queue owns it until popped.
func (q *Queue) PushBack(s *SKB) {
	s.next = nil
	if q.tail == nil {
		q.head = s
	} else {
		q.tail.next = s
	}
	q.tail = s
	q.n++
	q.bytes += s.Len()
}

// PopFront removes and returns the oldest SKB, or nil when empty.
func (q *Queue) PopFront() *SKB {
	s := q.head
	if s == nil {
		return nil
	}
	q.head = s.next
	if q.head == nil {
		q.tail = nil
	}
	s.next = nil
	q.n--
	q.bytes -= s.Len()
	return s
}

// PullFront removes n bytes from the front of the oldest SKB (skb_pull on
// the head of a queue), keeping the byte count in step; n must not exceed
// that SKB's length.
func (q *Queue) PullFront(n int) {
	if q.head != nil && q.head.Pull(n) != nil {
		q.bytes -= n
	}
}

// AppendBack copies p into the tailroom of the newest SKB when it has room
// and is not shared with a clone (tcp_try_coalesce), reporting whether it
// did.
func (q *Queue) AppendBack(p []byte) bool {
	t := q.tail
	if t == nil || t.Tailroom() < len(p) || t.shared() {
		return false
	}
	copy(t.Put(len(p)), p)
	q.bytes += len(p)
	return true
}

// Back returns the newest SKB without removing it.
func (q *Queue) Back() *SKB { return q.tail }

// Front returns the oldest SKB without removing it.
func (q *Queue) Front() *SKB { return q.head }

// Next returns the SKB after s in its queue, for iteration.
func (s *SKB) Next() *SKB { return s.next }

// TakeAll moves every SKB into a new queue and empties q.
func (q *Queue) TakeAll() Queue {
	out := *q
	*q = Queue{}
	return out
}

// Purge frees every queued SKB with reason.
func (q *Queue) Purge(reason DropReason) {
	for s := q.PopFront(); s != nil; s = q.PopFront() {
		s.Free(reason)
	}
}
