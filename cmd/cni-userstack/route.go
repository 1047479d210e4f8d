package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

func newRouteCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	var tableName string
	cmd := &cobra.Command{
		Use:   "route",
		Short: "Show the stack's routing table, local and uplink routes included (ip route show table all)",
		Long: `route prints the stack's FIB as ` + "`ip route show table all`" + ` prints a kernel's:
the main table (a /32 per pod link, the uplink's connected prefix and the
default route through the uplink), then the local table (the stack's own
addresses: the gateway on every pod link, the uplink's address) and the
broadcast entries. -o wide appends the pod each route's device belongs to.`,
		Example: `  cni-userstack route
  cni-userstack route --table main -o wide`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			switch tableName {
			case "all", api.TableMain, api.TableLocal:
			default:
				return usageErrorf("--table %q: want all, main or local", tableName)
			}
			return cf.call(func(ctx context.Context, c *api.Client) error {
				rs, err := c.Routes(ctx)
				if err != nil {
					return err
				}
				if tableName != "all" {
					kept := rs[:0]
					for _, r := range rs {
						if r.Table == tableName {
							kept = append(kept, r)
						}
					}
					rs = kept
				}
				if done, err := out.structured(cmd.OutOrStdout(), rs); done {
					return err
				}
				return printRoutes(cmd.OutOrStdout(), rs, out.format == "wide")
			})
		},
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml", "wide")
	cmd.Flags().StringVar(&tableName, "table", "all", "routing table: all, main or local")
	return cmd
}

// routeLine formats one route as `ip route` does.
func routeLine(r api.Route) string {
	var b strings.Builder
	if r.Type != "unicast" {
		b.WriteString(r.Type + " ")
	}
	switch {
	case r.Dst.Bits() == 0:
		b.WriteString("default")
	case r.Dst.Bits() == 32:
		b.WriteString(r.Dst.Addr().String())
	default:
		b.WriteString(r.Dst.String())
	}
	if r.Gateway.IsValid() {
		b.WriteString(" via " + r.Gateway.String())
	}
	if r.Dev != "" {
		b.WriteString(" dev " + r.Dev)
	}
	if r.Table == api.TableLocal {
		b.WriteString(" table local")
	}
	if r.Scope != "global" {
		b.WriteString(" scope " + r.Scope)
	}
	if r.Src.IsValid() {
		b.WriteString(" src " + r.Src.String())
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	if r.MTU != 0 {
		fmt.Fprintf(&b, " mtu %d", r.MTU)
	}
	return b.String()
}

func printRoutes(w io.Writer, rs []api.Route, wide bool) error {
	for _, r := range rs {
		line := routeLine(r)
		if wide && r.Pod != "" {
			line += " pod " + r.Pod
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}
