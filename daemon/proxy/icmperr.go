package proxy

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// ICMP errors for relayed UDP (see the package doc, "UDP"). The host
// socket of a flow has IP_RECVERR on, so every ICMP error the host gets
// for a datagram we relayed is queued on it with its type, code, offender
// and the data of the datagram it quotes (struct sock_extended_err,
// ip_icmp_error). The pod gets an error of the same type and code quoting
// its own datagram as it arrived (RFC 792, RFC 1122 §3.2.2: IP header
// with options, identification and checksum, then the UDP header), with
// the data the host's error quoted after it: byte for byte what the pod
// sent, as the error's sender saw its copy. A NAT does the same to an
// error quoting a translated datagram.
//
// Which errors: destination unreachable (port and protocol unreachable
// from the destination itself, the others from the router that sent
// them, when it names a single host) and time exceeded (from that
// router). Not fragmentation needed (the host's path MTU, for which its
// kernel fragments our next datagrams: the pod's datagram was not too
// big for anything it can change), nor parameter problem (about our
// host's header), nor errors of local origin. Bounds: maxErrQueue entries
// drained per socket error; the relay's errors share the stack's ICMP
// rate limit.
//
// A flow over IPv6 (an AF_INET6 host socket, a dual-stack pod's IPv6
// destination) is the same with IPV6_RECVERR and ICMPv6 (RFC 4443 §3):
// destination unreachable (port unreachable, code 4, from the destination;
// the other codes from the router that sent them) and time exceeded; not
// packet too big (the host's path MTU) nor parameter problem. The quote is
// the pod's IPv6 header chain and UDP header as they arrived, then the
// data, cut to fit 1280 bytes (RFC 4443 §2.4(c)).

// maxErrQueue bounds the error-queue entries read at one socket error
// (the queue itself is bounded by the socket's receive buffer).
const maxErrQueue = 64

// sizeofSockExtendedErr is sizeof(struct sock_extended_err): errno,
// origin, type, code, pad, info, data.
const sizeofSockExtendedErr = int(unsafe.Sizeof(unix.SockExtendedErr{}))

// errQueueBuf is the data read with one error-queue entry: the quoted
// datagram's data, which an ICMP error carries at most 576 bytes of.
const errQueueBuf = 2048

// udpQuote is the header of the last datagram a pod sent on a flow: the
// intercept loop writes it per datagram, the flow's reader reads it when
// the host reports an error. The errors a host socket reports are about
// its latest datagrams, in practice the last (a request and its error).
type udpQuote struct {
	mu sync.Mutex
	h  udp.Header
}

func (q *udpQuote) set(h *udp.Header) {
	q.mu.Lock()
	q.h = *h
	q.mu.Unlock()
}

func (q *udpQuote) get() udp.Header {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.h
}

// setRecvErr turns IP_RECVERR on for a host socket, IPV6_RECVERR for an
// AF_INET6 one (nil: not a kernel socket, nothing to do).
func setRecvErr(raw controller) error {
	if raw == nil {
		return nil
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		d, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		level, opt := recvErrOpt(d)
		serr = unix.SetsockoptInt(int(fd), level, opt, 1)
	}); err != nil {
		return err
	}
	return serr
}

// recvErrOpt is the socket option that turns the error queue on for a
// socket of address family af: IPV6_RECVERR for AF_INET6, else
// IP_RECVERR.
func recvErrOpt(af int) (level, opt int) {
	if af == unix.AF_INET6 {
		return unix.IPPROTO_IPV6, unix.IPV6_RECVERR
	}
	return unix.IPPROTO_IP, unix.IP_RECVERR
}

// hostICMP is one entry of a host socket's error queue.
type hostICMP struct {
	errno     syscall.Errno
	origin    uint8
	typ, code uint8
	info      uint32
	offender  netip.Addr // invalid when the kernel named none
	data      []byte     // of the datagram the error quotes; valid during the callback
}

