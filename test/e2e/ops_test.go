package e2e

// End-to-end tests of the operations surface (issue 13): the inspect
// commands run as the real binary against a real daemon with pods
// attached through libcni, the capture piped into tcpdump, the Prometheus
// metrics parsed with the client library's text parser, the probes.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
)

// cli runs the cni-userstack binary with args, the env's socket added
// after the command name; bounded by 60 s.
func (e *cniEnv) cli(args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{args[0], "--socket", e.socket}, args[1:]...)
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, cnitest.PluginName), full...)
	var o, er bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &er
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		e.t.Fatalf("run cni-userstack %v: %v", full, err)
	}
	return o.String(), er.String(), code
}

// cliOK runs a command that must succeed and returns its stdout.
func (e *cniEnv) cliOK(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.cli(args...)
	if code != 0 {
		e.t.Fatalf("cni-userstack %v: exit %d\n%s%s", args, code, out, errOut)
	}
	return out
}

// cliJSON runs a command with -o json and decodes its output into v.
func (e *cniEnv) cliJSON(v any, args ...string) {
	e.t.Helper()
	out := e.cliOK(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		e.t.Fatalf("cni-userstack %v -o json: %v\n%s", args, err, out)
	}
}

// metricsURL is the daemon's metrics server, from its status.
func (e *cniEnv) metricsURL() string {
	e.t.Helper()
	st, err := e.client().Status(context.Background())
	if err != nil {
		e.t.Fatalf("status: %v", err)
	}
	if st.Metrics == nil || st.Metrics.Listening == "" {
		e.t.Fatalf("the daemon serves no metrics: %+v", st.Metrics)
	}
	return "http://" + st.Metrics.Listening
}

func httpGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, string(b), err
}

// scrape fetches /metrics and parses it with the Prometheus text parser
// (legacy metric names: every name must be a classic one).
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, err := httpGet(base + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return fams
}

// metric returns the value of the series of family name whose labels
// include want; ok is false when there is none.
func metric(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func mustMetric(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := metric(fams, name, labels)
	if !ok {
		t.Fatalf("no series %s%v in /metrics", name, labels)
	}
	return v
}

// addK8sPod is proxyEnv.addPod with the Kubernetes names in CNI_ARGS, as
// kubelet's runtimes pass them.
func (e *proxyEnv) addK8sPod(namespace, name string) *pod {
	e.t.Helper()
	p := &pod{ns: cnitest.NewPodNS(e.t)}
	p.rt = cnitest.RuntimeConf(cnitest.UniqueName(e.t, "ctr"), p.ns.Path(), "eth0", nil)
	p.rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name}}
	r, err := e.cni.AddNetworkList(context.Background(), e.list, p.rt)
	if err != nil {
		e.t.Fatalf("ADD %s/%s: %v", namespace, name, err)
	}
	e.t.Cleanup(func() { e.cni.DelNetworkList(context.Background(), e.list, p.rt) })
	if p.res, err = current.NewResultFromResult(r); err != nil || len(p.res.IPs) != 1 {
		e.t.Fatalf("ADD result: %v %+v", err, p.res)
	}
	p.ip, _ = netip.AddrFromSlice(p.res.IPs[0].Address.IP.To4())
	return p
}

// attachmentOf finds the daemon's attachment of p.
func (e *cniEnv) attachmentOf(p *pod) api.Attachment {
	e.t.Helper()
	for _, a := range e.attachments() {
		if a.ContainerID == p.rt.ContainerID {
			return a
		}
	}
	e.t.Fatalf("no attachment for container %s", p.rt.ContainerID)
	return api.Attachment{}
}

// sendRaw writes frame n times on ifname inside n's netns through an
// AF_PACKET socket (as a misbehaving pod would).
func sendRaw(t *testing.T, n ns.NetNS, ifname string, frame []byte, count int) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0) // send only: no protocol
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], frame[0:6])
		for i := 0; i < count; i++ {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send raw frames in %s: %v", n.Path(), err)
	}
}

