package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat and /proc/stat times:
// 100 on every Linux architecture Go supports.
const clockTick = 100

// do runs fn in n, or directly when n is nil (the harness's own netns).
func do(n ns.NetNS, fn func() error) error {
	if n == nil {
		return fn()
	}
	return n.Do(func(ns.NetNS) error { return fn() })
}

// nsCommand is name args run inside n (nil = host netns) through nsenter,
// which execs the command itself, so the child's rusage is the command's.
func nsCommand(ctx context.Context, n ns.NetNS, name string, args ...string) *exec.Cmd {
	if n == nil {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
}

// procCPU is the user+system CPU time of a running process from
// /proc/PID/stat (fields 14 and 15, in clock ticks).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// comm (field 2) may hold spaces and parentheses: fields restart after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after comm", pid, len(f))
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64) // field 14 utime
	k, err2 := strconv.ParseUint(f[12], 10, 64) // field 15 stime
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(u+k) * time.Second / clockTick, nil
}

// systemCPU is the busy time of all CPUs from /proc/stat's "cpu" line:
// user+nice+system+irq+softirq+steal (idle and iowait left out).
func systemCPU() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 9 || fs[0] != "cpu" {
			continue
		}
		var busy uint64
		for i, v := range fs[1:9] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat: %w", err)
			}
			busy += n
		}
		return time.Duration(busy) * time.Second / clockTick, nil
	}
	return 0, errors.New("/proc/stat: no cpu line")
}

// ksoftirqdPIDs are the kernel's softirq threads (comm "ksoftirqd/N"):
// softirq work the kernel defers to them instead of running it on the way
// out of an interrupt or a local_bh_enable of whichever task was running.
func ksoftirqdPIDs() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.HasPrefix(string(b), "ksoftirqd/") {
			out = append(out, pid)
		}
	}
	return out
}

// cpuUse is the CPU time spent during one measurement, by whom.
type cpuUse struct {
	helpers  time.Duration // the variant's helper processes (our daemon, a relay, pasta, slirp4netns)
	softirqd time.Duration // the ksoftirqd threads
	system   time.Duration // every CPU's busy time (/proc/stat)
}

// cpuMeter samples the CPU time of long-lived processes and of the whole
// system around one measurement. A process that is gone at either end
// counts 0 for the interval (its absence shows up as an error elsewhere).
type cpuMeter struct {
	helpers, softirqd []int
	start             cpuUse
}

func sumCPU(pids []int) time.Duration {
	var t time.Duration
	for _, p := range pids {
		c, _ := procCPU(p)
		t += c
	}
	return t
}

func startCPU(helpers, softirqd []int) *cpuMeter {
	m := &cpuMeter{helpers: helpers, softirqd: softirqd}
	m.start = m.now()
	return m
}

func (m *cpuMeter) now() cpuUse {
	s, _ := systemCPU()
	return cpuUse{helpers: sumCPU(m.helpers), softirqd: sumCPU(m.softirqd), system: s}
}

// stop is the use since start.
func (m *cpuMeter) stop() cpuUse {
	e := m.now()
	return cpuUse{helpers: e.helpers - m.start.helpers, softirqd: e.softirqd - m.start.softirqd,
		system: e.system - m.start.system}
}

// iperfResult is one iperf3 run.
type iperfResult struct {
	Bytes float64 // received
	Gbps  float64 // received, bits per second / 1e9
	CPU   cpuUse
}

// iperfJSON is the part of `iperf3 -J` the harness reads.
type iperfJSON struct {
	End struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// parseIperf reads the report of `iperf3 -J`: bytes and bits/s received,
// or the error iperf3 reported in it.
func parseIperf(out []byte) (bytes, bps float64, err error) {
	var j iperfJSON
	if err := json.Unmarshal(out, &j); err != nil {
		return 0, 0, fmt.Errorf("output is not iperf3 JSON: %w: %s", err, tail(string(out), 300))
	}
	if j.Error != "" {
		return 0, 0, errors.New(j.Error)
	}
	if j.End.SumReceived.Bytes <= 0 || j.End.SumReceived.BitsPerSecond <= 0 {
		return 0, 0, fmt.Errorf("iperf3 received nothing (%v bytes)", j.End.SumReceived.Bytes)
	}
	return j.End.SumReceived.Bytes, j.End.SumReceived.BitsPerSecond, nil
}

// iperfServer is `iperf3 -s` on addr:port inside n (nil = host netns).
type iperfServer struct {
	cmd  *exec.Cmd
	port int
	done chan error
	log  *lockedBuilder
}

type lockedBuilder struct {
	mu sync.Mutex
	strings.Builder
}

func (b *lockedBuilder) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Builder.Write(p)
}

