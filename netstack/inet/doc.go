// Package inet owns what the IPv4 and IPv6 layers share where the two
// families run the same logic: the tail of local output that the kernel
// writes once for both (nf_hook, ip_route_me_harder's re-route after a
// hook changed the destination, dst_output's hand-off to neigh_output),
// the loopback device's backlog (netif_rx, process_backlog) and the
// receive of a looped-back packet, the ICMP/ICMPv6 error rate limit
// (icmp_global, with Linux's shared defaults), the per-NIC
// reverse-path policy (rp_filter), the keyed hash behind IP IDs and
// flow labels (jhash_3words), and proxy mode's diverted echo request
// with the interceptor it goes to (EchoRequest, EchoInterceptor; the
// families build the request from their own headers). Both layers reach
// it through Output, built once per layer with a Family: the one thing
// the shared tail needs to know about a family, how to read the
// addresses of its header.
//
// It does not own what differs between the families, and those paths
// stay in netstack/ipv4 and netstack/ipv6 with their RFC citations:
// building the header (IP ID vs flow label), finishOutput (IPv4 fragments
// at any hop and sends Fragmentation Needed for DF, RFC 1191; IPv6
// fragments only at the source, never on forward, sizes by the path MTU
// cache and refuses links under 1280, RFC 8200 §5, RFC 8201), extension
// headers, ICMP vs ICMPv6 types, codes, checksums and never-lists (RFC
// 1122 §3.2.2 vs RFC 4443 §2.4), the MIBs (the layers hand Output
// pointers to their own counters), reassembly keys (netstack/inetfrag
// holds the shared queue table). Nor does it run the hooks of the
// receive paths (each family writes STYLE.md §3's verdict switch at its
// own): only LOCAL_OUT, POSTROUTING and a looped-back packet's PREROUTING
// run here.
//
// This package sits below ipv4 and ipv6 and imports neither; it imports
// buf, clock, dev, neigh, netfilter and route, as both layers do.
//
// # Theory of operation
//
// Local output, both families (ipv4/output.go, ipv6/output.go):
//
//	QueueXmit (family: route, push its header)
//	  → localOut (family) → Output.LocalOut: LOCAL_OUT; re-route when a
//	      hook rewrote the destination; netfilter's reply-to NIC → Via
//	  → output (family; forward joins here) → Output.PostRouting
//	  → finishOutput (family: loopback, MTU, fragment or ICMP)
//	  → Output.NeighOutput (the layer's out seam) → neigh.Output
//
// Each call returns to the family's path, which reads straight down as
// the kernel's ip_output.c and ip6_output.c do; the shared calls return ok
// (the kernel's nf_hook return of 1) when the packet goes on. Nothing on
// this path allocates: Output, its Family (a zero-size value) and the
// family's callbacks (OutputConfig.LocalDeliver, SendICMPError) are bound
// once in the layer's New.
//
// Loopback (loopback.go): a Local route's packet goes to the backlog
// (loopback_xmit → netif_rx); a clock callback drains it (process_backlog)
// into loopRcv, what ip_rcv and ipv6_rcv do alike with a packet we built
// (InReceives, checksums trusted, PREROUTING in NIC 0), then the family's
// local delivery. The neighbour layer's failure handlers defer their ICMP
// errors through the same backlog (DeferICMPError), as they may hold
// neigh's locks. Bound: BacklogMax entries, BacklogBudget per run.
//
// # Locks
//
// TokenBucket.mu (leaf, ICMP errors only), RPFilter.mu (SetRPFilter
// only; readers load an atomic pointer) and the backlog's dev.Backlog.mu
// (loopback only; held while arming its clock timer: dev.Backlog.mu >
// clock; the callback runs with no lock held). Output takes no other.
package inet
