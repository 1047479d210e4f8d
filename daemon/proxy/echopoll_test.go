package proxy

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// echoMode sets r's engine up for echo flows of mode "ping" (each its
// own ping socket, opened in a private netns where they are allowed) or
// "raw" (the engine's raw ICMP socket, ping sockets refused), both to
// loopback.
func echoMode(t testing.TB, r *rig, mode string) {
	t.Helper()
	r.e.echo.hostDst = func(netip.Addr) netip.Addr { return loopback }
	if mode == "ping" {
		r.e.echo.openPing = inNetns(newPingNetns(t), openPingSocket)
		return
	}
	openRawOrSkip(t)
	r.e.echo.openPing = refusePing(r.e.echo.openPing)
}

// ping is one echo from the pod to server (a new flow: Stack.Ping takes a
// new identifier each time).
func (r *rig) ping(seq uint16) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := r.pod.Ping(ctx, server, seq, []byte("are you there?"))
	return err
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	return len(ents)
}

// waitFDs waits (2 s) until the process has want descriptors open: a
// ping socket the poller's goroutine is still reading closes when that
// read lets go of it.
func waitFDs(t *testing.T, want int, what string) {
	t.Helper()
	var n int
	for try := 0; try < 200; try++ {
		if n = openFDs(t); n == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: %d descriptors open, want %d", what, n, want)
}

// An echo flow ends UDPIdleTimeout after its last request or reply, on
// the stack's clock: a manual clock moves it, and a request at 40 s moves
// the end of a 60 s timeout from 60 s to 100 s (the timer fires at 60 s
// and waits for the rest). The flow is counted out and, in ping mode,
// its socket is closed.
func TestEchoFlowIdlesOutOnTheStackClock(t *testing.T) {
	for _, mode := range []string{"ping", "raw"} {
		t.Run(mode, func(t *testing.T) {
			clk := clock.NewManual()
			r := newRigWith(t, func(c *Config) { c.UDPIdleTimeout = time.Minute }, netstack.WithClock(clk))
			must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			echoMode(t, r, mode)
			fds := openFDs(t)
			var k echoKey
			idleTimeline(t, r, clk, func() {
				if err := r.ping(1); err != nil {
					t.Fatalf("ping: %v (stats %+v)", err, r.e.Stats())
				}
				if mode == "ping" {
					waitFDs(t, fds+1, "the flow's ping socket")
				}
				r.e.echo.mu.Lock()
				for k = range r.e.echo.m {
				}
				r.e.echo.mu.Unlock()
			}, func() {
				// The same flow's next request (its identifier, the
				// next sequence number), as the NIC's goroutine hands
				// it over. Its reply reaches the pod (unasked for: its
				// Ping is done) before the clock moves on.
				reps := r.pod.Stats().Counters["IcmpInEchoReps"]
				r.e.echo.intercept(ipv4.EchoRequest{Src: k.pod, Dst: k.dst, ID: k.id, Seq: 2, Payload: []byte("still here")})
				stacktest.WaitFor(t, "the second reply", func() bool { return r.pod.Stats().Counters["IcmpInEchoReps"] > reps })
				if s := r.e.Stats(); s.EchoRelayed != 2 {
					t.Fatalf("the second request was not relayed: %+v", s)
				}
			}, echoCounts)
			if mode == "ping" {
				waitFDs(t, fds, "the ping socket after the idle end")
			}
		})
	}
}

// Echo flows through ping sockets cost no goroutine each, and RemovePod
// and Close end them with their sockets (no descriptor left open).
func TestEchoPingFlowsOwnSocketsEnd(t *testing.T) {
	for _, end := range []string{"RemovePod", "Close"} {
		t.Run(end, func(t *testing.T) {
			r := newRig(t, nil)
			must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			echoMode(t, r, "ping")
			must(t, r.ping(1)) // the first flow: pools and tables
			const n = 20
			fds := openFDs(t)
			g0 := runtime.NumGoroutine()
			for i := range n {
				if err := r.ping(uint16(i + 2)); err != nil {
					t.Fatalf("flow %d: %v", i, err)
				}
			}
			if g := runtime.NumGoroutine() - g0; g > 2 {
				t.Errorf("%d goroutines more for %d echo flows", g, n)
			}
			waitFDs(t, fds+n, "a ping socket per flow")
			icmp := 0
			for _, rl := range r.e.Relays() {
				// The ping socket's own identifier is its local port
				// (getpeername: ENOTCONN, a ping socket has no port
				// to connect to).
				if rl.Proto == "icmp" && rl.HostLocal.Addr() == loopback && rl.HostLocal.Port() != 0 {
					icmp++
				}
			}
			if s := r.e.Stats(); s.ActiveEcho != n+1 || icmp != n+1 {
				t.Fatalf("%d flows, %d listed with their ping sockets, want %d", s.ActiveEcho, icmp, n+1)
			}
			if end == "RemovePod" {
				r.e.RemovePod("p")
			} else {
				r.e.Close()
			}
			if s := r.e.Stats(); s.ActiveEcho != 0 || s.EchoIdleTimeouts != 0 || len(s.Pods) != 0 {
				t.Errorf("after %s: %+v", end, s)
			}
			// The first flow's socket closes too; Close closes the
			// poller's epoll fd besides.
			want := fds - 1
			if end == "Close" {
				want--
			}
			waitFDs(t, want, "after "+end)
			if end == "Close" {
				waitNoEngineGoroutines(t)
			}
		})
	}
}

// RFC 792 / RFC 1122 §3.2.2 through a real ping socket: a router answers
// the relayed request with host unreachable; the kernel queues it on the
// flow's ping socket (ping_err, IP_RECVERR), the poller's EPOLLERR hands
// it to the flow, and the pod gets host unreachable from that router
// about its own request, so its ping fails with EHOSTUNREACH. The router
// is a raw socket in the ping socket's netns, where the kernel itself
// answers no echo (icmp_echo_ignore_all).
func TestEchoPingSocketErrorRelayed(t *testing.T) {
	router := netip.MustParseAddr("192.0.2.1")
	r := newRig(t, nil)
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	r.e.echo.hostDst = func(netip.Addr) netip.Addr { return loopback }
	ns := newPingNetns(t)
	r.e.echo.openPing = inNetns(ns, openPingSocket)
	ns.router(t, router)

	err := r.ping(5)
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("ping: %v, want EHOSTUNREACH (stats %+v)", err, r.e.Stats())
	}
	if s := r.e.Stats(); s.EchoICMPErrors != 1 || s.EchoRelayed != 1 || s.EchoRawRelayed != 0 {
		t.Fatalf("stats %+v, want one error relayed about one request through a ping socket", s)
	}
}

