package ipv6

import (
	"fmt"
	"net/netip"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inet"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Proxy-mode ICMPv6, as ipv4's proxy.go: diverted echo requests go to an
// interceptor instead of being answered, and the proxy sends echo
// replies and ICMPv6 errors from the foreign address a pod talked to
// (route.Flow.Transparent).

// EchoRequest is a diverted ICMPv6 echo request (inet.EchoRequest: the
// same for both families).
type EchoRequest = inet.EchoRequest

// EchoFunc receives a diverted echo request (inet.EchoFunc). It must not
// block: it runs on the receiving NIC's goroutine.
type EchoFunc = inet.EchoFunc

// SetEchoInterceptor sets the function that receives diverted echo
// requests (skb.Mark has netfilter.MarkDivert and the destination is not
// ours); nil removes it, and they are then dropped and counted
// (Icmp6InEchoDivertDrops). Requests to our own addresses are answered
// as always.
func (l *Layer) SetEchoInterceptor(fn EchoFunc) { l.echo.Set(fn) }

// echoDiverted hands a diverted echo request to the interceptor. It
// consumes skb.
func (l *Layer) echoDiverted(skb *buf.SKB, m header.ICMPv6, src, dst netip.Addr) {
	fn := l.echo.Load()
	if fn == nil {
		l.count(IcmpInEchoDivertDrops)
		skb.Free(DropEchoNoInterceptor)
		return
	}
	l.count(IcmpInEchoDiverted)
	nh := skb.NetworkHeader()
	hl := min(skb.TransportOffset()-skb.NetworkOffset()+header.ICMPv6MinSize, len(nh))
	fn(EchoRequest{Src: src, Dst: dst, ID: m.ID(), Seq: m.Seq(), Payload: m.Payload(), Header: nh[:hl]})
	skb.Consume()
}

// maxEchoPayload is the most data an ICMPv6 echo reply carries.
const maxEchoPayload = header.IPv6MaxPayload - header.ICMPv6MinSize

// SendEchoReply sends an ICMPv6 Echo Reply (RFC 4443 §4.2) from src to
// dst; src need not be an address of the stack (the proxy answers a
// diverted request from the address it was sent to). Errors: EINVAL for
// addresses that are not unicast IPv6 (IPv4-mapped ones included),
// EMSGSIZE for a payload over 65527 bytes, and the routing errors.
func (l *Layer) SendEchoReply(src, dst netip.Addr, id, seq uint16, payload []byte) error {
	if !unicast6(src) || !unicast6(dst) {
		return syscall.EINVAL
	}
	if len(payload) > maxEchoPayload {
		return syscall.EMSGSIZE
	}
	n := header.ICMPv6MinSize + len(payload)
	skb := buf.Alloc(buf.MaxHeadroom, n)
	msg := header.ICMPv6(skb.Put(n))
	copy(msg[header.ICMPv6MinSize:], payload)
	msg.Encode(header.ICMPv6Fields{Type: header.ICMPv6EchoReply, RestOfHeader: header.EchoRest(id, seq)})
	msg.SetChecksum(src, dst)
	l.count(IcmpOutMsgs)
	l.count(IcmpOutEchoReplies)
	if err := l.QueueXmit(skb, route.Flow{Src: src, Dst: dst, Proto: header.ProtoICMPv6, Transparent: true}); err != nil {
		l.count(IcmpOutErrors)
		return err
	}
	return nil
}

// unicast6 reports a unicast IPv6 address that may appear in a header.
func unicast6(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && !a.IsMulticast() && !a.IsUnspecified() && !a.IsLoopback()
}

// ErrICMPRateLimited is SendICMPErrorQuote's answer when the ICMPv6 error
// rate limit held the message back.
var ErrICMPRateLimited = fmt.Errorf("ipv6: ICMPv6 error rate limited: %w", syscall.ENOBUFS)

// SendICMPErrorQuote sends an ICMPv6 error of type typ and code from src
// to dst whose body is quote: the IPv6 packet it is about (at least its
// header chain and 8 bytes of the upper layer, RFC 4443 §2.4(c)/(d)). The
// proxy synthesizes one where it holds no packet (a UDP flow relayed over
// a host socket). src need not be local (route.Flow.Transparent). The
// quote is cut so the message fits 1280 bytes, and the error is
// rate-limited like SendICMPError unless dst is ours
// (ErrICMPRateLimited). RFC 4443 §2.4(e) holds: EINVAL when typ is not an
// error, when dst or src is not one unicast node, or when quote is
// malformed, a non-first fragment, or itself an ICMPv6 error or Redirect.
func (l *Layer) SendICMPErrorQuote(src, dst netip.Addr, typ, code uint8, info uint32, quote []byte) error {
	if !unicast6(src) || !unicast6(dst) || !header.ICMPv6IsError(typ) {
		return syscall.EINVAL
	}
	u, err := header.IPv6SkipExtHeaders(quote)
	if err != nil || quote[0]>>4 != 6 || u.FragOffset != 0 || u.Offset+8 > len(quote) {
		return syscall.EINVAL
	}
	if u.Proto == header.ProtoICMPv6 {
		if t := quote[u.Offset]; header.ICMPv6IsError(t) || t == header.ICMPv6Redirect {
			return syscall.EINVAL
		}
	}
	if !l.fib.IsLocal(dst) && !l.icmpRL.Allow() {
		l.count(IcmpOutRateLimited)
		return ErrICMPRateLimited
	}
	return l.xmitICMPError(route.Flow{Src: src, Dst: dst, Proto: header.ProtoICMPv6, Transparent: true}, typ, code, info, quote)
}
