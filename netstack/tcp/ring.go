package tcp

import (
	"math/bits"
	"sync"
)

// ring is the send buffer: a byte FIFO that grows on demand up to a limit
// the caller enforces, so an idle connection holds no buffer. Storage
// comes from pooled power-of-two blocks (ringMinCap up to ringMaxCap) and
// goes back to the pool when the ring empties (every byte acknowledged)
// or is released, so a connection between bursts holds nothing either.
// A writer may fill free space without the socket lock (reserve, then
// commit): while a reservation is out the storage stays put. Not safe for
// concurrent use otherwise: the socket lock guards it.
type ring struct {
	b        []byte
	bp       *[]byte // b's pool handle (nil when not pooled), reused so a Put allocates nothing
	r, n     int     // read index, bytes held
	reserved bool    // a reservation is out: keep the storage (reserve)
	released bool    // release came during the reservation: commit drops
}

const (
	ringMinCap = 4096
	// ringMaxCap is the largest pooled block; MaxBuf rounded up to a
	// power of two. Larger rings (never, with MaxBuf) are not pooled.
	ringMaxCap   = 1 << ringMaxShift
	ringMaxShift = 25 // 32 MiB, MaxBuf
	// reserveChunk is the free space reserve asks for when the ring has
	// less: the ring grows by doubling past it as the peer lags.
	reserveChunk = 64 << 10
)

// ringPools holds blocks by log2 of their size.
var ringPools [ringMaxShift + 1]sync.Pool

// getRingBlock returns a block of at least size bytes and its pool
// handle (nil for a block too big to pool).
func getRingBlock(size int) ([]byte, *[]byte) {
	c := bits.Len(uint(size - 1)) // smallest power of two ≥ size
	if c >= len(ringPools) {
		return make([]byte, size), nil
	}
	if p, ok := ringPools[c].Get().(*[]byte); ok {
		return *p, p
	}
	b := make([]byte, 1<<c)
	return b, &b
}

func putRingBlock(bp *[]byte) {
	if bp != nil {
		ringPools[bits.Len(uint(len(*bp)-1))].Put(bp)
	}
}

func (q *ring) len() int { return q.n }

// grow makes room for need more bytes, doubling up to at least limit.
func (q *ring) grow(need, limit int) {
	if q.n+need <= len(q.b) {
		return
	}
	c := max(len(q.b), ringMinCap)
	for c < q.n+need {
		c *= 2
	}
	c = min(c, max(limit, q.n+need))
	nb, bp := getRingBlock(c)
	q.peek(0, nb[:q.n])
	putRingBlock(q.bp)
	q.b, q.bp, q.r = nb, bp, 0
}

// write appends p (the caller checked the limit) and returns len(p).
func (q *ring) write(p []byte, limit int) int {
	q.grow(len(p), limit)
	w := (q.r + q.n) % len(q.b)
	c := copy(q.b[w:], p)
	copy(q.b, p[c:])
	q.n += len(p)
	return len(p)
}

// reserve returns free space for at most max bytes as one or two slices
// (where the ring wraps) and the write index commit needs. It grows the
// ring first when less than reserveChunk (or max) is free. Until commit,
// the storage neither moves nor returns to the pool.
func (q *ring) reserve(max, limit int) (a, b []byte, w int) {
	if free := len(q.b) - q.n; free < min(max, reserveChunk) {
		q.grow(min(max, reserveChunk), limit)
	}
	q.reserved = true
	w = (q.r + q.n) % len(q.b)
	take := min(len(q.b)-q.n, max)
	if w+take <= len(q.b) {
		return q.b[w : w+take], nil, w
	}
	return q.b[w:], q.b[:take-(len(q.b)-w)], w
}

// commit ends a reservation made at w, appending its first n bytes.
func (q *ring) commit(w, n int) {
	q.reserved = false
	if q.released {
		// Released meanwhile (the connection ended): the bytes have
		// nowhere to go.
		q.released, q.n = false, 0
		q.shrink()
		return
	}
	if q.n == 0 {
		q.r = w // emptied meanwhile: the data starts where it was written
	}
	q.n += n
	q.shrink()
}

// peek copies bytes from offset off into p without consuming them and
// returns how many it copied.
func (q *ring) peek(off int, p []byte) int {
	if off >= q.n || len(q.b) == 0 {
		return 0
	}
	n := min(len(p), q.n-off)
	s := (q.r + off) % len(q.b)
	c := copy(p[:n], q.b[s:])
	copy(p[c:n], q.b)
	return n
}

// read consumes up to len(p) bytes into p.
func (q *ring) read(p []byte) int {
	n := q.peek(0, p)
	q.discard(n)
	return n
}

// discard drops n bytes from the front; an emptied ring returns its
// storage to the pool.
func (q *ring) discard(n int) {
	n = min(n, q.n)
	if n == 0 {
		return
	}
	q.r = (q.r + n) % len(q.b)
	q.n -= n
	if q.n == 0 {
		q.r = 0
	}
	q.shrink()
}

// shrink returns the storage of an empty ring to the pool.
func (q *ring) shrink() {
	if q.n == 0 && !q.reserved && q.b != nil {
		putRingBlock(q.bp)
		q.b, q.bp, q.r = nil, nil, 0
	}
}

// release frees the storage (at commit when a reservation is out).
func (q *ring) release() {
	q.n = 0
	if q.reserved {
		q.released = true // commit frees it
		return
	}
	q.shrink()
}
