package proxy

import (
	"crypto/rand"
	"encoding/binary"
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
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
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
	hdr     []byte // the request's IP and ICMP headers as they arrived
}

// echoQuotes is how many of a flow's last requests it keeps the headers
// of, for ICMP errors about them (a ping sends one a second; an error
// comes back within a few).
const echoQuotes = 4

// echoQuote is one request's headers, by sequence number: an IPv4 header
// with options, or an IPv6 header with up to 20 bytes of extension
// headers, and the 8-byte ICMP header.
type echoQuote struct {
	seq  uint16
	used bool
	n    int
	hdr  [header.IPv4MaxSize + header.ICMPv4MinSize]byte
}

// rawKey names a flow on the raw socket by what its replies carry: the
// destination that answers and the identifier we gave the flow.
type rawKey struct {
	dst netip.Addr
	id  uint16
}

// echoFlow is one pod identifier's echo flow: a ping socket connected to
// the destination (conn), or an identifier of its own on the engine's raw
// ICMP socket (raw mode, hostID).
type echoFlow struct {
	key  echoKey
	conn net.Conn
	raw  syscall.RawConn
	last atomic.Int64 // wall-clock nanoseconds of the last request or reply
	f    *flowHandle
	// quotes are the headers of the last requests, a ring guarded by
	// echoTable.mu (written by send, read by the error relay).
	quotes [echoQuotes]echoQuote
	nextQ  int

	// Raw mode.
	viaRaw bool
	hostID uint16
	rawKey rawKey
	idle   *time.Timer // marks the flow due for the sweeper; no goroutine per flow
	dead   atomic.Bool // aborted (RemovePod, Close): the sweeper ends it
}

func (ef *echoFlow) touch() { ef.last.Store(time.Now().UnixNano()) }

// echoTable is the echo relay: the queue from the stack's receive
// goroutine and the flows. Bound: the flows count against MaxFlowsPerPod;
// raw-mode flows also against 65536 identifiers per destination.
type echoTable struct {
	e *Engine
	q chan echoReq // bound: echoQueueLen

	// mu guards m, byRaw and rawSock; held across a socket's creation
	// and a send.
	mu    sync.Mutex
	m     map[echoKey]*echoFlow
	byRaw map[rawKey]*echoFlow // raw-mode flows by reply key
	// rawSock is the engine's one raw ICMP socket, opened when ping
	// sockets are first refused and kept until Close; rawSock6 the raw
	// ICMPv6 socket, the same for IPv6 destinations. sweeping: the
	// sweeper runs (started with the first of them; it closes both).
	rawSock  net.PacketConn
	rawRC    syscall.RawConn
	rawSock6 net.PacketConn
	sweeping bool

	// dueMu guards due: raw-mode flows whose idle timer fired or which
	// were aborted, for the sweeper (rawSweeper) to look at. Bound: the
	// raw-mode flows. wake (capacity 1) says due is not empty.
	dueMu sync.Mutex
	due   map[*echoFlow]struct{}
	wake  chan struct{}

	// openPing opens a ping socket connected to dst; openRaw the raw
	// ICMP socket; tests replace them.
	openPing func(dst netip.Addr) (net.Conn, error)
	openRaw  func() (net.PacketConn, error)
	openRaw6 func() (net.PacketConn, error)
	// hostDst maps a pod's destination to the address pinged; tests use
	// it to reach loopback. nil = identity.
	hostDst func(netip.Addr) netip.Addr
}

func (t *echoTable) init(e *Engine) {
	t.e = e
	t.q = make(chan echoReq, echoQueueLen)
	t.m = map[echoKey]*echoFlow{}
	t.byRaw = map[rawKey]*echoFlow{}
	t.due = map[*echoFlow]struct{}{}
	t.wake = make(chan struct{}, 1)
	t.openPing = openPingSocket
	t.openRaw = openRawICMP
	t.openRaw6 = openRawICMPv6
}

// intercept is the stack's ipv4.EchoFunc, intercept6 its ipv6.EchoFunc:
// they run on the receive goroutine, so they only copy the request, with
// the header an ICMP error about it quotes, into the queue.
func (t *echoTable) intercept(q ipv4.EchoRequest) {
	t.enqueue(q.Src, q.Dst, q.ID, q.Seq, q.Payload, q.Header, header.ICMPv4MinSize)
}

