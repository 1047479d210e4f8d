// Package metrics owns the daemon's Prometheus metrics and its probe
// endpoints (`serve --metrics-addr`, default 127.0.0.1:9765): /metrics in
// the Prometheus exposition format through the official client library,
// /healthz and /readyz for a DaemonSet's probes. Every metric name starts
// with cni_userstack_ and is documented in docs/operations.md; names and
// labels are stable.
//
// Not owned here: the counters themselves (the stack's layers, the proxy
// engine, the daemon) and what healthy means (the daemon passes its
// check in).
//
// # Theory of operation
//
// The stack's and the proxy's counters already exist as atomics; this
// package duplicates none of them on a packet path. A Collector reads the
// daemon's Source at scrape time (one Stats and one Links call, the same
// snapshots `cni-userstack stats` and `link` print) and emits const
// metrics. Only the attach and detach latency histograms are kept here:
// the daemon observes each API call (Observer), once per CNI ADD or DEL.
// Go runtime and process collectors come from the client library.
//
// Limits: a scrape costs one pass over the NICs, the drop reasons, the
// neighbour table and the TCP tables (each bounded by its layer); label
// cardinality is bounded by the NICs (dev.MaxNICs), the registered drop
// reasons (buf.MaxDropReasons) and the MIB names. Probe checks are bounded
// by ProbeTimeout.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cni-userstack/cni-userstack/daemon/api"
)

// DefaultAddr is serve --metrics-addr's default: loopback only, as the
// DaemonSet's probes (hostNetwork) and a node-local scraper reach it.
const DefaultAddr = "127.0.0.1:9765"

// ProbeTimeout bounds one /healthz check.
const ProbeTimeout = 3 * time.Second

// Source is what the metrics read of the daemon at scrape time.
type Source interface {
	// Stats are the counters (`cni-userstack stats`).
	Stats() *api.Stats
	// Links are the NICs with their pods (`cni-userstack link`).
	Links() []api.Link
}

// Checks are the probes' questions.
type Checks struct {
	// Health answers /healthz: nil when the daemon serves its API and
	// drives its links.
	Health func(ctx context.Context) error
	// Ready answers /readyz: true once start-up recovery finished.
	Ready func() bool
}

// Metrics is the registry, the latency histograms and the HTTP handler.
type Metrics struct {
	reg            *prometheus.Registry
	attach, detach *prometheus.HistogramVec
	checks         Checks
}

// LatencyBuckets are the attach/detach histograms' buckets, in seconds:
// an attach is a few syscalls and an fsync (milliseconds); a slow disk or
// a stuck netlink shows in the upper ones.
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// New builds the registry: the daemon's collector over src, the latency
// histograms, the Go runtime and process collectors, and build info.
func New(src Source, version string, checks Checks) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), checks: checks}
	m.attach = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "cni_userstack_attach_duration_seconds",
		Help:    "Time the daemon took to attach a pod link (its share of CNI ADD), by result (ok, error).",
		Buckets: LatencyBuckets,
	}, []string{"result"})
	m.detach = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "cni_userstack_detach_duration_seconds",
		Help:    "Time the daemon took to detach a pod link (its share of CNI DEL), by result (ok, error).",
		Buckets: LatencyBuckets,
	}, []string{"result"})
	for _, r := range []string{"ok", "error"} { // both series exist from the start
		m.attach.WithLabelValues(r)
		m.detach.WithLabelValues(r)
	}
	m.reg.MustRegister(m.attach, m.detach,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newCollector(src, version, checks.Ready))
	return m
}

func result(ok bool) string {
	if ok {
		return "ok"
	}
	return "error"
}

// ObserveAttach records one attach's latency (daemon.Observer).
func (m *Metrics) ObserveAttach(d time.Duration, ok bool) {
	m.attach.WithLabelValues(result(ok)).Observe(d.Seconds())
}

// ObserveDetach records one detach's latency (daemon.Observer).
func (m *Metrics) ObserveDetach(d time.Duration, ok bool) {
	m.detach.WithLabelValues(result(ok)).Observe(d.Seconds())
}

// Registry is the registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves /metrics, /healthz and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", m.healthz)
	mux.HandleFunc("GET /readyz", m.readyz)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "cni-userstack daemon: /metrics /healthz /readyz")
	})
	return mux
}

func (m *Metrics) healthz(w http.ResponseWriter, r *http.Request) {
	if m.checks.Health == nil {
		fmt.Fprintln(w, "ok")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), ProbeTimeout)
	defer cancel()
	if err := m.checks.Health(ctx); err != nil {
		http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (m *Metrics) readyz(w http.ResponseWriter, _ *http.Request) {
	if m.checks.Ready != nil && !m.checks.Ready() {
		http.Error(w, "not ready: start-up recovery has not finished", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// Server serves the handler on a listener until Close.
type Server struct {
	srv  *http.Server
	l    net.Listener
	done chan error
}

// Listen opens addr ("host:port"; port 0 picks one) and serves h on it.
func Listen(addr string, h http.Handler) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute},
		l: l, done: make(chan error, 1)}
	go func() { s.done <- s.srv.Serve(l) }()
	return s, nil
}

// Addr is the address served.
func (s *Server) Addr() string { return s.l.Addr().String() }

// Close shuts the server down, bounded by ctx.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if serr := <-s.done; err == nil && !errors.Is(serr, http.ErrServerClosed) {
		err = serr
	}
	return err
}

// sortedKeys returns m's keys sorted.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
