package proxy

import (
	"net/netip"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// pingNetns is a private network namespace of the test (unshare(2), no
// name: `ip netns list` does not see it, and it goes away with its last
// socket) where ping sockets are allowed (net.ipv4.ping_group_range
// "0 2147483647", per namespace) and lo is up: a real ping socket for
// the tests whatever the host's own ping_group_range says. One thread,
// locked into the namespace, opens the sockets (do); a socket stays in the
// namespace it was opened in, whichever thread uses it later.
type pingNetns struct {
	req chan func()
}

// newPingNetns makes the namespace, or skips the test where unshare is
// not allowed (no CAP_SYS_ADMIN).
func newPingNetns(tb testing.TB) *pingNetns {
	tb.Helper()
	ns := &pingNetns{req: make(chan func())}
	ready := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine and does
		// not go back to the runtime's pool in the namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- err
			return
		}
		if err := pingNetnsSetup(); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for fn := range ns.req {
			fn()
		}
	}()
	if err := <-ready; err != nil {
		tb.Skipf("private netns for ping sockets: %v", err)
	}
	tb.Cleanup(func() { close(ns.req) })
	return ns
}

// pingNetnsSetup runs on the namespace's thread: lo up, ping sockets
// allowed to every group.
func pingNetnsSetup() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return err
	}
	return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0o644)
}

// do runs fn on the namespace's thread.
func (ns *pingNetns) do(fn func()) {
	done := make(chan struct{})
	ns.req <- func() { fn(); close(done) }
	<-done
}

// inNetns makes open (openPingSocket) open its sockets in ns.
func inNetns[T any](ns *pingNetns, open func(netip.Addr) (T, error)) func(netip.Addr) (T, error) {
	return func(dst netip.Addr) (T, error) {
		var c T
		var err error
		ns.do(func() { c, err = open(dst) })
		return c, err
	}
}
