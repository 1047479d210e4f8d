package stacktest

// In-memory topologies of whole stacks (STYLE.md §8): stacks wired over
// link/pipe, optionally through link/fault, every link captured with
// link/pcap. This file imports the root netstack package, so only tests
// above the root (this package's own tests, the daemon's) may use the
// topologies; the packet builders in packet.go stay importable from every
// layer's external (_test) package.

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/fault"
	"github.com/cni-userstack/cni-userstack/netstack/link/pcap"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Addresses of the topologies.
var (
	// Pair: A 10.0.0.1/24 — B 10.0.0.2/24.
	PairA = netip.MustParsePrefix("10.0.0.1/24")
	PairB = netip.MustParsePrefix("10.0.0.2/24")
	// Chain: A 10.0.1.1/24 — 10.0.1.254/24 R 10.0.2.254/24 — 10.0.2.1/24 B.
	ChainA  = netip.MustParsePrefix("10.0.1.1/24")
	ChainRA = netip.MustParsePrefix("10.0.1.254/24")
	ChainRB = netip.MustParsePrefix("10.0.2.254/24")
	ChainB  = netip.MustParsePrefix("10.0.2.1/24")

	// With DualStack, IPv6 beside them (each NIC also gets its
	// link-local address): Pair: A fd00::1/64 — B fd00::2/64. Chain:
	// A fd00:1::1/64 — fd00:1::fe/64 R fd00:2::fe/64 — fd00:2::1/64 B.
	PairA6   = netip.MustParsePrefix("fd00::1/64")
	PairB6   = netip.MustParsePrefix("fd00::2/64")
	ChainA6  = netip.MustParsePrefix("fd00:1::1/64")
	ChainRA6 = netip.MustParsePrefix("fd00:1::fe/64")
	ChainRB6 = netip.MustParsePrefix("fd00:2::fe/64")
	ChainB6  = netip.MustParsePrefix("fd00:2::1/64")
)

// DefaultMTU is the links' MTU unless MTU says otherwise.
const DefaultMTU = 1500

// Node is one stack of a topology with the NICs the topology gave it, in
// link order, and their addresses.
type Node struct {
	*netstack.Stack
	Name  string
	NICs  []*dev.NIC
	Addrs []netip.Prefix
	// Addrs6 are the IPv6 addresses DualStack gave, in link order.
	Addrs6 []netip.Prefix
}

// Addr6 is the node's first IPv6 address (DualStack topologies).
func (n *Node) Addr6() netip.Addr { return n.Addrs6[0].Addr() }

// NIC is the node's first NIC.
func (n *Node) NIC() *dev.NIC { return n.NICs[0] }

// Addr is the node's first address.
func (n *Node) Addr() netip.Addr { return n.Addrs[0].Addr() }

// TopoOption configures Pair and Chain.
type TopoOption func(*topoConfig)

type topoConfig struct {
	clk       clock.Clock
	mtu       int
	faults    []fault.Option
	capture   bool
	dual      bool
	stackOpts []netstack.Option
}

// DualStack gives every NIC of the topology an IPv6 address too (the
// PairA6 ... ChainB6 prefixes) and, in Chain, IPv6 default routes via R
// with R forwarding IPv6.
func DualStack() TopoOption { return func(c *topoConfig) { c.dual = true } }

// WithClock runs every stack, fault delay and capture timestamp of the
// topology on clk (a clock.Manual in protocol tests). Without it the
// stacks share one real clock, stopped at cleanup.
func WithClock(clk clock.Clock) TopoOption { return func(c *topoConfig) { c.clk = clk } }

// MTU sets the links' MTU.
func MTU(n int) TopoOption { return func(c *topoConfig) { c.mtu = n } }

// Fault wraps the first stack's end of the first link (A's frames towards
// B or the router) with link/fault; add fault.OnReceive to hit the other
// direction too. The topology's clock drives fault.Delay.
func Fault(opts ...fault.Option) TopoOption {
	return func(c *topoConfig) { c.faults = append(c.faults, opts...) }
}

