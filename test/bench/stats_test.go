package main

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{7}, 7},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5}, // even: the mean of the middle two
		{[]float64{5, 5, 1}, 5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestSummarizeSkipsFailuresAndUnmeasured(t *testing.T) {
	boom := errors.New("iperf3 failed\nsecond line")
	s := summarize([]measured{{v: 3}, {err: boom}, {v: 1}, {err: errNotMeasured}, {v: 2}, {err: boom}})
	if s.n != 3 || s.rounds != 5 || s.median != 2 || s.min != 1 || s.max != 3 {
		t.Fatalf("summary = %+v, want n=3 of 5 rounds, median 2, min 1, max 3", s)
	}
	if len(s.errs) != 1 || s.errs[0] != "iperf3 failed" {
		t.Fatalf("errs = %q, want the one error's first line once", s.errs)
	}
	// -throughput=false: "not run", not an error of every round.
	if s := summarize([]measured{{err: errNotRun}, {err: errNotRun}}); s.rounds != 0 || s.ok() || !s.notRun || len(s.errs) != 0 {
		t.Fatalf("not run: %+v", s)
	}
	if s := summarize([]measured{{err: fmt.Errorf("pod→host 1 stream: %w", errNotRun)}}); !s.notRun || s.rounds != 0 {
		t.Fatalf("CPU per GB of a throughput run not run: %+v", s)
	}
	if s := summarize([]measured{{err: errNotMeasured}}); s.rounds != 0 || s.ok() {
		t.Fatalf("a figure the variant does not have: %+v, want no rounds", s)
	}
}

// sampleWith is a sample whose every figure is v, CPU cpu over bytes.
func sampleWith(tput, rr50, rr99, cps float64, cpu time.Duration, bytes float64) *sample {
	s := newSample()
	for i := range s.tput {
		s.tput[i] = measured{v: tput}
		s.bytes[i] = bytes
		s.cpu[i] = cpuUse{helpers: cpu / 2, softirqd: cpu / 2, system: 2 * cpu}
	}
	s.rrP50, s.rrP99, s.cps = measured{v: rr50}, measured{v: rr99}, measured{v: cps}
	return s
}

func TestDatapathCPUIsOverTheOneStreamRuns(t *testing.T) {
	s := sampleWith(10, 50, 100, 1000, time.Second, 2e9)
	// 1-stream runs: 2 × 1 s of helper+softirq over 2 × 2 GB = 0.5 s/GB.
	if m := s.datapathCPU(); m.err != nil || m.v != 0.5 {
		t.Fatalf("datapathCPU = %+v, want 0.5", m)
	}
	if m := s.systemCPU(); m.err != nil || m.v != 1 {
		t.Fatalf("systemCPU = %+v, want 1", m)
	}
	s.tput[caseHP1].err = errors.New("x")
	if m := s.datapathCPU(); m.err == nil {
		t.Fatal("datapathCPU with a failed 1-stream run: no error")
	}
	s = newSample()
	s.setupFailed(errors.New("no veth"))
	if m := s.datapathCPU(); m.err == nil || !strings.Contains(m.err.Error(), "no veth") {
		t.Fatalf("datapathCPU of a failed setup = %+v", m)
	}
}

// results builds variant results from per-variant sample lists.
func results(by map[string][]*sample) []*variantResult {
	var out []*variantResult
	for _, v := range variants {
		if ss, ok := by[v.key]; ok {
			out = append(out, &variantResult{v: v, samples: ss})
		}
	}
	return out
}

func TestTargetsAreJudgedFromMedians(t *testing.T) {
	// Kernel: 10 Gbit/s, RR 50/100 µs, 1000 conn/s. Proxy rounds: one bad
	// outlier round must not decide (medians).
	k := []*sample{sampleWith(10, 50, 100, 1000, 0, 1e9), sampleWith(10, 50, 100, 1000, 0, 1e9), sampleWith(10, 50, 100, 1000, 0, 1e9)}
	p := []*sample{sampleWith(7, 60, 140, 700, 500*time.Millisecond, 1e9), sampleWith(1, 900, 9000, 10, 5*time.Second, 1e9), sampleWith(7, 60, 140, 700, 500*time.Millisecond, 1e9)}
	g := []*sample{sampleWith(5, 70, 150, 500, time.Second, 1e9), sampleWith(5, 70, 150, 500, time.Second, 1e9), sampleWith(5, 70, 150, 500, time.Second, 1e9)}
	// pasta beats proxy on p99 only.
	ps := []*sample{sampleWith(5, 70, 120, 500, time.Second, 1e9)}
	r := sampleWith(8.5, 55, 120, 800, 0, 1e9)
	r.tput[caseHP1] = measured{v: 7}
	tab := buildTable(results(map[string][]*sample{"ptp": k, "proxy": p, "gvisor": g, "pasta": ps, "route": {r}}))
	got := map[string]targetResult{}
	for _, res := range judge(tab, issueTargets) {
		if !res.aim {
			got[res.what] = res
		}
	}
	want := map[string]string{
		"proxy: 1 stream pod→host ≥ 0.60× kernel":                            pass, // 0.7
		"proxy: 4 streams host→pod ≥ 0.45× kernel":                           pass,
		"proxy: 1-byte RR p99 ≤ 1.50× kernel":                                pass, // 1.4
		"proxy: connections/s (connect, 1 B each way, close) ≥ 0.60× kernel": pass,
		"proxy: datapath CPU s/GB, 1 stream ≤ 0.60 s/GB":                     pass, // 0.5
		"proxy ahead of gvisor on every metric":                              pass,
		"proxy ahead of pasta on every metric":                               fail, // p99 140 vs 120
		"proxy ahead of pasta-64k on every metric":                           na,   // did not run
		"route: 1 stream pod→host ≥ 0.80× kernel":                            pass, // 0.85
		"route: 1 stream host→pod ≥ 0.80× kernel":                            fail, // 0.7
	}
	for what, v := range want {
		res, ok := got[what]
		if !ok {
			t.Errorf("no target %q; have %v", what, got)
			continue
		}
		if res.verdict != v {
			t.Errorf("%s: %s (%s), want %s", what, res.verdict, res.measured, v)
		}
	}
	if m := got["proxy ahead of pasta on every metric"].measured; !strings.Contains(m, "rr-p99 140.0 vs 120.0") {
		t.Errorf("the pasta comparison does not name where proxy is behind: %q", m)
	}
	if m := got["proxy: 1 stream pod→host ≥ 0.60× kernel"].measured; !strings.HasPrefix(m, "0.70×") {
		t.Errorf("measured = %q, want the ratio of the medians 0.70×", m)
	}
}

func TestRatioNeedsBothSides(t *testing.T) {
	a, b := summary{n: 1, median: 3}, summary{n: 1, median: 4}
	if r, ok := ratio(a, b); !ok || math.Abs(r-0.75) > 1e-12 {
		t.Fatalf("ratio = %v %v", r, ok)
	}
	if _, ok := ratio(a, summary{}); ok {
		t.Fatal("ratio against nothing")
	}
	if _, ok := ratio(a, summary{n: 1, median: 0}); ok {
		t.Fatal("ratio against 0")
	}
}

func TestReportStatesMedianMinMaxRatiosAndUnavailable(t *testing.T) {
	k := []*sample{sampleWith(20, 10, 20, 1000, 0, 1e9), sampleWith(22, 10, 20, 1000, 0, 1e9), sampleWith(18, 10, 20, 1000, 0, 1e9)}
	p := []*sample{sampleWith(10, 30, 40, 500, time.Second, 1e9), sampleWith(12, 30, 40, 500, time.Second, 1e9), sampleWith(8, 30, 40, 500, time.Second, 1e9)}
	p[1].pm1 = measured{v: 3}
	rs := results(map[string][]*sample{"ptp": k, "proxy": p, "floor": k})
	rs = append(rs, &variantResult{v: variants[len(variants)-1], na: "n/a (slirp4netns not installed)"})
	rep := &report{opts: options{duration: time.Second, rounds: 3, memConns: 10}, started: time.Now(), results: rs,
		mem: []memResult{{variant: "proxy", label: "ours, proxy", target: 10, conns: 10, flows: 10, rssBefore: 1 << 20, rssAfter: 1<<20 + 10*20*1024}}}
	md := rep.markdown()
	wantIn(t, "report", md,
		"| 1 stream pod→host, Gbit/s | 20.00 | 20.00 (1.00×) | 10.00 (0.50×) |",
		"| ours, proxy | 1 stream pod→host, Gbit/s | 10.00 | 8.00 | 12.00 | 0.50× | 3 of 3 |",
		"| ours, proxy | 1 stream host→pod through a port mapping (proxy only), Gbit/s | 3.00 | 3.00 | 3.00 | – | 1 of 1 |",
		"30.0 (3.00×)",
		"| datapath CPU s/GB, 1 stream, s/GB | 0.00 | 0.00 | 1.00 |", // no ratio: the kernel has no helper
		"slirp4netns: n/a (slirp4netns not installed)",
		"## Proxy mode against the floor",
		"| metric | kernel | floor (ptp + Go relay) | proxy | floor/kernel | proxy/floor |",
		"| 1 stream pod→host, Gbit/s | 20.00 | 20.00 | 10.00 | 1.00× | 0.50× |",
		"| proxy: memory per idle relayed connection ≤ 8 KiB (10 connections) | 20.00 KiB (daemon RSS) | FAIL |",
		"| ours, proxy | 10 of 10 | 1.0 → 1.2 | 20.00 |",
	)
	if rep.broken() {
		t.Fatal("report with a good kernel variant is broken")
	}
	for _, s := range k {
		s.tput[casePH1].err = errors.New("iperf3 failed")
	}
	if !rep.broken() {
		t.Fatal("report whose kernel variant has no 1-stream figure is not broken")
	}
}

func TestParsers(t *testing.T) {
	b, bps, err := parseIperf([]byte(`{"end":{"sum_received":{"bytes":1250000000,"bits_per_second":2e9}}}`))
	if err != nil || b != 1.25e9 || bps != 2e9 {
		t.Fatalf("parseIperf = %v %v %v", b, bps, err)
	}
	if _, _, err := parseIperf([]byte(`{"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "unable to connect") {
		t.Fatalf("parseIperf of an iperf3 error = %v", err)
	}
	if _, _, err := parseIperf([]byte("iperf3: error")); err == nil || !strings.HasPrefix(err.Error(), "output is not") {
		t.Fatalf("parseIperf of text = %v", err)
	}
	if _, _, err := parseIperf([]byte(`{"end":{}}`)); err == nil {
		t.Fatal("parseIperf of an empty report: no error")
	}

	g, err := parseMemstats("memstats heap_inuse=4096 heap_alloc=10 stack_inuse=8192 sys=1 goroutines=3 tcp_flows=7 udp_flows=0")
	if err != nil || g.heapInuse != 4096 || g.stackInuse != 8192 || g.flows != 7 {
		t.Fatalf("parseMemstats = %+v, %v", g, err)
	}
	for _, bad := range []string{"ready", "memstats heap_inuse=x stack_inuse=1 tcp_flows=1", "memstats heap_inuse=1", "memstats junk"} {
		if _, err := parseMemstats(bad); err == nil {
			t.Errorf("parseMemstats(%q): no error", bad)
		}
	}

	rss, err := parseVmRSS(strings.NewReader("Name:\tx\nVmPeak:\t  9 kB\nVmRSS:\t    1234 kB\nThreads: 3\n"))
	if err != nil || rss != 1234*1024 {
		t.Fatalf("parseVmRSS = %v, %v", rss, err)
	}
	if _, err := parseVmRSS(strings.NewReader("Name: kthread\n")); err == nil {
		t.Fatal("parseVmRSS without VmRSS: no error")
	}

	gomod := "module github.com/cni-userstack/cni-userstack/test/bench/gvisorrelay\n\ngo 1.26.8\n\nrequire (\n\tgithub.com/vishvananda/netlink v1.3.1\n\tgvisor.dev/gvisor v0.0.0-20260905035102-160fafc42237\n)\n"
	if m := modulePath(gomod); m != productModule+"/test/bench/gvisorrelay" {
		t.Errorf("modulePath = %q", m)
	}
	if v := requireVersion(gomod, "gvisor.dev/gvisor"); v != "v0.0.0-20260905035102-160fafc42237" {
		t.Errorf("requireVersion = %q", v)
	}
	if v := requireVersion("require gvisor.dev/gvisor v1.2.3\n", "gvisor.dev/gvisor"); v != "v1.2.3" {
		t.Errorf("requireVersion of a one-line require = %q", v)
	}

	if l, err := parseList(" ptp,,proxy ", variantKeys()); err != nil || strings.Join(l, ",") != "ptp,proxy" {
		t.Errorf("parseList = %v, %v", l, err)
	}
	if _, err := parseList("ptp,qemu", variantKeys()); err == nil {
		t.Error("parseList of an unknown variant: no error")
	}
	if k := perConn(1<<20, 1<<20+10240, 10); k != 1 {
		t.Errorf("perConn = %v, want 1 KiB", k)
	}
	if k := perConn(2<<20, 1<<20, 10); k != 0 {
		t.Errorf("perConn of a shrinking RSS = %v, want 0", k)
	}
}

func TestRoundOrderBracketsWithTheKernel(t *testing.T) {
	keys := func(rs []*variantResult) string {
		var k []string
		for _, r := range rs {
			k = append(k, r.v.key)
		}
		return strings.Join(k, ",")
	}
	three := results(map[string][]*sample{"ptp": nil, "proxy": nil, "gvisor": nil})
	if got := keys(roundOrder(three, 1)); got != "ptp,proxy,gvisor,ptp" {
		t.Errorf("roundOrder = %s, want the kernel at both ends", got)
	}
	// ABBA: the variants between the kernel's runs swap slots every
	// other round; the kernel stays at both ends.
	if got := keys(roundOrder(three, 2)); got != "ptp,gvisor,proxy,ptp" {
		t.Errorf("roundOrder of round 2 = %s, want the variants reversed", got)
	}
	if got := keys(roundOrder(three, 3)); got != "ptp,proxy,gvisor,ptp" {
		t.Errorf("roundOrder of round 3 = %s, want round 1's", got)
	}
	two := results(map[string][]*sample{"ptp": nil, "proxy": nil})
	if got := keys(roundOrder(two, 2)); got != "ptp,proxy" {
		t.Errorf("roundOrder of two = %s, want no repeat", got)
	}
	noRef := results(map[string][]*sample{"floor": nil, "proxy": nil, "gvisor": nil})
	if got := keys(roundOrder(noRef, 1)); got != "floor,proxy,gvisor" {
		t.Errorf("roundOrder without the kernel = %s", got)
	}
	if got := keys(roundOrder(noRef, 2)); got != "gvisor,proxy,floor" {
		t.Errorf("roundOrder of round 2 without the kernel = %s", got)
	}
	if l, err := loadAvg(); err != nil || l < 0 {
		t.Errorf("loadAvg = %v, %v", l, err)
	}
}

func TestFloorAboveKernelIsFlagged(t *testing.T) {
	k := []*sample{sampleWith(10, 10, 20, 1000, 0, 1e9)}
	f := []*sample{sampleWith(10.5, 30, 40, 500, 0, 1e9)}
	f[0].tput[caseHP4] = measured{v: 12}
	tab := buildTable(results(map[string][]*sample{"ptp": k, "floor": f}))
	w := floorAboveKernel(tab)
	if len(w) != 1 || w[0] != "floor: 4 streams host→pod (1.20×)" {
		t.Fatalf("floorAboveKernel = %q, want only the 4-stream host→pod figure", w)
	}
	rep := &report{opts: options{duration: time.Second, rounds: 1}, started: time.Now(),
		results: results(map[string][]*sample{"ptp": k, "floor": f}), loads: []float64{0.5, 2, 1}}
	md := rep.markdown()
	wantIn(t, "report", md, "**Warning:** a floor", "median 1.00, min 0.50, max 2.00")
}

func TestReportHasRouteModeAgainstItsFloor(t *testing.T) {
	k := []*sample{sampleWith(20, 10, 20, 1000, 0, 1e9), sampleWith(20, 10, 20, 1000, 0, 1e9)}
	fl := []*sample{sampleWith(16, 30, 40, 800, time.Second, 1e9), sampleWith(16, 30, 40, 800, time.Second, 1e9)}
	r := []*sample{sampleWith(12, 45, 60, 600, 2*time.Second, 1e9), sampleWith(12, 45, 60, 600, 2*time.Second, 1e9)}
	rb := []*sample{sampleWith(8, 45, 60, 600, 2*time.Second, 1e9), sampleWith(8, 45, 60, 600, 2*time.Second, 1e9)}
	rep := &report{opts: options{duration: time.Second, rounds: 2}, started: time.Now(),
		results: results(map[string][]*sample{"ptp": k, "floor-route": fl, "route": r, "route-base": rb})}
	md := rep.markdown()
	wantIn(t, "report", md,
		"## Route mode against its floor",
		"| metric | kernel | floor (AF_PACKET forwarder) | ours, route | ours, route (-baseline build) | floor/kernel | route/floor | route-base/floor |",
		"| 1 stream pod→host, Gbit/s | 20.00 | 16.00 | 12.00 | 8.00 | 0.80× | 0.75× | 0.50× |",
		"| datapath CPU s/GB, 1 stream, s/GB | 0.00 | 1.00 | 2.00 | 2.00 | – | 2.00× | 2.00× |",
	)
	if strings.Contains(md, "## Proxy mode against the floor") {
		t.Error("the route floor made a proxy-floor section")
	}
	// Without route mode there is nothing to set against the floor.
	rep.results = results(map[string][]*sample{"ptp": k, "floor-route": fl})
	if md := rep.markdown(); strings.Contains(md, "## Route mode against its floor") {
		t.Error("route-floor section without route mode")
	}
}

// A quick run (-throughput=false) is not broken for lacking the
// kernel's throughput, and its report says "not run", not "error".
func TestThroughputNotRunIsNotBroken(t *testing.T) {
	notRun := func() *sample {
		s := sampleWith(10, 50, 100, 1000, 0, 1e9)
		for i := range s.tput {
			s.tput[i] = measured{err: errNotRun}
		}
		return s
	}
	rep := &report{opts: options{rounds: 1, families: []int{family4}}, results: results(map[string][]*sample{refVariant: {notRun()}, "proxy": {notRun()}})}
	if rep.broken() {
		t.Fatal("a quick run is broken")
	}
	md := rep.markdown()
	if !strings.Contains(md, "| 1 stream pod→host, Gbit/s | not run | not run |") || !strings.Contains(md, "| datapath CPU s/GB, 1 stream, s/GB | not run | not run |") {
		t.Fatalf("rows of a quick run:\n%s", md)
	}
	rep.results[0].samples[0].tput[casePH1] = measured{err: errors.New("iperf3 failed")}
	if !rep.broken() {
		t.Fatal("a kernel reference whose iperf3 failed is not broken")
	}
}

// wantIn fails t for each of wants that text (what: "report", "IPv6
// section") lacks, showing the text.
func wantIn(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Errorf("%s lacks %q:\n%s", what, want, text)
		}
	}
}

// TestCPUPerOp: µs of helper CPU per operation; no helper is not a
// figure at all, a failed run is its error, a run of nothing an error.
func TestCPUPerOp(t *testing.T) {
	if m := cpuPerOp(true, 3*time.Millisecond, 20, nil); m.err != nil || m.v != 150 {
		t.Fatalf("3 ms over 20 = %+v, want 150 µs", m)
	}
	if m := cpuPerOp(false, time.Millisecond, 20, nil); m.err != errNotMeasured {
		t.Fatalf("no helper: %+v, want errNotMeasured", m)
	}
	boom := errors.New("boom")
	if m := cpuPerOp(true, time.Millisecond, 20, boom); m.err != boom {
		t.Fatalf("failed run: %+v", m)
	}
	if m := cpuPerOp(true, time.Millisecond, 0, nil); m.err == nil {
		t.Fatalf("no operation: %+v", m)
	}
	if s := summarize([]measured{cpuPerOp(false, 0, 0, nil)}); s.rounds != 0 || s.ok() {
		t.Fatalf("a variant without a helper summarizes to %+v", s)
	}
}
