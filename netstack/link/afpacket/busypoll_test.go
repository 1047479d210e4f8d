package afpacket

import (
	"errors"
	"os"
	"strings"
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
		if st := b.Stats(); st.BusyPollSleeps != 1 || st.BusyPollHits != 0 {
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