// startIperfServer starts the server and registers its kill.
func startIperfServer(ctx context.Context, undo *cleanups, n ns.NetNS, addr netip.Addr, port int) (*iperfServer, error) {
	lb := &lockedBuilder{}
	cmd := nsCommand(ctx, n, "iperf3", "-s", "-B", addr.String(), "-p", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = io.Discard, lb
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("iperf3 -s: %w", err)
	}
	s := &iperfServer{cmd: cmd, port: port, done: make(chan error, 1), log: lb}
	go func() { s.done <- cmd.Wait() }()
	undo.add("iperf3 server", func() {
		cmd.Process.Kill()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
		}
	})
	// A client that reaches the server through a port mapping connects
	// to the daemon's host listener, which accepts before it dials the
	// pod (as every userspace proxy does): started before the server
	// listens, it would be reset after its connect, not refused, and
	// runIperf retries only a refused connect. So wait for the listener.
	if err := waitListening(ctx, n, addr, port, 5*time.Second, s.done); err != nil {
		return nil, fmt.Errorf("iperf3 -s: %w (%s)", err, strings.TrimSpace(lb.String()))
	}
	return s, nil
}

// waitListening polls `ss` inside n until a TCP socket listens on
// addr:port, for at most bound, or until exited says the server quit.
func waitListening(ctx context.Context, n ns.NetNS, addr netip.Addr, port int, bound time.Duration, exited <-chan error) error {
	want := netip.AddrPortFrom(addr, uint16(port)).String()
	deadline := time.Now().Add(bound)
	for {
		out, err := nsCommand(ctx, n, "ss", "-Hltn", "sport", "=", ":"+strconv.Itoa(port)).Output()
		if err == nil && strings.Contains(string(out), want) {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited before listening: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s within %v (ss: %q, %v)", want, bound, out, err)
		}
	}
}

