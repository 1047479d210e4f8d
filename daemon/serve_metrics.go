package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/metrics"
)

// The metrics and probe server of `serve` (--metrics-addr). It starts
// before recovery, so /readyz answers "not ready" while the daemon
// recovers and /healthz fails until the API listens; it reads the daemon
// once there is one (lateDaemon).
//
// An address that cannot be bound (in use) does not stop the daemon: pods
// keep their network, the error is logged and shown in the status
// (metrics.error), and a probe pointed at the address fails, which is
// what a supervisor must see. A malformed address is a flag error.

// checkMetricsAddr validates --metrics-addr: "" or host:port.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %q: want host:port (or \"\" to disable): %v", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("--metrics-addr %q: port %q: want 0..65535", addr, port)
	}
	return nil
}

// lateDaemon is the metrics' view of a daemon that does not exist yet at
// start: empty until set.
type lateDaemon struct{ d atomic.Pointer[Daemon] }

func (l *lateDaemon) Stats() *api.Stats {
	if d := l.d.Load(); d != nil {
		return d.Stats()
	}
	return &api.Stats{}
}

func (l *lateDaemon) Links() []api.Link {
	if d := l.d.Load(); d != nil {
		return d.Links()
	}
	return nil
}

func (l *lateDaemon) health(ctx context.Context) error {
	d := l.d.Load()
	if d == nil {
		return errors.New("starting: the API is not up yet")
	}
	return d.Health(ctx)
}

func (l *lateDaemon) ready() bool {
	d := l.d.Load()
	return d != nil && d.Ready()
}

// metricsRun is the running metrics server, if any.
type metricsRun struct {
	late   lateDaemon
	m      *metrics.Metrics
	srv    *metrics.Server
	status *api.MetricsStatus
}

// startMetrics opens the metrics server unless addr is "".
func startMetrics(addr, version string, log *slog.Logger) *metricsRun {
	if addr == "" {
		return nil
	}
	r := &metricsRun{status: &api.MetricsStatus{Addr: addr}}
	r.m = metrics.New(&r.late, version, metrics.Checks{Health: r.late.health, Ready: r.late.ready})
	srv, err := metrics.Listen(addr, r.m.Handler())
	if err != nil {
		r.status.Error = err.Error()
		log.Error("metrics and probes are not served: --metrics-addr cannot be opened; the daemon runs on without them",
			"addr", addr, "err", err)
		return r
	}
	r.srv = srv
	r.status.Listening = srv.Addr()
	log.Info("metrics and probes served", "addr", srv.Addr(), "paths", "/metrics /healthz /readyz")
	return r
}

// attach gives the server its daemon: it reads d from now on, and d
// reports attach/detach latency to it.
func (r *metricsRun) attach(d *Daemon) {
	if r == nil {
		return
	}
	d.SetObserver(r.m)
	d.SetMetricsStatus(r.status)
	r.late.d.Store(d)
}

// close shuts the server down (bounded).
func (r *metricsRun) close() {
	if r == nil || r.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.srv.Close(ctx)
}
