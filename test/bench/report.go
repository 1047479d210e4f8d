package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"golang.org/x/sys/unix"
)

// throughputCases are the iperf3 runs, in run order.
var throughputCases = [4]struct {
	name    string
	streams int
	reverse bool
}{
	{"pod→host 1 stream", 1, false},
	{"pod→host 4 streams", 4, false},
	{"host→pod 1 stream", 1, true},
	{"host→pod 4 streams", 4, true},
}

// Indexes of throughputCases.
const (
	casePH1 = iota
	casePH4
	caseHP1
	caseHP4
)

// measured is one figure or why it is missing.
type measured struct {
	v   float64
	err error
}

// errNotMeasured marks a figure a variant does not have (the port-mapping
// figure of a variant without port mappings): neither a value nor a
// failure.
var errNotMeasured = errors.New("not measured for this variant")

func (m measured) ok() bool { return m.err == nil && m.v > 0 }

func (m measured) fmt(f string) string {
	if m.err != nil {
		return "error"
	}
	return fmt.Sprintf(f, m.v)
}

// sample is one variant's figures in one round.
type sample struct {
	tput      [len(throughputCases)]measured // Gbit/s
	bytes     [len(throughputCases)]float64  // received
	cpu       [len(throughputCases)]cpuUse
	pm1       measured // Gbit/s host→pod through a port mapping
	rrN       int
	rrP50     measured // µs
	rrP99     measured // µs
	cps       measured // connections per second
	cpsErrors int
	udp       measured // UDP queries per second (udpQueryRate)
	udpErrors int
	// The helpers' CPU per round trip and per connection, µs (the
	// warm-up round trips and failed connects are in the CPU, not the
	// count); not measured for a variant without a helper process.
	rrCPU, cpsCPU, udpCPU measured
}

func newSample() *sample {
	return &sample{pm1: measured{err: errNotMeasured}, rrCPU: measured{err: errNotMeasured}, cpsCPU: measured{err: errNotMeasured},
		udpCPU: measured{err: errNotMeasured}}
}

// cpuPerOp is the helpers' CPU per operation in µs: errNotMeasured
// without helpers (the kernel path), the run's error if it failed.
func cpuPerOp(helpers bool, cpu time.Duration, n int, err error) measured {
	switch {
	case !helpers:
		return measured{err: errNotMeasured}
	case err != nil:
		return measured{err: err}
	case n <= 0:
		return measured{err: errors.New("no operation completed")}
	}
	return measured{v: float64(cpu) / float64(n) / 1e3}
}

// setupFailed marks every figure of s as failed with err.
func (s *sample) setupFailed(err error) {
	e := fmt.Errorf("setup: %w", err)
	for i := range s.tput {
		s.tput[i].err = e
	}
	s.rrP50.err, s.rrP99.err, s.cps.err, s.udp.err = e, e, e, e
}

// perGB is CPU seconds per GB (1e9 bytes) over the 1-stream runs, with
// use picking the CPU counted.
func (s *sample) perGB(use func(cpuUse) time.Duration) measured {
	var cpu time.Duration
	var bytes float64
	for _, i := range []int{casePH1, caseHP1} {
		if s.tput[i].err != nil {
			return measured{err: fmt.Errorf("%s: %w", throughputCases[i].name, s.tput[i].err)}
		}
		cpu += use(s.cpu[i])
		bytes += s.bytes[i]
	}
	if bytes <= 0 {
		return measured{err: errors.New("no bytes moved")}
	}
	return measured{v: cpu.Seconds() / (bytes / 1e9)}
}

// datapathCPU: the helpers and ksoftirqd (the package doc's method).
func (s *sample) datapathCPU() measured {
	return s.perGB(func(u cpuUse) time.Duration { return u.helpers + u.softirqd })
}

// systemCPU: every CPU's busy time (informative).
func (s *sample) systemCPU() measured {
	return s.perGB(func(u cpuUse) time.Duration { return u.system })
}

// variantResult is a variant over the rounds.
type variantResult struct {
	v       variant
	family  int    // family6: the variant over IPv6 (ipv6.go); 0 or family4: IPv4
	na      string // set: the variant cannot run here, and why
	note    string
	samples []*sample
}

// cniRow is one ADD/DEL latency run.
type cniRow struct {
	plugin   string
	pods     int
	parallel int
	add, del cnitest.Latencies
}

type report struct {
	opts          options
	started       time.Time
	host          netip.Addr
	gvisorVersion string
	results       []*variantResult
	loads         []float64 // 1-minute load average before each measurement
	mem           []memResult
	cni           []cniRow
	cniErr        error
	// v6 is the IPv6 section (report6.go).
	v6 ipv6Report
}

