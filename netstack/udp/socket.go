package udp

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Socket is a UDP socket (struct udp_sock). Its methods are safe for
// concurrent use. Errors are syscall.Errno values as the kernel's
// system calls return them, os.ErrDeadlineExceeded when a deadline
// passes, and net.ErrClosed after Close.
type Socket struct {
	p *Proto

	// Guarded by p.mu AND mu for writes (read under either): the fields
	// the lookup reads.
	laddr     netip.Addr // inet_rcv_saddr; invalid or unspecified = wildcard
	lport     uint16     // 0 = not bound
	raddr     netip.Addr
	rport     uint16
	connected bool

	mu   sync.Mutex
	cond sync.Cond // L = &mu; receivers wait here

	addrLocked bool // laddr set by Bind, not by Connect (SOCK_BINDADDR_LOCK)
	closed     bool
	err        syscall.Errno // sk_err, reported once

	// rcvq holds received datagrams, UDP header pulled. Bound: rcvbuf
	// bytes of truesize (see the package doc); rmem is what is charged.
	rcvq   buf.Queue
	rmem   int
	rcvbuf int
	drops  uint64 // sk_drops

	rdeadline, wdeadline time.Time
	timer                *clock.Timer // fires at rdeadline while receivers wait

	// Options.
	ttl       uint8 // IP_TTL, 0 = the layer's default
	tos       uint8
	nic       int  // SO_BINDTODEVICE
	rnic      int  // the NIC of a connected link-local peer (its zone)
	broadcast bool // SO_BROADCAST
	dontFrag  bool // IP_PMTUDISC_DO
	// transparent is IP_TRANSPARENT (SetTransparent): the local address
	// need not be ours; output carries Flow.Transparent and MarkDivert.
	transparent bool
	// intercept marks the Proto's intercept socket (set at creation).
	intercept bool

	// notify is SetNotify's callback; inBatch: the socket is registered
	// with the receive batch being carried up (its FlushBatch runs
	// notify once at the batch's end).
	notify  func()
	inBatch bool
}

// Flags modify one call (MSG_*).
type Flags uint32

const (
	// MsgDontWait makes a receive return EAGAIN instead of blocking.
	MsgDontWait Flags = 1 << iota
	// MsgPeek returns the next datagram without removing it.
	MsgPeek
)

// Meta describes a received datagram (recvmsg's msg_name, IP_PKTINFO,
// MSG_TRUNC).
type Meta struct {
	From, To netip.AddrPort
	// NIC is the ID of the NIC it arrived on.
	NIC int
	// Len is the datagram's payload length; Truncated is set when the
	// caller's buffer was shorter and the rest was discarded.
	Len       int
	Truncated bool
}

// skbOverhead approximates the SKB struct in truesize, as Linux charges
// sizeof(struct sk_buff) on top of the data buffer.
const skbOverhead = 256

func truesize(skb *buf.SKB) int {
	return skb.Headroom() + skb.Len() + skb.Tailroom() + skbOverhead
}

// Control-block layout while an SKB sits in a receive queue.
const (
	cbSrc   = 0 // 4 bytes
	cbDst   = 4 // 4 bytes
	cbSport = 8
	cbDport = 10
)

// enqueue is __udp_enqueue_schedule_skb; called with p.mu held for
// reading. It consumes skb. It returns the socket's Notify callback when
// the caller must run it once p.mu is released (a datagram queued
// outside a receive batch); inside one, the batch's end runs it
// (FlushBatch).
func (s *Socket) enqueue(skb *buf.SKB, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) (notify func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.p.count(InErrors)
		skb.Free(DropClose)
		return nil
	}
	skb.SetTransportHeader()
	skb.Pull(header.UDPSize)
	size := truesize(skb)
	if s.rmem >= s.rcvbuf {
		s.drops++
		s.mu.Unlock()
		s.p.count(RcvbufErrors)
		s.p.count(InErrors)
		skb.Free(DropRcvBuf)
		return nil
	}
	if src.Is4() {
		s4, d4 := src.As4(), dst.As4()
		copy(skb.CB[cbSrc:], s4[:])
		copy(skb.CB[cbDst:], d4[:])
	} else {
		// IPv6 addresses do not fit beside the ports: metaOf reads
		// them from the network header, which stays with the SKB.
		clear(skb.CB[cbSrc : cbDst+4])
	}
	binary.BigEndian.PutUint16(skb.CB[cbSport:], sport)
	binary.BigEndian.PutUint16(skb.CB[cbDport:], dport)
	batch := skb.Batch
	s.rcvq.PushBack(skb)
	s.rmem += size
	s.cond.Signal()
	if s.notify != nil {
		if batch == nil {
			notify = s.notify
		} else if !s.inBatch {
			s.inBatch = true
			batch.Defer(s)
		}
	}
	s.mu.Unlock()
	return notify
}

