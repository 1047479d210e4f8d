package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// dgramBufs holds maxDatagram buffers, taken only while one datagram is
// handled.
var dgramBufs = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// udpKey names an outbound UDP flow.
type udpKey struct{ pod, dst netip.AddrPort }

// udpFlow is one outbound UDP flow: a connected host socket. Without a
// Config.Dialer (or with mapDst) the socket is the engine's own (h,
// dialUDP): registered with the engine's poller, which relays its
// datagrams to the pod (ready) — no goroutine and no Go net.Conn per
// flow, as passt's udp.c keeps a socket per flow in its one epoll set. A
// Dialer's conn is read by a goroutine of its own (udpFlowReader).
// Either way the flow ends after UDPIdleTimeout without a datagram
// (idle, on the stack's clock: no runtime timer per flow).
type udpFlow struct {
	key  udpKey
	e    *Engine
	h    *hostFD // the engine's own socket, or nil
	id   uint64  // h's poller registration
	idle idle
	// ended: udpEnd ran (a flow ends once, by idle timeout, eviction,
	// abort or a failed conn).
	ended atomic.Bool
	conn  net.Conn        // a Dialer's conn, when h is nil
	raw   syscall.RawConn // conn's, nil when conn is not a kernel socket
	// sent and answered count the pod's datagrams and the host's: a
	// flow with as many answers as questions waits for nothing
	// (udpEvictLocked).
	sent, answered atomic.Uint64
	f              *flowHandle
	// quote is the pod's last datagram's header (icmperr.go).
	quote udpQuote
}

// udpTable is the outbound flow table. Bound: MaxUDPFlows (with the
// port-mapping flows), enforced by Engine.acquire.
type udpTable struct {
	mu sync.Mutex
	m  map[udpKey]*udpFlow
}

func (t *udpTable) init() { t.m = map[udpKey]*udpFlow{} }

// udpDrain is the intercept socket's data-ready callback (SetNotify):
// it relays every datagram queued, on the goroutine that queued them (a
// NIC's, at the end of its receive batch), and returns when the queue is
// empty. One drain runs at a time (serial), so a flow's datagrams leave
// in the order they came.
func (e *Engine) udpDrain() { e.udpDrains.run((*Engine).udpDrainQueue, e) }

// udpDrainQueue relays the queued datagrams until none is left (run by
// e.udpDrains only).
func (e *Engine) udpDrainQueue() {
	for {
		n, meta, err := e.udpIC.RecvMsgHeader(e.udpBuf, &e.udpHdr, udp.MsgDontWait)
		switch {
		case err == nil:
		case errors.Is(err, syscall.EAGAIN), isClosed(err):
			return
		case isErrno(err):
			continue // a pending socket error, reported once
		default:
			e.log.Warn("proxy: udp intercept read failed", "err", err)
			return
		}
		u := e.udpFlowFor(udpKey{pod: meta.From, dst: meta.To})
		if u == nil {
			continue // counted
		}
		u.idle.touch()
		u.sent.Add(1)
		u.quote.set(&e.udpHdr)
		if err := u.write(e.udpBuf[:n]); err != nil {
			e.udpHostError(u, err)
		}
	}
}

// udpFlowFor finds or opens the flow of k; nil when a limit or the dial
// refused it.
func (e *Engine) udpFlowFor(k udpKey) *udpFlow {
	e.udp.mu.Lock()
	u := e.udp.m[k]
	if u != nil {
		e.udp.mu.Unlock()
		return u
	}
	u = e.udpOpenLocked(k)
	e.udp.mu.Unlock()
	// The flow's abort (RemovePod, Close) takes e.udp.mu: it is added
	// to the flow only now, and runs here at once if the flow was
	// aborted meanwhile.
	if u != nil && u.h != nil && !u.f.add(u) {
		return nil
	}
	return u
}

