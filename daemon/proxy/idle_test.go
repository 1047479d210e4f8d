package proxy

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// exchangeWithin sends msg on c and reads the answer, failing t when none
// comes within 5 s of real time (c's own deadlines run on the stack's
// clock, which a manual clock holds still).
func exchangeWithin(t *testing.T, c net.Conn, msg, want string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 2048)
		n, err := c.Read(b)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(b[:n])
	}()
	select {
	case s := <-got:
		if s != want {
			t.Fatalf("answer to %q: %q, want %q", msg, s, want)
		}
	case <-time.After(5 * time.Second):
		c.Close() // ends the reader
		t.Fatalf("no answer to %q", msg)
	}
}

// A UDP flow ends UDPIdleTimeout after its last datagram either way, on
// the stack's clock, through the engine's own socket and through a
// Dialer's conn alike: a manual clock moves it, and a datagram at 40 s
// moves the end of a 60 s timeout from 60 s to 100 s (the timer fires at
// 60 s and waits for the rest). The flow is counted out, its socket
// closed, and a Dialer's reader goroutine returns.
func TestUDPFlowIdlesOutOnTheStackClock(t *testing.T) {
	for _, dialer := range []bool{false, true} {
		t.Run(map[bool]string{false: "own socket", true: "Dialer"}[dialer], func(t *testing.T) {
			clk := clock.NewManual()
			r := newRigWith(t, func(c *Config) {
				c.UDPIdleTimeout = time.Minute
				if dialer {
					c.mapDst = nil
				}
			}, netstack.WithClock(clk))
			must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			port := udpEchoServer(t)
			c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, port))
			must(t, err)
			defer c.Close()
			fds, g0 := openFDs(t), runtime.NumGoroutine()

			idleTimeline(t, r, clk, func() { exchangeWithin(t, c, "one", "re:one") }, func() { exchangeWithin(t, c, "two", "re:two") }, udpCounts)
			waitFDs(t, fds, "the flow's host socket after the idle end")
			waitGoroutines(t, g0, "the flow's")
		})
	}
}

// A port mapping's UDP flow (a host client reaching the pod) costs no
// goroutine and ends the same way: on the stack's clock, after
// UDPIdleTimeout without a datagram either way.
func TestPortMapUDPFlowIdlesOutOnTheStackClock(t *testing.T) {
	clk := clock.NewManual()
	r := newRigWith(t, func(c *Config) { c.UDPIdleTimeout = time.Minute }, netstack.WithClock(clk))
	r.podUDPServer(t, 9090)
	hp := r.addMappedPod(t, "udp", 9090)
	c, err := net.Dial("udp4", net.JoinHostPort("127.0.0.1", itoa(hp)))
	must(t, err)
	defer c.Close()
	g0 := runtime.NumGoroutine()
	b := make([]byte, 64)
	exchange := func(msg string) {
		t.Helper()
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(5 * time.Second)) // a kernel socket: wall clock
		n, err := c.Read(b)
		if err != nil || string(b[:n]) != "pod:"+msg {
			t.Fatalf("udp mapping: %q, %v", b[:n], err)
		}
	}
	idleTimeline(t, r, clk, func() {
		exchange("one")
		waitGoroutines(t, g0, "an open mapping flow (no goroutine of its own)")
	}, func() { exchange("two") }, udpCounts)
	// A new datagram opens a new flow.
	exchange("three")
	if s := r.e.Stats(); s.UDPFlowsOpened != 2 || s.ActiveUDP != 1 {
		t.Fatalf("after the idle end: %+v, want a second flow", s)
	}
}

// idleTimeline drives a flow's one-minute idle timeout on the manual
// clock clk: first opens the flow at 0 s, again sends through it at 40 s;
// at 70 s (30 s after the last message) the flow is still open, at 100 s
// it has ended, counted once as an idle timeout and out of pod p's flows.
// counts reads the flows of the kind open, opened and idled out.
func idleTimeline(t *testing.T, r *rig, clk *clock.Manual, first, again func(), counts func(Stats) (open int, opened, idled uint64)) {
	t.Helper()
	first()
	clk.Advance(40 * time.Second)
	again()
	if open, opened, _ := counts(r.e.Stats()); open != 1 || opened != 1 {
		t.Fatalf("at 40 s the message did not go through the open flow: %d open, %d opened", open, opened)
	}
	clk.Advance(30 * time.Second)
	if open, _, idled := counts(r.e.Stats()); open != 1 || idled != 0 {
		t.Fatalf("70 s after the first message, 30 s after the last: %d open, %d idled out, want the flow open", open, idled)
	}
	clk.Advance(30 * time.Second)
	s := r.e.Stats()
	if open, _, idled := counts(s); open != 0 || idled != 1 || s.Pods["p"].ActiveFlows != 0 {
		t.Fatalf("60 s after the last message: %d open, %d idled out, pod %+v: want the flow ended by its idle timeout", open, idled, s.Pods["p"])
	}
}

func udpCounts(s Stats) (int, uint64, uint64) {
	return s.ActiveUDP, s.UDPFlowsOpened, s.UDPIdleTimeouts
}

func echoCounts(s Stats) (int, uint64, uint64) {
	return s.ActiveEcho, s.EchoFlowsOpened, s.EchoIdleTimeouts
}

// waitGoroutines waits (bounded) until at most want goroutines run.
func waitGoroutines(t *testing.T, want int, what string) {
	t.Helper()
	var n int
	for try := 0; try < 200; try++ {
		if n = runtime.NumGoroutine(); n <= want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: %d goroutines, want at most %d", what, n, want)
}
