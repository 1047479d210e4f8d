package main

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// link is the AF_PACKET socket on the stack end of the pod's veth.
type link struct {
	fd         int
	mac        net.HardwareAddr
	mtu        int
	gsoMaxSize uint32 // 0: no host GSO (no PACKET_VNET_HDR)
}

// openLink opens the socket inside netns (empty: here) on a thread of its
// own, which it returns to this process's netns afterwards; a thread that
// cannot go back is left locked, so the runtime ends it with its goroutine.
// The socket stays bound to the link whatever netns later uses it.
func openLink(netns, name string, gso bool) (*link, error) {
	type result struct {
		l   *link
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		back := -1
		if netns != "" {
			cur, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{err: fmt.Errorf("open own netns: %w", err)}
				return
			}
			defer unix.Close(cur)
			target, err := unix.Open(netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{err: fmt.Errorf("open netns %s: %w", netns, err)}
				runtime.UnlockOSThread()
				return
			}
			err = unix.Setns(target, unix.CLONE_NEWNET)
			unix.Close(target)
			if err != nil {
				ch <- result{err: fmt.Errorf("setns %s: %w", netns, err)}
				runtime.UnlockOSThread()
				return
			}
			back = cur
		}
		l, err := createSocket(name, gso)
		if back >= 0 {
			if err := unix.Setns(back, unix.CLONE_NEWNET); err != nil {
				// Stay locked: the thread dies with this goroutine.
				ch <- result{l, err}
				return
			}
		}
		runtime.UnlockOSThread()
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// createSocket is runsc's sandbox/network.go createSocket: an AF_PACKET
// socket of protocol 0 (no packets before bind), bound to the link for
// ETH_P_ALL, PACKET_VNET_HDR when the link's GSO is on, 4 MiB buffers.
func createSocket(name string, gso bool) (*link, error) {
	nl, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	a := nl.Attrs()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	const ethPAll = 0x0300 // htons(ETH_P_ALL)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethPAll, Ifindex: a.Index}); err != nil {
		return nil, fmt.Errorf("bind to %s: %w", name, err)
	}
	l := &link{fd: fd, mac: a.HardwareAddr, mtu: a.MTU}
	if gso {
		on, err := gsoEnabled(fd, name)
		if err != nil {
			return nil, fmt.Errorf("GSO of %s: %w", name, err)
		}
		if on {
			if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
				return nil, fmt.Errorf("PACKET_VNET_HDR: %w", err)
			}
			l.gsoMaxSize = a.GSOMaxSize
		}
	}
	const bufSize = 4 << 20
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], bufSize); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], bufSize); err != nil {
				fmt.Fprintf(os.Stderr, "gvisorrelay: socket buffer: %v\n", err)
			}
		}
	}
	ok = true
	return l, nil
}

// gsoEnabled asks the link's generic segmentation offload with the
// ETHTOOL_GGSO ioctl, as runsc's isGSOEnabled.
func gsoEnabled(fd int, name string) (bool, error) {
	const ethtoolGGSO = 0x00000023
	val := struct {
		cmd  uint32
		data uint32
	}{cmd: ethtoolGGSO}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer // ifr_data: the ethtool command
		_    [16]byte       // the rest of struct ifreq
	}
	copy(ifr.name[:unix.IFNAMSIZ-1], name)
	ifr.data = unsafe.Pointer(&val)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	if errno != 0 {
		return false, errno
	}
	return val.data != 0, nil
}