// udpOpenLocked opens the flow of k (e.udp.mu held); nil when a limit or
// the dial refused it.
func (e *Engine) udpOpenLocked(k udpKey) *udpFlow {
	if !k.pod.IsValid() || !k.dst.IsValid() {
		return nil
	}
	f := e.newFlow()
	if ok, pod, podFull := e.tryAcquire(k.pod.Addr(), f, kindUDP, false); !ok {
		e.udpEvictLocked(pod, podFull)
		if !e.acquire(k.pod.Addr(), f, kindUDP) { // counts a refusal
			f.done()
			return nil
		}
	}
	u := &udpFlow{key: k, e: e, f: f}
	u.idle.init(e, u)
	var err error
	if e.cfg.Dialer == nil || e.cfg.mapDst != nil {
		err = e.udpOpenOwn(u)
	} else {
		err = e.udpOpenDialer(u)
	}
	if err != nil {
		e.log.Debug("proxy: udp flow not opened", "pod", k.pod, "dst", k.dst, "err", err)
		e.c.udpDropped.Add(1) // the datagram that opened it
		if e.noResources(err) {
			e.c.udpNoResources.Add(1)
		}
		e.release(f)
		f.done()
		return nil
	}
	if u.conn != nil && !e.adopt(f, u.conn, func() { e.udpFlowReader(u) }) {
		return nil
	}
	u.idle.arm()
	e.udp.m[k] = u
	e.c.udpFlowsOpened.Add(1)
	e.c.activeUDP.Add(1)
	return u
}

// udpOpenOwn gives u the engine's own socket: connected to the
// destination (dialUDP) and on the poller (pollDgram).
func (e *Engine) udpOpenOwn(u *udpFlow) error {
	dst := u.key.dst
	if e.cfg.mapDst != nil {
		dst = e.cfg.mapDst(dst)
	}
	h, err := dialUDP(dst)
	if err != nil {
		return err
	}
	u.h, u.id = h, e.poll.newID()
	return e.pollDgram(h, u.id, u)
}

// pollDgram readies h, a connected datagram socket of ours (a UDP flow's
// or a ping socket), for its flow r: IP_RECVERR on (the ICMP errors about
// what it sends, beyond the pending one a read reports), then registered
// with the poller as id for input only — a datagram socket is writable at
// once, and a full send buffer drops the message. On failure h is closed.
func (e *Engine) pollDgram(h *hostFD, id uint64, r pollHandler) error {
	if err := h.setRecvErr(); err != nil {
		e.log.Debug("proxy: IP_RECVERR not set; only a socket's pending error reaches the pod", "err", err)
	}
	if err := e.poll.add(id, h, r, false, true); err != nil {
		h.Close()
		return fmt.Errorf("poller: %w", err)
	}
	return nil
}

// udpOpenDialer gives u a Config.Dialer's conn (its reader is started
// by the caller, once the flow is counted).
func (e *Engine) udpOpenDialer(u *udpFlow) error {
	ctx, cancel := context.WithTimeout(u.f.ctx, e.cfg.ConnectTimeout)
	c, err := e.dial(ctx, "udp", u.key.dst.String())
	cancel()
	if err != nil {
		return err
	}
	u.conn, u.raw = c, rawConn(c)
	if err := setRecvErr(u.ctl()); err != nil {
		e.log.Debug("proxy: IP_RECVERR not set; only port unreachable reaches the pod", "err", err)
	}
	return nil
}

// ctl is the flow's kernel socket, nil when it has none (a Dialer's
// in-memory conn).
func (u *udpFlow) ctl() controller {
	switch {
	case u.h != nil:
		return u.h
	case u.raw != nil:
		return u.raw
	}
	return nil
}

// write sends the pod's datagram p to the host. On the engine's own
// socket a full send buffer drops it (UDPDropped, which also counts the
// first datagram of a flow whose socket could not be opened), as a full
// qdisc would, rather than hold up every pod's datagrams behind it; a
// closed one (the flow just ended) drops it too.
func (u *udpFlow) write(p []byte) error {
	if u.h == nil {
		_, err := u.conn.Write(p)
		return err
	}
	if !u.h.acquire() {
		return nil
	}
	defer u.h.release()
	for {
		_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(u.h.fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			u.e.c.udpDropped.Add(1)
			return nil
		}
		return e
	}
}

