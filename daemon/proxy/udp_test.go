package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/socket"
)

// udpEchoServer answers every datagram on 127.0.0.1 with "re:"+payload.
func udpEchoServer(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() { c.Close(); wg.Wait() })
	go func() {
		defer wg.Done()
		b := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(append([]byte("re:"), b[:n]...), from)
		}
	}()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// silentUDPServer is a bound loopback UDP port that answers nothing (and
// sends no port unreachable).
func silentUDPServer(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// Datagrams both ways, a port unreachable, and the idle timeout: through
// the engine's own sockets on its poller, and through a Config.Dialer's
// conns (no mapDst), each read by a goroutine of its own.
func TestUDPEchoAndPortUnreachable(t *testing.T) {
	for _, dialer := range []bool{false, true} {
		t.Run(map[bool]string{false: "own sockets", true: "Dialer"}[dialer], func(t *testing.T) {
			testUDPEchoAndPortUnreachable(t, dialer)
		})
	}
}

func testUDPEchoAndPortUnreachable(t *testing.T, dialer bool) {
	r := newRig(t, func(c *Config) {
		c.UDPIdleTimeout = 300 * time.Millisecond
		if dialer {
			c.mapDst = nil
		}
	})
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))

	port := udpEchoServer(t)
	c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, port))
	must(t, err)
	defer c.Close()
	b := make([]byte, 2048)
	for i, msg := range []string{"one", "two", string(fill(1400, 9))} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.ReadFromUDPAddrPort(b)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if from != netip.AddrPortFrom(server, port) || string(b[:n]) != "re:"+msg {
			t.Fatalf("datagram %d: %q from %v", i, b[:min(n, 16)], from)
		}
	}
	s := r.e.Stats()
	if s.UDPFlowsOpened != 1 || s.ActiveUDP != 1 || s.Pods["p"].ActiveFlows != 1 {
		t.Errorf("one flow for three datagrams: %+v", s)
	}

	// RFC 1122 §4.1.3.1: the host's port unreachable reaches the pod's
	// connected socket as ECONNREFUSED.
	closed := closedPort(t, "udp")
	c2, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, closed))
	must(t, err)
	defer c2.Close()
	c2.Write([]byte("anyone?"))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(b); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("pod read after send to a closed port: %v, want ECONNREFUSED", err)
	}
	if s := r.e.Stats(); s.UDPPortUnreachables == 0 {
		t.Errorf("UDPPortUnreachables = 0")
	}

	// Both flows idle out.
	r.waitStats("flows idle out", func(s Stats) bool {
		return s.ActiveUDP == 0 && s.Pods["p"].ActiveFlows == 0 && s.UDPIdleTimeouts == 2
	})
}

func TestFlowLimits(t *testing.T) {
	t.Run("per pod", func(t *testing.T) {
		r := newRig(t, func(c *Config) { c.MaxFlowsPerPod = 2 })
		must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
		port := kernelListener(t, echoServe)
		var conns []net.Conn
		for range 2 {
			c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
			must(t, err)
			conns = append(conns, c)
		}
		if _, err := r.dialPod(ctxT(t, 5*time.Second), server, port); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("third flow: %v, want ECONNREFUSED", err)
		}
		// A UDP flow counts too.
		uport := udpEchoServer(t)
		u, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, uport))
		must(t, err)
		defer u.Close()
		u.Write([]byte("x"))
		s := r.waitStats("drops counted", func(s Stats) bool { return s.FlowLimitDrops == 2 })
		if s.Pods["p"].FlowLimitDrops != 2 || s.Pods["p"].ActiveFlows != 2 {
			t.Errorf("pod stats %+v", s.Pods["p"])
		}
		conns[0].Close()
		r.waitStats("flow counted out", func(s Stats) bool { return s.Pods["p"].ActiveFlows == 1 })
		c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
		if err != nil {
			t.Fatalf("dial after a flow ended: %v", err)
		}
		c.Close()
		conns[1].Close()
	})
	t.Run("udp table", func(t *testing.T) {
		r := newRig(t, func(c *Config) { c.MaxUDPFlows = 1 })
		// A query still owed its answer holds the node's one place (an
		// answered flow would make room: TestUDPAnsweredFlowsMakeRoomAtOnce).
		c0, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, silentUDPServer(t)))
		must(t, err)
		defer c0.Close()
		c0.Write([]byte("anyone?"))
		r.waitStats("the first flow open", func(s Stats) bool { return s.ActiveUDP == 1 })
		c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, udpEchoServer(t)))
		must(t, err)
		defer c.Close()
		c.Write([]byte("q"))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Read(make([]byte, 64)); err == nil {
			t.Fatal("a second flow answered through a table of one")
		}
		if s := r.e.Stats(); s.FlowLimitDrops != 1 || s.ActiveUDP != 1 {
			t.Errorf("stats %+v", s)
		}
	})
}

