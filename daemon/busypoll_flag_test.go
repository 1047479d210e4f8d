package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
)

// TestBusyPollFlag: --busy-poll defaults to afpacket.DefaultBusyPoll and
// takes a duration in [0, afpacket.MaxBusyPoll].
func TestBusyPollFlag(t *testing.T) {
	tests := []struct {
		args []string
		want time.Duration
		ok   bool
	}{
		{nil, afpacket.DefaultBusyPoll, true},
		{[]string{"--busy-poll", "0"}, 0, true},
		{[]string{"--busy-poll", "50us"}, 50 * time.Microsecond, true},
		{[]string{"--busy-poll", afpacket.MaxBusyPoll.String()}, afpacket.MaxBusyPoll, true},
		{[]string{"--busy-poll", "-1us"}, 0, false},
		{[]string{"--busy-poll", (afpacket.MaxBusyPoll + time.Nanosecond).String()}, 0, false},
		{[]string{"--busy-poll", "fast"}, 0, false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "="), func(t *testing.T) {
			f, err := ParseServeFlags(tt.args, &strings.Builder{})
			if !tt.ok {
				if err == nil {
					t.Fatalf("accepted: %+v", f)
				}
				return
			}
			if err != nil || f.BusyPoll != tt.want {
				t.Fatalf("BusyPoll %v, %v; want %v", f, err, tt.want)
			}
		})
	}
}
