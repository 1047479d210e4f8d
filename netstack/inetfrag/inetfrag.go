package inetfrag

import (
	"sync"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// Frag is one held fragment: Off and End bound the bytes of the original
// packet's payload it carries, found at Data in SKB's bytes. Aux is the
// protocol's own (netfilter's IPv6 defrag: where the Next Header byte that
// names the Fragment header is). All are under 64 KiB plus a header's
// length (the protocols refuse larger ones before Insert), int32 so that
// a Frag is 24 bytes.
type Frag struct {
	SKB                 *buf.SKB
	Off, End, Data, Aux int32
}

// NewFrag is the Frag of skb carrying [off, end) from byte data on.
func NewFrag(skb *buf.SKB, off, end, data, aux int) Frag {
	return Frag{SKB: skb, Off: int32(off), End: int32(end), Data: int32(data), Aux: int32(aux)}
}

// Payload is the fragment's share of the original packet's payload.
func (f *Frag) Payload() []byte {
	return f.SKB.Bytes()[f.Data : f.Data+f.End-f.Off]
}

// Queue is one packet under reassembly (struct inet_frag_queue). The
// protocol reads and writes Total, First, Head and NH under the table's
// lock; the table keeps the rest.
type Queue[K comparable] struct {
	Key   K
	Frags []Frag // sorted by Off, disjoint when the protocol uses Place
	// Total is the payload length once the last fragment came, else -1.
	Total int
	Have  int // payload bytes held
	Mem   int // what the held fragments cost, as the protocol measures
	// First is the offset-zero fragment; Head and NH are the protocol's
	// offsets in it (IPv6: the Fragment header and the Next Header byte
	// naming it).
	First    *buf.SKB
	Head, NH int
	// Dropped marks a tombstone: a queue that holds nothing and stays
	// until its timeout (Tombstone).
	Dropped bool

	dead       bool
	timer      *clock.Timer
	prev, next *Queue[K] // age list, oldest first
}

// Dead reports whether q has left the table.
func (q *Queue[K]) Dead() bool { return q.dead }

// Complete reports whether the fragments held cover the whole payload.
func (q *Queue[K]) Complete() bool { return q.Total >= 0 && q.Have == q.Total }

// Consistent reports whether [off, end), the last fragment when last,
// agrees with what q holds (the checks ip_frag_queue and ip6_frag_queue
// share): it carries data, a fragment with more to come does not reach
// past a known end, and a last fragment matches the known end and ends
// no earlier than the data held.
func (q *Queue[K]) Consistent(off, end int, last bool) bool {
	switch {
	case end <= off:
		return false
	case !last && q.Total >= 0 && end > q.Total:
		return false
	case last && q.Total >= 0 && end != q.Total:
		return false
	case last && len(q.Frags) > 0 && int(q.Frags[len(q.Frags)-1].End) > end:
		return false
	}
	return true
}

// Placement is where Place puts a fragment.
type Placement int

const (
	// Fits: the fragment goes at the index Place returned.
	Fits Placement = iota
	// Duplicate: a held fragment covers exactly the same range.
	Duplicate
	// Overlaps: the range overlaps a held fragment's.
	Overlaps
	// Full: the queue holds Config.MaxFrags fragments already.
	Full
)

// Place finds where [off, end) goes in q's sorted run: the index that
// keeps it sorted, or why it cannot go in.
func (t *Table[K]) Place(q *Queue[K], off, end int) (int, Placement) {
	i := 0
	o, e := int32(off), int32(end)
	for i < len(q.Frags) && q.Frags[i].Off < o {
		i++
	}
	if i < len(q.Frags) && q.Frags[i].Off == o && q.Frags[i].End == e {
		return i, Duplicate
	}
	if (i > 0 && q.Frags[i-1].End > o) || (i < len(q.Frags) && q.Frags[i].Off < e) {
		return i, Overlaps
	}
	if t.cfg.MaxFrags > 0 && len(q.Frags) >= t.cfg.MaxFrags {
		return i, Full
	}
	return i, Fits
}

// Config sets a table's bounds and callbacks.
type Config struct {
	Clock   clock.Clock
	Timeout time.Duration
	// MemLimit bounds the memory of all queues (see Admit and Evict).
	MemLimit int
	// MaxQueues, when positive, bounds the queues; Create evicts the
	// oldest beyond it, freeing their fragments with QueueFullReason.
	MaxQueues       int
	QueueFullReason buf.DropReason
	// MaxFrags, when positive, bounds the fragments of one queue (Place).
	MaxFrags int
	// MemReason frees the fragments of queues Evict kills; TimeoutReason
	// those of queues that expire.
	MemReason, TimeoutReason buf.DropReason
	// OnExpire runs, with no lock held, when a queue that is not a
	// tombstone times out, with its offset-zero fragment (nil when it
	// never came), which it must free.
	OnExpire func(first *buf.SKB)
}

// Table is the queues of one protocol (struct fqdir). Bounds: see Config.
type Table[K comparable] struct {
	cfg Config

	mu             sync.Mutex
	mem            int
	queues         map[K]*Queue[K]
	oldest, newest *Queue[K]
}

// Init sets t up; it must be called before any other method.
func (t *Table[K]) Init(cfg Config) {
	t.cfg = cfg
	t.queues = map[K]*Queue[K]{}
}

// Lock takes the table's lock, held for all of one fragment's handling.
func (t *Table[K]) Lock() { t.mu.Lock() }

// Unlock releases the table's lock.
func (t *Table[K]) Unlock() { t.mu.Unlock() }

// Lookup returns the queue for key, or nil. The lock is held.
func (t *Table[K]) Lookup(key K) *Queue[K] { return t.queues[key] }

// Create makes the queue for key (none exists), newest in age, and arms
// its timer; beyond MaxQueues it first kills the oldest, returning how
// many. The lock is held.
func (t *Table[K]) Create(key K) (*Queue[K], int) {
	evicted := 0
	for t.cfg.MaxQueues > 0 && len(t.queues) >= t.cfg.MaxQueues && t.oldest != nil {
		t.Kill(t.oldest, t.cfg.QueueFullReason)
		evicted++
	}
	// q is never reassigned, so the timer's closure holds it by value
	// (one allocation for the closure, none for the variable).
	q := &Queue[K]{Key: key, Total: -1}
	t.queues[key] = q
	q.prev = t.newest
	if t.newest != nil {
		t.newest.next = q
	} else {
		t.oldest = q
	}
	t.newest = q
	q.timer = t.cfg.Clock.AfterFunc(t.cfg.Timeout, func() { t.expire(q) })
	return q, evicted
}

// Admit reports whether n more bytes stay within MemLimit. The lock is
// held.
func (t *Table[K]) Admit(n int) bool { return t.mem+n <= t.cfg.MemLimit }

// Insert puts f into q at index i (from Place, or len(q.Frags) to
// append), counting size bytes of memory and f's payload. The lock is
// held.
func (t *Table[K]) Insert(q *Queue[K], i int, f Frag, size int) {
	q.Frags = append(q.Frags, Frag{})
	copy(q.Frags[i+1:], q.Frags[i:])
	q.Frags[i] = f
	q.Have += int(f.End - f.Off)
	q.Mem += size
	t.mem += size
}

// Evict kills the oldest queues (possibly the newest) while the memory is
// over MemLimit and returns how many it killed. The lock is held.
func (t *Table[K]) Evict() int {
	n := 0
	for t.mem > t.cfg.MemLimit && t.oldest != nil {
		t.Kill(t.oldest, t.cfg.MemReason)
		n++
	}
	return n
}

// Kill frees q's fragments with reason and removes q (inet_frag_kill).
// The lock is held.
func (t *Table[K]) Kill(q *Queue[K], reason buf.DropReason) {
	t.drain(q, reason)
	t.unlink(q)
}

// Tombstone frees q's fragments with reason and marks it Dropped; it stays
// in the table, holding nothing, until its timeout. The lock is held.
func (t *Table[K]) Tombstone(q *Queue[K], reason buf.DropReason) {
	t.drain(q, reason)
	q.Dropped = true
}

// Finish is inet_frag_reasm_finish: out, the reassembled packet (bytes
// from its network header), takes the first fragment's metadata, with its
// transport checksum unverified, and q is released. The lock is held.
func (t *Table[K]) Finish(q *Queue[K], out *buf.SKB) *buf.SKB {
	first := q.First
	out.SetNetworkHeader()
	out.Protocol = first.Protocol
	out.InNIC = first.InNIC
	out.Mark = first.Mark
	out.Drops = first.Drops
	out.CB = first.CB
	// The transport checksum of the whole packet was never verified.
	out.Csum = buf.CsumNone
	t.Release(q)
	return out
}

// Release removes q after its data was copied out, consuming its
// fragments. The lock is held.
func (t *Table[K]) Release(q *Queue[K]) {
	t.unlink(q)
	for _, f := range q.Frags {
		f.SKB.Consume()
	}
	q.Frags, q.First = nil, nil
}

func (t *Table[K]) drain(q *Queue[K], reason buf.DropReason) {
	for _, f := range q.Frags {
		f.SKB.Free(reason)
	}
	t.mem -= q.Mem
	q.Mem, q.Have = 0, 0
	q.Frags, q.First = nil, nil
}

// unlink removes q from the map, the age list and the clock.
func (t *Table[K]) unlink(q *Queue[K]) {
	if q.dead {
		return
	}
	q.dead = true
	q.timer.Stop()
	if t.queues[q.Key] == q {
		delete(t.queues, q.Key)
	}
	if q.prev != nil {
		q.prev.next = q.next
	} else {
		t.oldest = q.next
	}
	if q.next != nil {
		q.next.prev = q.prev
	} else {
		t.newest = q.prev
	}
	q.prev, q.next = nil, nil
	t.mem -= q.Mem
	q.Mem = 0
}

// expire is the timer (ip_expire's skeleton): a tombstone just goes;
// otherwise every fragment but the first is freed and the first goes to
// OnExpire.
func (t *Table[K]) expire(q *Queue[K]) {
	t.mu.Lock()
	if q.dead {
		t.mu.Unlock()
		return
	}
	if q.Dropped {
		t.unlink(q)
		t.mu.Unlock()
		return
	}
	first := q.First
	rest := q.Frags[:0]
	for _, f := range q.Frags {
		if f.SKB != first {
			rest = append(rest, f)
		}
	}
	q.Frags = rest
	t.Kill(q, t.cfg.TimeoutReason)
	t.mu.Unlock()
	t.cfg.OnExpire(first)
}

// Pending reports the queues in the table (tombstones included) and the
// memory they hold.
func (t *Table[K]) Pending() (queues, mem int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queues), t.mem
}
