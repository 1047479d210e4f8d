package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/metrics"
)

type fakeSource struct{ stats *api.Stats }

func (f *fakeSource) Stats() *api.Stats { return f.stats }
func (f *fakeSource) Links() []api.Link {
	return []api.Link{
		{NIC: 1, Name: "us-uplink", Kind: api.KindUplink, Up: true, Stats: api.NICStats{RxPackets: 10, TxPackets: 20, RxBytes: 1000}},
		{NIC: 2, Name: "us0123456789ab", Kind: api.KindPod, Up: true, KernelDrops: 4,
			BusyPoll: &api.BusyPoll{Hits: 6, Sleeps: 1, Yields: 8, Skips: 0, HostEvents: 9},
			Stats:    api.NICStats{RxPackets: 7, TxDropped: 2},
			Pod:      &api.LinkPod{Namespace: "default", Name: "web-0", ContainerID: "c0ffee", IP: netip.MustParsePrefix("10.1.0.5/24"), Mode: api.ModeProxy}},
	}
}

func stats() *api.Stats {
	return &api.Stats{
		Counters:  map[string]uint64{"IpInReceives": 17, "TcpRetransSegs": 3, "TcpExtTCPTimeouts": 1, "TcpCurrEstab": 2, "PodSrcMACDrops": 5},
		Drops:     []api.Drop{{Reason: "IP_CSUM", Layer: "ipv4", Count: 2}, {Reason: "NO_SOCKET", Layer: "ipv4+tcp+udp", Count: 9}},
		Conntrack: &api.Conntrack{Count: 3, Max: 65536, Stats: api.ConntrackStats{New: 4, Drop: 1}},
		Proxy: &api.ProxyStats{ActiveTCP: 2, ActiveUDP: 1, TCPAccepted: 11, TCPRefused: 1, TCPTimeouts: 2, UDPIdleTimeouts: 3, UDPEvicted: 9,
			EchoFlowsOpened: 5, EchoDenied: 6, TCPNoResources: 12, UDPNoResources: 13, EchoNoResources: 14, DNSQueries: 8, DNSFailures: 1, PortMapConns: 4, FlowLimitDrops: 1,
			EchoRelayed: 12, EchoRawRelayed: 7, UDPICMPErrors: 2, EchoICMPErrors: 3},
		Neigh:    map[string]int{"PERMANENT": 2, "REACHABLE": 1},
		TCP:      map[string]int{"ESTABLISHED": 2, "LISTEN": 1},
		Attached: map[api.Mode]int{api.ModeProxy: 2, api.ModeRoute: 1},
		Kubernetes: &api.KubeStatus{Node: "n1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")},
			Routes: []api.KubeRoute{{Dst: netip.MustParsePrefix("10.244.1.0/24"), Via: netip.MustParseAddr("192.168.1.2"), Node: "n2"},
				{Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("192.168.1.3"), Node: "n3"}},
			Reconciles: 9, Errors: 2, Conflicts: 1},
	}
}