// runIperf runs one iperf3 client inside n (nil = the harness's netns)
// against addr:port, retrying as retryIperf says, each try bounded by
// duration + 30 s. CPU: cpu samples the helpers,
// ksoftirqd and the whole system from /proc around the run.
func runIperf(ctx context.Context, n ns.NetNS, addr netip.Addr, port int, dur time.Duration, streams int, reverse bool, cpu func() *cpuMeter) (iperfResult, error) {
	args := []string{"-c", addr.String(), "-p", strconv.Itoa(port), "-t", strconv.Itoa(max(1, int(dur.Seconds()))),
		"-P", strconv.Itoa(streams), "-J", "--connect-timeout", "3000"}
	if reverse {
		args = append(args, "-R")
	}
	start := time.Now()
	for {
		cctx, cancel := context.WithTimeout(ctx, dur+30*time.Second)
		cmd := nsCommand(cctx, n, "iperf3", args...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		m := cpu()
		runErr := cmd.Run()
		use := m.stop()
		cancel()
		bytes, bps, perr := parseIperf([]byte(out.String()))
		if runErr == nil && perr == nil {
			return iperfResult{Bytes: bytes, Gbps: bps / 1e9, CPU: use}, nil
		}
		msg := strings.TrimSpace(errb.String())
		if perr != nil && !strings.HasPrefix(perr.Error(), "output is not") {
			msg = perr.Error() // iperf3's own message
		}
		if retryIperf(msg, time.Since(start)) && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if msg == "" && perr != nil {
			msg = perr.Error()
		}
		return iperfResult{}, fmt.Errorf("iperf3 %s: %v: %s", strings.Join(args, " "), runErr, msg)
	}
}

// retryIperf says whether a client run that failed with msg after
// elapsed is tried again: while the server comes up (3 s), and while it
// still serves the previous run (15 s: a relay that passes the previous
// test's close on late leaves the server "busy running a test").
func retryIperf(msg string, elapsed time.Duration) bool {
	switch {
	case strings.Contains(msg, "unable to connect"):
		return elapsed < 3*time.Second
	case strings.Contains(msg, "server is busy"):
		return elapsed < 15*time.Second
	}
	return false
}

// server is the host side of the request/response and connect tests: a
// kernel TCP listener created inside n (nil = host netns) that answers each
// byte it reads with one byte, until the peer closes.
type server struct {
	ln *net.TCPListener
	wg sync.WaitGroup
}

// maxServerConns bounds the connections the server handles at once: the
// tests run one client at a time, so more means leaked connections.
const maxServerConns = 64

func startServer(n ns.NetNS, addr netip.Addr) (*server, error) {
	var ln *net.TCPListener
	err := do(n, func() error {
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		ln = l
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %v: %w", addr, err)
	}
	s := &server{ln: ln}
	sem := make(chan struct{}, maxServerConns)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			select {
			case sem <- struct{}{}:
			default:
				c.Close()
				continue
			}
			s.wg.Add(1)
			go func() {
				defer func() { c.Close(); <-sem; s.wg.Done() }()
				var b [1]byte
				for {
					c.SetDeadline(time.Now().Add(30 * time.Second))
					if _, err := c.Read(b[:]); err != nil {
						return
					}
					if _, err := c.Write(b[:]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return s, nil
}

func (s *server) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *server) close() {
	s.ln.Close()
	s.wg.Wait()
}

// rrResult is the request/response latency.
type rrResult struct {
	N        int
	P50, P99 time.Duration
	// Starts and Lat, with trace, are every timed round trip's start and
	// duration, in order (-rr-trace).
	Starts []time.Time
	Lat    []time.Duration
}

// requestResponse dials addr:port from pod and runs round trips of one
// byte each way on that one connection: rrWarmup first, then up to count
// (or until dur has passed), each timed; with trace, the result keeps
// each round trip's start and duration.
func requestResponse(ctx context.Context, pod ns.NetNS, dst netip.AddrPort, count int, dur time.Duration, trace bool) (rrResult, error) {
	const rrWarmup = 200
	var c *net.TCPConn
	err := do(pod, func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		cc, err := d.DialContext(ctx, "tcp", dst.String())
		if err == nil {
			c = cc.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		return rrResult{}, fmt.Errorf("dial %v: %w", dst, err)
	}
	defer c.Close()
	c.SetNoDelay(true)
	c.SetDeadline(time.Now().Add(dur + 30*time.Second))
	lat := make([]time.Duration, 0, count)
	var starts []time.Time
	if trace {
		starts = make([]time.Time, 0, count) // as lat: no growth (and no copy or collection) mid-run
	}
	var b [1]byte
	end := time.Now().Add(dur)
	for i := 0; i < rrWarmup+count; i++ {
		if ctx.Err() != nil {
			return rrResult{}, ctx.Err()
		}
		start := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return rrResult{}, fmt.Errorf("round trip %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return rrResult{}, fmt.Errorf("round trip %d: %w", i, err)
		}
		if i >= rrWarmup {
			lat = append(lat, time.Since(start))
			if trace {
				starts = append(starts, start)
			}
			if time.Now().After(end) {
				break
			}
		}
	}
	r := rrResult{N: len(lat), P50: percentile(lat, 50), P99: percentile(lat, 99)}
	if trace {
		r.Starts, r.Lat = starts, lat
	}
	return r, nil
}

// percentile is the nearest-rank p-th percentile (0 for none).
func percentile(l []time.Duration, p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	rank := int(p/100*float64(len(s)) + 0.999999)
	return s[min(max(rank, 1), len(s))-1]
}

// cpsResult is the connection rate.
type cpsResult struct {
	Conns  int
	Errors int
	PerSec float64
}

// maxCPSErrors stops the connect loop: a variant that fails this often is
// broken, not slow.
const maxCPSErrors = 50

// connectRate runs, for dur, one connection after another from pod to
// dst: connect, a 1-byte request, the 1-byte response, close. The loop
// runs on one OS thread locked inside pod (ns.Do), so every socket is the
// pod's. The pod's netns gets tcp_tw_reuse=1 and a wide ephemeral port
// range (its own sysctls, not the host's) so TIME_WAIT does not run it
// out of ports.
func connectRate(ctx context.Context, pod ns.NetNS, dst netip.AddrPort, dur time.Duration) (cpsResult, error) {
	setup := func() {
		if pod != nil {
			os.WriteFile("/proc/sys/net/ipv4/tcp_tw_reuse", []byte("1"), 0o644)
			os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("1024 65000"), 0o644)
		}
	}
	var b [1]byte
	return rateLoop(ctx, pod, dur, "connections", setup, func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(b[:]); err != nil {
			return err
		}
		_, err = io.ReadFull(c, b[:])
		return err
	})
}

// rateLoop runs op one after another inside pod for dur, on one OS
// thread locked there (ns.Do), after setup (when not nil), and counts
// the operations that succeeded; maxCPSErrors failures end it with an
// error (a variant that fails this often is broken, not slow).
func rateLoop(ctx context.Context, pod ns.NetNS, dur time.Duration, what string, setup func(), op func() error) (cpsResult, error) {
	var r cpsResult
	var lastErr error
	start := time.Now()
	err := do(pod, func() error {
		if setup != nil {
			setup()
		}
		end := start.Add(dur)
		for time.Now().Before(end) && ctx.Err() == nil {
			if err := op(); err != nil {
				r.Errors++
				lastErr = err
				if r.Errors >= maxCPSErrors {
					return fmt.Errorf("%d failed %s, last: %w", r.Errors, what, err)
				}
				continue
			}
			r.Conns++
		}
		return nil
	})
	r.PerSec = float64(r.Conns) / time.Since(start).Seconds()
	if err == nil && r.Conns == 0 && lastErr != nil {
		err = lastErr
	}
	if err == nil {
		err = ctx.Err()
	}
	return r, err
}

// udpServer answers every datagram with its payload: the UDP side of the
// request/response server, on the same address and port.
type udpServer struct {
	c    *net.UDPConn
	done chan struct{}
}

func startUDPServer(n ns.NetNS, ap netip.AddrPort) (*udpServer, error) {
	var c *net.UDPConn
	err := do(n, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen udp on %v: %w", ap, err)
	}
	s := &udpServer{c: c, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		b := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(b)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				c.WriteToUDPAddrPort(b[:n], from)
			}
		}
	}()
	return s, nil
}

func (s *udpServer) close() {
	s.c.Close()
	<-s.done
}

// udpQueryBytes is a query's size and its answer's: a small DNS
// lookup's.
const udpQueryBytes = 32

// udpQueryRate runs, for dur, one query after another from pod to dst in
// a name lookup's shape: a new UDP socket (a new source port, as a stub
// resolver takes for each query, RFC 5452 §9.2), one datagram, its
// answer, close. A query unanswered within a second counts as failed.
// The loop runs on one OS thread locked inside pod, as connectRate's.
func udpQueryRate(ctx context.Context, pod ns.NetNS, dst netip.AddrPort, dur time.Duration) (cpsResult, error) {
	q := make([]byte, udpQueryBytes)
	a := make([]byte, 2*udpQueryBytes)
	return rateLoop(ctx, pod, dur, "queries", nil, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(q); err != nil {
			return err
		}
		n, err := c.Read(a)
		if err == nil && n != len(q) {
			err = fmt.Errorf("answer of %d bytes, want %d", n, len(q))
		}
		return err
	})
}

// killWait signals a child we started and waits for it (bounded), then
// kills it.
func killWait(cmd *exec.Cmd, done <-chan error, sig syscall.Signal, d time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
		return
	case <-time.After(d):
	}
	cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
