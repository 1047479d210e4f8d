package tcp

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// sndQueue is the send buffer (sk_write_queue): the bytes from SND.UNA
// (bufSeq) on, unacknowledged or unsent, in chunks — SKBs with
// buf.MaxHeadroom of headroom whose Bytes() are their queued bytes, each
// holding at most the socket's size goal (one GSO super-segment's
// payload, or one MSS). So a segment that starts at a chunk's first byte
// goes out as a clone of the chunk with the headers pushed into its
// headroom (segment): no copy of the payload on our side, as Linux
// clones write-queue skbs in tcp_transmit_skb. A segment that starts
// inside a chunk, or whose chunk has a clone still in flight (a
// retransmission while the first transmission waits in a queue), is
// copied (peek) instead. Not safe for concurrent use, except that a
// writer may fill reserved space without the socket lock (reserve, then
// commit): meanwhile the reserved chunks stay put.
//
// Memory: chunks come from buf's pools and go back as they are
// acknowledged (discard), so an idle connection holds nothing; the
// bytes are bounded by the caller (SndBuf), the storage by the bytes
// plus one chunk.
type sndQueue struct {
	q buf.Queue // chunks in sequence order
	n int       // bytes queued
	// A cursor for at: chunk cur starts at offset curOff. Sends walk
	// forward from it, so finding a segment's chunk is not a walk from
	// the front every time. Reset when its chunk leaves.
	cur    *buf.SKB
	curOff int

	// A reservation (reserve .. commit): the tail chunk's tailroom and
	// fresh chunks. While reserved, discard keeps an emptied tail chunk
	// and release only marks the queue released.
	reserved, released bool
	resTail            *buf.SKB  // the tail chunk reserved into, nil if none
	resTailRoom        int       // bytes of it reserved
	resNew             buf.Queue // fresh chunks, queued at commit as filled
	resGoal            int       // the chunk size goal they were reserved with
}

func (q *sndQueue) len() int { return q.n }

// room is what chunk c may still take, given chunk size goal.
func room(c *buf.SKB, goal int) int {
	return max(min(buf.MaxHeadroom+goal-c.Headroom()-c.Len(), c.Tailroom()), 0)
}

func newChunk(goal int) *buf.SKB { return buf.Alloc(buf.MaxHeadroom, goal) }

// write appends p in chunks of at most goal bytes.
func (q *sndQueue) write(p []byte, goal int) {
	q.n += len(p)
	if t := q.q.Back(); t != nil {
		k := copy(t.TailroomBytes()[:room(t, goal)], p)
		t.Extend(k)
		p = p[k:]
	}
	for len(p) > 0 {
		c := newChunk(goal)
		k := copy(c.TailroomBytes()[:room(c, goal)], p)
		c.Extend(k)
		p = p[k:]
		q.q.PushBack(c)
	}
}

// reserve returns free space for at most max bytes as up to len(v)
// slices, in v: the tail chunk's room first, then fresh chunks' (a
// readv(2) fills them in order). Until commit, the chunks stay put.
func (q *sndQueue) reserve(max, goal int, v [][]byte) [][]byte {
	q.reserved, q.resGoal = true, goal
	k := 0
	if t := q.q.Back(); t != nil && len(v) > 0 {
		if r := min(room(t, goal), max); r > 0 {
			q.resTail, q.resTailRoom = t, r
			v[k] = t.TailroomBytes()[:r]
			k++
			max -= r
		}
	}
	for ; max > 0 && k < len(v); k++ {
		c := newChunk(goal)
		q.resNew.PushBack(c)
		v[k] = c.TailroomBytes()[:min(room(c, goal), max)]
		max -= len(v[k])
	}
	return v[:k]
}

