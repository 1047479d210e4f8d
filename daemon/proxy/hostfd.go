package proxy

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

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
	// sa is the connect(2) address, also asked again by connectResult.
	sa rawSockaddr
	// connErr is connectResult's final answer once connDone is set: a
	// failed connect asked again would start a new one.
	connDone atomic.Bool
	connErr  error
}

// Control runs f with the fd, unless the fd is closing.
func (h *hostFD) Control(f func(fd uintptr)) error {
	if !h.acquire() {
		return net.ErrClosed
	}
	f(uintptr(h.fd))
	h.release()
	return nil
}

// acquire takes a use of fd (false once closed); release gives it back,
// closing fd when Close came meanwhile. Control without a callback, for
// callers that would otherwise allocate a closure per call.
func (h *hostFD) acquire() bool {
	for {
		s := h.state.Load()
		if s&1 != 0 {
			return false
		}
		if h.state.CompareAndSwap(s, s+2) {
			return true
		}
	}
}

func (h *hostFD) release() {
	if h.state.Add(-2) == 1 {
		rawClose(h.fd)
	}
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
				rawClose(h.fd)
			}
			return nil
		}
	}
}

// Abort closes with linger 0: the host peer gets an RST.
func (h *hostFD) Abort() {
	_ = h.Control(func(fd uintptr) {
		l := unix.Linger{Onoff: 1, Linger: 0}
		_ = rawSetsockopt(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, unsafe.Pointer(&l), unsafe.Sizeof(l))
	})
	_ = h.Close()
}

// LocalAddr and RemoteAddr are getsockname(2) and getpeername(2), for
// the relay list (info.go), which reads them as AddrPorts (a TCPAddr
// whatever the socket type); nil when the fd is closed or unconnected.
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

// rawSockaddr is a socket address as the kernel reads it: a sockaddr_in
// or sockaddr_in6, len bytes of b, built in place, so that the system
// calls given it allocate nothing (x/sys's Sockaddr values are heap
// objects, one per call).
type rawSockaddr struct {
	b   [unsafe.Sizeof(unix.RawSockaddrInet6{})]byte
	len uintptr
}

// set makes sa ap of its own family (an IPv4-mapped address as IPv4: an
// IPv6 socket is never given one) and returns the family. An IPv6 zone
// becomes the scope id, the interface named or numbered (RFC 4007 §6), as
// Go's net package does for a zoned address.
func (sa *rawSockaddr) set(ap netip.AddrPort) (int, error) {
	a := ap.Addr().Unmap()
	var port *uint16
	var family int
	switch {
	case a.Is4():
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa.b))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		sa.len, family, port = unsafe.Sizeof(*sa4), unix.AF_INET, &sa4.Port
	case a.Is6():
		var scope uint32
		if zone := a.Zone(); zone != "" {
			idx, err := strconv.Atoi(zone)
			if err != nil {
				ifi, ierr := net.InterfaceByName(zone)
				if ierr != nil {
					return 0, fmt.Errorf("zone %q: %w", zone, ierr)
				}
				idx = ifi.Index
			}
			scope = uint32(idx)
		}
		sa6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa.b))
		*sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16(), Scope_id: scope}
		sa.len, family, port = unsafe.Sizeof(*sa6), unix.AF_INET6, &sa6.Port
	default:
		return 0, syscall.EAFNOSUPPORT
	}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(port))[:], ap.Port())
	return family, nil
}

// addrPort is the address sa holds (as recvfrom(2) filled it), an
// IPv4-mapped one unmapped; the zero AddrPort for another family.
func (sa *rawSockaddr) addrPort() netip.AddrPort {
	switch sa.family() {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa.b))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:]))
	case unix.AF_INET6:
		sa6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa.b))
		return netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr).Unmap(), binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa6.Port))[:]))
	}
	return netip.AddrPort{}
}

// family is sa's address family.
func (sa *rawSockaddr) family() int { return int((*unix.RawSockaddr)(unsafe.Pointer(&sa.b)).Family) }

// sendtoNonblock is sendto(2) of p to sa with MSG_DONTWAIT, raw (the
// goroutine keeps its P: it never sleeps): a full send buffer fails with
// EAGAIN. The caller holds fd open.
func sendtoNonblock(fd int, p []byte, sa *rawSockaddr) unix.Errno {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(ptr), uintptr(len(p)),
			unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&sa.b)), sa.len)
		if e != unix.EINTR {
			return e
		}
	}
}

