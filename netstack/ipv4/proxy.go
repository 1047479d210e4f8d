package ipv4

import (
	"fmt"
	"net/netip"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inet"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Proxy-mode ICMP (see the package doc, "Proxy mode"): diverted echo
// requests go to an interceptor instead of being answered, and the proxy
// sends echo replies and ICMP errors from the foreign address a pod
// talked to (route.Flow.Transparent).

// EchoRequest is a diverted ICMP echo request (inet.EchoRequest: the
// same for both families).
type EchoRequest = inet.EchoRequest

// EchoFunc receives a diverted echo request (inet.EchoFunc). It must not
// block: it runs on the receiving NIC's goroutine.
type EchoFunc = inet.EchoFunc

// SetEchoInterceptor sets the function that receives diverted echo
// requests (skb.Mark has netfilter.MarkDivert and the destination is not
// ours). nil removes it: diverted echo requests are then dropped and
// counted (IcmpExtInEchoDivertDrops, ICMP_ECHO_NO_INTERCEPTOR). Echo
// requests to our own addresses are answered as before, diverted or not.
func (l *Layer) SetEchoInterceptor(fn EchoFunc) { l.echo.Set(fn) }

// echoDiverted hands a diverted echo request to the interceptor. It
// consumes skb.
func (l *Layer) echoDiverted(skb *buf.SKB, m header.ICMPv4, src, dst netip.Addr) {
	fn := l.echo.Load()
	if fn == nil {
		l.count(IcmpInEchoDivertDrops)
		skb.Free(DropEchoNoInterceptor)
		return
	}
	l.count(IcmpInEchoDiverted)
	nh := skb.NetworkHeader()
	hl := header.IPv4(nh).HeaderLen()
	fn(EchoRequest{Src: src, Dst: dst, ID: m.ID(), Seq: m.Seq(), Payload: m.Payload(),
		Header: nh[:hl+header.ICMPv4MinSize]})
	skb.Consume()
}

// maxEchoPayload is the most data an echo reply carries over IPv4.
const maxEchoPayload = 0xffff - header.IPv4MinSize - header.ICMPv4MinSize

// SendEchoReply sends an ICMP Echo Reply (RFC 792: type 0 with the
// request's identifier, sequence number and data) from src to dst. src
// need not be an address of the stack: the proxy answers a diverted
// request from the address it was sent to (route.Flow.Transparent).
// Errors: EINVAL for a non-IPv4 address or src not naming a single host,
// EMSGSIZE for a payload over 65507 bytes, and the routing errors.
func (l *Layer) SendEchoReply(src, dst netip.Addr, id, seq uint16, payload []byte) error {
	if !src.Is4() || !dst.Is4() || !singleHost(src) {
		return syscall.EINVAL
	}
	if len(payload) > maxEchoPayload {
		return syscall.EMSGSIZE
	}
	n := header.ICMPv4MinSize + len(payload)
	skb := buf.Alloc(buf.MaxHeadroom, n)
	msg := header.ICMPv4(skb.Put(n))
	copy(msg[header.ICMPv4MinSize:], payload)
	msg.Encode(header.ICMPv4Fields{Type: header.ICMPv4EchoReply, RestOfHeader: uint32(id)<<16 | uint32(seq)})
	msg.SetChecksum()
	l.count(IcmpOutMsgs)
	l.count(IcmpOutEchoReps)
	if err := l.QueueXmit(skb, route.Flow{Src: src, Dst: dst, Proto: header.ProtoICMP, Transparent: true}); err != nil {
		l.count(IcmpOutErrors)
		return err
	}
	return nil
}

// ErrICMPRateLimited is SendICMPErrorQuote's answer when the ICMP error
// rate limit (Config.ICMPRateLimit) held the message back.
var ErrICMPRateLimited = fmt.Errorf("ipv4: ICMP error rate limited: %w", syscall.ENOBUFS)

// SendICMPErrorQuote sends an ICMP error of type typ and code from src to
// dst whose payload is quote: the IPv4 header and at least the first 8
// bytes of the datagram it is about (RFC 792; RFC 1122 §3.2.2). The proxy
// uses it where it holds no packet to quote (a UDP flow relayed over a
// host socket) and synthesizes one. src need not be local
// (route.Flow.Transparent). info is the rest of the ICMP header, as for
// SendICMPError. The quote is truncated so the message fits 576 bytes
// (RFC 1812 §4.3.2.3), and rate-limited like SendICMPError (RFC 1812
// §4.3.2.8) unless dst is ours: ErrICMPRateLimited.
//
// RFC 1122 §3.2.2's exclusions hold: EINVAL when dst does not name a
// single host, when typ is not an error type, or when quote is malformed
// or itself quotes an ICMP error or a non-initial fragment.
func (l *Layer) SendICMPErrorQuote(src, dst netip.Addr, typ, code uint8, info uint32, quote []byte) error {
	if !src.Is4() || !dst.Is4() || !singleHost(src) || !singleHost(dst) || l.fib.IsBroadcast(dst) || !header.ICMPv4IsError(typ) {
		return syscall.EINVAL
	}
	if len(quote) < header.IPv4MinSize {
		return syscall.EINVAL
	}
	ih := header.IPv4(quote)
	hl := ih.HeaderLen()
	if quote[0]>>4 != 4 || hl < header.IPv4MinSize || len(quote) < hl+8 || ih.FragOffset() != 0 {
		return syscall.EINVAL
	}
	if ih.Protocol() == header.ProtoICMP {
		if inner, err := header.CheckICMPv4(quote[hl:]); err != nil || header.ICMPv4IsError(inner.Type()) || inner.Type() > icmpMaxType {
			return syscall.EINVAL
		}
	}
	if !l.fib.IsLocal(dst) && !l.icmpRL.Allow() {
		l.count(IcmpOutRateLimited)
		return ErrICMPRateLimited
	}
	return l.xmitICMPError(route.Flow{Src: src, Dst: dst, Proto: header.ProtoICMP, TOS: icmpTOS, Transparent: true}, typ, code, info, quote)
}
