package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

type conntrackFlags struct {
	list, count, stats bool
	proto, src, dst    string
}

func newConntrackCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	var f conntrackFlags
	cmd := &cobra.Command{
		Use:   "conntrack (-L | -C | -S) [-p PROTO] [-s ADDR] [-d ADDR]",
		Short: "Show the stack's connection tracking table (conntrack -L, -C, -S)",
		Long: `conntrack reads the stack's connection tracking table as the conntrack tool
reads a kernel's. -L lists the flows in conntrack's format: protocol, its
number, seconds left before the flow expires, the TCP state, the original
and the reply tuple with the packets and bytes of each direction, and the
flags ([UNREPLIED], [ASSURED]). A reply tuple that is not the inverse of
the original one is a NAT binding; -L marks it [SNAT] or [DNAT]. -C prints
the number of flows, -S the table's counters and its bound.

Filters for -L: -p tcp|udp|icmp, -s (original source), -d (original
destination).`,
		Example: `  cni-userstack conntrack -L
  cni-userstack conntrack -L -p tcp -s 10.22.0.5
  cni-userstack conntrack -C`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			n := 0
			for _, b := range []bool{f.list, f.count, f.stats} {
				if b {
					n++
				}
			}
			if n == 0 {
				f.list = true // conntrack with filters and no command lists
			} else if n > 1 {
				return usageErrorf("give one of -L, -C and -S")
			}
			flt, err := parseCTFilter(f)
			if err != nil {
				return usageErrorf("%v", err)
			}
			return cf.call(func(ctx context.Context, c *api.Client) error {
				ct, err := c.Conntrack(ctx, f.list)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				switch {
				case f.count:
					if done, err := out.structured(w, map[string]int{"count": ct.Count, "max": ct.Max}); done {
						return err
					}
					_, err = fmt.Fprintln(w, ct.Count)
					return err
				case f.stats:
					if done, err := out.structured(w, ct); done {
						return err
					}
					return printCTStats(w, ct)
				}
				ct.Entries = flt.apply(ct.Entries)
				if done, err := out.structured(w, ct.Entries); done {
					return err
				}
				if err := printConntrack(w, ct.Entries); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "cni-userstack conntrack: %d flow entries have been shown.\n", len(ct.Entries))
				return nil
			})
		},
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml")
	fl := cmd.Flags()
	fl.BoolVarP(&f.list, "dump", "L", false, "list the flows")
	fl.BoolVarP(&f.count, "count", "C", false, "print the number of flows")
	fl.BoolVarP(&f.stats, "stats", "S", false, "print the table's counters")
	fl.StringVarP(&f.proto, "proto", "p", "", "only flows of this protocol: tcp, udp, icmp or a number")
	fl.StringVarP(&f.src, "orig-src", "s", "", "only flows whose original source is this address")
	fl.StringVarP(&f.dst, "orig-dst", "d", "", "only flows whose original destination is this address")
	return cmd
}

type ctFilter struct {
	proto    string
	src, dst netip.Addr
}

func parseCTFilter(f conntrackFlags) (ctFilter, error) {
	out := ctFilter{proto: strings.ToLower(f.proto)}
	for _, x := range []struct {
		v   string
		dst *netip.Addr
		fl  string
	}{{f.src, &out.src, "--orig-src"}, {f.dst, &out.dst, "--orig-dst"}} {
		if x.v == "" {
			continue
		}
		a, err := netip.ParseAddr(x.v)
		if err != nil {
			return out, fmt.Errorf("%s %q: want an address", x.fl, x.v)
		}
		*x.dst = a
	}
	return out, nil
}

func (f ctFilter) apply(es []api.ConntrackEntry) []api.ConntrackEntry {
	out := es[:0]
	for _, e := range es {
		switch {
		case f.proto != "" && f.proto != e.Proto && f.proto != itoa(e.ProtoNum):
		case f.src.IsValid() && e.Original.Src != f.src:
		case f.dst.IsValid() && e.Original.Dst != f.dst:
		default:
			out = append(out, e)
		}
	}
	return out
}

func ctTuple(t api.ConntrackTuple, proto string) string {
	switch proto {
	case "tcp", "udp":
		return fmt.Sprintf("src=%v dst=%v sport=%d dport=%d", t.Src, t.Dst, t.SrcPort, t.DstPort)
	case "icmp":
		return fmt.Sprintf("src=%v dst=%v id=%d", t.Src, t.Dst, t.SrcPort)
	}
	return fmt.Sprintf("src=%v dst=%v", t.Src, t.Dst)
}

func has(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// conntrackLine is one line of `conntrack -L`.
func conntrackLine(e api.ConntrackEntry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %d %d ", e.Proto, e.ProtoNum, int64(time.Duration(e.Timeout)/time.Second))
	if e.State != "" {
		b.WriteString(e.State + " ")
	}
	fmt.Fprintf(&b, "%s packets=%d bytes=%d ", ctTuple(e.Original, e.Proto), e.Packets[0], e.Bytes[0])
	if !has(e.Status, "SEEN_REPLY") {
		b.WriteString("[UNREPLIED] ")
	}
	fmt.Fprintf(&b, "%s packets=%d bytes=%d ", ctTuple(e.Reply, e.Proto), e.Packets[1], e.Bytes[1])
	if has(e.Status, "ASSURED") {
		b.WriteString("[ASSURED] ")
	}
	if e.SNAT {
		b.WriteString("[SNAT] ")
	}
	if e.DNAT {
		b.WriteString("[DNAT] ")
	}
	if e.ReplyTo != "" {
		fmt.Fprintf(&b, "[REPLY-TO %s] ", e.ReplyTo)
	}
	fmt.Fprintf(&b, "mark=%d use=1", e.Mark)
	return b.String()
}

func printConntrack(w io.Writer, es []api.ConntrackEntry) error {
	for _, e := range es {
		if _, err := fmt.Fprintln(w, conntrackLine(e)); err != nil {
			return err
		}
	}
	return nil
}

func printCTStats(w io.Writer, ct *api.Conntrack) error {
	s := ct.Stats
	_, err := fmt.Fprintf(w, "entries=%d max=%d found=%d new=%d invalid=%d insert=%d insert_failed=%d drop=%d early_drop=%d expired=%d deleted=%d\n",
		ct.Count, ct.Max, s.Found, s.New, s.Invalid, s.Insert, s.InsertFailed, s.Drop, s.EarlyDrop, s.Expired, s.Deleted)
	return err
}
