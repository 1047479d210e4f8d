package daemon

import (
	"strings"
	"testing"
)

// --procs takes "auto" (the default) or a count from 1 to maxProcs.
func TestProcsFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want string
		err  bool
	}{{"", ProcsAuto, false}, {"--procs=auto", ProcsAuto, false}, {"--procs=1", "1", false}, {"--procs=1024", "1024", false},
		{"--procs=0", "", true}, {"--procs=1025", "", true}, {"--procs=-2", "", true}, {"--procs=two", "", true}, {"--procs=", "", true}} {
		var args []string
		if tt.arg != "" {
			args = []string{tt.arg}
		}
		f, err := ParseServeFlags(args, &strings.Builder{})
		if tt.err {
			if err == nil || !strings.Contains(err.Error(), "--procs") {
				t.Errorf("%s: err %v", tt.arg, err)
			}
			continue
		}
		if err != nil || f.Procs != tt.want {
			t.Errorf("%s: %q, %v", tt.arg, f.Procs, err)
		}
	}
}