// broken: the kernel reference ran but has no 1-stream figure in any
// round, or a CNI run failed (nothing to compare against); the other
// variants' failures are reported in the tables and under Errors.
func (rep *report) broken() bool {
	for _, r := range rep.results {
		// The kernel reference must have its throughput, unless the
		// options left throughput out (-throughput=false).
		if s := buildTable([]*variantResult{r}).get(refVariant, "tput-ph1"); r.v.key == refVariant && (r.na != "" || !s.ok() && !s.notRun) {
			return true
		}
	}
	return rep.cniErr != nil || rep.v6.broken()
}

// toolVersions is the Debian versions of the peers measured, as dpkg
// knows them (bounded: dpkg-query answers from a local file).
func toolVersions() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f", "${Package} ${Version}, ", "iperf3", "passt", "slirp4netns").Output()
	s := strings.TrimSuffix(strings.TrimSpace(string(out)), ",")
	if s == "" {
		return fmt.Sprintf("unknown (dpkg-query: %v)", err)
	}
	return s
}

func uname() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// fmtSummary is "median" or "error", "not run" or "–".
func fmtSummary(m *metric, s summary) string {
	switch {
	case s.ok():
		return fmt.Sprintf(m.format, s.median)
	case s.rounds > 0:
		return "error"
	case s.notRun:
		return "not run"
	}
	return "–"
}

