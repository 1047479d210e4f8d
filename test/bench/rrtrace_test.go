package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func monoNow(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano()
}

// A time.Now converted by monoClock lies between CLOCK_MONOTONIC readings
// taken before and after it (within the offset's stated uncertainty),
// also long after the offset was measured.
func TestMonoClock(t *testing.T) {
	c, err := newMonoClock()
	if err != nil {
		t.Fatal(err)
	}
	if c.err < 0 || c.err > time.Millisecond {
		t.Fatalf("offset uncertainty %v", c.err)
	}
	time.Sleep(20 * time.Millisecond)
	for i := 0; i < 100; i++ {
		before := monoNow(t)
		got := c.at(time.Now())
		after := monoNow(t)
		if slack := int64(c.err); got < before-slack || got > after+slack {
			t.Fatalf("at(now) = %d, want within [%d, %d] ± %d", got, before, after, slack)
		}
	}
}

func TestWriteRRTrace(t *testing.T) {
	ref := time.Now()
	c := monoClock{ref: ref, mono: 1_000_000_000, err: 150}
	h := rrTraceHeader{name: "proxy-ipv4-round2", harness: 42, helpers: []int{7, 9}, clock: c}
	var b strings.Builder
	w := bufio.NewWriter(&b)
	writeRRTrace(w, h, []time.Time{ref.Add(5 * time.Microsecond), ref.Add(300 * time.Microsecond)},
		[]time.Duration{120 * time.Microsecond, 2500 * time.Nanosecond})
	w.Flush()
	want := "# rr-trace proxy-ipv4-round2\n# clock CLOCK_MONOTONIC ns, offset uncertainty 150 ns\n# harness-pid 42\n# helper-pids 7,9\n# start_ns duration_ns\n" +
		"1000005000 120000\n1000300000 2500\n"
	if b.String() != want {
		t.Fatalf("trace:\n%s\nwant:\n%s", b.String(), want)
	}
	if got := (rrTraceHeader{name: "floor (ptp + epoll)/x"}).fileName(); got != "floor__ptp___epoll__x.rr" {
		t.Fatalf("fileName = %q", got)
	}
	dir := t.TempDir()
	path, err := (&rrTrace{dir: dir}).write(h, []time.Time{ref}, []time.Duration{time.Microsecond})
	if err != nil || path != filepath.Join(dir, "proxy-ipv4-round2.rr") {
		t.Fatalf("write = %q, %v", path, err)
	}
	if got, _ := os.ReadFile(path); !strings.HasSuffix(string(got), "\n1000000000 1000\n") {
		t.Fatalf("file ends %q", got)
	}
	path, err = (&rrTrace{dir: dir}).write(h, []time.Time{ref}, []time.Duration{time.Microsecond})
	if err != nil || path != filepath.Join(dir, "proxy-ipv4-round2-2.rr") {
		t.Fatalf("second write = %q, %v; want a -2 file beside the first", path, err)
	}
	if _, err := (&rrTrace{dir: dir}).write(h, []time.Time{ref}, nil); err == nil {
		t.Fatal("write with 1 start and 0 durations: no error")
	}
}
