package afpacket

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ifInfo is what Open learns about the interface.
type ifInfo struct {
	index int
	name  string
	mtu   int
	mac   [6]byte
}

// htons converts to network byte order for sll_protocol and socket(2).
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openInNetNS runs openSockets inside the namespace at path on a locked
// OS thread and returns to the caller's namespace (see the package doc).
func openInNetNS(path string, cfg *Config) ([]int, ifInfo, error) {
	if path == "" {
		return openSockets(cfg)
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return nil, ifInfo{}, fmt.Errorf("afpacket: netns %s: %w", path, err)
	}
	defer target.Close()

	type result struct {
		fds  []int
		info ifInfo
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, ifInfo{}, fmt.Errorf("afpacket: current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			// setns failed, so the thread is still where it was.
			runtime.UnlockOSThread()
			done <- result{nil, ifInfo{}, fmt.Errorf("afpacket: setns %s: %w", path, err)}
			return
		}
		fds, info, err := openSockets(cfg)
		if rerr := netns.Set(orig); rerr != nil {
			// The thread is stranded in the target namespace: return
			// without UnlockOSThread, so the runtime kills the thread
			// when this goroutine exits. The socket, if any, is fine:
			// it belongs to the namespace it was created in.
			done <- result{fds, info, err}
			return
		}
		runtime.UnlockOSThread()
		done <- result{fds, info, err}
	}()
	r := <-done
	return r.fds, r.info, r.err
}

// openSockets opens cfg.Queues sockets on the interface; several join one
// PACKET_FANOUT group hashing flows (packet(7)): the first asks the
// kernel for a group ID of its own (PACKET_FANOUT_FLAG_UNIQUEID, Linux
// 4.7), the others join it. IP fragments are reassembled before the
// hash (PACKET_FANOUT_FLAG_DEFRAG), so a flow's fragments stay together.
func openSockets(cfg *Config) (fds []int, info ifInfo, err error) {
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			fds = nil
		}
	}()
	group := -1
	for q := 0; q < max(cfg.Queues, 1); q++ {
		fd, inf, err := openSocket(cfg)
		if err != nil {
			return fds, info, err
		}
		fds, info = append(fds, fd), inf
		if cfg.Queues <= 1 {
			break
		}
		// The argument is the group ID and, above it, type and flags.
		arg := (unix.PACKET_FANOUT_HASH | unix.PACKET_FANOUT_FLAG_DEFRAG) << 16
		if group < 0 {
			arg |= unix.PACKET_FANOUT_FLAG_UNIQUEID << 16
		} else {
			arg |= group
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, arg); err != nil {
			return fds, info, fmt.Errorf("afpacket: PACKET_FANOUT on %s: %w", info.name, err)
		}
		if group < 0 {
			v, err := unix.GetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT)
			if err != nil {
				return fds, info, fmt.Errorf("afpacket: PACKET_FANOUT group of %s: %w", info.name, err)
			}
			group = v & 0xffff
		}
	}
	return fds, info, nil
}

