package netstack

import (
	"fmt"
	"sort"
	"strings"

	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// Stats is a snapshot of every counter of the stack: what `ip -s link`,
// `nstat -az` and the drop-reason tracepoints show on Linux.
type Stats struct {
	NICs  []NICStats
	IP    ipv4.Stats // with the ICMP MIB in IP.ICMP
	IP6   ipv6.Stats // with the ICMPv6 MIB in IP6.ICMP
	UDP   udp.Stats
	Neigh neigh.Stats
	// Counters holds every MIB counter by its nstat name (IpInReceives,
	// IcmpOutTimeExcds, Ip6InReceives, Icmp6OutPktTooBigs, UdpNoPorts,
	// ArpInRequests, Icmp6OutNeighborSolicits, ...), zeros included.
	Counters map[string]uint64
	// Drops counts freed packets by drop reason over the whole stack:
	// received ones count on their NIC, locally originated ones on the
	// layer that sent them; the sum is here.
	Drops map[string]uint64
}

// NICStats are one NIC's counters.
type NICStats struct {
	ID   int
	Name string
	dev.Stats
}

// Stats returns a snapshot of the counters. Counters are read one by one
// without a global lock, so a snapshot taken under traffic is not atomic.
func (s *Stack) Stats() Stats {
	st := Stats{
		IP:       s.ip.Stats(),
		IP6:      s.ip6.Stats(),
		UDP:      s.udp.Stats(),
		Neigh:    s.neigh.Stats(),
		Counters: map[string]uint64{},
		Drops:    map[string]uint64{},
	}
	for k, v := range s.ip.Counters() {
		st.Counters[k] = v
	}
	for k, v := range s.ip6.Counters() {
		st.Counters[k] = v
	}
	for k, v := range s.udp.Counters() {
		st.Counters[k] = v
	}
	for k, v := range s.tcp.Counters() {
		st.Counters[k] = v
	}
	n := st.Neigh
	for k, v := range map[string]uint64{
		"ArpInRequests": n.InRequests, "ArpInReplies": n.InReplies, "ArpOutRequests": n.OutRequests,
		"ArpOutReplies": n.OutReplies, "ArpInErrors": n.InErrors, "NeighResFailed": n.ResolutionFailures,
		"NeighUnresDiscards": n.QueueDrops, "NeighTableFulls": n.TableFull, "NeighForcedGCRuns": n.ForcedGC,
		// NDP's own (the ICMPv6 MIB counts what arrives; these count
		// what neigh sent and decided).
		"Icmp6OutNeighborSolicits": n.NDPOutSolicits, "Icmp6OutNeighborAdvertisements": n.NDPOutAdverts,
		"Icmp6OutRouterAdvertisements": n.NDPOutRouterAdverts, "NdiscInErrors": n.NDPInErrors,
		"NdiscDADReplies": n.DADReplies, "NdiscDADConflicts": n.DADConflicts,
	} {
		st.Counters[k] = v
	}
	for _, nic := range s.devs.List() {
		ns := NICStats{ID: nic.ID(), Name: nic.Name(), Stats: nic.Stats()}
		st.NICs = append(st.NICs, ns)
		for r, v := range ns.Drops {
			st.Drops[r] += v
		}
	}
	sort.Slice(st.NICs, func(i, j int) bool { return st.NICs[i].ID < st.NICs[j].ID })
	for _, d := range []map[string]uint64{s.ip.Drops().Snapshot(), s.ip6.Drops().Snapshot(), s.udp.Drops().Snapshot(), s.tcp.Drops().Snapshot()} {
		for r, v := range d {
			st.Drops[r] += v
		}
	}
	return st
}

// String formats the snapshot like `nstat` (non-zero counters, one per
// line, name and value), then one `ip -s link`-style line per NIC, then
// the non-zero drop reasons.
func (st Stats) String() string {
	var b strings.Builder
	b.WriteString("#kernel\n")
	writeSorted(&b, st.Counters)
	for _, n := range st.NICs {
		fmt.Fprintf(&b, "%d: %s rx %d pkts %d bytes %d dropped %d errors, tx %d pkts %d bytes %d dropped %d errors\n",
			n.ID, n.Name, n.RxPackets, n.RxBytes, n.RxDropped, n.RxErrors, n.TxPackets, n.TxBytes, n.TxDropped, n.TxErrors)
	}
	if len(st.Drops) > 0 {
		b.WriteString("#drops\n")
		writeSorted(&b, st.Drops)
	}
	return b.String()
}

func writeSorted(b *strings.Builder, m map[string]uint64) {
	keys := make([]string, 0, len(m))
	width := 0
	for k, v := range m {
		if v != 0 {
			keys = append(keys, k)
			width = max(width, len(k))
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(b, "%-*s %d\n", width+4, k, m[k])
	}
}
