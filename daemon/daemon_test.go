package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/pkg/types"
)

// fakeAttacher records calls; failAttach makes Attach fail for an ID.
type fakeAttacher struct {
	mu         sync.Mutex
	nextNIC    int
	attached   map[string]int
	removed    []string
	failAttach map[string]bool
	presence   Presence
	reconciled int
	closed     bool
}

func newFake() *fakeAttacher {
	return &fakeAttacher{attached: map[string]int{}, failAttach: map[string]bool{}}
}

func (f *fakeAttacher) Attach(a *api.Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failAttach[a.ID] {
		return errors.New("injected NIC failure")
	}
	f.nextNIC++
	f.attached[a.ID] = f.nextNIC
	a.NIC, a.StackMAC = f.nextNIC, "02:00:00:00:00:01"
	return nil
}

func (f *fakeAttacher) Detach(a *api.Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.attached, a.ID)
	return nil
}

func (f *fakeAttacher) Unplug(a *api.Attachment) (func() error, error) {
	return nil, f.Detach(a)
}

func (f *fakeAttacher) RemoveLinks(a *api.Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, a.ID)
	return nil
}

func (f *fakeAttacher) Presence([]api.Attachment) Presence { return f.presence }
func (f *fakeAttacher) Reconcile() error                   { f.reconciled++; return nil }
func (f *fakeAttacher) Status(st *api.Status) {
	st.Stack.Counters = map[string]uint64{"IpInReceives": 7}
}
func (f *fakeAttacher) Close() error { f.closed = true; return nil }

func req(ctr, network string, last byte) api.AttachRequest {
	return api.AttachRequest{
		ContainerID: ctr, IfName: "eth0", Network: network, PodNetNS: "/var/run/netns/" + ctr,
		HostIfName: veth.HostIfName(ctr, "eth0"), PodMAC: fmt.Sprintf("02:00:00:00:01:%02x", last),
		IP: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, 0, last}), 24), Gateway: netip.MustParseAddr("10.1.0.1"),
		Range: netip.MustParsePrefix("10.1.0.0/24"), MTU: 1500, Mode: api.ModeRoute,
	}
}

// serve runs a daemon with a fake attacher on a unix socket in a temp dir.
func serve(t *testing.T, f *fakeAttacher, stateDir string) (*Daemon, *api.Client, context.CancelFunc) {
	t.Helper()
	return serveWith(t, f, nil, stateDir)
}

// serveWith is serve with a proxy engine (nil: none).
func serveWith(t *testing.T, f *fakeAttacher, px Proxy, stateDir string) (*Daemon, *api.Client, context.CancelFunc) {
	t.Helper()
	store, err := OpenStore(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "run", "d.sock")
	d := New(Config{Socket: sock, StateDir: stateDir, Version: "test", Proxy: px}, store, f)
	if err := d.Recover(); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v, want 0600", fi.Mode(), err)
	}
	if di, err := os.Stat(filepath.Dir(sock)); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v %v, want 0700", di.Mode(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("Serve did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return d, api.NewClient(sock, 5*time.Second), stop
}

