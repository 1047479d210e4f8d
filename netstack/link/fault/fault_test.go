package fault

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
	"slices"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
)

const etherTypeTest = 0x88b5 // IEEE local experimental

// frame builds a 60-byte Ethernet frame carrying id at offset 14.
func frame(id uint16, etherType uint16) *buf.SKB {
	s := buf.Alloc(buf.MaxHeadroom, 60)
	p := s.Put(60)
	for i := range p {
		p[i] = byte(i)
	}
	binary.BigEndian.PutUint16(p[12:], etherType)
	binary.BigEndian.PutUint16(p[14:], id)
	return s
}

func frameID(b []byte) uint16 { return binary.BigEndian.Uint16(b[14:]) }

// drain reads everything queued at the pipe end without blocking.
func drain(t *testing.T, p *pipe.Endpoint) [][]byte {
	t.Helper()
	var out [][]byte
	pkts := make([]*buf.SKB, 64)
	for p.Queued() > 0 {
		n, err := p.ReadBatch(pkts)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range pkts[:n] {
			out = append(out, append([]byte(nil), s.Bytes()...))
			s.Consume()
		}
	}
	return out
}

func ids(frames [][]byte) []uint16 {
	var out []uint16
	for _, f := range frames {
		out = append(out, frameID(f))
	}
	return out
}

func send(t *testing.T, e *Endpoint, from, to uint16) {
	t.Helper()
	for id := from; id < to; id++ {
		if _, err := e.WriteBatch([]*buf.SKB{frame(id, etherTypeTest)}); err != nil {
			t.Fatal(err)
		}
	}
}

func seq(from, to uint16) []uint16 {
	var out []uint16
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

func TestTransmitFaults(t *testing.T) {
	onlyID := func(id uint16) Option {
		return Match(func(b []byte) bool { return frameID(b) == id })
	}
	tests := []struct {
		name    string
		opts    []Option
		want    []uint16
		stats   func(Stats) bool
		dropped uint64
	}{
		{"no faults: order kept", nil, seq(0, 6), func(s Stats) bool {
			return s.Lost+s.Duplicated+s.Reordered+s.Corrupted+s.Delayed+s.Overflow+uint64(s.Held) == 0
		}, 0},
		{"loss 1: nothing arrives", []Option{Loss(1)}, nil, func(s Stats) bool { return s.Lost == 6 }, 6},
		{"loss only where matched", []Option{Loss(1), onlyID(2)}, []uint16{0, 1, 3, 4, 5}, func(s Stats) bool { return s.Lost == 1 }, 1},
		{"duplicate 1: each frame twice", []Option{Duplicate(1)}, []uint16{0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5},
			func(s Stats) bool { return s.Duplicated == 6 }, 0},
		{"reorder one frame by a gap of 2", []Option{Reorder(1, 2), onlyID(1)}, []uint16{0, 2, 3, 1, 4, 5},
			func(s Stats) bool { return s.Reordered == 1 }, 0},
		{"reorder held past the last frame waits (Held)", []Option{Reorder(1, 10), onlyID(4)}, []uint16{0, 1, 2, 3, 5},
			func(s Stats) bool { return s.Reordered == 1 && s.Held == 1 }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := pipe.New(1500)
			e := Wrap(a, tt.opts...)
			defer e.Close()
			send(t, e, 0, 6)
			if got := ids(drain(t, b)); !slices.Equal(got, tt.want) {
				t.Fatalf("arrived %v, want %v", got, tt.want)
			}
			st := e.Stats()
			if !tt.stats(st) {
				t.Errorf("stats %+v", st)
			}
			if got := e.Drops().Total(); got != tt.dropped {
				t.Errorf("drops %d, want %d", got, tt.dropped)
			}
		})
	}
}

