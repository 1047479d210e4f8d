package tcp

import (
	"bytes"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// segSKB is a received segment: a hdr-byte header then payload, in a
// buffer of the size a link would use for it.
func segSKB(hdr int, payload []byte, truesize int) *buf.SKB {
	s := buf.Alloc(buf.MaxHeadroom, truesize-buf.MaxHeadroom)
	copy(s.Put(hdr + len(payload))[hdr:], payload)
	return s
}

// The queue keeps big payloads in their SKBs and copies small ones
// together, so what it pins stays within twice the payload plus one
// coalescing block; reads, peeks and discards see one byte stream.
func TestRcvQueueMemoryAndOrder(t *testing.T) {
	var q rcvQueue
	var want []byte
	next := byte(0)
	payload := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = next
			next++
		}
		want = append(want, p...)
		return p
	}
	// A GSO-sized payload stays in its 64 KiB buffer.
	q.write(segSKB(32, payload(60000), 65536+512), 32, want[len(want)-60000:])
	// 1000 tiny payloads in 512-byte buffers are gathered.
	for i := 0; i < 1000; i++ {
		p := payload(10)
		q.write(segSKB(20, p, 512), 20, p)
	}
	if q.len() != 70000 {
		t.Fatalf("len %d", q.len())
	}
	if q.mem > 2*q.len()+coalesceBlock {
		t.Fatalf("queue pins %d bytes for %d of payload", q.mem, q.len())
	}
	var v [8][]byte
	k, n := q.peek(v[:], 60010)
	var joined []byte
	for _, b := range v[:k] {
		joined = append(joined, b...)
	}
	if n != 60010 || !bytes.Equal(joined, want[:60010]) {
		t.Fatalf("peek: %d slices, %d bytes, not the stream's first", k, n)
	}
	q.discard(59990)
	got := make([]byte, 30)
	if q.read(got) != 30 || !bytes.Equal(got, want[59990:60020]) {
		t.Fatalf("read after discard: %v", got)
	}
	rest := make([]byte, 20000)
	if n := q.read(rest); n != 70000-60020 || !bytes.Equal(rest[:n], want[60020:]) {
		t.Fatalf("read rest: %d", n)
	}
	if q.len() != 0 || q.mem != 0 {
		t.Fatalf("empty queue: len %d mem %d", q.len(), q.mem)
	}
	p := payload(100)
	q.write(segSKB(20, p, 512), 20, p)
	q.release()
	if q.len() != 0 || q.mem != 0 || q.q.Len() != 0 {
		t.Fatal("release left bytes")
	}
}
