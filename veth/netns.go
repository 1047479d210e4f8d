package veth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultStackNetNS is the name of the persistent netns that holds the far
// ends of the pod veths and the stack end of the uplink.
const DefaultStackNetNS = "cni-userstack"

// NetNSRunDir is where named network namespaces are bind-mounted, as
// iproute2's `ip netns add` does (NETNS_RUN_DIR).
const NetNSRunDir = "/var/run/netns"

// ErrNetNSNotFound is wrapped by the errors for a namespace path that does
// not exist or is not a network namespace.
var ErrNetNSNotFound = errors.New("network namespace not found")

// NetNSPath is the path of the named netns under NetNSRunDir.
func NetNSPath(name string) string { return filepath.Join(NetNSRunDir, name) }

func stackName(name string) string {
	if name == "" {
		return DefaultStackNetNS
	}
	return name
}

// checkNetNSName rejects names iproute2 would reject: a netns name is one
// path element.
func checkNetNSName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 255 ||
		strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("veth: invalid netns name %q", name)
	}
	return nil
}

// isNetNS reports whether path is a mounted network namespace (nsfs).
func isNetNS(path string) bool { return ns.IsNSorErr(path) == nil }

// EnsureStackNetNS returns the path of the named persistent netns
// (NetNSRunDir/NAME), creating it when missing as `ip netns add` does: a
// fresh namespace bind-mounted on a file in a shared mount of NetNSRunDir.
// Loopback is brought up in it.
//
// A namespace this function creates also gets, before any link can appear
// in it, net.ipv6.conf.default.disable_ipv6=1,
// net.ipv4.conf.default.arp_ignore=8 and IPv4 forwarding off, so that links
// created in or moved into it are born without IPv6, the kernel never
// answers ARP on them and never forwards or answers what arrives on them
// (Setup and UplinkSetup set these per link as well, for a namespace made
// by someone else).
//
// Safe to call concurrently from several processes: creation runs under an
// exclusive flock(2) on NetNSRunDir and re-checks after taking it; a stale
// empty mount-point file (a crash between create and mount) is reused.
func EnsureStackNetNS(name string) (path string, err error) {
	if err := checkNetNSName(name); err != nil {
		return "", err
	}
	path = NetNSPath(name)
	if !isNetNS(path) {
		if err := createNetNS(path, true, false); err != nil {
			return "", fmt.Errorf("veth: create netns %s: %w", name, err)
		}
	}
	if err := loUp(path); err != nil {
		return "", fmt.Errorf("veth: netns %s: bring lo up: %w", name, err)
	}
	return path, nil
}

// NewNetNS creates a plain persistent netns NetNSRunDir/NAME, as `ip netns
// add` does, with lo up and the kernel's defaults (unlike the stack netns):
// for pods in tests and demos. A name already in use wraps os.ErrExist.
func NewNetNS(name string) (path string, err error) {
	if err := checkNetNSName(name); err != nil {
		return "", err
	}
	path = NetNSPath(name)
	if err := createNetNS(path, false, true); err != nil {
		return "", fmt.Errorf("veth: create netns %s: %w", name, err)
	}
	if err := loUp(path); err != nil {
		DeleteNetNS(name)
		return "", fmt.Errorf("veth: netns %s: bring lo up: %w", name, err)
	}
	return path, nil
}

