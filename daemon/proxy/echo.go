package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// echoQueueLen bounds the echo requests waiting for the dispatcher; a
// request past it is dropped (EchoDropped), as a full socket queue would.
const echoQueueLen = 1024

// echoKey names an echo flow: the kernel gives each ping socket an
// identifier of its own, so a flow is per pod identifier.
type echoKey struct {
	pod, dst netip.Addr
	id       uint16
}

type echoReq struct {
	key     echoKey
	seq     uint16
	payload []byte
}

// echoFlow is one ping socket connected to the destination.
type echoFlow struct {
	key  echoKey
	conn net.Conn
	raw  syscall.RawConn
	last atomic.Int64 // wall-clock nanoseconds of the last request or reply
	f    *flowHandle
}

func (ef *echoFlow) touch() { ef.last.Store(time.Now().UnixNano()) }

// echoTable is the echo relay: the queue from the stack's receive
// goroutine and the flows. Bound: the flows count against MaxFlowsPerPod.
type echoTable struct {
	e *Engine
	q chan echoReq // bound: echoQueueLen

	// mu guards m; held across a ping socket's creation and send.
	mu sync.Mutex
	m  map[echoKey]*echoFlow

	// openPing opens a ping socket connected to dst; tests replace it.
	openPing func(dst netip.Addr) (net.Conn, error)
	// hostDst maps a pod's destination to the address pinged; tests use
	// it to reach loopback. nil = identity.
	hostDst func(netip.Addr) netip.Addr
}

func (t *echoTable) init(e *Engine) {
	t.e = e
	t.q = make(chan echoReq, echoQueueLen)
	t.m = map[echoKey]*echoFlow{}
	t.openPing = openPingSocket
}

// intercept is the stack's EchoFunc: it runs on the receive goroutine, so
// it only copies the request into the queue.
func (t *echoTable) intercept(src, dst netip.Addr, id, seq uint16, payload []byte) {
	if len(payload) > maxDatagram-header.ICMPv4MinSize {
		t.e.c.echoDropped.Add(1)
		return
	}
	r := echoReq{key: echoKey{pod: src, dst: dst, id: id}, seq: seq, payload: append([]byte(nil), payload...)}
	select {
	case t.q <- r:
	default:
		t.e.c.echoDropped.Add(1)
	}
}

// dispatch sends queued requests through their flows' ping sockets.
func (t *echoTable) dispatch() {
	for {
		select {
		case <-t.e.ctx.Done():
			return
		case r := <-t.q:
			t.send(r)
		}
	}
}

func (t *echoTable) send(r echoReq) {
	e := t.e
	t.mu.Lock()
	defer t.mu.Unlock()
	ef := t.m[r.key]
	if ef == nil {
		if ef = t.open(r.key); ef == nil {
			return
		}
	}
	ef.touch()
	// RFC 792 echo: the kernel sets the identifier to the socket's and
	// computes the checksum (ping_v4_sendmsg).
	msg := make([]byte, header.ICMPv4MinSize+len(r.payload))
	header.ICMPv4(msg).Encode(header.ICMPv4Fields{Type: header.ICMPv4Echo, RestOfHeader: header.EchoRest(r.key.id, r.seq)})
	copy(msg[header.ICMPv4MinSize:], r.payload)
	// Counted before the send: the reply may be relayed before Write
	// returns.
	e.c.echoRelayed.Add(1)
	if _, err := ef.conn.Write(msg); err != nil {
		e.c.echoRelayed.Add(^uint64(0))
		e.c.echoDropped.Add(1)
		e.log.Debug("proxy: echo send failed", "pod", r.key.pod, "dst", r.key.dst, "err", err)
	}
}

// open makes the flow of k; nil when denied, over a limit or failed (all
// counted). Called with mu held.
func (t *echoTable) open(k echoKey) *echoFlow {
	e := t.e
	f := e.newFlow()
	if !e.acquire(k.pod, f, kindEcho) {
		f.done()
		return nil
	}
	dst := k.dst
	if t.hostDst != nil {
		dst = t.hostDst(dst)
	}
	c, err := t.openPing(dst)
	if err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) ||
			errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT) {
			e.c.echoDenied.Add(1)
		} else {
			e.c.echoDropped.Add(1)
		}
		e.log.Debug("proxy: ping socket refused", "dst", dst, "err", err)
		e.release(f)
		f.done()
		return nil
	}
	ef := &echoFlow{key: k, conn: c, f: f, raw: rawConn(c)}
	ef.touch()
	if !e.adopt(f, c, func() { t.reader(ef) }) {
		return nil
	}
	t.m[k] = ef
	e.c.activeEcho.Add(1)
	e.c.echoFlowsOpened.Add(1)
	return ef
}

// reader relays the ping socket's echo replies to the pod, with the pod's
// identifier, until the flow idles out or is aborted.
func (t *echoTable) reader(ef *echoFlow) {
	e := t.e
	defer t.end(ef)
	idle := e.cfg.UDPIdleTimeout
	for {
		last := time.Unix(0, ef.last.Load())
		if time.Since(last) >= idle {
			t.mu.Lock()
			// A request may have arrived since: re-check under mu,
			// so send never writes to a socket being closed.
			if time.Since(time.Unix(0, ef.last.Load())) >= idle {
				if t.m[ef.key] == ef {
					delete(t.m, ef.key)
				}
				t.mu.Unlock()
				e.c.echoIdleTimeouts.Add(1)
				return
			}
			t.mu.Unlock()
			continue
		}
		_ = ef.conn.SetReadDeadline(last.Add(idle))
		err := recvDatagram(ef.conn, ef.raw, func(p []byte) {
			h, err := header.CheckICMPv4(p)
			if err != nil || h.Type() != header.ICMPv4EchoReply {
				return // ping sockets deliver only replies to us; anything else is ignored
			}
			ef.touch()
			if err := e.st.SendEchoReply(ef.key.dst, ef.key.pod, ef.key.id, h.Seq(), h.Payload()); err != nil {
				e.log.Debug("proxy: echo reply to pod failed", "pod", ef.key.pod, "err", err)
			}
		})
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		case isErrno(err) && !isClosed(err):
			// An ICMP error for our request (EHOSTUNREACH ...) is
			// reported once; the pod's ping times out as it would.
		default:
			return
		}
	}
}

func (t *echoTable) end(ef *echoFlow) {
	t.mu.Lock()
	if t.m[ef.key] == ef {
		delete(t.m, ef.key)
	}
	t.mu.Unlock()
	ef.conn.Close()
	t.e.release(ef.f)
	ef.f.done()
	t.e.c.activeEcho.Add(-1)
}

// openPingSocket opens an unprivileged ICMP socket (SOCK_DGRAM,
// IPPROTO_ICMP: net/ipv4/ping.c) connected to dst. The kernel refuses it
// with EACCES when the caller's group is outside net.ipv4.ping_group_range.
func openPingSocket(dst netip.Addr) (net.Conn, error) {
	if !dst.Is4() {
		return nil, syscall.EAFNOSUPPORT
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("ping:%v", dst))
	c, err := net.FileConn(f) // dups the descriptor
	f.Close()
	if err != nil {
		return nil, err
	}
	return c, nil
}
