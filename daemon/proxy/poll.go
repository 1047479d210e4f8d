package proxy

import (
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// poller is the engine's readiness loop for host sockets, the epoll set
// of passt's main loop: one epoll instance, itself registered with Go's
// netpoller (an epoll fd is pollable: it is readable while events are
// ready), and one goroutine that waits on it and hands each event to the
// flow it names. Flows register edge-triggered interest, so an event is
// one transition and costs one call; what the flow does with it (a relay's
// pump) runs on the poller's goroutine and must not block. There is no
// goroutine per flow: an idle relay is a struct and two sockets.
//
// Bound: one registration per relayed flow (the engine's flow limits);
// pollBatch events per wait.
type poller struct {
	f      *os.File
	rc     syscall.RawConn
	waitFn func(fd uintptr) bool // p.wait, bound once

	mu    sync.Mutex
	next  uint64
	flows map[uint64]pollHandler // by registration ID

	evs [pollBatch]unix.EpollEvent // the goroutine's

	// poll's: one caller at a time (TryLock), its own events.
	pollMu  sync.Mutex
	pollEvs [pollBatch]unix.EpollEvent
	pollN   int
	pollFn  func(epfd uintptr) // p.doPoll, bound once

	// ctl's arguments and result for ctlFn (bound once, so a
	// registration allocates no closure), under ctlMu.
	ctlMu  sync.Mutex
	ctlOp  int
	ctlFD  int
	ctlEv  unix.EpollEvent
	ctlErr error
	ctlRaw bool
	ctlFn  func(epfd uintptr)
}

// pollBatch is the most events one wait returns.
const pollBatch = 128

// controller runs a function with an fd it keeps open meanwhile
// (syscall.RawConn.Control, hostConn).
type controller interface {
	Control(f func(fd uintptr)) error
}

// pollHandler receives a registered fd's events (EPOLL* bits) on the
// poller's goroutine.
type pollHandler interface{ ready(events uint32) }

func newPoller() (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("proxy: epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("proxy: epoll fd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "proxy-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("proxy: epoll fd: %w", err)
	}
	p := &poller{f: f, rc: rc, flows: map[uint64]pollHandler{}}
	p.waitFn = p.wait
	p.ctlFn = p.doCtl
	p.pollFn = p.doPoll
	return p, nil
}

// newID returns a registration ID for add.
func (p *poller) newID() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	return p.next
}

// pollEvents is a relay's full interest: input, output, the peer's FIN,
// edge-triggered (hang-up and error come unasked).
const pollEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// pollEvent is the registration of id for events: the 64-bit id rides
// in the event's data (Fd and Pad), where dispatch finds it.
func pollEvent(id uint64, events uint32) unix.EpollEvent {
	return unix.EpollEvent{Events: events, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
}

// add registers, as id (from newID), the fd behind rc (read through its
// owner's RawConn, which keeps it open meanwhile) for edge-triggered
// input, hang-up and error events and, with out, output events,
// delivered to h. A socket registered without out (a connected one whose
// writes have not been refused yet) gets them with armOut. raw makes the
// epoll_ctl a raw system call (doCtl says when).
func (p *poller) add(id uint64, rc controller, h pollHandler, out, raw bool) error {
	p.mu.Lock()
	p.flows[id] = h
	p.mu.Unlock()
	var events uint32 = pollEvents
	if !out {
		events &^= unix.EPOLLOUT
	}
	err := p.ctlConn(unix.EPOLL_CTL_ADD, rc, pollEvent(id, events), raw)
	if err != nil {
		p.mu.Lock()
		delete(p.flows, id)
		p.mu.Unlock()
		return err
	}
	return nil
}

// armOut adds output events to registration id (added without out).
// The kernel polls the socket as it modifies the registration
// (ep_modify), so a socket writable by then reports EPOLLOUT at once: a
// write refused just before is never left without its event.
func (p *poller) armOut(id uint64, rc controller) error {
	return p.ctlConn(unix.EPOLL_CTL_MOD, rc, pollEvent(id, pollEvents), false)
}

// ctlConn is ctl on the fd behind rc, kept open meanwhile. A host
// socket of ours (hostFD) is held without a closure: nothing allocated.
func (p *poller) ctlConn(op int, rc controller, ev unix.EpollEvent, raw bool) error {
	if h, ok := rc.(*hostFD); ok {
		if !h.acquire() {
			return net.ErrClosed
		}
		err := p.ctl(op, h.fd, ev, raw)
		h.release()
		return err
	}
	var err error
	if cerr := rc.Control(func(fd uintptr) { err = p.ctl(op, int(fd), ev, raw) }); cerr != nil {
		return cerr
	}
	return err
}

// remove forgets registration id; events already fetched for it, and
// any until its fd is closed, find no handler and are dropped. The fd
// leaves the epoll set when it is closed (the caller closes it next, and
// holds its only descriptor), so no EPOLL_CTL_DEL is spent on it.
func (p *poller) remove(id uint64) {
	p.mu.Lock()
	delete(p.flows, id)
	p.mu.Unlock()
}

func (p *poller) ctl(op, fd int, ev unix.EpollEvent, raw bool) error {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	p.ctlOp, p.ctlFD, p.ctlEv, p.ctlRaw, p.ctlErr = op, fd, ev, raw, nil
	if err := p.rc.Control(p.ctlFn); err != nil {
		return err
	}
	return p.ctlErr
}

// doCtl is ctl's call on the epoll fd (ctlFn), ctlMu held. With ctlRaw
// it is a raw system call (the P kept; epoll_ctl never sleeps): a
// syscall.Syscall wakes Go's sysmon whenever it parked with every P
// idle, as it does between two lookups, and sysmon then naps 20 µs at a
// time until it parks again — 13% of the daemon's CPU in a profile of
// make bench's UDP query run, where each new flow made three such calls.
// A UDP flow's registration is raw (with its IP_RECVERR, hostFD.setRecvErr:
// UDP queries/s +20%, CPU per query -34% in an A/B of 5 rounds). A TCP
// relay's is not: the same A/B gave connections/s -7% (2560 against
// 2740/s) and CPU per connection +5% with both raw. With only the UDP
// calls raw, a second A/B still gave connections/s -3% and CPU per
// connection +7% though the TCP path is then the baseline's: what the
// faster UDP run before it leaves behind (conntrack entries), or this
// machine's noise; left as measured. Those A/Bs ran the variants in a
// fixed order, which gave one slot up to 10% more connections/s (make
// bench's roundOrder now alternates it); the ninth session measured the
// TCP registration raw again in alternating order (6 rounds): connections/s
// 2000 against 2236 (1840-2558 against 1801-2627 over the rounds), CPU
// per connection 290 against 265 µs. So it stays a syscall.Syscall.
func (p *poller) doCtl(epfd uintptr) {
	if !p.ctlRaw {
		p.ctlErr = unix.EpollCtl(int(epfd), p.ctlOp, p.ctlFD, &p.ctlEv)
		return
	}
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, epfd, uintptr(p.ctlOp), uintptr(p.ctlFD), uintptr(unsafe.Pointer(&p.ctlEv)), 0, 0)
	if e != 0 {
		p.ctlErr = e
	}
}