// SetNotify makes fn the socket's data-ready callback (sk_data_ready for
// an event-driven owner), nil removes it: fn runs once a datagram was
// queued, with no lock of the stack held, on the goroutine that queued
// it — at the end of its receive batch (buf.Batch: once for all the
// batch's datagrams), or right after the datagram outside a batch. It
// must not block; it reads the queue with MsgDontWait. A datagram
// queued before SetNotify is not announced: the caller reads the queue
// once after setting fn. Receivers blocked in a read are woken as ever.
func (s *Socket) SetNotify(fn func()) {
	s.mu.Lock()
	s.notify = fn
	s.mu.Unlock()
}

// FlushBatch is the end of a receive batch that queued datagrams
// (buf.Flusher): the Notify callback runs once for all of them.
func (s *Socket) FlushBatch() {
	s.mu.Lock()
	s.inBatch = false
	fn := s.notify
	s.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// setError stores an ICMP-reported error (sk_err) and wakes everyone.
func (s *Socket) setError(errno syscall.Errno) {
	s.mu.Lock()
	if !s.closed {
		s.err = errno
		s.cond.Broadcast()
	}
	s.mu.Unlock()
}

// sockError is sock_error: the pending error, cleared. Called with mu held.
func (s *Socket) sockError() error {
	if s.err == 0 {
		return nil
	}
	e := s.err
	s.err = 0
	return e
}

func (s *Socket) deadlineFired() {
	s.mu.Lock()
	s.cond.Broadcast()
	s.mu.Unlock()
}

// Bind binds the socket to a local address and port (inet_bind); an
// invalid or unspecified address is the wildcard, port 0 picks an
// ephemeral port. A socket binds once (EINVAL after).
func (s *Socket) Bind(ap netip.AddrPort) error {
	addr, znic, err := s.p.zoneNIC(ap.Addr().Unmap())
	if err != nil {
		return err
	}
	if addr.IsValid() {
		if _, ok := s.p.af(addr); !ok {
			return syscall.EAFNOSUPPORT
		}
	}
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	if s.lport != 0 || s.intercept {
		return syscall.EINVAL
	}
	if err := s.p.bindLocked(s, addr, ap.Port()); err != nil {
		return err
	}
	s.addrLocked = addr.IsValid() && !addr.IsUnspecified()
	if znic != 0 {
		// A zoned (link-local) address binds the socket to its NIC, as
		// sin6_scope_id binds to the device (sk_bound_dev_if).
		s.nic = znic
	}
	return nil
}

// autobind binds an unbound socket to the wildcard and an ephemeral port
// (inet_autobind). Called with no lock held.
func (s *Socket) autobind() error {
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	if s.intercept {
		return syscall.EINVAL // the intercept socket sends with SendFromTo only
	}
	if s.lport != 0 {
		return nil
	}
	return s.p.bindLocked(s, netip.Addr{}, 0)
}

// Connect sets the peer (ip4_datagram_connect): sends without an address
// go there and only datagrams from it are received. The route is looked
// up now, a wildcard local address becomes the route's source, and an
// unbound socket gets an ephemeral port. An invalid ap disconnects
// (AF_UNSPEC, udp_disconnect).
func (s *Socket) Connect(ap netip.AddrPort) error {
	if !ap.IsValid() {
		return s.disconnect()
	}
	dst, znic, err := s.p.zoneNIC(ap.Addr().Unmap())
	if err != nil {
		return err
	}
	ip, ok := s.p.af(dst)
	if !ok {
		return syscall.EAFNOSUPPORT
	}
	if ap.Port() == 0 {
		return syscall.EINVAL
	}
	if err := s.autobind(); err != nil {
		return err
	}
	s.mu.Lock()
	if !s.familyOKLocked(dst) {
		s.mu.Unlock()
		return syscall.EAFNOSUPPORT
	}
	fl := s.flowLocked(dst, ap.Port())
	if znic != 0 {
		fl.NIC = znic
	}
	broadcastOK := s.broadcast
	s.mu.Unlock()
	res, err := ip.RouteOutput(fl)
	if err != nil {
		return errnoOf(err)
	}
	if res.Type == route.Broadcast && !broadcastOK {
		return syscall.EACCES
	}
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	if !s.laddr.IsValid() || s.laddr.IsUnspecified() {
		s.laddr = res.Src
	}
	s.raddr, s.rport, s.rnic, s.connected = dst, ap.Port(), znic, true
	return nil
}

func (s *Socket) disconnect() error {
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	s.raddr, s.rport, s.rnic, s.connected = netip.Addr{}, 0, 0, false
	if !s.addrLocked {
		s.laddr = netip.Addr{} // inet_reset_saddr
	}
	return nil
}

// LocalAddr is the bound address and port (getsockname); the zero port
// means unbound.
func (s *Socket) LocalAddr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.laddr
	if !a.IsValid() {
		a = netip.IPv4Unspecified()
	}
	return netip.AddrPortFrom(a, s.lport)
}

