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
