package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func node(name string, cidrs []string, ips ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	n.Spec.PodCIDRs = cidrs
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	return n
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestPodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    *corev1.Node
		want []netip.Prefix
		err  string
	}{
		{"none yet", node("a", nil), nil, ""},
		{"dual stack", node("a", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}), []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}, ""},
		{"legacy podCIDR only", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a"}, Spec: corev1.NodeSpec{PodCIDR: "10.1.0.0/24"}}, []netip.Prefix{pfx("10.1.0.0/24")}, ""},
		{"malformed", node("a", []string{"10.244.1.0/33"}), nil, "pod CIDR"},
		{"host bits set", node("a", []string{"10.244.1.1/24"}), nil, "not a network address"},
	} {
		got, err := PodCIDRs(tc.n)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v %v, want %v", tc.name, got, err, tc.want)
		}
	}
}

func TestDesiredRoutes(t *testing.T) {
	own := []netip.Prefix{pfx("10.244.0.0/24")}
	nodes := []*corev1.Node{
		node("self", []string{"10.244.0.0/24"}, "192.168.1.1"),
		node("b", []string{"10.244.2.0/24", "fd00::/64"}, "fd01::2", "192.168.1.2"),
		node("a", []string{"10.244.1.0/24"}, "192.168.1.3", "192.168.9.9"),
		node("c-no-cidr", nil, "192.168.1.4"),
		node("d-overlaps-self", []string{"10.244.0.0/25"}, "192.168.1.5"),
		node("e-overlaps-a", []string{"10.244.1.0/24"}, "192.168.1.6"),
		node("f-no-ip", []string{"10.244.6.0/24"}),
		node("g-v4-only", []string{"fd00:6::/64"}, "192.168.1.7"),
	}
	got, problems := DesiredRoutes("self", own, nodes)
	want := []Route{
		{Dst: pfx("10.244.1.0/24"), Via: addr("192.168.1.3"), Node: "a"}, // first InternalIP of the family
		{Dst: pfx("10.244.2.0/24"), Via: addr("192.168.1.2"), Node: "b"},
		{Dst: pfx("fd00::/64"), Via: addr("fd01::2"), Node: "b"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("routes\n got %v\nwant %v", got, want)
	}
	joined := strings.Join(problems, "\n")
	for _, w := range []string{"d-overlaps-self: pod CIDR 10.244.0.0/25 overlaps 10.244.0.0/24 of node self",
		"e-overlaps-a: pod CIDR 10.244.1.0/24 overlaps 10.244.1.0/24 of node a", "f-no-ip: no InternalIP", "g-v4-only: no InternalIP"} {
		if !strings.Contains(joined, w) {
			t.Errorf("problems lack %q:\n%s", w, joined)
		}
	}
	if len(problems) != 4 {
		t.Errorf("%d problems, want 4:\n%s", len(problems), joined)
	}
}

func TestPlanRoutes(t *testing.T) {
	ours := func(dst, via string) TableRoute {
		return TableRoute{Dst: pfx(dst), Via: addr(via), Proto: NodeRouteProtocol}
	}
	desired := []Route{
		{Dst: pfx("10.244.1.0/24"), Via: addr("192.168.1.3"), Node: "a"}, // present: nothing to do
		{Dst: pfx("10.244.2.0/24"), Via: addr("192.168.1.2"), Node: "b"}, // ours via an old IP: repoint
		{Dst: pfx("10.244.3.0/24"), Via: addr("192.168.1.4"), Node: "c"}, // missing: install
		{Dst: pfx("10.244.4.0/24"), Via: addr("192.168.1.5"), Node: "d"}, // a static route is there: conflict
	}
	table := []TableRoute{
		ours("10.244.1.0/24", "192.168.1.3"),
		ours("10.244.2.0/24", "192.168.1.99"),
		{Dst: pfx("10.244.4.0/24"), Via: addr("192.168.1.50"), Proto: 4},     // static (RTPROT_STATIC)
		ours("10.244.9.0/24", "192.168.1.9"),                                 // its node is gone: delete
		{Dst: pfx("10.244.8.0/24"), Via: addr("192.168.1.8"), Proto: 0x75},   // not ours: kept
		{Dst: pfx("192.168.1.0/24"), Proto: 2},                               // the kernel's: kept
		{Dst: pfx("169.254.100.0/30"), Via: netip.Addr{}, Proto: 2},          // kept
		{Dst: pfx("10.244.10.0/24"), Via: addr("192.168.1.10"), Proto: 0x76}, // ours, not desired
	}
	p := PlanRoutes(desired, table)
	if want := []Route{desired[1], desired[2]}; !slices.Equal(p.Replace, want) {
		t.Errorf("replace %v, want %v", p.Replace, want)
	}
	if want := []TableRoute{table[3], table[7]}; !slices.Equal(p.Delete, want) {
		t.Errorf("delete %v, want %v", p.Delete, want)
	}
	if len(p.Conflicts) != 1 || p.Conflicts[0].Want != desired[3] || p.Conflicts[0].Owner != 4 {
		t.Errorf("conflicts %+v", p.Conflicts)
	}
	for _, d := range p.Delete {
		if !d.Owned() {
			t.Errorf("plan deletes %v, which it does not own", d)
		}
	}
	// A converged table plans nothing.
	if p := PlanRoutes(desired[:1], table[:1]); len(p.Replace)+len(p.Delete)+len(p.Conflicts) != 0 {
		t.Errorf("converged: %+v", p)
	}
}

// fakeTable is a routing table in memory that behaves as the kernel's
// main table for what the controller does: replace by destination,
// delete matching the protocol, refuse a gateway off the connected nets.
type fakeTable struct {
	mu        sync.Mutex
	routes    map[netip.Prefix]TableRoute
	connected []netip.Prefix
	calls     []string
	failList  error
}

func newFakeTable(connected ...string) *fakeTable {
	f := &fakeTable{routes: map[netip.Prefix]TableRoute{}}
	for _, c := range connected {
		p := pfx(c)
		f.connected = append(f.connected, p)
		f.routes[p] = TableRoute{Dst: p, Proto: 2} // RTPROT_KERNEL
	}
	return f
}

func (f *fakeTable) List() ([]TableRoute, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failList != nil {
		return nil, f.failList
	}
	var out []TableRoute
	for _, r := range f.routes {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out, nil
}

func (f *fakeTable) Replace(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "replace "+r.String())
	if !slices.ContainsFunc(f.connected, func(p netip.Prefix) bool { return p.Contains(r.Via) }) {
		return fmt.Errorf("network is unreachable: %w", ErrUnreachable)
	}
	f.routes[r.Dst] = TableRoute{Dst: r.Dst, Via: r.Via, Proto: NodeRouteProtocol}
	return nil
}

func (f *fakeTable) Delete(r TableRoute) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete "+r.Dst.String())
	if cur, ok := f.routes[r.Dst]; ok && cur.Proto == NodeRouteProtocol {
		delete(f.routes, r.Dst)
	}
	return nil
}

