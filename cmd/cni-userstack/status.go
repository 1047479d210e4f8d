package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

func newStatusCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running daemon's status and counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			return cf.call(func(ctx context.Context, c *api.Client) error {
				s, err := c.Status(ctx)
				if err != nil {
					return err
				}
				if done, err := out.structured(cmd.OutOrStdout(), s); done {
					return err
				}
				// The status is a tree of counters; JSON is its table.
				out.format = "json"
				_, err = out.structured(cmd.OutOrStdout(), s)
				return err
			})
		},
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml")
	return cmd
}

func newAttachmentsCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "attachments",
		Short: "List the pod links the daemon has attached",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			return cf.call(func(ctx context.Context, c *api.Client) error {
				l, err := c.List(ctx)
				if err != nil {
					return err
				}
				if done, err := out.structured(cmd.OutOrStdout(), l); done {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				wide := out.format == "wide"
				if wide {
					fmt.Fprintln(tw, "ID\tCONTAINER\tIFNAME\tIP\tGATEWAY\tNIC\tMODE\tNETNS")
				} else {
					fmt.Fprintln(tw, "ID\tCONTAINER\tIFNAME\tIP\tNIC\tMODE")
				}
				for _, a := range l {
					// A dual-stack pod's IPv6 address and gateway follow
					// the IPv4 ones in the same column.
					ip, gw := a.IP.String(), a.Gateway.String()
					if a.IP6.IsValid() {
						ip += "," + a.IP6.String()
						gw += "," + a.Gateway6.String()
					}
					if wide {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.ID, a.ContainerID, a.IfName, ip, gw, a.NIC, a.Mode, a.PodNetNS)
					} else {
						fmt.Fprintf(tw, "%s\t%.12s\t%s\t%s\t%d\t%s\n", a.ID, a.ContainerID, a.IfName, ip, a.NIC, a.Mode)
					}
				}
				return tw.Flush()
			})
		},
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml", "wide")
	return cmd
}
