package tcp

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// rcvQueue is the receive queue (sk_receive_queue): in-order payload kept
// in the SKBs it arrived in, so the receive path copies nothing; Read
// copies out and ReadVec hands the SKBs' bytes to the reader as they lie
// (a relay writes them to its host socket with one writev). Each queued
// SKB's Bytes() is exactly its queued payload. Not safe for concurrent
// use: the socket lock guards it.
//
// Memory. The window is counted in payload bytes (n); what the queue
// pins is the SKBs' storage (mem). A payload that would fill less than
// half its buffer is copied instead of queued whole: into the tailroom
// of the newest SKB when it fits (tcp_try_coalesce), else into a fresh
// buffer of coalesceBlock bytes that later small payloads fill. So mem
// stays below 2·n plus one coalesceBlock whatever the segment sizes, and
// an empty queue holds nothing.
type rcvQueue struct {
	q   buf.Queue
	n   int // payload bytes queued
	mem int // truesize of the queued SKBs
}

// coalesceBlock is the buffer small payloads are gathered in.
const coalesceBlock = 2048

func (r *rcvQueue) len() int { return r.n }

// write queues data, which lies in skb.Bytes() at off, and consumes skb.
func (r *rcvQueue) write(skb *buf.SKB, off int, data []byte) {
	n := len(data)
	if n == 0 {
		skb.Consume()
		return
	}
	r.n += n
	if 2*n < skb.Truesize() {
		// A small payload in a big buffer: copy it (tcp_try_coalesce).
		if !r.q.AppendBack(data) {
			c := buf.Alloc(0, max(n, coalesceBlock))
			copy(c.Put(n), data)
			r.q.PushBack(c)
			r.mem += c.Truesize()
		}
		skb.Consume()
		return
	}
	skb.Pull(off)
	skb.Trim(n)
	r.q.PushBack(skb)
	r.mem += skb.Truesize()
}

// read consumes up to len(p) bytes into p.
func (r *rcvQueue) read(p []byte) int {
	total := 0
	for total < len(p) {
		s := r.q.Front()
		if s == nil {
			break
		}
		c := copy(p[total:], s.Bytes())
		total += c
		r.drop(s, c)
	}
	return total
}

// peek fills v with the queued bytes from the front, at most max of them
// in at most len(v) slices, without consuming; it returns the slices
// filled and their bytes. The slices alias the SKBs: valid until the
// bytes are discarded or the queue released.
func (r *rcvQueue) peek(v [][]byte, max int) (int, int) {
	k, total := 0, 0
	for s := r.q.Front(); s != nil && k < len(v) && total < max; s = s.Next() {
		b := s.Bytes()
		if len(b) > max-total {
			b = b[:max-total]
		}
		v[k] = b
		k++
		total += len(b)
	}
	return k, total
}

// discard drops n bytes from the front.
func (r *rcvQueue) discard(n int) {
	for n > 0 {
		s := r.q.Front()
		if s == nil {
			return
		}
		c := min(n, s.Len())
		r.drop(s, c)
		n -= c
	}
}

// drop removes c bytes from the front SKB s, freeing it when empty.
func (r *rcvQueue) drop(s *buf.SKB, c int) {
	r.n -= c
	if c < s.Len() {
		r.q.PullFront(c)
		return
	}
	r.q.PopFront()
	r.mem -= s.Truesize()
	s.Consume()
}

// release frees every queued SKB (the bytes were never read).
func (r *rcvQueue) release() {
	for s := r.q.PopFront(); s != nil; s = r.q.PopFront() {
		s.Consume()
	}
	r.n, r.mem = 0, 0
}