func (rep *report) markdown() string {
	if !rep.opts.has4() {
		return rep.markdown6Only()
	}
	var b strings.Builder
	host, _ := os.Hostname()
	t := buildTable(rep.results)
	label := map[string]string{}
	for _, v := range variants {
		label[v.key] = v.label
	}
	fmt.Fprintf(&b, "# cni-userstack benchmark\n\n")
	fmt.Fprintf(&b, "Run %s UTC on %s: Linux %s, %d CPUs (GOMAXPROCS %d), %s. %d interleaved rounds (every variant once per round); "+
		"each iperf3 run, the request/response run and the connect run last %v. Every pod dials the host's primary address %v "+
		"(a netns of the harness playing the node), except the floors', which dial their gateway where the floor relay listens.\n\n",
		rep.started.UTC().Format("2006-01-02 15:04"), host, uname(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(),
		rep.opts.rounds, rep.opts.duration, rep.host)
	b.WriteString("**Caveat:** a small shared machine (engineers run tests on it at the same time); absolute numbers are noisy, " +
		"ratios from the same run are the figure to read. A ratio is the variant's median divided by the kernel (ptp) median: " +
		"above 1× is better for throughput and connections/s, worse for latency and CPU/GB.\n\n")
	fmt.Fprintf(&b, "Tools: %s", toolVersions())
	if rep.gvisorVersion != "" {
		fmt.Fprintf(&b, ", gvisor.dev/gvisor %s", rep.gvisorVersion)
	}
	b.WriteString(".\n\n")

	// The summary table: metrics down, variants across.
	fmt.Fprintf(&b, "## Data path: medians of %d rounds (ratio to the kernel's median)\n\n| metric |", rep.opts.rounds)
	for _, k := range t.order {
		l := label[k]
		if k == "proxy" {
			l = "**" + l + "**"
		}
		b.WriteString(" " + l + " |")
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(t.order)) + "\n")
	for i := range metrics {
		m := &metrics[i]
		fmt.Fprintf(&b, "| %s, %s |", m.name, m.unit)
		for _, k := range t.order {
			s := t.get(k, m.key)
			c := fmtSummary(m, s)
			if rt, ok := t.kernelRatio(k, m); ok && k != refVariant {
				c += fmt.Sprintf(" (%.2f×)", rt)
			}
			b.WriteString(" " + c + " |")
		}
		b.WriteString("\n")
	}
	for _, r := range rep.results {
		if r.na != "" {
			fmt.Fprintf(&b, "\n%s: %s", r.v.label, r.na)
		}
	}
	b.WriteString("\n")
	if len(rep.loads) > 0 {
		fmt.Fprintf(&b, "\nLoad average (1 min) before each measurement: median %.2f, min %.2f, max %.2f on %d CPUs.\n",
			median(rep.loads), slices.Min(rep.loads), slices.Max(rep.loads), runtime.NumCPU())
	}
	if w := floorAboveKernel(t); len(w) > 0 {
		fmt.Fprintf(&b, "\n**Warning:** a floor (the kernel path plus a relay) beat the kernel path on %s: the kernel reference "+
			"ran under more load than the variants in this run, so every ratio to it reads too high. Compare with proxy/floor, or rerun with more rounds.\n",
			strings.Join(w, ", "))
	}

	res := judge(t, issueTargets)
	for _, aim := range []bool{false, true} {
		if aim {
			b.WriteString("\nThe aim after issue 11 (informative):\n\n")
		} else {
			b.WriteString("\n## Targets of issue 11 (judged from the medians)\n\n")
		}
		b.WriteString("| target | measured | verdict |\n|---|---|---|\n")
		for _, r := range res {
			if r.aim == aim {
				fmt.Fprintf(&b, "| %s | %s | %s |\n", r.what, r.measured, r.verdict)
			}
		}
		if !aim {
			for _, m := range rep.mem {
				if m.variant != "proxy" {
					continue
				}
				what := fmt.Sprintf("proxy: memory per idle relayed connection ≤ %d KiB (%d connections)", memTargetKiB, m.target)
				if m.err != nil {
					fmt.Fprintf(&b, "| %s | error | %s |\n", what, na)
					continue
				}
				kib := perConn(m.rssBefore, m.rssAfter, m.conns)
				fmt.Fprintf(&b, "| %s | %.2f KiB (daemon RSS) | %s |\n", what, kib, verdict(kib <= memTargetKiB))
			}
		}
	}

	var floors []string
	for _, f := range floorVariants {
		if _, ok := t.by[f]; ok {
			floors = append(floors, f)
		}
	}
	if _, ok := t.by["proxy"]; ok && len(floors) > 0 {
		b.WriteString("\n## Proxy mode against the floor\n\n" +
			"A floor is the kernel veth path plus a relay that splices over a second host TCP socket: what proxy mode would cost " +
			"if our stack were free (package doc of test/bench): the Go relay (a goroutine per direction) with the Go runtime's " +
			"wake-ups, the epoll relay (an event loop per core) without them. proxy/floor below 1× on throughput and " +
			"connections/s, above 1× on latency and CPU, is what is left to win.\n\n| metric | kernel |")
		for _, f := range floors {
			b.WriteString(" " + label[f] + " |")
		}
		b.WriteString(" proxy |")
		for _, f := range floors {
			fmt.Fprintf(&b, " %s/kernel |", f)
		}
		for _, f := range floors {
			fmt.Fprintf(&b, " proxy/%s |", f)
		}
		b.WriteString("\n|---|---:|" + strings.Repeat("---:|", 3*len(floors)+1) + "\n")
		for i := range metrics {
			m := &metrics[i]
			if !m.ahead {
				continue
			}
			fmt.Fprintf(&b, "| %s, %s | %s |", m.name, m.unit, fmtSummary(m, t.get(refVariant, m.key)))
			for _, f := range floors {
				b.WriteString(" " + fmtSummary(m, t.get(f, m.key)) + " |")
			}
			p := t.get("proxy", m.key)
			b.WriteString(" " + fmtSummary(m, p) + " |")
			for _, f := range floors {
				b.WriteString(" " + ratioCell(t.kernelRatio(f, m)) + " |")
			}
			for _, f := range floors {
				b.WriteString(" " + ratioCell(ratio(p, t.get(f, m.key))) + " |")
			}
			b.WriteString("\n")
		}
	}

	writeRouteFloor(&b, t, label)

	b.WriteString("\n## Median, min and max per variant\n\n| variant | metric | median | min | max | median/kernel | samples with a value (one a round; the kernel two) |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, k := range t.order {
		for i := range metrics {
			m := &metrics[i]
			s := t.get(k, m.key)
			if s.rounds == 0 {
				continue
			}
			mn, mx := "–", "–"
			if s.ok() {
				mn, mx = fmt.Sprintf(m.format, s.min), fmt.Sprintf(m.format, s.max)
			}
			rt := ratioCell(t.kernelRatio(k, m))
			fmt.Fprintf(&b, "| %s | %s, %s | %s | %s | %s | %s | %d of %d |\n", label[k], m.name, m.unit, fmtSummary(m, s), mn, mx, rt, s.n, s.rounds)
		}
	}

	b.WriteString("\nHow each pod reaches its host side:\n\n")
	for _, r := range rep.results {
		if r.note != "" {
			rr, fails, ufails := 0, 0, 0
			for _, s := range r.samples {
				rr += s.rrN
				fails += s.cpsErrors
				ufails += s.udpErrors
			}
			fmt.Fprintf(&b, "- %s: %s; %d round trips timed, %d failed connects and %d unanswered UDP queries over the rounds.\n",
				r.v.label, r.note, rr, fails, ufails)
		}
	}
	b.WriteString(`
Method (details in the package doc of test/bench):

- Throughput: ` + "`iperf3 -c -t <duration> -P 1|4 [-R] -J`" + ` in the pod netns against ` + "`iperf3 -s`" + ` in the host netns; received bits/s.
  host→pod is ` + "`-R`" + ` for every variant (the pod connects, the host sends). Proxy mode's port-mapping figure: ` + "`iperf3 -s`" + `
  in the pod and the client in the host netns at the mapped port.
- RR: one TCP connection (TCP_NODELAY), 1 byte each way per round trip, 200 untimed first, then up to -rr-count or -duration.
- conn/s: for -duration, one after another: connect, 1-byte request, 1-byte response, close.
- UDP queries/s: for -duration, one after another in a name lookup's shape: a new UDP socket (a new source port), a 32-byte
  datagram to the RR server's port, its 32-byte answer (1 s to come), close. Not through the floor relay (TCP only).
- Helper CPU per round trip / per connection: the helper process's CPU over the RR run and the connect run, divided by the round trips timed and the connections made (informative; none for the kernel path).
- Datapath CPU s/GB: over the two 1-stream runs, (CPU of the helper processes — our daemon, a relay, pasta, slirp4netns —
  from /proc/PID/stat, + the ksoftirqd threads') / GB received. Softirq work that ran in a helper's context is in its
  system time (no IRQ time accounting on this kernel); the part in the iperf3 processes' context is the application's,
  so the kernel row shows only its ksoftirqd share. Whole-system: every CPU's busy time (/proc/stat) per GB, others' load included.
`)

	rep.writeIPv6(&b)

	b.WriteString("\n## Memory per idle relayed connection\n\n")
	if len(rep.mem) == 0 {
		b.WriteString("Not run (-mem-conns 0).\n")
	} else {
		b.WriteString("| variant | connections held | helper RSS before → after, MiB | KiB per connection (RSS) | Go heap+stack per connection, KiB | target |\n|---|---:|---:|---:|---:|---|\n")
		for _, m := range rep.mem {
			if m.err != nil {
				fmt.Fprintf(&b, "| %s | %d of %d | error: %s | | | |\n", m.label, m.conns, m.target, firstLine(m.err.Error()))
				continue
			}
			goKiB, tgt := "n/a", ""
			if m.goBefore != nil && m.goAfter != nil {
				goKiB = fmt.Sprintf("%.2f (%s)", perConn(m.goBefore.heapInuse+m.goBefore.stackInuse, m.goAfter.heapInuse+m.goAfter.stackInuse, m.conns), m.goHow)
			}
			kib := perConn(m.rssBefore, m.rssAfter, m.conns)
			if m.variant == "proxy" {
				tgt = fmt.Sprintf("≤ %d KiB: %s", memTargetKiB, verdict(kib <= memTargetKiB))
			}
			held := fmt.Sprintf("%d of %d", m.conns, m.target)
			if m.target < rep.opts.memConns {
				held += fmt.Sprintf(" (the open-file limit allows %d, not %d)", m.target, rep.opts.memConns)
			}
			fmt.Fprintf(&b, "| %s | %s | %.1f → %.1f | %.2f | %s | %s |\n", m.label, held,
				float64(m.rssBefore)/(1<<20), float64(m.rssAfter)/(1<<20), kib, goKiB, tgt)
		}
		how := "1 byte each way, then idle"
		if !rep.opts.memExchange {
			how = "connected only (-mem-exchange=false), idle"
		}
		fmt.Fprintf(&b, "\n%d TCP connections from one pod to %d server ports on the host's primary address, %s "+
			"%v before the reading; RSS is the helper's VmRSS (proxy mode: a daemon of its own); Go heap+stack in use (the relays: after "+
			"a forced GC, on SIGUSR1; our daemon: its /metrics, where the heap holds garbage not yet collected) counts buffers "+
			"allocated but never touched (io.Copy's 32 KiB each way), which RSS does not. "+
			"Kernel socket memory is not counted.\n", rep.opts.memConns, memPorts, how, memSettle)
	}

	b.WriteString("\n## CNI ADD/DEL latency\n\n")
	if rep.cniErr != nil {
		fmt.Fprintf(&b, "Failed: %v\n", rep.cniErr)
	}
	if len(rep.cni) > 0 {
		b.WriteString("| plugin | pods | at once | ADD p50 | ADD p99 | DEL p50 | DEL p99 |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range rep.cni {
			var ref *cniRow
			for i := range rep.cni {
				if rep.cni[i].plugin == "kernel (ptp)" && rep.cni[i].parallel == c.parallel {
					ref = &rep.cni[i]
				}
			}
			lat := func(l cnitest.Latencies, p float64, refl func(*cniRow) cnitest.Latencies) string {
				s := l.Percentile(p).Round(10 * time.Microsecond).String()
				if ref != nil && refl(ref).Percentile(p) > 0 {
					s += fmt.Sprintf(" (%.2f×)", float64(l.Percentile(p))/float64(refl(ref).Percentile(p)))
				}
				return s
			}
			addOf := func(x *cniRow) cnitest.Latencies { return x.add }
			delOf := func(x *cniRow) cnitest.Latencies { return x.del }
			fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s | %s |\n", c.plugin, c.pods, c.parallel,
				lat(c.add, 50, addOf), lat(c.add, 99, addOf), lat(c.del, 50, delOf), lat(c.del, 99, delOf))
		}
		b.WriteString("\nThrough libcni (cnitest.AddDelLatency, as the e2e test TestCNIAddDelLatency), both plugins with the harness's host netns " +
			"as their host: our plugin with its private daemon and host-local IPAM; ptp with host-local. Ratios against ptp at the same parallelism.\n")
	}

	var errs []string
	for _, k := range t.order {
		for i := range metrics {
			for _, e := range t.get(k, metrics[i].key).errs {
				errs = append(errs, fmt.Sprintf("- %s, %s: %s", label[k], metrics[i].name, e))
			}
		}
	}
	if len(errs) > 0 {
		b.WriteString("\n## Errors\n\n" + strings.Join(errs, "\n") + "\n")
	}
	return b.String()
}

