package daemon

import (
	"context"
	"fmt"
	"sort"

	"github.com/cni-userstack/cni-userstack/daemon/api"
)

// Health is /healthz's check (ARCHITECTURE.md "State and failure"): the
// daemon serves its API and drives its links. The API is asked over its
// own unix socket, through the path the plugin dials, so a socket file
// that was removed or replaced, a full accept queue or a stuck handler
// fails the probe; then every attachment's NIC must be in the stack and
// up. ctx bounds the whole check.
func (d *Daemon) Health(ctx context.Context) error {
	cl := api.NewClient(d.cfg.Socket, 0)
	recs, err := cl.List(ctx)
	if err != nil {
		return fmt.Errorf("the API does not answer on %s: %v", d.cfg.Socket, err)
	}
	if d.Inspector() == nil {
		return nil
	}
	up := map[int]bool{}
	for _, l := range d.Links() {
		up[l.NIC] = l.Up
	}
	var bad []string
	for _, a := range recs {
		switch isUp, ok := up[a.NIC]; {
		case a.NIC == 0 || !ok:
			bad = append(bad, fmt.Sprintf("%s has no NIC in the stack", a.ID))
		case !isUp:
			bad = append(bad, fmt.Sprintf("%s: NIC %d is down", a.ID, a.NIC))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("links not driven: %v", bad)
	}
	return nil
}

// SetMetricsStatus records where the metrics and probes are served, for
// the status answer.
func (d *Daemon) SetMetricsStatus(m *api.MetricsStatus) { d.insp.metrics.Store(m) }
