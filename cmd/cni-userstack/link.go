package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

func newLinkCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "link [NIC|POD...]",
		Short: "List the stack's NICs with their pods, state, offloads and counters (ip -s link)",
		Long: `link lists the NICs of the userspace stack as ` + "`ip -s -d link`" + ` lists a kernel's:
each pod link with the pod it belongs to (namespace/name when the runtime
passed K8S_POD_NAMESPACE and K8S_POD_NAME, else the container ID), the
uplink, their MAC, MTU, state and packet counters. -o wide adds the
offloads, the transmit queue and the kernel's drops on the link's
AF_PACKET socket. Arguments select NICs by name or number, or pods by
namespace/name, name, container ID or attachment ID.`,
		Example: `  cni-userstack link
  cni-userstack link -o wide default/web-0
  cni-userstack link -o json us-uplink`,
		RunE: runLinks(&cf, &out, func(w io.Writer, links []api.Link) error { return printLinks(w, links, out.format == "wide") }),
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml", "wide")
	return cmd
}

// runLinks is the RunE of the commands that read the NICs (link, addr):
// fetch them, keep those args select, print them structured or with print.
func runLinks(cf *clientFlags, out *outputFlag, print func(io.Writer, []api.Link) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := out.validate(); err != nil {
			return err
		}
		return cf.call(func(ctx context.Context, c *api.Client) error {
			links, err := c.Links(ctx)
			if err != nil {
				return err
			}
			links, err = selectLinks(links, args)
			if err != nil {
				return err
			}
			if done, err := out.structured(cmd.OutOrStdout(), links); done {
				return err
			}
			return print(cmd.OutOrStdout(), links)
		})
	}
}

// selectLinks keeps the links args name (all without args); an argument
// that names nothing is an error.
func selectLinks(links []api.Link, args []string) ([]api.Link, error) {
	if len(args) == 0 {
		return links, nil
	}
	var out []api.Link
	for _, a := range args {
		n := 0
		for _, l := range links {
			if linkMatches(l, a) {
				out = append(out, l)
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("no NIC or pod %q: `cni-userstack link` lists them", a)
		}
	}
	return out, nil
}

func linkMatches(l api.Link, s string) bool {
	if l.Name == s || strconv.Itoa(l.NIC) == s {
		return true
	}
	p := l.Pod
	if p == nil {
		return false
	}
	return s == p.Attachment || s == p.ContainerID || (len(s) >= 12 && strings.HasPrefix(p.ContainerID, s)) ||
		(p.Name != "" && (s == p.Name || s == p.Namespace+"/"+p.Name))
}

func linkState(l api.Link) string {
	if l.Up {
		return "UP"
	}
	return "DOWN"
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// podLabel is the pod column: namespace/name, else the short container ID.
func podLabel(p *api.LinkPod) string {
	if p == nil {
		return ""
	}
	if p.Name != "" {
		return p.String()
	}
	return shortID(p.ContainerID)
}

// busyPoll is the BUSY-POLL column: how the link's busy polls ended,
// hits/sleeps/yields/skips, then the host-socket events they handled;
// "-" with busy polling off.
func busyPoll(b *api.BusyPoll) string {
	if b == nil {
		return "-"
	}
	return fmt.Sprintf("%d/%d/%d/%d/%d", b.Hits, b.Sleeps, b.Yields, b.Skips, b.HostEvents)
}

func printLinks(w io.Writer, links []api.Link, wide bool) error {
	h := []string{"NIC", "NAME", "KIND", "STATE", "MTU", "MAC", "POD", "RX-PACKETS", "RX-BYTES", "RX-DROPPED",
		"TX-PACKETS", "TX-BYTES", "TX-DROPPED"}
	if wide {
		h = append(h, "RX-ERRORS", "TX-ERRORS", "KERNEL-DROPS", "BUSY-POLL", "TXQ", "OFFLOADS", "CONTAINER", "IFNAME", "MODE")
	}
	t := newTable(w, h...)
	for _, l := range links {
		s := l.Stats
		row := []string{itoa(l.NIC), l.Name, l.Kind, linkState(l), itoa(l.MTU), l.MAC, podLabel(l.Pod),
			itoa(s.RxPackets), itoa(s.RxBytes), itoa(s.RxDropped), itoa(s.TxPackets), itoa(s.TxBytes), itoa(s.TxDropped)}
		if wide {
			var ctr, ifn, mode string
			if p := l.Pod; p != nil {
				ctr, ifn, mode = p.ContainerID, p.IfName, string(p.Mode)
			}
			row = append(row, itoa(s.RxErrors), itoa(s.TxErrors), itoa(l.KernelDrops), busyPoll(l.BusyPoll), fmt.Sprintf("%d/%d", l.TxQueued, l.TxQueue),
				strings.Join(l.Offloads, ","), ctr, ifn, mode)
		}
		t.row(row...)
	}
	return t.flush()
}
