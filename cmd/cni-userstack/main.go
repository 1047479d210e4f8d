// Command cni-userstack is one binary with several faces:
//
//   - with CNI_COMMAND set (and no subcommand) it is the CNI plugin
//     (package plugin), run by the container runtime;
//   - `cni-userstack serve` runs the stack daemon (package daemon);
//   - the other subcommands read a running daemon over its API socket.
//
// The command line is built with cobra (root.go); each command lives in a
// file of its own. Exit codes: 0 success, 1 the command failed, 2 the
// command line was wrong (unknown command or flag, bad value); usage is
// printed then. Flags, keys and commands: docs/config.md and
// docs/operations.md.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/cni-userstack/cni-userstack/plugin"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "0.1.0-dev"

// Exit codes of the command line.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	args := os.Args[1:]
	// A runtime execs the plugin with CNI_COMMAND set and no arguments.
	// Any argument means the user asked for a command, whatever the
	// environment says.
	if os.Getenv("CNI_COMMAND") != "" && len(args) == 0 {
		plugin.Main(Version)
		return
	}
	os.Exit(run(args))
}

// run executes the command line and returns its exit code.
func run(args []string) int {
	root := newRootCmd()
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) || isFlagError(err) {
		fmt.Fprintf(os.Stderr, "Error: %v\n\n%s", err, cmd.UsageString())
		return exitUsage
	}
	fmt.Fprintf(os.Stderr, "cni-userstack %s: %v\n", cmd.Name(), err)
	return exitFail
}
