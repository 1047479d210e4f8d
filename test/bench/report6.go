package main

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
)

// This file writes the report's IPv6 section: the same figures as the
// IPv4 data-path table, from the IPv6 variants of the same rounds, every
// ratio to the kernel's IPv6 median (buildTable over the IPv6 results
// alone: refVariant is then the kernel over IPv6); then each variant's
// IPv6 median against its own IPv4 median of the run, median/min/max, how
// each pod reached the host, and the errors. The IPv4 tables are not
// changed by it. Pure: tested as data in report6_test.go.

// ipv6Report is what the run gathered for the IPv6 section.
type ipv6Report struct {
	on      bool   // -families has 6
	host    string // the host's primary IPv6 address
	err     error  // the host netns's IPv6 setup failed: no IPv6 variant ran
	results []*variantResult
	left    []string // "label: why" of each selected variant with no IPv6 twin
}

// broken: IPv6 was asked for and set up, the kernel over IPv6 ran, and it
// has no 1-stream figure in any round (nothing to compare against).
func (v *ipv6Report) broken() bool {
	if !v.on || v.err != nil {
		return false
	}
	for _, r := range v.results {
		// As over IPv4: unless the options left throughput out.
		if s := buildTable([]*variantResult{r}).get(refVariant, "tput-ph1"); r.v.key == refVariant && (r.na != "" || !s.ok() && !s.notRun) {
			return true
		}
	}
	return false
}

