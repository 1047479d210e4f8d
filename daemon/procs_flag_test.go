package daemon

import (
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/cni-userstack/cni-userstack/daemon/procs"
)

// TestProcsFlag: --procs defaults to auto and takes a count from 1 to the
// GOMAXPROCS the daemon starts with; anything else is a flag error naming
// --procs.
func TestProcsFlag(t *testing.T) {
	max := runtime.GOMAXPROCS(0)
	tests := []struct {
		args  []string
		fixed int
		ok    bool
	}{
		{nil, 0, true},
		{[]string{"--procs", procs.Auto}, 0, true},
		{[]string{"--procs", "1"}, 1, true},
		{[]string{"--procs", strconv.Itoa(max)}, max, true},
		{[]string{"--procs", strconv.Itoa(max + 1)}, 0, false},
		{[]string{"--procs", "0"}, 0, false},
		{[]string{"--procs", "many"}, 0, false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "="), func(t *testing.T) {
			f, err := ParseServeFlags(tt.args, &strings.Builder{})
			if !tt.ok {
				if err == nil || !strings.Contains(err.Error(), "--procs") {
					t.Fatalf("got %+v, %v; want an error naming --procs", f, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := f.procs()
			if err != nil || cfg.Fixed != tt.fixed || cfg.Max != max {
				t.Fatalf("procs config %+v, %v; want fixed %d, max %d", cfg, err, tt.fixed, max)
			}
		})
	}
}
