package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// The memory benchmark: memory per idle relayed connection (issue 11's
// target: ≤ 8 KiB in proxy mode). See the package doc for the method.

// memVariantKeys are the variants the memory benchmark knows.
var memVariantKeys = []string{"proxy", "gvisor", "floor", "floor-epoll"}

const (
	// memTargetKiB is issue 11's target for proxy mode.
	memTargetKiB = 8
	// maxMemConns bounds -mem-conns: the pod's ephemeral ports
	// (1024-65000) are spread over memPorts server ports.
	maxMemConns = 50000
	// memPorts is how many server ports the connections are spread over.
	memPorts = 4
	// memDialers is how many goroutines dial at once (each on a thread
	// of its own in the pod netns).
	memDialers = 32
	// memSettle is how long the connections are left idle before the
	// helper's memory is read (and how long the helper idles before the
	// "before" reading).
	memSettle = 3 * time.Second
	// memDialTimeout bounds one connect and its 1-byte exchange.
	memDialTimeout = 10 * time.Second
	// maxMemErrors stops the dialling: a helper that fails this often is
	// broken, not slow.
	maxMemErrors = 100
)

// memResult is one variant's memory per idle connection.
type memResult struct {
	variant, label      string
	target, conns       int    // connections asked for, established and held
	flows               int    // relayed flows the helper reports while they are held (-1: unknown)
	rssBefore, rssAfter uint64 // the helper's VmRSS, bytes
	goBefore, goAfter   *goMem // the helper's Go memory (relays: after a forced GC)
	goHow               string // where the Go memory comes from
	dialErrors          int
	err                 error
}

// perConn is (after-before)/conns in KiB (0 when nothing was held or the
// figure shrank).
func perConn(before, after uint64, conns int) float64 {
	if conns <= 0 || after <= before {
		return 0
	}
	return float64(after-before) / float64(conns) / 1024
}

// procRSS is VmRSS of pid from /proc/PID/status, in bytes.
func procRSS(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseVmRSS(f)
}

// parseVmRSS reads the "VmRSS:   1234 kB" line of a /proc/PID/status.
func parseVmRSS(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS: %w", err)
			}
			return n * 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line")
}

// idleMemory runs the memory benchmark for one variant. Everything it made
// is undone before it returns.
func (h *harness) idleMemory(key string) memResult {
	r := memResult{variant: key, target: h.opts.memConns, flows: -1, goHow: "after a forced GC, on SIGUSR1"}
	for _, v := range variants {
		if v.key == key {
			r.label = v.label
		}
	}
	m := h.undo.mark()
	defer h.undo.runTo(m)
	r.err = catch(func() error { return h.idleMemoryRun(key, &r) })
	return r
}