// commit ends a reservation, appending its first n bytes.
func (q *sndQueue) commit(n int) {
	t, tailRoom := q.resTail, q.resTailRoom
	q.reserved, q.resTail, q.resTailRoom = false, nil, 0
	if q.released {
		// Released meanwhile (the connection ended): the bytes have
		// nowhere to go.
		q.released = false
		q.release()
		for c := q.resNew.PopFront(); c != nil; c = q.resNew.PopFront() {
			c.Consume()
		}
		return
	}
	q.n += n
	if t != nil {
		k := min(n, tailRoom)
		t.Extend(k)
		n -= k
	}
	for c := q.resNew.PopFront(); c != nil; c = q.resNew.PopFront() {
		if n > 0 {
			k := min(n, room(c, q.resGoal))
			c.Extend(k)
			n -= k
			q.q.PushBack(c)
		} else {
			c.Consume()
		}
	}
	q.shrink()
}

// at returns the chunk holding the byte at offset off and off's place
// in it; nil past the end.
func (q *sndQueue) at(off int) (*buf.SKB, int) {
	c, base := q.q.Front(), 0
	if q.cur != nil && off >= q.curOff {
		c, base = q.cur, q.curOff
	}
	for ; c != nil; c = c.Next() {
		if off-base < c.Len() {
			q.cur, q.curOff = c, base
			return c, off - base
		}
		base += c.Len()
	}
	return nil, 0
}

// peek copies the bytes from offset off into p without consuming them
// and returns how many it copied.
func (q *sndQueue) peek(off int, p []byte) int {
	c, in := q.at(off)
	total := 0
	for ; c != nil && total < len(p); c = c.Next() {
		total += copy(p[total:], c.Bytes()[in:])
		in = 0
	}
	return total
}

// segment returns n bytes from offset off as a clone of the chunk that
// starts there, with its headroom to push headers into (zero copy), or
// nil when they must be copied: off inside a chunk, n past its end, or
// the chunk already has a clone in flight.
func (q *sndQueue) segment(off, n int) *buf.SKB {
	c, in := q.at(off)
	if c == nil || in != 0 || n > c.Len() || c.Shared() {
		return nil
	}
	s := c.CloneHeadroom()
	s.Trim(n)
	return s
}

// chunkRest is how many bytes from offset off to the end of the chunk
// holding it (0 past the end). A segment that ends there lets the next
// one start at a chunk's first byte, where segment clones instead of
// copying.
func (q *sndQueue) chunkRest(off int) int {
	c, in := q.at(off)
	if c == nil {
		return 0
	}
	return c.Len() - in
}

// discard drops n acknowledged bytes from the front; emptied chunks go
// back to the pool (but a reserved tail chunk stays, empty).
func (q *sndQueue) discard(n int) {
	n = min(n, q.n)
	q.n -= n
	q.curOff -= n // offsets count from the new front
	for n > 0 {
		c := q.q.Front()
		if c == nil {
			break
		}
		if n < c.Len() {
			q.q.PullFront(n)
			break
		}
		n -= c.Len()
		q.popFront(c)
	}
	if q.cur != nil && (q.cur == q.q.Front() || q.curOff < 0) {
		// The front chunk starts at 0 however much of it was pulled.
		q.cur, q.curOff = q.q.Front(), 0
	}
}

// popFront frees the front chunk c, unless it is reserved into.
func (q *sndQueue) popFront(c *buf.SKB) {
	if c == q.resTail {
		q.q.PullFront(c.Len())
		return
	}
	q.drop(c)
}

// drop unlinks the front chunk c and frees it.
func (q *sndQueue) drop(c *buf.SKB) {
	if c == q.cur {
		q.cur, q.curOff = nil, 0
	}
	q.q.PopFront()
	c.Consume()
}

// shrink frees empty chunks left at the front.
func (q *sndQueue) shrink() {
	for c := q.q.Front(); c != nil && c.Len() == 0 && c != q.resTail; c = q.q.Front() {
		q.drop(c)
	}
}

// release frees every chunk (at commit when a reservation is out).
func (q *sndQueue) release() {
	if q.reserved {
		q.released = true
		q.n = 0
		return
	}
	for c := q.q.PopFront(); c != nil; c = q.q.PopFront() {
		c.Consume()
	}
	q.n, q.cur, q.curOff = 0, nil, 0
}
