package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

func newNeighCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	var stats bool
	cmd := &cobra.Command{
		Use:     "neigh [NIC|POD...]",
		Aliases: []string{"neighbour", "neighbor"},
		Short:   "Show the stack's neighbour (ARP) table with NUD states (ip neigh)",
		Long: `neigh prints the stack's neighbour table as ` + "`ip neigh`" + ` prints a kernel's:
address, device, link-layer address and NUD state. A pod's entry is
PERMANENT: the stack knows the pod's MAC from the CNI ADD and never asks
for it (as ` + "`ip neigh replace ... nud permanent`" + `); learned entries
(the uplink's host end) go through INCOMPLETE, REACHABLE, STALE, DELAY and
PROBE. -s adds the probes sent, the packets queued and when the entry was
last confirmed and used (` + "`ip -s neigh`" + `); -o wide adds the pod.
Arguments select NICs or pods as for ` + "`link`" + `.`,
		Example: `  cni-userstack neigh
  cni-userstack neigh -s us-uplink`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			return cf.call(func(ctx context.Context, c *api.Client) error {
				ns, err := c.Neighbours(ctx)
				if err != nil {
					return err
				}
				if len(args) > 0 {
					links, err := c.Links(ctx)
					if err != nil {
						return err
					}
					if links, err = selectLinks(links, args); err != nil {
						return err
					}
					keep := map[int]bool{}
					for _, l := range links {
						keep[l.NIC] = true
					}
					sel := ns[:0]
					for _, n := range ns {
						if keep[n.NIC] {
							sel = append(sel, n)
						}
					}
					ns = sel
				}
				if done, err := out.structured(cmd.OutOrStdout(), ns); done {
					return err
				}
				return printNeighbours(cmd.OutOrStdout(), ns, stats, out.format == "wide")
			})
		},
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml", "wide")
	cmd.Flags().BoolVarP(&stats, "stats", "s", false, "show probes, queued packets and the confirmed/used ages (ip -s neigh)")
	return cmd
}

// neighLine formats one entry as `ip [-s] neigh` does.
func neighLine(n api.Neighbour, stats, wide bool) string {
	s := fmt.Sprintf("%s dev %s", n.Addr, n.Dev)
	if n.MAC != "" {
		s += " lladdr " + n.MAC
	}
	if stats {
		secs := func(d api.Duration) string {
			if d == 0 {
				return "-"
			}
			return fmt.Sprint(int64(time.Duration(d) / time.Second))
		}
		s += fmt.Sprintf(" used %s/%s probes %d queued %d", secs(n.UsedAgo), secs(n.ConfirmedAgo), n.Probes, n.Queued)
	}
	s += " " + n.State
	if wide && n.Pod != "" {
		s += " pod " + n.Pod
	}
	return s
}

func printNeighbours(w io.Writer, ns []api.Neighbour, stats, wide bool) error {
	for _, n := range ns {
		if _, err := fmt.Fprintln(w, neighLine(n, stats, wide)); err != nil {
			return err
		}
	}
	return nil
}
