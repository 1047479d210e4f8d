package proxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// relay is one relayed TCP flow, event-driven: no goroutine and no buffer
// of its own. The pod's side is a stack socket whose Notify callback says
// when it became readable or writable; the host's side is a kernel socket
// registered, edge-triggered, with the engine's poller. An event runs the
// pump of the direction it concerns, on the goroutine that saw it:
//
//   - pod → host: the stack socket's receive queue is written to the host
//     socket with one sendmsg(2) gathering the received SKBs' payloads
//     in place (tcp.Sock.ReadTo), on the NIC's receive goroutine at the
//     end of the batch that queued them, before the batch's ACK, which
//     then carries the window the write left open. A full host socket
//     (EAGAIN) leaves the rest queued — the pod's window closes — until
//     EPOLLOUT.
//   - host → pod: the host socket is read with readv(2) straight into the
//     free space of the stack socket's send ring (tcp.Sock.WriteFrom),
//     which then sends it: on the poller's goroutine when the host socket
//     became readable, on the NIC's goroutine when an ACK from the pod
//     freed send space. A full send buffer leaves the host's bytes in the
//     kernel — the host's window closes — until the pod ACKs.
//
// Each direction's pump runs on one goroutine at a time: kick takes the
// direction's lock with TryLock, and a goroutine that finds it held only
// sets again, which the holder sees before it lets go, so no event is
// lost and no caller ever waits. A pump loops until its source is empty
// or its sink full (EAGAIN), so every byte either moved or will be moved
// by the event that ends the wait. RFC 9293 §3.6: EOF on one side becomes
// a FIN on the other (half-close, the other direction keeps flowing);
// when both directions ended both sockets are closed. A reset or error on
// either side resets both (linger 0), once.
type relay struct {
	e     *Engine
	f     *flowHandle
	down  *tcp.Sock // the pod's side
	downC *tcp.Conn
	up    net.Conn // the host's side
	rc    syscall.RawConn
	id    uint64 // the poller registration
	onEnd func() // counts the flow out, once

	dirs  [2]relayDir
	state atomic.Uint32 // relay* bits

	// Scratch of the pod → host pump (under dirs[toHost].mu).
	hostVec [relayMaxVec][]byte
	hostIov [relayMaxVec]unix.Iovec
	hostMsg unix.Msghdr
	// Scratch of the host → pod pump (under dirs[toPod].mu).
	podIov [2]unix.Iovec

	// Results of the syscalls run inside rc.Control.
	sendN, recvN     int
	sendErr, recvErr unix.Errno

	// Bound once, so a pump allocates nothing.
	readToFn    func([][]byte) (int, error)
	writeFromFn func(a, b []byte) (int, error)
	sendFn      func(fd uintptr)
	recvFn      func(fd uintptr)
}

// relayMaxVec bounds the slices one sendmsg gathers: a receive batch of
// GSO super-segments (16) and then some.
const relayMaxVec = 32

// Directions.
const (
	toHost = iota
	toPod
)

// State bits.
const (
	relayToHostDone uint32 = 1 << iota // the pod's FIN went on to the host
	relayToPodDone                     // the host's EOF went on to the pod
	relayFinished                      // sockets closed, flow counted out
)

type relayDir struct {
	mu    sync.Mutex
	again atomic.Bool
}

// startRelay relays between down (the stack's side) and up (the host's)
// until both directions ended, then calls onEnd. With a kernel socket for
// up and the poller running it returns at once and the relay runs on
// events; otherwise (an in-memory conn a test's Dialer returned) it
// copies with a goroutine per direction and returns when done.
func (e *Engine) startRelay(f *flowHandle, down *tcp.Conn, up net.Conn, onEnd func()) {
	rc := rawConn(up)
	if rc == nil || e.poll == nil {
		splice(f, down, up)
		onEnd()
		return
	}
	r := &relay{e: e, f: f, down: down.Sock(), downC: down, up: up, rc: rc, onEnd: onEnd, id: e.poll.newID()}
	r.readToFn, r.writeFromFn = r.writeHost, r.readHost
	r.sendFn, r.recvFn = r.sendmsg, r.readv
	if !f.add(r.abort) {
		return // aborted already: abort closed everything
	}
	if err := e.poll.add(r.id, rc, r); err != nil {
		// Closed under us (an abort), or the poller is gone.
		r.finish(true)
		return
	}
	r.down.SetNotify(r.notify)
	if r.state.Load()&relayFinished != 0 {
		r.down.SetNotify(nil) // an abort came in between
		return
	}
	// Events before the registrations were not recorded: look now.
	r.kick(toHost)
	r.kick(toPod)
}

// notify is the stack socket's event callback.
func (r *relay) notify(ev tcp.Event) {
	if ev&tcp.EventReadable != 0 {
		r.kick(toHost)
	}
	if ev&tcp.EventWritable != 0 {
		r.kick(toPod)
	}
}

// ready is the host socket's poller callback.
func (r *relay) ready(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.kick(toPod)
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.kick(toHost)
	}
}

