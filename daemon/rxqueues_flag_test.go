package daemon

import (
	"strings"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
)

// --rx-queues takes 0 (the default: one per CPU, at most 2) up to
// afpacket.MaxQueues.
func TestRxQueuesFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want int
		err  bool
	}{{"", 0, false}, {"--rx-queues=2", 2, false}, {"--rx-queues=16", 16, false},
		{"--rx-queues=17", 0, true}, {"--rx-queues=-1", 0, true}} {
		var args []string
		if tt.arg != "" {
			args = []string{tt.arg}
		}
		f, err := ParseServeFlags(args, &strings.Builder{})
		if tt.err {
			if err == nil || !strings.Contains(err.Error(), "--rx-queues") {
				t.Errorf("%s: err %v", tt.arg, err)
			}
			continue
		}
		if err != nil || f.RxQueues != tt.want {
			t.Errorf("%s: %d, %v", tt.arg, f.RxQueues, err)
		}
	}
	if d := DefaultRxQueues(); d < 1 || d > 2 || d > afpacket.MaxQueues {
		t.Errorf("default %d", d)
	}
}
