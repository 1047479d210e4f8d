package main

import (
	"os"

	"github.com/cni-userstack/cni-userstack/daemon"
	"github.com/spf13/cobra"
)

func newServeCmd() *cobra.Command {
	f := &daemon.ServeFlags{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the stack daemon (one per node)",
		Long: `serve runs the userspace stack daemon: it owns the stack network namespace,
attaches pod links on the plugin's requests, relays proxy-mode flows over host
sockets and serves its API on a unix socket. It runs until SIGTERM or SIGINT;
attachments stay recorded on disk and are re-attached at the next start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.Validate(); err != nil {
				return usageErrorf("%v", err)
			}
			return daemon.Run(f, Version, os.Stderr)
		},
	}
	f.AddFlags(cmd.Flags())
	return cmd
}
