package daemon

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultNice is serve --nice: 0 leaves the nice value the daemon was
// started with untouched (Run calls setNice for any other). A negative
// one (ovs-vswitchd runs at -10) keeps a pod woken by a frame the daemon
// sends (its receive runs inside the daemon's sendmmsg) from preempting
// the daemon before the rest of the batch is out, and runs the daemon's
// wake-ups ahead of the pods' own work: connections/s +8 to +16% in
// make bench's A/Bs, but bulk throughput through proxy mode −6 to −25%,
// as the daemon takes CPU from the pods that send and receive it
// (test/bench's package doc). So it is the operator's choice, not the
// default.
const DefaultNice = 0

// setNice gives every thread of the process the nice value n. Linux
// keeps a nice value per thread (setpriority(2) with PRIO_PROCESS and a
// thread ID), and a new thread inherits its creator's, so once every
// existing thread has n, the Go runtime's later threads have it too; a
// thread created during the first pass by one not yet changed is caught
// by the next (at most maxNicePasses). Raising priority (n below the
// current value) needs CAP_SYS_NICE; the error says so.
func setNice(n int) error {
	for pass := 0; pass < maxNicePasses; pass++ {
		tids, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("--nice: %w", err)
		}
		changed := 0
		for _, t := range tids {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			cur, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
			if err != nil {
				continue // the thread exited
			}
			// The raw getpriority(2) returns 20 - nice.
			if 20-cur == n {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue
				}
				return fmt.Errorf("--nice %d: setpriority: %w (raising priority needs CAP_SYS_NICE)", n, err)
			}
			changed++
		}
		if changed == 0 {
			return nil
		}
	}
	return nil
}

const maxNicePasses = 4
