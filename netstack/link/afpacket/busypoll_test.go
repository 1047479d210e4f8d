package afpacket

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// quietPair is a veth pair inside one new namespace with IPv6 off, so the
// kernel sends nothing on it by itself (no MLD, no router solicitations).
func quietPair(t *testing.T) (path, devA, devB string) {
	t.Helper()
	ns, path := newNetNS(t, "q")
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw",
		"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	devA, devB = vethPair(t, ns, ns)
	return path, devA, devB
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readOne runs one ReadBatch in a goroutine, bounded by deadline.
func readOne(e *Endpoint, deadline time.Duration) <-chan error {
	errc := make(chan error, 1)
	e.SetReadDeadline(time.Now().Add(deadline))
	go func() {
		pkts := make([]*buf.SKB, 4)
		n, err := e.ReadBatch(pkts)
		for _, s := range pkts[:n] {
			s.Consume()
		}
		if err == nil && n == 0 {
			err = errors.New("ReadBatch returned no frame and no error")
		}
		errc <- err
	}()
	return errc
}

func TestBusyPollConfig(t *testing.T) {
	needRoot(t)
	path, devA, _ := quietPair(t)
	tests := []struct {
		name    string
		poll    time.Duration
		wantErr bool
	}{
		{"off", 0, false},
		{"default", DefaultBusyPoll, false},
		{"50us", 50 * time.Microsecond, false},
		{"max", MaxBusyPoll, false},
		{"negative", -time.Microsecond, true},
		{"past max", MaxBusyPoll + 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Open(Config{NetNS: path, Name: devA, BusyPoll: tt.poll})
			if tt.wantErr {
				if err == nil {
					e.Close()
					t.Fatal("Open succeeded")
				}
				if !strings.Contains(err.Error(), "BusyPoll") {
					t.Fatalf("error %q does not name BusyPoll", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e.Close()
		})
	}
}

// TestBusyPollDelivers: a frame sent while the reader is busy polling is
// read without sleeping (a BusyPollHit), and every frame arrives.
func TestBusyPollDelivers(t *testing.T) {
	needRoot(t)
	defer func(d time.Duration) { yieldTaken = d }(yieldTaken)
	yieldTaken = time.Hour // the writer waking on the poller's CPU must not end the poll
	path, devA, devB := quietPair(t)
	a := open(t, Config{NetNS: path, Name: devA})
	b := open(t, Config{NetNS: path, Name: devB, BusyPoll: MaxBusyPoll})
	const rounds = 20
	for i := 0; i < rounds; i++ {
		errc := readOne(b, 5*time.Second)
		// Within the 10 ms budget of a reader that has started polling;
		// a reader not yet started finds the frame at once instead,
		// which is why several rounds run.
		time.Sleep(time.Millisecond)
		if n, err := a.WriteBatch([]*buf.SKB{testFrame(b.MAC(), a.MAC(), uint32(i), 60)}); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("round %d: ReadBatch: %v", i, err)
		}
	}
	st := b.Stats()
	if st.RxPackets != rounds {
		t.Fatalf("RxPackets %d, want %d", st.RxPackets, rounds)
	}
	if st.BusyPollHits == 0 {
		t.Fatalf("no frame was caught while busy polling: %+v", st)
	}
	if st.BusyPollSleeps != 0 {
		// 1 ms of a 10 ms budget: only a reader stalled for 9 ms sleeps.
		t.Logf("%d reads outlived their budget (a loaded machine)", st.BusyPollSleeps)
	}
}

// TestBusyPollParksWhenIdle: with nothing arriving, a read polls for its
// budget and then sleeps in the netpoller: the process burns about one
// budget of CPU, not the whole wait, and the read still ends at its
// deadline, or at Close.
func TestBusyPollParksWhenIdle(t *testing.T) {
	needRoot(t)
	path, _, devB := quietPair(t)
	const budget = 2 * time.Millisecond
	b := open(t, Config{NetNS: path, Name: devB, BusyPoll: budget})

	t.Run("sleeps after the budget", func(t *testing.T) {
		const wait = time.Second
		before := cpuTime(t)
		err := <-readOne(b, wait)
		used := cpuTime(t) - before
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ReadBatch: %v, want the deadline", err)
		}
		// Polling through the whole wait would use most of a CPU for
		// 1 s; sleeping after 2 ms uses next to nothing.
		if used > wait/5 {
			t.Fatalf("an idle read used %v of CPU in %v", used, wait)
		}
		// The poll ends on its budget or, on a loaded machine, when
		// another thread wants the CPU: either way once, and asleep.
		if st := b.Stats(); st.BusyPollSleeps+st.BusyPollYields != 1 || st.BusyPollHits != 0 {
			t.Fatalf("stats %+v, want one sleep", st)
		}
	})

	t.Run("no slot free: sleeps at once", func(t *testing.T) {
		held := maxBusyPollers()
		busyPollers.Add(held)
		defer busyPollers.Add(-held)
		before := b.Stats()
		if err := <-readOne(b, 50*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ReadBatch: %v, want the deadline", err)
		}
		st := b.Stats()
		if st.BusyPollSkips != before.BusyPollSkips+1 || st.BusyPollSleeps != before.BusyPollSleeps {
			t.Fatalf("stats %+v after %+v, want one skip", st, before)
		}
	})

	t.Run("Close ends a busy read", func(t *testing.T) {
		c := open(t, Config{NetNS: path, Name: devB, BusyPoll: MaxBusyPoll})
		errc := readOne(c, 5*time.Second)
		time.Sleep(time.Millisecond) // most likely mid-budget; either way Close ends it
		c.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, link.ErrClosed) {
				t.Fatalf("ReadBatch after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not end the read")
		}
		if busyPollers.Load() != 0 {
			t.Fatalf("%d busy-poll slots still held", busyPollers.Load())
		}
	})
}

