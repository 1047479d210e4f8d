// Package ipv4 owns the IPv4 layer (net/ipv4/ip_input.c, ip_output.c,
// ip_forward.c, ip_fragment.c, icmp.c, protocol.c): receive validation,
// local delivery to the L4 protocols registered with AddProtocol
// (inet_protos), forwarding, local output, fragmentation and reassembly,
// and ICMP (echo, errors received and sent). Its MIB counters are Stats.
//
// Not owned here: route choice (route; the layer calls Input, Output and
// ReversePathOK), link-layer resolution (neigh.Output), hook functions
// (netfilter; this package decides where the five hooks run), header
// parsing (header), transports (registered upward, never imported), and
// the code IPv4 and IPv6 share where their logic is the same
// (netstack/inet: the output tail between LOCAL_OUT and neigh output, the
// loopback backlog, the ICMP rate limit's token bucket, the per-NIC
// rp_filter setting, the ID hash; netstack/inetfrag: the reassembly queue
// table). This package calls them; its paths keep their kernel names.
//
// # Paths
//
// Receive (dev dispatches EtherType 0x0800 to Rcv):
//
//	Rcv (ip_rcv: RFC 1122 §3.2.1 checks, checksum, trim padding)
//	  → PREROUTING
//	  → rcvFinish (ip_rcv_finish: route.Input, martians, strict rp_filter;
//	               netfilter's reply-to NIC → route.Via)
//	      Local/Broadcast → localDeliver (ip_local_deliver: ip_defrag)
//	                           → LOCAL_IN
//	                           → localDeliverFinish (inet_protos dispatch;
//	                              ICMP → icmpRcv; unknown → ICMP proto unreachable)
//	      Unicast → forward (ip_forward: link broadcast, TTL, DF/MTU, TTL-1)
//	                  → FORWARD → forwardFinish → output
//
// Send (transports call QueueXmit with the transport header built):
//
//	QueueXmit (ip_queue_xmit: route.Output, push header, IP ID)
//	  → localOut (__ip_local_out → inet.Output.LocalOut: LOCAL_OUT;
//	              re-route if a hook changed Dst, or through netfilter's
//	              reply-to NIC)
//	  → output (ip_output → inet.Output.PostRouting: POSTROUTING)
//	  → finishOutput (ip_finish_output: Local → loopback; > MTU → fragment
//	                  (ip_fragment), or Fragmentation Needed with DF;
//	                  → inet.Output.NeighOutput → neigh.Output
//	                  (ip_finish_output2))
//
// The calls into inet are the bodies IPv6 runs too; each returns here, so
// the path reads down as ip_output.c does. finishOutput stays IPv4's: it
// fragments at any hop (RFC 791), where IPv6 fragments only at the source.
//
// Loopback: datagrams to our own addresses never touch a NIC. They go,
// after POSTROUTING, to the backlog (inet.Output.Loopback: the loopback
// device + netif_rx backlog), which a clock callback drains (inet's
// loopRcv, ip_rcv for a packet we built): PREROUTING (in NIC 0) →
// localDeliver. So a transport that sends to
// itself is never re-entered on its own call stack. With the manual clock
// the backlog runs on the next Advance (Advance(0) is enough). Bound: 1000
// entries (netdev_max_backlog), 64 per run; overflow is CPU_BACKLOG.
//
// # Hooks
//
// PREROUTING after validation and before routing (in = input NIC, 0 for
// loopback); LOCAL_IN after reassembly; FORWARD after the TTL decrement;
// LOCAL_OUT after the header is built (out = routed NIC); POSTROUTING on
// every output, forwarded or local, before fragmentation. Dropped →
// Free(verdict reason) (and EPERM to a local sender); Stolen → the hook
// owns the packet.
//
// # Reassembly
//
// The queue table, its age list, memory bound and timers are
// netstack/inetfrag's, shared with IPv6 and netfilter's defrag; this
// package keeps the key, the header checks and what expiry sends.
// Queues are keyed by (src, dst, protocol, ID) (RFC 791). Fragments are
// kept sorted and disjoint: an exact duplicate is dropped alone
// (DUP_FRAG), any other overlap drops the whole datagram (ReasmOverlaps,
// as Linux does since CVE-2018-5391, in the spirit of RFC 5722). Bounds:
// 65535 bytes per datagram (FRAG_TOO_FAR), 256 fragments per datagram,
// ReasmMemLimit bytes of buffers over all queues (default 4 MiB; a
// fragment that exceeds it evicts the oldest datagrams, ReasmFails each),
// ReasmTimeout per datagram (default 30 s, ipfrag_time; on expiry
// ReasmTimeout+ReasmFails and, when fragment zero arrived, ICMP time
// exceeded code 1 per RFC 792 / RFC 1122 §3.3.2). The reassembled datagram
// is a fresh SKB with CsumNone.
//
// Fragmentation (output and forward): RFC 791 8-byte offsets, options
// without the copy flag only in the first fragment; a CsumPartial packet
// gets its checksum completed first. GSO packets are never fragmented.
//
// # ICMP
//
// Echo requests to a unicast address of ours are answered in place
// (RFC 1122 §3.2.2.6; options are not reflected); to a broadcast they
// are ignored (icmp_echo_ignore_broadcasts). Errors received are checked
// (checksum, quoted header ≥ 20 bytes + 8 bytes of transport) and handed
// to the quoted protocol's Err as a header.ICMPError: type and code with
// icmp_err_convert's errno and fatal flag, so each transport tells hard
// errors from soft ones itself (the seam ipv6 shares). Source
// Quench and Redirect are counted and ignored. Errors sent (SendICMPError,
// icmp_send) follow RFC 1122 §3.2.2's never-list, quote up to 576 bytes
// total (RFC 1812 §4.3.2.3), use precedence 6 and one token bucket per
// Layer (ICMPRateLimit/s, burst ICMPRateBurst; RFC 1812 §4.3.2.8;
// OutRateLimited). Errors to our own addresses are not limited.
//
// Proxy mode (proxy.go): an echo request carrying netfilter.MarkDivert to
// an address that is not ours goes to the EchoFunc set by
// SetEchoInterceptor (IcmpInEchoDiverted), or is dropped without one
// (IcmpInEchoDivertDrops, ICMP_ECHO_NO_INTERCEPTOR). SendEchoReply and
// SendICMPErrorQuote send from a foreign source (route.Flow.Transparent):
// the proxy answers as the address the pod talked to. SendICMPErrorQuote
// quotes a caller-built datagram under the same rules, size bound and
// rate limit as SendICMPError.
//
// IP IDs: a keyed hash of (src, dst, proto) picks one of 2048 counters
// (ip_idents); GSO packets reserve one ID per segment.
//
// Options: received options are validated by header.CheckIPv4 (a
// malformed one is InHdrErrors; unlike Linux no Parameter Problem is
// sent); source-routed datagrams (LSRR, SSRR) are dropped (RFC 7126
// §4.3–4.4, accept_source_route=0, IP_SOURCE_ROUTE); the others pass
// through untouched (no Record Route/Timestamp updates). Locally built
// headers carry none.
//
// # Locks
//
// The receive and transmit paths take no lock of this package except the
// reassembly table's (inetfrag.Table.mu, fragments only), inet.TokenBucket's
// (ICMP errors only) and the backlog's dev.Backlog.mu (loopback only). All
// are leaves held without calling out; the table's lock and dev.Backlog.mu are
// held while arming or stopping a clock timer, which the clock allows.
// Lock order: inetfrag.Table.mu > clock, dev.Backlog.mu > clock. Timer
// callbacks (reassembly expiry, the backlog) run with no lock held and
// take these locks
// themselves. The neighbour failure handler only enqueues to the backlog,
// so neigh may call it in any context. Registration (AddProtocol,
// SetRPFilter, SetForwarding) publishes with atomics: readers never lock.
package ipv4
