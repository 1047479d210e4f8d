// Package netfilter owns the five hook points and what runs at them
// (net/netfilter/core.c, nf_hook_ops; ip_tables.c and ip6_tables.c;
// nf_nat_core.c; nf_defrag_ipv4.c and nf_defrag_ipv6; ipt_REJECT and
// ip6t_REJECT, ipt_LOG, xt_MARK, ipt_MASQUERADE, xt_REDIRECT, xt_TPROXY):
// hook functions registered with a priority and called in priority order,
// each returning a verdict; and on top of them the rule tables,
// reassembly before tracking, connection tracking (its table lives in
// package conntrack) and NAT, for IPv4 and IPv6.
//
// # Two families
//
// Each family has its own Hooks (the kernel's nf_hooks_ipv4 and
// nf_hooks_ipv6; ipv4 runs Config.Hooks, ipv6 Config.Hooks6), so a hook
// function written for one family never sees the other's packets. New
// registers the same functions on both, with each family's reassembly
// first; the functions read the packet's version. One ruleset serves both
// families, as an nft "inet" table does: an address match (-s, -d) or a
// NAT target of one family does not apply to the other's packets (a
// negated address match does not match them either), -p icmp and
// --icmp-type are ICMP's, -p icmpv6 and --icmpv6-type ICMPv6's, and
// REJECT answers each family in its own ICMP. Conntrack is shared: IPv6
// flows are tracked past their extension headers, ICMPv6 echo like ICMP
// echo, ICMPv6 errors as RELATED; Neighbor Discovery and MLD are not
// tracked. NDP messages the stack sends pass no hook (neigh sends them,
// as it sends ARP); a DROP policy at INPUT must let ICMPv6 NDP in, as
// with ip6tables.
//
// Not owned here: where the hooks sit in the packet path (ipv4 calls
// Hooks.Run at the kernel's places), what happens to a dropped packet (the
// caller frees it with the verdict's reason), ICMP error generation (ipv4's
// SendICMPError, reached through Sender), and the conntrack table itself
// (package conntrack).
//
// # Hooks and priorities
//
// New registers, per hook, in the kernel's order (enum nf_ip_hook_priorities):
//
//	-400 defrag      PREROUTING                         nf_defrag_ipv4
//	-200 conntrack   PREROUTING, OUTPUT                 nf_conntrack_in
//	-150 mangle      all five                           iptable_mangle
//	-100 nat (dst)   PREROUTING, OUTPUT                 DNAT, REDIRECT
//	   0 filter      INPUT, FORWARD, OUTPUT             iptable_filter
//	 100 nat (src)   POSTROUTING, INPUT                 SNAT, MASQUERADE
//	 max confirm     POSTROUTING, INPUT                 nf_conntrack_confirm
//
// The raw priority (-300) is reserved for a raw table we do not have.
//
// # Tables, chains, rules
//
// Tables filter, nat and mangle have the kernel's built-in chains with a
// policy (ACCEPT or DROP) each; user chains are reached by a jump and left
// by RETURN or by falling off their end. Every rule and every policy
// counts packets and bytes. A Ruleset is built by ParseRules or the Go API
// (NewRuleset, NewChain, Append, SetPolicy), checked by Load (jumps
// resolve, no loops, NAT targets only in nat at their hooks, REJECT only
// at INPUT/FORWARD/OUTPUT, DIVERT only in mangle PREROUTING) and published
// atomically: evaluation takes no lock. The nat table is consulted only
// for the first packet of a flow (conntrack NEW); its decision becomes the
// flow's binding and applies to every later packet, both ways.
//
// # Rule-file syntax
//
// A small iptables-save-like text, one command per line; # starts a
// comment; "double quotes" group words.
//
//	*filter | *nat | *mangle          select the table (default filter)
//	:CHAIN ACCEPT|DROP [n:m]          policy of a built-in chain
//	:CHAIN - [n:m]                    create a user chain
//	-N CHAIN                          create a user chain
//	-P CHAIN ACCEPT|DROP              set a policy
//	-A CHAIN [-t TABLE] MATCH... -j TARGET [TARGET OPTION...]
//	COMMIT                            accepted and ignored
//
// Matches, each negatable with a leading "!":
//
//	-i NAME, -o NAME                  link; "eth+" matches every name starting "eth"
//	-s ADDR[/LEN], -d ADDR[/LEN]      source, destination prefix (IPv4 or IPv6)
//	-p tcp|udp|icmp|icmpv6|NUMBER|all protocol (ipv6-icmp is icmpv6)
//	--sport P[:Q], --dport P[:Q]      port range (after -p tcp or -p udp)
//	--icmp-type T[/C] | NAME          ICMP type and code (after -p icmp)
//	--icmpv6-type T[/C] | NAME        ICMPv6 type and code (after -p icmpv6;
//	                                  ip6tables' names: echo-request,
//	                                  packet-too-big, neighbour-solicitation, ...)
//	--tcp-flags MASK SET, --syn       TCP flags, e.g. SYN,ACK SYN (after -p tcp)
//	--ctstate S[,S] (--state)         NEW ESTABLISHED RELATED INVALID UNTRACKED
//	--mark V[/M]                      skb mark
//	--length N[:M]                    IP total length
//	-m MODULE, --comment TEXT         accepted for iptables compatibility
//
// Targets: ACCEPT, DROP, RETURN, a user chain name (jump), REJECT
// [--reject-with icmp-port-unreachable|icmp-host-unreachable|
// icmp-net-unreachable|icmp-proto-unreachable|icmp-admin-prohibited|
// tcp-reset; for IPv6 packets these become ICMPv6 port unreachable,
// address unreachable, no route, Parameter Problem code 1, and
// administratively prohibited; ip6tables' icmp6-port-unreachable,
// icmp6-addr-unreachable, icmp6-no-route and icmp6-adm-prohibited are
// accepted as the same], LOG [--log-prefix TEXT], MARK --set-mark V[/M] |
// --set-xmark V[/M], SNAT --to-source A[-B][:P[-Q]], DNAT
// --to-destination A[-B][:P[-Q]] (IPv6: A[-B], or [A][-[B]]:P[-Q]),
// MASQUERADE [--to-ports P[-Q]], REDIRECT [--to-ports P[-Q]], DIVERT.
//
// Every error is a *ParseError naming line and column, e.g.
// "line 4, column 27: --dport needs -p tcp or -p udp before it".
//
// # Connection tracking and NAT
//
// The conntrack hook classifies each packet (package conntrack) and keeps
// the result in skb.CB[16:28] (the kernel's skb->_nfct) until the packet
// leaves IP; the later hooks read it there (and ipv4 the reply-to NIC in
// CB[28:32], see Reply-to). NAT rewrites addresses and ports to the flow's
// tuples with incremental checksum updates (RFC 1624).
// A CHECKSUM_PARTIAL packet's transport checksum field holds the
// uncomplemented pseudo-header sum, so an address change is folded in the
// opposite sense and a port change not at all (inet_proto_csum_replace4
// with pseudohdr). An ICMP error about a translated flow (RELATED) has its
// quoted datagram translated back and its checksum recomputed
// (nf_nat_icmp_reply_translation). Fragments are reassembled at
// PREROUTING before tracking (defrag.go; defrag6.go for IPv6; the queue
// table, its memory bound and timers are netstack/inetfrag's); the
// forward path fragments again when the datagram exceeds the next MTU
// (for IPv6: to the size of the largest original fragment, FragMaxSize,
// as ip6_forward does with frag_max_size; a Packet Too Big when even that
// exceeds the next link). NAT66 (nat6.go) rewrites IPv6 addresses and
// ports with the pseudo-header checksums of TCP, UDP and ICMPv6 updated
// incrementally; the IPv6 header has no checksum.
//
// A packet out of the TCP window is INVALID for the ctstate match but is
// still translated, so a private address never leaks (the kernel leaves
// such packets untranslated).
//
// REJECT's TCP reset is built here (nf_send_reset) with the flow's
// original addresses, routed with the FIB and handed to the neighbour
// layer without traversing the output hooks. A reset whose destination is
// one of our own addresses (REJECT in OUTPUT of a local flow) is not sent
// (counted as NF_REJECT_RST_NO_ROUTE in Drops): the route.Output of our
// IPv4 layer refuses a foreign source and there is no raw loopback path.
//
// # DIVERT (proxy mode)
//
// DIVERT, in mangle PREROUTING, sets MarkDivert on the packet and on its
// flow; the conntrack hook sets the mark again on every later packet of
// the flow. The IPv4 routing input (ipv4.rcvFinish) treats a packet
// carrying MarkDivert as local, as the kernel's TPROXY setup does with
// "ip rule fwmark → table local": the packet is delivered to the local
// transport with its original destination, where a transparent listener
// takes it. The bit is reserved: MARK rules should leave it alone.
// Netfilter.Divert does the same from a hook function written in Go (with
// CtState to see whether the flow is NEW).
//
// The other way round, a transparent socket (one sending from an address
// that is not ours, route.Flow.Transparent) puts MarkDivert on its
// packets; the conntrack hook at OUTPUT copies it to the flow, so the
// peer's replies to that foreign address are marked at PREROUTING and
// delivered to the socket instead of being forwarded.
//
// # Reply-to
//
// SetReplyTo names NICs whose flows are answered through them: the
// conntrack hook records such a NIC in the Conn of a flow whose first
// packet arrived there (Conn.SetReplyNIC), and for every later
// reply-direction packet of the flow (replies, and ICMP errors about it,
// the stack's own at OUTPUT included) that did not itself arrive there it
// leaves the NIC in skb.CB[28:32], read by ReplyNIC. The IPv4 routing
// decision (ipv4.rcvFinish, ipv4.localOut) then routes the packet through
// that NIC (route.Table.Via) instead of the FIB's choice. This is pf's
// reply-to; Linux gets it from CONNMARK --save-mark/--restore-mark and an
// `ip rule fwmark` table. The daemon sets it on the uplink, so the host's
// conntrack sees both directions of a flow it DNATed back into the stack
// (a Service whose backend is a pod of the same stack). replyto.go has
// the details. Cost: one atomic load of the Conn per reply-direction
// packet, one read of skb.CB per routed packet.
//
// # Limits
//
// Conntrack: Config.Conntrack.Max flows (see package conntrack). Defrag:
// DefragMemLimit bytes held (4 MiB) per family, 256 fragments per
// datagram, DefragTimeout (30 s for IPv4, 60 s for IPv6 unless set). Jumps nest at most 32 deep (loops are refused at
// load). LOG lines: LogRate per second, burst LogBurst; the rest are
// counted in Stats.LogSuppressed. ParseRules: 4 MiB of text, 100000 rules.
// Reply-to NICs: MaxReplyToNICs.
//
// Lock order: Netfilter.loadMu (Load and SetReplyTo only) ; the defrag
// tables' locks (inetfrag.Table.mu, one for IPv4, one for IPv6; > clock) ;
// conntrack's Table.mu > Conn.mu. Rule evaluation holds no lock.
package netfilter
