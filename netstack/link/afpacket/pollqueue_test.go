package afpacket

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// TestPollQueue: PollQueue hands every frame over in order — frames sent
// one at a time while it is parked after a short batch (the case where
// it skips the read that would find the socket empty), and a burst
// longer than its slots — stops when fn says so, and returns ErrClosed
// after Close.
func TestPollQueue(t *testing.T) {
	needRoot(t)
	path, devA, devB := quietPair(t)
	a := open(t, Config{NetNS: path, Name: devA})
	b := open(t, Config{NetNS: path, Name: devB})
	const single, burst = 30, 50
	got := make(chan uint32, single+burst)
	stopAt := uint32(single + burst - 1)
	done := make(chan error, 1)
	go func() {
		pkts := make([]*buf.SKB, 8)
		done <- b.PollQueue(0, pkts, func(ps []*buf.SKB) bool {
			more := true
			for _, s := range ps {
				f := s.Bytes()
				if len(f) >= 18 && binary.BigEndian.Uint16(f[12:]) == etherTypeTest {
					id := binary.BigEndian.Uint32(f[14:])
					got <- id
					more = more && id != stopAt
				}
				s.Consume()
			}
			return more
		})
	}()
	want := uint32(0)
	expect := func() {
		t.Helper()
		select {
		case id := <-got:
			if id != want {
				t.Fatalf("frame %d, want %d", id, want)
			}
			want++
		case <-time.After(5 * time.Second):
			t.Fatalf("frame %d not handed over", want)
		}
	}
	for i := 0; i < single; i++ {
		if n, err := a.WriteBatch([]*buf.SKB{testFrame(b.MAC(), a.MAC(), uint32(i), 60)}); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		expect() // PollQueue read it (a batch of 1 of 8) and parked
		if i%3 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	var out []*buf.SKB
	for i := single; i < single+burst; i++ {
		out = append(out, testFrame(b.MAC(), a.MAC(), uint32(i), 60))
	}
	if n, err := a.WriteBatch(out); n != burst || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	for i := 0; i < burst; i++ {
		expect()
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("PollQueue after fn said stop: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PollQueue did not return when fn said stop")
	}
	go func() {
		done <- b.PollQueue(0, make([]*buf.SKB, 8), func(ps []*buf.SKB) bool {
			for _, s := range ps {
				s.Consume()
			}
			return true
		})
	}()
	time.Sleep(10 * time.Millisecond)
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, link.ErrClosed) {
			t.Fatalf("PollQueue after Close: %v, want link.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PollQueue did not return after Close")
	}
}