// StackOptions are passed to every netstack.New of the topology.
func StackOptions(opts ...netstack.Option) TopoOption {
	return func(c *topoConfig) { c.stackOpts = append(c.stackOpts, opts...) }
}

// NoCapture turns the pcap capture off (benchmarks).
func NoCapture() TopoOption { return func(c *topoConfig) { c.capture = false } }

// topology builds stacks and links for one test and tears them down.
type topology struct {
	t   testing.TB
	cfg topoConfig

	mu       sync.Mutex
	captures []*capture
}

type capture struct {
	name string
	buf  lockedBuffer
	w    *pcap.Writer
}

// lockedBuffer is the pcap Writer's sink; the Writer serialises writes,
// the lock makes the final read safe too.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}

func newTopology(t testing.TB, opts []TopoOption) *topology {
	t.Helper()
	cfg := topoConfig{mtu: DefaultMTU, capture: true}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.clk == nil {
		r := clock.NewReal()
		cfg.clk = r
		t.Cleanup(r.Close) // runs after the stacks' cleanups (LIFO)
	}
	tp := &topology{t: t, cfg: cfg}
	// Registered before any stack, so it runs after every stack closed:
	// the captures are complete.
	t.Cleanup(tp.dumpCaptures)
	return tp
}

// dumpCaptures writes each link's capture to a file when the test failed
// and logs the path. The directory is $STACKTEST_PCAP_DIR or a fresh
// directory under os.TempDir(): not t.TempDir, which is deleted when the
// test ends and would leave the logged path dangling.
func (tp *topology) dumpCaptures() {
	if !tp.t.Failed() {
		return
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if len(tp.captures) == 0 {
		return
	}
	dir := os.Getenv("STACKTEST_PCAP_DIR")
	if dir == "" {
		d, err := os.MkdirTemp("", "stacktest-"+sanitize(tp.t.Name())+"-")
		if err != nil {
			tp.t.Logf("pcap: %v", err)
			return
		}
		dir = d
	}
	for _, c := range tp.captures {
		p := filepath.Join(dir, sanitize(tp.t.Name())+"-"+c.name+".pcap")
		if err := os.WriteFile(p, c.buf.bytes(), 0o644); err != nil {
			tp.t.Logf("pcap: %v", err)
			continue
		}
		st := c.w.Stats()
		tp.t.Logf("pcap of link %s: %s (%+v)", c.name, p, st)
	}
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

// stack makes one stack, closed at cleanup.
func (tp *topology) stack(name string) *Node {
	opts := append([]netstack.Option{netstack.WithClock(tp.cfg.clk)}, tp.cfg.stackOpts...)
	s := netstack.New(opts...)
	tp.t.Cleanup(func() { s.Close() })
	return &Node{Stack: s, Name: name}
}

// link connects a and b over a pipe; the a side is captured (every frame
// on the wire, both directions) and, for the first link, wrapped with the
// faults. Each end gets its address; the NICs are up.
func (tp *topology) link(name string, a *Node, pa, pa6 netip.Prefix, b *Node, pb, pb6 netip.Prefix, faulty bool) {
	tp.t.Helper()
	ea, eb := pipe.New(tp.cfg.mtu)
	var epA link.Endpoint = ea
	if tp.cfg.capture {
		c := &capture{name: name}
		w, err := pcap.NewWriter(&c.buf, 0)
		if err != nil {
			tp.t.Fatalf("pcap: %v", err)
		}
		c.w = w
		tp.mu.Lock()
		tp.captures = append(tp.captures, c)
		tp.mu.Unlock()
		epA = pcap.Wrap(epA, w, tp.cfg.clk)
	}
	if faulty && len(tp.cfg.faults) > 0 {
		epA = fault.Wrap(epA, append([]fault.Option{fault.Clock(tp.cfg.clk)}, tp.cfg.faults...)...)
	}
	tp.attach(a, epA, pa, pa6, name)
	tp.attach(b, eb, pb, pb6, name)
}

func (tp *topology) attach(n *Node, ep link.Endpoint, p, p6 netip.Prefix, linkName string) {
	tp.t.Helper()
	nic, err := n.AddNIC(ep, netstack.NICConfig{Name: fmt.Sprintf("%s-%s", n.Name, linkName)})
	if err != nil {
		tp.t.Fatalf("%s: AddNIC: %v", n.Name, err)
	}
	if err := n.AddAddress(nic.ID(), p); err != nil {
		tp.t.Fatalf("%s: AddAddress %v: %v", n.Name, p, err)
	}
	n.NICs = append(n.NICs, nic)
	n.Addrs = append(n.Addrs, p)
	if tp.cfg.dual && p6.IsValid() {
		if err := n.AddAddress(nic.ID(), p6); err != nil {
			tp.t.Fatalf("%s: AddAddress %v: %v", n.Name, p6, err)
		}
		n.Addrs6 = append(n.Addrs6, p6)
	}
}

// Pair is two stacks over one pipe: A (PairA) and B (PairB), and with
// DualStack PairA6 and PairB6. Everything is torn down at the end of the
// test.
func Pair(t testing.TB, opts ...TopoOption) (a, b *Node) {
	t.Helper()
	tp := newTopology(t, opts)
	a, b = tp.stack("a"), tp.stack("b")
	tp.link("ab", a, PairA, PairA6, b, PairB, PairB6, true)
	tp.settle(map[*Node]int{a: 1, b: 1})
	return a, b
}

// settle waits until every node has processed the announcements its
// links' far ends sent when their addresses were added (links[n] of
// them): one gratuitous ARP each (RFC 5227 §3) and, with DualStack, two
// unsolicited Neighbor Advertisements (link-local and global, RFC 4861
// §7.2.6), which a node whose own addresses came later dropped
// (IPV6DISABLED, or IP_RPFILTER before its route back existed). A test then starts from a quiet topology: an
// announcement arriving during its first resolution would merge into
// the entry as Stale instead of the Reachable a reply makes. With faults
// on the link an announcement may be lost; then settle does not wait.
func (tp *topology) settle(links map[*Node]int) {
	tp.t.Helper()
	if len(tp.cfg.faults) > 0 {
		return
	}
	WaitFor(tp.t, "the address announcements", func() bool {
		for n, k := range links {
			st := n.Stats()
			na := st.Neigh.NDPInAdverts + st.Drops["IPV6DISABLED"] + st.Drops["IP_RPFILTER"]
			if st.Neigh.InRequests < uint64(k) || (tp.cfg.dual && na < uint64(2*k)) {
				return false
			}
		}
		return true
	})
}

// Chain is A — R — B: two pipes, R forwarding between them, A and B with
// default routes via R. Faults apply to A's link.
func Chain(t testing.TB, opts ...TopoOption) (a, r, b *Node) {
	t.Helper()
	tp := newTopology(t, opts)
	a, r, b = tp.stack("a"), tp.stack("r"), tp.stack("b")
	tp.link("ar", a, ChainA, ChainA6, r, ChainRA, ChainRA6, true)
	tp.link("rb", r, ChainRB, ChainRB6, b, ChainB, ChainB6, false)
	r.SetForwarding(true)
	if tp.cfg.dual {
		r.SetForwarding6(true)
		for _, n := range []struct {
			node *Node
			gw   netip.Prefix
		}{{a, ChainRA6}, {b, ChainRB6}} {
			err := n.node.AddRoute(route.Route{Dst: netip.MustParsePrefix("::/0"), Gateway: n.gw.Addr(),
				NIC: n.node.NIC().ID(), Type: route.Unicast})
			if err != nil {
				t.Fatalf("%s: IPv6 default route: %v", n.node.Name, err)
			}
		}
	}
	tp.settle(map[*Node]int{a: 1, r: 2, b: 1})
	for _, n := range []struct {
		node *Node
		gw   netip.Prefix
	}{{a, ChainRA}, {b, ChainRB}} {
		err := n.node.AddRoute(route.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: n.gw.Addr(),
			NIC: n.node.NIC().ID(), Type: route.Unicast})
		if err != nil {
			t.Fatalf("%s: default route: %v", n.node.Name, err)
		}
	}
	return a, r, b
}

// Addresses of PodNode, the daemon's shape of a node.
var (
	// PodRange holds the pods' addresses: pod i is PodRange's i+2nd
	// address (10.1.0.2, 10.1.0.3, ...).
	PodRange = netip.MustParsePrefix("10.1.0.0/24")
	// PodGateway is the stack's address on every pod link (a /32).
	PodGateway = netip.MustParseAddr("10.1.0.1")
	// UplinkHost and UplinkStack are the two ends of the uplink /30.
	UplinkHost  = netip.MustParsePrefix("169.254.100.1/30")
	UplinkStack = netip.MustParsePrefix("169.254.100.2/30")
)

// PodNodeTopo is a node as the daemon wires it: pods on point-to-point
// links to the stack, the stack's uplink to the host.
type PodNodeTopo struct {
	// Pods each have one NIC with their /32 address, the gateway as an
	// on-link /32 route and the default route via it (the CNI ptp
	// plugin's shape).
	Pods []*Node
	// Stack forwards: the gateway /32 and a /32 route on each pod link
	// (NICs 0..len(Pods)-1, proxy ARP for every address but the pod's,
	// strict rp_filter), the uplink last (UplinkStack, default route via
	// the host, rp_filter off).
	Stack *Node
	// Host forwards too: UplinkHost, PodRange routed via the stack.
	Host *Node
	// Uplink is the stack's uplink NIC.
	Uplink *dev.NIC
}

// PodNode builds pods (1..250) behind one stack and its host, every link
// captured. Netfilter is the test's to add, on any of them.
func PodNode(t testing.TB, pods int, opts ...TopoOption) *PodNodeTopo {
	t.Helper()
	if pods < 1 || pods > 250 {
		t.Fatalf("stacktest.PodNode: %d pods, want 1..250", pods)
	}
	tp := newTopology(t, opts)
	n := &PodNodeTopo{Stack: tp.stack("stack"), Host: tp.stack("host")}
	s := n.Stack
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("stacktest.PodNode: %s: %v", what, err)
		}
	}
	addr := PodRange.Addr().Next()
	for i := 0; i < pods; i++ {
		addr = addr.Next()
		pod := tp.stack(fmt.Sprintf("pod%d", i))
		tp.link(fmt.Sprintf("pod%d", i), pod, netip.PrefixFrom(addr, 32), netip.Prefix{}, s, netip.PrefixFrom(PodGateway, 32), netip.Prefix{}, i == 0)
		pn, sn := pod.NIC().ID(), s.NICs[i].ID()
		must("pod gateway route", pod.AddRoute(route.Route{Dst: netip.PrefixFrom(PodGateway, 32), NIC: pn, Type: route.Unicast}))
		must("pod default route", pod.AddRoute(route.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: PodGateway, NIC: pn, Type: route.Unicast}))
		must("pod route", s.AddRoute(route.Route{Dst: netip.PrefixFrom(addr, 32), NIC: sn, Src: PodGateway, Type: route.Unicast}))
		podAddr := addr
		s.SetProxyARP(sn, func(target netip.Addr) bool { return target != podAddr })
		s.SetRPFilter(sn, true)
		n.Pods = append(n.Pods, pod)
	}
	tp.link("uplink", s, UplinkStack, netip.Prefix{}, n.Host, UplinkHost, netip.Prefix{}, false)
	n.Uplink = s.NICs[len(s.NICs)-1]
	must("stack default route", s.AddRoute(route.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: UplinkHost.Addr(), NIC: n.Uplink.ID(), Type: route.Unicast}))
	s.SetRPFilter(n.Uplink.ID(), false)
	s.SetForwarding(true)
	must("host pod route", n.Host.AddRoute(route.Route{Dst: PodRange, Gateway: UplinkStack.Addr(), NIC: n.Host.NIC().ID(), Type: route.Unicast}))
	n.Host.SetForwarding(true)
	settle := map[*Node]int{s: pods + 1, n.Host: 1}
	for _, p := range n.Pods {
		settle[p] = 1
	}
	tp.settle(settle)
	return n
}

// WaitFor polls cond until it holds, failing the test after 5 s of wall
// time. It bounds waits for the NICs' goroutines to carry packets; it is
// not protocol timing, which the manual clock drives.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}
