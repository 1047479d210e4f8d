// Command bench is the side-by-side benchmark behind `make bench`: it
// attaches identical pod network namespaces with each variant — the kernel
// veth path of the reference ptp plugin (the physical reference every ratio
// is against), cni-userstack in route mode and in proxy mode (driven by
// libcni with a private daemon, as the e2e tests do), pasta and
// slirp4netns — and measures, for each, what a pod sees when it talks to a
// server on its host side: iperf3 throughput (1 and 4 streams, pod→host
// and host→pod), 1-byte request/response latency, connections per second,
// and CPU seconds per GB moved. It also measures CNI ADD/DEL latency of
// our plugin beside ptp. It prints one markdown report and writes it to
// -out.
//
// Not owned here: the plugins and the daemon (measured, not changed), the
// cnitest helpers it reuses (plugin builds, pod namespaces, libcni, the
// ADD/DEL latency run).
//
// Method, limits and cleanup:
//   - Traffic goes only to loopback and to addresses inside namespaces the
//     harness creates. The host side is the host netns for our variants
//     (the uplink's host address), pasta and slirp4netns (127.0.0.1, which
//     they map their gateway 10.0.2.2 to); for ptp it is a node netns of
//     the harness holding ptp's host-side veths (the e2e tests' pattern:
//     ptp would otherwise set ip_forward=1 and add routes in the real host
//     netns). The kernel path a packet takes is the same.
//   - host→pod throughput is `iperf3 -R` (the pod connects, the host side
//     sends), except in our proxy mode, where it runs through a port
//     mapping as a host-initiated connection would: iperf3 -s in the pod,
//     the client in the host netns at the mapped host port.
//   - CPU per GB: over all iperf3 runs of a variant, (CPU of the iperf3
//     client from its rusage + CPU of the iperf3 server and of the helper
//     process — our daemon, pasta, slirp4netns — from /proc/PID/stat
//     deltas) / GB received. Kernel work done in softirq context is charged
//     to whichever process was running, so the whole-system /proc/stat
//     busy delta is given beside it; on a shared machine it includes other
//     people's work.
//   - Every wait is bounded; every resource registers its undo on one
//     stack (cleanups) that runs at the end of each variant, on error, and
//     on SIGINT/SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
)

type options struct {
	duration    time.Duration
	variants    []string
	out         string
	rrCount     int
	cniLatency  bool
	cniPods     int
	cniParallel int
}

// harness holds what the variants share.
type harness struct {
	ctx     context.Context
	opts    options
	undo    *cleanups
	tb      *tb
	ours    *oursNode
	oursErr error
	binDirs map[string]bool
}

// noteBinDir remembers a plugin bin dir from cnitest (a temp dir it does
// not remove outside a test binary's Main) and removes it at exit.
func (h *harness) noteBinDir(d string) {
	if h.binDirs[d] {
		return
	}
	h.binDirs[d] = true
	h.undo.add("plugin bin dir", func() { os.RemoveAll(d) })
}

func main() {
	var o options
	var vs string
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each iperf3 run, of the latency run and of the connect-rate run")
	flag.StringVar(&vs, "variants", "ptp,route,proxy,pasta,slirp4netns", "comma list of variants to run: ptp,route,proxy,pasta,slirp4netns")
	flag.StringVar(&o.out, "out", "bench-report/bench.md", "markdown report to write")
	flag.IntVar(&o.rrCount, "rr-count", 1000000, "maximum request/response round trips (also bounded by -duration)")
	flag.BoolVar(&o.cniLatency, "cni-latency", true, "measure CNI ADD/DEL latency of our plugin beside ptp")
	flag.IntVar(&o.cniPods, "cni-pods", 100, "pods per ADD/DEL latency run")
	flag.IntVar(&o.cniParallel, "cni-parallel", 20, "pods at once in the parallel ADD/DEL latency run")
	flag.Parse()
	known := map[string]bool{}
	for _, v := range variants {
		known[v.key] = true
	}
	for _, v := range strings.Split(vs, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if !known[v] {
			fmt.Fprintf(os.Stderr, "bench: unknown variant %q (known: ptp,route,proxy,pasta,slirp4netns)\n", v)
			os.Exit(2)
		}
		o.variants = append(o.variants, v)
	}
	if o.duration < time.Second || o.cniPods < 1 || o.cniParallel < 1 || o.rrCount < 1 {
		fmt.Fprintln(os.Stderr, "bench: -duration must be ≥ 1s; -rr-count, -cni-pods and -cni-parallel ≥ 1")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (creates network namespaces, veths and a stack daemon); run `make bench` as root")
		os.Exit(1)
	}
	for _, c := range []string{"iperf3", "nsenter"} {
		if _, err := exec.LookPath(c); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s not found: `make bench` installs it\n", c)
			os.Exit(1)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	undo := &cleanups{}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "\nbench: %v: cleaning up\n", s)
		cancel()
		undo.close()
		os.Exit(130)
	}()

	code := run(ctx, o, undo)
	signal.Stop(sig)
	undo.close()
	os.Exit(code)
}

