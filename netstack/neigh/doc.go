// Package neigh owns the neighbour table of both families
// (net/core/neighbour.c, net/ipv4/arp.c, net/ipv6/ndisc.c): NUD states,
// link-layer address resolution with ARP (IPv4) and Neighbor Discovery
// (IPv6, RFC 4861), the bounded queue of packets awaiting a link address,
// proxy and gratuitous ARP, proxy and unsolicited Neighbor Advertisements,
// duplicate address detection answers (RFC 4862 §5.4), and Router
// Advertisements where configured. Not owned here: next hops (route), IP
// headers and ICMPv6 dispatch (ipv4, ipv6: the ipv6 layer checks an NDP
// message's IPv6 header and ICMPv6 checksum and calls RcvNDP), the
// Ethernet framing and transmit queue (dev).
//
// # Theory of operation
//
// Entries are keyed by (NIC ID, IP address); the address's family says
// whether ARP or NDP resolves it and which EtherType its packets carry.
// States follow the kernel's NUD machine (RFC 1122 §2.3.2.1, with RFC
// 4861 §7.3's states as Linux uses them for ARP too):
//
//	(none) --Output--> Incomplete: broadcast request (IPv6: a Neighbor
//	        Solicitation to the target's solicited-node group, RFC 4861
//	        §7.2.2) now, then every RetransTime; after MaxProbes
//	        unanswered requests -> Failed.
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
// a solicited reply move any resolved entry to Reachable. For IPv6 the
// Neighbor Advertisement rules are RFC 4861 §7.2.5's table: an
// unsolicited or Override-clear advertisement with a different address
// only demotes a Reachable entry to Stale; one with Override set records
// the new address (Stale unless solicited).
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
// resolution fails, each queued packet goes to its family's failure
// handler (ipv4 answers with ICMP host unreachable, ipv6 with ICMPv6
// address unreachable) and is then freed with NEIGH_FAILED.
//
// NDP input (RcvNDP, ndisc_rcv): every message must have hop limit 255,
// code 0 and well-formed options (RFC 4861 §6.1, §7.1), else it is freed
// with an IPV6_NDISC_* reason and counted in NDPInErrors. A Neighbor
// Solicitation is answered for an address of the receiving NIC or, on a
// NIC with an IPv6 address, for a non-link-local target the NIC's proxy
// policy (SetProxy, shared with ARP) accepts, never for the solicitor's
// own address; proxy answers clear Override (§7.2.8). The solicitor is
// learnt Stale from its source link-layer option (§7.2.3); an answer with
// neither that option nor an entry goes to the frame's Ethernet source
// (on our point-to-point links, the solicitor). A duplicate address
// detection probe (source ::) is answered only for our own addresses, to
// all nodes (RFC 4862 §5.4.3), and never learnt: a stack never claims an
// address it does not own. An advertisement for one of our addresses is
// counted as a DAD conflict (§5.4.4). Router Advertisements and Redirects
// from others are counted and ignored: we route (§6.2.7, §8.2). The stack
// performs no DAD on its own addresses (RFC 4862 §5.1
// DupAddrDetectTransmits=0: IPAM hands each out once) and announces each
// new IPv6 address with one unsolicited advertisement (§7.2.6). Our
// advertisements carry the Router flag when SetRouter says we forward.
//
// Router Advertisements (router.go) are off by default (routes come from
// CNI). SetRouterAdvert makes a NIC advertise from its link-local address:
// at once, then per RFC 4861 §6.2.4 (at most 16 s apart for the first
// three, then uniformly in [MinInterval, MaxInterval]), and in answer to a
// Router Solicitation within 500 ms but never sooner than 3 s after the
// previous one (§6.2.6); turning it off sends a final advertisement with
// a zero lifetime (§6.2.5). Each advertising NIC costs one clock timer.
// Bounds: 16 prefixes and 8 DNS servers per advertisement. Redirects are
// never sent.
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