// ready is the engine's own socket's poller callback: every datagram it
// holds goes to the pod, from the original destination (the transparent
// side of the intercept socket); an error it reports goes to the pod as
// the ICMP error behind it (udpHostError). Edge-triggered, so it reads
// until the socket is empty.
func (u *udpFlow) ready(ev uint32) {
	if !u.h.acquire() {
		return // ended
	}
	defer u.h.release()
	e := u.e
	sawErr := readDgrams(u.h.fd, false, func(b []byte, _ netip.AddrPort) {
		u.idle.touch()
		u.answered.Add(1)
		if _, err := e.udpIC.SendFromTo(b, u.key.dst, u.key.pod); err != nil {
			e.log.Debug("proxy: udp reply to pod failed", "pod", u.key.pod, "err", err)
		}
	}, func(errno unix.Errno) { e.udpHostError(u, errno) })
	if ev&unix.EPOLLERR != 0 && !sawErr {
		e.udpHostError(u, nil) // an error queued without a pending one
	}
}

// idleEnd ends the flow after UDPIdleTimeout without a datagram either
// way (idle's owner).
func (u *udpFlow) idleEnd() {
	if u.e.udpEnd(u) {
		u.e.c.udpIdleTimeouts.Add(1)
	}
}

// abort ends a flow of the engine's own socket (flowHandle's aborter; a
// Dialer's conn is closed by the aborter adopt registers, and its reader
// ends the flow).
func (u *udpFlow) abort() { u.e.udpEnd(u) }

// udpEnd ends a flow, once, whichever way it ends (idle timeout,
// eviction, abort, a failed conn): out of the table, its host side
// closed (the engine's own socket with its timer and registration, or a
// Dialer's conn, whose reader then ends), counted out. It reports
// whether this call ended it.
func (e *Engine) udpEnd(u *udpFlow) bool {
	if u.ended.Load() {
		return false
	}
	e.udp.mu.Lock()
	defer e.udp.mu.Unlock()
	return e.udpEndLocked(u)
}

// udpEndLocked is udpEnd with e.udp.mu held.
func (e *Engine) udpEndLocked(u *udpFlow) bool {
	if u.ended.Swap(true) {
		return false
	}
	if e.udp.m[u.key] == u {
		delete(e.udp.m, u.key)
	}
	u.idle.stop()
	if u.h != nil {
		e.poll.remove(u.id)
		u.h.Close()
	} else {
		u.conn.Close()
	}
	e.release(u.f)
	u.f.done()
	e.c.activeUDP.Add(-1)
	return true
}

// A pod's limit (MaxFlowsPerPod) and the node's UDP table (MaxUDPFlows)
// count flows that are open, and a UDP flow stays open until
// UDPIdleTimeout without a datagram: every name lookup opens one (a
// resolver's socket per lookup), so a pod resolving more than
// MaxFlowsPerPod / UDPIdleTimeout names a second (68 with the defaults;
// the node 273), and then any flow at all, would be refused while the
// answered lookups waited out their timeout. At a limit, a new flow
// therefore takes the place of a flow that is no stream — all its
// datagrams within conntrack.UDPStreamAfter of its opening — of the pod
// (of any pod when the node's table is full), among udpEvictScan looked
// at: the least recently used of those that got as many datagrams from
// the host as they sent (a lookup and its answer, or the A and AAAA
// queries a resolver sends on one socket and both answers: nothing is
// pending, and a further query from the same socket opens a new flow
// that its answer comes back through), else the least recently used of
// those quiet for udpEvictQuiet (an answer that was to come is given up
// on). So a pod resolving names as fast as it can, thousands a second,
// is not refused once MaxFlowsPerPod lookups are open. This is
// conntrack's early drop for UDP (nf_conntrack_udp_packet marks a
// replied flow ASSURED, safe from early_drop, only once it is still
// active 2 s after it began; early_drop takes any other). A stream is
// never evicted, so a pod with MaxFlowsPerPod live streams is still
// refused, and counted in FlowLimitDrops.
//
// The scan stops at the udpEvictAnswered-th answered flow: a lookup rate
// that keeps the pod at its limit evicts a flow per lookup, and a scan of
// udpEvictScan flows each time cost 26 µs per lookup (BenchmarkUDPQueryAtLimit);
// the map's random order makes the least recently used of the first few
// a sample, as conntrack's early_drop looks at NF_CT_EVICTION_RANGE (8)
// entries of a bucket.
const (
	udpEvictQuiet    = time.Second
	udpEvictScan     = 1024
	udpEvictAnswered = 8
)