func (t *echoTable) intercept6(q ipv6.EchoRequest) {
	t.enqueue(q.Src, q.Dst, q.ID, q.Seq, q.Payload, q.Header, header.ICMPv6MinSize)
}

func (t *echoTable) enqueue(src, dst netip.Addr, id, seq uint16, payload, hdr []byte, icmpHdr int) {
	if len(payload) > maxDatagram-icmpHdr {
		t.e.c.echoDropped.Add(1)
		return
	}
	r := echoReq{key: echoKey{pod: src, dst: dst, id: id}, seq: seq, payload: append([]byte(nil), payload...),
		hdr: append([]byte(nil), hdr...)}
	select {
	case t.q <- r:
	default:
		t.e.c.echoDropped.Add(1)
	}
}

// dispatch sends queued requests through their flows' sockets.
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
	ef.keepQuote(r.seq, r.hdr)
	// RFC 792 echo. A ping socket sets the identifier to its own and
	// computes the checksum (ping_v4_sendmsg); on the raw socket both
	// are ours to write. ICMPv6 (RFC 4443 §4.1): the same, except that
	// the kernel computes the checksum on a raw ICMPv6 socket too (RFC
	// 3542 §3.1), over a pseudo-header only it knows the source of.
	v6 := r.key.dst.Is6()
	msg := make([]byte, header.ICMPv4MinSize+len(r.payload))
	id := r.key.id
	if ef.viaRaw {
		id = ef.hostID
	}
	if v6 {
		header.ICMPv6(msg).Encode(header.ICMPv6Fields{Type: header.ICMPv6EchoRequest, RestOfHeader: header.EchoRest(id, r.seq)})
	} else {
		header.ICMPv4(msg).Encode(header.ICMPv4Fields{Type: header.ICMPv4Echo, RestOfHeader: header.EchoRest(id, r.seq)})
	}
	copy(msg[header.ICMPv4MinSize:], r.payload)
	// Counted before the send: the reply may be relayed before Write
	// returns.
	e.c.echoRelayed.Add(1)
	var err error
	if ef.viaRaw {
		e.c.echoRawRelayed.Add(1)
		sock := t.rawSock
		if v6 {
			sock = t.rawSock6
		} else {
			header.ICMPv4(msg).SetChecksum()
		}
		_, err = sock.WriteTo(msg, &net.IPAddr{IP: t.pinged(r.key.dst).AsSlice()})
		if err != nil {
			e.c.echoRawRelayed.Add(^uint64(0))
		}
	} else {
		_, err = ef.conn.Write(msg)
	}
	if err != nil {
		e.c.echoRelayed.Add(^uint64(0))
		e.c.echoDropped.Add(1)
		e.log.Debug("proxy: echo send failed", "pod", r.key.pod, "dst", r.key.dst, "raw", ef.viaRaw, "err", err)
	}
}

// pinged is the address a request to dst goes to (hostDst in tests).
func (t *echoTable) pinged(dst netip.Addr) netip.Addr {
	if t.hostDst != nil {
		return t.hostDst(dst)
	}
	return dst
}

// refused reports a socket(2) error that means "not allowed here", as
// opposed to a failure of the moment.
func refused(err error) bool {
	return errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) ||
		errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT)
}

// open makes the flow of k; nil when denied, over a limit or failed (all
// counted). Called with mu held. A ping socket first; where the host
// refuses those (net.ipv4.ping_group_range excludes our group, its
// default "1 0" everyone) an identifier on the raw ICMP socket, which the
// daemon may open as root with CAP_NET_RAW.
func (t *echoTable) open(k echoKey) *echoFlow {
	e := t.e
	f := e.newFlow()
	if !e.acquire(k.pod, f, kindEcho) {
		f.done()
		return nil
	}
	dst := t.pinged(k.dst)
	c, err := t.openPing(dst)
	if err == nil {
		ef := &echoFlow{key: k, conn: c, f: f, raw: rawConn(c)}
		ef.touch()
		if err := setRecvErr(ef.raw); err != nil {
			e.log.Debug("proxy: IP_RECVERR not set on a ping socket; its ICMP errors are not passed on", "err", err)
		}
		if !e.adopt(f, c, func() { t.reader(ef) }) {
			return nil
		}
		t.m[k] = ef
		e.c.activeEcho.Add(1)
		e.c.echoFlowsOpened.Add(1)
		return ef
	}
	if !refused(err) {
		e.c.echoDropped.Add(1)
		e.log.Debug("proxy: ping socket failed", "dst", dst, "err", err)
		e.release(f)
		f.done()
		return nil
	}
	ef, rerr := t.openRawFlow(k, f)
	if rerr != nil {
		if refused(rerr) {
			e.c.echoDenied.Add(1)
		} else {
			e.c.echoDropped.Add(1)
		}
		e.log.Debug("proxy: ping socket and raw ICMP socket refused", "dst", dst, "ping", err, "raw", rerr)
		e.release(f)
		f.done()
		return nil
	}
	return ef
}