// TestBusyPollAlso: each try of a busy poll runs Config.BusyPollAlso, and
// the events it reports keep the poll going past its budget (they are
// counted in BusyPollAlso); once they stop, the poll sleeps after one
// budget. No frame arrives meanwhile. A poll whose thread was off the
// CPU longer than the budget between two tries ends by design (no try
// saw an event within the budget); on a loaded machine that attempt is
// not the case under test and another is made, at most three.
func TestBusyPollAlso(t *testing.T) {
	needRoot(t)
	defer func(d time.Duration) { yieldTaken = d }(yieldTaken)
	yieldTaken = time.Hour // a loaded machine must not end the poll early
	path, _, devB := quietPair(t)
	// The largest budget: above a time slice, which a yield on a
	// loaded machine may last.
	const (
		budget = MaxBusyPoll
		events = 200 * time.Millisecond // far past the budget
	)
	for attempt := 1; ; attempt++ {
		var start time.Time
		var calls, handled atomic.Int64
		var lastEvent atomic.Int64 // ns after start of the last try that reported one
		var lastCall, maxGap time.Duration
		also := func() int {
			calls.Add(1)
			since := time.Since(start)
			maxGap, lastCall = max(maxGap, since-lastCall), since
			if since < events {
				lastEvent.Store(int64(since))
				handled.Add(1)
				return 1
			}
			return 0
		}
		b := open(t, Config{NetNS: path, Name: devB, BusyPoll: budget, BusyPollAlso: also})
		start = time.Now()
		if err := <-readOne(b, 2*time.Second); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ReadBatch: %v, want the deadline", err)
		}
		st := b.Stats()
		b.Close()
		if calls.Load() == 0 {
			t.Fatal("BusyPollAlso was never called")
		}
		if got := time.Duration(lastEvent.Load()); got < events/2 {
			if maxGap >= budget && attempt < 3 {
				t.Logf("attempt %d: the poll's thread was off the CPU %v between two tries (budget %v); again", attempt, maxGap, budget)
				continue
			}
			t.Fatalf("the poll stopped %v after it started although BusyPollAlso reported events for %v (budget %v, longest gap between tries %v); calls %d, stats %+v",
				got, events, budget, maxGap, calls.Load(), st)
		}
		if st.BusyPollAlso != uint64(handled.Load()) || st.BusyPollSleeps != 1 || st.BusyPollYields != 0 {
			t.Fatalf("stats %+v, want BusyPollAlso %d and one sleep", st, handled.Load())
		}
		return
	}
}

