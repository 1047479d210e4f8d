package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"golang.org/x/sys/unix"
)

// throughputCases are the iperf3 runs, in column order.
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

// measured is one figure or why it is missing.
type measured struct {
	v   float64
	err error
}

func (m measured) ok() bool { return m.err == nil && m.v > 0 }

func (m measured) fmt(f string) string {
	if m.err != nil {
		return "error"
	}
	return fmt.Sprintf(f, m.v)
}

// row is one variant's figures.
type row struct {
	label     string
	na        string // set: the variant did not run, and why
	note      string
	tput      [len(throughputCases)]measured // Gbit/s
	rrN       int
	rrP50     measured // µs
	rrP99     measured // µs
	cps       measured // connections per second
	cpsErrors int
	bytes     float64 // received over all iperf3 runs
	procCPU   time.Duration
	sysCPU    time.Duration
	errs      []string
}

// cpuPerGB is CPU seconds per GB (1e9 bytes) received.
func cpuPerGB(cpu time.Duration, bytes float64) measured {
	if bytes <= 0 {
		return measured{err: fmt.Errorf("no bytes moved")}
	}
	return measured{v: cpu.Seconds() / (bytes / 1e9)}
}

func (r *row) errors() []string {
	out := append([]string(nil), r.errs...)
	add := func(what string, m measured) {
		if m.err != nil {
			out = append(out, what+": "+m.err.Error())
		}
	}
	for i, c := range throughputCases {
		add("iperf3 "+c.name, r.tput[i])
	}
	add("request/response", r.rrP50)
	add("connections", r.cps)
	return out
}

// cniRow is one ADD/DEL latency run.
type cniRow struct {
	plugin   string
	pods     int
	parallel int
	add, del cnitest.Latencies
}

type report struct {
	opts    options
	started time.Time
	rows    []*row
	cni     []cniRow
	cniErr  error
}

// broken: the reference row or a CNI run failed (nothing to compare
// against); the other variants' failures are reported in their rows.
func (rep *report) broken() bool {
	for _, r := range rep.rows {
		if r.label == "kernel (ptp)" && (r.na != "" || len(r.errors()) > 0) {
			return true
		}
	}
	return rep.cniErr != nil
}

// cell is value (ratio× the kernel's). higherBetter only says how to read
// it; the ratio is always variant/kernel.
func cell(m, ref measured, f string) string {
	if m.err != nil {
		return "error"
	}
	s := fmt.Sprintf(f, m.v)
	if ref.ok() {
		s += fmt.Sprintf(" (%.2f×)", m.v/ref.v)
	}
	return s
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

func (rep *report) markdown() string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "# cni-userstack benchmark\n\n")
	fmt.Fprintf(&b, "Run %s UTC on %s: Linux %s, %d CPUs (GOMAXPROCS %d), %s. Each iperf3 run, the request/response run and the connect run last %v.\n\n",
		rep.started.UTC().Format("2006-01-02 15:04"), host, uname(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), rep.opts.duration)
	fmt.Fprintf(&b, "**Caveat:** a small shared machine (engineers run tests on it at the same time); absolute numbers are noisy, "+
		"ratios from the same run are the figure to read. Every ratio is the variant's value divided by the kernel (ptp) row's: "+
		"above 1× is better for throughput and connections/s, worse for latency and CPU/GB.\n\n")

	fmt.Fprintf(&b, "Tools: %s.\n\n", toolVersions())

	var ref *row
	for _, r := range rep.rows {
		if r.label == "kernel (ptp)" && r.na == "" {
			ref = r
		}
	}
	refOf := func(f func(*row) measured) measured {
		if ref == nil {
			return measured{err: fmt.Errorf("no reference")}
		}
		return f(ref)
	}

	b.WriteString("## Data path\n\n")
	b.WriteString("| variant |")
	for _, c := range throughputCases {
		b.WriteString(" " + c.name + " Gbit/s |")
	}
	b.WriteString(" RR p50 µs | RR p99 µs | conn/s | CPU s/GB (processes) | CPU s/GB (system) |\n|---|")
	for range throughputCases {
		b.WriteString("---:|")
	}
	b.WriteString("---:|---:|---:|---:|---:|\n")
	for _, r := range rep.rows {
		if r.na != "" {
			fmt.Fprintf(&b, "| %s | %s |%s\n", r.label, r.na, strings.Repeat(" |", len(throughputCases)+5-1))
			continue
		}
		fmt.Fprintf(&b, "| %s |", r.label)
		for i := range throughputCases {
			fmt.Fprintf(&b, " %s |", cell(r.tput[i], refOf(func(x *row) measured { return x.tput[i] }), "%.2f"))
		}
		fmt.Fprintf(&b, " %s | %s | %s | %s | %s |\n",
			cell(r.rrP50, refOf(func(x *row) measured { return x.rrP50 }), "%.1f"),
			cell(r.rrP99, refOf(func(x *row) measured { return x.rrP99 }), "%.1f"),
			cell(r.cps, refOf(func(x *row) measured { return x.cps }), "%.0f"),
			cell(cpuPerGB(r.procCPU, r.bytes), refOf(func(x *row) measured { return cpuPerGB(x.procCPU, x.bytes) }), "%.2f"),
			cell(cpuPerGB(r.sysCPU, r.bytes), refOf(func(x *row) measured { return cpuPerGB(x.sysCPU, x.bytes) }), "%.2f"))
	}
	b.WriteString("\nHow each pod reaches its host side:\n\n")
	for _, r := range rep.rows {
		if r.note != "" {
			fmt.Fprintf(&b, "- %s: %s; %d round trips timed, %d failed connects.\n", r.label, r.note, r.rrN, r.cpsErrors)
		}
	}
	b.WriteString(`
Method:

- Throughput: ` + "`iperf3 -c -t <duration> -P 1|4 [-R] -J`" + ` from the pod netns to ` + "`iperf3 -s`" + ` on the host side; received bits/s.
  host→pod is ` + "`-R`" + ` (the pod connects, the host side sends), except cni-userstack proxy: through its port mapping,
  ` + "`iperf3 -s`" + ` in the pod and the client in the host netns at the mapped host port.
- RR: one TCP connection (TCP_NODELAY), 1 byte each way per round trip, 200 untimed first, then up to -rr-count or -duration.
- conn/s: for -duration, one after another: connect, 1-byte request, 1-byte response, close (the pod netns gets tcp_tw_reuse=1).
- CPU s/GB (processes): over all iperf3 runs of the row, CPU of the iperf3 client (rusage) + the iperf3 server and the
  helper process (our daemon, pasta, slirp4netns) from /proc/PID/stat deltas, divided by GB (1e9 bytes) received.
  Kernel softirq work is charged to whichever process was on the CPU, so the whole-system /proc/stat busy delta
  (user+nice+system+irq+softirq+steal) over the same runs is given beside it; on a shared machine it includes others' load.
`)

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
		b.WriteString("\nThrough libcni (cnitest.AddDelLatency, as the e2e test TestCNIAddDelLatency): our plugin with its private daemon " +
			"and host-local IPAM; ptp with host-local, its host side in a netns of the harness. Ratios against ptp at the same parallelism.\n")
	}

	var errs []string
	for _, r := range rep.rows {
		for _, e := range r.errors() {
			errs = append(errs, fmt.Sprintf("- %s: %s", r.label, strings.ReplaceAll(e, "\n", " ")))
		}
	}
	if len(errs) > 0 {
		b.WriteString("\n## Errors\n\n" + strings.Join(errs, "\n") + "\n")
	}
	return b.String()
}
