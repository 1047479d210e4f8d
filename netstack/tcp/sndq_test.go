package tcp

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// The send queue is one byte stream whatever the chunking: random
// writes, reservations, peeks, zero-copy segments and discards against a
// plain slice, including a clone in flight (no second zero-copy segment
// of its chunk) and a discard and a release during a reservation.
func TestSendQueueStream(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var q sndQueue
	var model []byte // the bytes queued
	next := byte(0)
	gen := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = next
			next++
		}
		return p
	}
	const goal = 3000
	var vecs [4][]byte
	for round := 0; round < 5000; round++ {
		switch op := rng.IntN(6); {
		case op == 0:
			p := gen(rng.IntN(5000))
			q.write(p, goal)
			model = append(model, p...)
		case op == 1:
			max := rng.IntN(9000) + 1
			v := q.reserve(max, goal, vecs[:1+rng.IntN(len(vecs))])
			total := 0
			for _, b := range v {
				if len(b) == 0 {
					t.Fatal("an empty reserved slice")
				}
				total += len(b)
			}
			if total > max {
				t.Fatalf("reserved %d of %d", total, max)
			}
			n := rng.IntN(total + 1)
			p := gen(n)
			for k, i := 0, 0; k < n; i++ {
				k += copy(v[i], p[k:])
			}
			if d := rng.IntN(len(model) + 1); rng.IntN(2) == 0 {
				q.discard(d) // an ACK while the writer fills
				model = model[d:]
			}
			q.commit(n)
			model = append(model, p...)
		case op == 2 && len(model) > 0:
			off := rng.IntN(len(model))
			p := make([]byte, rng.IntN(len(model)-off)+1)
			if k := q.peek(off, p); k != len(p) || !bytes.Equal(p, model[off:off+k]) {
				t.Fatalf("peek at %d: %d bytes, equal %v", off, k, bytes.Equal(p[:k], model[off:off+k]))
			}
		case op == 3 && len(model) > 0:
			off := rng.IntN(len(model))
			n := rng.IntN(len(model)-off) + 1
			if s := q.segment(off, n); s != nil {
				if !bytes.Equal(s.Bytes(), model[off:off+n]) {
					t.Fatalf("segment at %d: wrong bytes", off)
				}
				// A clone in flight: its chunk gives no second one.
				if q.segment(off, n) != nil {
					t.Fatal("two zero-copy clones of one chunk")
				}
				hdr := s.Push(40)
				for i := range hdr {
					hdr[i] = 0xee // headers written in front of the payload
				}
				s.Consume()
			}
		case op == 4 && len(model) > 0:
			d := rng.IntN(len(model) + 1)
			q.discard(d)
			model = model[d:]
		case op == 5:
			if q.len() != len(model) {
				t.Fatalf("len %d, model %d", q.len(), len(model))
			}
		}
	}
	p := make([]byte, len(model))
	if q.peek(0, p) != len(model) || !bytes.Equal(p, model) {
		t.Fatal("the stream differs at the end")
	}
	// A release during a reservation drops what the writer read.
	v := q.reserve(100, goal, vecs[:])
	q.release()
	copy(v[0], "late")
	q.commit(4)
	if q.len() != 0 || q.q.Len() != 0 {
		t.Fatalf("after release: %d bytes in %d chunks", q.len(), q.q.Len())
	}
}

// A send-queue chunk that went out while still being filled (a small
// write, then a large one) costs one copied segment, not all the rest:
// writeXmit ends the segment at the chunk's end, so the next starts at a
// chunk's first byte and is cloned (segment). Without that, every later
// segment straddled two chunks and was copied.
func TestSendSegmentsRealignToChunks(t *testing.T) {
	c := newPeer(t, Config{Device: func(int) (int, link.Caps, bool) { return 1500, linkGSO, true }})
	s := c.establishPassive(header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7})
	if _, err := s.Write(make([]byte, 10000)); err != nil {
		t.Fatal(err)
	}
	first := c.Expect("the small write")
	if len(first.data) != 10000 {
		t.Fatalf("first segment %v", first)
	}
	const total = 600 << 10
	if _, err := s.Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	before := c.p.Counters()
	acked := first.seq + uint32(len(first.data))
	segs := 0
	for round := 0; round < 200 && acked != c.IRS+1+10000+total; round++ {
		for _, o := range c.Out() {
			if len(o.data) > 0 {
				segs++
				if end := o.seq + uint32(len(o.data)); header.SeqGT(end, acked) {
					acked = end
				}
			}
		}
		c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(acked).Wnd(0xffff))
	}
	if acked != c.IRS+1+10000+total {
		t.Fatalf("acked %d of %d bytes", acked-c.IRS-1, 10000+total)
	}
	after := c.p.Counters()
	copied := int(after["TcpOutSegs"]-before["TcpOutSegs"]) - int(after["TcpExtTCPZeroCopySegs"]-before["TcpExtTCPZeroCopySegs"])
	// The first chunk's rest may take a segment or two (the congestion
	// window cuts them); every later one is a clone.
	if segs < 10 || copied > 3 {
		t.Fatalf("%d data segments, %d copied", segs, copied)
	}
}
