package proxy

import (
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hostConn is the host side of a relay: a kernel socket reached through
// Control (a reference that keeps the fd open while f runs, so a close
// never lets the number be reused under a running call), closed
// gracefully or abortively.
type hostConn interface {
	Control(f func(fd uintptr)) error
	Close() error
	Abort()
}

// netHost adapts a net.Conn with a kernel socket behind it (a port
// mapping's client, a dialed nameserver).
type netHost struct {
	c  net.Conn
	rc syscall.RawConn
}

func (h netHost) Control(f func(fd uintptr)) error { return h.rc.Control(f) }
func (h netHost) Close() error                     { return h.c.Close() }
func (h netHost) Abort()                           { abortConn(h.c) }

// hostFD is a host socket the engine opened itself (socket(2) and a
// non-blocking connect(2), dialAsync) and waits on with its own poller
// only, outside Go's netpoller: no goroutine waits for its connect. state
// counts the references Control holds (state>>1) and has bit 0 set once
// closing; the last reference out of a closing fd closes it
// (internal/poll's fdMutex, in small).
type hostFD struct {
	fd    int
	state atomic.Int64
}

// Control runs f with the fd, unless the fd is closing.
func (h *hostFD) Control(f func(fd uintptr)) error {
	for {
		s := h.state.Load()
		if s&1 != 0 {
			return net.ErrClosed
		}
		if h.state.CompareAndSwap(s, s+2) {
			break
		}
	}
	f(uintptr(h.fd))
	if h.state.Add(-2) == 1 {
		unix.Close(h.fd)
	}
	return nil
}

// Close closes the fd once no Control runs.
func (h *hostFD) Close() error {
	for {
		s := h.state.Load()
		if s&1 != 0 {
			return net.ErrClosed
		}
		if h.state.CompareAndSwap(s, s|1) {
			if s == 0 {
				unix.Close(h.fd)
			}
			return nil
		}
	}
}

// Abort closes with linger 0: the host peer gets an RST.
func (h *hostFD) Abort() {
	_ = h.Control(func(fd uintptr) {
		_ = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	})
	_ = h.Close()
}

// LocalAddr and RemoteAddr are getsockname(2) and getpeername(2), for
// the relay list (info.go); nil when the fd is closed or unconnected.
func (h *hostFD) LocalAddr() net.Addr  { return h.sockAddr(unix.Getsockname) }
func (h *hostFD) RemoteAddr() net.Addr { return h.sockAddr(unix.Getpeername) }

func (h *hostFD) sockAddr(get func(int) (unix.Sockaddr, error)) net.Addr {
	var sa unix.Sockaddr
	if h.Control(func(fd uintptr) { sa, _ = get(int(fd)) }) != nil {
		return nil
	}
	switch in := sa.(type) {
	case *unix.SockaddrInet4:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port)))
	case *unix.SockaddrInet6:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(in.Addr).Unmap(), uint16(in.Port)))
	}
	return nil
}

// sockaddr is dst as a connect(2) address of its own family (an IPv6
// destination gets an AF_INET6 socket, never an IPv4-mapped address), with
// that family.
func sockaddr(dst netip.AddrPort) (unix.Sockaddr, int, error) {
	a := dst.Addr().Unmap()
	switch {
	case a.Is4():
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(dst.Port())}, unix.AF_INET, nil
	case a.Is6() && a.Zone() == "":
		return &unix.SockaddrInet6{Addr: a.As16(), Port: int(dst.Port())}, unix.AF_INET6, nil
	}
	return nil, 0, syscall.EAFNOSUPPORT
}

// SetKeepAliveConfig is (*net.TCPConn).SetKeepAliveConfig for the fd:
// SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, with net's
// meaning of zero (its default: 15 s, 15 s, 9) and of a negative field
// (left as it is).
func (h *hostFD) SetKeepAliveConfig(cfg net.KeepAliveConfig) error {
	var err error
	set := func(fd, level, opt, v int) {
		if e := unix.SetsockoptInt(fd, level, opt, v); e != nil && err == nil {
			err = e
		}
	}
	secs := func(d, def time.Duration) int {
		if d == 0 {
			d = def
		}
		return int((d + time.Second - 1) / time.Second)
	}
	if cerr := h.Control(func(u uintptr) {
		fd := int(u)
		if !cfg.Enable {
			set(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
			return
		}
		set(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		if cfg.Idle >= 0 {
			set(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(cfg.Idle, 15*time.Second))
		}
		if cfg.Interval >= 0 {
			set(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(cfg.Interval, 15*time.Second))
		}
		if cfg.Count >= 0 {
			c := cfg.Count
			if c == 0 {
				c = 9
			}
			set(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, c)
		}
	}); cerr != nil {
		return cerr
	}
	return err
}

// dialAsync opens a TCP socket of dst's family (AF_INET or AF_INET6) to
// dst and starts a non-blocking connect
// (TCP_NODELAY on, as Go's net.Dialer sets it): the connect completes
// when the socket becomes writable (EPOLLOUT; SO_ERROR says how). An
// error here (no route, EACCES, out of descriptors) ends the attempt.
func dialAsync(dst netip.AddrPort) (*hostFD, error) {
	sa, family, err := sockaddr(dst)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = unix.Connect(fd, sa)
	if err != nil && err != unix.EINPROGRESS && err != unix.EINTR {
		unix.Close(fd)
		return nil, err
	}
	return &hostFD{fd: fd}, nil
}

// connectResult is the outcome of dialAsync's connect once the socket
// reported an event: nil when connected, the socket's error, or EAGAIN
// while still in progress.
func connectResult(h *hostFD) error {
	var soErr int
	var err error
	if cerr := h.Control(func(fd uintptr) {
		soErr, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soErr == 0 {
			// Writable and no error: connected, unless the event was
			// for something else and the connect is still going
			// (getpeername fails with ENOTCONN then).
			if _, perr := unix.Getpeername(int(fd)); perr != nil {
				err = unix.EAGAIN
			}
		}
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	if soErr != 0 {
		return syscall.Errno(soErr)
	}
	return nil
}