// openRawFlow gives k an identifier on the raw socket (opened on first
// use, with its reader and sweeper) unused by any other raw flow to the
// same destination, and arms its idle timer. Called with mu held.
func (t *echoTable) openRawFlow(k echoKey, f *flowHandle) (*echoFlow, error) {
	e := t.e
	if !t.sweeping {
		// The sweeper closes the raw sockets when the engine closes,
		// which ends their readers.
		if !e.spawn(t.rawSweeper) {
			return nil, net.ErrClosed
		}
		t.sweeping = true
	}
	if v6 := k.dst.Is6(); v6 && t.rawSock6 == nil {
		pc, err := t.openRaw6()
		if err != nil {
			return nil, err
		}
		if !e.spawn(func() { t.rawReader6(pc, rawConn(pc)) }) {
			pc.Close() // closing: the sweeper may be gone already
			return nil, net.ErrClosed
		}
		t.rawSock6 = pc
	} else if !v6 && t.rawSock == nil {
		pc, err := t.openRaw()
		if err != nil {
			return nil, err
		}
		rc := rawConn(pc)
		if !e.spawn(func() { t.rawReader(pc, rc) }) {
			pc.Close() // closing: the sweeper may be gone already
			return nil, net.ErrClosed
		}
		t.rawSock, t.rawRC = pc, rc
	}
	dst := t.pinged(k.dst)
	var b [2]byte
	_, _ = rand.Read(b[:])
	id := binary.BigEndian.Uint16(b[:])
	for i := 0; ; i++ {
		if i == 1<<16 {
			return nil, fmt.Errorf("echo to %v: all 65536 identifiers in use: %w", dst, syscall.EAGAIN)
		}
		if t.byRaw[rawKey{dst, id}] == nil {
			break
		}
		id++
	}
	ef := &echoFlow{key: k, f: f, viaRaw: true, hostID: id, rawKey: rawKey{dst, id}}
	ef.touch()
	t.m[k] = ef
	t.byRaw[ef.rawKey] = ef
	e.c.activeEcho.Add(1)
	e.c.echoFlowsOpened.Add(1)
	ef.idle = time.AfterFunc(e.cfg.UDPIdleTimeout, func() { t.markDue(ef) })
	// An abort only marks the flow: f.add may call this at once, with
	// mu held.
	f.add(abortFunc(func() { ef.dead.Store(true); t.markDue(ef) }))
	return ef, nil
}