// writeRouteFloor writes route mode (and the -baseline build's, when it
// ran) against its floor, the AF_PACKET forwarder in route mode's
// topology: route/floor-route below 1× on throughput and connections/s,
// above 1× on latency and CPU, is what our stack adds to what any
// AF_PACKET forwarder pays here.
func writeRouteFloor(b *strings.Builder, t *table, label map[string]string) {
	if _, ok := t.by[routeFloor]; !ok {
		return
	}
	var ours []string
	for _, k := range []string{"route", "route-base"} {
		if _, ok := t.by[k]; ok {
			ours = append(ours, k)
		}
	}
	if len(ours) == 0 {
		return
	}
	b.WriteString("\n## Route mode against its floor\n\n" +
		"The route floor is route mode's topology (the pod's veth, an uplink veth into the host netns, routes) with the least " +
		"userspace forwarder on AF_PACKET where our stack sits (test/bench/floorpacket: a thread per direction, recvmmsg/sendmmsg " +
		"batches with vnet headers, only the TTL and the Ethernet addresses rewritten): what route mode would cost if our stack " +
		"were free. route/floor below 1× on throughput and connections/s, above 1× on latency and CPU, is what is left to win; " +
		"floor/kernel is what any AF_PACKET forwarder pays here.\n\n| metric | kernel | " + label[routeFloor] + " |")
	for _, k := range ours {
		b.WriteString(" " + label[k] + " |")
	}
	b.WriteString(" floor/kernel |")
	for _, k := range ours {
		fmt.Fprintf(b, " %s/floor |", k)
	}
	b.WriteString("\n|---|---:|---:|" + strings.Repeat("---:|", 2*len(ours)+1) + "\n")
	fl := func(key string) summary { return t.get(routeFloor, key) }
	for i := range metrics {
		m := &metrics[i]
		if !m.ahead {
			continue
		}
		fmt.Fprintf(b, "| %s, %s | %s | %s |", m.name, m.unit, fmtSummary(m, t.get(refVariant, m.key)), fmtSummary(m, fl(m.key)))
		for _, k := range ours {
			b.WriteString(" " + fmtSummary(m, t.get(k, m.key)) + " |")
		}
		b.WriteString(" " + ratioCell(t.kernelRatio(routeFloor, m)) + " |")
		for _, k := range ours {
			b.WriteString(" " + ratioCell(ratio(t.get(k, m.key), fl(m.key))) + " |")
		}
		b.WriteString("\n")
	}
}

// ratioCell is a table cell for a ratio: "1.23×", or "–" when there is
// none (ok false: a side without a value).
func ratioCell(rt float64, ok bool) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2f×", rt)
}