// RemoteAddr is the connected peer (getpeername); invalid when not connected.
func (s *Socket) RemoteAddr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.connected {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(s.p.withZone(s.raddr, s.rnic), s.rport)
}

// familyOKLocked reports whether the socket's local address can send to
// dst: unbound, the IPv6 wildcard (both families, as an AF_INET6 socket
// without IPV6_V6ONLY) or an address of dst's family.
func (s *Socket) familyOKLocked(dst netip.Addr) bool {
	return !s.laddr.IsValid() || s.laddr == netip.IPv6Unspecified() || s.laddr.Is4() == dst.Is4()
}

// flowLocked is the output flow key to dst (udp_sendmsg's flowi4_init_output).
func (s *Socket) flowLocked(dst netip.Addr, dport uint16) route.Flow {
	fl := route.Flow{
		Dst: dst, Proto: header.ProtoUDP, TOS: s.tos, TTL: s.ttl, NIC: s.nic,
		DontFragment: s.dontFrag, SrcPort: s.lport, DstPort: dport,
	}
	if s.laddr.IsValid() && !s.laddr.IsUnspecified() {
		fl.Src = s.laddr
	}
	if s.transparent {
		fl.Transparent, fl.Mark = true, netfilter.MarkDivert
	}
	return fl
}

// Send sends p to the connected peer.
func (s *Socket) Send(p []byte) (int, error) { return s.SendTo(p, netip.AddrPort{}) }

// SendTo sends p as one datagram to `to`, or to the connected peer when
// `to` is invalid (udp_sendmsg). It never blocks.
func (s *Socket) SendTo(p []byte, to netip.AddrPort) (int, error) {
	// RFC 768 carries at most 65535 bytes including the UDP and IP
	// headers; IPv6's Payload Length leaves its header out (maxPayload).
	if len(p) > MaxPayload6 {
		return 0, syscall.EMSGSIZE
	}
	s.mu.Lock()
	if err := s.sendCheckLocked(); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	znic := 0
	if !to.IsValid() {
		if !s.connected {
			s.mu.Unlock()
			return 0, syscall.EDESTADDRREQ
		}
		to, znic = netip.AddrPortFrom(s.raddr, s.rport), s.rnic
	}
	bound := s.lport != 0
	s.mu.Unlock()

	dst, zn, err := s.p.zoneNIC(to.Addr().Unmap())
	if err != nil {
		return 0, err
	}
	if zn != 0 {
		znic = zn
	}
	ip, ok := s.p.af(dst)
	if !ok {
		return 0, syscall.EAFNOSUPPORT
	}
	if len(p) > maxPayload(dst) {
		return 0, syscall.EMSGSIZE
	}
	if to.Port() == 0 {
		return 0, syscall.EINVAL // udp_sendmsg: "if (dport == 0) return -EINVAL"
	}
	if !bound {
		if err := s.autobind(); err != nil {
			return 0, err
		}
	}
	s.mu.Lock()
	if !s.familyOKLocked(dst) {
		s.mu.Unlock()
		return 0, syscall.EAFNOSUPPORT
	}
	fl := s.flowLocked(dst, to.Port())
	if znic != 0 {
		fl.NIC = znic
	}
	broadcastOK := s.broadcast
	s.mu.Unlock()

	res, err := ip.RouteOutput(fl)
	if err != nil {
		return 0, errnoOf(err)
	}
	if res.Type == route.Broadcast && !broadcastOK {
		return 0, syscall.EACCES // SO_BROADCAST not set
	}
	fl.Src = res.Src
	return s.xmit(ip, p, fl)
}