// SetKeepAliveConfig is (*net.TCPConn).SetKeepAliveConfig for the fd:
// SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, with net's
// meaning of zero (its default: 15 s, 15 s, 9) and of a negative field
// (left as it is).
func (h *hostFD) SetKeepAliveConfig(cfg net.KeepAliveConfig) error {
	var err error
	set := func(fd, level, opt, v int) {
		if e := rawSetsockoptInt(fd, level, opt, v); e != nil && err == nil {
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
	h, err := newHostFD(dst, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if err != nil {
		return nil, err
	}
	_ = rawSetsockoptInt(h.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if e := h.connect(); e != 0 && e != unix.EINPROGRESS && e != unix.EINTR {
		rawClose(h.fd)
		return nil, e
	}
	return h, nil
}

// dialUDP opens a UDP socket of dst's family connected to dst: the
// kernel picks the source address and port, and the socket receives
// only dst's datagrams (and the ICMP errors about ours). A UDP connect
// sends nothing, so it is done when connect(2) returns.
func dialUDP(dst netip.AddrPort) (*hostFD, error) {
	return connectDgram(dst, unix.IPPROTO_UDP)
}

// connectDgram opens a datagram socket of protocol proto (UDP, or ICMP
// for a ping socket) connected to dst, with raw system calls (newHostFD);
// its errors name the call that failed.
func connectDgram(dst netip.AddrPort, proto int) (*hostFD, error) {
	h, err := newHostFD(dst, unix.SOCK_DGRAM, proto)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	for {
		e := h.connect()
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			rawClose(h.fd)
			return nil, os.NewSyscallError("connect", e)
		}
		return h, nil
	}
}

// newHostFD opens a non-blocking socket of dst's family and type typ,
// with dst as its connect(2) address (connect).
func newHostFD(dst netip.AddrPort, typ, proto int) (*hostFD, error) {
	if dst.Addr().Zone() != "" {
		return nil, syscall.EAFNOSUPPORT // a destination outside has no zone
	}
	h := &hostFD{}
	family, err := h.sa.set(dst)
	if err != nil {
		return nil, err
	}
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), uintptr(typ)|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, uintptr(proto))
	if e != 0 {
		return nil, e
	}
	h.fd = int(r)
	return h, nil
}

// setRecvErr is setRecvErr (icmperr.go) for a socket of ours: the
// family is the connect address's, and the call is raw.
func (h *hostFD) setRecvErr() error {
	if !h.acquire() {
		return net.ErrClosed
	}
	defer h.release()
	level, opt := recvErrOpt(h.sa.family())
	return rawSetsockoptInt(h.fd, level, opt, 1)
}

// connect is connect(2) to the address newHostFD recorded.
func (h *hostFD) connect() unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(h.fd), uintptr(unsafe.Pointer(&h.sa.b)), h.sa.len)
	return e
}

// connectResult is the outcome of dialAsync's connect, looked at when
// the socket reported an event or right after connect(2): nil when
// connected, the connect's error, or EAGAIN while still in progress. It
// costs one system call, connect(2) again to the same address (BSD's way
// of asking; net/ipv4/af_inet.c __inet_stream_connect): a socket still in
// SYN-SENT answers EALREADY; one that got established answers 0 (and is
// marked connected) or, asked again, EISCONN; one whose connect failed
// (reset, ICMP error, timeout: back in CLOSE) answers the error and
// clears it — the SO_ERROR and getpeername(2) of Go's net package in
// one. The final answer is kept: a socket back in CLOSE would take a
// third connect(2) as a new connection attempt.
func connectResult(h *hostFD) error {
	if h.connDone.Load() {
		return h.connErr
	}
	var e unix.Errno
	if cerr := h.Control(func(fd uintptr) {
		for {
			_, _, e = unix.RawSyscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&h.sa.b)), h.sa.len)
			if e != unix.EINTR {
				return
			}
		}
	}); cerr != nil {
		return cerr
	}
	switch e {
	case unix.EALREADY, unix.EINPROGRESS:
		return unix.EAGAIN
	case 0, unix.EISCONN:
		h.connErr = nil
	default:
		h.connErr = e
	}
	h.connDone.Store(true)
	return h.connErr
}

// The host sockets' system calls on the connection path (socket, connect,
// setsockopt, getsockopt, getpeername, shutdown, close) are raw: the
// calling goroutine keeps its P. None of them blocks — the socket is
// non-blocking and a close lingers only with linger 0, which resets at
// once — but connect to a local address, shutdown and close run TCP's
// handshake or teardown over loopback inside the call, long enough for
// Go's sysmon to take the P away (a thread wake-up to hand it off, the
// slow path back on return; sysmon was 7% of the daemon's CPU in make
// bench's connection run). relay.sendmsg says the same for the data.

func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawShutdown(fd, how int) error {
	if _, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0); e != 0 {
		return e
	}
	return nil
}

func rawSetsockoptInt(fd, level, opt, v int) error {
	val := int32(v)
	return rawSetsockopt(fd, level, opt, unsafe.Pointer(&val), 4)
}

func rawSetsockopt(fd, level, opt int, p unsafe.Pointer, n uintptr) error {
	if _, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), n, 0); e != 0 {
		return e
	}
	return nil
}

// readDgrams reads the datagram socket fd (held open by the caller) until
// it is empty (EAGAIN), as an edge-triggered poller callback must: each
// message to msg, in a pooled buffer that msg must not keep, with its
// sender when from is set (recvfrom(2); read(2) otherwise, and from is the
// zero AddrPort); the socket's pending error (an ICMP error's errno, which
// a read reports once) to fail. A second error in a row is no such error
// and ends the loop, which must not keep the poller's goroutine — every
// relay's — spinning. It reports whether fail ran. The one such loop of
// UDP flows, ping sockets, the raw ICMP sockets and port mappings.
func readDgrams(fd int, from bool, msg func(b []byte, from netip.AddrPort), fail func(unix.Errno)) (sawErr bool) {
	bp := dgramBufs.Get().(*[]byte)
	defer dgramBufs.Put(bp)
	b := *bp
	lastErr := false
	for {
		var n int
		var sender netip.AddrPort
		var errno unix.Errno
		if from {
			n, sender, errno = recvfromNonblock(fd, b)
		} else {
			var r uintptr
			r, _, errno = unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			n = int(r)
		}
		switch errno {
		case 0:
			lastErr = false
			msg(b[:n], sender)
		case unix.EINTR:
		case unix.EAGAIN:
			return sawErr
		default:
			if lastErr {
				return sawErr
			}
			lastErr, sawErr = true, true
			fail(errno)
		}
	}
}