// TestOpsInspectTwoPods: two pods (with Kubernetes names) in proxy mode,
// one relayed TCP connection open to a host server. The inspect commands,
// run as the real binary, show it: ss -t lists the connection ESTAB with
// its relay's host-side address; neigh lists both pods; route both /32s
// and the local and uplink routes; conntrack -L the flow; link/addr the
// pods by namespace/name; stats a drop counter moved by exactly the
// spoofed frames sent; /metrics parses and its counters move by what the
// test provoked; /healthz fails while the API socket is unusable.
func TestOpsInspectTwoPods(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	a := e.addK8sPod("ops", "pod-a")
	b := e.addK8sPod("ops", "pod-b")
	atA, atB := e.attachmentOf(a), e.attachmentOf(b)
	e.ping(a, a.gateway().String()) // both links carry traffic
	e.ping(b, b.gateway().String())
	base := e.metricsURL()
	before := scrape(t, base)

	// One relayed TCP connection from pod a to a host server, kept open.
	echo := hostEcho(t, e.host.Local[0])
	c, err := dialIn(a.ns, "tcp4", echo.String(), 10*time.Second)
	if err != nil {
		t.Fatalf("dial %v from pod a: %v", echo, err)
	}
	defer c.Close()
	msg := []byte("hello through the relay")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	podSide := c.LocalAddr().(*net.TCPAddr).AddrPort()

	// ss -t -p: the connection, ESTAB, with its relay.
	var socks api.Sockets
	e.cliJSON(&socks, "ss", "-t", "-p")
	var conn *api.Socket
	for i := range socks.Sockets {
		s := &socks.Sockets[i]
		if s.Remote == podSide && s.Local == echo {
			conn = s
		}
	}
	if conn == nil {
		t.Fatalf("ss -t has no socket %v <- %v: %+v", echo, podSide, socks)
	}
	if conn.State != "ESTABLISHED" || conn.Relay == nil || conn.Relay.HostRemote != echo || !conn.Relay.HostLocal.IsValid() ||
		conn.Relay.Kind != api.RelayOutbound || conn.Relay.Pod != atA.ID || conn.Relay.PodName != "ops/pod-a" ||
		conn.Relay.FromPod < uint64(len(msg)) || conn.TCP == nil || conn.TCP.BytesReceived < uint64(len(msg)) {
		t.Fatalf("relayed connection as ss sees it: %+v relay %+v tcp %+v", conn, conn.Relay, conn.TCP)
	}
	table := e.cliOK("ss", "-t", "-p", "-i")
	if !strings.Contains(table, "ESTAB") || !strings.Contains(table, conn.Relay.HostLocal.String()+"->"+echo.String()) ||
		!strings.Contains(table, "pod=ops/pod-a") || !strings.Contains(table, "rtt:") {
		t.Fatalf("ss -t -p -i table lacks the relayed connection:\n%s", table)
	}
	t.Logf("ss -t -p -i:\n%s", table)

	// neigh: both pods, by their MAC, PERMANENT (the stack holds each
	// pod's MAC from ADD as a static entry, `ip neigh ... nud permanent`).
	var neigh []api.Neighbour
	e.cliJSON(&neigh, "neigh")
	for _, p := range []struct {
		p  *pod
		at api.Attachment
	}{{a, atA}, {b, atB}} {
		found := false
		for _, n := range neigh {
			if n.Addr == p.p.ip && n.NIC == p.at.NIC {
				found = true
				if n.State != "PERMANENT" || !strings.EqualFold(n.MAC, p.at.PodMAC) || n.Dev != p.at.HostIfName {
					t.Errorf("neighbour of pod %v: %+v, want PERMANENT %s on %s", p.p.ip, n, p.at.PodMAC, p.at.HostIfName)
				}
			}
		}
		if !found {
			t.Errorf("neigh lacks pod %v: %+v", p.p.ip, neigh)
		}
	}
	t.Logf("neigh -s -o wide:\n%s", e.cliOK("neigh", "-s", "-o", "wide"))

	// route: a /32 per pod on its link, the gateway in the local table,
	// the default route through the uplink.
	var routes []api.Route
	e.cliJSON(&routes, "route")
	has := func(pred func(api.Route) bool) bool {
		for _, r := range routes {
			if pred(r) {
				return true
			}
		}
		return false
	}
	for _, p := range []struct {
		p  *pod
		at api.Attachment
	}{{a, atA}, {b, atB}} {
		if !has(func(r api.Route) bool {
			return r.Table == api.TableMain && r.Dst == netip.PrefixFrom(p.p.ip, 32) && r.Dev == p.at.HostIfName && r.Scope == "link"
		}) {
			t.Errorf("route lacks %v/32 dev %s: %+v", p.p.ip, p.at.HostIfName, routes)
		}
		if !has(func(r api.Route) bool {
			return r.Table == api.TableLocal && r.Type == "local" && r.Dst.Addr() == p.p.gateway() && r.NIC == p.at.NIC
		}) {
			t.Errorf("route lacks the local gateway %v on %s", p.p.gateway(), p.at.HostIfName)
		}
	}
	if !has(func(r api.Route) bool { return r.Dst.Bits() == 0 && r.Gateway.IsValid() && r.Dev != "" }) {
		t.Errorf("route lacks the default route through the uplink: %+v", routes)
	}
	text := e.cliOK("route")
	if !strings.Contains(text, fmt.Sprintf("%v dev %s scope link src %v", a.ip, atA.HostIfName, a.gateway())) ||
		!strings.Contains(text, "default via ") {
		t.Errorf("route text:\n%s", text)
	}
	t.Logf("route:\n%s", text)

	// conntrack -L: the flow, ESTABLISHED, with packets both ways.
	var flows []api.ConntrackEntry
	e.cliJSON(&flows, "conntrack", "-L", "-p", "tcp")
	found := false
	for _, f := range flows {
		o := f.Original
		if o.Src == podSide.Addr() && o.SrcPort == podSide.Port() && o.Dst == echo.Addr() && o.DstPort == echo.Port() {
			found = true
			if f.State != "ESTABLISHED" || f.Packets[0] == 0 || f.Packets[1] == 0 {
				t.Errorf("conntrack entry of the relayed flow: %+v", f)
			}
		}
	}
	if !found {
		t.Errorf("conntrack -L lacks %v -> %v: %+v", podSide, echo, flows)
	}
	ctText := e.cliOK("conntrack", "-L")
	if want := fmt.Sprintf("src=%v dst=%v sport=%d dport=%d", podSide.Addr(), echo.Addr(), podSide.Port(), echo.Port()); !strings.Contains(ctText, want) {
		t.Errorf("conntrack -L text lacks %q:\n%s", want, ctText)
	}
	t.Logf("conntrack -L:\n%s", ctText)
	if n, _ := strconv.Atoi(strings.TrimSpace(e.cliOK("conntrack", "-C"))); n < 1 {
		t.Errorf("conntrack -C = %d", n)
	}

	// link and addr: the pods by their Kubernetes names.
	var links []api.Link
	e.cliJSON(&links, "link", "ops/pod-a")
	if len(links) != 1 || links[0].Pod == nil || links[0].Pod.String() != "ops/pod-a" || links[0].NIC != atA.NIC ||
		links[0].Kind != api.KindPod || !links[0].Up || links[0].Stats.RxPackets == 0 {
		t.Fatalf("link ops/pod-a: %+v", links)
	}
	lt := e.cliOK("link", "-o", "wide")
	if !strings.Contains(lt, "ops/pod-a") || !strings.Contains(lt, "ops/pod-b") || !strings.Contains(lt, "uplink") {
		t.Errorf("link table:\n%s", lt)
	}
	t.Logf("link -o wide:\n%s", lt)
	at := e.cliOK("addr")
	if !strings.Contains(at, a.gateway().String()+"/32") || !strings.Contains(at, a.ip.String()) {
		t.Errorf("addr table:\n%s", at)
	}
	t.Logf("addr:\n%s", at)

	// stats: three frames from pod a with a source MAC that is not its
	// own are dropped by the source-MAC check and counted, exactly.
	var st0 api.Stats
	e.cliJSON(&st0, "stats")
	spoof := header.MAC{0x02, 0x42, 0xde, 0xad, 0xbe, 0xef}
	stackMAC, err := header.ParseMAC(atA.StackMAC)
	if err != nil {
		t.Fatal(err)
	}
	frame := stacktest.Frame().Eth(spoof, stackMAC).IPv4Addr(a.ip, a.gateway()).UDP(40000, 9).Payload([]byte("spoofed")).Bytes()
	sendRaw(t, a.ns, "eth0", frame, 3)
	var st1 api.Stats
	dropOf := func(s api.Stats, reason string) (uint64, string) {
		for _, d := range s.Drops {
			if d.Reason == reason {
				return d.Count, d.Layer
			}
		}
		return 0, ""
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.cliJSON(&st1, "stats")
		if n, _ := dropOf(st1, "POD_SRC_MAC_MISMATCH"); n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	n0, _ := dropOf(st0, "POD_SRC_MAC_MISMATCH")
	n1, layer := dropOf(st1, "POD_SRC_MAC_MISMATCH")
	if n1-n0 != 3 || layer != "daemon" || st1.Counters["PodSrcMACDrops"]-st0.Counters["PodSrcMACDrops"] != 3 {
		t.Fatalf("3 spoofed frames: POD_SRC_MAC_MISMATCH %d → %d (layer %q), PodSrcMACDrops %d → %d",
			n0, n1, layer, st0.Counters["PodSrcMACDrops"], st1.Counters["PodSrcMACDrops"])
	}
	stText := e.cliOK("stats")
	if !strings.Contains(stText, "#drops") || !strings.Contains(stText, "POD_SRC_MAC_MISMATCH") || !strings.Contains(stText, "IpInReceives") {
		t.Errorf("stats text:\n%s", stText)
	}
	t.Logf("stats:\n%s", stText)

	// /metrics: parses, and moved by what the test did since the first
	// scrape.
	after := scrape(t, base)
	delta := func(name string, labels map[string]string) float64 {
		t.Helper()
		v0, _ := metric(before, name, labels)
		return mustMetric(t, after, name, labels) - v0
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"cni_userstack_drops_total", map[string]string{"layer": "daemon", "reason": "POD_SRC_MAC_MISMATCH"}, 3},
		{"cni_userstack_netstat_total", map[string]string{"counter": "PodSrcMACDrops"}, 3},
		{"cni_userstack_proxy_flows_opened_total", map[string]string{"protocol": "tcp"}, 1},
	} {
		if d := delta(c.name, c.labels); d != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, d, c.want)
		}
	}
	if d := delta("cni_userstack_nic_packets_total", map[string]string{"nic": atA.HostIfName, "direction": "rx"}); d < 3 {
		t.Errorf("pod a's NIC received %v frames since the first scrape, want at least the 3 spoofed ones", d)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"cni_userstack_attachments", map[string]string{"mode": "proxy"}, 2},
		{"cni_userstack_attach_duration_seconds", map[string]string{"result": "ok"}, 2},
		{"cni_userstack_proxy_flows_active", map[string]string{"protocol": "tcp"}, 1},
		{"cni_userstack_neighbours", map[string]string{"state": "PERMANENT"}, 2},
		{"cni_userstack_nic_info", map[string]string{"nic": atA.HostIfName, "namespace": "ops", "pod": "pod-a", "kind": "pod"}, 1},
		{"cni_userstack_ready", nil, 1},
	} {
		if v := mustMetric(t, after, c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if v := mustMetric(t, after, "cni_userstack_tcp_sockets", map[string]string{"state": "ESTABLISHED"}); v < 1 {
		t.Errorf("cni_userstack_tcp_sockets{state=ESTABLISHED} = %v with a relayed connection open", v)
	}
	if v := mustMetric(t, after, "cni_userstack_conntrack_entries", nil); v < 1 {
		t.Errorf("cni_userstack_conntrack_entries = %v", v)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "cni_userstack_build_info"} {
		if after[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	// A DEL is observed by the detach histogram.
	if err := e.cni.DelNetworkList(context.Background(), e.list, b.rt); err != nil {
		t.Fatalf("DEL pod b: %v", err)
	}
	if v := mustMetric(t, scrape(t, base), "cni_userstack_detach_duration_seconds", map[string]string{"result": "ok"}); v != 1 {
		t.Errorf("detach histogram count %v after one DEL, want 1", v)
	}

	// /healthz: passes, fails while the API socket is unusable (its file
	// moved away: nothing answers on the path), passes again once back.
	if code, body, err := httpGet(base + "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz: %d %q %v", code, body, err)
	}
	moved := e.socket + ".moved"
	if err := os.Rename(e.socket, moved); err != nil {
		t.Fatal(err)
	}
	code, body, err := httpGet(base + "/healthz")
	if rerr := os.Rename(moved, e.socket); rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, e.socket) {
		t.Fatalf("/healthz with the API socket gone: %d %q %v; want 503 naming the socket", code, body, err)
	}
	if code, body, err := httpGet(base + "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz with the socket back: %d %q %v", code, body, err)
	}
	if code, _, err := httpGet(base + "/readyz"); err != nil || code != http.StatusOK {
		t.Fatalf("/readyz of a running daemon: %d %v", code, err)
	}
}

