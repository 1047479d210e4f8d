package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// flagCase is one command line of a serve flag's test: the flag's value
// after it (ok), or that it is refused with an error naming the flag.
type flagCase[T comparable] struct {
	arg  string // "--name=value"; "" for none: the default
	want T
	ok   bool
}

// checkFlag parses each case's command line with ParseServeFlags and
// reads the flag's value with get.
func checkFlag[T comparable](t *testing.T, name string, get func(*ServeFlags) T, cases []flagCase[T]) {
	t.Helper()
	for _, c := range cases {
		var args []string
		if c.arg != "" {
			args = []string{c.arg}
		}
		f, err := ParseServeFlags(args, &strings.Builder{})
		switch {
		case !c.ok:
			if err == nil || !strings.Contains(err.Error(), "--"+name) {
				t.Errorf("%q: err %v, want one naming --%s", c.arg, err, name)
			}
		case err != nil:
			t.Errorf("%q: %v", c.arg, err)
		case get(f) != c.want:
			t.Errorf("%q: %v, want %v", c.arg, get(f), c.want)
		}
	}
}

// --busy-poll defaults to afpacket.DefaultBusyPoll and takes a duration
// in [0, afpacket.MaxBusyPoll].
func TestBusyPollFlag(t *testing.T) {
	checkFlag(t, "busy-poll", func(f *ServeFlags) time.Duration { return f.BusyPoll }, []flagCase[time.Duration]{
		{"", afpacket.DefaultBusyPoll, true},
		{"--busy-poll=0", 0, true},
		{"--busy-poll=50us", 50 * time.Microsecond, true},
		{"--busy-poll=" + afpacket.MaxBusyPoll.String(), afpacket.MaxBusyPoll, true},
		{"--busy-poll=-1us", 0, false},
		{"--busy-poll=" + (afpacket.MaxBusyPoll + time.Nanosecond).String(), 0, false},
		{"--busy-poll=fast", 0, false},
	})
}

// --rx-queues takes 0 (the default: one per CPU, at most 2) up to
// afpacket.MaxQueues.
func TestRxQueuesFlag(t *testing.T) {
	checkFlag(t, "rx-queues", func(f *ServeFlags) int { return f.RxQueues }, []flagCase[int]{
		{"", 0, true}, {"--rx-queues=2", 2, true}, {"--rx-queues=16", 16, true},
		{"--rx-queues=17", 0, false}, {"--rx-queues=-1", 0, false},
	})
	if d := DefaultRxQueues(); d < 1 || d > 2 || d > afpacket.MaxQueues {
		t.Errorf("default %d", d)
	}
}

// --conntrack-max takes 1 up to MaxConntrackMax; the default is the
// table's own.
func TestConntrackMaxFlag(t *testing.T) {
	checkFlag(t, "conntrack-max", func(f *ServeFlags) int { return f.ConntrackMax }, []flagCase[int]{
		{"", conntrack.DefaultMax, true}, {"--conntrack-max=1", 1, true}, {"--conntrack-max=4194304", MaxConntrackMax, true},
		{"--conntrack-max=0", 0, false}, {"--conntrack-max=4194305", 0, false}, {"--conntrack-max=-3", 0, false},
	})
}

// --nice takes -20 to 19; the default is DefaultNice.
func TestNiceFlag(t *testing.T) {
	checkFlag(t, "nice", func(f *ServeFlags) int { return f.Nice }, []flagCase[int]{
		{"", DefaultNice, true}, {"--nice=0", 0, true}, {"--nice=-20", -20, true}, {"--nice=19", 19, true},
		{"--nice=-21", 0, false}, {"--nice=20", 0, false},
	})
}