// At a pod's flow limit a new UDP flow takes the place of the oldest
// answered query gone quiet (conntrack's early drop for UDP): a pod that
// resolves names faster than MaxFlowsPerPod / UDPIdleTimeout keeps
// resolving. A stream (a flow still active udpStream after it opened) is
// never taken: with only streams open the new flow is refused.
func TestUDPQuietFlowsMakeRoom(t *testing.T) {
	const quiet, stream = 50 * time.Millisecond, 400 * time.Millisecond
	r := newRig(t, func(c *Config) { c.MaxFlowsPerPod = 3; c.udpQuiet = quiet; c.udpStream = stream })
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	dst := netip.AddrPortFrom(server, udpEchoServer(t))
	b := make([]byte, 64)
	ask := func(c *socket.Conn, q string) error {
		if _, err := c.Write([]byte(q)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(b)
		if err == nil && string(b[:n]) != "re:"+q {
			err = fmt.Errorf("answer %q", b[:n])
		}
		return err
	}
	dial := func() *socket.Conn {
		c, err := r.pod.DialUDP(netip.AddrPort{}, dst)
		must(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	// Ten lookups, each from a socket of its own, through a limit of 3.
	for i := range 10 {
		if err := ask(dial(), fmt.Sprintf("lookup %d", i)); err != nil {
			t.Fatalf("lookup %d: %v (stats %+v)", i, err, r.e.Stats())
		}
		time.Sleep(2 * quiet)
	}
	s := r.e.Stats()
	if s.UDPEvicted != 7 || s.FlowLimitDrops != 0 || s.Pods["p"].ActiveFlows > 3 {
		t.Fatalf("after 10 lookups: %+v, want 7 evicted, none refused, at most 3 open", s)
	}
	r.waitStats("evicted flows' readers end", func(s Stats) bool { return s.ActiveUDP <= 3 })

	// Three streams: each still talking after udpStream.
	var streams []*socket.Conn
	for i := range 3 {
		c := dial()
		if err := ask(c, fmt.Sprintf("stream %d", i)); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		streams = append(streams, c)
	}
	time.Sleep(stream + quiet)
	for i, c := range streams {
		if err := ask(c, "still here"); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	time.Sleep(2 * quiet)
	c := dial()
	c.Write([]byte("one more"))
	r.waitStats("the flow over the limit refused", func(s Stats) bool { return s.FlowLimitDrops == 1 })
	for i, c := range streams {
		if err := ask(c, "and now"); err != nil {
			t.Fatalf("stream %d after the refusal: %v", i, err)
		}
	}
	if s := r.e.Stats(); s.UDPEvicted != 7+3 {
		// The streams took the places of the three quiet lookups left.
		t.Fatalf("evictions %d, want 10", s.UDPEvicted)
	}
}

// The engine's own UDP sockets (no Config.Dialer) cost no goroutine per
// flow, and RemovePod and Close end their flows with their host sockets:
// the ports they held are free again.
func TestUDPFlowsOwnSocketsEnd(t *testing.T) {
	for _, end := range []string{"RemovePod", "Close"} {
		t.Run(end, func(t *testing.T) {
			r := newRig(t, nil)
			must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			port := udpEchoServer(t)
			const n = 20
			g0 := runtime.NumGoroutine()
			b := make([]byte, 64)
			for i := range n {
				c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, port))
				must(t, err)
				defer c.Close()
				c.Write([]byte("q"))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(b); err != nil {
					t.Fatalf("flow %d: %v", i, err)
				}
			}
			if g := runtime.NumGoroutine() - g0; g > 2 {
				t.Errorf("%d goroutines more for %d UDP flows", g, n)
			}
			var hostPorts []netip.AddrPort
			for _, rl := range r.e.Relays() {
				if rl.Proto == "udp" {
					hostPorts = append(hostPorts, rl.HostLocal)
				}
			}
			if s := r.e.Stats(); s.ActiveUDP != n || len(hostPorts) != n {
				t.Fatalf("%d flows, %d listed (%v), want %d", s.ActiveUDP, len(hostPorts), hostPorts, n)
			}
			if end == "RemovePod" {
				r.e.RemovePod("p")
			} else {
				r.e.Close()
			}
			s := r.e.Stats()
			if s.ActiveUDP != 0 || s.UDPIdleTimeouts != 0 || len(s.Pods) != 0 {
				t.Errorf("after %s: %+v", end, s)
			}
			// A socket the poller's goroutine is still reading (the last
			// reply's readiness) closes when that read lets go of it.
			for _, hp := range hostPorts {
				var c *net.UDPConn
				var err error
				for try := 0; try < 200; try++ {
					if c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(hp)); err == nil {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				if err != nil {
					t.Errorf("host port %v still bound 2 s after %s: %v", hp, end, err)
					continue
				}
				c.Close()
			}
		})
	}
}

// A flow with as many answers as questions waits for nothing: at the
// limit it makes room at once, however recently it spoke, so a pod
// resolving names as fast as it can is not refused. A flow still owed
// an answer keeps its place until it has been quiet for udpQuiet.
func TestUDPAnsweredFlowsMakeRoomAtOnce(t *testing.T) {
	r := newRig(t, func(c *Config) { c.MaxFlowsPerPod = 3; c.udpQuiet = time.Hour })
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	echo := netip.AddrPortFrom(server, udpEchoServer(t))
	silent := netip.AddrPortFrom(server, silentUDPServer(t))
	b := make([]byte, 64)
	for i := range 20 {
		c, err := r.pod.DialUDP(netip.AddrPort{}, echo)
		must(t, err)
		c.Write([]byte("q"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(b); err != nil {
			t.Fatalf("lookup %d: %v (stats %+v)", i, err, r.e.Stats())
		}
		c.Close()
	}
	if s := r.e.Stats(); s.UDPEvicted != 17 || s.FlowLimitDrops != 0 {
		t.Fatalf("after 20 lookups through a limit of 3: %+v, want 17 evicted, none refused", s)
	}
	// Three queries nobody answers take the three places; a fourth flow
	// finds none it may take.
	for range 4 {
		c, err := r.pod.DialUDP(netip.AddrPort{}, silent)
		must(t, err)
		defer c.Close()
		c.Write([]byte("anyone?"))
	}
	s := r.waitStats("the fourth unanswered flow refused", func(s Stats) bool { return s.FlowLimitDrops == 1 })
	if s.UDPEvicted != 17+3 || s.Pods["p"].ActiveFlows != 3 {
		t.Fatalf("stats %+v, want 3 more evicted (the answered ones) and 3 open", s)
	}
}

// A datagram whose flow's host socket cannot be opened (here the
// engine's connect to the limited broadcast address is refused with
// EACCES, and the test Dialer answers EHOSTUNREACH) is dropped and
// counted in UDPDropped, the flow counted out, through the
// engine's own sockets and a Dialer's alike; the next flow is relayed.
func TestUDPFlowNotOpenedIsCounted(t *testing.T) {
	for _, dialer := range []bool{false, true} {
		t.Run(map[bool]string{false: "own sockets", true: "Dialer"}[dialer], func(t *testing.T) {
			r := newRig(t, func(c *Config) {
				if dialer {
					c.mapDst = nil
				}
			})
			must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(unreach, 53))
			must(t, err)
			defer c.Close()
			c.Write([]byte("q"))
			s := r.waitStats("the datagram dropped", func(s Stats) bool { return s.UDPDropped == 1 })
			if s.ActiveUDP != 0 || s.UDPFlowsOpened != 0 || s.Pods["p"].ActiveFlows != 0 {
				t.Fatalf("stats %+v, want no flow open", s)
			}
			port := udpEchoServer(t)
			c2, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, port))
			must(t, err)
			defer c2.Close()
			c2.Write([]byte("q"))
			c2.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c2.Read(make([]byte, 16)); err != nil {
				t.Fatalf("the next flow: %v", err)
			}
		})
	}
}
