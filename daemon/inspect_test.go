package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/containernetworking/cni/pkg/types"
)

// stackDaemon is a daemon over a real StackAttacher on in-memory links,
// serving its API on a unix socket.
type stackDaemon struct {
	d    *Daemon
	a    *StackAttacher
	k    *pipeKernel
	c    *api.Client
	sock string
	stop context.CancelFunc
}

func newStackDaemon(t *testing.T) *stackDaemon {
	t.Helper()
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "run", "d.sock")
	d := New(Config{Socket: sock, StateDir: t.TempDir(), Version: "test", Logger: discardLogger()}, store, a)
	l, err := startup(d, sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return &stackDaemon{d: d, a: a, k: k, c: api.NewClient(sock, 5*time.Second), sock: sock, stop: stop}
}

// attachPod attaches a route-mode pod with Kubernetes names and returns
// its attachment and the pod's own stack on the far end.
func (s *stackDaemon) attachPod(t *testing.T, ctr, namespace, name string, last byte) (*api.Attachment, *netstack.Stack) {
	t.Helper()
	r := req(ctr, "n1", last)
	r.PodMAC = podMAC(last).String()
	r.PodNamespace, r.PodName = namespace, name
	at, err := s.c.Attach(context.Background(), r)
	if err != nil {
		t.Fatalf("attach %s: %v", ctr, err)
	}
	return at, endStack(t, s.k.peer(r.HostIfName), podMAC(last), r.IP, r.Gateway)
}

