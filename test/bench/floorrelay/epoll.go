package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The event-loop relay (-mode epoll): what a relay costs with no runtime
// between it and the kernel. Each of -workers OS threads (one per CPU by
// default) owns an epoll instance and its own listener per port
// (SO_REUSEPORT: the kernel spreads new connections over the workers by
// their 4-tuple), accepts, connects upstream without blocking, and moves
// bytes with splice(2) through a pipe per direction, edge-triggered: every
// event runs both directions until the kernel says EAGAIN. A flow never
// leaves its worker, so a worker needs no lock. This is the shape of
// pasta's and slirp4netns's loops with the copies taken out.

// half is one direction of a flow: src → pipe → dst.
type half struct {
	src, dst int
	pipe     [2]int // read end, write end
	inPipe   int    // bytes spliced in and not yet out
	eof      bool   // src gave EOF
	shut     bool   // dst's write side is shut (after the pipe drained)
}

// flow is one relayed connection: a is the pod's (accepted), b the
// upstream one.
type flow struct {
	a, b       int
	connecting bool
	ab, ba     half
}

const (
	spliceChunk = 1 << 16 // a pipe's default capacity
	spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	epollEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
	// maxEvents bounds one epoll_wait's batch.
	maxEvents = 256
)

// pump moves what it can of h until src or dst would block; at EOF with
// the pipe drained it shuts dst's write side (a FIN), once.
func (h *half) pump() error {
	for {
		if h.inPipe > 0 {
			n, err := unix.Splice(h.pipe[0], nil, h.dst, nil, h.inPipe, spliceFlags)
			if err == unix.EAGAIN {
				return nil
			}
			if err != nil {
				return err
			}
			h.inPipe -= int(n)
			continue
		}
		if h.eof {
			if !h.shut {
				h.shut = true
				if err := unix.Shutdown(h.dst, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
					return err
				}
			}
			return nil
		}
		n, err := unix.Splice(h.src, nil, h.pipe[1], nil, spliceChunk, spliceFlags)
		if err == unix.EAGAIN {
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			h.eof = true
			continue
		}
		h.inPipe += int(n)
	}
}

// worker is one event loop.
type worker struct {
	ep        int
	upstream  netip.Addr
	listeners map[int]uint16 // fd → port
	flows     map[int]*flow  // both sockets' fds → their flow; bound: max flows (shared count)
	count     *atomic.Int64
	max       int64
	logErr    func(error)
}

// newWorker opens the worker's epoll and a SO_REUSEPORT listener on
// listen:port for each port.
func newWorker(listen, upstream netip.Addr, ports []uint16, count *atomic.Int64, max int64, logErr func(error)) (*worker, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	w := &worker{ep: ep, upstream: upstream, listeners: map[int]uint16{}, flows: map[int]*flow{}, count: count, max: max, logErr: logErr}
	for _, p := range ports {
		sa, family := sockaddr(listen, p)
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return nil, err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return nil, err
		}
		if err := unix.Bind(fd, sa); err != nil {
			return nil, fmt.Errorf("bind %v:%d: %w", listen, p, err)
		}
		if err := unix.Listen(fd, 4096); err != nil {
			return nil, err
		}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return nil, err
		}
		w.listeners[fd] = p
	}
	return w, nil
}

// run is the loop; it owns its thread and never returns but on an epoll
// error.
func (w *worker) run() error {
	runtime.LockOSThread()
	evs := make([]unix.EpollEvent, maxEvents)
	for {
		n, err := unix.EpollWait(w.ep, evs, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for _, ev := range evs[:n] {
			fd := int(ev.Fd)
			if p, ok := w.listeners[fd]; ok {
				w.accept(fd, p)
				continue
			}
			if f, ok := w.flows[fd]; ok {
				w.event(f, fd)
			}
		}
	}
}

// accept takes every pending connection on a listener and starts its
// upstream connect.
func (w *worker) accept(ln int, port uint16) {
	for {
		a, _, err := unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			w.logErr(fmt.Errorf("accept: %w", err))
			return
		}
		if w.count.Add(1) > w.max {
			w.count.Add(-1)
			abort(a)
			continue
		}
		f, err := w.open(a, port)
		if err != nil {
			w.logErr(err)
			w.count.Add(-1)
			abort(a)
			continue
		}
		w.flows[f.a], w.flows[f.b] = f, f
		if !f.connecting {
			w.pumpBoth(f)
		}
	}
}