// xmit is udp_send_skb: build the datagram of p for the routed flow fl
// (fl.Src set) and hand it to ip, the network layer of its family. The
// checksum is the same sum over either family's pseudo-header (RFC 768,
// RFC 8200 §8.1, where it is mandatory: never sent as zero).
func (s *Socket) xmit(ip family, p []byte, fl route.Flow) (int, error) {
	dst := fl.Dst
	n := header.UDPSize + len(p)
	skb := buf.Alloc(buf.MaxHeadroom, n)
	u := header.UDP(skb.Put(n))
	copy(u[header.UDPSize:], p)
	u.Encode(header.UDPFields{SrcPort: fl.SrcPort, DstPort: fl.DstPort, Length: uint16(n)})
	// RFC 768: the checksum covers the pseudo header, the UDP header and
	// the data; a computed zero is sent as all ones (SetChecksum).
	u.SetChecksum(fl.Src, dst)
	skb.SetTransportHeader()
	skb.Drops = &s.p.drops

	if err := ip.QueueXmit(skb, fl); err != nil {
		if errors.Is(err, syscall.ENOBUFS) {
			// udp_send_skb: without IP_RECVERR ENOBUFS is counted, not reported.
			s.p.count(SndbufErrors)
			return len(p), nil
		}
		return 0, errnoOf(err)
	}
	s.p.count(OutDatagrams)
	return len(p), nil
}

