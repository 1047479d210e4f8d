// Package udp owns UDP (RFC 768, RFC 1122 §4.1; net/ipv4/udp.c,
// net/ipv6/udp.c) over IPv4 and IPv6: the port
// table, datagram sockets with their bounded receive queues, input
// validation and demultiplexing (__udp4_lib_rcv, __udp6_lib_rcv), ICMP
// and ICMPv6 error delivery (__udp4_lib_err, __udp6_lib_err) and output
// (udp_sendmsg → udp_send_skb).
//
// Not owned here: IP headers, routing, fragmentation and ICMP generation
// (ipv4 and ipv6, reached through the family interface), the
// protocol-independent socket API and net.Conn adapters (socket).
//
// Families. A Proto holds an IPv4 and an IPv6 layer (New's ip and ip6;
// nil ip6 refuses IPv6 addresses with EAFNOSUPPORT); a datagram goes
// through the layer of its destination's family. IPv4-mapped addresses
// are unmapped at the socket API (::ffff:a.b.c.d sends IPv4 to a.b.c.d,
// RFC 4291 §2.5.5.2), so none is ever on the wire. A socket on :: (or
// unbound) takes and sends both families, one on 0.0.0.0 only IPv4
// (Linux's bindv6only=0), one on a specific address only its family
// (EAFNOSUPPORT). Over IPv6 the checksum covers the IPv6 pseudo-header
// and is mandatory (RFC 8200 §8.1: a zero checksum is discarded and
// counted in InCsumErrors), the payload may be 65527 bytes (MaxPayload6),
// a closed port is answered with ICMPv6 Destination Unreachable code 4
// (RFC 4443 §3.1), and the receive metadata reads the addresses from the
// IPv6 header kept with the SKB (they do not fit the control block).
// Link-local addresses (RFC 4007 §6) carry a zone at the API: a received
// one gets the name of the NIC it came in on (Config.ZoneName), a
// destination's zone picks the output NIC (Config.Zone: a name or an ID;
// ENODEV for neither), so an echo of Meta.From finds its link; the port
// table and the wire hold addresses without zones.
//
// # Theory of operation
//
// Port table. Sockets with a local port live in Proto.ports, keyed by
// port; each port holds a short list of sockets (different local
// addresses, or one wildcard). Bind conflicts follow Linux without
// SO_REUSEADDR (udp_lib_lport_inuse): two sockets may share a port only if
// both are bound to different specific addresses. A port of 0 picks an
// ephemeral port from Config.EphemeralLow..EphemeralHigh (default
// 32768–60999, ip_local_port_range) starting at a random offset. Bound:
// MaxSockets bound sockets (ENOBUFS past it); the port space bounds the rest.
// Bind does not require the address to be local (as with IP_FREEBIND /
// IP_TRANSPARENT), so a proxy-mode socket can take diverted flows to
// foreign addresses; this package has no view of the local addresses.
//
// Input (V4Rcv, on the NIC's receive goroutine, run to completion):
// CheckUDP, the length field against the IP payload, the checksum unless
// it is zero (RFC 768) or the link verified it; then the lookup, which
// scores each socket on the port like compute_score: a connected socket
// matches only its peer (4-tuple, best), then a socket bound to the
// destination address, then a wildcard one. No socket → ICMP port
// unreachable (RFC 1122 §4.1.3.1) and NoPorts. The SKB itself is queued on
// the socket (no copy, no allocation); RecvFrom copies into the caller's
// buffer and frees it.
//
// Receive queue bound: Socket.rcvbuf bytes, default DefaultRcvBuf =
// 212992 like net.core.rmem_default, charged per datagram by truesize (its
// buffer block plus a fixed SKB overhead, as the kernel charges
// skb->truesize, so tiny datagrams cannot pin unbounded memory). As in
// __udp_enqueue_schedule_skb, a datagram is accepted while the charge is
// below the bound (so an empty queue always takes one); otherwise it is
// freed with SOCKET_RCVBUFF and counted in RcvbufErrors and InErrors.
//
// Errors (V4Err, V6Err): ipv4 and ipv6 hand over a header.ICMPError
// (type, code, icmp_err_convert's or icmpv6_err_convert's errno and
// fatal flag). The socket is found from the quoted header; as Linux does without
// IP_RECVERR, only CONNECTED sockets hear of it, and only of hard errors
// (RFC 1122 §4.1.3.3 asks for all; Linux's fatal ones: port unreachable as
// ECONNREFUSED, protocol unreachable, parameter problem, the prohibited,
// unknown and precedence codes; over IPv6 port unreachable, the
// prohibited and reject-route codes and parameter problem); fragmentation
// needed or Packet Too Big only when the socket sends with DF
// (IP_PMTUDISC_DO, IPV6_DONTFRAG), as EMSGSIZE. Soft errors (net and host
// unreachable, time exceeded) are transient: no socket hears of them
// (UdpExtICMPSoftErrors), so they never fail a connected socket's next
// call. A hard error is stored on the socket (UdpExtICMPHardErrors),
// wakes its waiters, and the next receive or send returns it once
// (sock_error); the socket carries on afterwards.
//
// Output: SendTo checks the size (65507 bytes of payload at most over
// IPv4, 65527 over IPv6, else EMSGSIZE), binds an ephemeral port if needed (inet_autobind), routes to
// learn the source address, builds the header and the RFC 768 checksum
// (a computed 0 is sent as 0xFFFF) and hands the SKB to the family's
// QueueXmit, which fragments datagrams larger than the path MTU. Sends
// never block: there is no send buffer accounting beyond the layers below,
// whose ENOBUFS is counted in SndbufErrors and not reported, as Linux does
// without IP_RECVERR.
//
// Blocking and deadlines. Each socket has one mutex and one sync.Cond.
// A blocked receiver waits on the cond; enqueue signals it, errors and
// Close broadcast. Deadlines are instants on the stack's clock (wall time
// with the real clock); a blocked receiver arms the socket's one clock
// timer for its deadline, whose callback broadcasts. No goroutine is
// started per packet, per socket or per wait. An event-driven owner sets
// a Notify callback instead of blocking (SetNotify, sk_data_ready): it
// runs once at the end of the receive batch that queued datagrams
// (buf.Batch, as TCP's), or after the Proto's lock is released for a
// datagram queued outside a batch, and reads the queue without waiting.
//
// Transparent proxying (proxy.go). A datagram whose skb.Mark carries
// netfilter.MarkDivert (a flow netfilter diverted to local delivery with
// its foreign destination kept) matches only a connected socket by exact
// 4-tuple, else the Proto's one intercept socket (Proto.Intercept), never
// a bound or wildcard socket; with neither, port unreachable is sent from
// the foreign destination (RFC 1122 §4.1.3.1, NoPorts and DivertNoPorts).
// Non-diverted datagrams never reach the intercept socket. Its RecvMsg
// reports Meta.To, the original destination; SendFromTo answers from it
// (route.Flow.Transparent plus MarkDivert). SetTransparent and
// DialTransparent make sockets whose local address is a client's own, for
// port mappings into a pod: their datagrams carry MarkDivert, so
// conntrack diverts the pod's replies back to them. Transparent connected
// sockets conflict only on an identical 4-tuple (their foreign local
// address never receives undiverted traffic). The intercept socket's
// receive queue is bounded like any socket's.
//
// Lock order: Proto.mu > Socket.mu > the clock's timer lock. V4Rcv holds
// Proto.mu for reading while it enqueues, so a socket found in the table
// cannot be closed under it; timer callbacks take only Socket.mu.
package udp
