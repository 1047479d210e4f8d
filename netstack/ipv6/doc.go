// Package ipv6 owns the IPv6 layer (net/ipv6/ip6_input.c, ip6_output.c,
// ip6_forward.c, exthdrs.c, reassembly.c, icmp.c, protocol.c, and the PMTU
// side of route.c): receive validation, extension headers, local delivery
// to the upper layers registered with AddProtocol (inet6_protos),
// forwarding with the hop limit, local output with source fragmentation
// and path MTU discovery (RFC 8201), reassembly (RFC 8200 §4.5, RFC 5722),
// and ICMPv6 (RFC 4443: echo, errors received and sent). Its MIB counters
// are Stats.
//
// Not owned here: route choice and source address selection (route; the
// FIB is shared with IPv4), Neighbor Discovery (neigh: this package hands
// it NDP messages after checking their IPv6 header and ICMPv6 checksum,
// and it resolves next hops in neigh.Output), hook functions (netfilter:
// this package decides where the five hooks run, on hooks of its own, not
// IPv4's), header parsing (header), transports (registered upward), and
// the code IPv6 shares with IPv4 where the logic is the same
// (netstack/inet: the output tail between LOCAL_OUT and neigh output, the
// loopback backlog, the ICMPv6 rate limit's token bucket, the per-NIC
// reverse-path setting, the identification and flow label hash;
// netstack/inetfrag: the reassembly queue table).
//
// # IPv6 on a NIC
//
// A NIC speaks IPv6 once it has an IPv6 address in the FIB
// (route.Table.HasIPv6): packets arriving on any other NIC are dropped
// (IPV6DISABLED, InDiscards), as with disable_ipv6, so an IPv4-only stack
// behaves as it always did. The stack (package netstack) gives a NIC its
// link-local address with its first IPv6 address.
//
// # Paths
//
// Receive (dev dispatches EtherType 0x86DD to Rcv):
//
//	Rcv (ip6_rcv_core: version, payload length, RFC 4291 address checks,
//	     trim padding, Hop-by-Hop options)
//	  → PREROUTING
//	  → rcvFinish (ip6_rcv_finish)
//	      multicast → mcInput (ff02::1, ff02::2, solicited-node groups;
//	                  anything else InAddrErrors; never forwarded)
//	      route.Input, strict reverse path (RFC 3704 §2.2; diverted flows
//	      too); netfilter's reply-to NIC → route.Via
//	      Local → localDeliver (Destination Options, Routing, Fragment:
//	                reassembly; extension headers walked in order)
//	                → LOCAL_IN (the whole packet, TransportHeader set)
//	                → localDeliverFinish (inet6_protos; ICMPv6 → icmpRcv;
//	                   NDP → neigh.RcvNDP; unknown → Parameter Problem 1)
//	      Unicast → forward (hop limit, scope, MTU → Packet Too Big,
//	                hop limit - 1) → FORWARD → output
//
// Send (transports call QueueXmit with the upper-layer header built):
//
//	QueueXmit (ip6_xmit: route.Output, push header, flow label)
//	  → localOut (__ip6_local_out → inet.Output.LocalOut: LOCAL_OUT;
//	              re-route if a hook changed Dst, or through netfilter's
//	              reply-to NIC)
//	  → output (ip6_output → inet.Output.PostRouting: POSTROUTING)
//	  → finishOutput (ip6_finish_output: Local → loopback; > path MTU →
//	                  fragment, or Packet Too Big to ourselves with
//	                  DontFragment; → inet.Output.NeighOutput → neigh.Output)
//
// The calls into inet are the bodies IPv4 runs too (package inet);
// finishOutput stays IPv6's: it fragments only local packets (RFC 8200
// §5: forwarded ones never), sizes them by the path MTU cache (RFC 8201)
// and refuses links under 1280.
//
// LOCAL_IN sees reassembled packets, as IPv4's does (Linux runs it before
// reassembly unless nf_defrag_ipv6 is loaded; with conntrack it is).
// Loopback works as IPv4's, on its own inet.Output backlog (the same
// code): drained by a clock callback through PREROUTING (in NIC 0) into
// localDeliver, bound 1000 entries, 64 per run (see package inet).
//
// # Extension headers
//
// Hop-by-Hop (RFC 8200 §4.3) is processed in Rcv, before PREROUTING and
// routing; anywhere but first it is an unrecognised Next Header. Options
// (Hop-by-Hop and Destination Options): padding and Router Alert (Hop-by-
// Hop, ignored) are known; any other option follows its action bits (§4.2:
// skip; discard; discard with Parameter Problem code 2, even to multicast;
// discard with it only to unicast), pointer at the option type. Routing
// (§4.4): no type is processed: Segments Left 0 is ignored, otherwise
// Parameter Problem code 0 at the Routing Type (RFC 5095 §3 makes type 0
// such a type). A header whose length runs past the packet is Parameter
// Problem code 0 at its length; an unknown Next Header is code 1 at its
// offset; at most header.MaxIPv6ExtHeaders headers are walked. ESP and AH
// have no handler (no IPsec): code 1.
//
// # Reassembly
//
// Queues are keyed by (source, destination, identification) (RFC 8200
// §4.5). A fragment with M set whose length is not a multiple of 8, or one
// that would make the payload exceed 65535 bytes, is dropped with
// Parameter Problem code 0 (pointing at the Payload Length, or at the
// Fragment Offset); a first fragment without the whole header chain with
// code 3 (RFC 7112 §5). An atomic fragment (offset 0, M clear) is
// processed alone (RFC 6946). Fragments are kept sorted and disjoint: an
// exact duplicate is dropped alone; any other overlap discards the whole
// packet and, per RFC 5722 §4, "any constituent fragments, including those
// not yet received": the queue becomes a tombstone holding no buffers
// until its timeout, which swallows late fragments silently. The queue
// table, its age list, memory bound, timers and tombstones are
// netstack/inetfrag's, shared with IPv4 and netfilter's defrag. Bounds:
// ReasmMemLimit bytes of buffers (default 4 MiB; a fragment past it evicts
// the oldest packets), 1024 packets (a new one past it evicts the oldest),
// 256 fragments per packet, ReasmTimeout per packet (default 60 s, §4.5;
// on expiry ReasmTimeout+ReasmFails and, when the offset-zero fragment
// came, Time Exceeded code 1 to its source). The reassembled packet is a
// fresh SKB with CsumNone whose unfragmentable part is the first
// fragment's, its last Next Header the first fragment's Fragment header's.
//
// Fragmentation happens only at the source (RFC 8200 §5): the
// unfragmentable part (IPv6 header, Hop-by-Hop, Routing, and Destination
// Options before a Routing header) is repeated in each fragment with a
// Fragment header; identifications come from 2048 keyed-hash counters
// started at random values (RFC 7739). A CsumPartial packet gets its
// checksum completed first; GSO packets are never fragmented; forwarded
// packets never are (a router sends Packet Too Big instead).
//
// # Path MTU (RFC 8201)
//
// A Packet Too Big about a packet we sent lowers the path MTU towards its
// destination in a bounded cache (4096 entries in 64 shards) for
// PMTUExpires (default 10 minutes, §4), never below 1280; it is also
// handed to the quoted upper layer's Err. Local output sizes packets by
// min(NIC MTU, route MTU, cached PMTU); forwarding ignores the cache, as
// Linux does. A NIC whose MTU is below 1280 carries no IPv6 (RFC 8200 §5:
// OutDiscards, IPV6_LINK_MTU_TOO_SMALL).
//
// # ICMPv6
//
// Echo requests to our unicast addresses are answered in place; to a
// group we listen to, from the receiving NIC's best address (RFC 4443
// §4.2). Errors received are checked (checksum, quoted header chain and 8
// bytes of the upper layer) and handed to the quoted upper layer's Err
// with their type and code (ErrnoOf maps them as icmpv6_err_convert);
// unknown error types too (§2.4(a)); unknown informational types are
// dropped (§2.4(b)); MLD messages are counted and dropped. Errors sent
// (SendICMPError, icmp6_send) follow §2.4(e)'s never-list (with its two
// multicast exceptions), quote as much of the packet as fits 1280 bytes
// (§2.4(c)), and pass one token bucket per Layer (§2.4(f):
// ICMPRateLimit/s, burst ICMPRateBurst; OutRateLimited), except errors to
// our own addresses. Their source is the offending packet's destination
// when that is ours, else the receiving NIC's best address (§2.2). A
// neighbour that never answered gets its waiting packets' senders a
// Destination Unreachable code 3 (address unreachable), deferred to the
// backlog.
//
// Proxy mode (proxy.go), as IPv4's: an echo request carrying
// netfilter.MarkDivert to an address that is not ours goes to the
// EchoFunc set by SetEchoInterceptor (Icmp6InEchoDiverted), or is dropped
// without one (Icmp6InEchoDivertDrops, ICMP_ECHO_NO_INTERCEPTOR).
// SendEchoReply and SendICMPErrorQuote send from a foreign source
// (route.Flow.Transparent), the latter quoting a caller-built packet
// under SendICMPError's rules, size bound and rate limit.
//
// # Locks
//
// As IPv4's: the receive and transmit paths take no lock of this package
// except the reassembly table's (inetfrag.Table.mu, fragments only),
// inet.TokenBucket's (errors only), the backlog's dev.Backlog.mu
// (loopback only) and a PMTU shard's lock (a read lock on output while
// the cache holds entries). All are leaves; the table's lock
// and dev.Backlog.mu are held while arming or stopping a clock timer. Lock
// order: inetfrag.Table.mu > clock, dev.Backlog.mu > clock. Registrations
// (AddProtocol, SetRPFilter, SetForwarding) publish with atomics.
package ipv6