// kick runs direction d's pump on this goroutine, or, when another
// goroutine runs it, makes that one run it again.
func (r *relay) kick(d int) {
	dir := &r.dirs[d]
	dir.again.Store(true)
	for dir.mu.TryLock() {
		for dir.again.Swap(false) {
			if d == toHost {
				r.pumpToHost()
			} else {
				r.pumpToPod()
			}
		}
		dir.mu.Unlock()
		if !dir.again.Load() {
			return
		}
	}
}

// pumpToHost moves the pod's bytes to the host until the queue is empty
// or the host socket full.
func (r *relay) pumpToHost() {
	for r.state.Load()&(relayToHostDone|relayFinished) == 0 {
		n, err := r.down.ReadTo(r.hostVec[:], r.readToFn)
		if n > 0 {
			r.f.toHost.Add(uint64(n))
		}
		switch {
		case err == nil:
		case err == syscall.EAGAIN:
			return
		case err == io.EOF:
			// RFC 9293 §3.6: the pod's FIN becomes ours to the host.
			var serr error
			if cerr := r.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); cerr != nil {
				serr = cerr
			}
			if serr != nil {
				r.finish(true)
				return
			}
			r.dirDone(relayToHostDone)
			return
		default:
			r.finish(true)
			return
		}
	}
}

// pumpToPod moves the host's bytes to the pod until the host socket is
// empty or the send buffer full.
func (r *relay) pumpToPod() {
	for r.state.Load()&(relayToPodDone|relayFinished) == 0 {
		n, err := r.down.WriteFrom(r.writeFromFn)
		if n > 0 {
			r.f.toPod.Add(uint64(n))
		}
		switch {
		case err == nil:
		case err == syscall.EAGAIN:
			return
		case err == io.EOF:
			// The host's FIN becomes ours to the pod.
			if r.down.Shutdown(false, true) != nil {
				r.finish(true)
				return
			}
			r.dirDone(relayToPodDone)
			return
		default:
			r.finish(true)
			return
		}
	}
}

// writeHost is ReadTo's callback: one sendmsg of the queued slices.
func (r *relay) writeHost(v [][]byte) (int, error) {
	k := 0
	for _, b := range v {
		if len(b) == 0 {
			continue
		}
		r.hostIov[k].Base = &b[0]
		r.hostIov[k].SetLen(len(b))
		k++
	}
	if k == 0 {
		return 0, nil
	}
	r.hostMsg.Iov = &r.hostIov[0]
	r.hostMsg.SetIovlen(k)
	err := r.rc.Control(r.sendFn)
	clear(r.hostIov[:k]) // do not keep the SKBs reachable
	r.hostMsg.Iov = nil
	if err != nil {
		return 0, err
	}
	if r.sendErr != 0 {
		return 0, r.sendErr
	}
	return r.sendN, nil
}

func (r *relay) sendmsg(fd uintptr) {
	for {
		// MSG_NOSIGNAL: a host that reset gives EPIPE, not SIGPIPE.
		n, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&r.hostMsg)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		if e == unix.EINTR {
			continue
		}
		r.sendN, r.sendErr = int(n), e
		return
	}
}

// readHost is WriteFrom's callback: one readv into the send ring's free
// space (a, then b where the ring wraps); 0 bytes is the host's EOF.
func (r *relay) readHost(a, b []byte) (int, error) {
	if len(a) == 0 {
		return 0, syscall.EAGAIN
	}
	r.podIov[0].Base = &a[0]
	r.podIov[0].SetLen(len(a))
	k := 1
	if len(b) > 0 {
		r.podIov[1].Base = &b[0]
		r.podIov[1].SetLen(len(b))
		k = 2
	}
	r.recvN = k
	err := r.rc.Control(r.recvFn)
	clear(r.podIov[:])
	switch {
	case err != nil:
		return 0, err
	case r.recvErr != 0:
		return 0, r.recvErr
	case r.recvN == 0:
		return 0, io.EOF
	}
	return r.recvN, nil
}

func (r *relay) readv(fd uintptr) {
	k := r.recvN
	for {
		n, _, e := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&r.podIov[0])), uintptr(k))
		if e == unix.EINTR {
			continue
		}
		r.recvN, r.recvErr = int(n), e
		return
	}
}

// dirDone records that one direction ended; the second ends the relay.
func (r *relay) dirDone(bit uint32) {
	for {
		s := r.state.Load()
		if s&bit != 0 {
			return
		}
		if r.state.CompareAndSwap(s, s|bit) {
			if (s|bit)&(relayToHostDone|relayToPodDone) == relayToHostDone|relayToPodDone {
				r.finish(false)
			}
			return
		}
	}
}

// abort is the flow's closer: reset both sides.
func (r *relay) abort() { r.finish(true) }

// finish ends the relay once: it stops the events, closes both sockets —
// gracefully after both FINs went through, else abortively (RST) — and
// counts the flow out.
func (r *relay) finish(abort bool) {
	for {
		s := r.state.Load()
		if s&relayFinished != 0 {
			return
		}
		if r.state.CompareAndSwap(s, s|relayFinished) {
			break
		}
	}
	r.down.SetNotify(nil)
	r.e.poll.remove(r.id, r.rc)
	if abort {
		abortConn(r.downC)
		abortConn(r.up)
	} else {
		r.downC.Close()
		r.up.Close()
	}
	r.onEnd()
}