// TestOpsPcapIntoTcpdump: `pcap -w -` piped into `tcpdump -r -` shows the
// ICMP echo a pod sends to its gateway while the capture runs, and the
// reply.
func TestOpsPcapIntoTcpdump(t *testing.T) {
	requireCmd(t, "tcpdump")
	e := newProxyEnv(t, nil, nil)
	p := e.addK8sPod("ops", "pinger")
	e.addK8sPod("ops", "bystander")
	at := e.attachmentOf(p)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	capCmd := exec.CommandContext(ctx, filepath.Join(e.bin, cnitest.PluginName), "pcap", "--socket", e.socket,
		"--pod", "ops/pinger", "-c", "2", "-w", "-", "icmp")
	capCmd.Stdout = pw
	capErr, err := capCmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	dump := exec.CommandContext(ctx, "tcpdump", "-n", "-r", "-")
	dump.Stdin = pr
	var dumpOut bytes.Buffer
	dump.Stdout, dump.Stderr = &dumpOut, &dumpOut
	if err := capCmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	pr.Close()
	// The capture runs once it said where it captures.
	line := make([]byte, 512)
	nr, _ := capErr.Read(line)
	if !strings.Contains(string(line[:nr]), "capturing on NICs "+strconv.Itoa(at.NIC)+":"+at.HostIfName) {
		t.Fatalf("pcap did not start as expected: %q", line[:nr])
	}
	e.ping(p, p.gateway().String())
	rest, _ := io.ReadAll(capErr)
	if err := capCmd.Wait(); err != nil {
		t.Fatalf("pcap: %v\n%s%s", err, line[:nr], rest)
	}
	if err := dump.Wait(); err != nil {
		t.Fatalf("tcpdump -r -: %v\n%s", err, dumpOut.String())
	}
	out := dumpOut.String()
	t.Logf("pcap stderr: %s%s\ntcpdump -n -r -:\n%s", line[:nr], rest, out)
	req := fmt.Sprintf("IP %v > %v: ICMP echo request", p.ip, p.gateway())
	rep := fmt.Sprintf("IP %v > %v: ICMP echo reply", p.gateway(), p.ip)
	if !strings.Contains(out, req) || !strings.Contains(out, rep) {
		t.Fatalf("tcpdump did not read the pod's echo (%q and %q) from the capture:\n%s", req, rep, out)
	}
	if !strings.Contains(string(rest), "2 packets captured") {
		t.Errorf("pcap's summary: %s", rest)
	}

	// A capture interrupted with SIGINT leaves a complete file.
	file := filepath.Join(t.TempDir(), "interrupted.pcap")
	intr := exec.CommandContext(ctx, filepath.Join(e.bin, cnitest.PluginName), "pcap", "--socket", e.socket,
		"--pod", at.ContainerID, "-w", file)
	intrErr, _ := intr.StderrPipe()
	if err := intr.Start(); err != nil {
		t.Fatal(err)
	}
	nr, _ = intrErr.Read(line)
	if !strings.Contains(string(line[:nr]), "capturing on") {
		t.Fatalf("pcap did not start: %q", line[:nr])
	}
	e.ping(p, p.gateway().String())
	intr.Process.Signal(syscall.SIGINT)
	rest, _ = io.ReadAll(intrErr)
	if err := intr.Wait(); err != nil {
		t.Fatalf("pcap after SIGINT: %v\n%s", err, rest)
	}
	read, err := exec.CommandContext(ctx, "tcpdump", "-n", "-r", file).CombinedOutput()
	if err != nil || !strings.Contains(string(read), "ICMP echo request") {
		t.Fatalf("tcpdump -r of the interrupted capture: %v\n%s\n(pcap said %s)", err, read, rest)
	}
}

