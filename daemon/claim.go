package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockDir holds the claim files of the daemons of a node.
const DefaultLockDir = "/run/cni-userstack"

// One daemon per stack netns and uplink. Two daemons on one stack netns
// would both answer ARP on its links and read the same AF_PACKET
// traffic; two on one uplink would fight over its host routes. So a
// daemon claims, before it touches either, its state dir
// (<state dir>/daemon.lock), its stack netns (<lock dir>/stack-<name>.lock)
// and its uplink (<lock dir>/uplink-<host ifname>.lock): an exclusive
// flock held for the process's life, which the kernel drops when the
// process dies, kill -9 included, so a crashed daemon's claim never
// blocks its restart. The holder writes who it is into the file (pid,
// socket, state dir, start time), so a daemon refused a claim names the
// one that holds it. The lock dir must be the same for every daemon of a
// node (a tmpfs: /run; in a container, the host's, mounted).

// claimHolder is what a claim file says of the daemon holding it.
type claimHolder struct {
	PID        int       `json:"pid"`
	Socket     string    `json:"socket"`
	StateDir   string    `json:"stateDir"`
	StackNetNS string    `json:"stackNetNS"`
	Uplink     string    `json:"uplink"`
	Started    time.Time `json:"started"`
}

func (h *claimHolder) String() string {
	if h == nil || h.PID == 0 {
		return "another daemon (its claim file names none yet)"
	}
	return fmt.Sprintf("the daemon pid %d serving %s (state dir %s, stack netns %s, uplink %s, since %s)",
		h.PID, h.Socket, h.StateDir, h.StackNetNS, h.Uplink, h.Started.Format(time.RFC3339))
}

// ClaimError is a claim held by another daemon.
type ClaimError struct {
	What   string // "stack netns \"cni-userstack\"", "state dir ...", ...
	Path   string // the claim file
	Holder *claimHolder
}

func (e *ClaimError) Error() string {
	return fmt.Sprintf("%s is claimed by %s (lock %s): stop that daemon first, or give this one its own --socket, --state-dir, --stack-netns and --uplink-host-ifname",
		e.What, e.Holder, e.Path)
}

// claims are the flocks a daemon holds.
type claims []*os.File

// Close releases the claims and removes their files: unlinked while still
// locked, so a daemon that opens the path afterwards makes a new file
// (claim checks it locked the file the path names). A daemon killed
// before this leaves its files; the next one locks them again.
func (c claims) Close() {
	for _, f := range c {
		os.Remove(f.Name())
		f.Close()
	}
}

// claim takes the exclusive flock of path (created 0600 with its
// directory 0700 when missing) and writes the holder into it. Held by
// another process: a *ClaimError naming it.
func claim(path, what string, me *claimHolder) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%s: lock dir: %w", what, err)
	}
	f, err := lockFile(path, what)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(me)
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(append(b, '\n'), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: write %s: %w", what, path, err)
	}
	return f, nil
}

// lockFile opens path and takes its exclusive flock without waiting. A
// releasing daemon unlinks the file under its lock, so the file locked
// must still be the one path names (same inode), else the lock is on a
// removed file and is taken again on the new one; bounded by
// maxClaimTries.
func lockFile(path, what string) (*os.File, error) {
	for i := 0; ; i++ {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &ClaimError{What: what, Path: path, Holder: readHolder(path)}
			}
			return nil, fmt.Errorf("%s: flock %s: %w", what, path, err)
		}
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &named) == nil && held.Ino == named.Ino && held.Dev == named.Dev {
			return f, nil
		}
		f.Close()
		if i == maxClaimTries {
			return nil, fmt.Errorf("%s: %s keeps being replaced", what, path)
		}
	}
}

// maxClaimTries bounds lockFile's retries.
const maxClaimTries = 10

// readHolder reads a claim file's holder. The holder writes it right
// after it took the lock: an empty file is read again a few times.
func readHolder(path string) *claimHolder {
	for i := 0; i < 10; i++ {
		var h claimHolder
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &h) == nil && h.PID != 0 {
			return &h
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// claimName makes a netns or interface name safe as a file name part
// (netns names are file names already; this only guards the separator).
func claimName(s string) string { return strings.ReplaceAll(s, "/", "_") }

// takeClaims claims the state dir, the stack netns and the uplink for
// this daemon, in that order; on error it holds none.
func takeClaims(f *ServeFlags, stackNetNS string) (claims, error) {
	me := &claimHolder{PID: os.Getpid(), Socket: f.Socket, StateDir: f.StateDir, StackNetNS: stackNetNS,
		Uplink: f.UplinkHostIfName, Started: time.Now().UTC()}
	if err := os.MkdirAll(f.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	var held claims
	for _, c := range []struct{ path, what string }{
		{filepath.Join(f.StateDir, "daemon.lock"), fmt.Sprintf("state dir %s", f.StateDir)},
		{filepath.Join(f.LockDir, "stack-"+claimName(stackNetNS)+".lock"), fmt.Sprintf("stack netns %q", stackNetNS)},
		{filepath.Join(f.LockDir, "uplink-"+claimName(f.UplinkHostIfName)+".lock"), fmt.Sprintf("uplink %q", f.UplinkHostIfName)},
	} {
		file, err := claim(c.path, c.what, me)
		if err != nil {
			held.Close()
			return nil, err
		}
		held = append(held, file)
	}
	return held, nil
}