func code(err error) uint {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestAPIAttachDetachListStatus(t *testing.T) {
	f := newFake()
	stateDir := t.TempDir()
	_, c, _ := serve(t, f, stateDir)
	ctx := context.Background()

	a, err := c.Attach(ctx, req("ctr-a", "n1", 5))
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != veth.HostIfName("ctr-a", "eth0") || a.NIC != 1 || a.Created.IsZero() {
		t.Fatalf("attach answer: %+v", a)
	}
	// The record is on disk when Attach answers.
	if _, err := os.Stat(filepath.Join(stateDir, "attachments", a.ID+".json")); err != nil {
		t.Fatalf("record not written before the answer: %v", err)
	}
	if _, err := c.Attach(ctx, req("ctr-a", "n1", 5)); code(err) != api.CodeAttachmentExists {
		t.Fatalf("duplicate attach: %v, want code %d", err, api.CodeAttachmentExists)
	}
	bad := req("ctr-b", "n1", 6)
	bad.MTU = 10
	if _, err := c.Attach(ctx, bad); code(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "mtu") {
		t.Fatalf("bad mtu: %v", err)
	}
	bad = req("ctr-b", "n1", 6)
	bad.HostIfName = "usffffffffffff0"
	if _, err := c.Attach(ctx, bad); code(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("wrong host ifname: %v", err)
	}
	f.failAttach[veth.HostIfName("ctr-c", "eth0")] = true
	if _, err := c.Attach(ctx, req("ctr-c", "n1", 7)); code(err) != api.CodeStack || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("stack failure: %v, want code %d", err, api.CodeStack)
	}
	if _, err := c.Attach(ctx, req("ctr-b", "n1", 6)); err != nil {
		t.Fatal(err)
	}

	l, err := c.List(ctx)
	if err != nil || len(l) != 2 {
		t.Fatalf("list: %v %v", l, err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Attachments != 2 || st.PID != os.Getpid() || st.Stack.Counters["IpInReceives"] != 7 || st.Version != "test" {
		t.Fatalf("status: %+v %v", st, err)
	}

	r, err := c.Detach(ctx, api.DetachRequest{ContainerID: "ctr-a", IfName: "eth0"})
	if err != nil || !r.Found || r.Attachment.ContainerID != "ctr-a" {
		t.Fatalf("detach: %+v %v", r, err)
	}
	r, err = c.Detach(ctx, api.DetachRequest{ContainerID: "ctr-a", IfName: "eth0"})
	if err != nil || r.Found {
		t.Fatalf("second detach: %+v %v, want success with found=false", r, err)
	}
	if _, err := c.Detach(ctx, api.DetachRequest{}); code(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("empty detach: %v", err)
	}
	if _, ok := f.attached[veth.HostIfName("ctr-a", "eth0")]; ok {
		t.Fatalf("detach did not reach the attacher")
	}
	if _, err := os.Stat(filepath.Join(stateDir, "attachments", veth.HostIfName("ctr-a", "eth0")+".json")); !os.IsNotExist(err) {
		t.Fatalf("record not removed: %v", err)
	}
}

func TestAPIGC(t *testing.T) {
	f := newFake()
	_, c, _ := serve(t, f, t.TempDir())
	ctx := context.Background()
	for i, ctr := range []string{"keep", "drop1", "drop2"} {
		if _, err := c.Attach(ctx, req(ctr, "n1", byte(10+i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Attach(ctx, req("other-net", "n2", 20)); err != nil {
		t.Fatal(err)
	}
	r, err := c.GC(ctx, api.GCRequest{Network: "n1", Valid: []api.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	if err != nil || len(r.Errors) > 0 {
		t.Fatalf("gc: %+v %v", r, err)
	}
	var got []string
	for _, a := range r.Removed {
		got = append(got, a.ContainerID)
	}
	slices.Sort(got)
	if !reflect.DeepEqual(got, []string{"drop1", "drop2"}) {
		t.Fatalf("removed %v", got)
	}
	if len(f.removed) != 2 {
		t.Fatalf("links removed for %v, want 2", f.removed)
	}
	l, _ := c.List(ctx)
	if len(l) != 2 {
		t.Fatalf("left %v, want keep and other-net", l)
	}
	if _, err := c.GC(ctx, api.GCRequest{}); code(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("gc without network: %v", err)
	}
}

func TestAPIBadRequests(t *testing.T) {
	_, c, _ := serve(t, newFake(), t.TempDir())
	hc := &net.Dialer{}
	conn, err := hc.Dial("unix", c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/attach HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{garbage}")
	b := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := conn.Read(b)
	if resp := string(b[:n]); !strings.Contains(resp, "400") || !strings.Contains(resp, `"code":6`) {
		t.Fatalf("garbage body answer: %s", resp)
	}
}

func TestClientUnreachable(t *testing.T) {
	c := api.NewClient(filepath.Join(t.TempDir(), "none.sock"), time.Second)
	_, err := c.Status(context.Background())
	if !api.IsUnreachable(err) || code(err) != types.ErrTryAgainLater {
		t.Fatalf("unreachable: %v", err)
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	_, c, _ := serve(t, newFake(), t.TempDir())
	if _, err := Listen(c.Socket); err == nil || !strings.Contains(err.Error(), "another daemon") {
		t.Fatalf("second Listen: %v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	os.WriteFile(path, []byte("mine"), 0o600)
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "mine" {
		t.Fatalf("the file was touched")
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	// A unix listener's Close unlinks the file; leave a stale file instead.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatal(err)
	}
	l2, err := Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l2.Close()
}

// TestRecoverRestart: attachments survive a restart: present ones are
// re-attached, the rest removed (with their links when still there).
func TestRecoverRestart(t *testing.T) {
	stateDir := t.TempDir()
	f := newFake()
	_, c, stop := serve(t, f, stateDir)
	ctx := context.Background()
	for i, ctr := range []string{"alive", "netns-gone", "link-gone"} {
		if _, err := c.Attach(ctx, req(ctr, "n1", byte(10+i))); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	if !f.closed {
		t.Fatalf("Serve did not close the attacher")
	}

	f2 := newFake()
	f2.presence = Presence{
		NetNS: map[string]bool{"/var/run/netns/alive": true, "/var/run/netns/link-gone": true},
		Links: map[string]bool{veth.HostIfName("alive", "eth0"): true, veth.HostIfName("netns-gone", "eth0"): true},
	}
	d2, c2, _ := serve(t, f2, stateDir)
	l, err := c2.List(ctx)
	if err != nil || len(l) != 1 || l[0].ContainerID != "alive" || l[0].NIC == 0 {
		t.Fatalf("after restart: %v %v", l, err)
	}
	if !reflect.DeepEqual(f2.removed, []string{veth.HostIfName("netns-gone", "eth0")}) {
		t.Fatalf("links removed at recovery: %v, want only netns-gone's", f2.removed)
	}
	if f2.reconciled != 1 {
		t.Fatalf("reconcile ran %d times", f2.reconciled)
	}
	recs, _, _ := d2.store.Load()
	if len(recs) != 1 || recs[0].ContainerID != "alive" {
		t.Fatalf("records after recovery: %v", recs)
	}
}

func TestPlanRecovery(t *testing.T) {
	mk := func(id, ns string) api.Attachment {
		return api.Attachment{ID: id, AttachRequest: api.AttachRequest{HostIfName: id, PodNetNS: ns}}
	}
	recs := []api.Attachment{mk("a", "/ns/a"), mk("b", "/ns/b"), mk("c", "/ns/c"), mk("d", "/ns/d")}
	for _, tc := range []struct {
		name     string
		p        Presence
		reattach []string
		remove   []string
		links    []string
	}{
		{"everything present", Presence{NetNS: map[string]bool{"/ns/a": true, "/ns/b": true, "/ns/c": true, "/ns/d": true},
			Links: map[string]bool{"a": true, "b": true, "c": true, "d": true}}, []string{"a", "b", "c", "d"}, nil, nil},
		{"nothing present", Presence{}, nil, []string{"a", "b", "c", "d"}, nil},
		{"mixed", Presence{NetNS: map[string]bool{"/ns/a": true, "/ns/c": true},
			Links: map[string]bool{"a": true, "b": true, "d": false}}, []string{"a"}, []string{"b", "c", "d"}, []string{"b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := PlanRecovery(recs, tc.p)
			ids := func(l []api.Attachment) []string {
				var out []string
				for _, a := range l {
					out = append(out, a.ID)
				}
				return out
			}
			var links []string
			for id, on := range plan.RemoveLink {
				if on {
					links = append(links, id)
				}
			}
			slices.Sort(links)
			if !reflect.DeepEqual(ids(plan.Reattach), tc.reattach) || !reflect.DeepEqual(ids(plan.Remove), tc.remove) || !reflect.DeepEqual(links, tc.links) {
				t.Fatalf("plan %v / %v / %v, want %v / %v / %v", ids(plan.Reattach), ids(plan.Remove), links, tc.reattach, tc.remove, tc.links)
			}
		})
	}
}

func TestStoreAtomicWriteAndLoad(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := &api.Attachment{AttachRequest: req("c1", "n1", 5), ID: veth.HostIfName("c1", "eth0"), NIC: 3, Created: time.Unix(1e9, 0).UTC()}
	if err := s.Put(a); err != nil {
		t.Fatal(err)
	}
	a.NIC = 4 // overwrite in place
	if err := s.Put(a); err != nil {
		t.Fatal(err)
	}
	// Debris of a crashed write, a torn record, a record under the wrong
	// name and a foreign file.
	os.WriteFile(filepath.Join(s.Dir(), ".x.123.tmp"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(s.Dir(), "torn.json"), []byte(`{"id":"torn",`), 0o600)
	os.WriteFile(filepath.Join(s.Dir(), "renamed.json"), []byte(`{"id":"other"}`), 0o600)
	os.WriteFile(filepath.Join(s.Dir(), "README"), []byte("hi"), 0o600)
	recs, bad, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].NIC != 4 || recs[0].IP != a.IP || recs[0].Gateway != a.Gateway || !recs[0].Created.Equal(a.Created) {
		t.Fatalf("loaded %+v", recs)
	}
	slices.Sort(bad)
	if !reflect.DeepEqual(bad, []string{"renamed.json", "torn.json"}) {
		t.Fatalf("bad records %v", bad)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), ".x.123.tmp")); !os.IsNotExist(err) {
		t.Fatalf("temp debris not removed")
	}
	ents, _ := os.ReadDir(s.Dir())
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
	if err := s.Delete(a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(a.ID); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	for _, id := range []string{"", "../x", ".hidden", "a/b"} {
		if err := s.Put(&api.Attachment{ID: id}); err == nil {
			t.Fatalf("Put accepted id %q", id)
		}
	}
}

func TestUplinkAddrs(t *testing.T) {
	h, s, err := UplinkAddrs(netip.MustParsePrefix("169.254.100.1/30"))
	if err != nil || h != netip.MustParsePrefix("169.254.100.1/30") || s != netip.MustParsePrefix("169.254.100.2/30") {
		t.Fatalf("got %v %v %v", h, s, err)
	}
	for _, bad := range []string{"169.254.100.0/31", "169.254.100.0/32", "fe80::/64"} {
		if _, _, err := UplinkAddrs(netip.MustParsePrefix(bad)); err == nil {
			t.Fatalf("%s accepted", bad)
		}
	}
	h6, s6, err := UplinkAddrs6(netip.MustParsePrefix("fd00:1:2:3::/64"))
	if err != nil || h6 != netip.MustParsePrefix("fd00:1:2:3::1/64") || s6 != netip.MustParsePrefix("fd00:1:2:3::2/64") {
		t.Fatalf("UplinkAddrs6: %v %v %v", h6, s6, err)
	}
	for _, bad := range []string{"10.0.0.0/8", "fd00::/127", "fe80::/64", "ff02::/16", "::ffff:10.0.0.0/120", "::1/128"} {
		if _, _, err := UplinkAddrs6(netip.MustParsePrefix(bad)); err == nil {
			t.Fatalf("UplinkAddrs6 %s accepted", bad)
		}
	}
}

func TestParseServeFlags(t *testing.T) {
	f, err := ParseServeFlags([]string{"--socket", "/tmp/s", "--state-dir", "/tmp/d", "--stack-netns", "x", "--log-level", "debug",
		"--uplink-subnet", "169.254.9.0/30", "--uplink-host-ifname", "up9"}, os.Stderr)
	if err != nil || f.Socket != "/tmp/s" || f.StateDir != "/tmp/d" || f.StackNetNS != "x" || f.UplinkHostIfName != "up9" {
		t.Fatalf("%+v %v", f, err)
	}
	def, err := ParseServeFlags(nil, os.Stderr)
	if err != nil || def.Socket != api.DefaultSocket || def.StateDir != DefaultStateDir || def.StackNetNS != "cni-userstack" ||
		def.UplinkSubnet != "169.254.100.0/30" || def.UplinkSubnet6 != "fd57:7c5d:8e2a:75::/64" || def.UplinkHostIfName != "cni-us-uplink" {
		t.Fatalf("defaults %+v %v", def, err)
	}
	if def.ResolvConf != "/etc/resolv.conf" || def.ProxyConnectTimeout != 10*time.Second || def.ProxyUDPIdleTimeout != time.Minute || def.ProxyMaxFlowsPerPod != 4096 {
		t.Fatalf("proxy defaults %+v", def)
	}
	px, err := ParseServeFlags([]string{"--resolv-conf", "/tmp/resolv", "--proxy-connect-timeout", "3s", "--proxy-udp-idle-timeout", "90s",
		"--proxy-max-flows-per-pod", "10"}, os.Stderr)
	if err != nil || px.ResolvConf != "/tmp/resolv" || px.ProxyConnectTimeout != 3*time.Second || px.ProxyUDPIdleTimeout != 90*time.Second || px.ProxyMaxFlowsPerPod != 10 {
		t.Fatalf("proxy flags %+v %v", px, err)
	}
	if f6, err := ParseServeFlags([]string{"--uplink-subnet6", "fd00:99::/120"}, os.Stderr); err != nil || f6.UplinkSubnet6 != "fd00:99::/120" {
		t.Fatalf("--uplink-subnet6: %+v %v", f6, err)
	}
	for _, args := range [][]string{{"--uplink-subnet", "x"}, {"--log-level", "loud"}, {"extra"}, {"--nope"},
		{"--uplink-subnet6", "x"}, {"--uplink-subnet6", "169.254.9.0/30"}, {"--uplink-subnet6", "fd00::/127"}, {"--uplink-subnet6", "fe80::/64"},
		{"--resolv-conf", ""}, {"--proxy-connect-timeout", "0s"}, {"--proxy-connect-timeout", "soon"}, {"--proxy-udp-idle-timeout", "-1s"},
		{"--proxy-max-flows-per-pod", "0"}} {
		if _, err := ParseServeFlags(args, &strings.Builder{}); err == nil {
			t.Fatalf("%v accepted", args)
		}
	}
}

// fakeProxy records the engine calls; failAdd makes AddPod fail for an ID
// (with port mappings only, when failMappingsOnly).
type fakeProxy struct {
	mu               sync.Mutex
	pods             map[string]*api.Attachment
	removed          []string
	failAdd          map[string]error
	failMappingsOnly bool
	closed           bool
}

func newFakeProxy() *fakeProxy {
	return &fakeProxy{pods: map[string]*api.Attachment{}, failAdd: map[string]error{}}
}

func (p *fakeProxy) AddPod(a *api.Attachment) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.failAdd[a.ID]; err != nil && (!p.failMappingsOnly || len(a.PortMappings) > 0) {
		return err
	}
	if _, ok := p.pods[a.ID]; ok {
		return fmt.Errorf("pod %s added twice", a.ID)
	}
	cp := *a
	p.pods[a.ID] = &cp
	return nil
}

func (p *fakeProxy) RemovePod(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pods, id)
	p.removed = append(p.removed, id)
}

func (p *fakeProxy) Stats() *api.ProxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &api.ProxyStats{TCPAccepted: 3, Pods: map[string]api.ProxyPodStats{}}
	for id := range p.pods {
		st.Pods[id] = api.ProxyPodStats{ActiveFlows: 1}
	}
	return st
}

func (p *fakeProxy) Close() error { p.closed = true; return nil }

func (p *fakeProxy) pod(id string) *api.Attachment {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[id]
}

func proxyReq(ctr string, last byte, pms ...api.PortMapping) api.AttachRequest {
	r := req(ctr, "n1", last)
	r.Mode = ""
	r.RoutedRanges = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	r.PortMappings = pms
	return r
}

// TestAPIProxyMode: a proxy-mode attach (the default) adds the pod to the
// engine with its normalised port mappings after the stack attach; an
// engine refusal (a host port in use) undoes the stack attach and fails
// with code 102; detach and GC remove the pod from the engine; status
// carries the engine's counters; route mode never touches the engine.
func TestAPIProxyMode(t *testing.T) {
	f, px := newFake(), newFakeProxy()
	stateDir := t.TempDir()
	_, c, stop := serveWith(t, f, px, stateDir)
	ctx := context.Background()

	a, err := c.Attach(ctx, proxyReq("ctr-a", 5, api.PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "TCP"}))
	if err != nil {
		t.Fatal(err)
	}
	if a.Mode != api.ModeProxy || len(a.RoutedRanges) != 1 {
		t.Fatalf("attach answer: %+v", a)
	}
	got := px.pod(a.ID)
	if got == nil || got.NIC == 0 || !reflect.DeepEqual(got.PortMappings, []api.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}) {
		t.Fatalf("engine pod: %+v (the stack attach must come first, mappings normalised)", got)
	}

	busy := veth.HostIfName("ctr-b", "eth0")
	px.failAdd[busy] = fmt.Errorf("listen tcp 0.0.0.0:8080: bind: %w", syscall.EADDRINUSE)
	_, err = c.Attach(ctx, proxyReq("ctr-b", 6, api.PortMapping{HostPort: 8080, ContainerPort: 80}))
	if code(err) != api.CodeStack || !strings.Contains(err.Error(), "host port") || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("host port in use: %v, want code %d naming the port", err, api.CodeStack)
	}
	if _, ok := f.attached[busy]; ok {
		t.Fatalf("stack attach not undone after the engine refused the pod")
	}
	if _, err := os.Stat(filepath.Join(stateDir, "attachments", busy+".json")); !os.IsNotExist(err) {
		t.Fatalf("record written for a refused attach: %v", err)
	}
	px.failAdd[busy] = errors.New("engine closed")
	if _, err := c.Attach(ctx, proxyReq("ctr-b", 6)); code(err) != api.CodeStack || !strings.Contains(err.Error(), "engine closed") {
		t.Fatalf("engine failure: %v", err)
	}
	delete(px.failAdd, busy)

	if _, err := c.Attach(ctx, req("ctr-route", "n1", 7)); err != nil {
		t.Fatal(err)
	}
	if px.pod(veth.HostIfName("ctr-route", "eth0")) != nil {
		t.Fatalf("route-mode pod added to the proxy engine")
	}
	if _, err := c.Attach(ctx, proxyReq("ctr-gc", 8)); err != nil {
		t.Fatal(err)
	}

	st, err := c.Status(ctx)
	if err != nil || st.Proxy == nil || st.Proxy.TCPAccepted != 3 || len(st.Proxy.Pods) != 2 {
		t.Fatalf("status: %+v %v", st.Proxy, err)
	}

	if _, err := c.Detach(ctx, api.DetachRequest{ContainerID: "ctr-a", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if px.pod(a.ID) != nil {
		t.Fatalf("detach left the pod in the engine")
	}
	if _, err := c.GC(ctx, api.GCRequest{Network: "n1", Valid: []api.GCAttachment{{ContainerID: "ctr-route", IfName: "eth0"}}}); err != nil {
		t.Fatal(err)
	}
	if px.pod(veth.HostIfName("ctr-gc", "eth0")) != nil {
		t.Fatalf("GC left the pod in the engine")
	}
	for _, id := range px.removed {
		if id == veth.HostIfName("ctr-route", "eth0") {
			t.Fatalf("route-mode pod removed from the engine")
		}
	}
	stop()
	if !px.closed || !f.closed {
		t.Fatalf("Serve closed proxy %v, attacher %v", px.closed, f.closed)
	}
}

// TestAPIProxyModeWithoutEngine: a daemon without the engine refuses
// proxy-mode attachments before touching the stack.
func TestAPIProxyModeWithoutEngine(t *testing.T) {
	f := newFake()
	_, c, _ := serve(t, f, t.TempDir())
	if _, err := c.Attach(context.Background(), proxyReq("ctr-a", 5)); code(err) != api.CodeStack || !strings.Contains(err.Error(), "without the proxy engine") {
		t.Fatalf("proxy attach without an engine: %v", err)
	}
	if len(f.attached) != 0 {
		t.Fatalf("stack touched: %v", f.attached)
	}
}

// TestRecoverProxyPods: after a restart every re-attached proxy-mode pod
// is added to the engine again with its port mappings; one whose mappings
// cannot listen any more is added without them (its egress keeps
// working); one the engine refuses outright is removed like a failed
// re-attach.
func TestRecoverProxyPods(t *testing.T) {
	stateDir := t.TempDir()
	f, px := newFake(), newFakeProxy()
	_, c, stop := serveWith(t, f, px, stateDir)
	ctx := context.Background()
	pm := api.PortMapping{HostPort: 8080, ContainerPort: 80}
	for i, ctr := range []string{"back", "port-taken", "refused"} {
		pm.HostPort = 8080 + i
		if _, err := c.Attach(ctx, proxyReq(ctr, byte(10+i), pm)); err != nil {
			t.Fatal(err)
		}
	}
	stop()

	f2, px2 := newFake(), newFakeProxy()
	f2.presence = Presence{NetNS: map[string]bool{}, Links: map[string]bool{}}
	for _, ctr := range []string{"back", "port-taken", "refused"} {
		f2.presence.NetNS["/var/run/netns/"+ctr] = true
		f2.presence.Links[veth.HostIfName(ctr, "eth0")] = true
	}
	px2.failMappingsOnly = true
	px2.failAdd[veth.HostIfName("port-taken", "eth0")] = syscall.EADDRINUSE
	_, c2, _ := serveWith(t, f2, px2, stateDir)
	if p := px2.pod(veth.HostIfName("back", "eth0")); p == nil || len(p.PortMappings) != 1 || p.PortMappings[0].HostPort != 8080 {
		t.Fatalf("port mappings not re-established: %+v", p)
	}
	if p := px2.pod(veth.HostIfName("port-taken", "eth0")); p == nil || len(p.PortMappings) != 0 {
		t.Fatalf("pod whose host port is taken: %+v, want it added without mappings", p)
	}
	l, err := c2.List(ctx)
	if err != nil || len(l) != 3 {
		t.Fatalf("after restart: %v %v", l, err)
	}
	// A third start where the engine refuses a pod altogether.
	f3, px3 := newFake(), newFakeProxy()
	f3.presence = f2.presence
	px3.failAdd[veth.HostIfName("refused", "eth0")] = errors.New("engine broken")
	store, err := OpenStore(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	d3 := New(Config{Socket: filepath.Join(t.TempDir(), "d3.sock"), StateDir: stateDir, Proxy: px3}, store, f3)
	if err := d3.Recover(); err != nil {
		t.Fatal(err)
	}
	if _, ok := f3.attached[veth.HostIfName("refused", "eth0")]; ok {
		t.Fatalf("refused pod left attached to the stack")
	}
	if !slices.Contains(f3.removed, veth.HostIfName("refused", "eth0")) || len(d3.List()) != 2 {
		t.Fatalf("refused pod: links removed %v, attachments %v", f3.removed, d3.List())
	}
}
