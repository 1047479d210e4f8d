package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// usageError is a command-line mistake: the caller prints usage and exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// flagError wraps the errors cobra and pflag return for a bad flag.
type flagError struct{ err error }

func (e *flagError) Error() string { return e.err.Error() }
func (e *flagError) Unwrap() error { return e.err }

func isFlagError(err error) bool {
	var fe *flagError
	if errors.As(err, &fe) {
		return true
	}
	// cobra's own messages for an unknown command or a wrong argument count.
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "unknown shorthand flag") || strings.Contains(s, "arg(s), received")
}

// newRootCmd builds the whole command tree. Each command file adds its own
// command through a newXxxCmd function listed here.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "cni-userstack",
		Short: "A CNI plugin whose pods' traffic runs through a userspace TCP/IP stack",
		Long: `cni-userstack is a CNI plugin and the daemon that runs its userspace TCP/IP stack.

Run by a container runtime with CNI_COMMAND set, it is the plugin. As a
command, it runs the daemon (serve) and reads a running daemon's state over
its API socket.`,
		Version:       Version,
		SilenceErrors: true, // run prints errors and picks the exit code
		SilenceUsage:  true,
	}
	root.SetVersionTemplate("cni-userstack {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &flagError{err: err} })
	root.AddCommand(
		newServeCmd(),
		newInstallCmd(),
		newStatusCmd(),
		newAttachmentsCmd(),
		newLinkCmd(),
		newAddrCmd(),
		newRouteCmd(),
		newNeighCmd(),
		newSSCmd(),
		newConntrackCmd(),
		newStatsCmd(),
		newPcapCmd(),
		newVersionCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "cni-userstack %s\n", Version)
			return nil
		},
	}
}