// openSocket creates and binds the packet socket in the calling thread's
// namespace and reads the interface's index, name, MTU and MAC.
func openSocket(cfg *Config) (fd int, info ifInfo, err error) {
	// Protocol 0: nothing is queued before bind narrows us to one interface.
	fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, info, fmt.Errorf("afpacket: socket: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	}()
	if info, err = lookupInterface(fd, cfg.Name, cfg.Ifindex); err != nil {
		return fd, info, err
	}
	if err = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fd, info, fmt.Errorf("afpacket: PACKET_IGNORE_OUTGOING (needs Linux 4.20): %w", err)
	}
	// PACKET_QDISC_BYPASS (Linux 3.14): packet_snd transmits with
	// packet_xmit → dev_direct_xmit, the driver's ndo_start_xmit, instead
	// of dev_queue_xmit (no qdisc, no dev_queue_xmit_nit taps). Our links
	// are veth ends in our own netns, whose qdisc is noqueue.
	if err = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		return fd, info, fmt.Errorf("afpacket: PACKET_QDISC_BYPASS: %w", err)
	}
	if !cfg.NoVnetHdr {
		if err = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			return fd, info, fmt.Errorf("afpacket: PACKET_VNET_HDR: %w", err)
		}
	}
	setSockBuf(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, cfg.SockBuf)
	setSockBuf(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, cfg.SockBuf)
	sll := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: info.index}
	if err = unix.Bind(fd, sll); err != nil {
		return fd, info, fmt.Errorf("afpacket: bind %s: %w", info.name, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fd, info, fmt.Errorf("afpacket: getsockname: %w", err)
	}
	ll, ok := sa.(*unix.SockaddrLinklayer)
	if !ok || ll.Hatype != unix.ARPHRD_ETHER || ll.Halen != 6 {
		err = fmt.Errorf("afpacket: %s is not an Ethernet interface", info.name)
		return fd, info, err
	}
	copy(info.mac[:], ll.Addr[:6])
	return fd, info, nil
}

// lookupInterface resolves name and/or index with ioctls on fd, which
// answer for the socket's namespace (sock_ioctl → dev_ioctl).
func lookupInterface(fd int, name string, index int) (ifInfo, error) {
	var info ifInfo
	switch {
	case name != "":
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return info, fmt.Errorf("afpacket: interface name %q: %w", name, err)
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
			return info, fmt.Errorf("afpacket: interface %q: %w", name, err)
		}
		info.index, info.name = int(ifr.Uint32()), name
		if index != 0 && index != info.index {
			return info, fmt.Errorf("afpacket: interface %q has index %d, not %d", name, info.index, index)
		}
	case index > 0:
		ifr, _ := unix.NewIfreq("")
		ifr.SetUint32(uint32(index))
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFNAME, ifr); err != nil {
			return info, fmt.Errorf("afpacket: interface index %d: %w", index, err)
		}
		info.index, info.name = index, ifr.Name()
	default:
		return info, errors.New("afpacket: Config needs Name or Ifindex")
	}
	ifr, _ := unix.NewIfreq(info.name)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
		return info, fmt.Errorf("afpacket: MTU of %s: %w", info.name, err)
	}
	info.mtu = int(ifr.Uint32())
	return info, nil
}

// setSockBuf sets a socket buffer size, past the sysctl maximum when
// privileged; failure leaves the kernel default, which only costs drops
// under bursts (counted in KernelDrops).
func setSockBuf(fd, force, plain, n int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, n) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, n)
	}
}

// recvmmsg and sendmmsg: golang.org/x/sys/unix has the Mmsghdr type but no
// wrappers, so these call the syscalls directly. They are non-blocking
// (the socket is O_NONBLOCK) and return the raw errno.
//
// They are raw system calls (no entersyscall): the goroutine keeps its P
// throughout. A sendmmsg to a veth runs the peer's receive softirq, the
// pod's TCP included, inside the call (tens of µs); entered as an
// ordinary syscall, Go's sysmon found the P in a syscall that long and
// handed it off (waking another thread), and the call's return then had
// to get a P back the slow way: two or three more context switches per
// request/response round trip, and sysmon polling every 20 µs because it
// kept finding work (make bench, perf trace -s). A non-blocking call
// cannot park the thread, so nothing is lost by keeping the P.

func recvmmsg(fd uintptr, msgs []unix.Mmsghdr, flags int) (int, unix.Errno) {
	r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), uintptr(flags), 0, 0)
	return int(r), errno
}

func sendmmsg(fd uintptr, msgs []unix.Mmsghdr, flags int) (int, unix.Errno) {
	r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), uintptr(flags), 0, 0)
	return int(r), errno
}

// schedYield gives the CPU to another runnable thread of any process
// (sched_yield(2)): a busy-polling link must not keep the peer that is
// about to answer it off the CPU, which on a 2-core machine costs more
// than the wake-up the polling saves.
func schedYield() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }
