// Package conntrack owns connection tracking (net/netfilter/nf_conntrack_core.c,
// nf_conntrack_proto_{tcp,udp,icmp}.c, the tuple handling of nf_nat_core.c):
// the table of flows, each known by a tuple per direction, protocol state
// and timeouts, and the NAT bindings that rewrite a flow's reply tuple.
//
// Not owned here: what runs at which hook, rule tables and the rewriting of
// packet bytes (package netfilter), reassembly before tracking (netfilter's
// defrag), and where the hooks sit in the packet path (ipv4).
//
// # Theory of operation
//
// A Conn has an original tuple (as the first packet saw it) and a reply
// tuple (what an answer looks like, the inverse of the original unless NAT
// bound the flow). Both are keys of one hash map, so a packet in either
// direction finds its Conn with one lookup (the kernel's tuplehash[2]).
// Table.In classifies a datagram: the Conn and direction it belongs to and
// its ctinfo (New, Established, Related, Invalid), creating the Conn for
// the first packet of a flow.
//
// Conns are inserted when created, not when confirmed: a Conn is visible
// to other packets of the flow at once, and a NAT binding (BindNAT) rekeys
// its reply tuple under the table lock, so two new flows can never be
// given the same translated tuple. Confirm marks a Conn whose first packet
// left the stack; until then it carries the short Unconfirmed timeout and
// the rule engine removes it (Kill) when its own rules drop the packet.
//
// A TCP flow is ASSURED once established; a UDP flow once it has been
// answered and is still active 2 s after it began (a stream: 120 s
// instead of 30 s), so a query and its answer (DNS) are not, and a full
// table may evict them; an ICMP query once answered.
//
// A Conn may carry a reply NIC (SetReplyNIC, ReplyNIC): the NIC the
// flow's first packet arrived on, recorded by netfilter's reply-to so
// that the flow's replies leave through it again. It is set once, by the
// first packet, and read with one atomic load by every reply.
//
// # Timers
//
// No Conn has a timer (Linux dropped its per-conntrack timers for the
// gc_worker in 4.7). A packet stores its Conn's new deadline in an atomic
// — a deadline that moves earlier (TCP entering TIME_WAIT) costs the same
// one store — and a Conn past its deadline is dead: lookups do not find
// it, the next create of either of its tuples removes it, and so does
// the early-drop scan of a full table. The table's one collector timer
// sweeps the used slots every gcInterval while the table holds Conns,
// gcChunk slots at a time under the read lock (lookups go on meanwhile),
// removing the dead ones it found under the write lock, and stops when
// the table is empty. So a flow costs no timer and no timer-heap operation, and the
// stack's timer heap holds sockets' timers only, not one per tracked flow
// for the 120 s of TIME_WAIT.
//
// # Limits
//
// The table holds at most Config.Max Conns (nf_conntrack_max). A new flow
// over the limit evicts a dead Conn, an unreplied (not ASSURED) one or a
// TCP flow already closing (FIN_WAIT through CLOSE: tcp_can_early_drop)
// found among the next earlyDropScan slots (early_drop); when none is
// found the packet is dropped and counted (Stats.Drop), and established
// flows are untouched; the collector's next sweep then evicts those in
// every slot while the table is over 95% full (gc_worker's early_drop
// with nf_conntrack_max95). Without the closing flows' eviction, the
// 120 s of TIME_WAIT would cap a node at Max / 120 new TCP flows a
// second (546 with the default Max) once the table had filled.
// NAT port allocation tries at most maxPortTries candidates.
//
// Lock order: Table.mu > Conn.mu. The collector takes Table.mu.
package conntrack