func (f *fakeTable) set(r TableRoute) {
	f.mu.Lock()
	f.routes[r.Dst] = r
	f.mu.Unlock()
}

// snapshot is the table as "dst via gw proto" lines.
func (f *fakeTable) snapshot() string {
	l, _ := f.List()
	var s []string
	for _, r := range l {
		s = append(s, fmt.Sprintf("%v via %v proto %#x", r.Dst, r.Via, r.Proto))
	}
	return strings.Join(s, "\n")
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// eventually polls cond until it holds or 10 s pass: the informer
// delivers events on its own goroutine.
func eventually(t *testing.T, what string, cond func() bool, state func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in 10s; state:\n%s", what, state())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestControllerLifecycle drives the controller through client-go's fake
// clientset: no route while this node has no pod CIDR; a route per other
// node once it has; repointed when a node's InternalIP changes; removed
// when the node is deleted; a foreign route to the same destination is
// never touched; a hand-deleted route comes back at the resync.
func TestControllerLifecycle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewSimpleClientset(node("self", nil, "192.168.1.1"), node("b", []string{"10.244.2.0/24"}, "192.168.1.2"))
	tbl := newFakeTable("192.168.1.0/24")
	c := NewController(cs.CoreV1().Nodes(), ControllerConfig{NodeName: "self", Table: tbl, ResyncPeriod: 200 * time.Millisecond, Logger: discard()})
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	nodes := cs.CoreV1().Nodes()

	// No CIDR for us: nothing installed however often it reconciles.
	eventually(t, "two reconciles", func() bool { return c.Status().Reconciles >= 2 }, tbl.snapshot)
	if st := c.Status(); len(st.Routes) != 0 || st.PodCIDRs != nil || strings.Contains(tbl.snapshot(), "0x76") {
		t.Fatalf("routed before this node had a pod CIDR: %+v\n%s", st, tbl.snapshot())
	}

	// Our CIDR arrives: b is routed.
	self, _ := nodes.Get(ctx, "self", metav1.GetOptions{})
	self.Spec.PodCIDRs, self.Spec.PodCIDR = []string{"10.244.0.0/24"}, "10.244.0.0/24"
	if _, err := nodes.Update(ctx, self, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	has := func(line string) func() bool {
		return func() bool { return strings.Contains(tbl.snapshot(), line) }
	}
	eventually(t, "route to b", has("10.244.2.0/24 via 192.168.1.2 proto 0x76"), tbl.snapshot)

	// A new node with a foreign route already to its CIDR: left alone.
	tbl.set(TableRoute{Dst: pfx("10.244.3.0/24"), Via: addr("192.168.1.77"), Proto: 4})
	if _, err := nodes.Create(ctx, node("c", []string{"10.244.3.0/24"}, "192.168.1.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "conflict counted", func() bool { return c.Status().Conflicts > 0 }, tbl.snapshot)
	if !has("10.244.3.0/24 via 192.168.1.77 proto 0x4")() {
		t.Fatalf("foreign route was touched:\n%s", tbl.snapshot())
	}

	// b's InternalIP changes: the route follows.
	b, _ := nodes.Get(ctx, "b", metav1.GetOptions{})
	b.Status.Addresses[0].Address = "192.168.1.22"
	if _, err := nodes.UpdateStatus(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "route repointed", has("10.244.2.0/24 via 192.168.1.22 proto 0x76"), tbl.snapshot)

	// Deleted by hand: back at the resync.
	tbl.Delete(TableRoute{Dst: pfx("10.244.2.0/24")})
	eventually(t, "route restored", has("10.244.2.0/24 via 192.168.1.22 proto 0x76"), tbl.snapshot)

	// A node off our L2 network: counted as an error, the rest stands.
	if _, err := nodes.Create(ctx, node("far", []string{"10.244.5.0/24"}, "172.31.0.5"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "unreachable node reported", func() bool {
		return strings.Contains(c.Status().LastError, "not on this node's L2 network")
	}, tbl.snapshot)

	// b is deleted: its route goes; the foreign route and the kernel's stay.
	if err := nodes.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "route removed", func() bool { return !has("10.244.2.0/24")() }, tbl.snapshot)
	want := "10.244.3.0/24 via 192.168.1.77 proto 0x4\n192.168.1.0/24 via invalid IP proto 0x2"
	if got := tbl.snapshot(); got != want {
		t.Fatalf("table after delete:\n%s\nwant:\n%s", got, want)
	}
	if st := c.Status(); len(st.Routes) != 0 {
		t.Fatalf("status routes %v after every routable node went", st.Routes)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestControllerDualStack: a dual-stack node routes each pod CIDR of
// another node via that node's InternalIP of the same family, and runs
// Prepare with its own CIDRs first; a Prepare that fails (the host's IPv6
// forwarding cannot be turned on) fails the pass and installs nothing.
func TestControllerDualStack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewSimpleClientset(
		node("self", []string{"10.244.0.0/24", "fd00:10:244::/64"}, "192.168.1.1", "fd00:1::1"),
		node("b", []string{"fd00:10:244:2::/64", "10.244.2.0/24"}, "fd00:1::2", "192.168.1.2"))
	tbl := newFakeTable("192.168.1.0/24", "fd00:1::/64")
	var mu sync.Mutex
	var prepared []netip.Prefix
	fail := errors.New("forwarding: read-only file system")
	c := NewController(cs.CoreV1().Nodes(), ControllerConfig{NodeName: "self", Table: tbl, ResyncPeriod: 100 * time.Millisecond, Logger: discard(),
		Prepare: func(own []netip.Prefix) error {
			mu.Lock()
			defer mu.Unlock()
			prepared = own
			return fail
		}})
	go c.Run(ctx)
	eventually(t, "failed pass", func() bool { return strings.Contains(c.Status().LastError, "read-only") }, tbl.snapshot)
	if strings.Contains(tbl.snapshot(), "0x76") {
		t.Fatalf("routes installed although Prepare failed:\n%s", tbl.snapshot())
	}
	mu.Lock()
	if want := []netip.Prefix{pfx("10.244.0.0/24"), pfx("fd00:10:244::/64")}; !slices.Equal(prepared, want) {
		t.Errorf("Prepare got %v, want %v", prepared, want)
	}
	fail = nil
	mu.Unlock()
	has := func(line string) func() bool {
		return func() bool { return strings.Contains(tbl.snapshot(), line) }
	}
	eventually(t, "IPv4 route", has("10.244.2.0/24 via 192.168.1.2 proto 0x76"), tbl.snapshot)
	eventually(t, "IPv6 route", has("fd00:10:244:2::/64 via fd00:1::2 proto 0x76"), tbl.snapshot)
	if st := c.Status(); len(st.Routes) != 2 {
		t.Fatalf("status routes %v, want one per family", st.Routes)
	}
}

// TestControllerStartRemovesStale: routes of nodes deleted while no daemon
// ran are removed at start; an error listing the table is reported and
// retried.
func TestControllerStartRemovesStale(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewSimpleClientset(node("self", []string{"10.244.0.0/24"}, "192.168.1.1"))
	tbl := newFakeTable("192.168.1.0/24")
	tbl.set(TableRoute{Dst: pfx("10.244.7.0/24"), Via: addr("192.168.1.7"), Proto: NodeRouteProtocol})
	tbl.failList = errors.New("netlink: boom")
	c := NewController(cs.CoreV1().Nodes(), ControllerConfig{NodeName: "self", Table: tbl, ResyncPeriod: 100 * time.Millisecond, Logger: discard()})
	go c.Run(ctx)
	eventually(t, "list error reported", func() bool { return c.Status().Errors > 0 }, tbl.snapshot)
	if st := c.Status(); !strings.Contains(st.LastError, "boom") {
		t.Fatalf("last error %q", st.LastError)
	}
	tbl.mu.Lock()
	tbl.failList = nil
	tbl.mu.Unlock()
	eventually(t, "stale route removed", func() bool { return !strings.Contains(tbl.snapshot(), "10.244.7.0") }, tbl.snapshot)
}

func TestWaitPodCIDRs(t *testing.T) {
	cs := fake.NewSimpleClientset()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	got := make(chan []netip.Prefix, 1)
	go func() {
		c, err := WaitPodCIDRs(ctx, cs.CoreV1().Nodes(), "n1", 5*time.Millisecond, log)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	nodes := cs.CoreV1().Nodes()
	time.Sleep(30 * time.Millisecond) // a few polls without the object
	if _, err := nodes.Create(ctx, node("n1", nil, "192.168.1.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n, _ := nodes.Get(ctx, "n1", metav1.GetOptions{})
	n.Spec.PodCIDRs = []string{"10.244.3.0/24"}
	nodes.Update(ctx, n, metav1.UpdateOptions{})
	if c := <-got; !slices.Equal(c, []netip.Prefix{pfx("10.244.3.0/24")}) {
		t.Fatalf("got %v", c)
	}
	if !strings.Contains(logs.String(), "waiting for this node's pod CIDR") || !strings.Contains(logs.String(), "not registered node") {
		t.Fatalf("the wait did not say why:\n%s", logs.String())
	}

	// A node that never gets one: the context's error, with the reason.
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	nodes.Create(ctx, node("n2", nil, "192.168.1.2"), metav1.CreateOptions{})
	_, err := WaitPodCIDRs(short, cs.CoreV1().Nodes(), "n2", 5*time.Millisecond, log)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "--allocate-node-cidrs") {
		t.Fatalf("err %v", err)
	}
}