// TestOpsCommandLine: every command's --help exits 0; an unknown command
// or flag exits 2 with usage; a daemon that is not there is exit 1 with
// the socket tried and how to start one.
func TestOpsCommandLine(t *testing.T) {
	cnitest.RequireRoot(t)
	bin := filepath.Join(cnitest.BuildPlugins(t), cnitest.PluginName)
	run := func(args ...string) (string, int) {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return string(out), 0
	}
	help, code := run("--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	var cmds []string
	inList := false
	for _, l := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(l, "Available Commands:"):
			inList = true
		case inList && strings.TrimSpace(l) == "":
			inList = false
		case inList:
			cmds = append(cmds, strings.Fields(l)[0])
		}
	}
	for _, want := range []string{"link", "addr", "route", "neigh", "ss", "conntrack", "stats", "pcap", "serve", "status"} {
		if !strings.Contains(" "+strings.Join(cmds, " ")+" ", " "+want+" ") {
			t.Errorf("--help does not list %q: %v", want, cmds)
		}
	}
	for _, c := range cmds {
		out, code := run(c, "--help")
		if code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%s --help: exit %d\n%s", c, code, out)
		}
	}
	if out, code := run("help", "ss"); code != 0 || !strings.Contains(out, "Usage:") {
		t.Errorf("help ss: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"no-such-command"}, {"ss", "--no-such-flag"}, {"link", "-o", "xml"},
		{"pcap", "host", "300.1.1.1"}, {"conntrack", "-L", "-C"}, {"serve", "--metrics-addr", "nonsense"}} {
		out, code := run(args...)
		if code != 2 || !strings.Contains(out, "Usage:") {
			t.Errorf("%v: exit %d, want 2 with usage\n%s", args, code, out)
		}
	}
	sock := filepath.Join(t.TempDir(), "none.sock")
	out, code := run("stats", "--socket", sock)
	if code != 1 || !strings.Contains(out, sock) || !strings.Contains(out, "cni-userstack serve --socket "+sock) {
		t.Errorf("stats without a daemon: exit %d\n%s", code, out)
	}
}