// sendCheckLocked reports why a send cannot start: closed, a pending
// error (sock_alloc_send_pskb's sock_error), or a passed write deadline.
func (s *Socket) sendCheckLocked() error {
	if s.closed {
		return net.ErrClosed
	}
	if err := s.sockError(); err != nil {
		return err
	}
	if !s.wdeadline.IsZero() && !s.p.clk.Now().Before(s.wdeadline) {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// errnoOf unwraps a lower layer's error to its errno when it has one.
func errnoOf(err error) error {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return err
}

// RecvFrom receives one datagram into p, blocking until one arrives, the
// read deadline passes, an error is reported or the socket is closed. A
// datagram longer than p is truncated and the rest discarded.
func (s *Socket) RecvFrom(p []byte) (int, netip.AddrPort, error) {
	n, m, err := s.RecvMsg(p, 0)
	return n, m.From, err
}

// Recv is RecvFrom without the source.
func (s *Socket) Recv(p []byte) (int, error) {
	n, _, err := s.RecvMsg(p, 0)
	return n, err
}

// RecvMsg is udp_recvmsg: RecvFrom with flags and the datagram's
// metadata. With MsgDontWait it returns EAGAIN instead of blocking.
func (s *Socket) RecvMsg(p []byte, flags Flags) (int, Meta, error) {
	return s.RecvMsgHeader(p, nil, flags)
}

// Header is the start of a received datagram as it arrived: its IPv4
// header, options included (or its IPv6 header and extension headers, as
// far as B holds), and its UDP header, the part an ICMP error
// about it quotes first (RFC 792, RFC 1122 §3.2.2). The proxy keeps it to
// quote what the pod sent when the host reports an error for the
// datagram it relayed.
type Header struct {
	B [header.IPv4MaxSize + header.UDPSize]byte
	N int // bytes of B in use
	// CsumPartial: the UDP checksum field holds only the pseudo-header
	// sum (the sender's link offloads it, buf.CsumPartial); whoever quotes
	// the header completes it over the whole datagram, as the sender's
	// NIC would have on a wire.
	CsumPartial bool
}

// Bytes is the header in use.
func (h *Header) Bytes() []byte { return h.B[:h.N] }

// RecvMsgHeader is RecvMsg that also copies the datagram's IPv4 and UDP
// headers into h (nil: not wanted).
func (s *Socket) RecvMsgHeader(p []byte, h *Header, flags Flags) (int, Meta, error) {
	s.mu.Lock()
	for {
		if err := s.sockError(); err != nil {
			s.mu.Unlock()
			return 0, Meta{}, err
		}
		if skb := s.rcvq.Front(); skb != nil {
			if flags&MsgPeek == 0 {
				s.rcvq.PopFront()
				s.rmem -= truesize(skb)
			}
			s.mu.Unlock()
			n := copy(p, skb.Bytes())
			m := s.p.metaOf(skb)
			m.Truncated = n < m.Len
			if h != nil {
				h.from(skb)
			}
			if flags&MsgPeek == 0 {
				skb.Consume()
				// Linux counts InDatagrams here, in udp_recvmsg.
				s.p.count(InDatagrams)
			}
			return n, m, nil
		}
		if s.closed {
			s.mu.Unlock()
			return 0, Meta{}, net.ErrClosed
		}
		if flags&MsgDontWait != 0 {
			s.mu.Unlock()
			return 0, Meta{}, syscall.EAGAIN
		}
		if !s.rdeadline.IsZero() {
			if !s.p.clk.Now().Before(s.rdeadline) {
				s.mu.Unlock()
				return 0, Meta{}, os.ErrDeadlineExceeded
			}
			if !s.timer.Deadline().Equal(s.rdeadline) {
				s.timer.ResetAt(s.rdeadline)
			}
		}
		s.cond.Wait()
	}
}

// from copies the headers of a queued datagram: its network header runs
// on past the pulled UDP header to the payload.
func (h *Header) from(skb *buf.SKB) {
	nh := skb.NetworkHeader()
	n := 0
	switch {
	case len(nh) >= header.IPv6MinSize && nh[0]>>4 == 6:
		// The IPv6 header, extension headers and the UDP header.
		off := skb.TransportOffset() - skb.NetworkOffset()
		if off+header.UDPSize <= min(len(h.B), len(nh)) {
			n = off + header.UDPSize
			break
		}
		// Extension headers too long for B: the IPv6 header naming UDP
		// next, its payload length less theirs, and the UDP header, so
		// the quote still parses and names the flow (RFC 4443 §2.4(c)
		// asks for as much as fits, which this is the start of).
		if off < header.IPv6MinSize || off+header.UDPSize > len(nh) {
			break
		}
		n = copy(h.B[:], nh[:header.IPv6MinSize])
		ip := header.IPv6(h.B[:n])
		ip.SetNextHeader(header.ProtoUDP)
		ip.SetPayloadLen(ip.PayloadLen() - (off - header.IPv6MinSize))
		h.N = n + copy(h.B[n:], nh[off:off+header.UDPSize])
		h.CsumPartial = skb.Csum == buf.CsumPartial
		return
	case len(nh) >= header.IPv4MinSize:
		n = min(header.IPv4(nh).HeaderLen()+header.UDPSize, len(nh), len(h.B))
	}
	h.N = copy(h.B[:], nh[:n])
	h.CsumPartial = skb.Csum == buf.CsumPartial
}

// metaOf reads the addresses enqueue left in the control block. With
// MsgPeek the SKB is still queued, but nothing else writes its CB. A
// link-local IPv6 address gets the zone of the NIC it came in on (RFC
// 4007 §6), so a reply to it finds its link.
func (p *Proto) metaOf(skb *buf.SKB) Meta {
	var src, dst netip.Addr
	if nh := skb.NetworkHeader(); len(nh) >= header.IPv6MinSize && nh[0]>>4 == 6 {
		src, dst = header.IPv6(nh).Src(), header.IPv6(nh).Dst()
		src, dst = p.withZone(src, skb.InNIC), p.withZone(dst, skb.InNIC)
	} else {
		src = netip.AddrFrom4([4]byte(skb.CB[cbSrc : cbSrc+4]))
		dst = netip.AddrFrom4([4]byte(skb.CB[cbDst : cbDst+4]))
	}
	return Meta{
		From: netip.AddrPortFrom(src, binary.BigEndian.Uint16(skb.CB[cbSport:])),
		To:   netip.AddrPortFrom(dst, binary.BigEndian.Uint16(skb.CB[cbDport:])),
		NIC:  skb.InNIC,
		Len:  skb.Len(),
	}
}

// SetReadDeadline sets the instant, on the stack's clock, after which
// receives fail with os.ErrDeadlineExceeded; the zero time clears it.
// Blocked receivers re-evaluate at once.
func (s *Socket) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	s.rdeadline = t
	if t.IsZero() {
		s.timer.Stop()
	}
	s.cond.Broadcast()
	return nil
}

// SetWriteDeadline sets the instant after which sends fail with
// os.ErrDeadlineExceeded. Sends never block, so it is only checked.
func (s *Socket) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	s.wdeadline = t
	return nil
}