// TestInspectEndpoints reads a stack with two pods through every inspect
// endpoint of the API.
func TestInspectEndpoints(t *testing.T) {
	s := newStackDaemon(t)
	ctx := context.Background()
	atA, podA := s.attachPod(t, "ctr-a", "ns1", "web", 5)
	atB, podB := s.attachPod(t, "ctr-b", "", "", 6)
	gw := netip.MustParseAddr("10.1.0.1")
	if err := ping(podA, gw, 10); err != nil {
		t.Fatal(err)
	}
	if err := ping(podB, netip.MustParseAddr("10.1.0.5"), 10); err != nil {
		t.Fatal(err)
	}

	links, err := s.c.Links(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, l := range links {
		kinds[l.Name] = l.Kind + " " + l.Pod.String()
	}
	if kinds[UplinkStackIfName] != "uplink " || kinds[atA.ID] != "pod ns1/web" || kinds[atB.ID] != "pod ctr-b" {
		t.Fatalf("links: %v", kinds)
	}

	rs, err := s.c.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var podRoute, local, def bool
	for _, r := range rs {
		switch {
		case r.Table == api.TableMain && r.Dst == netip.MustParsePrefix("10.1.0.5/32") && r.Dev == atA.ID && r.Scope == "link" && r.Pod == "ns1/web":
			podRoute = true
		case r.Table == api.TableLocal && r.Type == "local" && r.Dst.Addr() == gw && r.NIC == atB.NIC:
			local = true
		case r.Dst.Bits() == 0 && r.Gateway == netip.MustParseAddr("169.254.100.1") && r.Dev == UplinkStackIfName:
			def = true
		}
	}
	if !podRoute || !local || !def {
		t.Fatalf("routes (pod %v, local %v, default %v): %+v", podRoute, local, def, rs)
	}

	ns, err := s.c.Neighbours(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[netip.Addr]string{}
	for _, n := range ns {
		states[n.Addr] = n.State + " " + n.MAC + " " + n.Pod
	}
	if states[netip.MustParseAddr("10.1.0.5")] != "PERMANENT "+podMAC(5).String()+" ns1/web" {
		t.Fatalf("neighbours: %v", states)
	}

	// A TCP connection from pod A to a listener in the stack.
	ln, err := s.a.Stack().ListenTCP(netip.AddrPortFrom(gw, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl, err := podA.DialTCP(dctx, netip.AddrPort{}, netip.AddrPortFrom(gw, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := cl.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(srv, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	so, err := s.c.Sockets(ctx, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	var est, listen bool
	for _, x := range so.Sockets {
		switch {
		case x.State == "LISTEN" && x.Local.Port() == 8080:
			listen = true
		case x.State == "ESTABLISHED" && x.Local == netip.AddrPortFrom(gw, 8080) && x.Remote.Addr() == netip.MustParseAddr("10.1.0.5"):
			est = x.TCP != nil && x.TCP.BytesReceived == 5
		}
		if x.Proto != "tcp" {
			t.Errorf("proto=tcp returned %+v", x)
		}
	}
	if !est || !listen {
		t.Fatalf("sockets (established %v, listener %v): %+v", est, listen, so.Sockets)
	}
	if _, err := s.c.Sockets(ctx, "sctp"); code(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("proto=sctp: %v", err)
	}

	ct, err := s.c.Conntrack(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	var flow bool
	for _, e := range ct.Entries {
		if e.Proto == "tcp" && e.Original.Dst == gw && e.Original.DstPort == 8080 && e.State == "ESTABLISHED" {
			flow = true
		}
	}
	if !flow || ct.Count != len(ct.Entries) || ct.Max == 0 {
		t.Fatalf("conntrack: %+v", ct)
	}
	if ct, err := s.c.Conntrack(ctx, false); err != nil || len(ct.Entries) != 0 || ct.Count == 0 {
		t.Fatalf("conntrack without entries: %+v %v", ct, err)
	}

	st, err := s.c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters["IcmpInEchos"] == 0 || st.TCP["ESTABLISHED"] != 1 || st.TCP["LISTEN"] != 1 || st.Neigh["PERMANENT"] != 2 ||
		st.Attached[api.ModeRoute] != 2 || st.Conntrack == nil || len(st.NICs) != 3 {
		t.Fatalf("stats: %+v", st)
	}
	for _, d := range st.Drops {
		if d.Layer == "" || d.Layer == "unknown" {
			t.Errorf("drop %+v without a layer", d)
		}
	}
}

// TestCaptureEndpoint: a capture of one pod's link with a filter streams
// a pcap file whose records are that pod's echo; bad requests are refused
// before anything streams; at most MaxCaptures run at once.
func TestCaptureEndpoint(t *testing.T) {
	s := newStackDaemon(t)
	ctx := context.Background()
	_, podA := s.attachPod(t, "ctr-a", "ns1", "web", 5)
	_, podB := s.attachPod(t, "ctr-b", "", "", 6)
	gw := netip.MustParseAddr("10.1.0.1")
	if err := ping(podA, gw, 10); err != nil { // ARP resolved before the capture
		t.Fatal(err)
	}

	cs, err := s.c.Capture(ctx, api.CaptureRequest{Pods: []string{"ns1/web"}, Filter: "icmp", Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	if cs.NICs == "" || !strings.Contains(cs.NICs, veth5ID()) {
		t.Fatalf("capture NICs %q", cs.NICs)
	}
	if err := ping(podB, gw, 3); err != nil { // another pod: not captured
		t.Fatal(err)
	}
	if err := ping(podA, gw, 3); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(cs.Body)
	cs.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	r, err := pcapgo.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		data, _, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if src := netip.AddrFrom4([4]byte(data[26:30])); src != netip.MustParseAddr("10.1.0.5") && src != gw {
			t.Errorf("captured a packet from %v", src)
		}
		n++
	}
	if n != 2 || cs.Trailer.Get(api.TrailerCaptured) != "2" || cs.Trailer.Get(api.TrailerDropped) != "0" {
		t.Fatalf("%d records, trailers %v", n, cs.Trailer)
	}

	for _, bad := range []api.CaptureRequest{
		{Filter: "host 300.0.0.1"},
		{Pods: []string{"nobody"}},
		{NICs: []string{"eth99"}},
		{Snaplen: 1 << 30},
	} {
		if _, err := s.c.Capture(ctx, bad); code(err) != types.ErrInvalidNetworkConfig {
			t.Errorf("capture %+v: %v, want code 7", bad, err)
		}
	}

	var open []*api.CaptureStream
	defer func() {
		for _, c := range open {
			c.Body.Close()
		}
	}()
	for i := 0; i < api.MaxCaptures; i++ {
		c, err := s.c.Capture(ctx, api.CaptureRequest{})
		if err != nil {
			t.Fatalf("capture %d: %v", i, err)
		}
		open = append(open, c)
	}
	if _, err := s.c.Capture(ctx, api.CaptureRequest{}); code(err) != types.ErrTryAgainLater {
		t.Fatalf("capture past the limit: %v, want code 11", err)
	}
	// Shutting the daemon down ends running captures: their streams end.
	s.stop()
	for _, c := range open {
		if _, err := io.Copy(io.Discard, c.Body); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("capture stream at shutdown: %v", err)
		}
	}
}

func veth5ID() string { return req("ctr-a", "n1", 5).HostIfName }

// gatedAttacher holds Presence (the first step of recovery) until gate is
// closed.
type gatedAttacher struct {
	*fakeAttacher
	gate chan struct{}
}

func (g *gatedAttacher) Presence(recs []api.Attachment) Presence {
	<-g.gate
	return g.fakeAttacher.Presence(recs)
}

// TestReadyOnlyAfterRecovery: while start-up recovery runs, /readyz says
// not ready and /healthz fails (the API is not up); once it finished and
// the API listens, both pass and the recovered attachment is there.
func TestReadyOnlyAfterRecovery(t *testing.T) {
	stateDir := t.TempDir()
	store, err := OpenStore(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	r := req("ctr-r", "n1", 9)
	if err := store.Put(&api.Attachment{AttachRequest: r, ID: r.HostIfName, NIC: 3}); err != nil {
		t.Fatal(err)
	}
	f := newFake()
	f.presence = Presence{NetNS: map[string]bool{r.PodNetNS: true}, Links: map[string]bool{r.HostIfName: true}}
	g := &gatedAttacher{fakeAttacher: f, gate: make(chan struct{})}
	sock := filepath.Join(t.TempDir(), "d.sock")
	d := New(Config{Socket: sock, StateDir: stateDir, Logger: discardLogger()}, store, g)
	mr := startMetrics("127.0.0.1:0", "test", discardLogger())
	defer mr.close()
	if mr.srv == nil {
		t.Fatalf("metrics server: %+v", mr.status)
	}
	mr.attach(d)
	base := "http://" + mr.srv.Addr()
	get := func(path string) int {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	type result struct {
		l   net.Listener
		err error
	}
	started := make(chan result, 1)
	go func() {
		l, err := startup(d, sock)
		started <- result{l, err}
	}()
	for i := 0; i < 3; i++ { // recovery is held at its first step
		if c := get("/readyz"); c != http.StatusServiceUnavailable {
			t.Fatalf("/readyz during recovery: %d", c)
		}
		if c := get("/healthz"); c != http.StatusServiceUnavailable {
			t.Fatalf("/healthz during recovery: %d", c)
		}
		if d.Ready() {
			t.Fatal("ready during recovery")
		}
	}
	close(g.gate)
	res := <-started
	if res.err != nil {
		t.Fatal(res.err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, res.l) }()
	defer func() { cancel(); <-done }()
	if c := get("/readyz"); c != http.StatusOK {
		t.Fatalf("/readyz after recovery: %d", c)
	}
	if c := get("/healthz"); c != http.StatusOK {
		t.Fatalf("/healthz after recovery: %d", c)
	}
	if l := d.List(); len(l) != 1 || l[0].ID != r.HostIfName {
		t.Fatalf("recovered: %+v", l)
	}

	// Healthz fails while the API socket is gone from its path.
	moved := sock + ".moved"
	if err := os.Rename(sock, moved); err != nil {
		t.Fatal(err)
	}
	if c := get("/healthz"); c != http.StatusServiceUnavailable {
		t.Fatalf("/healthz without the socket: %d", c)
	}
	if err := os.Rename(moved, sock); err != nil {
		t.Fatal(err)
	}
	if c := get("/healthz"); c != http.StatusOK {
		t.Fatalf("/healthz with the socket back: %d", c)
	}
}

// TestHealthChecksLinks: an attachment whose NIC left the stack makes the
// daemon unhealthy.
func TestHealthChecksLinks(t *testing.T) {
	s := newStackDaemon(t)
	at, _ := s.attachPod(t, "ctr-a", "", "", 5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.d.Health(ctx); err != nil {
		t.Fatalf("healthy daemon: %v", err)
	}
	if err := s.a.Stack().RemoveNIC(at.NIC); err != nil {
		t.Fatal(err)
	}
	if err := s.d.Health(ctx); err == nil || !strings.Contains(err.Error(), at.ID) {
		t.Fatalf("health with a pod's NIC gone: %v", err)
	}
}
