package buf

import (
	"bytes"
	"testing"
)

func TestPushPullPutTrim(t *testing.T) {
	s := Alloc(64, 100)
	defer s.Consume()
	if s.Len() != 0 || s.Headroom() != 64 || s.Tailroom() < 100 {
		t.Fatalf("fresh skb: len %d headroom %d tailroom %d", s.Len(), s.Headroom(), s.Tailroom())
	}
	copy(s.Put(5), "hello")
	s.SetTransportHeader()
	copy(s.Push(3), "IP:")
	s.SetNetworkHeader()
	copy(s.Push(4), "ETH:")
	s.SetMACHeader()
	if got := string(s.Bytes()); got != "ETH:IP:hello" {
		t.Fatalf("bytes %q", got)
	}
	if got := string(s.NetworkHeader()); got != "IP:hello" {
		t.Fatalf("network header %q", got)
	}
	if p := s.Pull(4); string(p) != "ETH:" {
		t.Fatalf("pulled %q", p)
	}
	if s.Pull(100) != nil {
		t.Fatal("pull past the end must fail")
	}
	if got := string(s.TransportHeader()); got != "hello" {
		t.Fatalf("transport header %q", got)
	}
	s.Trim(6)
	if got := string(s.Bytes()); got != "IP:hel" {
		t.Fatalf("after trim %q", got)
	}
	if !s.PushToMAC() || string(s.Bytes()[:4]) != "ETH:" {
		t.Fatalf("push to mac: %q", s.Bytes())
	}
}

func TestPushWithoutHeadroomReallocates(t *testing.T) {
	s := FromBytes(0, []byte("payload"))
	defer s.Consume()
	s.SetNetworkHeader()
	copy(s.Push(20), bytes.Repeat([]byte{'h'}, 20))
	if s.Len() != 27 || string(s.Bytes()[20:]) != "payload" {
		t.Fatalf("got %q", s.Bytes())
	}
	if string(s.NetworkHeader()) != "payload" {
		t.Fatalf("network header moved wrong: %q", s.NetworkHeader())
	}
	if s.Headroom() < MaxHeadroom {
		t.Fatalf("headroom after expand %d", s.Headroom())
	}
}

func TestPutGrows(t *testing.T) {
	s := Alloc(0, 10)
	defer s.Consume()
	big := bytes.Repeat([]byte{7}, 5000)
	copy(s.Put(len(big)), big)
	if !bytes.Equal(s.Bytes(), big) {
		t.Fatal("grown data differs")
	}
}

func TestCloneSharesUntilWritable(t *testing.T) {
	s := FromBytes(16, []byte("abcdef"))
	c := s.Clone()
	if &s.Bytes()[0] != &c.Bytes()[0] {
		t.Fatal("clone copied the payload")
	}
	c.Writable()
	c.Bytes()[0] = 'X'
	if string(s.Bytes()) != "abcdef" || string(c.Bytes()) != "Xbcdef" {
		t.Fatalf("orig %q clone %q", s.Bytes(), c.Bytes())
	}
	// Pushing on a shared buffer must not scribble on the other's headroom.
	d := s.Clone()
	copy(d.Push(2), "zz")
	copy(s.Push(2), "yy")
	if string(d.Bytes()) != "zzabcdef" || string(s.Bytes()) != "yyabcdef" {
		t.Fatalf("d %q s %q", d.Bytes(), s.Bytes())
	}
	s.Consume()
	c.Consume()
	d.Consume()
}

func TestCopyIsDeep(t *testing.T) {
	s := FromBytes(8, []byte("abc"))
	c := s.Copy()
	c.Bytes()[0] = 'X'
	if string(s.Bytes()) != "abc" {
		t.Fatal("copy shares storage")
	}
	s.Consume()
	c.Consume()
}

func TestFreeCountsReason(t *testing.T) {
	r := NewDropReason("TEST_REASON")
	if NewDropReason("TEST_REASON") != r {
		t.Fatal("re-registering a name must return the same reason")
	}
	var d DropStats
	s := Alloc(0, 1)
	s.Drops = &d
	s.Free(r)
	if d.Get(r) != 1 || d.Total() != 1 || d.Snapshot()["TEST_REASON"] != 1 {
		t.Fatalf("counts %v", d.Snapshot())
	}
	if r.String() != "TEST_REASON" {
		t.Fatalf("name %q", r)
	}
}

func TestQueue(t *testing.T) {
	var q Queue
	for i := 0; i < 5; i++ {
		q.PushBack(FromBytes(0, []byte{byte(i), 0}))
	}
	if q.Len() != 5 || q.Bytes() != 10 {
		t.Fatalf("len %d bytes %d", q.Len(), q.Bytes())
	}
	first := q.PopFront()
	if first.Bytes()[0] != 0 {
		t.Fatal("not FIFO")
	}
	first.Consume()
	all := q.TakeAll()
	if q.Len() != 0 || all.Len() != 4 {
		t.Fatalf("take all: q %d all %d", q.Len(), all.Len())
	}
	n := 0
	for s := all.Front(); s != nil; s = s.Next() {
		n++
	}
	if n != 4 {
		t.Fatalf("iterated %d", n)
	}
	var d DropStats
	for s := all.Front(); s != nil; s = s.Next() {
		s.Drops = &d
	}
	all.Purge(DropQueueFull)
	if d.Get(DropQueueFull) != 4 || all.Len() != 0 {
		t.Fatalf("purge counted %d", d.Get(DropQueueFull))
	}
}

// PullFront and AppendBack keep the queue's byte count; AppendBack only
// writes the newest SKB's own tailroom, never a clone's shared storage.
func TestQueuePullFrontAppendBack(t *testing.T) {
	var q Queue
	q.PushBack(FromBytes(0, []byte("abcd")))
	tail := Alloc(0, 64)
	copy(tail.Put(2), "ef")
	q.PushBack(tail)
	q.PullFront(1)
	if !q.AppendBack([]byte("gh")) || q.Bytes() != 7 {
		t.Fatalf("bytes %d", q.Bytes())
	}
	if string(q.Front().Bytes()) != "bcd" || string(q.Back().Bytes()) != "efgh" {
		t.Fatalf("front %q back %q", q.Front().Bytes(), q.Back().Bytes())
	}
	c := tail.Clone()
	if q.AppendBack([]byte("x")) {
		t.Fatal("appended into storage shared with a clone")
	}
	c.Consume()
	if q.AppendBack(make([]byte, 1000)) {
		t.Fatal("appended past the tailroom")
	}
	q.Purge(DropQueueFull)
}

func TestAllocReusesPooledBlocks(t *testing.T) {
	allocs := testing.AllocsPerRun(1000, func() {
		s := Alloc(MaxHeadroom, 1500)
		s.Put(1500)
		s.Push(14)
		s.Consume()
	})
	if allocs > 0 {
		t.Fatalf("steady-state Alloc/Consume allocated %.1f times", allocs)
	}
}

func BenchmarkAllocPushConsume(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s := Alloc(MaxHeadroom, 1500)
		s.Put(1500)
		s.Push(20)
		s.Push(14)
		s.Consume()
	}
}

func BenchmarkClone(b *testing.B) {
	s := Alloc(MaxHeadroom, 1500)
	s.Put(1500)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s.Clone().Consume()
	}
}
