// Package route owns the IPv4 forwarding information base (net/ipv4/fib_trie.c,
// fib_frontend.c, route.c's ip_route_input_slow / ip_route_output_key_hash_rcu
// and the dst_entry they produce): a main table of prefixes answered by
// longest-prefix match, a local table of the stack's own addresses, the
// broadcast addresses derived from both, and the decision functions Input,
// Output and ReversePathOK that turn an address pair into a Result, plus
// Via, the route through one given NIC (the table of a policy rule, which
// netfilter's reply-to uses).
//
// An output Flow may be Transparent (IP_TRANSPARENT, FLOWI_FLAG_ANYSRC):
// its source need not be an address of the stack, which proxy mode uses
// to answer as the foreign destination a pod talked to.
//
// Not owned here: device MTUs and link state (dev; a Result carries the
// route's MTU or 0 for "the device's"), link-layer resolution of the next
// hop (neigh), and what is done with a Result (ipv4).
//
// Theory of operation: every change (Add, Remove, AddLocal, RemoveLocal,
// FlushNIC) runs under Table.mu, edits the master lists and publishes a new
// immutable snapshot through an atomic.Pointer. Readers (every packet) load
// the pointer once and never lock or allocate. Routes change rarely (an
// interface is configured, a pod is attached), so rebuilding the snapshot,
// O(routes + addresses), is cheaper than a concurrent trie.
//
// The LPM structure is one hash map per prefix length (0..32) plus a bitmap
// of the populated lengths; a lookup masks the destination for each
// populated length, longest first, so it costs at most one map probe per
// populated length (a handful in practice). Bounds: MaxRoutes routes and
// MaxLocal local addresses; Add/AddLocal past them fail with ErrTableFull.
//
// Lock order: Table.mu is a leaf; it is never held while calling out.
package route
