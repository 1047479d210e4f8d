// Package inetfrag is the fragment-queue table that IPv4 reassembly,
// IPv6 reassembly and netfilter's defrag hooks share: Linux's
// net/ipv4/inet_fragment.c (struct inet_frags, struct inet_frag_queue).
//
// It owns: the key → queue map (generic over the protocol's key), the age
// list of queues (oldest first), the memory held by queued fragments and
// its bound, the per-queue timer and the expiry skeleton, killing a queue
// (its fragments freed with a drop reason), tombstones (a killed queue that
// stays until its timeout, RFC 5722's "including those not yet received"),
// and each queue's run of fragments sorted by offset with duplicate and
// overlap detection.
//
// It does not own: keys and header parsing, what makes a fragment invalid
// (RFC 791 §3.2 and RFC 8200 §4.5 length rules, the IPv6 header chain),
// which overlaps kill a queue and which leave a tombstone, how a complete
// queue becomes one packet, counters, and what an expiry sends (ICMP Time
// Exceeded or ICMPv6 Time Exceeded: the protocol's OnExpire). Those stay
// in ipv4/fragment.go, ipv6/fragment.go and netfilter/defrag*.go, with the
// RFC citations at the lines that implement them. This package imports
// only buf and clock.
//
// # Theory of operation
//
// The protocol locks the table (Lock/Unlock) for the whole of one
// fragment's handling: Lookup or Create the queue for its key, decide with
// Place where the fragment goes in the sorted run (or that it duplicates or
// overlaps what is held), Insert it (the table adds the bytes it costs, as
// the protocol measures them, to the queue's and the table's memory), and
// when the queue is complete Release it after copying the data out, or Kill
// it. Evict kills the oldest queues while the memory is over the bound.
// Create arms the queue's timer; when it fires the table unlinks the queue,
// frees every fragment but the offset-zero one with the timeout reason and
// hands that one (or nil) to OnExpire with no lock held: the protocol
// counts, sends its ICMP error and frees it. A tombstone's expiry just
// removes it.
//
// # Bounds
//
// Config.MemLimit bytes over all queues (ipfrag_high_thresh): the protocol
// either asks Admit before inserting (a fragment past it is dropped) or
// calls Evict after (the oldest queues go). Config.MaxQueues queues when
// set: Create evicts the oldest beyond it. Config.MaxFrags fragments per
// queue: Place reports Full beyond it. Every queue dies after
// Config.Timeout (ipfrag_time).
//
// # Locks
//
// Table.mu is a leaf held while arming or stopping a clock timer (lock
// order Table.mu > clock); timer callbacks take it themselves, and
// OnExpire runs with no lock held.
package inetfrag
