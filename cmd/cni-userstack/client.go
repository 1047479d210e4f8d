package main

import (
	"context"
	"fmt"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

// clientFlags are the flags every command that reads the daemon takes.
type clientFlags struct {
	socket  string
	timeout time.Duration
}

func (c *clientFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.socket, "socket", api.DefaultSocket, "the daemon's API socket")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 10*time.Second, "bound of the whole call to the daemon")
}

// call runs fn with a client of the daemon and a context bounded by
// --timeout. An unreachable daemon becomes an error that says which socket
// was tried and how to start one.
func (c *clientFlags) call(fn func(ctx context.Context, cl *api.Client) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	return c.explain(fn(ctx, api.NewClient(c.socket, c.timeout)))
}

// explain turns an unreachable daemon into an error that says which
// socket was tried and how to start one.
func (c *clientFlags) explain(err error) error {
	if api.IsUnreachable(err) {
		return fmt.Errorf("%v\nno daemon answers on %s: start one with `cni-userstack serve --socket %s` "+
			"(or let the plugin autostart it), or point --socket at the running daemon's socket", err, c.socket, c.socket)
	}
	return err
}