// markDue hands ef to the sweeper.
func (t *echoTable) markDue(ef *echoFlow) {
	t.dueMu.Lock()
	t.due[ef] = struct{}{}
	t.dueMu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// rawSweeper ends raw-mode flows idle for UDPIdleTimeout (a request or
// reply since re-arms the timer for the rest) or aborted, and at Close
// every raw-mode flow and the raw sockets.
func (t *echoTable) rawSweeper() {
	e := t.e
	for {
		select {
		case <-e.ctx.Done():
			t.mu.Lock()
			for _, pc := range []net.PacketConn{t.rawSock, t.rawSock6} {
				if pc != nil {
					pc.Close()
				}
			}
			var all []*echoFlow
			for _, ef := range t.byRaw {
				all = append(all, ef)
			}
			t.mu.Unlock()
			for _, ef := range all {
				t.rawEnd(ef)
			}
			return
		case <-t.wake:
		}
		t.dueMu.Lock()
		due := t.due
		t.due = map[*echoFlow]struct{}{}
		t.dueMu.Unlock()
		for ef := range due {
			left := e.cfg.UDPIdleTimeout - time.Since(time.Unix(0, ef.last.Load()))
			if !ef.dead.Load() && left > 0 {
				ef.idle.Reset(left)
				continue
			}
			if !ef.dead.Load() {
				e.c.echoIdleTimeouts.Add(1)
			}
			t.rawEnd(ef)
		}
	}
}

// rawEnd ends a raw-mode flow, once.
func (t *echoTable) rawEnd(ef *echoFlow) {
	t.mu.Lock()
	if t.byRaw[ef.rawKey] != ef {
		t.mu.Unlock()
		return
	}
	delete(t.byRaw, ef.rawKey)
	if t.m[ef.key] == ef {
		delete(t.m, ef.key)
	}
	t.mu.Unlock()
	ef.idle.Stop()
	t.e.release(ef.f)
	ef.f.done()
	t.e.c.activeEcho.Add(-1)
}

// rawReader reads the raw ICMP socket until it is closed: echo replies to
// a raw-mode flow's identifier from its destination go to the pod with the
// pod's identifier. The socket sees the ICMP messages of the whole host
// (the kernel's filter passes echo replies only, ICMP_FILTER); replies to
// others' pings find no flow and are ignored.
func (t *echoTable) rawReader(pc net.PacketConn, rc syscall.RawConn) {
	t.rawLoop(pc, rc, "ICMP", func(p []byte, _ netip.AddrPort) { t.rawReply(p) })
}

// rawLoop reads a raw socket (ICMP or ICMPv6, what) until it is closed,
// handing each message and its source to handle.
func (t *echoTable) rawLoop(pc net.PacketConn, rc syscall.RawConn, what string, handle func(p []byte, src netip.AddrPort)) {
	e := t.e
	for {
		err := recvFrom(pc, rc, handle)
		switch {
		case err == nil:
		case isErrno(err) && !isClosed(err):
		default:
			if e.ctx.Err() == nil {
				e.log.Warn("proxy: raw "+what+" socket stopped", "err", err)
			}
			return
		}
	}
}

// rawReply handles one datagram of the raw socket: an IPv4 header, then
// the ICMP message.
func (t *echoTable) rawReply(p []byte) {
	ip, err := header.CheckIPv4(p)
	if err != nil || ip.Protocol() != header.ProtoICMP {
		return
	}
	m, err := header.CheckICMPv4(ip.Payload())
	if err != nil {
		return
	}
	if m.Type() == header.ICMPv4DstUnreachable || m.Type() == header.ICMPv4TimeExceeded {
		t.rawError(ip.Src(), m)
		return
	}
	if m.Type() != header.ICMPv4EchoReply {
		return
	}
	t.mu.Lock()
	ef := t.byRaw[rawKey{ip.Src(), m.ID()}]
	t.mu.Unlock()
	if ef == nil {
		return
	}
	ef.touch()
	if err := t.e.st.SendEchoReply(ef.key.dst, ef.key.pod, ef.key.id, m.Seq(), m.Payload()); err != nil {
		t.e.log.Debug("proxy: echo reply to pod failed", "pod", ef.key.pod, "err", err)
	}
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
			seq, payload, ok := echoReplyOf(p, ef.key.dst.Is6())
			if !ok {
				return // ping sockets deliver only replies to us; anything else is ignored
			}
			ef.touch()
			if err := e.st.SendEchoReply(ef.key.dst, ef.key.pod, ef.key.id, seq, payload); err != nil {
				e.log.Debug("proxy: echo reply to pod failed", "pod", ef.key.pod, "err", err)
			}
		})
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		case isErrno(err) && !isClosed(err):
			// An ICMP error for our request (EHOSTUNREACH ...): the
			// error queue has it (IP_RECVERR), its data starting at
			// the quoted ICMP header (ping_err).
			drainErrQueue(ef.raw, func(h hostICMP) {
				// The quoted header's layout (type, code, checksum,
				// identifier, sequence) is the same in ICMPv6 (RFC 4443
				// §4.1) as in ICMP (RFC 792).
				if (h.origin != unix.SO_EE_ORIGIN_ICMP && h.origin != unix.SO_EE_ORIGIN_ICMP6) || len(h.data) < header.ICMPv4MinSize {
					return
				}
				q := header.ICMPv4(h.data)
				t.relayError(ef, h.typ, h.code, h.offender, q.Seq(), q.Payload())
			})
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

// echoReplyOf reads an echo reply a ping socket delivered: ICMP, or
// ICMPv6 for an IPv6 flow (v6); false for anything else.
func echoReplyOf(p []byte, v6 bool) (seq uint16, payload []byte, ok bool) {
	if v6 {
		if len(p) < header.ICMPv6MinSize || p[0] != header.ICMPv6EchoReply {
			return 0, nil, false
		}
		h := header.ICMPv6(p)
		return h.Seq(), h.Payload(), true
	}
	h, err := header.CheckICMPv4(p)
	if err != nil || h.Type() != header.ICMPv4EchoReply {
		return 0, nil, false
	}
	return h.Seq(), h.Payload(), true
}

