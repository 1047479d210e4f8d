package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// This file is the pure part of the report: what a metric is, how the
// rounds of one variant reduce to median, min and max, and how the targets
// of issue 11 are judged from those medians. No I/O, no root: tested as
// data in stats_test.go.

// metric is one figure of the data-path table.
type metric struct {
	key    string // stable name: -variants-like, used by targets
	name   string // row label
	unit   string
	format string // of one value
	higher bool   // higher is better (throughput, connections/s)
	// ahead: part of "ahead of the userspace peers on every metric".
	ahead bool
	get   func(*sample) measured
	// noRatio: the kernel's figure is not comparable (the datapath CPU:
	// the kernel path has no helper process, its cost is in the
	// applications' context), so no ratio to it is shown.
	noRatio bool
}

// metrics are the rows of the data-path table, in order.
var metrics = []metric{
	{"tput-ph1", "1 stream pod→host", "Gbit/s", "%.2f", true, true, func(s *sample) measured { return s.tput[casePH1] }, false},
	{"tput-hp1", "1 stream host→pod", "Gbit/s", "%.2f", true, true, func(s *sample) measured { return s.tput[caseHP1] }, false},
	{"tput-ph4", "4 streams pod→host", "Gbit/s", "%.2f", true, true, func(s *sample) measured { return s.tput[casePH4] }, false},
	{"tput-hp4", "4 streams host→pod", "Gbit/s", "%.2f", true, true, func(s *sample) measured { return s.tput[caseHP4] }, false},
	{"rr-p50", "1-byte RR p50", "µs", "%.1f", false, true, func(s *sample) measured { return s.rrP50 }, false},
	{"rr-p99", "1-byte RR p99", "µs", "%.1f", false, true, func(s *sample) measured { return s.rrP99 }, false},
	{"cps", "connections/s (connect, 1 B each way, close)", "/s", "%.0f", true, true, func(s *sample) measured { return s.cps }, false},
	{"udp-qps", "UDP queries/s (new socket, 32 B each way, close; informative)", "/s", "%.0f", true, false, func(s *sample) measured { return s.udp }, false},
	{"rr-cpu", "helper CPU per round trip (informative)", "µs", "%.1f", false, false, func(s *sample) measured { return s.rrCPU }, true},
	{"cps-cpu", "helper CPU per connection (informative)", "µs", "%.0f", false, false, func(s *sample) measured { return s.cpsCPU }, true},
	{"udp-cpu", "helper CPU per UDP query (informative)", "µs", "%.0f", false, false, func(s *sample) measured { return s.udpCPU }, true},
	{"cpu", "datapath CPU s/GB, 1 stream", "s/GB", "%.2f", false, true, (*sample).datapathCPU, true},
	{"syscpu", "whole-system CPU s/GB, 1 stream (informative)", "s/GB", "%.2f", false, false, (*sample).systemCPU, false},
	{"pm-hp1", "1 stream host→pod through a port mapping (proxy only)", "Gbit/s", "%.2f", true, false, func(s *sample) measured { return s.pm1 }, false},
}

func metricByKey(k string) *metric {
	for i := range metrics {
		if metrics[i].key == k {
			return &metrics[i]
		}
	}
	return nil
}

// summary is one metric of one variant over the rounds.
type summary struct {
	n                int // rounds with a value
	rounds           int // rounds run
	median, min, max float64
	errs             []string // why the other rounds have none (deduplicated)
	notRun           bool     // the options left the measurement out (errNotRun)
}

func (s summary) ok() bool { return s.n > 0 }

// summarize reduces one metric's rounds. A figure that was not measured
// for this variant at all (errNotMeasured), or that the options left out
// (errNotRun), is neither a value nor an error.
func summarize(vals []measured) summary {
	var s summary
	var v []float64
	for _, m := range vals {
		if m.err == errNotMeasured {
			continue
		}
		if errors.Is(m.err, errNotRun) { // also the CPU per GB of a throughput run not run
			s.notRun = true
			continue
		}
		s.rounds++
		if m.err != nil {
			e := firstLine(m.err.Error())
			if !slices.Contains(s.errs, e) {
				s.errs = append(s.errs, e)
			}
			continue
		}
		v = append(v, m.v)
	}
	s.n = len(v)
	if s.n > 0 {
		s.median = median(v)
		s.min, s.max = slices.Min(v), slices.Max(v)
	}
	return s
}

