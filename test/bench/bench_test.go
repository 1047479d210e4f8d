package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty is 0", nil, 50, 0},
		{"one value is every percentile", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 1..10 is the 5th (nearest rank)", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 50, 5 * time.Millisecond},
		{"p99 of 1..100 is the 99th", func() []time.Duration {
			var l []int
			for i := 100; i >= 1; i-- {
				l = append(l, i)
			}
			return ms(l...)
		}(), 99, 99 * time.Millisecond},
		{"p100 is the max", ms(3, 1, 2), 100, 3 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.in, tc.p); got != tc.want {
				t.Fatalf("percentile(%v, %v) = %v, want %v", tc.in, tc.p, got, tc.want)
			}
		})
	}
}

func TestCleanupsRunNewestFirstOnceAndAfterClose(t *testing.T) {
	var c cleanups
	var got []string
	c.add("a", func() { got = append(got, "a") })
	m := c.mark()
	c.add("b", func() { got = append(got, "b") })
	c.add("c", func() { panic("boom") }) // reported, the rest still run
	c.add("d", func() { got = append(got, "d") })
	c.runTo(m)
	c.runTo(m) // nothing left above m: runs nothing twice
	if strings.Join(got, "") != "db" {
		t.Fatalf("runTo(mark) ran %q, want \"db\"", got)
	}
	c.close()
	if strings.Join(got, "") != "dba" {
		t.Fatalf("close ran %q, want \"dba\"", got)
	}
	c.add("late", func() { got = append(got, "late") })
	if got[len(got)-1] != "late" {
		t.Fatalf("add after close did not run at once: %q", got)
	}
}

