// Package neigh owns the neighbour table (net/core/neighbour.c,
// net/ipv4/arp.c): NUD states, link-layer address resolution with ARP, the
// bounded queue of packets awaiting a link address, proxy and gratuitous
// ARP. Not owned here: next hops (route), IP headers (ipv4), the Ethernet
// framing and transmit queue (dev).
//
// # Theory of operation
//
// Entries are keyed by (NIC ID, IPv4 address). States follow the kernel's
// NUD machine (RFC 1122 §2.3.2.1, with RFC 4861 §7.3's states as Linux
// uses them for ARP too):
//
//	(none) --Output--> Incomplete: broadcast request now, then every
//	        RetransTime; after MaxProbes unanswered requests -> Failed.
//	Incomplete --reply/request from it--> Reachable (reply) or Stale
//	        (request, or a reply not unicast to us); the queue is flushed.
//	Reachable --ReachableTime (BaseReachable x [0.5,1.5)) without a
//	        confirmation--> Stale.
//	Stale --Output--> Delay (the packet is sent with the cached address).
//	Delay --confirmed within DelayProbe--> Reachable; otherwise -> Probe.
//	Probe: unicast request now and every RetransTime; a reply -> Reachable;
//	        MaxProbes unanswered -> Failed.
//	Failed --Output--> Incomplete again (resolution restarts).
//	Permanent: AddStatic; never changes, never expires, never collected.
//
// Confirm (upper-layer advice, e.g. TCP ACK progress; RFC 4861 §7.3.1) and
// a solicited reply move any resolved entry to Reachable.
//
// Timers. Each entry has one clock.Timer, armed only in Incomplete,
// Reachable, Delay and Probe; no goroutine is started here. Callbacks take
// Table.mu, decide, release it, then transmit.
//
// Bounds. MaxEntries entries (default 1024, gc_thresh3). When full, a new
// entry triggers forced GC (neigh_forced_gc): every Failed entry and every
// Stale entry unused for GCStale is removed; if that frees nothing, the
// least recently used Stale entry goes. When every entry is busy
// (Incomplete, Reachable, Delay, Probe, Permanent) the new resolution
// fails: the packet is freed with NEIGH_CREATEFAIL and TableFull counted.
// Each unresolved entry queues at most MaxPending packets (default 101)
// and MaxPendingBytes bytes (default 212992, Linux's unres_qlen_bytes), so
// every fragment of a 64 KiB datagram sent before ARP completes survives;
// overflow frees the OLDEST with NEIGH_QUEUEFULL, as __neigh_event_send
// does. When
// resolution fails, each queued packet goes to the failure handler (ipv4
// answers locally originated ones with ICMP host unreachable) and is then
// freed with NEIGH_FAILED.
//
// ARP input (arp_process, RFC 826 "Packet Reception"): malformed packets
// are freed with ARP_INVALID and counted in InErrors. The sender is merged
// into an existing entry (not a Permanent one); an entry is created only
// for a request we answer. We answer requests whose target is an address
// of the receiving NIC or accepted by the NIC's proxy policy (SetProxy),
// except when the target is the sender's own address (an announcement).
// A probe from 0.0.0.0 (RFC 5227 §2.1.1) is answered only for our own
// addresses and is never learnt. Adding an address to a NIC that is up
// broadcasts one gratuitous ARP announcement (RFC 5227 §3).
//
// Lock order: Table.mu > the clock's timer lock (timers are re-armed under
// Table.mu). Table.mu is never held while calling dev (HardHeader, Xmit,
// address queries), a proxy policy or the failure handler.
package neigh
