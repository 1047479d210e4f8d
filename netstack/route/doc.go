// Package route owns the forwarding information base of both families
// (net/ipv4/fib_trie.c, fib_frontend.c, route.c's ip_route_input_slow /
// ip_route_output_key_hash_rcu; net/ipv6/ip6_fib.c, route.c's
// ip6_route_input / ip6_route_output, addrconf.c's ipv6_dev_get_saddr; and
// the dst_entry they produce): a main table of prefixes answered by
// longest-prefix match, a local table of the stack's own addresses, the
// IPv4 broadcast addresses derived from both, and the decision functions
// Input, Output and ReversePathOK that turn an address pair into a Result,
// plus Via, the route through one given NIC (the table of a policy rule,
// which netfilter's reply-to uses). The family of the destination picks
// the half: IPv4 and IPv6 routes live in one master list (Routes lists
// both) but are matched apart.
//
// IPv6 differs where the RFCs say so (table6.go): a link-local destination
// (fe80::/10) or link-scope multicast is reached only through the NIC the
// flow names (RFC 4291 §2.5.6; a flow without one is ErrInvalid, as a
// socket without a scope id is EINVAL on Linux); a link-local address of
// the stack is local only on its own NIC, and a link-local destination
// that is not ours is never forwarded (ErrMartianDest); IPv4-mapped
// addresses are refused everywhere (RFC 4291 §2.5.5.2); there is no
// broadcast and no primary address: an output source is chosen by RFC
// 6724 §5 (rules 1, 2 and 8) among the output NIC's addresses, then the
// stack's global ones.
//
// An output Flow may be Transparent (IP_TRANSPARENT, FLOWI_FLAG_ANYSRC):
// its source need not be an address of the stack, which proxy mode uses
// to answer as the foreign destination a pod talked to.
//
// Not owned here: device MTUs and link state (dev; a Result carries the
// route's MTU or 0 for "the device's"), link-layer resolution of the next
// hop (neigh), what is done with a Result (ipv4, ipv6), and the path MTU
// learnt from Packet Too Big (ipv6's PMTU cache).
//
// Theory of operation: every change (Add, Remove, AddLocal, RemoveLocal,
// FlushNIC) runs under Table.mu, edits the master lists and publishes a new
// immutable snapshot through an atomic.Pointer. Readers (every packet) load
// the pointer once and never lock or allocate. Routes change rarely (an
// interface is configured, a pod is attached), so rebuilding the snapshot,
// O(routes + addresses), is cheaper than a concurrent trie.
//
// The LPM structure is one hash map per prefix length (0..32, and 0..128
// for IPv6) plus the populated lengths (a bitmap; a sorted list for
// IPv6); a lookup masks the destination for each populated length,
// longest first, so it costs at most one map probe per populated length
// (a handful in practice). Bounds: MaxRoutes routes and
// MaxLocal local addresses; Add/AddLocal past them fail with ErrTableFull.
//
// Lock order: Table.mu is a leaf; it is never held while calling out.
package route
