// Package netstack owns the Stack (inet_init, inet6_init and struct net):
// one network namespace's worth of userspace TCP/IP, built from the layer
// packages below it and wired the way inet_init wires the kernel's: the
// ARP, IPv4 and IPv6 packet types registered on the device list, TCP,
// UDP and the echo client behind Ping on both protocol tables (ICMP on
// the IPv4 one, ICMPv6 on the IPv6 one), TCP and UDP in the socket
// switch. IPv6 is always
// on but a NIC takes part only once it has an IPv6 address, which brings
// its link-local address (stack6.go); IPv4 and IPv6 have separate
// netfilter hooks (Hooks, Hooks6) and share the FIB and the neighbour
// table. What the two IP layers run alike sits below both of them:
// netstack/inet (the output tail from LOCAL_OUT to neigh output, the
// loopback backlog, the ICMP error rate limit, rp_filter settings) and
// netstack/inetfrag (reassembly queues). It also owns the configuration calls that span layers (an
// address is a NIC address, a local route and a connected route), the
// options of a fresh stack, and one Stats snapshot over every layer.
//
// Not owned here: anything a layer owns (see each package's doc), test
// topologies (stacktest), the daemon's policy (which links, which rules).
//
// # Concurrency model (the one for the whole stack)
//
// Goroutines. A stack runs exactly these: one receive goroutine per NIC
// that is up and receive queue of its link (dev's NAPI poll loop; a link
// with several queues, AF_PACKET with PACKET_FANOUT, keeps each flow on
// one of them), and the clock's goroutine when the
// real clock is used (none with clock.Manual, whose timers run inside
// Advance on the caller's goroutine). Nothing starts a goroutine per
// packet, per socket, per connection, per timer or per blocked call.
// Application goroutines call into sockets and configuration.
//
// Receive runs to completion. The NIC goroutine reads a batch
// (Endpoint.ReadBatch, up to RxBatch frames), takes the time once, and
// carries each frame as far as it goes on that goroutine: taps → Ethernet
// check → neigh.Rcv, ipv4.Rcv or ipv6.Rcv (validation, PREROUTING, route.Input,
// reassembly, LOCAL_IN) → the L4 handler (udp.V4Rcv: lookup, enqueue the
// SKB on the socket, signal a waiting reader) — or, when forwarding,
// FORWARD → output → neigh → the output NIC's transmit queue. Replies made
// on the way (ARP replies, echo replies, ICMP errors) are sent from the
// same goroutine. Handlers never block; a full queue drops and counts.
// Work a layer would do once per packet and can do once per batch is
// deferred to the batch's end (buf.Batch, carried on each received SKB,
// flushed by dev after the last frame, the NAPI poll's GRO flush): TCP
// sends one ACK per socket and batch for in-order data, and runs the
// socket's Notify callback (tcp.Sock.SetNotify) there, without the
// socket lock, before that ACK. An event-driven owner — the proxy's
// relay — moves the bytes on from that callback (to its host socket),
// so a frame's payload reaches the host socket on the goroutine that
// read the frame, and the ACK carries the window the move left open.
//
// Transmit has no goroutine of its own. Whoever calls NIC.Xmit (an
// application in SendTo, a NIC goroutine forwarding or replying, a timer
// sending an ARP probe) enqueues on the NIC's bounded queue; the caller
// that finds the queue idle flushes it with WriteBatch until empty, the
// others just enqueue (qdisc_run's RUNNING bit), so frames leave in order
// and one goroutine at a time writes an endpoint.
//
// Timers run on the clock: neighbour NUD timers, Router Advertisements,
// reassembly expiry (both families), the IPv4 and IPv6 loopback backlog
// drains,
// fault-injected delays and socket deadline wake-ups. Callbacks are short,
// never block, and take only their owner's lock. Datagrams a stack sends
// to its own addresses go through the loopback backlog of their IP layer
// (inet.Output's, one per family), drained by a
// clock callback (with clock.Manual: on the next Advance, Advance(0) is
// enough), so a transport is never re-entered on its own call stack.
//
// Sockets. Each UDP socket has one mutex and one condition variable: the
// receive path takes the mutex only to link the SKB into the bounded
// receive queue and signal; RecvFrom unlinks under the mutex and copies
// into the caller's buffer after releasing it; SendTo builds and routes
// without the socket lock. Blocked receivers wait on the condition
// variable; deadlines are instants on the stack's clock whose one
// per-socket timer broadcasts. UDP needs no owner/backlog scheme because
// no user call holds the socket lock while processing; TCP, when it lands,
// adds the kernel's: a user call owns the socket (lock_sock), segments
// arriving meanwhile go to a bounded backlog, drained by release_sock.
//
// Lock order, outermost first. A lock on the left may be held while a
// lock on its right is taken, never the reverse:
//
//	Stack.mu (configuration only; never on a packet path)
//	  > dev.Devices.mu > dev.NIC.addrMu
//	  > neigh.Table.mu > clock
//	  > udp.Proto.mu (RW: lookups read) > udp.Socket.mu > clock
//	  > inetfrag.Table.mu (one per reassembly table: ipv4, ipv6,
//	    netfilter defrag and defrag6) > clock
//
// Leaves, held without calling out: route.Table.mu (writers only; lookups
// read an atomic snapshot), the token bucket and backlog locks of each
// IP layer (package inet, one of each per family),
// dev's NIC.rxMu and NIC.txMu, the pipe's per-pair lock, the socket
// registry's lock, the echo client's lock. No layer holds its lock while
// calling into another layer, except that owners arm and stop clock
// timers under their own locks (the clock runs callbacks with no lock
// held). Registrations (packet types, taps, protocols, hooks, rp_filter)
// are copy-on-write behind atomic pointers, so packet paths read them
// without locks.
//
// Bounds live beside each queue and table in its package: NIC transmit
// queue (TxQueueLen, 1000), receive batch (RxBatch, 64), neighbour table
// (1024) and pending packets per unresolved neighbour (3), routes and
// local addresses (route.MaxRoutes, MaxLocal), IPv4 reassembly memory (4
// MiB) and time (30 s), IPv6 reassembly memory (4 MiB), packets (1024)
// and time (60 s), IPv6 path MTU cache (4096 destinations), ICMP and
// ICMPv6 errors (1000/s, burst 50, each), loopback backlogs (1000 each),
// Router Advertisement prefixes (16) and DNS servers (8), UDP receive
// queue per socket (212992 bytes of truesize), UDP
// bound sockets (65536), echo requests in flight (256), intercepted TCP
// SYNs awaiting the proxy (InterceptTCP's maxPending, default 4096).
//
// Proxy mode (proxy.go) wraps the transparent-proxy primitives of the
// layers for the daemon's relay: InterceptTCP, InterceptUDP and
// InterceptEcho receive the flows netfilter diverted (Netfilter.Divert or
// the DIVERT target); SendEchoReply and SendPortUnreachable answer as the
// original destination; DialTCPTransparent and DialUDPTransparent open
// flows into a pod from an address that is not the stack's.
package netstack
