package ipv4

import (
	"net/netip"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// icmpErrorQuoteMax bounds an ICMP error: RFC 1812 §4.3.2.3 "the ICMP
// datagram SHOULD contain as much of the original datagram as possible
// without the length of the ICMP datagram exceeding 576 bytes" (Linux does
// the same). RFC 792's minimum is the header plus 8 bytes.
const icmpErrorMax = 576

// icmpTOS is the TOS of ICMP errors: RFC 1812 §4.3.2.5, precedence 6
// (internetwork control), as IPTOS_PREC_INTERNETCONTROL.
const icmpTOS = 0xc0

// icmpRcv is icmp_rcv: verify, count and dispatch by type. It consumes skb,
// whose bytes start at the ICMP header.
func (l *Layer) icmpRcv(skb *buf.SKB) {
	l.count(IcmpInMsgs)
	m, err := header.CheckICMPv4(skb.Bytes())
	if err != nil {
		l.count(IcmpInErrors)
		skb.Free(DropICMPInvalid)
		return
	}
	// RFC 792: the checksum covers the whole ICMP message.
	if skb.Csum != buf.CsumUnnecessary && !m.ChecksumValid() {
		l.count(IcmpInCsumErrors)
		l.count(IcmpInErrors)
		skb.Free(DropICMPCsum)
		return
	}
	l.count(InDelivers)
	switch m.Type() {
	case header.ICMPv4Echo:
		l.count(IcmpInEchos)
		l.icmpEcho(skb, m)
	case header.ICMPv4DstUnreachable:
		l.count(IcmpInDestUnreachs)
		l.icmpUnreach(skb, m)
	case header.ICMPv4TimeExceeded:
		l.count(IcmpInTimeExcds)
		l.icmpUnreach(skb, m)
	case header.ICMPv4ParamProblem:
		l.count(IcmpInParmProbs)
		l.icmpUnreach(skb, m)
	case header.ICMPv4SourceQuench:
		// RFC 6633 §3: hosts MUST silently discard Source Quench.
		l.count(IcmpInSrcQuenchs)
		skb.Free(DropICMPIgnored)
	case header.ICMPv4Redirect:
		// RFC 1812 §5.2.7.2: a router does not update its routes from
		// redirects; we route, so we ignore them.
		l.count(IcmpInRedirects)
		skb.Free(DropICMPIgnored)
	default:
		if m.Type() == header.ICMPv4EchoReply {
			l.count(IcmpInEchoReps)
		}
		// Echo replies and informational types go to a registered ICMP
		// handler (ping sockets), if any.
		if p := l.protos[header.ProtoICMP].Load(); p != nil && p.Rcv != nil {
			p.Rcv(skb)
			return
		}
		skb.Consume()
	}
}

// icmpEcho is icmp_echo: RFC 792 / RFC 1122 §3.2.2.6, answer an Echo
// Request with an Echo Reply carrying the same identifier, sequence and
// data. The request's buffer is turned around in place. IP options of the
// request are not reflected (the reply has none): §3.2.2.6 says Record
// Route and Timestamp SHOULD be updated and included and a source route
// reversed; we take the liberty of omitting them, as we process no IP
// options at all.
func (l *Layer) icmpEcho(skb *buf.SKB, m header.ICMPv4) {
	// RFC 1122 §3.2.2.6: "An ICMP Echo Request destined to an IP
	// broadcast or IP multicast address MAY be silently discarded"
	// (icmp_echo_ignore_broadcasts=1).
	if skb.CB[cbFlags]&flagBroadcast != 0 {
		skb.Free(DropICMPIgnored)
		return
	}
	if m.Code() != 0 {
		l.count(IcmpInErrors)
		skb.Free(DropICMPInvalid)
		return
	}
	ih := header.IPv4(skb.NetworkHeader())
	src, dst, tos := ih.Src(), ih.Dst(), ih.TOS()
	if skb.Mark&netfilter.MarkDivert != 0 && !l.fib.IsLocal(dst) {
		// A diverted request to a foreign address: the proxy's to
		// answer (proxy.go), not ours.
		l.echoDiverted(skb, m, src, dst)
		return
	}
	rest := m.RestOfHeader()
	skb.Writable()
	r := header.ICMPv4(skb.Bytes())
	r.Encode(header.ICMPv4Fields{Type: header.ICMPv4EchoReply, Code: 0, RestOfHeader: rest})
	r.SetChecksum()
	skb.Csum = buf.CsumNone
	skb.GSOSize, skb.GSOType = 0, buf.GSONone
	skb.Mark = 0
	l.count(IcmpOutMsgs)
	l.count(IcmpOutEchoReps)
	if err := l.QueueXmit(skb, route.Flow{Src: dst, Dst: src, Proto: header.ProtoICMP, TOS: tos}); err != nil {
		l.count(IcmpOutErrors)
	}
}

// unreachConvert is icmp_err_convert[] for Destination Unreachable codes
// 0–15: the errno a socket reports and whether the error is hard (RFC 1122
// §3.2.2.1 and §4.2.3.9: net, host and source-route unreachable are soft,
// port and protocol unreachable hard; Linux deems the "unknown",
// "isolated", administratively prohibited and precedence codes hard too).
// Code 4, fragmentation needed, is path MTU news rather than either.
var unreachConvert = [16]struct {
	errno syscall.Errno
	hard  bool
}{
	{syscall.ENETUNREACH, false},  // 0 net unreachable
	{syscall.EHOSTUNREACH, false}, // 1 host unreachable
	{syscall.ENOPROTOOPT, true},   // 2 protocol unreachable
	{syscall.ECONNREFUSED, true},  // 3 port unreachable
	{syscall.EMSGSIZE, false},     // 4 fragmentation needed and DF set
	{syscall.EOPNOTSUPP, false},   // 5 source route failed
	{syscall.ENETUNREACH, true},   // 6 destination network unknown
	{syscall.EHOSTDOWN, true},     // 7 destination host unknown
	{syscall.ENONET, true},        // 8 source host isolated
	{syscall.ENETUNREACH, true},   // 9 network administratively prohibited
	{syscall.EHOSTUNREACH, true},  // 10 host administratively prohibited
	{syscall.ENETUNREACH, false},  // 11 network unreachable for TOS
	{syscall.EHOSTUNREACH, false}, // 12 host unreachable for TOS
	{syscall.EHOSTUNREACH, true},  // 13 communication administratively prohibited
	{syscall.EHOSTUNREACH, true},  // 14 host precedence violation
	{syscall.EHOSTUNREACH, true},  // 15 precedence cutoff in effect
}

// icmpUnreach is icmp_unreach + icmp_socket_deliver: find the quoted
// datagram and report the error, as a header.ICMPError with its type,
// code, errno and hardness, to its protocol's Err handler. Errors quote
// the offending IP header and at least 8 bytes of its payload (RFC 792;
// RFC 1122 §3.2.2: the transport uses them to find its connection).
func (l *Layer) icmpUnreach(skb *buf.SKB, m header.ICMPv4) {
	e := header.ICMPError{Type: m.Type(), Code: m.Code()}
	switch m.Type() {
	case header.ICMPv4DstUnreachable:
		if int(e.Code) >= len(unreachConvert) {
			l.count(IcmpInErrors)
			skb.Free(DropICMPInvalid)
			return
		}
		e.Errno, e.Hard = unreachConvert[e.Code].errno, unreachConvert[e.Code].hard
		if e.Code == header.ICMPv4FragNeeded {
			// RFC 1191 §4: the next-hop MTU in the low 16 bits.
			e.Info = uint32(m.MTU())
		}
	case header.ICMPv4TimeExceeded:
		// icmp_err_convert: Linux reports time exceeded as a soft
		// EHOSTUNREACH (RFC 1122 §4.2.3.9: "MUST NOT abort").
		e.Errno = syscall.EHOSTUNREACH
	default: // parameter problem: hard (RFC 1122 §4.2.3.9)
		e.Errno, e.Hard = syscall.EPROTO, true
		e.Info = uint32(m.Pointer())
	}
	inner := m.Payload()
	if len(inner) < header.IPv4MinSize {
		l.count(IcmpInErrors)
		skb.Free(DropICMPInvalid)
		return
	}
	iv := header.IPv4(inner)
	hl := iv.HeaderLen()
	if hl < header.IPv4MinSize || len(inner) < hl+8 {
		l.count(IcmpInErrors)
		skb.Free(DropICMPInvalid)
		return
	}
	p := l.protos[iv.Protocol()].Load()
	if p == nil || p.Err == nil {
		skb.Free(DropICMPNoHandler)
		return
	}
	skb.Pull(header.ICMPv4MinSize)
	skb.SetNetworkHeader()
	skb.SetTransportHeaderAt(hl)
	p.Err(skb, e)
	skb.Consume()
}

// SendICMPError is icmp_send: report a problem with the packet whose IPv4
// header is skb.NetworkHeader() to its sender. It does not consume skb.
// info is the 32-bit rest of the ICMP header: the next-hop MTU for
// Fragmentation Needed, the pointer shifted left 24 bits for Parameter
// Problem, 0 otherwise.
//
// RFC 1122 §3.2.2: never about an ICMP error, a fragment other than the
// first, a link-layer or IP broadcast or multicast, or a source that does
// not name a single host. Errors are rate-limited by one token bucket per
// Layer (RFC 1812 §4.3.2.8; icmp_global_allow), except errors to our own
// addresses (the loopback exemption of icmpv4_xrlim_allow). The source is
// the offending packet's destination when that is ours, else the primary
// address of the NIC it arrived on (icmp_errors_use_inbound_ifaddr, so a
// traceroute sees the hop's interface), else the routed source.
func (l *Layer) SendICMPError(skb *buf.SKB, typ, code uint8, info uint32) {
	pkt := skb.NetworkHeader()
	if len(pkt) < header.IPv4MinSize || linkBroadcast(skb) {
		return
	}
	ih := header.IPv4(pkt)
	hl := ih.HeaderLen()
	if hl < header.IPv4MinSize || hl > len(pkt) {
		return
	}
	if ih.FragOffset() != 0 {
		return
	}
	src, dst := ih.Src(), ih.Dst()
	if !singleHost(src) || l.fib.IsBroadcast(src) || !dst.Is4() || dst.IsMulticast() || l.fib.IsBroadcast(dst) {
		return
	}
	if ih.Protocol() == header.ProtoICMP {
		inner, err := header.CheckICMPv4(pkt[hl:])
		if err != nil || header.ICMPv4IsError(inner.Type()) || inner.Type() > icmpMaxType {
			return
		}
	}
	toSelf := l.fib.IsLocal(src)
	if !toSelf && !l.icmpRL.Allow() {
		l.count(IcmpOutRateLimited)
		return
	}
	var saddr netip.Addr
	switch {
	case l.fib.IsLocal(dst):
		saddr = dst
	case skb.InNIC != 0:
		saddr, _ = l.fib.PrimaryAddr(skb.InNIC)
	}
	n := len(pkt)
	if t := ih.TotalLen(); t >= hl && t < n {
		n = t
	}
	l.xmitICMPError(route.Flow{Src: saddr, Dst: src, Proto: header.ProtoICMP, TOS: icmpTOS}, typ, code, info, pkt[:n])
}

// xmitICMPError builds an ICMP error of typ/code quoting quote (cut to
// the RFC 1812 §4.3.2.3 maximum), counts it and sends it on fl.
func (l *Layer) xmitICMPError(fl route.Flow, typ, code uint8, info uint32, quote []byte) error {
	n := min(len(quote), icmpErrorMax-header.IPv4MinSize-header.ICMPv4MinSize)
	e := buf.Alloc(buf.MaxHeadroom, header.ICMPv4MinSize+n)
	msg := header.ICMPv4(e.Put(header.ICMPv4MinSize + n))
	copy(msg[header.ICMPv4MinSize:], quote[:n])
	msg.Encode(header.ICMPv4Fields{Type: typ, Code: code, RestOfHeader: info})
	msg.SetChecksum()
	l.count(IcmpOutMsgs)
	switch typ {
	case header.ICMPv4DstUnreachable:
		l.count(IcmpOutDestUnreachs)
	case header.ICMPv4TimeExceeded:
		l.count(IcmpOutTimeExcds)
	case header.ICMPv4ParamProblem:
		l.count(IcmpOutParmProbs)
	}
	if err := l.QueueXmit(e, fl); err != nil {
		l.count(IcmpOutErrors)
		return err
	}
	return nil
}

// icmpMaxType is NR_ICMP_TYPES: types above it are unknown and treated as
// errors for the "never about an error" rule.
const icmpMaxType = 18

// singleHost reports whether a names one host: RFC 1122 §3.2.2 excludes
// "a zero address, a loopback address, a broadcast address, a multicast
// address, or a Class E address".
func singleHost(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	b := a.As4()
	return b[0] != 0 && b[0] != 127 && b[0] < 224
}
