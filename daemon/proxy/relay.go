package proxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
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
//     free space of the stack socket's send queue (tcp.Sock.WriteFrom: the
//     tail chunk's room and fresh chunks, up to relayPodVec slices, so one
//     readv can fill the whole send buffer), which then sends it: on the
//     poller's goroutine when the host socket became readable (or on a
//     NIC's receive goroutine that busy polls and took the event first:
//     Engine.PollHost), on the NIC's goroutine when an ACK from the pod
//     freed send space (only the latter while the send buffer is full:
//     kickHostData). A full
//     send buffer leaves the host's bytes in the kernel — the host's
//     window closes — until the pod ACKs.
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
	down  *tcp.Sock // the pod's side (nil while connecting)
	downC *tcp.Conn
	up    hostConn // the host's side
	id    uint64   // the poller registration
	// onEnd runs once both directions ended; an outbound flow of
	// tcpSYN (outbound set) runs endOutbound instead, without a closure.
	onEnd    func(phase relayPhase)
	outbound bool

	// The upstream-first handshake (tcpSYN): req is the pod's SYN,
	// answered once the host connect completed; timer bounds connect
	// and handshake by ConnectTimeout (embedded: clock.InitTimer, fired
	// through relayTimer). mu guards phase and finished.
	req      *tcp.Request
	timer    clock.Timer
	mu       sync.Mutex
	phase    atomic.Uint32 // a relayPhase; changed under mu, read anywhere
	finished bool
	// downReady is set once down is: the Notify callback can come
	// before AcceptAsync's caller stored down.
	downReady atomic.Bool

	dirs  [2]serial[*relay] // each direction's pump (kick)
	state atomic.Uint32     // relay* bits

	// Scratch of the pod → host pump, from a pool while it runs (under
	// dirs[toHost].mu), so an idle relay holds none.
	scr *relayScratch
	// Scratch of the host → pod pump, from a pool while it runs (under
	// dirs[toPod].mu).
	pscr *relayPodScratch

	// Results of the host socket's system calls (hostCall).
	sendN, recvN     int
	sendErr, recvErr unix.Errno
	shutErr          error

	// outArmed: the host socket's registration includes EPOLLOUT (a
	// connected socket is registered without it until a write is
	// refused, armOut).
	outArmed atomic.Bool

	// sndFull: the last host → pod pump stopped on a full send buffer
	// (the host socket may hold more), not on an empty host socket;
	// only then do the pod's ACKs resume it (notify). hostEmpty is the
	// pump's scratch: its last readv found nothing.
	sndFull   atomic.Bool
	hostEmpty bool
	// podVec is the slices the next readv of the host → pod pump offers
	// (relayPodVecMin after a short read, doubling after each full one up
	// to relayPodVec): a trickle does not take a megabyte of fresh
	// chunks from the pool for every few bytes, a bulk stream fills the
	// whole send buffer with one readv.
	podVec int
	// hostRdHup: the host socket reported its peer's FIN, a hang-up or
	// an error (ready), so a short read is not taken as the end of what
	// it holds: the EOF or the error must still be read.
	hostRdHup atomic.Bool
}

// relayPhase is where a relay is in its life.
type relayPhase uint8

const (
	phaseConnecting relayPhase = iota // host connect in progress; the pod's SYN unanswered
	phaseAccepting                    // SYN,ACK sent; the pod's ACK awaited
	phaseRelaying                     // both sides established
)

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

// relayScratch is what one sendmsg of the pod → host pump needs.
type relayScratch struct {
	vec [relayMaxVec][]byte
	iov [relayMaxVec]unix.Iovec
	msg unix.Msghdr
}

var relayScratchPool = sync.Pool{New: func() any { return new(relayScratch) }}

// relayPodScratch is what one readv of the host → pod pump needs: the
// send queue's free space as slices, and their iovecs. relayPodVec
// slices of a GSO chunk (64 KiB) each cover tcp.DefaultSndBuf (1 MiB):
// a send buffer emptied at once (a window opened, a burst acknowledged)
// is refilled with one readv, where two slices (the tail chunk and one
// fresh) took eight — and eight rounds of the host socket's receive
// and window update.
type relayPodScratch struct {
	vec [relayPodVec][]byte
	iov [relayPodVec]unix.Iovec
}

var relayPodScratchPool = sync.Pool{New: func() any { return new(relayPodScratch) }}

