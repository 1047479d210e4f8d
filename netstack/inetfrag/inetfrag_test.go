package inetfrag

import (
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

var (
	dropMem     = buf.NewDropReason("TEST_FRAG_MEM")
	dropTimeout = buf.NewDropReason("TEST_FRAG_TIMEOUT")
	dropFull    = buf.NewDropReason("TEST_FRAG_QUEUES")
	dropKill    = buf.NewDropReason("TEST_FRAG_KILL")
)

type rig struct {
	clk     *clock.Manual
	drops   buf.DropStats
	t       Table[int]
	expired []*buf.SKB
}

func newRig(cfg Config) *rig {
	r := &rig{clk: clock.NewManual()}
	cfg.Clock = r.clk
	cfg.MemReason, cfg.TimeoutReason, cfg.QueueFullReason = dropMem, dropTimeout, dropFull
	cfg.OnExpire = func(first *buf.SKB) {
		r.expired = append(r.expired, first)
		if first != nil {
			first.Free(dropTimeout)
		}
	}
	r.t.Init(cfg)
	return r
}

func (r *rig) skb(n int) *buf.SKB {
	s := buf.FromBytes(0, make([]byte, n))
	s.Drops = &r.drops
	return s
}

// add files [off, end) under key as the protocols do, returning where
// Place put it.
func (r *rig) add(key, off, end, size int) Placement {
	r.t.Lock()
	defer r.t.Unlock()
	q := r.t.Lookup(key)
	if q == nil {
		q, _ = r.t.Create(key)
	}
	i, p := r.t.Place(q, off, end)
	if p != Fits {
		return p
	}
	s := r.skb(end - off)
	r.t.Insert(q, i, NewFrag(s, off, end, 0, 0), size)
	if off == 0 {
		q.First = s
	}
	return p
}

func TestPlaceKeepsTheRunSortedAndDisjoint(t *testing.T) {
	r := newRig(Config{Timeout: time.Second, MemLimit: 1 << 20, MaxFrags: 3})
	for _, tc := range []struct {
		off, end int
		want     Placement
	}{
		{16, 24, Fits}, {0, 8, Fits}, {16, 24, Duplicate}, {4, 12, Overlaps},
		{20, 32, Overlaps}, {8, 16, Fits}, {24, 32, Full},
	} {
		if got := r.add(1, tc.off, tc.end, 10); got != tc.want {
			t.Fatalf("[%d, %d): %v, want %v", tc.off, tc.end, got, tc.want)
		}
	}
	r.t.Lock()
	q := r.t.Lookup(1)
	for i, want := range []int32{0, 8, 16} {
		if q.Frags[i].Off != want {
			t.Fatalf("run %v", q.Frags)
		}
	}
	q.Total = 24
	if !q.Complete() || q.Have != 24 {
		t.Fatalf("have %d of %d", q.Have, q.Total)
	}
	r.t.Release(q)
	r.t.Unlock()
	if n, mem := r.t.Pending(); n != 0 || mem != 0 || r.clk.Pending() != 0 {
		t.Fatalf("left %d queues, %d bytes, %d timers", n, mem, r.clk.Pending())
	}
	if r.drops.Total() != 0 {
		t.Fatalf("drops %v", r.drops.Snapshot())
	}
}

// Evict kills the oldest queues until the memory is within the bound;
// Create kills the oldest beyond MaxQueues.
func TestEvictOldestFirst(t *testing.T) {
	r := newRig(Config{Timeout: time.Second, MemLimit: 250, MaxQueues: 3})
	for k := 1; k <= 3; k++ {
		r.add(k, 0, 8, 100)
		r.t.Lock()
		n := r.t.Evict()
		r.t.Unlock()
		if want := map[bool]int{true: 1, false: 0}[k == 3]; n != want {
			t.Fatalf("queue %d: evicted %d", k, n)
		}
	}
	r.t.Lock()
	if r.t.Lookup(1) != nil || r.t.Lookup(2) == nil {
		t.Fatal("the oldest queue was not the one evicted")
	}
	r.t.Unlock()
	r.add(4, 0, 8, 10)
	r.add(5, 0, 8, 10) // three queues: 2 (oldest) goes
	r.t.Lock()
	if r.t.Lookup(2) != nil || r.t.Lookup(3) == nil {
		t.Fatal("MaxQueues evicted the wrong queue")
	}
	r.t.Unlock()
	if r.drops.Get(dropMem) != 1 || r.drops.Get(dropFull) != 1 {
		t.Fatalf("drops %v", r.drops.Snapshot())
	}
	if n, mem := r.t.Pending(); n != 3 || mem != 120 {
		t.Fatalf("%d queues, %d bytes", n, mem)
	}
}

// On expiry the first fragment goes to OnExpire, the others are freed
// with the timeout reason; a tombstone holds nothing and goes silently.
func TestExpireAndTombstone(t *testing.T) {
	r := newRig(Config{Timeout: time.Second, MemLimit: 1 << 20})
	r.add(1, 0, 8, 10)
	r.add(1, 8, 16, 10)
	r.add(2, 8, 16, 10)
	r.add(3, 0, 8, 10)
	r.t.Lock()
	q := r.t.Lookup(3)
	r.t.Tombstone(q, dropKill)
	r.t.Unlock()
	if n, mem := r.t.Pending(); n != 3 || mem != 30 || !q.Dropped || q.Dead() {
		t.Fatalf("%d queues, %d bytes after the tombstone", n, mem)
	}
	r.clk.Advance(time.Second)
	if len(r.expired) != 2 || (r.expired[0] == nil) == (r.expired[1] == nil) {
		t.Fatalf("OnExpire saw %v", r.expired)
	}
	if r.drops.Get(dropTimeout) != 3 || r.drops.Get(dropKill) != 1 {
		t.Fatalf("drops %v", r.drops.Snapshot())
	}
	if n, mem := r.t.Pending(); n != 0 || mem != 0 || r.clk.Pending() != 0 || !q.Dead() {
		t.Fatalf("left %d queues, %d bytes, %d timers", n, mem, r.clk.Pending())
	}
}

// Admit is the drop-instead-of-evict bound (netfilter's defrag).
func TestAdmit(t *testing.T) {
	r := newRig(Config{Timeout: time.Second, MemLimit: 100})
	r.add(1, 0, 8, 60)
	r.t.Lock()
	defer r.t.Unlock()
	if !r.t.Admit(40) || r.t.Admit(41) {
		t.Fatal("Admit disagrees with MemLimit")
	}
}