func (h *harness) idleMemoryRun(key string, r *memResult) (err error) {
	n := memConnsFor(key, h.opts.memConns, nofile())
	if n < 1 {
		return fmt.Errorf("the open-file limit %d leaves no room for connections", nofile())
	}
	r.target = n
	var a *attached
	var flows func() (int, error)
	switch key {
	case "proxy":
		// A daemon of its own: its RSS starts clean, and its flow limit
		// is above the count.
		var o *oursNode
		o, err = h.startOurs(1, "--proxy-max-flows-per-pod", strconv.Itoa(n+1000))
		if err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
		if a, err = h.attachOurs(o, "proxy"); err != nil {
			return err
		}
		flows = func() (int, error) {
			st, err := o.client().Status(h.ctx)
			if err != nil {
				return 0, err
			}
			if st.Proxy == nil {
				return 0, errors.New("the daemon's status has no proxy counters")
			}
			return st.Proxy.ActiveTCP, nil
		}
		a.mem = func() (goMem, error) { return h.daemonGoMem(o) }
		r.goHow = "the daemon's /metrics, no forced GC"
	case "gvisor":
		a, err = h.attachGVisor()
	case "floor":
		a, err = h.attachFloor("goroutines")
	case "floor-epoll":
		a, err = h.attachFloor("epoll")
	default:
		return fmt.Errorf("no memory benchmark for %q", key)
	}
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && a.logs != nil { // read late: the floor relay sets it in relayFor
			if l := a.logs(); l != "" {
				err = fmt.Errorf("%w; the helper's stderr: %s", err, l)
			}
		}
	}()
	if h.tools.holdErr != nil {
		return fmt.Errorf("building the hold server: %w", h.tools.holdErr)
	}
	hs, ready, err := h.startLineProc("holdserver", h.tools.hold, "-addr", a.listen.String(),
		"-ports", strconv.Itoa(memPorts), "-max", strconv.Itoa(n))
	if err != nil {
		return err
	}
	ports, err := parseReadyPorts(ready)
	if err != nil {
		return fmt.Errorf("holdserver: %w", err)
	}
	if a.relayFor != nil {
		if err := a.relayFor(ports); err != nil {
			return err
		}
	}
	if len(a.pids) == 0 {
		return errors.New("the variant has no helper process to measure")
	}
	pid := a.pids[0]
	if flows == nil && a.mem != nil { // a relay's memstats line counts its flows
		flows = func() (int, error) {
			g, err := a.mem()
			return g.flows, err
		}
	}
	sleepCtx(h.ctx, memSettle)
	if a.mem != nil {
		g, err := a.mem()
		if err != nil {
			return fmt.Errorf("Go memory before: %w", err)
		}
		r.goBefore = &g
	}
	if r.rssBefore, err = procRSS(pid); err != nil {
		return fmt.Errorf("RSS before: %w", err)
	}
	hc, err := holdConns(h.ctx, a.pod, a.dial, ports, n, h.opts.memExchange)
	h.undo.add("held connections", hc.close)
	r.conns, r.dialErrors = len(hc.conns), hc.errors
	if err != nil {
		return err
	}
	sleepCtx(h.ctx, memSettle)
	if r.rssAfter, err = procRSS(pid); err != nil {
		return fmt.Errorf("RSS after: %w", err)
	}
	if a.mem != nil {
		g, err := a.mem()
		if err != nil {
			return fmt.Errorf("Go memory after: %w", err)
		}
		r.goAfter = &g
	}
	if flows != nil {
		if f, err := flows(); err == nil {
			r.flows = f
		}
	}
	if r.flows >= 0 && r.flows < r.conns {
		return fmt.Errorf("the helper relays %d flows for %d connections held", r.flows, r.conns)
	}
	if held, err := heldBy(hs); err != nil || held < r.conns {
		return fmt.Errorf("the hold server holds %d connections for %d (%v)", held, r.conns, err)
	}
	fmt.Fprintf(os.Stderr, "bench:   %d connections (%d failed dials): RSS %.1f → %.1f MiB, %.2f KiB per connection\n",
		r.conns, r.dialErrors, float64(r.rssBefore)/(1<<20), float64(r.rssAfter)/(1<<20), perConn(r.rssBefore, r.rssAfter, r.conns))
	return nil
}

// daemonGoMem reads the daemon's Go heap and stack in use from its
// /metrics (the Prometheus Go collector: no forced GC, so the heap holds
// garbage not yet collected), served on the host netns's loopback.
func (h *harness) daemonGoMem(o *oursNode) (goMem, error) {
	st, err := o.client().Status(h.ctx)
	if err != nil {
		return goMem{}, err
	}
	if st.Metrics == nil || st.Metrics.Listening == "" {
		return goMem{}, errors.New("the daemon serves no /metrics")
	}
	body, err := httpGetIn(h.host.ns, st.Metrics.Listening, "/metrics")
	if err != nil {
		return goMem{}, err
	}
	heap, err1 := promValue(body, "go_memstats_heap_inuse_bytes")
	stack, err2 := promValue(body, "go_memstats_stack_inuse_bytes")
	if err := errors.Join(err1, err2); err != nil {
		return goMem{}, err
	}
	return goMem{heapInuse: uint64(heap), stackInuse: uint64(stack), flows: -1}, nil
}

// httpGetIn fetches http://addr/path with a connection made inside n (an
// HTTP/1.0 GET by hand: net/http dials on goroutines of its own, which
// may run in another netns), bounded by 10 s, and returns the body of a
// 200 answer.
func httpGetIn(n ns.NetNS, addr, path string) (string, error) {
	var c net.Conn
	err := do(n, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		return "", err
	}
	const maxBody = 8 << 20 // a /metrics page is well under this
	b, err := io.ReadAll(io.LimitReader(c, maxBody))
	if err != nil {
		return "", err
	}
	head, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok {
		return "", fmt.Errorf("GET %s: no end of headers", path)
	}
	if status, _, _ := strings.Cut(head, "\r\n"); !strings.Contains(status, " 200 ") {
		return "", fmt.Errorf("GET %s: %s", path, status)
	}
	return body, nil
}