const (
	relayPodVec    = 16
	relayPodVecMin = 2
)

func newRelay(e *Engine, f *flowHandle, up hostConn) *relay {
	return &relay{e: e, f: f, up: up, id: e.poll.newID()}
}

// startRelay relays between down (the stack's side) and up (the host's)
// until both directions ended, then calls onEnd. With a kernel socket for
// up it returns at once and the relay runs on events; otherwise (an
// in-memory conn a test's Dialer returned) it copies with a goroutine per
// direction and returns when done.
func (e *Engine) startRelay(f *flowHandle, down *tcp.Conn, up net.Conn, onEnd func()) {
	rc := rawConn(up)
	if rc == nil {
		splice(down, up)
		onEnd()
		return
	}
	r := newRelay(e, f, netHost{c: up, rc: rc})
	r.onEnd = func(relayPhase) { onEnd() }
	r.phase.Store(uint32(phaseRelaying))
	r.down, r.downC = down.Sock(), down
	r.downReady.Store(true)
	if !f.add(r) {
		return // aborted already: abort closed everything
	}
	r.outArmed.Store(true)
	if err := e.poll.add(r.id, r.up, r, true, false); err != nil {
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

// tcpSYN takes an intercepted SYN on the NIC's goroutine (the
// Interceptor's handler) and starts the upstream connect without a
// goroutine: a non-blocking connect whose completion the poller reports
// (connected), after which the pod gets its SYN,ACK (AcceptAsync) and,
// with its ACK, the relay. ConnectTimeout bounds connect and handshake
// together.
func (e *Engine) tcpSYN(req *tcp.Request) {
	f := &flowHandle{}
	if !e.acquire(req.Src().Addr(), f, kindTCP) {
		req.Refuse()
		return
	}
	e.c.pendingTCP.Add(1)
	f.pod, f.dst = req.Src(), req.Dst()
	dst := req.Dst()
	if e.cfg.mapDst != nil {
		dst = e.cfg.mapDst(dst)
	}
	h, err := dialAsync(dst)
	if err != nil {
		e.countDialErr(err)
		e.log.Debug("proxy: upstream connect failed", "pod", req.Src(), "dst", req.Dst(), "err", err)
		req.Refuse()
		e.c.pendingTCP.Add(-1)
		e.release(f)
		return
	}
	r := newRelay(e, f, h)
	r.req = req
	r.outbound = true
	// The stack's clock, not time.AfterFunc: a runtime timer added
	// ahead of the netpoller's sleep wakes an idle thread to re-arm it
	// (wakeNetPoller), one cross-CPU wake-up per connection; the
	// stack's timer heap wakes its goroutine only for a new earliest
	// deadline, which a 10 s timeout rarely is.
	e.st.Clock().InitTimer(&r.timer, (*relayTimer)(r))
	r.timer.Reset(e.cfg.ConnectTimeout)
	if !f.add(r) {
		return
	}
	// A connect to this host (loopback, a local address) completes in
	// connect(2) itself, its handshake run in softirq on our way out:
	// answer the pod now instead of after a round through the poller,
	// and register the socket without EPOLLOUT — writable at once, it
	// would report an event that only wakes the poller for nothing;
	// output events are armed when a write is first refused (armOut).
	// A refused connect is refused here, never registered. A connect
	// still in progress leaves the answer to the poller's event
	// (EPOLLOUT, or EPOLLERR), which a completion between this look and
	// the registration raises too (epoll_ctl polls the socket).
	cerr := connectResult(h)
	if cerr == syscall.EAGAIN || cerr == nil {
		r.outArmed.Store(cerr != nil)
		if err := e.poll.add(r.id, h, r, cerr != nil, false); err != nil {
			r.finish(true)
			return
		}
		if cerr != nil {
			return
		}
	}
	r.answer(cerr)
}

// connected runs on the poller's goroutine when the connecting socket
// reported an event: the pod's SYN is answered as the connect went —
// SYN,ACK from the destination when it is up (upstream first), an RST
// when it failed (refused, unreachable: counted as a dial error).
func (r *relay) connected() {
	if relayPhase(r.phase.Load()) != phaseConnecting {
		return // answered already (by tcpSYN itself, or an earlier event)
	}
	err := connectResult(r.up.(*hostFD))
	if err == syscall.EAGAIN {
		return // not this time
	}
	r.answer(err)
}

// answer answers the pod's SYN as the connect went (err: its outcome),
// once, whichever of tcpSYN and the poller saw it first.
func (r *relay) answer(err error) {
	r.mu.Lock()
	if r.finished || relayPhase(r.phase.Load()) != phaseConnecting {
		r.mu.Unlock()
		return
	}
	if err != nil {
		r.mu.Unlock()
		r.e.countDialErr(err)
		r.e.log.Debug("proxy: upstream connect failed", "pod", r.f.pod, "dst", r.f.dst, "err", err)
		r.finish(true) // refuses the SYN
		return
	}
	r.phase.Store(uint32(phaseAccepting))
	req := r.req
	r.req = nil // resolved by AcceptAsync: nothing left to refuse
	r.mu.Unlock()
	conn, err := req.AcceptAsync(r.notify)
	if err != nil {
		r.finish(true)
		return
	}
	conn.SetNoDelay(true)
	// Keepalive on both sockets, as every relay (keepalive.go).
	_ = conn.SetKeepAliveConfig(r.e.keepAlive)
	if h, ok := r.up.(*hostFD); ok {
		if err := h.SetKeepAliveConfig(r.e.hostKeepAlive); err != nil {
			r.e.log.Debug("proxy: keepalive not set", "dst", r.f.dst, "err", err)
		}
	}
	r.down, r.downC = conn.Sock(), conn
	r.downReady.Store(true)
	if h, ok := r.up.(*hostFD); ok {
		r.f.setRelay(RelayOutbound, conn, h)
	}
	// The pod's ACK may have come already: look now.
	r.established()
	r.kick(toHost)
	r.kick(toPod)
}

// established moves an accepting relay to relaying once the pod's
// handshake completed.
func (r *relay) established() {
	if st := r.down.State(); st == tcp.SynReceived || st == tcp.Closed {
		return // not yet, or failed: the pumps see the error
	}
	r.mu.Lock()
	if r.finished || relayPhase(r.phase.Load()) != phaseAccepting {
		r.mu.Unlock()
		return
	}
	r.phase.Store(uint32(phaseRelaying))
	r.timer.Stop()
	r.mu.Unlock()
	r.e.c.pendingTCP.Add(-1)
	r.e.c.tcpAccepted.Add(1)
	r.e.c.activeTCP.Add(1)
}

// relayTimer is the relay as its timer's clock.Handler.
type relayTimer relay

func (rt *relayTimer) Fire(*clock.Timer) { (*relay)(rt).timeout() }

// timeout is ConnectTimeout passing before the relay got to relaying:
// the upstream connect timed out (the pod gets an RST) or the pod did
// not complete its handshake (its half-open connection is reset).
func (r *relay) timeout() {
	r.mu.Lock()
	ph, fin := relayPhase(r.phase.Load()), r.finished
	r.mu.Unlock()
	if fin || ph == phaseRelaying {
		return
	}
	if ph == phaseConnecting {
		r.e.c.tcpTimeouts.Add(1)
	}
	r.e.log.Debug("proxy: connect or pod handshake timed out", "pod", r.f.pod, "dst", r.f.dst)
	r.finish(true)
}

// notify is the stack socket's event callback.
func (r *relay) notify(ev tcp.Event) {
	if !r.downReady.Load() {
		return // connected kicks both directions once it has down
	}
	if relayPhase(r.phase.Load()) == phaseAccepting {
		r.established()
	}
	if ev&tcp.EventReadable != 0 {
		r.kick(toHost)
	}
	if ev&tcp.EventWritable != 0 && r.sndFull.Load() {
		// Send space for bytes the host socket holds. With the host
		// socket empty the ACK needs nothing (no readv to find it
		// empty again): EPOLLIN brings the next bytes.
		r.kick(toPod)
	}
}

// ready is the host socket's poller callback.
func (r *relay) ready(ev uint32) {
	// Recorded first, even while connecting: the edge-triggered event
	// that completes a connect can carry the host's data and FIN at
	// once, and is not reported again.
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.hostRdHup.Store(true)
	}
	if !r.downReady.Load() {
		r.connected()
		return
	}
	switch {
	case ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0:
		r.kick(toPod)
	case ev&unix.EPOLLIN != 0:
		r.kickHostData()
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.kick(toHost)
	}
}

// kick runs direction d's pump on this goroutine, or, when another
// goroutine runs it, makes that one run it again.
func (r *relay) kick(d int) {
	if d == toHost {
		r.dirs[toHost].run((*relay).pumpToHost, r)
	} else {
		r.dirs[toPod].run((*relay).pumpToPod, r)
	}
}

// kickHostData is kick(toPod) for new bytes in the host socket, except
// while the send buffer is full (sndFull): then the pod's next ACK runs
// the pump (notify), so the poller's goroutine neither reads in parallel
// with the NIC's nor takes the pump's lock from it — in a bulk transfer
// the host socket reports new bytes for every segment it receives, while
// only the pod's ACKs make room for them. again is set first, so a pump
// that is just clearing sndFull (a short read drained the socket before
// these bytes came) sees it before it lets go and reads once more.
func (r *relay) kickHostData() {
	dir := &r.dirs[toPod]
	dir.again.Store(true)
	if r.sndFull.Load() {
		return
	}
	r.kick(toPod)
}

// pumpToHost moves the pod's bytes to the host until the queue is empty
// or the host socket full.
func (r *relay) pumpToHost() {
	r.scr = relayScratchPool.Get().(*relayScratch)
	defer func() {
		relayScratchPool.Put(r.scr)
		r.scr = nil
	}()
	for r.state.Load()&(relayToHostDone|relayFinished) == 0 {
		_, err := r.down.ReadTo(r.scr.vec[:], r)
		switch {
		case err == nil:
		case err == syscall.EAGAIN:
			return
		case err == io.EOF:
			// RFC 9293 §3.6: the pod's FIN becomes ours to the host.
			if serr := r.shutdownHost(); serr != nil {
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

// shutdownHost sends the host our FIN (shutdown(SHUT_WR)).
func (r *relay) shutdownHost() error {
	if err := r.hostCall(hostShut); err != nil {
		return err
	}
	return r.shutErr
}

// pumpToPod moves the host's bytes to the pod until the host socket is
// empty or the send buffer full.
func (r *relay) pumpToPod() {
	r.pscr = relayPodScratchPool.Get().(*relayPodScratch)
	defer func() {
		relayPodScratchPool.Put(r.pscr)
		r.pscr = nil
	}()
	for r.state.Load()&(relayToPodDone|relayFinished) == 0 {
		r.hostEmpty = false
		k := max(r.podVec, relayPodVecMin)
		_, err := r.down.WriteFrom(r.pscr.vec[:k], r)
		if r.hostEmpty {
			r.podVec = relayPodVecMin
		} else if err == nil {
			r.podVec = min(2*k, relayPodVec)
		}
		switch {
		case err == nil:
			if r.hostEmpty {
				// A short read took all the host socket held: the next
				// bytes come with EPOLLIN (edge-triggered, after this
				// read), so no readv to find it empty.
				r.sndFull.Store(false)
				return
			}
		case err == syscall.EAGAIN:
			// A full send buffer (or a handshake still completing)
			// waits for the pod's ACK; an empty host socket for EPOLLIN.
			r.sndFull.Store(!r.hostEmpty)
			if !r.hostEmpty && r.down.SendSpace() > 0 {
				continue // an ACK freed space before sndFull was set
			}
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

// WriteVec is ReadTo's callback (tcp.VecWriter): one sendmsg of the
// queued slices to the host socket.
func (r *relay) WriteVec(v [][]byte) (int, error) {
	scr := r.scr
	k := 0
	for _, b := range v {
		if len(b) == 0 {
			continue
		}
		scr.iov[k].Base = &b[0]
		scr.iov[k].SetLen(len(b))
		k++
	}
	if k == 0 {
		return 0, nil
	}
	scr.msg.Iov = &scr.iov[0]
	scr.msg.SetIovlen(k)
	err := r.hostCall(hostSend)
	clear(scr.iov[:k]) // do not keep the SKBs reachable
	scr.msg.Iov = nil
	if err != nil {
		return 0, err
	}
	if r.sendErr == unix.EAGAIN && !r.outArmed.Load() {
		r.armOut()
	}
	if r.sendErr != 0 {
		return 0, r.sendErr
	}
	return r.sendN, nil
}

// armOut asks the poller for the host socket's EPOLLOUT from now on: a
// write was refused (EAGAIN), and the pump waits for the space. Once per
// relay; a registration whose fd is closing (an abort) needs none.
func (r *relay) armOut() {
	if r.outArmed.CompareAndSwap(false, true) {
		_ = r.e.poll.armOut(r.id, r.up)
	}
}

// hostOp is a system call a pump makes on the host socket.
type hostOp uint8

const (
	hostSend hostOp = iota // sendmsg of scr (WriteVec)
	hostRecv               // readv into pscr (ReadVec)
	hostShut               // shutdown(SHUT_WR): our FIN (shutdownHost)
)

// hostCall makes op's call with the host socket's fd, kept open
// meanwhile. A host socket of ours is held without its Control and the
// call made directly, so a pump allocates nothing; another kernel socket
// (a port mapping's client, a nameserver's connection) goes through its
// RawConn, with a closure made for the call.
func (r *relay) hostCall(op hostOp) error {
	if h, ok := r.up.(*hostFD); ok {
		if !h.acquire() {
			return net.ErrClosed
		}
		r.hostSyscall(op, uintptr(h.fd))
		h.release()
		return nil
	}
	return r.up.Control(func(fd uintptr) { r.hostSyscall(op, fd) })
}

// hostSyscall is hostCall's call; its result is left in the relay.
func (r *relay) hostSyscall(op hostOp, fd uintptr) {
	switch op {
	case hostSend:
		r.sendmsg(fd)
	case hostRecv:
		r.readv(fd)
	case hostShut:
		r.shutErr = rawShutdown(int(fd), unix.SHUT_WR)
	}
}

// sendmsg and readv are raw system calls (the goroutine keeps its P):
// both are non-blocking, and a sendmsg over loopback runs the host's TCP
// receive inside the call, long enough for Go's sysmon to hand the P
// off and cost a thread wake-up (afpacket's recvmmsg/sendmmsg say more).
func (r *relay) sendmsg(fd uintptr) {
	for {
		// MSG_NOSIGNAL: a host that reset gives EPIPE, not SIGPIPE.
		n, _, e := unix.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&r.scr.msg)), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		if e == unix.EINTR {
			continue
		}
		r.sendN, r.sendErr = int(n), e
		return
	}
}

// ReadVec is WriteFrom's callback (tcp.VecReader): one readv from the
// host socket into the send queue's free space (the tail chunk's room,
// then fresh chunks); 0 bytes is the host's EOF.
func (r *relay) ReadVec(v [][]byte) (int, error) {
	iov := &r.pscr.iov
	want := 0
	for i, b := range v {
		iov[i].Base = &b[0]
		iov[i].SetLen(len(b))
		want += len(b)
	}
	if want == 0 {
		return 0, syscall.EAGAIN
	}
	r.recvN = len(v)
	err := r.hostCall(hostRecv)
	clear(iov[:len(v)])
	switch {
	case err != nil:
		return 0, err
	case r.recvErr == unix.EAGAIN:
		r.hostEmpty = true
		return 0, r.recvErr
	case r.recvErr != 0:
		return 0, r.recvErr
	case r.recvN == 0:
		return 0, io.EOF
	}
	if r.recvN < want && !r.hostRdHup.Load() {
		r.hostEmpty = true // a short read drained the socket
	}
	return r.recvN, nil
}

func (r *relay) readv(fd uintptr) {
	k := r.recvN
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&r.pscr.iov[0])), uintptr(k))
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
// gracefully after both FINs went through, else abortively (RST; a pod
// whose SYN is still unanswered gets the RST of a refused connect) — and
// counts the flow out.
func (r *relay) finish(abort bool) {
	r.mu.Lock()
	if r.finished {
		r.mu.Unlock()
		return
	}
	r.finished = true
	ph := relayPhase(r.phase.Load())
	r.timer.Stop()
	req := r.req
	r.mu.Unlock()
	r.state.Or(relayFinished)
	if req != nil {
		req.Refuse() // the pod's SYN is still unanswered
	}
	r.e.poll.remove(r.id)
	if r.downReady.Load() {
		r.down.SetNotify(nil)
	}
	if abort {
		if r.downC != nil && r.downReady.Load() {
			abortConn(r.downC)
		}
		r.up.Abort()
	} else {
		r.downC.Close()
		r.up.Close()
	}
	if r.outbound {
		r.endOutbound(ph)
	} else {
		r.onEnd(ph)
	}
}

// endOutbound is an outbound flow's end (tcpSYN): the engine's counters
// and the pod's flow count.
func (r *relay) endOutbound(ph relayPhase) {
	if ph == phaseRelaying {
		r.e.c.activeTCP.Add(-1)
	} else {
		r.e.c.pendingTCP.Add(-1)
	}
	r.e.release(r.f)
}
