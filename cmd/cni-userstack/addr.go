package main

import (
	"io"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

func newAddrCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	cmd := &cobra.Command{
		Use:     "addr [NIC|POD...]",
		Aliases: []string{"address"},
		Short:   "List the stack's addresses per NIC, with the pod on each link (ip -br addr)",
		Long: `addr lists the addresses the stack owns on each NIC, as ` + "`ip -br addr`" + ` does:
the gateway address on every pod link (the pod's own address is shown in
the POD-IP column: it lives in the pod, the stack routes to it), the
uplink's address. Arguments select NICs or pods as for ` + "`link`" + `.`,
		Example: `  cni-userstack addr
  cni-userstack addr kube-system/coredns-0`,
		RunE: runLinks(&cf, &out, func(w io.Writer, links []api.Link) error { return printAddrs(w, links) }),
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml")
	return cmd
}

func printAddrs(w io.Writer, links []api.Link) error {
	t := newTable(w, "NIC", "NAME", "STATE", "MAC", "ADDRESSES", "POD", "POD-IP", "POD-MAC")
	for _, l := range links {
		var ip, mac string
		if p := l.Pod; p != nil {
			ip, mac = p.IP.String(), p.MAC
			if p.IP6.IsValid() {
				ip += "," + p.IP6.String()
			}
		}
		t.row(itoa(l.NIC), l.Name, linkState(l), l.MAC, prefixes(l.Addresses), podLabel(l.Pod), ip, mac)
	}
	return t.flush()
}