// openPingSocket opens an unprivileged ICMP socket (SOCK_DGRAM,
// IPPROTO_ICMP: net/ipv4/ping.c; for an IPv6 dst AF_INET6, IPPROTO_ICMPV6:
// net/ipv6/ping.c) connected to dst. The kernel refuses it with EACCES
// when the caller's group is outside net.ipv4.ping_group_range (which
// governs both families).
func openPingSocket(dst netip.Addr) (net.Conn, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if dst.Is6() {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	sa, _, err := sockaddr(netip.AddrPortFrom(dst, 0))
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
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

// icmpFilterPass is the ICMP_FILTER of the raw socket (net/ipv4/raw.c,
// raw_icmp_filter: a set bit drops that type): everything but echo
// replies and the errors that may be about our requests (destination
// unreachable, time exceeded) is dropped in the kernel.
const icmpFilterPass = ^uint32(1<<header.ICMPv4EchoReply | 1<<header.ICMPv4DstUnreachable | 1<<header.ICMPv4TimeExceeded)

// openRawICMP opens the raw ICMP socket (SOCK_RAW, IPPROTO_ICMP: needs
// CAP_NET_RAW, EPERM without) with the filter above. Reads return the
// IPv4 header and the message; writes take the message and get a header
// from the kernel.
func openRawICMP() (net.PacketConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	var filt [4]byte
	binary.NativeEndian.PutUint32(filt[:], icmpFilterPass)
	if err := unix.SetsockoptString(fd, unix.SOL_RAW, unix.ICMP_FILTER, string(filt[:])); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt ICMP_FILTER", err)
	}
	return filePacketConn(fd, "raw-icmp")
}

// openRawICMPv6 opens the raw ICMPv6 socket (SOCK_RAW, IPPROTO_ICMPV6:
// CAP_NET_RAW) with an ICMPV6_FILTER (RFC 3542 §3.2; a set bit blocks
// that type) passing echo replies only. Reads return the message without
// the IPv6 header, the source in the address; the kernel computes the
// checksum of what is written (RFC 3542 §3.1).
func openRawICMPv6() (net.PacketConn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	var filt [32]byte
	for i := range filt {
		filt[i] = 0xff
	}
	// Pass echo replies and the errors that can be about a request
	// (rawError6); block the rest (a set bit blocks its type).
	for _, typ := range []uint8{header.ICMPv6EchoReply, header.ICMPv6DstUnreachable, header.ICMPv6TimeExceeded} {
		w := binary.NativeEndian.Uint32(filt[typ/32*4:])
		binary.NativeEndian.PutUint32(filt[typ/32*4:], w&^(1<<(typ%32)))
	}
	if err := unix.SetsockoptString(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, string(filt[:])); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt ICMPV6_FILTER", err)
	}
	return filePacketConn(fd, "raw-icmpv6")
}

// filePacketConn makes the socket fd a net.PacketConn (which dups it) and
// closes fd.
func filePacketConn(fd int, name string) (net.PacketConn, error) {
	f := os.NewFile(uintptr(fd), name)
	pc, err := net.FilePacketConn(f)
	f.Close()
	return pc, err
}

// rawReader6 reads the raw ICMPv6 socket until it is closed: echo
// replies to a raw-mode flow's identifier from its destination go to the
// pod with the pod's identifier (rawReader's twin; the source comes with
// recvfrom, not in a header).
func (t *echoTable) rawReader6(pc net.PacketConn, rc syscall.RawConn) {
	t.rawLoop(pc, rc, "ICMPv6", func(p []byte, src netip.AddrPort) { t.rawReply6(src.Addr(), p) })
}

// rawReply6 handles one message of the raw ICMPv6 socket from src.
func (t *echoTable) rawReply6(src netip.Addr, p []byte) {
	if len(p) >= header.ICMPv6MinSize && (p[0] == header.ICMPv6DstUnreachable || p[0] == header.ICMPv6TimeExceeded) {
		t.rawError6(src, header.ICMPv6(p))
		return
	}
	seq, payload, ok := echoReplyOf(p, true)
	if !ok {
		return
	}
	t.mu.Lock()
	ef := t.byRaw[rawKey{src, header.ICMPv6(p).ID()}]
	t.mu.Unlock()
	if ef == nil {
		return
	}
	ef.touch()
	if err := t.e.st.SendEchoReply(ef.key.dst, ef.key.pod, ef.key.id, seq, payload); err != nil {
		t.e.log.Debug("proxy: echo reply to pod failed", "pod", ef.key.pod, "err", err)
	}
}

