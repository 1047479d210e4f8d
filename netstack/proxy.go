package netstack

import (
	"context"
	"net/netip"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// Proxy mode: the transparent-proxy primitives of the stack, wrapped for
// the daemon's relay engine. A netfilter hook (the daemon's, in
// PREROUTING after conntrack) calls Netfilter.Divert on the first packet
// of a flow; that flow is then delivered locally with its destination
// kept, and:
//
//   - TCP: a SYN matching no connection goes to the Interceptor
//     (InterceptTCP); nothing answers it until Request.Accept (SYN,ACK from
//     the original destination) or Request.Refuse (RST).
//   - UDP: datagrams matching no connected socket go to the intercept
//     socket (InterceptUDP), which answers with SendFromTo.
//   - ICMP echo requests go to the echo interceptor (InterceptEcho), which
//     answers with SendEchoReply; ICMPv6 ones to InterceptEcho6's.
//
// The other way, DialTCPTransparent and DialUDPTransparent open flows into
// a pod from an address that is not the stack's (a port-mapping client's
// own address); their packets carry netfilter.MarkDivert so conntrack
// diverts the pod's replies back to them. Both need EnableNetfilter.
//
// Every primitive takes IPv6 as well as IPv4 (the divert hook is then on
// Hooks6): the flow's family is its addresses', IPv4-mapped addresses are
// IPv4, and SendEchoReply, SendICMPErrorQuote and SendPortUnreachable
// answer in ICMPv6 (RFC 4443) when the destination is IPv6.

// InterceptTCP makes a new tcp.Interceptor the receiver of diverted TCP
// SYNs, with at most maxPending unresolved requests (<= 0: 4096,
// tcp.DefaultMaxPending). tcp.ErrInterceptorBusy when one is open.
func (s *Stack) InterceptTCP(maxPending int) (*tcp.Interceptor, error) {
	return s.tcp.Intercept(maxPending)
}

// InterceptUDP returns the stack's UDP intercept socket (udp.Proto.
// Intercept): RecvMsg gives each diverted datagram with Meta.From = the pod
// and Meta.To = its original destination; SendFromTo answers from that
// destination. The *udp.Socket is returned rather than a socket.PacketConn
// because the relay needs Meta.To and SendFromTo. EADDRINUSE when one is
// open; Close releases it.
func (s *Stack) InterceptUDP() (*udp.Socket, error) { return s.udp.Intercept() }

// InterceptEcho sets the function receiving diverted ICMP echo requests;
// nil removes it (they are dropped and counted). Requests to the stack's
// own addresses are still answered by the stack.
func (s *Stack) InterceptEcho(fn ipv4.EchoFunc) { s.ip.SetEchoInterceptor(fn) }

// InterceptEcho6 is InterceptEcho for ICMPv6 echo requests (RFC 4443
// §4.1); SendEchoReply answers them.
func (s *Stack) InterceptEcho6(fn ipv6.EchoFunc) { s.ip6.SetEchoInterceptor(fn) }

// SendEchoReply sends an ICMP echo reply (RFC 792) from src, which need
// not be an address of the stack, to dst; for an IPv6 dst an ICMPv6 Echo
// Reply (RFC 4443 §4.2, ipv6.Layer.SendEchoReply).
func (s *Stack) SendEchoReply(src, dst netip.Addr, id, seq uint16, payload []byte) error {
	if dst.Is6() && !dst.Is4In6() {
		return s.ip6.SendEchoReply(src, dst, id, seq, payload)
	}
	return s.ip.SendEchoReply(src, dst, id, seq, payload)
}

// SendICMPErrorQuote sends an ICMP error of type typ and code from src,
// which need not be an address of the stack, to dst, quoting quote: the
// datagram dst sent, as it sent it (RFC 792, RFC 1122 §3.2.2; cut to fit
// 576 bytes, RFC 1812 §4.3.2.3). The relay calls it with the header the
// pod's datagram arrived with and the data the host's error quoted.
// Errors and rate limit as ipv4.Layer.SendICMPErrorQuote. For an IPv6
// dst, typ and code are ICMPv6's and quote an IPv6 packet
// (ipv6.Layer.SendICMPErrorQuote: cut to fit 1280 bytes, RFC 4443
// §2.4(c)).
func (s *Stack) SendICMPErrorQuote(src, dst netip.Addr, typ, code uint8, info uint32, quote []byte) error {
	if dst.Is6() && !dst.Is4In6() {
		return s.ip6.SendICMPErrorQuote(src, dst, typ, code, info, quote)
	}
	return s.ip.SendICMPErrorQuote(src, dst, typ, code, info, quote)
}

// SendPortUnreachable tells pod that its UDP datagram pod → orig found no
// port (RFC 1122 §4.1.3.1: "UDP SHOULD send an ICMP Port Unreachable"):
// ICMP type 3 code 3 from orig.Addr(), quoting a synthesized IPv4 and UDP
// header of pod → orig (RFC 792: the header and the first 8 data bytes,
// all the pod's transport needs to find its socket). It is the fallback of
// a relay that holds no header of the pod's own (SendICMPErrorQuote
// quotes that). Rate-limited with the stack's other ICMP errors
// (ipv4.ErrICMPRateLimited).
//
// Over IPv6 it is ICMPv6 Destination Unreachable code 4 (RFC 4443 §3.1:
// "the transport protocol has no listener"), quoting a synthesized IPv6
// and UDP header, rate-limited as ipv6's (ipv6.ErrICMPRateLimited).
func (s *Stack) SendPortUnreachable(pod, orig netip.AddrPort) error {
	if pod.Addr().Is6() && orig.Addr().Is6() && !pod.Addr().Is4In6() && !orig.Addr().Is4In6() {
		var q [header.IPv6MinSize + header.UDPSize]byte
		header.IPv6(q[:]).Encode(header.IPv6Fields{PayloadLen: header.UDPSize, NextHeader: header.ProtoUDP,
			HopLimit: ipv6.DefaultHopLimit, Src: pod.Addr(), Dst: orig.Addr()})
		header.UDP(q[header.IPv6MinSize:]).Encode(header.UDPFields{SrcPort: pod.Port(), DstPort: orig.Port(),
			Length: header.UDPSize})
		return s.ip6.SendICMPErrorQuote(orig.Addr(), pod.Addr(), header.ICMPv6DstUnreachable,
			header.ICMPv6PortUnreachable, 0, q[:])
	}
	if !pod.Addr().Is4() || !orig.Addr().Is4() {
		return syscall.EAFNOSUPPORT
	}
	var q [header.IPv4MinSize + header.UDPSize]byte
	ih := header.IPv4(q[:])
	ih.Encode(header.IPv4Fields{TotalLen: uint16(len(q)), TTL: ipv4.DefaultTTL, Protocol: header.ProtoUDP,
		Src: pod.Addr(), Dst: orig.Addr()})
	ih.SetChecksum()
	header.UDP(q[header.IPv4MinSize:]).Encode(header.UDPFields{SrcPort: pod.Port(), DstPort: orig.Port(),
		Length: header.UDPSize})
	return s.ip.SendICMPErrorQuote(orig.Addr(), pod.Addr(), header.ICMPv4DstUnreachable,
		header.ICMPv4PortUnreachable, 0, q[:])
}

// DialTCPTransparent connects from laddr, which need not be an address of
// the stack (port 0 = ephemeral), to raddr (tcp.Proto.DialTransparent):
// the peer sees laddr as its peer. Needs EnableNetfilter for the replies.
func (s *Stack) DialTCPTransparent(ctx context.Context, laddr, raddr netip.AddrPort) (*tcp.Conn, error) {
	return s.tcp.DialTransparent(ctx, laddr, raddr)
}

// DialUDPTransparent opens a UDP socket bound to laddr, which need not be
// an address of the stack (port 0 = ephemeral), and connected to raddr
// (udp.Proto.DialTransparent). Needs EnableNetfilter for the replies.
func (s *Stack) DialUDPTransparent(laddr, raddr netip.AddrPort) (*udp.Socket, error) {
	return s.udp.DialTransparent(laddr, raddr)
}
