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
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
)

// echoKey names an echo flow: the kernel gives each ping socket an
// identifier of its own, so a flow is per pod identifier.
type echoKey struct {
	pod, dst netip.Addr
	id       uint16
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

// echoFlow is one pod identifier's echo flow: a ping socket of its own
// connected to the destination (h, registered with the engine's poller as
// id, which relays its replies: ready), or an identifier of its own on the
// engine's raw ICMP socket (raw mode, hostID). Either way an idle timer on
// the stack's clock ends it: no goroutine, no Go net.Conn and no runtime
// timer per flow, as a UDP flow (udp.go).
type echoFlow struct {
	key echoKey
	t   *echoTable
	f   *flowHandle
	h   *hostFD // the ping socket; nil in raw mode
	id  uint64  // h's poller registration
	// idle ends the flow UDPIdleTimeout after its last request, reply
	// or error.
	idle  idle
	ended atomic.Bool // end ran: a flow ends once
	// quotes are the headers of the last requests, a ring guarded by
	// echoTable.mu (written by request, read by the error relay).
	quotes [echoQuotes]echoQuote
	nextQ  int

	// Raw mode.
	viaRaw bool
	hostID uint16
	rawKey rawKey
}

// echoTable is the echo relay: the flows, and the raw sockets of raw
// mode. Bound: the flows count against MaxFlowsPerPod; raw-mode flows
// also against 65536 identifiers per destination.
type echoTable struct {
	e *Engine

	// mu guards m, byRaw, the raw sockets, closed and the flows'
	// quotes; held across a socket's creation and a send.
	mu    sync.Mutex
	m     map[echoKey]*echoFlow
	byRaw map[rawKey]*echoFlow // raw-mode flows by reply key
	// raw is the engine's one raw ICMP socket, opened when ping
	// sockets are first refused and kept until close; raw6 the raw
	// ICMPv6 socket, the same for IPv6 destinations. Both are on the
	// poller (rawSock.ready reads them), nil until opened.
	raw, raw6 *rawSock
	closed    bool // close ran: no raw socket is opened any more

	// openPing opens a ping socket connected to dst; openRaw the raw
	// ICMP socket; tests replace them.
	openPing func(dst netip.Addr) (*hostFD, error)
	openRaw  func() (*hostFD, error)
	openRaw6 func() (*hostFD, error)
	// hostDst maps a pod's destination to the address pinged; tests use
	// it to reach loopback. nil = identity.
	hostDst func(netip.Addr) netip.Addr
}

func (t *echoTable) init(e *Engine) {
	t.e = e
	t.m = map[echoKey]*echoFlow{}
	t.byRaw = map[rawKey]*echoFlow{}
	t.openPing = openPingSocket
	t.openRaw = openRawICMP
	t.openRaw6 = openRawICMPv6
}

// close closes the raw sockets and ends any flow left (Engine.Close has
// aborted them all already).
func (t *echoTable) close() {
	t.mu.Lock()
	t.closed = true
	for _, rs := range []*rawSock{t.raw, t.raw6} {
		if rs != nil {
			t.e.poll.remove(rs.id)
			rs.h.Close()
		}
	}
	var left []*echoFlow
	for _, ef := range t.m {
		left = append(left, ef)
	}
	t.mu.Unlock()
	for _, ef := range left {
		t.end(ef)
	}
}

// intercept is the stack's ipv4.EchoFunc, intercept6 its ipv6.EchoFunc.
// They run on the receiving NIC's goroutine, at the request's local
// delivery, and relay the request there (request) — as the UDP intercept
// socket is drained on that goroutine (udpDrain) — instead of waking a
// goroutine of ours per request: the flow's open and its send are
// non-blocking system calls, as a UDP flow's are.
func (t *echoTable) intercept(q ipv4.EchoRequest) {
	t.request(q.Src, q.Dst, q.ID, q.Seq, q.Payload, q.Header, header.ICMPv4MinSize)
}

func (t *echoTable) intercept6(q ipv6.EchoRequest) {
	t.request(q.Src, q.Dst, q.ID, q.Seq, q.Payload, q.Header, header.ICMPv6MinSize)
}

// request sends the pod's echo request src→dst (identifier id, sequence
// seq) out of its flow's socket, opening the flow first if it has none.
// A request too big for one message, or whose flow cannot be opened (a
// failure of the moment; refusals are EchoDenied) or whose send fails (a
// full send buffer: dropped, not waited for, as a full qdisc drops) is
// counted in EchoDropped.
func (t *echoTable) request(src, dst netip.Addr, id, seq uint16, payload, hdr []byte, icmpHdr int) {
	e := t.e
	if len(payload) > maxDatagram-icmpHdr {
		e.c.echoDropped.Add(1)
		return
	}
	k := echoKey{pod: src, dst: dst, id: id}
	t.mu.Lock()
	ef := t.m[k]
	opened := false
	if ef == nil {
		if ef = t.openLocked(k); ef == nil {
			t.mu.Unlock()
			return
		}
		opened = true
	}
	t.sendLocked(ef, seq, payload, hdr)
	t.mu.Unlock()
	// The flow's abort (RemovePod, Close) takes mu: it is added to the
	// flow only now, and runs here at once if the flow was aborted
	// meanwhile.
	if opened {
		ef.f.add(ef)
	}
}

// sendLocked writes the request to the host (mu held).
func (t *echoTable) sendLocked(ef *echoFlow, seq uint16, payload, hdr []byte) {
	e := t.e
	ef.idle.touch()
	ef.keepQuote(seq, hdr)
	// RFC 792 echo. A ping socket sets the identifier to its own and
	// computes the checksum (ping_v4_sendmsg); on the raw socket both
	// are ours to write. ICMPv6 (RFC 4443 §4.1): the same, except that
	// the kernel computes the checksum on a raw ICMPv6 socket too (RFC
	// 3542 §3.1), over a pseudo-header only it knows the source of.
	v6 := ef.key.dst.Is6()
	bp := dgramBufs.Get().(*[]byte)
	defer dgramBufs.Put(bp)
	msg := (*bp)[:header.ICMPv4MinSize+len(payload)]
	id := ef.key.id
	if ef.viaRaw {
		id = ef.hostID
	}
	if v6 {
		header.ICMPv6(msg).Encode(header.ICMPv6Fields{Type: header.ICMPv6EchoRequest, RestOfHeader: header.EchoRest(id, seq)})
	} else {
		header.ICMPv4(msg).Encode(header.ICMPv4Fields{Type: header.ICMPv4Echo, RestOfHeader: header.EchoRest(id, seq)})
	}
	copy(msg[header.ICMPv4MinSize:], payload)
	// Counted before the send: the reply may be relayed before the
	// send returns.
	e.c.echoRelayed.Add(1)
	var err error
	if ef.viaRaw {
		e.c.echoRawRelayed.Add(1)
		rs := t.raw
		if v6 {
			rs = t.raw6
		} else {
			header.ICMPv4(msg).SetChecksum()
		}
		if err = rs.sendTo(msg, ef.rawKey.dst); err != nil {
			e.c.echoRawRelayed.Add(^uint64(0))
		}
	} else {
		err = ef.write(msg)
	}
	if err != nil {
		e.c.echoRelayed.Add(^uint64(0))
		e.c.echoDropped.Add(1)
		e.log.Debug("proxy: echo send failed", "pod", ef.key.pod, "dst", ef.key.dst, "raw", ef.viaRaw, "err", err)
	}
}

// sendTo sends msg to dst: sendto(2) with MSG_DONTWAIT, so that a full
// send buffer fails the send (EAGAIN) instead of waiting: the caller is
// the NIC's goroutine.
func (rs *rawSock) sendTo(msg []byte, dst netip.Addr) error {
	var sa rawSockaddr
	if _, err := sa.set(netip.AddrPortFrom(dst, 0)); err != nil {
		return err
	}
	if !rs.h.acquire() {
		return net.ErrClosed
	}
	defer rs.h.release()
	if e := sendtoNonblock(rs.h.fd, msg, &sa); e != 0 {
		return e
	}
	return nil
}

// write sends msg on the flow's ping socket: write(2), raw (the P kept;
// a ping socket's send never sleeps: non-blocking). A full send buffer
// (EAGAIN) fails it, and so does a socket closed meanwhile (the flow
// just ended).
func (ef *echoFlow) write(msg []byte) error {
	if !ef.h.acquire() {
		return net.ErrClosed
	}
	defer ef.h.release()
	for {
		_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(ef.h.fd), uintptr(unsafe.Pointer(unsafe.SliceData(msg))), uintptr(len(msg)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
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

// openLocked makes the flow of k; nil when denied, over a limit or
// failed (all counted). Called with mu held. A ping socket first; where
// the host refuses those (net.ipv4.ping_group_range excludes our group,
// its default "1 0" everyone) an identifier on the raw ICMP socket, which
// the daemon may open as root with CAP_NET_RAW.
func (t *echoTable) openLocked(k echoKey) *echoFlow {
	e := t.e
	f := e.newFlow()
	if !e.acquire(k.pod, f, kindEcho) {
		f.done()
		return nil
	}
	ef := &echoFlow{key: k, t: t, f: f}
	ef.idle.init(e, ef)
	dst := t.pinged(k.dst)
	err := t.openPingFlow(ef, dst)
	if err == nil {
		return ef
	}
	if !refused(err) {
		e.c.echoDropped.Add(1)
		if e.noResources(err) {
			e.c.echoNoResources.Add(1)
		}
		e.log.Debug("proxy: ping socket failed", "dst", dst, "err", err)
		e.release(f)
		f.done()
		return nil
	}
	if rerr := t.openRawFlow(ef, dst); rerr != nil {
		if refused(rerr) {
			e.c.echoDenied.Add(1)
		} else {
			e.c.echoDropped.Add(1)
			if e.noResources(rerr) {
				e.c.echoNoResources.Add(1)
			}
		}
		e.log.Debug("proxy: ping socket and raw ICMP socket refused", "dst", dst, "ping", err, "raw", rerr)
		e.release(f)
		f.done()
		return nil
	}
	return ef
}

// openPingFlow gives ef a ping socket connected to dst, IP_RECVERR on
// (its ICMP errors: ping_err queues them), on the poller (input only: a
// full send buffer drops the request, write), and counts the flow in.
// Called with mu held.
func (t *echoTable) openPingFlow(ef *echoFlow, dst netip.Addr) error {
	e := t.e
	h, err := t.openPing(dst)
	if err != nil {
		return err
	}
	ef.h, ef.id = h, e.poll.newID()
	if err := e.pollDgram(h, ef.id, ef); err != nil {
		return err
	}
	t.startLocked(ef)
	return nil
}

// startLocked puts ef in the table, counts it in and arms its idle
// timer (mu held).
func (t *echoTable) startLocked(ef *echoFlow) {
	e := t.e
	t.m[ef.key] = ef
	e.c.activeEcho.Add(1)
	e.c.echoFlowsOpened.Add(1)
	ef.idle.arm()
}

// rawSock is one of the engine's raw sockets on the poller (ICMP, or
// ICMPv6: v6).
type rawSock struct {
	t  *echoTable
	h  *hostFD
	id uint64 // h's poller registration
	v6 bool
}

// openRawSock opens a raw socket with open and registers it with the
// poller (mu held).
func (t *echoTable) openRawSock(open func() (*hostFD, error), v6 bool) (*rawSock, error) {
	h, err := open()
	if err != nil {
		return nil, err
	}
	rs := &rawSock{t: t, h: h, id: t.e.poll.newID(), v6: v6}
	if err := t.e.poll.add(rs.id, h, rs, false, false); err != nil {
		h.Close()
		return nil, fmt.Errorf("poller: %w", err)
	}
	return rs, nil
}

// openRawFlow gives ef an identifier on the raw socket (opened on first
// use, on the poller) unused by any other raw flow to the same
// destination dst. Called with mu held.
func (t *echoTable) openRawFlow(ef *echoFlow, dst netip.Addr) error {
	if t.closed {
		return net.ErrClosed
	}
	if v6 := ef.key.dst.Is6(); v6 && t.raw6 == nil {
		rs, err := t.openRawSock(t.openRaw6, true)
		if err != nil {
			return err
		}
		t.raw6 = rs
	} else if !v6 && t.raw == nil {
		rs, err := t.openRawSock(t.openRaw, false)
		if err != nil {
			return err
		}
		t.raw = rs
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	id := binary.BigEndian.Uint16(b[:])
	for i := 0; ; i++ {
		if i == 1<<16 {
			return fmt.Errorf("echo to %v: all 65536 identifiers in use: %w", dst, syscall.EAGAIN)
		}
		if t.byRaw[rawKey{dst, id}] == nil {
			break
		}
		id++
	}
	ef.viaRaw, ef.hostID, ef.rawKey = true, id, rawKey{dst, id}
	t.byRaw[ef.rawKey] = ef
	t.startLocked(ef)
	return nil
}

// idleEnd ends the flow after UDPIdleTimeout without a request, reply
// or error (idle's owner).
func (ef *echoFlow) idleEnd() {
	if ef.t.end(ef) {
		ef.t.e.c.echoIdleTimeouts.Add(1)
	}
}

// abort ends the flow (flowHandle's aborter: RemovePod, Close).
func (ef *echoFlow) abort() { ef.t.end(ef) }

// end ends a flow, once, whichever way it ends (idle timeout, abort):
// out of the tables, its ping socket closed with its timer and
// registration (a raw-mode flow gives back its identifier), counted out.
// It reports whether this call ended it.
func (t *echoTable) end(ef *echoFlow) bool {
	if ef.ended.Load() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if ef.ended.Swap(true) {
		return false
	}
	if t.m[ef.key] == ef {
		delete(t.m, ef.key)
	}
	ef.idle.stop()
	if ef.viaRaw {
		if t.byRaw[ef.rawKey] == ef {
			delete(t.byRaw, ef.rawKey)
		}
	} else {
		t.e.poll.remove(ef.id)
		ef.h.Close()
	}
	t.e.release(ef.f)
	ef.f.done()
	t.e.c.activeEcho.Add(-1)
	return true
}

// ready is the ping socket's poller callback (edge-triggered: it reads
// until the socket is empty). Each echo reply (ping_rcv queued it: the
// kernel's identifier, from the destination) goes to the pod with the
// pod's identifier, from the destination (SendEchoReply). An ICMP error
// for one of our requests (ping_err: the socket's pending error, reported
// once by the read, and an entry on the error queue with IP_RECVERR; the
// queue alone raises EPOLLERR) goes to the pod about its own request
// (pingErrors).
func (ef *echoFlow) ready(ev uint32) {
	if !ef.h.acquire() {
		return // ended
	}
	defer ef.h.release()
	t := ef.t
	e := t.e
	sawErr := readDgrams(ef.h.fd, false, func(b []byte, _ netip.AddrPort) {
		seq, payload, ok := echoReplyOf(b, ef.key.dst.Is6())
		if !ok {
			return // ping sockets deliver only replies to us; anything else is ignored
		}
		ef.idle.touch()
		if err := e.st.SendEchoReply(ef.key.dst, ef.key.pod, ef.key.id, seq, payload); err != nil {
			e.log.Debug("proxy: echo reply to pod failed", "pod", ef.key.pod, "err", err)
		}
	}, func(unix.Errno) { t.pingErrors(ef) })
	if ev&unix.EPOLLERR != 0 && !sawErr {
		t.pingErrors(ef)
	}
}

// pingErrors relays the ICMP errors queued on the flow's ping socket
// (IP_RECVERR), whose data starts at the quoted ICMP header (ping_err
// queues it so), to the pod about its own request. The quoted header's
// layout (type, code, checksum, identifier, sequence) is the same in
// ICMPv6 (RFC 4443 §4.1) as in ICMP (RFC 792).
func (t *echoTable) pingErrors(ef *echoFlow) {
	drainErrQueue(ef.h, func(h hostICMP) {
		if (h.origin != unix.SO_EE_ORIGIN_ICMP && h.origin != unix.SO_EE_ORIGIN_ICMP6) || len(h.data) < header.ICMPv4MinSize {
			return
		}
		q := header.ICMPv4(h.data)
		t.relayError(ef, h.typ, h.code, h.offender, q.Seq(), q.Payload())
	})
}

// ready is a raw socket's poller callback (edge-triggered: it reads
// until the socket is empty). Echo replies to a raw-mode flow's identifier
// from its destination go to the pod with the pod's identifier; errors
// quoting one of its requests go to the pod about its own request. The
// socket sees the ICMP messages of the whole host that its filter passes
// (ICMP_FILTER, ICMPV6_FILTER); those for others find no flow and are
// ignored. An ICMP socket's message starts with the IPv4 header, the
// source in it (read(2)); an ICMPv6 socket's is the message alone, the
// source from recvfrom(2).
func (rs *rawSock) ready(uint32) {
	if !rs.h.acquire() {
		return // closed
	}
	defer rs.h.release()
	t := rs.t
	readDgrams(rs.h.fd, rs.v6, func(b []byte, from netip.AddrPort) {
		if rs.v6 {
			t.rawReply6(from.Addr(), b)
		} else {
			t.rawReply(b)
		}
	}, func(errno unix.Errno) {
		// A pending socket error, reported once.
		t.e.log.Debug("proxy: raw ICMP socket error", "v6", rs.v6, "err", errno)
	})
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
	ef.idle.touch()
	if err := t.e.st.SendEchoReply(ef.key.dst, ef.key.pod, ef.key.id, m.Seq(), m.Payload()); err != nil {
		t.e.log.Debug("proxy: echo reply to pod failed", "pod", ef.key.pod, "err", err)
	}
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
// net/ipv6/ping.c) connected to dst, non-blocking, with raw system calls
// (newHostFD). The kernel refuses it with EACCES when the caller's group
// is outside net.ipv4.ping_group_range (which governs both families).
func openPingSocket(dst netip.Addr) (*hostFD, error) {
	proto := unix.IPPROTO_ICMP
	if !dst.Unmap().Is4() {
		proto = unix.IPPROTO_ICMPV6
	}
	return connectDgram(netip.AddrPortFrom(dst, 0), proto)
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
func openRawICMP() (*hostFD, error) {
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
	return &hostFD{fd: fd}, nil
}

// openRawICMPv6 opens the raw ICMPv6 socket (SOCK_RAW, IPPROTO_ICMPV6:
// CAP_NET_RAW) with an ICMPV6_FILTER (RFC 3542 §3.2; a set bit blocks
// that type) passing echo replies only. Reads return the message without
// the IPv6 header, the source in the address; the kernel computes the
// checksum of what is written (RFC 3542 §3.1).
func openRawICMPv6() (*hostFD, error) {
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
	return &hostFD{fd: fd}, nil
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
	ef.idle.touch()
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
	ef.idle.touch()
	// Counted before the send: the pod may act on it first.
	e.c.echoICMPErrors.Add(1)
	if err := e.st.SendICMPErrorQuote(from, ef.key.pod, typ, code, 0, quote); err != nil {
		e.c.echoICMPErrors.Add(^uint64(0))
		e.log.Debug("proxy: icmp error to pod failed", "pod", ef.key.pod, "type", typ, "code", code, "err", err)
	}
}
