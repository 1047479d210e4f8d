package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// rrTrace is the -rr-trace diagnostic: every timed round trip of a latency
// run, its start on the system's CLOCK_MONOTONIC and its duration, written
// to one file per variant, family and round, so that the slow ones can be
// set beside a system-wide trace of the same moment (`perf record -k
// CLOCK_MONOTONIC ...`, whose timestamps are then the same clock).
type rrTrace struct {
	dir string
}

// monoClock converts the harness's time.Time readings to CLOCK_MONOTONIC
// nanoseconds. Go's monotonic reading is that clock too, but relative to
// the process's start, so the offset is measured once: a CLOCK_MONOTONIC
// reading taken between two time.Now calls, the narrowest of a few tries.
type monoClock struct {
	ref  time.Time // a time.Now with its monotonic reading
	mono int64     // CLOCK_MONOTONIC at ref, ns
	err  time.Duration
}

func newMonoClock() (monoClock, error) {
	var best monoClock
	for i := 0; i < 16; i++ {
		var ts unix.Timespec
		a := time.Now()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			return monoClock{}, fmt.Errorf("clock_gettime(CLOCK_MONOTONIC): %w", err)
		}
		b := time.Now()
		w := b.Sub(a)
		if i == 0 || w < best.err*2 {
			best = monoClock{ref: a.Add(w / 2), mono: ts.Nano(), err: (w + 1) / 2}
		}
	}
	return best, nil
}

// at is t on CLOCK_MONOTONIC, ns (within c.err).
func (c monoClock) at(t time.Time) int64 { return c.mono + int64(t.Sub(c.ref)) }

// rrTraceHeader names what a trace file holds (its first lines, '#').
type rrTraceHeader struct {
	name    string // variant, family and round
	harness int    // the harness's pid: the client's and the server's threads
	helpers []int  // the variant's helper processes (our daemon, a relay)
	clock   monoClock
}

// fileName is the trace's file: the name with anything but letters,
// digits, '-' and '.' turned into '_'.
func (h rrTraceHeader) fileName() string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, h.name) + ".rr"
}

// maxRRTraceRuns bounds the files of one name (a directory reused
// across harness runs fills up instead of growing without end).
const maxRRTraceRuns = 64

// write writes one latency run to a new file in tr.dir: the header, then one line per timed round
// trip, "start duration" in ns, the start on CLOCK_MONOTONIC.
func (tr *rrTrace) write(h rrTraceHeader, starts []time.Time, lat []time.Duration) (string, error) {
	if len(starts) != len(lat) {
		return "", fmt.Errorf("rr trace %s: %d starts, %d durations", h.name, len(starts), len(lat))
	}
	// The kernel reference runs twice a round: the second run's file
	// takes a suffix instead of overwriting the first's.
	base := filepath.Join(tr.dir, h.fileName())
	path := base
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	for i := 2; errors.Is(err, fs.ErrExist) && i <= maxRRTraceRuns; i++ {
		path = strings.TrimSuffix(base, ".rr") + "-" + strconv.Itoa(i) + ".rr"
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	}
	if err != nil {
		return "", err
	}
	w := bufio.NewWriter(f)
	writeRRTrace(w, h, starts, lat)
	err = w.Flush()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return path, err
}

func writeRRTrace(w *bufio.Writer, h rrTraceHeader, starts []time.Time, lat []time.Duration) {
	hp := make([]string, len(h.helpers))
	for i, p := range h.helpers {
		hp[i] = strconv.Itoa(p)
	}
	fmt.Fprintf(w, "# rr-trace %s\n# clock CLOCK_MONOTONIC ns, offset uncertainty %d ns\n# harness-pid %d\n# helper-pids %s\n# start_ns duration_ns\n",
		h.name, h.clock.err.Nanoseconds(), h.harness, strings.Join(hp, ","))
	for i, s := range starts {
		w.WriteString(strconv.FormatInt(h.clock.at(s), 10))
		w.WriteByte(' ')
		w.WriteString(strconv.FormatInt(lat[i].Nanoseconds(), 10))
		w.WriteByte('\n')
	}
}

// writeRRTrace writes one latency run's round trips to -rr-trace's
// directory (a diagnostic: a failure is logged, the run goes on).
func (h *harness) writeRRTrace(a *attached, rr rrResult) {
	err := os.MkdirAll(h.opts.rrTrace, 0o755)
	var clock monoClock
	if err == nil {
		clock, err = newMonoClock()
	}
	path := ""
	if err == nil {
		tr := &rrTrace{dir: h.opts.rrTrace}
		path, err = tr.write(rrTraceHeader{name: h.measuring, harness: os.Getpid(), helpers: a.pids, clock: clock}, rr.Starts, rr.Lat)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:   -rr-trace:", err)
		return
	}
	fmt.Fprintf(os.Stderr, "bench:   round trips written to %s\n", path)
}
