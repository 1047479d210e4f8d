package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// The test topology: a "pod" stack (10.0.0.2/24, default route via
// 10.0.0.1) over a pipe to the engine's stack (10.0.0.1/24, the gateway)
// with netfilter and a divert hook like the daemon's. The pod's outside
// world is 203.0.113.0/24: the rig's Dialer maps those addresses to
// 127.0.0.1 in this process, where the tests run kernel servers.
var (
	podAddr = netip.MustParseAddr("10.0.0.2")
	gwAddr  = netip.MustParseAddr("10.0.0.1")
	outside = netip.MustParsePrefix("203.0.113.0/24")
	// blackhole is an outside address whose connects never complete
	// (the rig's Dialer waits for the context); unreach fails at once
	// with EHOSTUNREACH.
	blackhole = netip.MustParseAddr("203.0.113.250")
	unreach   = netip.MustParseAddr("203.0.113.251")
	server    = netip.MustParseAddr("203.0.113.9")
	loopback  = netip.MustParseAddr("127.0.0.1")
)

type rig struct {
	t    testing.TB
	pod  *netstack.Stack
	node *netstack.Stack
	e    *Engine
	// resolv is the engine's resolv.conf.
	resolv string
}

// newRig builds the topology and an engine; mod adjusts its Config.
func newRig(t testing.TB, mod func(*Config)) *rig {
	t.Helper()
	return newRigWith(t, mod)
}

// newRigWith is newRig with options for both stacks (a manual clock).
func newRigWith(t testing.TB, mod func(*Config), opts ...netstack.Option) *rig {
	t.Helper()
	return newRigLink(t, mod, nil, opts...)
}

// gsoPipe makes the rig's link offer what a veth with PACKET_VNET_HDR
// does (partial checksums, 64 KiB segments), as in production.
var gsoPipe = []pipe.Option{pipe.WithCaps(link.CapTxChecksumPartial | link.CapRxChecksum | link.CapGSO | link.CapGRO)}

// newRigLink is newRigWith with options for the pod's link.
func newRigLink(t testing.TB, mod func(*Config), linkOpts []pipe.Option, opts ...netstack.Option) *rig {
	t.Helper()
	pod, node := netstack.New(opts...), netstack.New(opts...)
	t.Cleanup(func() { pod.Close(); node.Close() })
	// The pipe's default queue: 100 concurrent flows overflow it, so
	// the relay is also shown working through TCP loss recovery.
	ea, eb := pipe.New(stacktest.DefaultMTU, linkOpts...)
	pnic, err := pod.AddNIC(ea, netstack.NICConfig{Name: "pod0"})
	if err != nil {
		t.Fatal(err)
	}
	nnic, err := node.AddNIC(eb, netstack.NICConfig{Name: "veth-pod"})
	if err != nil {
		t.Fatal(err)
	}
	must(t, pod.AddAddress(pnic.ID(), netip.PrefixFrom(podAddr, 24)))
	must(t, node.AddAddress(nnic.ID(), netip.PrefixFrom(gwAddr, 24)))
	must(t, pod.AddRoute(route.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: gwAddr, NIC: pnic.ID(), Type: route.Unicast}))

	nf := node.EnableNetfilter(netfilter.Config{})
	podNIC := nnic.ID()
	// The daemon's proxy-divert decision, reduced to the test: a NEW
	// flow from the pod link to an address that is not the stack's.
	node.Hooks().Register(netfilter.Ops{Hook: netfilter.PreRouting, Priority: netfilter.PriMangle, Name: "proxy-divert",
		Fn: func(skb *buf.SKB, st netfilter.State) netfilter.Verdict {
			if st.In != podNIC {
				return netfilter.Accept()
			}
			if cs, ok := nf.CtState(skb); !ok || cs&netfilter.CtNew == 0 {
				return netfilter.Accept()
			}
			ih, err := header.CheckIPv4(skb.Bytes())
			if err != nil {
				return netfilter.Accept()
			}
			if res, ok := node.FIB().Lookup(ih.Dst()); ok && (res.Type == route.Local || res.Type == route.Broadcast) {
				return netfilter.Accept()
			}
			nf.Divert(skb)
			return netfilter.Accept()
		}})

	r := &rig{t: t, pod: pod, node: node, resolv: filepath.Join(t.TempDir(), "resolv.conf")}
	must(t, os.WriteFile(r.resolv, []byte("nameserver 127.0.0.1\n"), 0o644))
	// Intercepted TCP connects as in production (tcpSYN's own
	// non-blocking connects, mapDst), the rest through testDialer; both
	// send the outside addresses to loopback.
	cfg := Config{Stack: node, ConnectTimeout: 2 * time.Second, ResolvConf: r.resolv, Dialer: testDialer,
		mapDst: testMapDst(t)}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	r.e = e
	return r
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// testDialer maps the outside prefix to loopback, keeping the port.
func testDialer(ctx context.Context, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	switch {
	case ap.Addr() == blackhole:
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	case ap.Addr() == unreach:
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}
	case outside.Contains(ap.Addr()):
		ap = netip.AddrPortFrom(loopback, ap.Port())
	}
	var d net.Dialer
	return d.DialContext(ctx, network, ap.String())
}

