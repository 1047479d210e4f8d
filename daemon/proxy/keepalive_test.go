package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// RFC 1122 §4.2.3.6 on both sockets of a relay: the pod vanishes without
// FIN or RST, the stack's socket probes it (SEG.SEQ = SND.NXT-1, no data)
// after KeepAliveIdle, every KeepAliveInterval, resets it after
// KeepAliveCount unanswered probes, and the relay closes: the flow leaves
// the pod's count and the host connection is reset. The host socket got
// the same configuration from the kernel's socket options. Both stacks run
// on a manual clock: the probes come at exact simulated times.
func TestRelayKeepaliveFindsAVanishedPod(t *testing.T) {
	t.Run("own connect", func(t *testing.T) { testRelayKeepalive(t, false) })
	t.Run("Dialer", func(t *testing.T) { testRelayKeepalive(t, true) })
}

// testRelayKeepalive is TestRelayKeepaliveFindsAVanishedPod with the
// engine's own host connect (tcpSYN) or a Config.Dialer's.
func testRelayKeepalive(t *testing.T, dialer bool) {
	clk := clock.NewManual()
	var (
		mu   sync.Mutex
		host controller
	)
	r := newRigWith(t, func(c *Config) {
		c.KeepAliveIdle, c.KeepAliveInterval, c.KeepAliveCount = 10*time.Second, 2*time.Second, 3
		if dialer {
			c.mapDst = nil
		}
		c.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := testDialer(ctx, network, addr)
			if tc, ok := conn.(*net.TCPConn); ok && network == "tcp" {
				rc, err := tc.SyscallConn()
				must(t, err)
				mu.Lock()
				host = rc
				mu.Unlock()
			}
			return conn, err
		}
	}, netstack.WithClock(clk))

	srvErr := make(chan error, 1)
	port := kernelListener(t, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c)
		srvErr <- err
	})
	// The pod: once it vanishes, it drops everything it receives; the
	// node's segments to it are counted there (the wire).
	var vanished atomic.Bool
	var probes, resets atomic.Int32
	r.pod.Hooks().Register(netfilter.Ops{Hook: netfilter.PreRouting, Priority: netfilter.PriRaw, Name: "vanished",
		Fn: func(skb *buf.SKB, _ netfilter.State) netfilter.Verdict {
			if !vanished.Load() {
				return netfilter.Accept()
			}
			if ip, err := header.CheckIPv4(skb.Bytes()); err == nil && ip.Protocol() == header.ProtoTCP {
				if th, err := header.CheckTCP(ip.Payload()); err == nil {
					switch {
					case th.Flags()&header.RST != 0:
						resets.Add(1)
					case th.Flags() == header.ACK && len(th.Payload()) == 0:
						probes.Add(1)
					}
				}
			}
			return netfilter.Drop(buf.DropNotSpecified)
		}})

	c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
	if err != nil {
		t.Fatalf("dial through the relay: %v", err)
	}
	defer c.Close()
	r.waitStats("the relay up", func(s Stats) bool { return s.ActiveTCP == 1 })

	mu.Lock()
	hc := host
	mu.Unlock()
	if !dialer {
		// The engine's own host socket, from its relay.
		r.e.poll.mu.Lock()
		for _, h := range r.e.poll.flows {
			if rl, ok := h.(*relay); ok {
				hc = rl.up
			}
		}
		r.e.poll.mu.Unlock()
	}
	if hc == nil {
		t.Fatal("no host connection dialled")
	}
	for opt, want := range map[int]int{unix.TCP_KEEPIDLE: 10, unix.TCP_KEEPINTVL: 2, unix.TCP_KEEPCNT: 3} {
		if got := sockoptInt(t, hc, unix.IPPROTO_TCP, opt); got != want {
			t.Errorf("host socket TCP option %d = %d, want %d", opt, got, want)
		}
	}
	if got := sockoptInt(t, hc, unix.SOL_SOCKET, unix.SO_KEEPALIVE); got != 1 {
		t.Errorf("host socket SO_KEEPALIVE = %d", got)
	}

	vanished.Store(true)
	t0 := clk.Now()
	at := func(d time.Duration) { clk.AdvanceTo(t0.Add(d)) }
	at(10*time.Second - time.Millisecond)
	if n := probes.Load(); n != 0 {
		t.Fatalf("%d probes before the idle time", n)
	}
	for i, d := range []time.Duration{10 * time.Second, 12 * time.Second, 14 * time.Second} {
		at(d)
		stacktest.WaitFor(t, "a keepalive probe", func() bool { return probes.Load() == int32(i+1) })
	}
	at(16*time.Second - time.Millisecond)
	if resets.Load() != 0 {
		t.Fatal("reset before the last probe's interval ran out")
	}
	at(16 * time.Second)
	stacktest.WaitFor(t, "the reset after 3 unanswered probes", func() bool { return resets.Load() == 1 })
	s := r.waitStats("the relay closed", func(s Stats) bool { return s.ActiveTCP == 0 })
	if ps := s.Pods; len(ps) > 0 {
		t.Fatalf("pod flows left: %+v", ps)
	}
	select {
	case err := <-srvErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("host side saw %v, want the relay's reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the host connection stayed open")
	}
	if n := probes.Load(); n != 3 {
		t.Fatalf("%d probes, want 3", n)
	}
}

func sockoptInt(t *testing.T, rc controller, level, opt int) int {
	t.Helper()
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// TestHostKeepAliveLeavesSysctlValues: a field equal to the netns's
// sysctl is not set on the engine's own host sockets (negative), any
// other is; a disabled keepalive stays disabled.
func TestHostKeepAliveLeavesSysctlValues(t *testing.T) {
	sysctl := func(v map[string]int) func(string) (int, bool) {
		return func(name string) (int, bool) { n, ok := v[name]; return n, ok }
	}
	kernel := sysctl(map[string]int{"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75, "tcp_keepalive_probes": 9})
	c := Config{KeepAliveIdle: DefaultKeepAliveIdle, KeepAliveInterval: DefaultKeepAliveInterval, KeepAliveCount: DefaultKeepAliveCount}
	if got := c.hostKeepAliveConfig(kernel); !got.Enable || got.Idle != -1 || got.Interval != -1 || got.Count != -1 {
		t.Errorf("defaults against the kernel's defaults: %+v, want enabled and every field -1", got)
	}
	c2 := Config{KeepAliveIdle: 10 * time.Second, KeepAliveInterval: 75 * time.Second, KeepAliveCount: 3}
	if got := c2.hostKeepAliveConfig(kernel); got.Idle != 10*time.Second || got.Interval != -1 || got.Count != 3 {
		t.Errorf("idle 10s, count 3: %+v, want idle and count set, interval -1", got)
	}
	if got := c.hostKeepAliveConfig(sysctl(nil)); got.Idle != DefaultKeepAliveIdle || got.Interval != DefaultKeepAliveInterval || got.Count != DefaultKeepAliveCount {
		t.Errorf("sysctls unreadable: %+v, want every field set", got)
	}
	off := Config{KeepAliveIdle: -1}
	if got := off.hostKeepAliveConfig(kernel); got.Enable {
		t.Errorf("disabled: %+v", got)
	}
}
