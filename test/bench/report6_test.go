package main

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
)

func TestParseFamilies(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" = an error
	}{
		{"4,6", "[4 6]"},
		{"6, 4", "[4 6]"}, // ascending whatever the order given
		{"6", "[6]"},
		{"4,", "[4]"},
		{"4,4", ""},
		{"5", ""},
		{"ipv6", ""},
		{"", ""},
		{" , ", ""},
	} {
		got, err := parseFamilies(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("parseFamilies(%q) = %v, want an error", tc.in, got)
		case tc.want != "" && (err != nil || fmtInts(got) != tc.want):
			t.Errorf("parseFamilies(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	if !(&options{}).has4() || !(&options{families: []int{4, 6}}).has4() || (&options{families: []int{6}}).has4() {
		t.Error("has4: no -families is IPv4, 4,6 has it, 6 alone has not")
	}
}

func fmtInts(v []int) string {
	var s []string
	for _, x := range v {
		s = append(s, string(rune('0'+x)))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestRandULA64(t *testing.T) {
	a, b := randULA64(), randULA64()
	ula := netip.MustParsePrefix("fd00::/8")
	if a.Bits() != 64 || !ula.Contains(a.Addr()) || a.Masked() != a || a == b {
		t.Fatalf("randULA64 = %v, %v: want two different fd00::/8 /64s with zero host bits", a, b)
	}
}

func TestResults6AndTheRunOrderOverBothFamilies(t *testing.T) {
	keys := []string{"ptp", "floor", "route", "proxy", "gvisor", "pasta"}
	r6, left := results6(keys)
	var got []string
	for _, r := range r6 {
		if r.family != family6 {
			t.Errorf("%s: family %d, want 6", r.v.key, r.family)
		}
		got = append(got, r.v.key)
	}
	if strings.Join(got, ",") != "ptp,floor,route,proxy,pasta" {
		t.Fatalf("results6 = %v, want ptp,floor,route,proxy,pasta", got)
	}
	if len(left) != 1 || !strings.HasPrefix(left[0], "gVisor relay: ") {
		t.Fatalf("left out = %q, want gvisor with its reason", left)
	}
	for _, v := range variants {
		_, has6 := noIPv6[v.key]
		for _, x := range variants6 {
			if x.key == v.key {
				if has6 {
					t.Errorf("%s has an IPv6 variant and a reason not to", v.key)
				}
				has6 = true
			}
		}
		if !has6 {
			t.Errorf("variant %s has neither an IPv6 twin nor a reason in noIPv6", v.key)
		}
	}

	r4 := results(map[string][]*sample{"ptp": nil, "route": nil, "proxy": nil})
	var order []string
	for _, r := range runOrder(r4, r6, 1) {
		order = append(order, r.name())
	}
	want := "kernel (ptp),ours, route,ours, proxy,kernel (ptp)," +
		"kernel (ptp), IPv6,floor (ptp + Go relay), IPv6,ours, route, IPv6,ours, proxy, IPv6,pasta, MTU 1500, IPv6,kernel (ptp), IPv6"
	if strings.Join(order, ",") != want {
		t.Fatalf("runOrder = %q,\nwant each family's kernel at both ends of its variants: %q", strings.Join(order, ","), want)
	}
	if o := runOrder(nil, r6, 2); len(o) != 6 || o[0].family != family6 {
		t.Fatalf("runOrder of IPv6 alone has %d entries", len(o))
	}
}

func TestDualAddrs(t *testing.T) {
	ipc := func(cidr, gw string) *current.IPConfig {
		ip, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		return &current.IPConfig{Address: *n, Gateway: net.ParseIP(gw)}
	}
	res := &current.Result{IPs: []*current.IPConfig{ipc("10.1.2.3/24", "10.1.2.1"), ipc("fd00:1::5/64", "fd00:1::1")}}
	ip6, gw6, err := dualAddrs(res)
	if err != nil || ip6 != netip.MustParseAddr("fd00:1::5") || gw6 != netip.MustParseAddr("fd00:1::1") {
		t.Fatalf("dualAddrs = %v %v %v", ip6, gw6, err)
	}
	for name, ips := range map[string][]*current.IPConfig{
		"IPv4 only":      {ipc("10.1.2.3/24", "10.1.2.1")},
		"IPv6 only":      {ipc("fd00:1::5/64", "fd00:1::1")},
		"two IPv6":       {ipc("10.1.2.3/24", ""), ipc("fd00:1::5/64", ""), ipc("fd00:2::5/64", "")},
		"two IPv4":       {ipc("10.1.2.3/24", ""), ipc("10.1.3.3/24", ""), ipc("fd00:1::5/64", "")},
		"no address":     nil,
		"mapped is IPv4": {ipc("::ffff:10.1.2.3/120", ""), ipc("10.1.3.3/24", "")},
	} {
		if _, _, err := dualAddrs(&current.Result{IPs: ips}); err == nil {
			t.Errorf("dualAddrs(%s): no error", name)
		}
	}
}

// results6Of builds IPv6 results from per-variant sample lists.
func results6Of(by map[string][]*sample) []*variantResult {
	var out []*variantResult
	for _, v := range variants6 {
		if ss, ok := by[v.key]; ok {
			out = append(out, &variantResult{v: v, family: family6, samples: ss})
		}
	}
	return out
}

func TestReportHasAnIPv6SectionWithRatiosToTheKernelOverIPv6(t *testing.T) {
	k4 := []*sample{sampleWith(20, 10, 20, 1000, 0, 1e9)}
	p4 := []*sample{sampleWith(10, 30, 40, 500, time.Second, 1e9)}
	// Over IPv6 the kernel does 16, proxy 12 and 4 (median 8), route fails
	// its throughput in one round of two.
	k6 := []*sample{sampleWith(16, 12, 24, 800, 0, 1e9), sampleWith(16, 12, 24, 800, 0, 1e9)}
	p6 := []*sample{sampleWith(12, 36, 48, 400, time.Second, 1e9), sampleWith(4, 36, 48, 400, time.Second, 1e9)}
	p6[0].pm1 = measured{v: 2}
	r6 := []*sample{sampleWith(12, 24, 36, 600, time.Second, 1e9), sampleWith(12, 24, 36, 600, time.Second, 1e9)}
	r6[1].tput[casePH1] = measured{err: errors.New("iperf3 -c fd00::10: connection refused")}
	// The Go floor over IPv6 beats the kernel by 1.25× (a load artefact).
	f6 := []*sample{sampleWith(20, 16, 30, 600, 0, 1e9)}
	rep := &report{opts: options{duration: time.Second, rounds: 2, families: []int{4, 6}}, started: time.Now(),
		results: results(map[string][]*sample{"ptp": k4, "proxy": p4}),
		v6: ipv6Report{on: true, host: "fd00:1:2:3::10", results: results6Of(map[string][]*sample{"ptp": k6, "route": r6, "proxy": p6, "floor": f6}),
			left: []string{"gVisor relay: IPv4 only"}}}
	md := rep.markdown()
	i6 := strings.Index(md, "## IPv6: the TCP tests over IPv6")
	if i6 < 0 {
		t.Fatalf("report has no IPv6 section:\n%s", md)
	}
	v4, v6 := md[:i6], md[i6:]
	// The IPv4 table stays as it was: ratios to the IPv4 kernel.
	if !strings.Contains(v4, "| 1 stream pod→host, Gbit/s | 20.00 | 10.00 (0.50×) |") {
		t.Errorf("IPv4 table changed:\n%s", v4)
	}
	wantIn(t, "IPv6 section", v6,
		"| metric (IPv6) | kernel (ptp) | floor (ptp + Go relay) | ours, route | **ours, proxy** |",
		"| 1 stream pod→host, Gbit/s | 16.00 | 20.00 (1.25×) | 12.00 (0.75×) | 8.00 (0.50×) |",
		"| 1-byte RR p50, µs | 12.0 | 16.0 (1.33×) | 24.0 (2.00×) | 36.0 (3.00×) |",
		"| connections/s (connect, 1 B each way, close), /s | 800 | 600 (0.75×) | 600 (0.75×) | 400 (0.50×) |",
		"| datapath CPU s/GB, 1 stream, s/GB | 0.00 | 0.00 | 1.00 | 1.00 |", // no ratio: the kernel has no helper
		"| 1 stream host→pod through a port mapping (proxy only), Gbit/s | – | – | – | 2.00 |",
		"**Warning:** over IPv6 a floor",
		"### Proxy mode against the floor, IPv6",
		"| metric | kernel | floor (ptp + Go relay) | proxy | floor/kernel | proxy/floor |",
		"| 1 stream pod→host, Gbit/s | 16.00 | 20.00 | 8.00 | 1.25× | 0.40× |",
		"fd00:1:2:3::10",
		"- gVisor relay: IPv4 only",
		// Each variant against itself over IPv4: the kernel 16/20, proxy 8/10.
		"| metric | kernel (ptp) | ours, proxy |",
		"| 1 stream pod→host | 0.80× | 0.80× |",
		"| 1-byte RR p50 | 1.20× | 1.20× |",
		"| ours, proxy | 1 stream pod→host, Gbit/s | 8.00 | 4.00 | 12.00 | 0.50× | 2 of 2 |",
		"| ours, route | 1 stream pod→host, Gbit/s | 12.00 | 12.00 | 12.00 | 0.75× | 1 of 2 |",
		"- ours, route over IPv6, 1 stream pod→host: iperf3 -c fd00::10: connection refused",
	)
	if rep.broken() {
		t.Fatal("a report with good kernels in both families is broken")
	}
	for _, s := range k6 {
		s.tput[casePH1].err = errors.New("iperf3 failed")
	}
	if !rep.broken() {
		t.Fatal("a report whose kernel over IPv6 has no 1-stream figure is not broken")
	}
	// -throughput=false: no 1-stream figure, and nothing broken.
	for _, s := range k6 {
		s.tput[casePH1].err = errNotRun
	}
	if rep.broken() {
		t.Fatal("a report of a run without throughput is broken by its IPv6 kernel")
	}

	// The host netns got no IPv6: the section says so, and the run is not
	// broken by it (the IPv4 figures stand).
	rep.v6 = ipv6Report{on: true, err: errors.New("permission denied")}
	md = rep.markdown()
	if !strings.Contains(md, "Not run: the host netns got no IPv6 primary address: permission denied") || rep.broken() {
		t.Fatalf("IPv6 setup failure: broken=%v\n%s", rep.broken(), md)
	}
	// -families 4: no section at all.
	rep.v6 = ipv6Report{}
	if md := rep.markdown(); strings.Contains(md, "IPv6") {
		t.Fatalf("-families 4 report mentions IPv6:\n%s", md)
	}
	// -families 6: the IPv6 section alone.
	rep.opts.families = []int{6}
	rep.results = nil
	rep.v6 = ipv6Report{on: true, host: "fd00::10", results: results6Of(map[string][]*sample{"ptp": k4, "proxy": p4})}
	md = rep.markdown()
	if !strings.Contains(md, "IPv4 not run (-families 6)") || !strings.Contains(md, "| 1 stream pod→host, Gbit/s | 20.00 | 10.00 (0.50×) |") ||
		strings.Contains(md, "Targets of issue 11") || strings.Contains(md, "IPv6 against IPv4") {
		t.Fatalf("-families 6 report:\n%s", md)
	}
}