// open makes the upstream socket, its connect and the two pipes.
func (w *worker) open(a int, port uint16) (*flow, error) {
	sa, family := sockaddr(w.upstream, port)
	b, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := &flow{a: a, b: b}
	var p1, p2 [2]int
	err = errors.Join(unix.Pipe2(p1[:], unix.O_NONBLOCK|unix.O_CLOEXEC), unix.Pipe2(p2[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	if err != nil {
		unix.Close(b)
		for _, fd := range []int{p1[0], p1[1], p2[0], p2[1]} {
			if fd > 0 {
				unix.Close(fd)
			}
		}
		return nil, fmt.Errorf("pipe: %w", err)
	}
	f.ab = half{src: a, dst: b, pipe: p1}
	f.ba = half{src: b, dst: a, pipe: p2}
	for _, fd := range []int{a, b} {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // as Go's net does by default
	}
	switch err := unix.Connect(b, sa); err {
	case nil:
	case unix.EINPROGRESS:
		f.connecting = true
	default:
		f.close(false)
		return nil, fmt.Errorf("connect %v:%d: %w", w.upstream, port, err)
	}
	for _, fd := range []int{a, b} {
		if err := unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: epollEvents, Fd: int32(fd)}); err != nil {
			f.close(false)
			return nil, fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	return f, nil
}

// event handles readiness on one of f's sockets.
func (w *worker) event(f *flow, fd int) {
	if f.connecting {
		if fd != f.b {
			return // the pod's bytes wait in its socket until upstream is up
		}
		soerr, err := unix.GetsockoptInt(f.b, unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soerr == 0 {
			// Still connecting (an event without completion) or done:
			// a connected socket has a peer.
			if _, perr := unix.Getpeername(f.b); perr != nil {
				return
			}
			f.connecting = false
		} else {
			w.finish(f, true) // refused or unreachable: the pod gets an RST
			return
		}
	}
	w.pumpBoth(f)
}

// pumpBoth runs both directions; an error on either aborts the flow, and
// the flow ends when both directions have been shut.
func (w *worker) pumpBoth(f *flow) {
	if err := errors.Join(f.ab.pump(), f.ba.pump()); err != nil {
		w.finish(f, true)
		return
	}
	if f.ab.shut && f.ba.shut {
		w.finish(f, false)
	}
}

// finish closes f (abortively: an RST each way) and forgets it.
func (w *worker) finish(f *flow, rst bool) {
	delete(w.flows, f.a)
	delete(w.flows, f.b)
	w.count.Add(-1)
	f.close(rst)
}

// close closes every fd of f (closing removes them from the epoll set).
func (f *flow) close(rst bool) {
	for _, fd := range []int{f.a, f.b} {
		if rst {
			abort(fd)
		} else {
			unix.Close(fd)
		}
	}
	for _, fd := range []int{f.ab.pipe[0], f.ab.pipe[1], f.ba.pipe[0], f.ba.pipe[1]} {
		if fd > 0 {
			unix.Close(fd)
		}
	}
}

// abort closes a socket with an RST (SO_LINGER 0).
func abort(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(fd)
}

// runEpoll starts the workers; it returns once every listener is open,
// and reports a worker's fatal error on fatal.
func runEpoll(listen, upstream netip.Addr, ports []uint16, workers int, count *atomic.Int64, max int64, fatal chan<- error) error {
	var logged atomic.Int64
	logErr := func(err error) {
		if logged.Add(1) <= maxLoggedErrors {
			fmt.Fprintln(os.Stderr, "floorrelay:", err)
		}
	}
	for i := 0; i < workers; i++ {
		w, err := newWorker(listen, upstream, ports, count, max, logErr)
		if err != nil {
			return err
		}
		go func() { fatal <- w.run() }()
	}
	return nil
}

// sockaddr is a's socket address with port and its family: AF_INET for
// an IPv4 address, AF_INET6 for an IPv6 one (the listening side and the
// upstream side each take their own, so an IPv6 pod may be relayed to an
// IPv4 server and back).
func sockaddr(a netip.Addr, port uint16) (unix.Sockaddr, int) {
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(port), Addr: a.As4()}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Port: int(port), Addr: a.As16()}, unix.AF_INET6
}
