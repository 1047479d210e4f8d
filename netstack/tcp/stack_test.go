package tcp_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/link/fault"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// Whole stacks over link/pipe and link/fault (STYLE §8): TCP through
// ipv4, dev and neigh, with loss, duplication, reordering and corruption
// in both directions, blocking net.Conn calls on the real clock.
func TestStacksOverFaultyPipe(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "IPv4"
		if v6 {
			name = "IPv6" // ipv6, NDP and the IPv6 pseudo-header instead
		}
		t.Run(name, func(t *testing.T) { stacksOverFaultyPipe(t, v6) })
	}
}

func stacksOverFaultyPipe(t *testing.T, v6 bool) {
	size := 16 << 20
	if testing.Short() {
		size = 4 << 20
	}
	a, b := stacktest.Pair(t, stacktest.NoCapture(), stacktest.DualStack(), stacktest.Fault(fault.Loss(0.01), fault.Duplicate(0.01),
		fault.Reorder(0.01, 3), fault.Corrupt(0.01), fault.Seed(3), fault.OnReceive()))
	dst := b.Addr()
	if v6 {
		dst = b.Addr6()
	}
	ln, err := b.ListenTCP(netip.AddrPortFrom(dst, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		n   int64
		sum [32]byte
		err error
	}
	srv := make(chan res, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			srv <- res{err: err}
			return
		}
		defer c.Close()
		// Echo back the hash of what arrived after the client's FIN.
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r res
		r.n, r.err = n, err
		copy(r.sum[:], h.Sum(nil))
		if err == nil {
			_, r.err = c.Write(r.sum[:])
		}
		srv <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(dst, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); got.Is6() != v6 {
		t.Fatalf("connected from %v", got)
	}
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	buf := make([]byte, 32<<10)
	start := time.Now()
	for sent := 0; sent < size; sent += len(buf) {
		for i := range buf {
			buf[i] = byte(sent>>10 + i)
		}
		h.Write(buf)
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("write after %d: %v", sent, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	r := <-srv
	if r.err != nil || r.n != int64(size) {
		t.Fatalf("server got %d of %d: %v", r.n, size, r.err)
	}
	var want [32]byte
	copy(want[:], h.Sum(nil))
	if err != nil || string(got) != string(want[:]) || r.sum != want {
		t.Fatalf("checksum mismatch (read err %v)", err)
	}
	t.Logf("%d MiB in %v; a retrans %d, b in-csum-errors %d, info %+v", size>>20, time.Since(start).Round(time.Millisecond),
		a.TCP().Counter(6), b.TCP().Counter(9), c.Info())
}

// Dial errors are the standard ones: ECONNREFUSED for a closed port, the
// context's deadline for a silent peer, ENETUNREACH without a route.
func TestDialErrors(t *testing.T) {
	a, b := stacktest.Pair(t, stacktest.NoCapture())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(b.Addr(), 1)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("closed port: %v", err)
	}
	if _, err := a.DialTCP(ctx, netip.AddrPort{}, netip.MustParseAddrPort("192.0.2.1:80")); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("no route: %v", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	// 10.0.0.3 is on the link but nobody answers ARP.
	if _, err := a.DialTCP(short, netip.AddrPort{}, netip.MustParseAddrPort("10.0.0.3:80")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent peer: %v", err)
	}
}

// BenchmarkStacksOverPipe is one connection's throughput between two
// whole stacks over link/pipe (TCP, IPv4, neigh, dev, the pipe's
// goroutines); allocs/op are per 64 KiB written (45 segments).
func BenchmarkStacksOverPipe(b *testing.B) { benchStacksOverPipe(b, false) }

// BenchmarkStacksOverPipeIPv6 is BenchmarkStacksOverPipe over IPv6
// (46 segments of 1428 bytes per 64 KiB).
func BenchmarkStacksOverPipeIPv6(b *testing.B) { benchStacksOverPipe(b, true) }

func benchStacksOverPipe(b *testing.B, v6 bool) {
	a, bb := stacktest.Pair(b, stacktest.NoCapture(), stacktest.DualStack())
	dst := bb.Addr()
	if v6 {
		dst = bb.Addr6()
	}
	ln, err := bb.ListenTCP(netip.AddrPortFrom(dst, 9))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			done <- 0
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		done <- n
	}()
	c, err := a.DialTCP(context.Background(), netip.AddrPort{}, netip.AddrPortFrom(dst, 9))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	n := <-done
	b.StopTimer()
	c.Close()
	if n != int64(b.N)*int64(len(buf)) {
		b.Fatalf("received %d", n)
	}
	b.ReportMetric(float64(n)*8/time.Since(t0).Seconds()/1e9, "Gbit/s")
}

// A stack talking to itself goes through ipv4's (ipv6's) loopback
// backlog, never re-entering the sender's socket lock.
func TestLoopbackConnection(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "IPv4"
		if v6 {
			name = "IPv6"
		}
		t.Run(name, func(t *testing.T) { loopbackConnection(t, v6) })
	}
}

func loopbackConnection(t *testing.T, v6 bool) {
	a, _ := stacktest.Pair(t, stacktest.NoCapture(), stacktest.DualStack())
	to := a.Addr()
	if v6 {
		to = a.Addr6()
	}
	ln, err := a.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(to, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := make([]byte, 1<<20)
	for i := range msg {
		msg[i] = byte(i * 31)
	}
	go func() { c.Write(msg); c.CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != string(msg) {
		t.Fatalf("echo over loopback: %d bytes, %v", len(got), err)
	}
}