// wait runs inside rc.Read: it takes the ready events without blocking
// and dispatches them there; false asks Go's netpoller to park the
// goroutine until the epoll fd is readable again. It returns false after
// a batch shorter than pollBatch without a second epoll_wait to find the
// set empty: the fd is registered edge-triggered with the netpoller, and
// an event queued in our set after this epoll_wait makes it readable anew,
// which rc.Read's wait sees (the notification is kept for it from the
// start of rc.Read), so it cannot be missed. That saves an empty
// epoll_wait per wake-up: one per request/response round trip.
func (p *poller) wait(fd uintptr) bool {
	for {
		// Raw (the P kept): a zero timeout never sleeps.
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&p.evs[0])), pollBatch, 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return true // rc.Read returns; run's next call finds the error
		}
		p.dispatch(p.evs[:n])
		if n < pollBatch {
			return false
		}
	}
}

// poll dispatches, on the caller's goroutine and without waiting, the
// events that are ready now: for a goroutine that polls anyway (a link's
// busy poll), which then handles a relay's host side with no wake-up of
// the poller's goroutine. Each event goes to one of the two, as epoll
// hands an edge to one waiter. One caller polls at a time; the others
// return 0 at once. It returns how many events it dispatched.
func (p *poller) poll() int {
	if !p.pollMu.TryLock() {
		return 0
	}
	defer p.pollMu.Unlock()
	p.pollN = 0
	if p.rc.Control(p.pollFn) != nil {
		return 0 // closed
	}
	return p.pollN
}

// doPoll is poll's epoll_pwait, with a zero timeout, pollMu held.
func (p *poller) doPoll(epfd uintptr) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, epfd, uintptr(unsafe.Pointer(&p.pollEvs[0])), pollBatch, 0, 0, 0)
	if e != 0 {
		return
	}
	p.pollN = int(n)
	p.dispatch(p.pollEvs[:n])
}

// dispatch hands events to their flows.
func (p *poller) dispatch(evs []unix.EpollEvent) {
	for i := range evs {
		ev := &evs[i]
		id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
		p.mu.Lock()
		h := p.flows[id]
		p.mu.Unlock()
		if h != nil {
			h.ready(ev.Events)
		}
	}
}

// run dispatches events until close.
func (p *poller) run() {
	for {
		if err := p.rc.Read(p.waitFn); err != nil {
			return
		}
	}
}

// close ends run.
func (p *poller) close() error { return p.f.Close() }