func run(ctx context.Context, o options, undo *cleanups) int {
	h := &harness{ctx: ctx, opts: o, undo: undo, tb: newTB("bench", undo, ctx), binDirs: map[string]bool{}}
	rep := &report{opts: o, started: time.Now()}
	needOurs := o.cniLatency
	for _, v := range o.variants {
		needOurs = needOurs || v == "route" || v == "proxy"
	}
	if needOurs {
		fmt.Fprintln(os.Stderr, "bench: building the plugins and starting a private daemon")
		h.oursErr = catch(func() error {
			var err error
			h.ours, err = h.startOurs()
			return err
		})
		if h.oursErr != nil {
			fmt.Fprintln(os.Stderr, "bench: our daemon:", h.oursErr)
		}
	}
	for _, v := range variants {
		if !contains(o.variants, v.key) || ctx.Err() != nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s\n", v.label)
		rep.rows = append(rep.rows, h.measure(v))
	}
	if o.cniLatency && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "bench: CNI ADD/DEL latency, %d pods, 1 and %d at once\n", o.cniPods, o.cniParallel)
		rep.cni, rep.cniErr = h.cniLatency()
	}
	if ctx.Err() != nil {
		return 130
	}
	md := rep.markdown()
	fmt.Print(md)
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "bench: report written to %s\n", o.out)
	if rep.broken() {
		return 1
	}
	return 0
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// freePort is a TCP port free on addr inside the host side (a listen on
// port 0, closed again: iperf3 takes it right after).
func freePort(h *harness, a *attached) (int, error) {
	var port int
	err := do(a.hostNS, func() error {
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a.listen, 0)))
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	return port, err
}

