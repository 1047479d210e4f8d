package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDaemonNice: every thread of a daemon runs at serve --nice: the
// value is set on the threads there are at start, and the ones the
// runtime starts later inherit it. By default the daemon keeps the value
// it was started with (this test's, 0).
func TestDaemonNice(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{{nil, 0}, {[]string{"--nice=-5"}, -5}, {[]string{"--nice=3"}, 3}} {
		e := newCNIEnv(t)
		e.serveArgs = tc.args
		e.startDaemon()
		e.add(e.confList("1.0.0", e.plugin(nil))) // an attachment: the daemon's link goroutines and their threads
		pid := e.daemon.Process.Pid
		tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/stat")
		if err != nil || len(tasks) < 2 {
			t.Fatalf("threads of %d: %v %v", pid, tasks, err)
		}
		for _, st := range tasks {
			b, err := os.ReadFile(st)
			if err != nil {
				continue // exited
			}
			f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
			if n, _ := strconv.Atoi(f[16]); n != tc.want {
				t.Errorf("%v: %s: nice %d, want %d", tc.args, st, n, tc.want)
			}
		}
	}
}