// keepQuote records the headers of request seq. Called with mu held.
func (ef *echoFlow) keepQuote(seq uint16, hdr []byte) {
	min := header.IPv4MinSize + header.ICMPv4MinSize
	if ef.key.pod.Is6() {
		min = header.IPv6MinSize + header.ICMPv6MinSize
	}
	if len(hdr) < min || len(hdr) > len(ef.quotes[0].hdr) {
		return // none, or IPv6 extension headers past the room: no quote
	}
	q := &ef.quotes[ef.nextQ]
	ef.nextQ = (ef.nextQ + 1) % echoQuotes
	q.seq, q.used = seq, true
	q.n = copy(q.hdr[:], hdr)
}

// rawError handles an ICMP error the raw socket received: when it quotes
// an echo request of a raw-mode flow (our identifier, sent to the flow's
// destination), the pod gets it about its own request.
func (t *echoTable) rawError(from netip.Addr, m header.ICMPv4) {
	inner := m.Payload()
	if len(inner) < header.IPv4MinSize {
		return
	}
	iv := header.IPv4(inner)
	hl := iv.HeaderLen()
	if hl < header.IPv4MinSize || len(inner) < hl+header.ICMPv4MinSize || iv.Protocol() != header.ProtoICMP {
		return
	}
	q := header.ICMPv4(inner[hl:])
	if q.Type() != header.ICMPv4Echo {
		return
	}
	t.mu.Lock()
	ef := t.byRaw[rawKey{iv.Dst(), q.ID()}]
	t.mu.Unlock()
	if ef == nil {
		return
	}
	t.relayError(ef, m.Type(), m.Code(), from, q.Seq(), q.Payload())
}

// rawError6 is rawError for the raw ICMPv6 socket: an error whose
// invoking packet (RFC 4443 §3.1: as much of it as fits) is an echo
// request of a raw-mode flow goes to the pod about its own request.
func (t *echoTable) rawError6(from netip.Addr, m header.ICMPv6) {
	inner := m.Payload()
	u, err := header.IPv6SkipExtHeaders(inner)
	if err != nil || u.Proto != header.ProtoICMPv6 || u.FragOffset != 0 || len(inner) < u.Offset+header.ICMPv6MinSize {
		return
	}
	q := header.ICMPv6(inner[u.Offset:])
	if q.Type() != header.ICMPv6EchoRequest {
		return
	}
	t.mu.Lock()
	ef := t.byRaw[rawKey{header.IPv6(inner).Dst(), q.ID()}]
	t.mu.Unlock()
	if ef == nil {
		return
	}
	t.relayError(ef, m.Type(), m.Code(), from, q.Seq(), q.Payload())
}

// relayError sends the pod an ICMP error typ/code about its echo request
// seq, as the host got one about ours (see icmperr.go for UDP): from the
// destination for protocol and port unreachable, else from the router
// that sent it; quoting the request's headers as the pod sent them and
// the data the host's error quoted (RFC 792, RFC 1122 §3.2.2).
// Fragmentation needed is the host's path MTU, not passed on.
func (t *echoTable) relayError(ef *echoFlow, typ, code uint8, offender netip.Addr, seq uint16, data []byte) {
	e := t.e
	from, ok := relayedErrorSource(ef.key.dst, typ, code, offender)
	if !ok {
		return
	}
	t.mu.Lock()
	var quote []byte
	for i := range ef.quotes {
		if q := &ef.quotes[i]; q.used && q.seq == seq {
			quote = append(append(make([]byte, 0, q.n+len(data)), q.hdr[:q.n]...), data...)
			break
		}
	}
	t.mu.Unlock()
	if quote == nil {
		return // about a request too old to remember
	}
	ef.touch()
	// Counted before the send: the pod may act on it first.
	e.c.echoICMPErrors.Add(1)
	if err := e.st.SendICMPErrorQuote(from, ef.key.pod, typ, code, 0, quote); err != nil {
		e.c.echoICMPErrors.Add(^uint64(0))
		e.log.Debug("proxy: icmp error to pod failed", "pod", ef.key.pod, "type", typ, "code", code, "err", err)
	}
}