// measure attaches a pod with v and runs every figure; each figure's
// failure is recorded in the row and the next one still runs. Everything
// the variant made is undone before it returns.
func (h *harness) measure(v variant) *row {
	r := &row{label: v.label}
	m := h.undo.mark()
	defer h.undo.runTo(m)
	var a *attached
	err := catch(func() error {
		var err error
		a, err = v.attach(h)
		return err
	})
	if err != nil {
		var na *notAvailable
		if errors.As(err, &na) {
			r.na = "n/a (" + na.reason + ")"
		} else {
			r.na = "setup failed: " + firstLine(err.Error())
			r.errs = append(r.errs, err.Error())
		}
		return r
	}
	r.note = a.note
	dur := h.opts.duration

	port, err := freePort(h, a)
	var ip3 *iperfServer
	if err == nil {
		ip3, err = startIperfServer(h.ctx, h.undo, a.hostNS, a.listen, port)
	}
	// Host→pod through a port mapping: iperf3 -s in the pod, the client
	// in the host netns at the mapped host port.
	var podIp3 *iperfServer
	var podErr error
	if a.mapped != nil {
		podIp3, podErr = startIperfServer(h.ctx, h.undo, a.pod, a.mapped.podAddr, a.mapped.podPort)
	}
	for i, c := range throughputCases {
		if h.ctx.Err() != nil {
			return r
		}
		if err != nil {
			r.tput[i].err = err
			continue
		}
		var res iperfResult
		var rerr error
		if c.reverse && a.mapped != nil {
			if podErr != nil {
				r.tput[i].err = podErr
				continue
			}
			res, rerr = runIperf(h.ctx, nil, a.mapped.host.Addr(), int(a.mapped.host.Port()), dur, c.streams, false,
				append([]int{podIp3.cmd.Process.Pid}, a.pids...))
		} else {
			res, rerr = runIperf(h.ctx, a.pod, a.dial, port, dur, c.streams, c.reverse, append([]int{ip3.cmd.Process.Pid}, a.pids...))
		}
		r.tput[i] = measured{v: res.Gbps, err: rerr}
		if rerr == nil {
			r.bytes += res.Bytes
			r.procCPU += res.ProcCPU
			r.sysCPU += res.SysCPU
		}
		fmt.Fprintf(os.Stderr, "bench:   %s: %s\n", c.name, r.tput[i].fmt("%.2f Gbit/s"))
	}

	srv, err := startServer(a.hostNS, a.listen)
	if err != nil {
		r.rrP50.err, r.rrP99.err, r.cps.err = err, err, err
		return r
	}
	h.undo.add("rr server", srv.close)
	dst := netip.AddrPortFrom(a.dial, uint16(srv.port()))
	rr, err := requestResponse(h.ctx, a.pod, dst, h.opts.rrCount, dur)
	r.rrN = rr.N
	r.rrP50 = measured{v: float64(rr.P50) / 1e3, err: err}
	r.rrP99 = measured{v: float64(rr.P99) / 1e3, err: err}
	fmt.Fprintf(os.Stderr, "bench:   request/response: n=%d p50 %s p99 %s\n", rr.N, r.rrP50.fmt("%.1f µs"), r.rrP99.fmt("%.1f µs"))
	cps, err := connectRate(h.ctx, a.pod, dst, dur)
	r.cps = measured{v: cps.PerSec, err: err}
	r.cpsErrors = cps.Errors
	fmt.Fprintf(os.Stderr, "bench:   connections: %s (%d failed)\n", r.cps.fmt("%.0f /s"), cps.Errors)
	return r
}

// cniLatency is the ADD/DEL latency of our plugin and of ptp, one pod
// after another and opts.cniParallel at once, with cnitest.AddDelLatency
// (the same code as the e2e test TestCNIAddDelLatency).
func (h *harness) cniLatency() ([]cniRow, error) {
	if h.oursErr != nil {
		return nil, fmt.Errorf("our daemon: %w", h.oursErr)
	}
	var rows []cniRow
	err := catch(func() error {
		m := h.undo.mark()
		defer h.undo.runTo(m)
		node, ptpCNI, ptpList := h.ptpNode()
		ours := h.ours.confList(h, "route")
		for _, par := range []int{1, h.opts.cniParallel} {
			for _, p := range []struct {
				name string
				run  func() (cnitest.Latencies, cnitest.Latencies, error)
			}{
				{"cni-userstack route", func() (cnitest.Latencies, cnitest.Latencies, error) {
					return cnitest.AddDelLatency(h.tb, h.ours.cni, ours, nil, h.opts.cniPods, par)
				}},
				{"kernel (ptp)", func() (cnitest.Latencies, cnitest.Latencies, error) {
					return cnitest.AddDelLatency(h.tb, ptpCNI, ptpList, node, h.opts.cniPods, par)
				}},
			} {
				if h.ctx.Err() != nil {
					return h.ctx.Err()
				}
				mm := h.undo.mark()
				add, del, err := p.run()
				h.undo.runTo(mm) // the run's pod namespaces
				if err != nil {
					return fmt.Errorf("%s, %d at once: %w", p.name, par, err)
				}
				fmt.Fprintf(os.Stderr, "bench:   %s, %d at once: ADD %v, DEL %v\n", p.name, par, add, del)
				rows = append(rows, cniRow{plugin: p.name, pods: h.opts.cniPods, parallel: par, add: add, del: del})
			}
		}
		return nil
	})
	return rows, err
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