// ipv6Metrics are the metrics some IPv6 variant has a round of, in
// the order of metrics.
func ipv6Metrics(t *table) []*metric {
	var out []*metric
	for i := range metrics {
		m := &metrics[i]
		for _, k := range t.order {
			if t.get(k, m.key).rounds > 0 {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// writeIPv6 appends the IPv6 section to b (nothing when -families has no 6).
func (rep *report) writeIPv6(b *strings.Builder) {
	v := &rep.v6
	if !v.on {
		return
	}
	label := map[string]string{}
	for _, x := range variants6 {
		label[x.key] = x.label
	}
	fmt.Fprintf(b, "\n## IPv6: the TCP tests over IPv6, medians of %d rounds (ratio to the kernel's IPv6 median)\n\n", rep.opts.rounds)
	if v.err != nil {
		fmt.Fprintf(b, "Not run: the host netns got no IPv6 primary address: %v\n", v.err)
		return
	}
	fmt.Fprintf(b, "In the same interleaved rounds as IPv4: each round runs the IPv4 variants (the kernel at both ends), then these, "+
		"with the kernel over IPv6 at both ends. Every pod here is dual stack (ptp's, the floors' and ours from host-local with one "+
		"range per family, pasta's from pasta, slirp4netns's by SLAAC) and dials the host's primary IPv6 address %s, where the servers listen (the floors' pods: "+
		"their IPv6 gateway, where the floor relay listens); our proxy mode relays over IPv6 host sockets. A ratio is the variant's IPv6 "+
		"median divided by the kernel's IPv6 median.\n\n", v.host)
	t := buildTable(v.results)
	ms := ipv6Metrics(t)
	if len(t.order) > 0 {
		b.WriteString("| metric (IPv6) |")
		for _, k := range t.order {
			l := label[k]
			if k == "proxy" {
				l = "**" + l + "**"
			}
			b.WriteString(" " + l + " |")
		}
		b.WriteString("\n|---|" + strings.Repeat("---:|", len(t.order)) + "\n")
		for _, m := range ms {
			fmt.Fprintf(b, "| %s, %s |", m.name, m.unit)
			for _, k := range t.order {
				c := fmtSummary(m, t.get(k, m.key))
				if rt, ok := t.kernelRatio(k, m); ok && k != refVariant {
					c += fmt.Sprintf(" (%.2f×)", rt)
				}
				b.WriteString(" " + c + " |")
			}
			b.WriteString("\n")
		}
	}
	for _, r := range v.results {
		if r.na != "" {
			fmt.Fprintf(b, "\n%s over IPv6: %s", r.v.label, r.na)
		}
	}
	if len(v.left) > 0 {
		b.WriteString("\n\nNot in the IPv6 section:\n\n")
		for _, l := range v.left {
			b.WriteString("- " + l + "\n")
		}
	} else {
		b.WriteString("\n")
	}
	if len(rep.loads) > 0 {
		fmt.Fprintf(b, "\nThe load average is the run's (IPv4 and IPv6 measurements alike): median %.2f, min %.2f, max %.2f on %d CPUs.\n",
			median(rep.loads), slices.Min(rep.loads), slices.Max(rep.loads), runtime.NumCPU())
	}

	if w := floorAboveKernel(t); len(w) > 0 {
		fmt.Fprintf(b, "\n**Warning:** over IPv6 a floor (the kernel path plus a relay) beat the kernel path on %s: the kernel reference "+
			"ran under more load than the variants, so every IPv6 ratio to it reads too high.\n", strings.Join(w, ", "))
	}
	rep.writeFloor6(b, t, label)

	// Each variant over IPv6 against itself over IPv4, same run.
	t4 := buildTable(rep.results)
	var both []string
	for _, k := range t.order {
		if _, ok := t4.by[k]; ok {
			both = append(both, k)
		}
	}
	if len(both) > 0 {
		b.WriteString("\n### IPv6 against IPv4, each variant in the same run (its IPv6 median / its IPv4 median)\n\n" +
			"Above 1× is better over IPv6 for throughput and connections/s, worse for latency and CPU.\n\n| metric |")
		for _, k := range both {
			b.WriteString(" " + label[k] + " |")
		}
		b.WriteString("\n|---|" + strings.Repeat("---:|", len(both)) + "\n")
		for _, m := range ms {
			fmt.Fprintf(b, "| %s |", m.name)
			for _, k := range both {
				b.WriteString(" " + ratioCell(ratio(t.get(k, m.key), t4.get(k, m.key))) + " |")
			}
			b.WriteString("\n")
		}
	}

	if len(t.order) > 0 {
		b.WriteString("\n### Median, min and max per variant, IPv6\n\n| variant | metric | median | min | max | median/kernel (IPv6) | samples with a value (one a round; the kernel two) |\n|---|---|---:|---:|---:|---:|---:|\n")
		for _, k := range t.order {
			for _, m := range ms {
				s := t.get(k, m.key)
				if s.rounds == 0 {
					continue
				}
				mn, mx := "–", "–"
				if s.ok() {
					mn, mx = fmt.Sprintf(m.format, s.min), fmt.Sprintf(m.format, s.max)
				}
				rt := ratioCell(t.kernelRatio(k, m))
				fmt.Fprintf(b, "| %s | %s, %s | %s | %s | %s | %s | %d of %d |\n", label[k], m.name, m.unit, fmtSummary(m, s), mn, mx, rt, s.n, s.rounds)
			}
		}
	}

	b.WriteString("\nHow each pod reaches its host side over IPv6:\n\n")
	for _, r := range v.results {
		if r.note != "" {
			rr, fails, ufails := 0, 0, 0
			for _, s := range r.samples {
				rr += s.rrN
				fails += s.cpsErrors
				ufails += s.udpErrors
			}
			fmt.Fprintf(b, "- %s: %s; %d round trips timed, %d failed connects and %d unanswered UDP queries over the rounds.\n",
				r.v.label, r.note, rr, fails, ufails)
		}
	}

	var errs []string
	for _, k := range t.order {
		for _, m := range ms {
			for _, e := range t.get(k, m.key).errs {
				errs = append(errs, fmt.Sprintf("- %s over IPv6, %s: %s", label[k], m.name, e))
			}
		}
	}
	if len(errs) > 0 {
		b.WriteString("\n### Errors over IPv6\n\n" + strings.Join(errs, "\n") + "\n")
	}
}

// has4 says whether the run measured IPv4 (no -families: the tests'
// reports, IPv4).
func (o *options) has4() bool { return len(o.families) == 0 || slices.Contains(o.families, family4) }

// markdown6Only is the report of a run with -families 6: the run's
// header, then the IPv6 section alone (the memory and CNI latency runs
// are IPv4 figures, left out with IPv4).
func (rep *report) markdown6Only() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# cni-userstack benchmark, IPv6 only (-families 6)\n\n")
	fmt.Fprintf(&b, "Run %s UTC: Linux %s, %d CPUs (GOMAXPROCS %d), %s. %d interleaved rounds; each iperf3 run, the "+
		"request/response run and the connect run last %v.\n\n", rep.started.UTC().Format("2006-01-02 15:04"), uname(),
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), rep.opts.rounds, rep.opts.duration)
	b.WriteString("**Caveat:** a small shared machine (engineers run tests on it at the same time); absolute numbers are noisy, " +
		"ratios from the same run are the figure to read.\n\nIPv4 not run (-families 6): no IPv4 tables, memory or CNI latency.\n")
	rep.writeIPv6(&b)
	return b.String()
}

// writeFloor6 is the IPv6 twin of "Proxy mode against the floor": kernel,
// floors and proxy over IPv6 with floor/kernel and proxy/floor, on the
// metrics of "ahead" (nothing when proxy or every floor is missing).
func (rep *report) writeFloor6(b *strings.Builder, t *table, label map[string]string) {
	var floors []string
	for _, f := range floorVariants {
		if _, ok := t.by[f]; ok {
			floors = append(floors, f)
		}
	}
	if _, ok := t.by["proxy"]; !ok || len(floors) == 0 {
		return
	}
	b.WriteString("\n### Proxy mode against the floor, IPv6\n\n| metric | kernel |")
	for _, f := range floors {
		b.WriteString(" " + label[f] + " |")
	}
	b.WriteString(" proxy |")
	for _, f := range floors {
		fmt.Fprintf(b, " %s/kernel |", f)
	}
	for _, f := range floors {
		fmt.Fprintf(b, " proxy/%s |", f)
	}
	b.WriteString("\n|---|---:|" + strings.Repeat("---:|", 3*len(floors)+1) + "\n")
	cell := func(r float64, ok bool) string {
		if !ok {
			return " – |"
		}
		return fmt.Sprintf(" %.2f× |", r)
	}
	for i := range metrics {
		m := &metrics[i]
		if !m.ahead {
			continue
		}
		fmt.Fprintf(b, "| %s, %s | %s |", m.name, m.unit, fmtSummary(m, t.get(refVariant, m.key)))
		for _, f := range floors {
			b.WriteString(" " + fmtSummary(m, t.get(f, m.key)) + " |")
		}
		p := t.get("proxy", m.key)
		b.WriteString(" " + fmtSummary(m, p) + " |")
		for _, f := range floors {
			b.WriteString(cell(t.kernelRatio(f, m)))
		}
		for _, f := range floors {
			b.WriteString(cell(ratio(p, t.get(f, m.key))))
		}
		b.WriteString("\n")
	}
}
