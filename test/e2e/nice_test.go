package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestDaemonNice: every thread of a daemon runs at serve --nice, as
// ps(1) shows them: the value is set on the threads there are at start,
// and the ones the runtime starts later inherit it. By default the
// daemon keeps the value it was started with (this test's, 0).
func TestDaemonNice(t *testing.T) {
	requireCmd(t, "ps") // procps, which make deps installs
	for _, tc := range []struct {
		args []string
		want string
	}{{nil, "0"}, {[]string{"--nice=-5"}, "-5"}, {[]string{"--nice=3"}, "3"}} {
		e := newCNIEnv(t)
		e.serveArgs = tc.args
		e.startDaemon()
		e.add(e.confList("1.0.0", e.plugin(nil))) // an attachment: the daemon's link goroutines and their threads
		out, err := exec.Command("ps", "-L", "-o", "tid=,ni=", "-p", strconv.Itoa(e.daemon.Process.Pid)).Output()
		if err != nil {
			t.Fatalf("ps: %v", err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 2 {
			t.Fatalf("%v: threads %q", tc.args, out)
		}
		for _, l := range lines {
			if f := strings.Fields(l); len(f) != 2 || f[1] != tc.want {
				t.Errorf("%v: thread %q, want nice %s", tc.args, l, tc.want)
			}
		}
	}
}
