package daemon

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadNices reads the nice value of every thread of this process
// (field 19 of /proc/self/task/TID/stat).
func threadNices(t *testing.T) map[int]int {
	t.Helper()
	tids, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, d := range tids {
		b, err := os.ReadFile("/proc/self/task/" + d.Name() + "/stat")
		if err != nil {
			continue // exited
		}
		// The command may hold spaces: fields start after the last ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		n, err := strconv.Atoi(f[16]) // field 19: nice
		if err != nil {
			t.Fatalf("stat of %s: %q", d.Name(), b)
		}
		tid, _ := strconv.Atoi(d.Name())
		out[tid] = n
	}
	return out
}

// setNice reaches every thread, and threads started after it inherit
// the value.
func TestSetNice(t *testing.T) {
	before := threadNices(t)
	t.Cleanup(func() { setNice(0) })
	if err := setNice(7); err != nil {
		t.Fatal(err)
	}
	for tid, n := range threadNices(t) {
		if n != 7 {
			t.Errorf("thread %d: nice %d, want 7 (before: %v)", tid, n, before)
		}
	}
	// Goroutines blocked in system calls make the runtime start threads
	// (each blocked call holds one): more of them than there are threads.
	var wg sync.WaitGroup
	for range len(before) + 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts := unix.NsecToTimespec((100 * time.Millisecond).Nanoseconds())
			unix.Nanosleep(&ts, nil)
		}()
	}
	time.Sleep(50 * time.Millisecond)
	after := threadNices(t)
	wg.Wait()
	fresh := 0
	for tid, n := range after {
		if _, old := before[tid]; old {
			continue
		}
		fresh++
		if n != 7 {
			t.Errorf("thread %d started later: nice %d, want 7", tid, n)
		}
	}
	if fresh == 0 {
		t.Fatalf("no thread started during the blocking calls (%d before, %d after)", len(before), len(after))
	}
}
