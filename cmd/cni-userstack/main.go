// Command cni-userstack is one binary with several faces: with CNI_COMMAND
// set it is the CNI plugin (package plugin); `cni-userstack serve [flags]`
// runs the stack daemon (package daemon); `cni-userstack status` and
// `cni-userstack attachments` print the running daemon's view as JSON;
// `cni-userstack --version` prints the version. Flags and configuration
// keys: docs/config.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon"
	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/plugin"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "0.1.0-dev"

const usage = "usage: cni-userstack serve [flags] | cni-userstack status|attachments [--socket PATH] | cni-userstack --version | (as a CNI plugin, with CNI_COMMAND set)"

func main() {
	args := os.Args[1:]
	switch {
	case os.Getenv("CNI_COMMAND") != "" && (len(args) == 0 || args[0] != "serve"):
		plugin.Main(Version)
	case len(args) > 0 && args[0] == "serve":
		if err := daemon.Run(args[1:], Version, os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "cni-userstack serve: %v\n", err)
			os.Exit(1)
		}
	case len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version"):
		fmt.Printf("cni-userstack %s\n", Version)
	case len(args) > 0 && (args[0] == "status" || args[0] == "attachments"):
		if err := query(args[0], args[1:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "cni-userstack %s: %v\n", args[0], err)
			os.Exit(1)
		}
	case len(args) == 0:
		// skel prints the about string and the supported versions when
		// CNI_COMMAND is unset.
		plugin.Main(Version)
		fmt.Fprintln(os.Stderr, usage)
	default:
		fmt.Fprintf(os.Stderr, "cni-userstack: unknown command %q\n%s\n", args[0], usage)
		os.Exit(2)
	}
}

// query prints the daemon's status or attachments as indented JSON.
func query(what string, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cni-userstack "+what, flag.ContinueOnError)
	socket := fs.String("socket", api.DefaultSocket, "the daemon's API socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := api.NewClient(*socket, 10*time.Second)
	var v any
	var err error
	if what == "status" {
		v, err = c.Status(ctx)
	} else {
		v, err = c.List(ctx)
	}
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