// testMapDst is testDialer's mapping for the engine's own connects
// (tcpSYN, dialUDP): the outside prefix to loopback, unreach to the
// limited broadcast address (TCP's connect fails with ENETUNREACH, UDP's
// with EACCES without SO_BROADCAST, before any packet leaves), blackhole to
// a loopback listener whose accept queue is full, so the kernel drops
// the SYNs (ListenOverflows) and the connect never completes.
func testMapDst(t testing.TB) func(netip.AddrPort) netip.AddrPort {
	var once sync.Once
	var hole netip.AddrPort
	return func(ap netip.AddrPort) netip.AddrPort {
		switch {
		case ap.Addr() == unreach:
			return netip.AddrPortFrom(netip.MustParseAddr("255.255.255.255"), ap.Port())
		case ap.Addr() == blackhole:
			once.Do(func() { hole = fullListener(t) })
			return hole
		case outside.Contains(ap.Addr()):
			return netip.AddrPortFrom(loopback, ap.Port())
		}
		return ap
	}
}

// fullListener is a loopback listener with a backlog of 0 whose one
// accept queue slot a connection fills.
func fullListener(t testing.TB) netip.AddrPort {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	must(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	must(t, unix.Listen(fd, 0))
	sa, err := unix.Getsockname(fd)
	must(t, err)
	ap := netip.AddrPortFrom(loopback, uint16(sa.(*unix.SockaddrInet4).Port))
	c, err := net.DialTimeout("tcp4", ap.String(), 2*time.Second)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return ap
}

// dialPod connects from the pod to the outside server's port.
func (r *rig) dialPod(ctx context.Context, dst netip.Addr, port uint16) (net.Conn, error) {
	c, err := r.pod.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(dst, port))
	if err != nil {
		return nil, err
	}
	return c, nil
}

// waitStats polls the engine's stats until cond holds (5 s).
func (r *rig) waitStats(what string, cond func(Stats) bool) Stats {
	r.t.Helper()
	var s Stats
	stacktest.WaitFor(r.t, what, func() bool { s = r.e.Stats(); return cond(s) })
	return s
}

// kernelListener listens on 127.0.0.1:0 and runs serve per connection.
func kernelListener(t testing.TB, serve func(c *net.TCPConn)) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		// A failed test may leave relays open: unblock the servers.
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// closedPort returns a loopback port nothing listens on (TCP or UDP).
func closedPort(t testing.TB, network string) uint16 {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		must(t, err)
		p := c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
		return uint16(p)
	default:
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		must(t, err)
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		return uint16(p)
	}
}

// engineGoroutines counts goroutines running in the engine's (non-test)
// code.
func engineGoroutines() (int, string) {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	var found []string
	for _, g := range strings.Split(b.String(), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			line = strings.TrimSpace(line)
			if strings.Contains(line, "/daemon/proxy/") && !strings.Contains(line, "_test.go") {
				n++
				found = append(found, g)
				break
			}
		}
	}
	return n, strings.Join(found, "\n\n")
}

func waitNoEngineGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, dump := engineGoroutines()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d engine goroutines left:\n%s", n, dump)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func itoa(p uint16) string { return fmt.Sprint(p) }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// dump describes what a test that found a transfer stuck needs to tell
// where it stopped: every TCP connection of both stacks (DebugDump) and
// every relay's pumps and host socket. It reads the relays without
// their pump locks (taking one would make a kick that finds it taken
// leave its event to the dump).
func (r *rig) dump() string {
	var b strings.Builder
	b.WriteString("pod stack:\n" + r.pod.TCP().DebugDump())
	b.WriteString("node stack:\n" + r.node.TCP().DebugDump())
	var flows []*flowHandle
	r.e.mu.Lock()
	for _, a := range r.e.addrs {
		for f := range a.flows {
			flows = append(flows, f)
		}
	}
	r.e.mu.Unlock()
	for _, f := range flows {
		f.mu.Lock()
		closers := append([]aborter(nil), f.closers...)
		f.mu.Unlock()
		for _, c := range closers {
			if rl, ok := c.(*relay); ok {
				b.WriteString(rl.debugString())
			}
		}
	}
	return b.String()
}

// debugString is a relay's state for dump.
func (r *relay) debugString() string {
	inq, outq := -1, -1
	if r.up != nil {
		r.up.Control(func(fd uintptr) {
			inq, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			outq, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		})
	}
	return fmt.Sprintf("relay: phase=%d state=%#x downReady=%v sndFull=%v hostRdHup=%v outArmed=%v again=[%v %v] podVec=%d host inq=%d outq=%d\n",
		r.phase.Load(), r.state.Load(), r.downReady.Load(), r.sndFull.Load(), r.hostRdHup.Load(), r.outArmed.Load(),
		r.dirs[toHost].again.Load(), r.dirs[toPod].again.Load(), r.podVec, inq, outq)
}