// SetDeadline sets both deadlines.
func (s *Socket) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	return s.SetWriteDeadline(t)
}

// SetReadBuffer sets the receive queue bound in bytes (SO_RCVBUF),
// clamped to [MinRcvBuf, MaxRcvBuf]. Unlike Linux the value is not doubled.
func (s *Socket) SetReadBuffer(bytes int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcvbuf = min(max(bytes, MinRcvBuf), MaxRcvBuf)
	return nil
}

// SetTTL sets the TTL of sent datagrams (IP_TTL); 0 restores the default.
func (s *Socket) SetTTL(ttl uint8) {
	s.mu.Lock()
	s.ttl = ttl
	s.mu.Unlock()
}

// SetTOS sets the TOS byte of sent datagrams (IP_TOS).
func (s *Socket) SetTOS(tos uint8) {
	s.mu.Lock()
	s.tos = tos
	s.mu.Unlock()
}

// SetBroadcast allows sending to broadcast addresses (SO_BROADCAST).
func (s *Socket) SetBroadcast(on bool) {
	s.mu.Lock()
	s.broadcast = on
	s.mu.Unlock()
}

// SetDontFragment sets DF on sent datagrams (IP_MTU_DISCOVER = IP_PMTUDISC_DO).
func (s *Socket) SetDontFragment(on bool) {
	s.mu.Lock()
	s.dontFrag = on
	s.mu.Unlock()
}

func (s *Socket) dontFragment() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dontFrag
}

// BindToDevice restricts output to one NIC (SO_BINDTODEVICE); 0 clears.
func (s *Socket) BindToDevice(nicID int) {
	s.mu.Lock()
	s.nic = nicID
	s.mu.Unlock()
}

// Drops is the number of datagrams dropped because the receive queue was
// full (sk_drops).
func (s *Socket) Drops() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drops
}

// Queued returns the datagrams and bytes charged in the receive queue.
func (s *Socket) Queued() (datagrams, bytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rcvq.Len(), s.rmem
}

// Close unbinds the socket, frees its queued datagrams and wakes every
// blocked caller with net.ErrClosed (udp_lib_close). Closing twice
// returns net.ErrClosed.
func (s *Socket) Close() error {
	s.p.mu.Lock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.p.mu.Unlock()
		return net.ErrClosed
	}
	s.closed = true
	bound := s.lport != 0
	s.mu.Unlock()
	if bound {
		s.p.unhashLocked(s)
	}
	if s.intercept && s.p.icpt == s {
		s.p.icpt = nil
	}
	s.p.mu.Unlock()

	s.mu.Lock()
	q := s.rcvq.TakeAll()
	s.rmem = 0
	s.timer.Stop()
	s.cond.Broadcast()
	s.mu.Unlock()
	q.Purge(DropClose)
	return nil
}