// TestBusyPollYieldsTheCPU: a busy poll whose CPU another thread wants
// stops at its first yield and sleeps (BusyPollYields), instead of
// sharing the CPU with that thread for its whole budget; the read still
// gets the frame that comes later. The reader's thread and a spinning
// process are pinned to the same CPU.
func TestBusyPollYieldsTheCPU(t *testing.T) {
	needRoot(t)
	path, devA, devB := quietPair(t)
	a := open(t, Config{NetNS: path, Name: devA})
	b := open(t, Config{NetNS: path, Name: devB, BusyPoll: MaxBusyPoll})
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for i := 0; i < 1024 && cpu < 0; i++ {
		if cpus.IsSet(i) {
			cpu = i
		}
	}
	spin := exec.Command("taskset", "-c", strconv.Itoa(cpu), "sh", "-c", "while :; do :; done")
	if err := spin.Start(); err != nil {
		t.Skipf("taskset: %v", err)
	}
	defer func() { spin.Process.Kill(); spin.Wait() }()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var one unix.CPUSet
		one.Set(cpu)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			errc <- err
			return
		}
		defer unix.SchedSetaffinity(0, &cpus)
		b.SetReadDeadline(time.Now().Add(5 * time.Second))
		pkts := make([]*buf.SKB, 4)
		n, err := b.ReadBatch(pkts)
		for _, s := range pkts[:n] {
			s.Consume()
		}
		if err == nil && n != 1 {
			err = errors.New("want one frame")
		}
		errc <- err
	}()
	// Past one yield (the spinning process runs for a time slice then),
	// well inside the 10 ms budget.
	time.Sleep(50 * time.Millisecond)
	if n, err := a.WriteBatch([]*buf.SKB{testFrame(b.MAC(), a.MAC(), 1, 60)}); n != 1 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("ReadBatch: %v", err)
	}
	st := b.Stats()
	if st.BusyPollYields != 1 || st.BusyPollSleeps != 0 || st.BusyPollHits != 0 {
		t.Fatalf("stats %+v, want the poll ended by one yield, then a sleep", st)
	}
}

// BenchmarkAFPacketPingPong: round trips of one 60-byte frame between two
// endpoints on a veth, an echo goroutine on one; with and without busy
// polling on both (ns/op is one round trip, two reads).
func BenchmarkAFPacketPingPong(b *testing.B) {
	needRoot(b)
	for _, poll := range []time.Duration{0, 50 * time.Microsecond} {
		b.Run("busy-poll="+poll.String(), func(b *testing.B) {
			ns, path := newNetNS(b, "pp")
			run(b, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
			devA, devB := vethPair(b, ns, ns)
			a := open(b, Config{NetNS: path, Name: devA, BusyPoll: poll})
			e := open(b, Config{NetNS: path, Name: devB, BusyPoll: poll})
			go func() {
				pkts := make([]*buf.SKB, 4)
				for {
					n, err := e.ReadBatch(pkts)
					if err != nil {
						return
					}
					e.WriteBatch(pkts[:n])
				}
			}()
			in := make([]*buf.SKB, 4)
			out := make([]*buf.SKB, 1)
			b.ReportAllocs()
			for b.Loop() {
				out[0] = testFrame(e.MAC(), a.MAC(), 1, 60)
				a.WriteBatch(out)
				a.SetReadDeadline(time.Now().Add(time.Second))
				n, err := a.ReadBatch(in)
				if err != nil {
					b.Fatal(err)
				}
				for _, s := range in[:n] {
					s.Consume()
				}
			}
			st := a.Stats()
			b.ReportMetric(float64(st.BusyPollHits)/float64(b.N), "hits/op")
		})
	}
}
