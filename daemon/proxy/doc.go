// Package proxy owns the relay engine of proxy mode: it takes the flows the
// stack diverted to itself (tcp.Interceptor, the UDP intercept socket, the
// ICMP echo interceptor), opens the matching connection over a host socket in
// the daemon's network namespace, and copies between the two; it answers DNS
// sent to the gateway by relaying to the host's resolvers; and it listens on
// host ports for the pods' port mappings, dialling into the pod through the
// stack from the client's own address. It is passt's role (tcp.c, udp.c,
// icmp.c) on top of a stack that keeps the pod's TCP/IP.
//
// Not owned here: which packets are diverted (the daemon's "proxy-divert"
// PREROUTING hook calls netfilter.Divert), how a diverted SYN, datagram or
// echo request reaches us and how replies leave from the original destination
// (netstack: InterceptTCP, InterceptUDP, InterceptEcho, the transparent dial
// calls), the pods' addresses and links (the daemon), and the CNI side (plugin).
//
// # Theory of operation
//
// TCP, upstream first, without a goroutine per connection (tcpSYN in
// relay.go). The Interceptor hands each intercepted SYN to the engine on
// the NIC's receive goroutine (Interceptor.SetHandler); the engine checks
// the per-pod flow limit, opens the host socket itself and starts a
// non-blocking connect to the original destination (dialAsync: socket,
// TCP_NODELAY, connect). A connect to this host (loopback, a local
// address) has completed by the time connect(2) returns — the kernel ran
// the handshake in softirq on the way out — and is answered there, on the
// NIC's goroutine, with no hand-off (a second connect(2) to the same
// address tells the outcome in one system call: EALREADY, connected, or
// the error; connectResult): the socket is registered with the
// poller for input only (EPOLLOUT, which it would report at once and for
// nothing, is armed by EPOLL_CTL_MOD when a write to it is first
// refused), and a refused one is never registered. A connect still in
// progress is registered for output too, and answered when the socket
// reports the outcome (EPOLLOUT or an error, on the poller's goroutine).
// The answer is Request.AcceptAsync (SYN,ACK from the destination) when
// the host connection is up, Request.Refuse (RST) otherwise; the pod's
// ACK then completes the child and the relay starts moving bytes.
// ConnectTimeout bounds connect and the pod's handshake together (one
// timer of the stack's clock per pending flow — not a runtime timer,
// whose arming wakes an idle thread to re-arm the netpoller — on expiry
// the pod gets an RST or its half-open child is reset). A refused, unreachable (no route,
// EHOSTUNREACH) and timed-out upstream all become an RST, counted apart
// (TCPRefused, TCPUnreachable, TCPTimeouts), as does a host socket the
// daemon could not open for want of descriptors or kernel memory
// (TCPNoResources; UDPNoResources and EchoNoResources for the other
// flows, and a warning with the open-file limit at most once a minute:
// noResources); the pod never gets an ICMP
// unreachable from us, and never hangs past ConnectTimeout. While the
// upstream connect is pending, the pod's retransmitted SYNs are absorbed
// by the interceptor (a SYN for a tuple already pending). With a
// Config.Dialer (tests' in-memory conns) the old form remains: one
// goroutine takes SYNs (Interceptor.Next), and each flow gets a
// goroutine that dials, Accepts and hands over to the relay.
//
// The relay (relay.go) is event-driven: no goroutine and no buffer of its
// own per flow. The pod's side is a stack socket whose Notify callback
// reports it readable or writable; the host's side is a kernel socket
// registered edge-triggered with the engine's poller (poll.go: one epoll
// set, itself waited on through Go's netpoller by one goroutine). An event
// runs the pump of the direction it concerns on the goroutine that saw it:
// pod → host on the NIC's receive goroutine at the end of the batch that
// queued the data, which is written to the host socket with one sendmsg
// gathering the received SKBs' payloads in place (tcp.Sock.ReadTo), before
// the batch's ACK; host → pod on the poller's goroutine (host readable;
// with serve --busy-poll, a NIC goroutine that is polling may take the
// event first through Engine.PollHost) or the NIC's (an ACK freed send
// space), reading the host socket with one
// readv straight into the free space of the stack socket's send queue,
// however many chunks that is (tcp.Sock.WriteFrom); while the send buffer
// is full the host socket's EPOLLIN is left to the pod's ACKs, which
// resume the pump as they free space (one goroutine reads, not two
// contending for the pump). A full
// sink is the backpressure: the bytes stay in the source's queue, whose
// window closes (ours or the kernel's), until the sink's next event; so a
// flow holds no memory beyond the two sockets' own buffers. Each
// direction's pump runs on one goroutine at a time (TryLock plus an
// again flag: a goroutine that finds it running makes the runner loop
// once more, so no event is lost and nobody waits). RFC 9293 §3.6: a FIN
// read on one side becomes shutdown(SHUT_WR) on the other, and the other
// direction keeps flowing (half-close). A reset, or any error, on either
// side closes both sides abortively (linger 0: an RST), once. When both
// directions have ended both sockets are closed and the flow is counted
// out. The flow keeps its pod and peer addresses and the bytes moved each
// way (flowHandle). A host conn without a kernel socket behind it (a test
// Dialer's in-memory conn) is relayed by splice instead: a goroutine per
// direction and a relayBufSize buffer each.
//
// Keepalive (keepalive.go): both sockets of every TCP relay (outbound,
// port mapping, DNS over TCP) get TCP keepalive with KeepAliveIdle,
// KeepAliveInterval and KeepAliveCount (defaults the kernel's: 2 h, 75 s,
// 9): the stack's socket through our TCP's keepalive timer, the host's
// through the kernel's socket options — on the engine's own host sockets
// only those that differ from the netns's sysctls (tcp_keepalive_time,
// _intvl, _probes, read at New), which the kernel applies to a socket
// that set none; with the defaults that is SO_KEEPALIVE alone, one
// setsockopt per connection instead of four. A peer that vanished without FIN
// or RST, on either side, fails its socket with ETIMEDOUT after Idle +
// Count·Interval of silence; the relay then resets both sides as for any
// error, and the flow leaves its pod's count.
//
// UDP. The intercept socket (Meta.From is the pod, Meta.To the original
// destination) is read where the stack queued the datagrams: its Notify
// callback (udpDrain) runs at the end of the NIC's receive batch and
// relays everything queued, one drain at a time (in order), with no
// goroutine of ours woken per datagram — as the TCP SYN is answered on
// the NIC's goroutine. A flow is a (pod, destination) pair with its own
// connected host socket (dialUDP: socket and connect(2), raw) registered
// with the engine's poller, as passt's udp.c keeps its flows in its one
// epoll set: no goroutine, no Go net.Conn, no runtime timer per flow (an
// idle flow is about 1.7 KiB of heap, BenchmarkIdleUDPFlowMemory). The
// poller's goroutine reads a ready socket dry and sends each reply with
// SendFromTo(from = destination, to = pod); the pod's datagrams are
// written with write(2) by the drain, and one that finds the host
// socket's send buffer full is dropped (UDPDropped), not waited for:
// every pod's datagrams come through the drain, on a NIC's goroutine.
// With a Config.Dialer (and no mapDst) the flow's host side is the
// Dialer's conn, read by a goroutine of its own (its dial runs in the
// drain, so a Dialer must not block on a UDP dial). The host socket has IP_RECVERR
// on: an ICMP error the host gets for a relayed datagram (port or protocol
// unreachable, the other unreachables, time exceeded) goes to the pod as the
// same error about its own datagram (icmperr.go): the IPv4 and UDP headers the
// pod's datagram arrived with (udp.Socket.RecvMsgHeader keeps them per flow)
// and the data the host's error quoted, so the quote is what the pod sent
// (RFC 792, RFC 1122 §3.2.2) and a port unreachable reaches the pod's connected
// socket as ECONNREFUSED (RFC 1122 §4.1.3.1). A flow idle (no datagram either
// way) for UDPIdleTimeout is closed (idle, below; a Dialer's conn too, whose
// reader then returns). At a flow limit, a new flow takes the
// place of a flow that is no stream: the least recently used of those
// answered as often as they asked, else of those gone quiet
// (udpEvictLocked in udp.go: a name lookup and its answer), counted in
// UDPEvicted; a stream is never taken.
//
// ICMP echo. The stack calls the echo interceptor on the receiving NIC's
// goroutine, at the request's local delivery, and the request is relayed
// there (echoTable.request), as the UDP intercept socket is drained on that
// goroutine: no queue and no goroutine of ours is woken per request, and
// everything it does is a non-blocking system call. Each (pod, destination,
// identifier) flow owns an unprivileged ping socket (socket(AF_INET,
// SOCK_DGRAM, IPPROTO_ICMP), net/ipv4/ping.c; socket and connect(2) raw,
// openPingSocket) connected to the destination and registered with the
// engine's poller, as a UDP flow's socket is: no goroutine, no Go net.Conn,
// no runtime timer per flow (an idle flow is about 2 KiB of heap,
// BenchmarkIdleEchoFlowMemory, against 6.5 KiB and a goroutine when each
// had a reader). The request is written with write(2); a full send buffer
// drops it (EchoDropped), as a full qdisc would, rather than hold up the
// NIC's goroutine. The kernel rewrites the identifier to the socket's own;
// the poller's goroutine reads a ready socket dry (echoFlow.ready: the
// replies ping_rcv queued) and answers the pod with the pod's identifier,
// from the destination (SendEchoReply). Where the host refuses ping
// sockets (EACCES: the daemon's group is outside net.ipv4.ping_group_range,
// whose default "1 0" refuses everyone) the flow goes through the engine's
// one raw ICMP socket instead (SOCK_RAW, which the daemon may open as root
// with CAP_NET_RAW; opened at the first such flow, kept until Close): the
// flow gets an identifier of ours, unique among the raw flows to its
// destination, and the request is sent with it (sendto(2), MSG_DONTWAIT:
// a full send buffer drops it). The raw socket is on the poller too
// (rawSock.ready; the kernel's ICMP_FILTER passes echo replies and the
// errors that may be about a request only): a reply goes to the flow named
// by its source and identifier, which answers the pod with the pod's
// identifier (EchoRawRelayed counts these requests). Replies to other
// programs' pings find no flow and are ignored. Every echo flow, ping socket
// or raw, ends after UDPIdleTimeout without a request, reply or error (idle,
// below). A flow ends once (echoTable.end: idle timeout, RemovePod or Close),
// its ping socket closed with its registration, or its raw identifier
// given back. Large echoes work the same way: the stack has reassembled the
// pod's request, the host socket sends it whole, and SendEchoReply
// fragments the reply to the pod's MTU. ICMP errors about a relayed request
// (destination unreachable but fragmentation needed, time exceeded: from the
// ping socket's error queue, IP_RECVERR, which ping_err fills and which
// raises EPOLLERR, or the raw socket, whose filter passes them too) go to
// the pod quoting its own request as it arrived (EchoRequest.Header; each
// flow keeps the last echoQuotes) and the data the host's error quoted
// (EchoICMPErrors). Only when both sockets are refused is the request
// dropped and counted in EchoDenied: pods can still ping their gateway,
// which the stack answers itself.
//
// IPv6 (a dual-stack pod: Pod.Addr6, Pod.Gateway6). The interceptors hand
// over IPv6 flows as IPv4 ones, and each is relayed over a host socket of
// the destination's family: dialAsync connects an AF_INET6 socket (no
// IPv4-mapped addresses on either side), UDP flows get IPV6_RECVERR and
// ICMPv6 errors (icmperr.go), echo requests come through the stack's
// ICMPv6 interceptor (intercept6) and go out of an ICMPv6 ping socket
// (net/ipv6/ping.c) or, where those are refused, the engine's raw ICMPv6
// socket (its ICMPV6_FILTER passes echo replies only; the kernel sums the
// checksum, RFC 3542 §3.1). The IPv6 layer hands an echo request over
// without its header, so ICMPv6 errors about a relayed echo are not passed
// on. A pod's IPv6 flows count under its IPv4 address (Engine.alias): one
// MaxFlowsPerPod for both families.
//
// DNS. The stack listens on [::]:53 (both families) for UDP and TCP; only traffic to the
// stack's own addresses (the gateway) reaches these sockets, diverted traffic
// never does. Nameservers come from ResolvConf (at most maxNameservers, port
// 53; none → 127.0.0.1, as resolv.conf(5) says), re-read when the file's
// modification time or size changes. A UDP query is tried on each nameserver in
// order, dnsQueryTimeout each, and the first response whose ID matches (RFC
// 1035 §4.1.1) is sent back; at most maxDNSInFlight queries are in flight
// (past it the query is dropped and counted in DNSFailures; the client
// retries). A TCP connection is relayed whole to the first nameserver that
// accepts it, with the TCP relay above. A loopback stub resolver (127.0.0.53)
// works because the engine runs in the host namespace.
//
// Port mappings. Each mapping of a pod has its own host listener on
// HostIP:HostPort, TCP and UDP apart (the same number for both is two
// mappings). A TCP client is relayed to a connection the stack dials
// transparently from the client's address (an ephemeral port) to
// pod:ContainerPort, so the pod sees the client's real address. A loopback
// client (127.0.0.0/8, ::1) is shown as the pod's gateway instead: the pod's
// kernel drops packets from a loopback source arriving on its veth as martians
// (RFC 1122 §3.2.1.3); an IPv6 link-local client too. A mapping on an IPv6
// host address reaches a dual-stack pod's IPv6 address (the client keeps its
// family and its address); a wildcard mapping of a dual-stack pod listens on
// 0.0.0.0 and [::] (IPV6_V6ONLY) apart, each reaching the pod's address of
// its family; an IPv6 mapping of an IPv4-only pod is skipped. The host
// listener's kernel completes the client's handshake before the stack
// dials the pod (accept first, unlike the outbound relay's upstream-first
// handshake, which needs the SYN in hand): a pod that refuses gets the
// accepted client reset, not refused. A UDP client gets a flow of its own: a
// transparent stack socket, whose replies are relayed where the stack queued
// them (its Notify callback, pmFlow.drain, on the NIC's goroutine at the end
// of the receive batch, as the intercept socket is drained) and sent from the
// mapping's host socket without waiting (a full send buffer drops the reply,
// UDPDropped): no goroutine per client. The mapping's one goroutine reads its
// host socket. Idle timeout as below. AddPod fails when a host port cannot be
// bound, and then holds nothing of that pod.
//
// Idle timeouts (idle.go). A UDP flow (outbound or a port mapping's) and an
// echo flow end after UDPIdleTimeout without a message either way. A message
// only stores the time (idle.touch, an atomic); the flow's one timer on the
// stack's clock, armed once the flow is open, fires UDPIdleTimeout later and
// either ends the flow (its owner's idleEnd: counted in UDPIdleTimeouts or
// EchoIdleTimeouts) or, when a message came meanwhile, re-arms itself for
// the rest. So no timer is touched per message, no flow costs a goroutine or
// a runtime timer for its timeout, and a flow's opening, its last message and
// the eviction's "now" (udpEvictLocked) are read from one clock.
//
// # Limits
//
//   - Flows per pod address (TCP, UDP, echo, DNS over TCP and port-mapping
//     connections): MaxFlowsPerPod (default 4096); past it a TCP SYN is refused
//     (RST), a datagram or echo request dropped, a port-mapping client reset;
//     counted in FlowLimitDrops, overall and per pod.
//   - UDP flows, outbound and port-mapping together: MaxUDPFlows (default
//     16384); past it the datagram is dropped and counted in FlowLimitDrops.
//   - Pending intercepted SYNs: maxPendingTCP in the interceptor, plus the
//     per-pod limit on flows being dialled.
//   - TCP relay memory: none of its own beyond the relay struct (a few
//     hundred bytes; BenchmarkIdleRelayMemory: about 2.3 KiB per idle relayed
//     connection with the stack socket and conntrack entry); the sockets' own
//     buffers (the stack's SndBuf/RcvBuf, the kernel's) hold the bytes in
//     flight, and a relay whose peer died silently holds them until
//     keepalive finds it. Poller: one registration per relayed flow (TCP,
//     UDP, echo through a ping socket) and per raw ICMP socket, pollBatch
//     events per wait.
//   - UDP and echo replies, and echo requests: a pooled maxDatagram buffer
//     held only while a datagram or message is handled, never while a flow
//     waits.
//   - Echo requests: none queued (relayed on the NIC's goroutine). DNS:
//     maxDNSInFlight UDP queries.
//   - Echo flows count against MaxFlowsPerPod, ping-socket and raw alike;
//     raw-mode flows also against the 65536 identifiers per destination.
//   - ICMP errors from a host UDP socket's error queue: maxErrQueue read per
//     socket error (icmperr.go).
//
// # Concurrency
//
// Engine.mu guards the pod table, the per-address flow accounting and the
// closed flag; flows are aborted after it is released. The flow tables'
// locks (udpTable.mu, echoTable.mu, udpMapping.mu) are taken before it when
// a flow is opened: lock order table > Engine.mu > flowHandle.mu, and a
// flowHandle closes its sockets after releasing its own. echoTable.mu is
// held across a ping or raw socket's creation and a send. udpQuote.mu is a
// leaf. A UDP flow's abort takes udpTable.mu, so udpFlowFor adds it to its
// flowHandle only after releasing that lock; an echo flow's abort takes
// echoTable.mu, so echoTable.request does the same. An idle timer's
// callback (the stack clock's goroutine) takes the table's lock to end
// its flow; a flow's last time is an atomic, so a message never touches
// the timer. Each flow has
// a flowHandle that aborts it whatever phase it is in (dialling, accepting,
// relaying). Every goroutine is started through Engine.spawn and counted in
// Engine.wg (a relay's second direction is waited for by its first; a pod's
// listener goroutines by the pod's own WaitGroup, which RemovePod and Close
// wait for), so Close returns only when none is left.
//
// Introspection (info.go): Relays lists the flows for `cni-userstack ss -p`.
// A TCP relay records its two sockets on its flowHandle once both are up
// (one atomic store per flow); UDP and echo flows are read from their
// tables under their locks; bytes come from TCP_INFO and conntrack, so the
// data path counts nothing for it.
//
// Time: the deadlines of host sockets are wall-clock (the kernel's); the
// stack's sockets get deadlines on the stack's clock, and so do a TCP
// flow's connect timeout and every UDP and echo flow's idle time, so a
// test's manual clock ends them.
package proxy