// promValue is the value of an unlabelled sample name in a Prometheus
// text exposition ("name value" lines; comments skipped).
func promValue(body, name string) (float64, error) {
	for _, l := range strings.Split(body, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("/metrics has no %s", name)
}

// nofileReserve is the open-file headroom left for everything but the
// held connections in each process.
const nofileReserve = 512

// memConnsFor is how many connections the benchmark holds for variant
// key: want, or fewer where the open-file limit (limit, every process
// alike: they inherit it) cannot hold them. The harness and the hold
// server hold one fd per connection, our daemon and the gVisor relay one
// host socket; the floor relays six: two sockets and a pipe per direction
// (the Go relay: the pipe Go's splice keeps while it waits for data).
func memConnsFor(key string, want int, limit uint64) int {
	per := uint64(1)
	if strings.HasPrefix(key, "floor") {
		per = 6
	}
	if limit <= nofileReserve {
		return 0
	}
	return int(min(uint64(want), (limit-nofileReserve)/per))
}

// parseReadyPorts reads the hold server's "ready ports=p1,p2,…".
func parseReadyPorts(l string) ([]int, error) {
	f := strings.Fields(l)
	if len(f) != 2 || f[0] != "ready" || !strings.HasPrefix(f[1], "ports=") {
		return nil, fmt.Errorf("ready line %q", l)
	}
	var out []int
	for _, p := range strings.Split(strings.TrimPrefix(f[1], "ports="), ",") {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("ready line %q: port %q", l, p)
		}
		out = append(out, n)
	}
	return out, nil
}

// heldBy asks the hold server how many connections it holds.
func heldBy(p *lineProc) (int, error) {
	for len(p.lines) > 0 {
		<-p.lines
	}
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return 0, err
	}
	l, err := p.next("held", 10*time.Second)
	if err != nil {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscanf(l, "held conns=%d", &n); err != nil {
		return 0, fmt.Errorf("%q: %w", l, err)
	}
	return n, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// heldConns are the pod's ends of the idle connections.
type heldConns struct {
	mu     sync.Mutex
	conns  []net.Conn
	errors int
}

func (hc *heldConns) close() {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	for _, c := range hc.conns {
		c.Close()
	}
	hc.conns = nil
}

// holdConns opens n connections from pod (nil: here) to dst on ports (round robin),
// memDialers at a time, each on a thread in the pod netns; each sends one
// byte and reads the answer (when exchange), then stays open. It stops at maxMemErrors
// failures. The pod gets a wide ephemeral port range (its own sysctl).
func holdConns(ctx context.Context, pod ns.NetNS, dst netip.Addr, ports []int, n int, exchange bool) (*heldConns, error) {
	hc := &heldConns{}
	if pod != nil {
		if err := do(pod, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("1024 65000"), 0o644)
		}); err != nil {
			return hc, fmt.Errorf("pod port range: %w", err)
		}
	}
	var next, failed int
	var mu sync.Mutex
	var lastErr error
	take := func() (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		if next >= n || failed >= maxMemErrors || ctx.Err() != nil {
			return 0, false
		}
		next++
		return next - 1, true
	}
	var wg sync.WaitGroup
	for w := 0; w < memDialers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			do(pod, func() error {
				for {
					i, ok := take()
					if !ok {
						return nil
					}
					c, err := dialOne(ctx, netip.AddrPortFrom(dst, uint16(ports[i%len(ports)])), exchange)
					if err != nil {
						mu.Lock()
						failed++
						lastErr = err
						mu.Unlock()
						continue
					}
					hc.mu.Lock()
					hc.conns = append(hc.conns, c)
					hc.mu.Unlock()
				}
			})
		}()
	}
	wg.Wait()
	hc.errors = failed
	if len(hc.conns) < n {
		return hc, fmt.Errorf("%d of %d connections held, %d failed; last: %v", len(hc.conns), n, failed, lastErr)
	}
	return hc, nil
}

// dialOne connects, exchanges one byte each way (when exchange) and
// leaves the connection open with no deadline.
func dialOne(ctx context.Context, dst netip.AddrPort, exchange bool) (net.Conn, error) {
	d := net.Dialer{Timeout: memDialTimeout}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil || !exchange {
		return c, err
	}
	c.SetDeadline(time.Now().Add(memDialTimeout))
	var b [1]byte
	if _, err := c.Write(b[:]); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