// udpEvictLocked closes the flow a new one may take the place of (see
// above), pod's when podFull, else any pod's; e.udp.mu is held. The
// flow ends at once (udpEndLocked); a Dialer's conn's reader finds it
// closed and ended.
func (e *Engine) udpEvictLocked(pod netip.Addr, podFull bool) bool {
	now := e.now()
	quiet, stream := e.cfg.udpQuiet.Nanoseconds(), e.cfg.udpStream.Nanoseconds()
	var victim *udpFlow
	var victimLast int64
	var victimDone bool
	n, done := 0, 0
	for _, u := range e.udp.m {
		if n++; n > udpEvictScan {
			break
		}
		if podFull && u.f.addr != pod {
			continue
		}
		last := u.idle.last.Load()
		if last-u.idle.born >= stream {
			continue
		}
		answered := u.answered.Load() >= u.sent.Load()
		if !answered && now-last < quiet {
			continue
		}
		if victim == nil || answered && !victimDone || answered == victimDone && last < victimLast {
			victim, victimLast, victimDone = u, last, answered
		}
		if answered {
			if done++; done == udpEvictAnswered {
				break
			}
		}
	}
	if victim == nil {
		return false
	}
	e.c.udpEvicted.Add(1)
	e.udpEndLocked(victim)
	return true
}

// udpFlowReader relays a Dialer's conn's datagrams back to the pod until
// the conn is closed: the flow ended (idle timeout, eviction, abort) or
// the conn failed.
func (e *Engine) udpFlowReader(u *udpFlow) {
	for {
		err := recvDatagram(u.conn, u.raw, func(p []byte) {
			u.idle.touch()
			u.answered.Add(1)
			// From the original destination to the pod (the
			// transparent side of the intercept socket).
			if _, err := e.udpIC.SendFromTo(p, u.key.dst, u.key.pod); err != nil {
				e.log.Debug("proxy: udp reply to pod failed", "pod", u.key.pod, "err", err)
			}
		})
		switch {
		case err == nil:
		case isErrno(err) && !isClosed(err):
			e.udpHostError(u, err)
		default:
			e.udpEnd(u) // ended (closed), or the conn failed
			return
		}
	}
}

// udpHostError handles an error the host socket reported: the ICMP
// errors behind it go to the pod about its own datagram (icmperr.go).
func (e *Engine) udpHostError(u *udpFlow, err error) { e.udpHostICMP(u, err) }

// recvDatagram reads one datagram from c and hands it to fn. On a kernel
// socket (raw set) it waits for readability first and takes a buffer only
// then, so an idle flow holds none; otherwise it reads into a pooled
// buffer. It returns c's error: a deadline, a socket error (an errno,
// reported once), or a close.
func recvDatagram(c net.Conn, raw syscall.RawConn, fn func(p []byte)) error {
	if raw == nil {
		bp := dgramBufs.Get().(*[]byte)
		defer dgramBufs.Put(bp)
		n, err := c.Read(*bp)
		if err == nil {
			fn((*bp)[:n])
		}
		return err
	}
	var rerr error
	err := raw.Read(func(fd uintptr) bool {
		bp := dgramBufs.Get().(*[]byte)
		defer dgramBufs.Put(bp)
		for {
			n, _, err := unix.Recvfrom(int(fd), *bp, unix.MSG_DONTWAIT)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false // wait for readability
			case err != nil:
				rerr = err
			default:
				fn((*bp)[:n])
			}
			return true
		}
	})
	if err != nil {
		return err
	}
	return rerr
}

func isErrno(err error) bool {
	var en syscall.Errno
	return errors.As(err, &en)
}

// recvfromNonblock is recvfrom(MSG_DONTWAIT) with the sender as an
// AddrPort (IPv4-mapped addresses unmapped), raw and into a rawSockaddr:
// no allocation (x/sys's Recvfrom allocates the sender's Sockaddr). The
// error is 0 or an errno.
func recvfromNonblock(fd int, p []byte) (int, netip.AddrPort, unix.Errno) {
	if len(p) == 0 {
		return 0, netip.AddrPort{}, unix.EINVAL
	}
	var sa rawSockaddr
	salen := uint32(len(sa.b))
	r, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&sa.b)), uintptr(unsafe.Pointer(&salen)))
	if errno != 0 {
		return 0, netip.AddrPort{}, errno
	}
	return int(r), sa.addrPort(), 0
}