// TestOpsReadyAfterRecovery: a restarted daemon re-attaches its recorded
// pod before /readyz says ready: polled from the process's start, /readyz
// answers nothing or 503 until it answers 200, and at that moment the
// recovered pod is attached with its NIC. (Whether a 503 is seen depends
// on how fast recovery is; the daemon's unit test holds recovery to see
// one every time.)
func TestOpsReadyAfterRecovery(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	p := e.addK8sPod("ops", "survivor")
	e.killDaemon(syscall.SIGKILL)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logf, err := os.OpenFile(e.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(e.bin, cnitest.PluginName), "serve", "--socket", e.socket, "--state-dir", e.stateDir,
		"--stack-netns", e.stackNS, "--uplink-subnet", e.uplink.String(), "--uplink-host-ifname", e.uplinkIf,
		"--log-level", "debug", "--metrics-addr", addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitErr = make(chan error, 1)
	go func() { e.waitErr <- cmd.Wait() }()

	hc := &http.Client{Timeout: 2 * time.Second}
	get := func(path string) (int, error) {
		resp, err := hc.Get("http://" + addr + path)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	var refused, notReady int
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, err := get("/readyz")
		if err == nil && code == http.StatusOK {
			break
		}
		switch {
		case err != nil:
			refused++
		case code == http.StatusServiceUnavailable:
			notReady++
		default:
			t.Fatalf("/readyz answered %d", code)
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 within 15 s (%d refused, %d not ready)", refused, notReady)
		}
		time.Sleep(time.Millisecond)
	}
	// Ready: the recorded pod is attached again, with a NIC.
	as := e.attachments()
	if len(as) != 1 || as[0].ContainerID != p.rt.ContainerID || as[0].NIC == 0 {
		t.Fatalf("ready, but the recorded pod is not re-attached: %+v", as)
	}
	t.Logf("/readyz from the daemon's start: %d refused, %d not ready, then ready with the pod re-attached", refused, notReady)
	e.ping(p, p.gateway().String())
}
