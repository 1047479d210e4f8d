package tcp

// ring is a byte FIFO that grows on demand up to a limit the caller
// enforces, so an idle connection holds no buffer: storage is allocated
// by the first write and released (release) when the connection ends.
// Not safe for concurrent use: the socket lock guards it.
type ring struct {
	b    []byte
	r, n int // read index, bytes held
}

const ringMinCap = 4096

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
	nb := make([]byte, c)
	q.peek(0, nb[:q.n])
	q.b, q.r = nb, 0
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

// discard drops n bytes from the front.
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
}

// release frees the storage.
func (q *ring) release() { *q = ring{} }
