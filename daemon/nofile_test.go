package daemon

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPodsAtFlowLimit(t *testing.T) {
	for _, tt := range []struct {
		cur      uint64
		perPod   int
		wantPods uint64
		wantInf  bool
	}{
		{1024, 4096, 0, false},      // all reserve
		{4096, 4096, 0, false},      // a pod's flows do not fit beside the reserve
		{5120, 4096, 1, false},      // exactly one
		{1048576, 4096, 255, false}, // systemd's and containerd's usual 2^20
		{unix.RLIM_INFINITY, 4096, 0, true},
		{0, 4096, 0, false},
	} {
		pods, inf := podsAtFlowLimit(tt.cur, tt.perPod)
		if pods != tt.wantPods || inf != tt.wantInf {
			t.Errorf("podsAtFlowLimit(%d, %d) = %d, %v; want %d, %v", tt.cur, tt.perPod, pods, inf, tt.wantPods, tt.wantInf)
		}
	}
}

// The start-up check warns, naming the fix, when this process's real
// limit is below one pod's flows, and only logs it otherwise.
func TestCheckOpenFileLimitWarns(t *testing.T) {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if l.Cur == unix.RLIM_INFINITY || l.Cur > 1<<40 {
		t.Skipf("open-file limit %d: no per-pod limit is above it", l.Cur)
	}
	for _, tt := range []struct {
		perPod int
		warn   bool
	}{{int(l.Cur), true}, {1, false}} {
		var b bytes.Buffer
		checkOpenFileLimit(tt.perPod, slog.New(slog.NewTextHandler(&b, nil)))
		out := b.String()
		if got := strings.Contains(out, "level=WARN") && strings.Contains(out, "LimitNOFILE"); got != tt.warn {
			t.Errorf("per pod %d under limit %d: warned %v, want %v:\n%s", tt.perPod, l.Cur, got, tt.warn, out)
		}
		if !tt.warn && !strings.Contains(out, "podsAtProxyFlowLimit") {
			t.Errorf("no start-up line with the limit:\n%s", out)
		}
	}
}