func TestCatchTurnsFatalAndPanicsIntoErrors(t *testing.T) {
	var c cleanups
	x := newTB("x", &c, context.Background())
	for _, tc := range []struct {
		name string
		fn   func() error
		want string
	}{
		{"Fatalf", func() error { x.Fatalf("bad %d", 1); return nil }, "bad 1"},
		{"a method the adapter lacks", func() error { x.Output(); return nil }, "panic:"},
		{"plain error", func() error { return errors.New("plain") }, "plain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := catch(tc.fn)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("catch = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := catch(func() error { return nil }); err != nil {
		t.Fatalf("catch(nil) = %v", err)
	}
	d := x.TempDir()
	if _, err := os.Stat(d); err != nil {
		t.Fatal(err)
	}
	c.close()
	if _, err := os.Stat(d); !os.IsNotExist(err) {
		t.Fatalf("TempDir %s not removed by the undo stack: %v", d, err)
	}
}

func TestCPUCounters(t *testing.T) {
	// Burn a little CPU so the counters have something to show.
	end := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(end) {
	}
	self, err := procCPU(os.Getpid())
	if err != nil || self <= 0 {
		t.Fatalf("procCPU(self) = %v, %v; want > 0", self, err)
	}
	sys, err := systemCPU()
	if err != nil || sys < self {
		t.Fatalf("systemCPU() = %v, %v; want ≥ this process's %v", sys, err, self)
	}
	if _, err := procCPU(1 << 30); err == nil {
		t.Fatal("procCPU of a missing pid: no error")
	}
}

func TestRequestResponseAndConnectRateOnLoopback(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	s, err := startServer(nil, lo)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	dst := netip.AddrPortFrom(lo, uint16(s.port()))
	ctx := context.Background()
	rr, err := requestResponse(ctx, nil, dst, 500, 5*time.Second, false)
	if err != nil || rr.N != 500 || rr.P50 <= 0 || rr.P99 < rr.P50 {
		t.Fatalf("requestResponse = %+v, %v; want 500 round trips, 0 < p50 ≤ p99", rr, err)
	}
	cps, err := connectRate(ctx, nil, dst, 200*time.Millisecond)
	if err != nil || cps.Conns == 0 || cps.Errors != 0 || cps.PerSec <= 0 {
		t.Fatalf("connectRate = %+v, %v", cps, err)
	}
	// Nobody listens: the connect rate fails instead of looping.
	s.close()
	if _, err := connectRate(ctx, nil, dst, 5*time.Second); err == nil {
		t.Fatal("connectRate to a closed port: no error")
	}
}

// TestUDPQueryRateOnLoopback: udpQueryRate against startUDPServer
// counts answered queries, and fails, bounded, when nobody answers.
func TestUDPQueryRateOnLoopback(t *testing.T) {
	s, err := startUDPServer(nil, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	dst := s.c.LocalAddr().(*net.UDPAddr).AddrPort()
	ctx := context.Background()
	q, err := udpQueryRate(ctx, nil, dst, 200*time.Millisecond)
	if err != nil || q.Conns == 0 || q.Errors != 0 || q.PerSec <= 0 {
		t.Fatalf("udpQueryRate = %+v, %v", q, err)
	}
	s.close()
	if q, err := udpQueryRate(ctx, nil, dst, 5*time.Second); err == nil || q.Errors != maxCPSErrors {
		t.Fatalf("udpQueryRate to a closed port = %+v, %v; want %d failures and an error", q, err, maxCPSErrors)
	}
}

// TestHoldConnsOnLoopback: holdConns opens and keeps n connections, each
// after a 1-byte exchange, and reports a refused destination as an error.
func TestHoldConnsOnLoopback(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	s, err := startServer(nil, lo) // answers each byte
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	const n = 40 // below the server's maxServerConns
	hc, err := holdConns(context.Background(), nil, lo, []int{s.port()}, n, true)
	if err != nil || len(hc.conns) != n || hc.errors != 0 {
		t.Fatalf("holdConns = %d conns, %d errors, %v; want %d, 0", len(hc.conns), hc.errors, err, n)
	}
	hc.close()
	if ports, err := parseReadyPorts("ready ports=80,443"); err != nil || len(ports) != 2 || ports[1] != 443 {
		t.Fatalf("parseReadyPorts = %v, %v", ports, err)
	}
	if _, err := parseReadyPorts("ready"); err == nil {
		t.Fatal("parseReadyPorts of a bare ready: no error")
	}
	s.close()
	hc, err = holdConns(context.Background(), nil, lo, []int{s.port()}, 3, false)
	if err == nil || len(hc.conns) != 0 {
		t.Fatalf("holdConns to a closed port = %d conns, %v; want an error", len(hc.conns), err)
	}
	if got := memConnsFor("floor", 10000, 20000); got != (20000-nofileReserve)/6 {
		t.Fatalf("memConnsFor(floor, 10000, 20000) = %d", got)
	}
	if got := memConnsFor("proxy", 10000, 20000); got != 10000 {
		t.Fatalf("memConnsFor(proxy, 10000, 20000) = %d", got)
	}
}

func TestRetryIperf(t *testing.T) {
	for _, tc := range []struct {
		msg     string
		elapsed time.Duration
		want    bool
	}{
		{"unable to connect to server: Connection refused", time.Second, true},
		{"unable to connect to server: Connection refused", 4 * time.Second, false},
		{"the server is busy running a test. try again later", 10 * time.Second, true},
		{"the server is busy running a test. try again later", 16 * time.Second, false},
		{"control socket has closed unexpectedly", 0, false},
	} {
		if got := retryIperf(tc.msg, tc.elapsed); got != tc.want {
			t.Errorf("retryIperf(%q, %v) = %v, want %v", tc.msg, tc.elapsed, got, tc.want)
		}
	}
}

func TestDaemonMetricsReading(t *testing.T) {
	body := "# HELP go_memstats_heap_inuse_bytes x\n# TYPE go_memstats_heap_inuse_bytes gauge\n" +
		"go_memstats_heap_inuse_bytes 1.2345e+07\ngo_memstats_stack_inuse_bytes 65536\n" +
		"cni_userstack_nic_packets_total{nic=\"eth0\"} 3\n"
	if v, err := promValue(body, "go_memstats_heap_inuse_bytes"); err != nil || v != 1.2345e7 {
		t.Errorf("promValue(heap) = %v, %v", v, err)
	}
	if _, err := promValue(body, "go_memstats_heap"); err == nil {
		t.Error("promValue of a prefix: no error")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	got, err := httpGetIn(nil, addr, "/metrics")
	if err != nil || got != body {
		t.Fatalf("httpGetIn = %q, %v", got, err)
	}
	if _, err := httpGetIn(nil, addr, "/nothing"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("httpGetIn of a 404: %v", err)
	}
}