// drainErrQueue reads up to maxErrQueue entries of raw's error queue
// (recvmsg MSG_ERRQUEUE, never blocking) and hands each to fn. It
// returns how many it read.
func drainErrQueue(raw controller, fn func(hostICMP)) int {
	if raw == nil {
		return 0
	}
	b := make([]byte, errQueueBuf)
	oob := make([]byte, unix.CmsgSpace(sizeofSockExtendedErr+unix.SizeofSockaddrInet6))
	n := 0
	_ = raw.Control(func(fd uintptr) {
		for ; n < maxErrQueue; n++ {
			dn, on, _, _, err := unix.Recvmsg(int(fd), b, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EINTR) {
				n--
				continue
			}
			if err != nil {
				return // EAGAIN: the queue is empty
			}
			if e, ok := parseErrQueue(oob[:on]); ok {
				e.data = b[:dn]
				fn(e)
			}
		}
	})
	return n
}

// parseErrQueue reads the IP_RECVERR (or IPV6_RECVERR) control message:
// struct sock_extended_err, then the offender's sockaddr_in or
// sockaddr_in6 (SO_EE_OFFENDER).
func parseErrQueue(oob []byte) (hostICMP, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return hostICMP{}, false
	}
	for _, m := range msgs {
		v4 := m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR
		v6 := m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR
		if !v4 && !v6 || len(m.Data) < sizeofSockExtendedErr {
			continue
		}
		d := m.Data
		e := hostICMP{errno: syscall.Errno(binary.NativeEndian.Uint32(d[0:])), origin: d[4], typ: d[5], code: d[6],
			info: binary.NativeEndian.Uint32(d[8:])}
		sa := d[sizeofSockExtendedErr:]
		switch {
		case len(sa) >= 8 && binary.NativeEndian.Uint16(sa) == unix.AF_INET:
			e.offender = netip.AddrFrom4([4]byte(sa[4:8]))
		case len(sa) >= unix.SizeofSockaddrInet6 && binary.NativeEndian.Uint16(sa) == unix.AF_INET6:
			e.offender = netip.AddrFrom16([16]byte(sa[8:24])).Unmap() // family, port, flowinfo, then the address
		}
		return e, true
	}
	return hostICMP{}, false
}

// udpHostICMP handles an error the flow's host socket reported: every
// ICMP error queued on it goes to the pod as one of its own (see above).
// Without a queued entry (IP_RECVERR could not be set) ECONNREFUSED still
// means port unreachable (RFC 1122 §4.1.3.1).
func (e *Engine) udpHostICMP(u *udpFlow, err error) {
	n := drainErrQueue(u.ctl(), func(h hostICMP) {
		if h.origin != unix.SO_EE_ORIGIN_ICMP && h.origin != unix.SO_EE_ORIGIN_ICMP6 {
			return
		}
		e.relayUDPError(u, h.typ, h.code, h.offender, h.data)
	})
	if n == 0 && errors.Is(err, syscall.ECONNREFUSED) {
		if u.key.pod.Addr().Is6() {
			e.relayUDPError(u, header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, netip.Addr{}, nil)
		} else {
			e.relayUDPError(u, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, netip.Addr{}, nil)
		}
		return
	}
	if n == 0 {
		e.log.Debug("proxy: udp host socket error", "pod", u.key.pod, "dst", u.key.dst, "err", err)
	}
}