// median of v (the mean of the middle two for an even count; 0 for none).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// kernelRatio is the ratio of variant's median to the kernel's for m
// (false when there is none or m has no ratio).
func (t *table) kernelRatio(variant string, m *metric) (float64, bool) {
	if m.noRatio {
		return 0, false
	}
	return ratio(t.get(variant, m.key), t.get(refVariant, m.key))
}

// ratio is a/b when both exist and b > 0.
func ratio(a, b summary) (float64, bool) {
	if !a.ok() || !b.ok() || b.median <= 0 {
		return 0, false
	}
	return a.median / b.median, true
}

// better reports whether a is better than b for m (strictly).
func (m *metric) better(a, b float64) bool {
	if m.higher {
		return a > b
	}
	return a < b
}

// table is the summaries of every variant that ran, by variant key then
// metric key, with the kernel reference.
type table struct {
	order []string // variant keys in run order
	by    map[string]map[string]summary
}

func (t *table) get(variant, metricKey string) summary {
	return t.by[variant][metricKey]
}

// buildTable summarizes every variant's samples.
func buildTable(results []*variantResult) *table {
	t := &table{by: map[string]map[string]summary{}}
	for _, r := range results {
		if r.na != "" {
			continue
		}
		t.order = append(t.order, r.v.key)
		t.by[r.v.key] = map[string]summary{}
		for i := range metrics {
			m := &metrics[i]
			var vals []measured
			for _, s := range r.samples {
				vals = append(vals, m.get(s))
			}
			t.by[r.v.key][m.key] = summarize(vals)
		}
	}
	return t
}

// targetKind is how a target is judged.
type targetKind int

const (
	ratioAtLeast targetKind = iota // median/kernel median ≥ bound
	ratioAtMost                    // median/kernel median ≤ bound
	absAtMost                      // median ≤ bound
	aheadOf                        // better than peer's median on every "ahead" metric
)

// target is one line of the targets table.
type target struct {
	variant string
	metric  string // metric key (not for aheadOf)
	kind    targetKind
	bound   float64
	peer    string // aheadOf: the variant to beat
	aim     bool   // the aim after issue 11, not its acceptance
}

// refVariant is the variant every ratio is against.
const refVariant = "ptp"

// issueTargets are issue 11's acceptance targets, then the aim after it.
var issueTargets = []target{
	{variant: "proxy", metric: "tput-ph1", kind: ratioAtLeast, bound: 0.6},
	{variant: "proxy", metric: "tput-hp1", kind: ratioAtLeast, bound: 0.6},
	{variant: "proxy", metric: "tput-ph4", kind: ratioAtLeast, bound: 0.45},
	{variant: "proxy", metric: "tput-hp4", kind: ratioAtLeast, bound: 0.45},
	{variant: "proxy", metric: "rr-p99", kind: ratioAtMost, bound: 1.5},
	{variant: "proxy", metric: "cps", kind: ratioAtLeast, bound: 0.6},
	{variant: "proxy", metric: "cpu", kind: absAtMost, bound: 0.6},
	{variant: "proxy", kind: aheadOf, peer: "gvisor"},
	{variant: "proxy", kind: aheadOf, peer: "pasta"},
	{variant: "proxy", kind: aheadOf, peer: "pasta-64k"},
	{variant: "route", metric: "tput-ph1", kind: ratioAtLeast, bound: 0.8},
	{variant: "route", metric: "tput-hp1", kind: ratioAtLeast, bound: 0.8},
	{variant: "proxy", metric: "tput-ph1", kind: ratioAtLeast, bound: 0.8, aim: true},
	{variant: "proxy", metric: "tput-hp1", kind: ratioAtLeast, bound: 0.8, aim: true},
	{variant: "proxy", metric: "cps", kind: ratioAtLeast, bound: 0.85, aim: true},
	{variant: "proxy", metric: "rr-p99", kind: ratioAtMost, bound: 1.25, aim: true},
}

// Verdicts of a target.
const (
	pass = "pass"
	fail = "FAIL"
	na   = "n/a"
)

// targetResult is one judged target.
type targetResult struct {
	what     string // "proxy: 1 stream pod→host ≥ 0.60× kernel"
	measured string
	verdict  string
	aim      bool
}

// judge evaluates every target against the table (medians only).
func judge(t *table, ts []target) []targetResult {
	var out []targetResult
	for _, tg := range ts {
		out = append(out, judgeOne(t, tg))
	}
	return out
}