// DeleteNetNS removes the named persistent netns as `ip netns del` does:
// lazy unmount and remove the mount point. The namespace itself goes away
// when the last process or link reference to it is gone. Missing → nil.
func DeleteNetNS(name string) error {
	if err := checkNetNSName(name); err != nil {
		return err
	}
	path := NetNSPath(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("veth: unmount netns %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("veth: remove netns %s: %w", name, err)
	}
	return nil
}

// createNetNS creates and bind-mounts a network namespace at path under an
// exclusive lock on the run dir, with the stack defaults when stack is set.
// When exclusive is set an existing path (even a stale file) is os.ErrExist;
// otherwise an existing netns is success.
func createNetNS(path string, stack, exclusive bool) error {
	if err := os.MkdirAll(NetNSRunDir, 0o755); err != nil {
		return err
	}
	dir, err := os.Open(NetNSRunDir)
	if err != nil {
		return err
	}
	defer dir.Close()
	if err := flock(int(dir.Fd())); err != nil {
		return fmt.Errorf("lock %s: %w", NetNSRunDir, err)
	}
	defer unix.Flock(int(dir.Fd()), unix.LOCK_UN)

	if exclusive {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s: %w", path, os.ErrExist)
		}
	} else if isNetNS(path) { // another process won the race
		return nil
	}
	if err := makeRunDirShared(); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return err
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is left locked and in the new namespace: the runtime
		// kills it when this goroutine returns, so no other goroutine ever
		// runs in the wrong netns.
		runtime.LockOSThread()
		errc <- unshareAndMount(path, stack)
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

func flock(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// makeRunDirShared makes NetNSRunDir a shared mount (bind-mounting it on
// itself first when it is not a mount point), so that a netns mounted in it
// is visible in every mount namespace that has the directory, as iproute2
// does.
func makeRunDirShared() error {
	err := unix.Mount("", NetNSRunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("mount --make-rshared %s: %w", NetNSRunDir, err)
	}
	if err := unix.Mount(NetNSRunDir, NetNSRunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mount --rbind %s: %w", NetNSRunDir, err)
	}
	if err := unix.Mount("", NetNSRunDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mount --make-rshared %s: %w", NetNSRunDir, err)
	}
	return nil
}

// unshareAndMount runs on a locked thread that is never returned to the
// runtime: it moves the thread to a new netns, sets the stack defaults when
// asked and bind-mounts it on path.
func unshareAndMount(path string, stack bool) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
	}
	if stack {
		// /proc/sys/net resolves against the calling thread's netns.
		if err := writeSysctl("net/ipv6/conf/default/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// Forwarding off explicitly: with net.core.devconf_inherit_init_net
		// a new netns copies the host's ip_forward=1, and a forwarding
		// kernel would answer pod packets it has no route for with ICMP
		// errors (ip_error); with forwarding off it drops them silently.
		for _, kv := range [][2]string{
			{"net/ipv4/conf/default/arp_ignore", "8"},
			{"net/ipv4/ip_forward", "0"},
			{"net/ipv4/conf/default/forwarding", "0"},
		} {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
	}
	self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", self, path, err)
	}
	return nil
}

// loUp brings the loopback of the netns at path up.
func loUp(path string) error {
	r, err := openNS(path)
	if err != nil {
		return err
	}
	defer r.close()
	lo, err := r.h.LinkByName("lo")
	if err != nil {
		return err
	}
	if lo.Attrs().RawFlags&unix.IFF_UP != 0 {
		return nil
	}
	return r.h.LinkSetUp(lo)
}

// writeSysctl writes a value under /proc/sys for the calling thread's netns.
func writeSysctl(name, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
}

// readSysctl reads a value under /proc/sys for the calling thread's netns.
func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	return strings.TrimSpace(string(b)), err
}

// ReadSysctlIn reads a /proc/sys value (e.g. "net/ipv6/conf/eth0/disable_ipv6")
// as seen from inside the netns at nsPath.
func ReadSysctlIn(nsPath, name string) (string, error) {
	var v string
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		var err error
		v, err = readSysctl(name)
		return err
	})
	return v, err
}

// ReadSNMPIn reads one counter of /proc/net/snmp (e.g. "Ip",
// "InAddrErrors": what nstat calls IpInAddrErrors) as the kernel of the
// netns at nsPath counts it.
func ReadSNMPIn(nsPath, group, name string) (uint64, error) {
	var v uint64
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		// thread-self: the locked thread is the one inside the netns.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != group+":" {
				continue
			}
			if names == nil {
				names = f // the header line comes first
				continue
			}
			for i, n := range names {
				if n == name && i < len(f) {
					v, err = strconv.ParseUint(f[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("/proc/net/snmp has no %s %s", group, name)
	})
	return v, err
}

// farEndSysctls configures a link with no kernel addresses inside the stack
// netns, whose frames the kernel sees beside the stack's AF_PACKET socket:
//   - IPv6 off: no link-local address, no RS/MLD/DAD traffic from the kernel.
//     A kernel without IPv6 has no net/ipv6 tree: tolerated.
//   - arp_ignore=8: never answer ARP on it. The link has no IPv4 address,
//     so the kernel would not answer anyway; this is the second lock.
//   - forwarding=0: an IPv4 packet the kernel receives there has no local
//     destination and no route; with forwarding off ip_error drops it
//     silently instead of sending ICMP unreachable to the pod.
//
// accept_local and rp_filter are left alone: they matter only for packets
// the kernel would deliver or forward, and it does neither here.
func farEndSysctls(stackPath string, ifNames ...string) error {
	return ns.WithNetNSPath(stackPath, func(ns.NetNS) error {
		for _, ifName := range ifNames {
			if err := writeSysctl("net/ipv6/conf/"+ifName+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if err := writeSysctl("net/ipv4/conf/"+ifName+"/arp_ignore", "8"); err != nil {
				return err
			}
			if err := writeSysctl("net/ipv4/conf/"+ifName+"/forwarding", "0"); err != nil {
				return err
			}
		}
		return nil
	})
}

// nsRef is an open netns: its fd and a netlink handle whose sockets live
// in it, so no thread changes namespace for netlink work.
type nsRef struct {
	path string
	fd   int
	h    *netlink.Handle
}

// openNS opens the netns at path. A missing path or a file that is not a
// netns wraps ErrNetNSNotFound.
func openNS(path string) (*nsRef, error) {
	if err := ns.IsNSorErr(path); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNetNSNotFound, path, err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: %s", ErrNetNSNotFound, path)
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(fd))
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket in %s: %w", path, err)
	}
	return &nsRef{path: path, fd: fd, h: h}, nil
}

func (r *nsRef) close() {
	r.h.Close()
	unix.Close(r.fd)
}
