package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// ReadyTimeout bounds how long the plugin waits for a daemon it started
// (or that another plugin is starting) to answer /v1/status.
const ReadyTimeout = 10 * time.Second

// readyPoll is the interval between readiness probes.
const readyPoll = 50 * time.Millisecond

// DaemonWait bounds how long a command waits for a daemon it may not start
// ("autostart": false) to answer: the daemon of a DaemonSet is replaced
// during a rolling update or after a crash, and the new one answers within
// seconds (its start-up recovery re-attaches the running pods). ADD,
// CHECK and GC fail with code 11 after it. DEL does not wait: it succeeds
// without the daemon, whose recovery drops the record of a pod whose far
// end is gone (before it accepts a new ADD). A variable for tests.
var DaemonWait = 30 * time.Second

// ensureDaemon returns a client for a daemon that answers. When the
// daemon cannot be reached and autostart is on, it starts one — under an
// flock on stateDir/autostart.lock so that concurrent ADDs start one
// daemon — and waits up to ReadyTimeout for it. A daemon that is down with
// autostart off, or that does not come up in time, is code 11 with what to
// do (and where the log is).
func ensureDaemon(ctx context.Context, c *NetConf) (*api.Client, error) {
	cl := api.NewClient(c.Socket, 0)
	st, err := cl.Status(ctx)
	if err == nil {
		if st.StackNetNS != "" && st.StackNetNS != c.StackNetNS {
			return nil, confErr("the network config says stackNetNS %q but the daemon at %s serves %q: make them match", c.StackNetNS, c.Socket, st.StackNetNS)
		}
		return cl, nil
	}
	if !api.IsUnreachable(err) {
		return nil, cniErr(err)
	}
	if !c.AutostartOn() {
		if st, err = awaitDaemon(ctx, c, cl); err != nil {
			if !api.IsUnreachable(err) {
				return nil, cniErr(err)
			}
			return nil, types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("cni-userstack daemon is not running at %s (waited %v) and autostart is false: start it with `cni-userstack serve --socket %s --state-dir %s --stack-netns %s`, "+
					"or in Kubernetes check the cni-userstack DaemonSet's pod on this node (kubectl -n kube-system get pods -l app.kubernetes.io/name=cni-userstack -o wide)",
					c.Socket, DaemonWait, c.Socket, c.StateDir, c.StackNetNS), err.Error())
		}
		if st.StackNetNS != "" && st.StackNetNS != c.StackNetNS {
			return nil, confErr("the network config says stackNetNS %q but the daemon at %s serves %q: make them match", c.StackNetNS, c.Socket, st.StackNetNS)
		}
		return cl, nil
	}
	if err := startDaemon(ctx, c, cl); err != nil {
		return nil, err
	}
	return cl, nil
}

// awaitDaemon polls the daemon's status every readyPoll until it answers,
// for at most DaemonWait (and ctx): a daemon being replaced (a rolling
// update of its DaemonSet) has no socket, or a socket nobody accepts on,
// for a few seconds. It says once on stderr that it waits. The error is
// the last unreachable one, or another error of the daemon's.
func awaitDaemon(ctx context.Context, c *NetConf, cl *api.Client) (*api.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, DaemonWait)
	defer cancel()
	warned := false
	for {
		st, err := cl.Status(ctx)
		if err == nil || !api.IsUnreachable(err) {
			return st, err
		}
		if !warned {
			warnf("the daemon does not answer on %s (restarting?); waiting up to %v", c.Socket, DaemonWait)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(readyPoll):
		}
	}
}

func startDaemon(ctx context.Context, c *NetConf, cl *api.Client) error {
	deadline := time.Now().Add(ReadyTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("autostart: create state dir %s: %v", c.StateDir, err), "")
	}
	lockPath := filepath.Join(c.StateDir, "autostart.lock")
	lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("autostart: open %s: %v", lockPath, err), "")
	}
	defer lock.Close() // releases the flock
	for {
		err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return types.NewError(types.ErrIOFailure, fmt.Sprintf("autostart: lock %s: %v", lockPath, err), "")
		}
		select {
		case <-ctx.Done():
			return types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("autostart: another plugin holds %s and the daemon did not come up within %v; see %s", lockPath, ReadyTimeout, c.LogPath()), "")
		case <-time.After(readyPoll):
		}
	}
	// Whoever held the lock may have started it.
	if _, err := cl.Status(ctx); err == nil {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("autostart: find own binary: %v", err), "")
	}
	if err := os.MkdirAll(filepath.Dir(c.LogPath()), 0o700); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("autostart: log dir: %v", err), "")
	}
	logf, err := os.OpenFile(c.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("autostart: open log %s: %v", c.LogPath(), err), "")
	}
	defer logf.Close()
	cmd := exec.Command(exe, "serve",
		"--socket", c.Socket, "--state-dir", c.StateDir, "--stack-netns", c.StackNetNS,
		"--uplink-subnet", c.UplinkSubnet().String(), "--uplink-subnet6", c.UplinkSubnet6().String(),
		"--uplink-host-ifname", c.Uplink.HostIfName)
	cmd.Stdin = nil // /dev/null
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = daemonEnv(os.Environ())
	cmd.Dir = "/"
	// Its own session: no controlling terminal, and the runtime killing
	// the plugin's process group does not take the daemon with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("autostart: start %s serve: %v", exe, err), "")
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if _, err := cl.Status(ctx); err == nil {
			return nil
		}
		select {
		case werr := <-exited:
			return types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("autostart: the daemon exited at start (%v); see its log %s", werr, c.LogPath()), "")
		case <-ctx.Done():
			return types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("autostart: the daemon (pid %d) did not answer on %s within %v; see its log %s", cmd.Process.Pid, c.Socket, ReadyTimeout, c.LogPath()), "")
		case <-time.After(readyPoll):
		}
	}
}

// daemonEnv is the plugin's environment without the CNI_ variables: the
// daemon is not a plugin invocation.
func daemonEnv(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, "CNI_") {
			out = append(out, e)
		}
	}
	return out
}