func TestFlushSendsHeldFrames(t *testing.T) {
	a, b := pipe.New(1500)
	e := Wrap(a, Reorder(1, 100))
	defer e.Close()
	send(t, e, 0, 3)
	if got := drain(t, b); len(got) != 0 {
		t.Fatalf("held frames leaked: %v", ids(got))
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := ids(drain(t, b)); !slices.Equal(got, seq(0, 3)) {
		t.Fatalf("after Flush %v", got)
	}
}

func TestReorderBound(t *testing.T) {
	a, b := pipe.New(1500)
	e := Wrap(a, Reorder(1, 1000))
	defer e.Close()
	send(t, e, 0, MaxReorderHeld+5)
	if got := e.Drops().Get(DropFaultReorderFull); got != 5 {
		t.Fatalf("FAULT_REORDER_FULL = %d, want 5", got)
	}
	if st := e.Stats(); st.Held != MaxReorderHeld || st.Overflow != 5 {
		t.Fatalf("stats %+v", st)
	}
	e.Flush()
	if got := len(drain(t, b)); got != MaxReorderHeld {
		t.Fatalf("flushed %d", got)
	}
}

func TestCorruptFlipsOneBitPastOffset(t *testing.T) {
	for _, off := range []int{14, 40} {
		a, b := pipe.New(1500)
		e := Wrap(a, Corrupt(1), CorruptOffset(off), Seed(7))
		for id := uint16(0); id < 50; id++ {
			orig := frame(id, etherTypeTest)
			want := append([]byte(nil), orig.Bytes()...)
			e.WriteBatch([]*buf.SKB{orig})
			got := drain(t, b)
			if len(got) != 1 {
				t.Fatalf("got %d frames", len(got))
			}
			diff, first := 0, -1
			for i := range want {
				if x := want[i] ^ got[0][i]; x != 0 {
					diff += bits.OnesCount8(x)
					if first < 0 {
						first = i
					}
				}
			}
			if diff != 1 || first < off {
				t.Fatalf("offset %d frame %d: %d bits differ, first at %d", off, id, diff, first)
			}
		}
		// A frame no longer than the offset is left alone.
		short := buf.FromBytes(0, bytes.Repeat([]byte{0xaa}, off))
		e.WriteBatch([]*buf.SKB{short})
		if got := drain(t, b); len(got) != 1 || !bytes.Equal(got[0], bytes.Repeat([]byte{0xaa}, off)) {
			t.Fatalf("short frame changed: %x", got)
		}
		if st := e.Stats(); st.Corrupted != 50 {
			t.Fatalf("Corrupted = %d", st.Corrupted)
		}
		e.Close()
	}
}

// run sends n frames through a fresh wrapper and returns what arrived.
func run(t *testing.T, n uint16, opts ...Option) [][]byte {
	a, b := pipe.New(1500, pipe.WithQueueLen(4*int(n)))
	e := Wrap(a, opts...)
	defer e.Close()
	for id := uint16(0); id < n; id++ {
		e.WriteBatch([]*buf.SKB{frame(id, etherTypeTest)})
	}
	e.Flush()
	return drain(t, b)
}

func TestDeterministicForSeed(t *testing.T) {
	opts := func(seed uint64) []Option {
		return []Option{Seed(seed), Loss(0.1), Duplicate(0.1), Reorder(0.1, 3), Corrupt(0.1)}
	}
	one, two := run(t, 500, opts(42)...), run(t, 500, opts(42)...)
	if !slices.EqualFunc(one, two, bytes.Equal) {
		t.Fatal("same seed, same calls, different wire")
	}
	other := run(t, 500, opts(43)...)
	if slices.EqualFunc(one, other, bytes.Equal) {
		t.Fatal("different seeds gave the same wire")
	}
}

func TestLossRate(t *testing.T) {
	got := len(run(t, 10000, Loss(0.25), Seed(3)))
	// 7500 expected; 6 standard deviations (~260) either side.
	if got < 7240 || got > 7760 {
		t.Fatalf("%d of 10000 arrived with 25%% loss", got)
	}
}

func TestDelayManualClock(t *testing.T) {
	clk := clock.NewManual()
	a, b := pipe.New(1500)
	e := Wrap(a, Delay(10*time.Millisecond), Clock(clk), DelayQueueLen(3))
	defer e.Close()
	send(t, e, 0, 2)
	clk.Advance(5 * time.Millisecond)
	send(t, e, 2, 4) // frame 3 finds the queue full
	if got := e.Drops().Get(DropFaultDelayQueueFull); got != 1 {
		t.Fatalf("FAULT_DELAY_QUEUE_FULL = %d", got)
	}
	clk.Advance(5*time.Millisecond - 1)
	if got := drain(t, b); len(got) != 0 {
		t.Fatalf("released early: %v", ids(got))
	}
	clk.Advance(1)
	if got := ids(drain(t, b)); !slices.Equal(got, []uint16{0, 1}) {
		t.Fatalf("at 10ms: %v", got)
	}
	clk.Advance(5 * time.Millisecond)
	if got := ids(drain(t, b)); !slices.Equal(got, []uint16{2}) {
		t.Fatalf("at 15ms: %v", got)
	}
	if st := e.Stats(); st.Delayed != 3 || st.Held != 0 || clk.Pending() != 0 {
		t.Fatalf("stats %+v pending timers %d", st, clk.Pending())
	}
}

func TestDelayRealClock(t *testing.T) {
	a, b := pipe.New(1500)
	e := Wrap(a, Delay(20*time.Millisecond)) // starts its own real clock
	defer e.Close()
	start := time.Now()
	send(t, e, 0, 1)
	done := make(chan time.Duration, 1)
	go func() {
		pkts := make([]*buf.SKB, 1)
		if n, _ := b.ReadBatch(pkts); n == 1 {
			pkts[0].Consume()
		}
		done <- time.Since(start)
	}()
	select {
	case d := <-done:
		if d < 20*time.Millisecond {
			t.Fatalf("arrived after %v, before the delay", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("delayed frame never released")
	}
}

func TestCloseFreesHeldFrames(t *testing.T) {
	clk := clock.NewManual()
	a, _ := pipe.New(1500)
	e := Wrap(a, Delay(time.Second), Clock(clk), Reorder(0.5, 50), Seed(5))
	send(t, e, 0, 20)
	held := e.Stats().Held
	if held != 20 {
		t.Fatalf("held %d, want 20", held)
	}
	e.Close()
	if got := e.Drops().Get(DropFaultClosed); got != 20 {
		t.Fatalf("FAULT_CLOSED = %d", got)
	}
	if clk.Pending() != 0 {
		t.Fatal("delay timer still armed after Close")
	}
	if _, err := e.WriteBatch([]*buf.SKB{frame(0, etherTypeTest)}); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("WriteBatch after Close: %v", err)
	}
	if _, err := e.ReadBatch(make([]*buf.SKB, 1)); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("ReadBatch after Close: %v", err)
	}
}

func TestReceiveFaults(t *testing.T) {
	tests := []struct {
		name string
		opts []Option
		want []uint16
	}{
		{"receive untouched without OnReceive", []Option{Loss(1)}, seq(0, 4)},
		{"loss on receive", []Option{OnReceive(), Loss(1), Match(func(b []byte) bool { return frameID(b)%2 == 0 })}, []uint16{1, 3}},
		{"duplicate on receive, in order, across reads", []Option{OnReceive(), Duplicate(1)}, []uint16{0, 0, 1, 1, 2, 2, 3, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := pipe.New(1500)
			e := Wrap(b, tt.opts...)
			defer e.Close()
			for id := uint16(0); id < 4; id++ {
				a.WriteBatch([]*buf.SKB{frame(id, etherTypeTest)})
			}
			var got []uint16
			pkts := make([]*buf.SKB, 3) // smaller than the duplicated batch
			for len(got) < len(tt.want) {
				n, err := e.ReadBatch(pkts)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range pkts[:n] {
					got = append(got, frameID(s.Bytes()))
					s.Consume()
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("read %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSteadyStateDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	a, b := pipe.New(1500)
	e := Wrap(a, Loss(0.1), Corrupt(0.1), Reorder(0.1, 2), Seed(9))
	defer e.Close()
	out := make([]*buf.SKB, 1)
	in := make([]*buf.SKB, 8)
	allocs := testing.AllocsPerRun(1000, func() {
		out[0] = frame(1, etherTypeTest)
		e.WriteBatch(out)
		for b.Queued() > 0 {
			n, _ := b.ReadBatch(in)
			for _, s := range in[:n] {
				s.Consume()
			}
		}
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per frame", allocs)
	}
}
