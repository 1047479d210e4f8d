package daemon

import (
	"strings"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// --conntrack-max takes 1 up to MaxConntrackMax; the default is the
// table's own.
func TestConntrackMaxFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want int
		err  bool
	}{{"", conntrack.DefaultMax, false}, {"--conntrack-max=1", 1, false}, {"--conntrack-max=4194304", MaxConntrackMax, false},
		{"--conntrack-max=0", 0, true}, {"--conntrack-max=4194305", 0, true}, {"--conntrack-max=-3", 0, true}} {
		var args []string
		if tt.arg != "" {
			args = []string{tt.arg}
		}
		f, err := ParseServeFlags(args, &strings.Builder{})
		if tt.err {
			if err == nil || !strings.Contains(err.Error(), "--conntrack-max") {
				t.Errorf("%s: err %v", tt.arg, err)
			}
			continue
		}
		if err != nil || f.ConntrackMax != tt.want {
			t.Errorf("%s: %d, %v", tt.arg, f.ConntrackMax, err)
		}
	}
}