func judgeOne(t *table, tg target) targetResult {
	r := targetResult{aim: tg.aim}
	if tg.kind == aheadOf {
		r.what = fmt.Sprintf("%s ahead of %s on every metric", tg.variant, tg.peer)
		r.measured, r.verdict = ahead(t, tg.variant, tg.peer)
		return r
	}
	m := metricByKey(tg.metric)
	if m == nil {
		r.what, r.verdict = "unknown metric "+tg.metric, na
		return r
	}
	s := t.get(tg.variant, m.key)
	switch tg.kind {
	case ratioAtLeast, ratioAtMost:
		op := "≥"
		if tg.kind == ratioAtMost {
			op = "≤"
		}
		r.what = fmt.Sprintf("%s: %s %s %.2f× kernel", tg.variant, m.name, op, tg.bound)
		rt, ok := t.kernelRatio(tg.variant, m)
		if !ok {
			r.measured, r.verdict = "not measured", na
			return r
		}
		r.measured = fmt.Sprintf("%.2f× ("+m.format+" vs "+m.format+" %s)", rt, s.median, t.get(refVariant, m.key).median, m.unit)
		good := rt >= tg.bound
		if tg.kind == ratioAtMost {
			good = rt <= tg.bound
		}
		r.verdict = verdict(good)
	case absAtMost:
		r.what = fmt.Sprintf("%s: %s ≤ "+m.format+" %s", tg.variant, m.name, tg.bound, m.unit)
		if !s.ok() {
			r.measured, r.verdict = "not measured", na
			return r
		}
		r.measured = fmt.Sprintf(m.format+" %s", s.median, m.unit)
		r.verdict = verdict(s.median <= tg.bound)
	}
	return r
}

func verdict(ok bool) string {
	if ok {
		return pass
	}
	return fail
}

// ahead compares variant with peer on every "ahead" metric: pass when it
// is strictly better on each one both have, FAIL when behind (or level) on
// any, n/a when they share none.
func ahead(t *table, variant, peer string) (string, string) {
	if _, ok := t.by[peer]; !ok {
		return peer + " did not run", na
	}
	if _, ok := t.by[variant]; !ok {
		return variant + " did not run", na
	}
	var behind, missing []string
	compared := 0
	for i := range metrics {
		m := &metrics[i]
		if !m.ahead {
			continue
		}
		a, b := t.get(variant, m.key), t.get(peer, m.key)
		if !a.ok() || !b.ok() {
			missing = append(missing, m.key)
			continue
		}
		compared++
		if !m.better(a.median, b.median) {
			behind = append(behind, fmt.Sprintf("%s "+m.format+" vs "+m.format, m.key, a.median, b.median))
		}
	}
	if compared == 0 {
		return "no metric measured by both", na
	}
	var b strings.Builder
	if len(behind) == 0 {
		fmt.Fprintf(&b, "ahead on %d of %d", compared, compared)
	} else {
		fmt.Fprintf(&b, "behind on %s", strings.Join(behind, "; "))
	}
	if len(missing) > 0 {
		fmt.Fprintf(&b, " (not compared: %s)", strings.Join(missing, ", "))
	}
	return b.String(), verdict(len(behind) == 0)
}

// floorMargin is how far the floor may beat the kernel path on throughput
// before the run's reference is called into question: the floor is the
// kernel path plus work, so it can only do so by noise or load.
const floorMargin = 1.10

// floorVariants are the variants that are the kernel path plus a relay.
var floorVariants = []string{"floor", "floor-epoll"}

// routeFloor is route mode's floor: route mode's topology with the
// least AF_PACKET forwarder (test/bench/floorpacket) for our stack.
const routeFloor = "floor-route"

// floorAboveKernel lists the throughput metrics on which a floor's
// median beats the kernel's by more than floorMargin.
func floorAboveKernel(t *table) []string {
	var out []string
	for _, f := range append(floorVariants[:len(floorVariants):len(floorVariants)], routeFloor, routeFloor+"-b") {
		for i := range metrics {
			m := &metrics[i]
			if m.unit != "Gbit/s" || m.noRatio {
				continue
			}
			if rt, ok := ratio(t.get(f, m.key), t.get(refVariant, m.key)); ok && rt > floorMargin {
				out = append(out, fmt.Sprintf("%s: %s (%.2f×)", f, m.name, rt))
			}
		}
	}
	return out
}