// relayedErrorSource is the address an ICMP error the host got about a
// relayed flow reaches the pod from, and whether it is passed on at all:
// port and protocol unreachable come from the destination itself, the
// other unreachables and time exceeded from the router that sent them
// (a usable unicast offender, else the destination), as a pod behind a
// real router would see them (RFC 792, RFC 1812 §4.3.2.4). Fragmentation
// needed is the host's own path MTU and is not passed on, nor is any
// other type. For an IPv6 destination typ and code are ICMPv6's (RFC
// 4443 §3): port unreachable (code 4) from the destination, the other
// destination unreachables and time exceeded from a global offender;
// packet too big (the host's path MTU) and parameter problem (about the
// host's packet) are not passed on.
func relayedErrorSource(dst netip.Addr, typ, code uint8, offender netip.Addr) (netip.Addr, bool) {
	if dst.Is6() && !dst.Is4In6() {
		switch {
		case typ == header.ICMPv6DstUnreachable && code == header.ICMPv6PortUnreachable:
			return dst, true
		case typ == header.ICMPv6DstUnreachable, typ == header.ICMPv6TimeExceeded:
			if offender.Is6() && !offender.Is4In6() && !offender.IsLoopback() && !offender.IsUnspecified() && !offender.IsLinkLocalUnicast() {
				return offender, true
			}
			return dst, true
		}
		return netip.Addr{}, false
	}
	switch {
	case typ == header.ICMPv4DstUnreachable && (code == header.ICMPv4PortUnreachable || code == header.ICMPv4ProtoUnreachable):
		return dst, true
	case typ == header.ICMPv4DstUnreachable && code != header.ICMPv4FragNeeded, typ == header.ICMPv4TimeExceeded:
		if offender.Is4() && !offender.IsLoopback() && !offender.IsUnspecified() {
			return offender, true
		}
		return dst, true
	}
	return netip.Addr{}, false
}

// portUnreachable reports a port unreachable of dst's ICMP family.
func portUnreachable(dst netip.Addr, typ, code uint8) bool {
	if dst.Is6() && !dst.Is4In6() {
		return typ == header.ICMPv6DstUnreachable && code == header.ICMPv6PortUnreachable
	}
	return typ == header.ICMPv4DstUnreachable && code == header.ICMPv4PortUnreachable
}

// relayUDPError sends the pod an ICMP error typ/code about its datagram
// on u, from the destination or the offender, quoting its header and
// data (the part of the datagram the host's error quoted).
func (e *Engine) relayUDPError(u *udpFlow, typ, code uint8, offender netip.Addr, data []byte) {
	from, ok := relayedErrorSource(u.key.dst.Addr(), typ, code, offender)
	if !ok {
		return
	}
	portUnreach := portUnreachable(u.key.dst.Addr(), typ, code)
	h := u.quote.get()
	if h.N == 0 && !portUnreach {
		return
	}
	// Counted before the send: the pod may act on the error before the
	// send returns.
	if portUnreach {
		e.c.udpPortUnreachables.Add(1)
	}
	e.c.udpICMPErrors.Add(1)
	var serr error
	if h.N == 0 {
		// No datagram header kept: the synthesized quote.
		serr = e.st.SendPortUnreachable(u.key.pod, u.key.dst)
	} else {
		serr = e.st.SendICMPErrorQuote(from, u.key.pod.Addr(), typ, code, 0, quoteOf(&h, data))
	}
	if serr != nil {
		e.c.udpICMPErrors.Add(^uint64(0))
		e.log.Debug("proxy: icmp error to pod failed", "pod", u.key.pod, "type", typ, "code", code, "err", serr)
	}
}

// quoteOf is the pod's datagram as an ICMP error quotes it: the header it
// arrived with, then data. A checksum the pod's link left to offload
// (udp.Header.CsumPartial) is completed when data is the whole payload,
// as the pod's NIC would have on a wire; a partial quote keeps the field.
func quoteOf(h *udp.Header, data []byte) []byte {
	q := make([]byte, 0, h.N+len(data))
	q = append(q, h.Bytes()...)
	q = append(q, data...)
	var hl int
	if len(q) > 0 && q[0]>>4 == 6 {
		// The IPv6 header chain: the UDP header follows it.
		u, err := header.IPv6SkipExtHeaders(q)
		if err != nil || u.Proto != header.ProtoUDP {
			return q
		}
		hl = u.Offset
	} else {
		hl = header.IPv4(q).HeaderLen()
	}
	if h.CsumPartial && len(q) >= hl+header.UDPSize {
		uh := header.UDP(q[hl:])
		if uh.Length() == len(q)-hl {
			sum := header.ChecksumFinal(header.Checksum(q[hl:], 0))
			if sum == 0 {
				sum = 0xffff // RFC 768
			}
			binary.BigEndian.PutUint16(q[hl+6:], sum)
		}
	}
	return q
}
