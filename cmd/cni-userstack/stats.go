package main

import (
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

type statsFlags struct {
	zeros bool
}

func newStatsCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	var f statsFlags
	cmd := &cobra.Command{
		Use:   "stats [PATTERN...]",
		Short: "Show the stack's MIB counters and every drop reason with its count (nstat)",
		Long: `stats prints the stack's counters as ` + "`nstat -a`" + ` prints a kernel's: every MIB
counter by its nstat name (IpInReceives, TcpRetransSegs, UdpNoPorts,
ArpInRequests, ...) and the daemon's own (PodSrcMACDrops, ProxyDiverted,
ProxyInvalidDrops, ...), then every drop reason with its layer and count
(the kernel's SKB_DROP_REASON names: IP_RPFILTER, NO_SOCKET,
POD_SRC_MAC_MISMATCH, ...), then the proxy engine's and conntrack's
counters. Counters are totals since the daemon started (there is no
history file as nstat keeps). Zero counters are left out unless -z.
PATTERNs (shell globs, as nstat takes) select counter and reason names.`,
		Example: `  cni-userstack stats
  cni-userstack stats -z 'Tcp*' 'IP_*'
  cni-userstack stats -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			for _, p := range args {
				if _, err := path.Match(p, ""); err != nil {
					return usageErrorf("pattern %q: %v", p, err)
				}
			}
			return cf.call(func(ctx context.Context, c *api.Client) error {
				st, err := c.Stats(ctx)
				if err != nil {
					return err
				}
				if done, err := out.structured(cmd.OutOrStdout(), st); done {
					return err
				}
				return printStats(cmd.OutOrStdout(), st, args, f.zeros)
			})
		},
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml")
	cmd.Flags().BoolVarP(&f.zeros, "zeros", "z", false, "show counters that are zero")
	return cmd
}

func matchAny(name string, pats []string) bool {
	if len(pats) == 0 {
		return true
	}
	for _, p := range pats {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// proxyCounters are the proxy engine's counters by name, for stats.
func proxyCounters(p *api.ProxyStats) map[string]uint64 {
	return map[string]uint64{
		"ProxyActiveTCP": uint64(p.ActiveTCP), "ProxyActiveUDP": uint64(p.ActiveUDP), "ProxyActiveEcho": uint64(p.ActiveEcho),
		"ProxyPendingTCP": uint64(p.PendingTCP), "ProxyTCPAccepted": p.TCPAccepted, "ProxyTCPRefused": p.TCPRefused,
		"ProxyTCPTimeouts": p.TCPTimeouts, "ProxyTCPUnreachable": p.TCPUnreachable, "ProxyFlowLimitDrops": p.FlowLimitDrops,
		"ProxyUDPFlowsOpened": p.UDPFlowsOpened, "ProxyUDPPortUnreachables": p.UDPPortUnreachables,
		"ProxyUDPIdleTimeouts": p.UDPIdleTimeouts, "ProxyEchoFlowsOpened": p.EchoFlowsOpened,
		"ProxyEchoIdleTimeouts": p.EchoIdleTimeouts, "ProxyEchoRelayed": p.EchoRelayed, "ProxyEchoDenied": p.EchoDenied,
		"ProxyEchoDropped": p.EchoDropped, "ProxyDNSQueries": p.DNSQueries, "ProxyDNSFailures": p.DNSFailures,
		"ProxyPortMapConns": p.PortMapConns, "ProxyUDPICMPErrors": p.UDPICMPErrors, "ProxyEchoRawRelayed": p.EchoRawRelayed,
		"ProxyEchoICMPErrors": p.EchoICMPErrors,
	}
}

func conntrackCounters(ct *api.Conntrack) map[string]uint64 {
	s := ct.Stats
	return map[string]uint64{
		"ConntrackEntries": uint64(ct.Count), "ConntrackMax": uint64(ct.Max), "ConntrackFound": s.Found,
		"ConntrackNew": s.New, "ConntrackInvalid": s.Invalid, "ConntrackInsert": s.Insert,
		"ConntrackInsertFailed": s.InsertFailed, "ConntrackDrop": s.Drop, "ConntrackEarlyDrop": s.EarlyDrop,
		"ConntrackExpired": s.Expired, "ConntrackDeleted": s.Deleted,
	}
}

// printCounters prints a section of name/value lines, nstat's layout.
func printCounters(w io.Writer, title string, m map[string]uint64, pats []string, zeros bool) {
	var names []string
	width := 0
	for k, v := range m {
		if (v != 0 || zeros) && matchAny(k, pats) {
			names = append(names, k)
			width = max(width, len(k))
		}
	}
	if len(names) == 0 {
		return
	}
	sort.Strings(names)
	fmt.Fprintln(w, title)
	for _, k := range names {
		fmt.Fprintf(w, "%-*s  %d\n", width, k, m[k])
	}
}

func printStats(w io.Writer, st *api.Stats, pats []string, zeros bool) error {
	printCounters(w, "#kernel", st.Counters, pats, zeros)
	var drops []api.Drop
	for _, d := range st.Drops {
		if (d.Count != 0 || zeros) && matchAny(d.Reason, pats) {
			drops = append(drops, d)
		}
	}
	if len(drops) > 0 {
		fmt.Fprintln(w, "#drops")
		t := newTable(w, "LAYER", "REASON", "COUNT")
		for _, d := range drops {
			t.row(d.Layer, d.Reason, itoa(d.Count))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if st.Proxy != nil {
		printCounters(w, "#proxy", proxyCounters(st.Proxy), pats, zeros)
	}
	if st.Conntrack != nil {
		printCounters(w, "#conntrack", conntrackCounters(st.Conntrack), pats, zeros)
	}
	if len(pats) == 0 {
		var parts []string
		for _, m := range []api.Mode{api.ModeProxy, api.ModeRoute} {
			parts = append(parts, fmt.Sprintf("%s=%d", m, st.Attached[m]))
		}
		fmt.Fprintln(w, "#attachments "+strings.Join(parts, " "))
	}
	return nil
}