func parse(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

// The exposition parses, every series reads the source's value, and the
// names pass the client library's linter (promlint).
func TestMetricsFromSource(t *testing.T) {
	m := metrics.New(&fakeSource{stats: stats()}, "1.2.3", metrics.Checks{Ready: func() bool { return true }})
	m.ObserveAttach(3*time.Millisecond, true)
	m.ObserveAttach(time.Second, false)
	m.ObserveDetach(time.Millisecond, true)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "cni_userstack_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	fams := parse(t, m.Handler())
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"cni_userstack_nic_packets_total", []string{"nic", "us-uplink", "direction", "tx"}, 20},
		{"cni_userstack_nic_bytes_total", []string{"nic", "us-uplink", "direction", "rx"}, 1000},
		{"cni_userstack_nic_dropped_total", []string{"nic", "us0123456789ab", "direction", "tx"}, 2},
		{"cni_userstack_nic_kernel_drops_total", []string{"nic", "us0123456789ab"}, 4},
		{"cni_userstack_nic_busy_poll_total", []string{"nic", "us0123456789ab", "outcome", "hit"}, 6},
		{"cni_userstack_nic_busy_poll_total", []string{"nic", "us0123456789ab", "outcome", "yield"}, 8},
		{"cni_userstack_nic_busy_poll_host_events_total", []string{"nic", "us0123456789ab"}, 9},
		{"cni_userstack_nic_info", []string{"nic", "us0123456789ab", "namespace", "default", "pod", "web-0", "ip", "10.1.0.5", "mode", "proxy"}, 1},
		{"cni_userstack_drops_total", []string{"layer", "ipv4+tcp+udp", "reason", "NO_SOCKET"}, 9},
		{"cni_userstack_netstat_total", []string{"counter", "PodSrcMACDrops"}, 5},
		{"cni_userstack_tcp_retransmits_total", nil, 3},
		{"cni_userstack_tcp_rto_total", nil, 1},
		{"cni_userstack_tcp_sockets", []string{"state", "ESTABLISHED"}, 2},
		{"cni_userstack_neighbours", []string{"state", "REACHABLE"}, 1},
		{"cni_userstack_conntrack_entries", nil, 3},
		{"cni_userstack_conntrack_limit", nil, 65536},
		{"cni_userstack_conntrack_operations_total", []string{"op", "drop"}, 1},
		{"cni_userstack_proxy_flows_active", []string{"protocol", "tcp"}, 2},
		{"cni_userstack_proxy_flows_opened_total", []string{"protocol", "icmp"}, 5},
		{"cni_userstack_proxy_flows_refused_total", []string{"protocol", "icmp", "reason", "denied"}, 6},
		{"cni_userstack_proxy_flows_refused_total", []string{"protocol", "tcp", "reason", "no_resources"}, 12},
		{"cni_userstack_proxy_flows_refused_total", []string{"protocol", "udp", "reason", "no_resources"}, 13},
		{"cni_userstack_proxy_flows_refused_total", []string{"protocol", "icmp", "reason", "no_resources"}, 14},
		{"cni_userstack_proxy_flows_timeouts_total", []string{"protocol", "udp", "kind", "idle"}, 3},
		{"cni_userstack_proxy_flows_timeouts_total", []string{"protocol", "udp", "kind", "evicted"}, 9},
		{"cni_userstack_proxy_flows_timeouts_total", []string{"protocol", "tcp", "kind", "connect"}, 2},
		{"cni_userstack_proxy_flow_limit_drops_total", nil, 1},
		{"cni_userstack_portmap_connections_total", nil, 4},
		{"cni_userstack_proxy_echo_raw_requests_total", nil, 7},
		{"cni_userstack_proxy_icmp_errors_total", []string{"protocol", "udp"}, 2},
		{"cni_userstack_proxy_icmp_errors_total", []string{"protocol", "icmp"}, 3},
		{"cni_userstack_dns_queries_total", nil, 8},
		{"cni_userstack_dns_failures_total", nil, 1},
		{"cni_userstack_attachments", []string{"mode", "route"}, 1},
		{"cni_userstack_attach_duration_seconds", []string{"result", "ok"}, 1},
		{"cni_userstack_attach_duration_seconds", []string{"result", "error"}, 1},
		{"cni_userstack_detach_duration_seconds", []string{"result", "ok"}, 1},
		{"cni_userstack_ready", nil, 1},
		{"cni_userstack_build_info", []string{"version", "1.2.3"}, 1},
		{"cni_userstack_kube_pod_cidrs", nil, 1},
		{"cni_userstack_kube_routes", nil, 2},
		{"cni_userstack_kube_reconciles_total", []string{"result", "ok"}, 7},
		{"cni_userstack_kube_reconciles_total", []string{"result", "error"}, 2},
		{"cni_userstack_kube_route_conflicts_total", nil, 1},
	} {
		if got := value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	// A level is not a counter: TcpCurrEstab is left out of netstat_total.
	for _, m := range fams["cni_userstack_netstat_total"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "TcpCurrEstab" {
			t.Error("TcpCurrEstab exported as a counter")
		}
	}
}

// A daemon still starting has no stats: the exposition still parses.
func TestMetricsEmptySource(t *testing.T) {
	m := metrics.New(&fakeSource{stats: &api.Stats{}}, "x", metrics.Checks{})
	fams := parse(t, m.Handler())
	if got := value(t, fams, "cni_userstack_ready", nil...); got != 1 {
		t.Errorf("ready without a readiness check: %v", got)
	}
}

func TestProbes(t *testing.T) {
	healthErr := errors.New("the API does not answer")
	var healthy, ready bool
	m := metrics.New(&fakeSource{stats: stats()}, "x", metrics.Checks{
		Health: func(ctx context.Context) error {
			if _, ok := ctx.Deadline(); !ok {
				t.Error("health check without a deadline")
			}
			if healthy {
				return nil
			}
			return healthErr
		},
		Ready: func() bool { return ready },
	})
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		b, _ := io.ReadAll(rec.Body)
		return rec.Code, string(b)
	}
	if c, body := get("/healthz"); c != http.StatusServiceUnavailable || !strings.Contains(body, healthErr.Error()) {
		t.Errorf("/healthz unhealthy: %d %q", c, body)
	}
	if c, _ := get("/readyz"); c != http.StatusServiceUnavailable {
		t.Errorf("/readyz not ready: %d", c)
	}
	healthy, ready = true, true
	if c, _ := get("/healthz"); c != http.StatusOK {
		t.Errorf("/healthz healthy: %d", c)
	}
	if c, _ := get("/readyz"); c != http.StatusOK {
		t.Errorf("/readyz ready: %d", c)
	}
	if c, _ := get("/nothing"); c != http.StatusNotFound {
		t.Errorf("/nothing: %d", c)
	}
}