// router makes ns answer every echo request to one of its addresses with
// host unreachable from router quoting the request (RFC 792: the IP
// header and at least 8 bytes of data; here all of it), as a router on
// the way that lost the next hop, and the kernel answer no echo
// (icmp_echo_ignore_all). A raw ICMP socket of ns sees the requests, an
// IPPROTO_RAW one (IP_HDRINCL) sends the errors from router's address.
func (ns *pingNetns) router(t *testing.T, router netip.Addr) {
	t.Helper()
	var lis, inj int
	var err error
	ns.do(func() {
		if err = os.WriteFile("/proc/sys/net/ipv4/icmp_echo_ignore_all", []byte("1"), 0o644); err != nil {
			return
		}
		if lis, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP); err != nil {
			return
		}
		inj, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	})
	must(t, err)
	must(t, unix.SetsockoptTimeval(lis, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}))
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 2048)
		for !stop.Load() {
			n, _, err := unix.Recvfrom(lis, b, 0)
			if err != nil {
				continue
			}
			ip, err := header.CheckIPv4(b[:n])
			if err != nil || header.ICMPv4(ip.Payload()).Type() != header.ICMPv4Echo {
				continue
			}
			e := stacktest.IPv4(router.String(), ip.Src().String()).
				ICMP(header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0).Payload(b[:n]).Bytes()
			unix.Sendto(inj, e, 0, &unix.SockaddrInet4{Addr: ip.Src().As4()})
		}
	}()
	t.Cleanup(func() { stop.Store(true); <-done; unix.Close(lis); unix.Close(inj) })
}
