package e2e

// End-to-end tests of the plugin and the daemon driven through libcni (the
// library containerd and CRI-O use) with the reference host-local IPAM and
// portmap. Each test has its own daemon socket, state dir, stack netns,
// uplink (host interface name and link-local /30), pod subnet and IPAM data
// dir; its daemon is killed and its namespaces and links removed in
// t.Cleanup, even on failure.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon"
	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { cnitest.Main(m) }

// cniEnv is one test's private node: daemon, stack netns, uplink, network.
type cniEnv struct {
	t        *testing.T
	bin      string
	cni      *libcni.CNIConfig
	network  string
	socket   string
	stateDir string
	stackNS  string
	uplinkIf string
	uplink   netip.Prefix // the /30
	subnet   netip.Prefix // the pod range
	ipamDir  string
	logFile  string
	daemon   *exec.Cmd
	waitErr  chan error
	// serveArgs are extra flags for `cni-userstack serve`.
	serveArgs []string
	// daemonNetNS, when set, is the netns path the daemon runs in (its
	// "host" side: uplink, host routes, host sockets) instead of this
	// test's netns.
	daemonNetNS string
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func newCNIEnv(t *testing.T) *cniEnv {
	t.Helper()
	cnitest.RequireRoot(t)
	requireCmd(t, "ping")
	bin := cnitest.BuildPlugins(t)
	r := randBytes(4)
	dir := t.TempDir()
	e := &cniEnv{
		t:        t,
		bin:      bin,
		cni:      cnitest.CNI(t, bin),
		network:  cnitest.UniqueName(t, "net"),
		socket:   filepath.Join(dir, "run", "daemon.sock"),
		stateDir: filepath.Join(dir, "state"),
		stackNS:  cnitest.UniqueName(t, "usstack"),
		uplinkIf: "usu" + hex.EncodeToString(r)[:8],
		uplink:   netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 101 + r[0]%150, r[1] &^ 3}), 30),
		subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100 + r[2]%100, r[3], 0}), 24),
		ipamDir:  filepath.Join(dir, "ipam"),
		logFile:  filepath.Join(dir, "daemon.log"),
	}
	if len(e.network) > 60 {
		e.network = e.network[:60]
	}
	t.Cleanup(e.cleanup)
	return e
}

// cleanup kills whatever daemon serves the socket and removes the uplink
// (its host routes go with it) and the stack netns (its veths go with it).
func (e *cniEnv) cleanup() {
	e.killDaemon(syscall.SIGKILL)
	if pid := e.statusPID(); pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 5*time.Second)
	}
	if err := veth.UplinkTeardown(e.uplinkIf); err != nil {
		e.t.Errorf("cleanup: %v", err)
	}
	if err := veth.DeleteNetNS(e.stackNS); err != nil {
		e.t.Errorf("cleanup: %v", err)
	}
	// The claim files a killed daemon leaves (a clean exit removes them).
	os.Remove(filepath.Join(daemon.DefaultLockDir, "stack-"+e.stackNS+".lock"))
	os.Remove(filepath.Join(daemon.DefaultLockDir, "uplink-"+e.uplinkIf+".lock"))
	if e.t.Failed() {
		if b, err := os.ReadFile(e.logFile); err == nil {
			e.t.Logf("daemon log:\n%s", tail(string(b), 8000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func waitGone(pid int, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		// Reap it if it is our child (autostart made it the plugin's, which
		// exited, so it is init's; then Kill(0) turns ESRCH once reaped).
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *cniEnv) client() *api.Client { return api.NewClient(e.socket, 5*time.Second) }

func (e *cniEnv) statusPID() int {
	st, err := e.client().Status(context.Background())
	if err != nil {
		return 0
	}
	return st.PID
}

// startDaemon runs `cni-userstack serve` for this env and waits until it
// answers (10 s).
func (e *cniEnv) startDaemon() {
	e.t.Helper()
	logf, err := os.OpenFile(e.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	// Metrics on a port of their own (127.0.0.1:0): tests and other
	// daemons on this machine never share the default 9765.
	args := append([]string{"serve", "--socket", e.socket, "--state-dir", e.stateDir, "--stack-netns", e.stackNS,
		"--uplink-subnet", e.uplink.String(), "--uplink-host-ifname", e.uplinkIf, "--log-level", "debug",
		"--metrics-addr", "127.0.0.1:0"}, e.serveArgs...)
	cmd := exec.Command(filepath.Join(e.bin, cnitest.PluginName), args...)
	if e.daemonNetNS != "" {
		// nsenter execs the daemon: the process and its PID are the daemon's.
		cmd = exec.Command("nsenter", append([]string{"--net=" + e.daemonNetNS, "--", filepath.Join(e.bin, cnitest.PluginName)}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start daemon: %v", err)
	}
	e.daemon = cmd
	e.waitErr = make(chan error, 1)
	go func() { e.waitErr <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := e.client().Status(context.Background()); err == nil {
			return
		}
		select {
		case err := <-e.waitErr:
			b, _ := os.ReadFile(e.logFile)
			e.t.Fatalf("daemon exited at start: %v\n%s", err, b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	e.t.Fatalf("daemon did not answer on %s within 10s", e.socket)
}

// killDaemon sends sig to the daemon this env started and waits for it.
func (e *cniEnv) killDaemon(sig syscall.Signal) {
	if e.daemon == nil {
		return
	}
	e.daemon.Process.Signal(sig)
	select {
	case <-e.waitErr:
	case <-time.After(10 * time.Second):
		e.daemon.Process.Kill()
		<-e.waitErr
	}
	e.daemon = nil
}

// plugin is our plugin's config object with the env's settings.
func (e *cniEnv) plugin(extra map[string]any) map[string]any {
	p := map[string]any{
		"type":       cnitest.PluginName,
		"mode":       "route",
		"socket":     e.socket,
		"stateDir":   e.stateDir,
		"stackNetNS": e.stackNS,
		"autostart":  false,
		"logFile":    e.logFile,
		"uplink":     map[string]any{"subnet": e.uplink.String(), "hostIfName": e.uplinkIf},
		"ipam":       cnitest.HostLocal(e.subnet, e.ipamDir),
	}
	for k, v := range extra {
		if v == nil {
			delete(p, k)
		} else {
			p[k] = v
		}
	}
	return p
}

func (e *cniEnv) confList(version string, plugins ...map[string]any) *libcni.NetworkConfigList {
	e.t.Helper()
	if len(plugins) == 0 {
		plugins = []map[string]any{e.plugin(nil)}
	}
	b, err := json.Marshal(map[string]any{"cniVersion": version, "name": e.network, "plugins": plugins})
	if err != nil {
		e.t.Fatal(err)
	}
	return cnitest.ConfList(e.t, string(b))
}

type pod struct {
	ns  ns.NetNS
	rt  *libcni.RuntimeConf
	res *current.Result
	ip  netip.Addr
}

func (e *cniEnv) add(list *libcni.NetworkConfigList) *pod {
	e.t.Helper()
	p := &pod{ns: cnitest.NewPodNS(e.t)}
	p.rt = cnitest.RuntimeConf(cnitest.UniqueName(e.t, "ctr"), p.ns.Path(), "eth0", nil)
	r, err := e.cni.AddNetworkList(context.Background(), list, p.rt)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", p.rt.ContainerID, err)
	}
	e.t.Cleanup(func() { e.cni.DelNetworkList(context.Background(), list, p.rt) })
	if p.res, err = current.NewResultFromResult(r); err != nil {
		e.t.Fatalf("ADD result: %v", err)
	}
	if len(p.res.IPs) != 1 {
		e.t.Fatalf("ADD result has %d IPs, want 1: %+v", len(p.res.IPs), p.res)
	}
	p.ip, _ = netip.AddrFromSlice(p.res.IPs[0].Address.IP.To4())
	return p
}

func (e *cniEnv) ping(from *pod, to string) {
	e.t.Helper()
	loss, out, err := cnitest.Ping(e.t, from.ns, to, 5)
	if err != nil {
		e.t.Fatal(err)
	}
	if loss > 20 {
		e.t.Fatalf("ping %s from %s: %.0f%% loss\n%s", to, from.ip, loss, out)
	}
}

func (e *cniEnv) stackLinks() []string {
	e.t.Helper()
	n, err := ns.GetNS(veth.NetNSPath(e.stackNS))
	if err != nil {
		return nil
	}
	defer n.Close()
	return cnitest.Links(e.t, n)
}

// hostRoutes lists the pod ranges (of both families) routed over the
// uplink in the host netns.
func (e *cniEnv) hostRoutes() []netip.Prefix {
	e.t.Helper()
	l, err := netlink.LinkByName(e.uplinkIf)
	if err != nil {
		return nil
	}
	rs, err := netlink.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []netip.Prefix
	for _, r := range rs {
		if r.Dst == nil || r.Gw == nil {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if a = a.Unmap(); a.Is4() && len(r.Dst.Mask) == 16 {
			ones -= 96
		}
		out = append(out, netip.PrefixFrom(a, ones))
	}
	return out
}

func (e *cniEnv) attachments() []api.Attachment {
	e.t.Helper()
	l, err := e.client().List(context.Background())
	if err != nil {
		e.t.Fatalf("list attachments: %v", err)
	}
	return l
}

func (e *cniEnv) records() []string {
	ents, _ := os.ReadDir(filepath.Join(e.stateDir, "attachments"))
	var out []string
	for _, x := range ents {
		out = append(out, x.Name())
	}
	return out
}

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// TestCNITwoPodsThroughStack: ADD two pods (1.1.0), ping both ways,
// 100 MB over TCP with the checksum verified, both reach the host over the
// uplink (ping and HTTP), CHECK passes, then DEL twice leaves nothing.
func TestCNITwoPodsThroughStack(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	a, b := e.add(list), e.add(list)

	for _, p := range []*pod{a, b} {
		r := p.res
		if r.CNIVersion != "1.1.0" || len(r.Interfaces) != 1 || r.Interfaces[0].Name != "eth0" || r.Interfaces[0].Sandbox != p.ns.Path() {
			t.Fatalf("result interfaces: %+v", r)
		}
		if r.IPs[0].Interface == nil || *r.IPs[0].Interface != 0 || !e.subnet.Contains(p.ip) || r.IPs[0].Gateway == nil {
			t.Fatalf("result IPs: %+v", r.IPs[0])
		}
		// The ptp shape (TestPodSeesTheRouter has the details).
		if len(r.Routes) != 3 || r.Routes[2].Dst.String() != "0.0.0.0/0" {
			t.Fatalf("result routes: %v", resultRoutes(r.Routes))
		}
	}
	if got := e.hostRoutes(); !slices.Contains(got, e.subnet) {
		t.Fatalf("host routes over %s: %v, want %v", e.uplinkIf, got, e.subnet)
	}

	// The stack netns's kernel sees none of the traffic below: the far
	// ends and the uplink drop it after our taps (veth.DropKernelInput).
	kernelParsed := func() uint64 {
		t.Helper()
		v, err := veth.ReadSNMPIn(veth.NetNSPath(e.stackNS), "Ip", "InAddrErrors")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	parsedBefore := kernelParsed()

	e.ping(a, b.ip.String())
	e.ping(b, a.ip.String())
	hostAddr := e.uplink.Addr().Next().String()
	e.ping(a, hostAddr)
	e.ping(b, hostAddr)

	n, d, err := cnitest.TCPTransfer(t, b.ns, netip.AddrPortFrom(b.ip, 0), a.ns, 100<<20, 2*time.Minute)
	if err != nil {
		t.Fatalf("100 MB pod A → pod B: %v", err)
	}
	t.Logf("100 MB pod→pod through the stack: %d bytes in %v (%.2f Gbit/s)", n, d, float64(n)*8/d.Seconds()/1e9)

	url := cnitest.HostServer(t, net.JoinHostPort(hostAddr, "0"))
	for _, p := range []*pod{a, b} {
		body, err := cnitest.HTTPGet(t, p.ns, url+"/remote", 20*time.Second)
		if err != nil {
			t.Fatalf("pod %v → host HTTP: %v", p.ip, err)
		}
		if !strings.HasPrefix(string(body), p.ip.String()+":") {
			t.Fatalf("host saw %q, want the pod's own address %v", body, p.ip)
		}
	}
	if d := kernelParsed() - parsedBefore; d != 0 {
		t.Fatalf("the stack netns's kernel parsed %d frames of the pods and the uplink (IpInAddrErrors)", d)
	}

	for _, p := range []*pod{a, b} {
		if err := e.cni.CheckNetworkList(context.Background(), list, p.rt); err != nil {
			t.Fatalf("CHECK %s: %v", p.rt.ContainerID, err)
		}
	}
	st, err := e.client().Status(context.Background())
	if err != nil || st.Attachments != 2 || len(st.Stack.NICs) != 3 {
		t.Fatalf("status: %+v %v", st, err)
	}
	out, err := exec.Command(filepath.Join(e.bin, cnitest.PluginName), "attachments", "-o", "json", "--socket", e.socket).Output()
	var listed []api.Attachment
	if err != nil || json.Unmarshal(out, &listed) != nil || len(listed) != 2 {
		t.Fatalf("cni-userstack attachments: %v\n%s", err, out)
	}

	for i := 0; i < 2; i++ {
		for _, p := range []*pod{a, b} {
			if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
				t.Fatalf("DEL #%d %s: %v", i+1, p.rt.ContainerID, err)
			}
		}
	}
	e.assertNothingLeft()
}

// assertNothingLeft: no far end in the stack netns, no reservation, no
// attachment, no record, no host route.
func (e *cniEnv) assertNothingLeft() {
	e.t.Helper()
	for _, l := range e.stackLinks() {
		if strings.HasPrefix(l, veth.HostIfNamePrefix) && len(l) == 15 {
			e.t.Errorf("far end %s left in the stack netns", l)
		}
	}
	if r := cnitest.Reservations(e.t, e.ipamDir, e.network); len(r) > 0 {
		e.t.Errorf("IPAM reservations left: %v", r)
	}
	if e.statusPID() > 0 {
		if l := e.attachments(); len(l) > 0 {
			e.t.Errorf("attachments left: %v", l)
		}
	}
	if r := e.records(); len(r) > 0 {
		e.t.Errorf("records left: %v", r)
	}
	if r := e.hostRoutes(); len(r) > 0 {
		e.t.Errorf("host routes left over %s: %v", e.uplinkIf, r)
	}
}

// TestCNIResultShapePerVersion: with cniVersion 0.4.0 and 1.0.0 the
// result has that version's shape (0.4.0: "version" in each IP).
func TestCNIResultShapePerVersion(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0"} {
		list := e.confList(v)
		p := &pod{ns: cnitest.NewPodNS(t)}
		p.rt = cnitest.RuntimeConf(cnitest.UniqueName(t, "ctr"), p.ns.Path(), "eth0", nil)
		r, err := e.cni.AddNetworkList(context.Background(), list, p.rt)
		if err != nil {
			t.Fatalf("ADD %s: %v", v, err)
		}
		if r.Version() != v {
			t.Fatalf("result version %s, want %s", r.Version(), v)
		}
		var buf bytes.Buffer
		if err := r.PrintTo(&buf); err != nil {
			t.Fatal(err)
		}
		var raw struct {
			CNIVersion string           `json:"cniVersion"`
			IPs        []map[string]any `json:"ips"`
		}
		if err := json.Unmarshal(buf.Bytes(), &raw); err != nil || raw.CNIVersion != v || len(raw.IPs) != 1 {
			t.Fatalf("%s result: %s (%v)", v, buf.String(), err)
		}
		_, hasVersion := raw.IPs[0]["version"]
		if want := v != "1.0.0"; hasVersion != want {
			t.Fatalf("%s result: ips[0] has version=%v, want %v: %s", v, hasVersion, want, buf.String())
		}
		if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
			t.Fatalf("DEL %s: %v", v, err)
		}
	}
	e.assertNothingLeft()
}

// TestCNICheckDetectsDeletedInterface: CHECK fails with a clear error once
// the pod's interface is deleted behind the plugin's back.
func TestCNICheckDetectsDeletedInterface(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	p := e.add(list)
	if err := e.cni.CheckNetworkList(context.Background(), list, p.rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	err := p.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = e.cni.CheckNetworkList(context.Background(), list, p.rt)
	if err == nil || cniCode(err) != api.CodeAttachmentBroken || !strings.Contains(err.Error(), "eth0") {
		t.Fatalf("CHECK after deleting eth0: %v (code %d), want code %d naming eth0", err, cniCode(err), api.CodeAttachmentBroken)
	}
	t.Logf("CHECK said: %v", err)
	if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	e.assertNothingLeft()
}

// TestCNIDuplicateAdd: ADD again for the same container and interface
// fails clearly and leaves the pod working.
func TestCNIDuplicateAdd(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	a, b := e.add(list), e.add(list)
	_, err := libcni.NewCNIConfigWithCacheDir([]string{e.bin}, t.TempDir(), nil).AddNetworkList(context.Background(), list, a.rt)
	if err == nil || cniCode(err) != api.CodeAttachmentExists {
		t.Fatalf("duplicate ADD: %v (code %d), want code %d", err, cniCode(err), api.CodeAttachmentExists)
	}
	t.Logf("duplicate ADD said: %v", err)
	if r := cnitest.Reservations(t, e.ipamDir, e.network); len(r) != 2 {
		t.Fatalf("reservations after duplicate ADD: %v, want 2", r)
	}
	e.ping(a, b.ip.String())
	if err := e.cni.CheckNetworkList(context.Background(), list, a.rt); err != nil {
		t.Fatalf("CHECK after duplicate ADD: %v", err)
	}
}

// TestCNIDelAfterNetNSGone: DEL releases the IPAM reservation and the
// record even when the pod's netns is already gone.
func TestCNIDelAfterNetNSGone(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	name := cnitest.UniqueName(t, "gone")
	path, err := veth.NewNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { veth.DeleteNetNS(name) })
	rt := cnitest.RuntimeConf(cnitest.UniqueName(t, "ctr"), path, "eth0", nil)
	if _, err := e.cni.AddNetworkList(context.Background(), list, rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if err := veth.DeleteNetNS(name); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := e.cni.DelNetworkList(context.Background(), list, rt); err != nil {
			t.Fatalf("DEL #%d with the netns gone: %v", i+1, err)
		}
	}
	e.assertNothingLeft()
}

// TestCNIGC: GC removes the attachments and reservations of containers
// missing from the valid list (either key name), and keeps the others.
func TestCNIGC(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	keep, drop := e.add(list), e.add(list)
	// A runtime whose cache never saw these pods, so that libcni's own
	// DEL-of-cached-attachments does not do the plugin's work.
	fresh := libcni.NewCNIConfigWithCacheDir([]string{e.bin}, t.TempDir(), nil)
	err := fresh.GCNetworkList(context.Background(), list, &libcni.GCArgs{
		ValidAttachments: []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}},
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	l := e.attachments()
	if len(l) != 1 || l[0].ContainerID != keep.rt.ContainerID {
		t.Fatalf("attachments after GC: %v, want only %s", l, keep.rt.ContainerID)
	}
	if r := cnitest.Reservations(t, e.ipamDir, e.network); !slices.Equal(r, []netip.Addr{keep.ip}) {
		t.Fatalf("reservations after GC: %v, want [%v]", r, keep.ip)
	}
	if slices.Contains(cnitest.Links(t, drop.ns), "eth0") {
		t.Fatalf("GC left eth0 in the dropped pod")
	}
	e.ping(keep, e.uplink.Addr().Next().String())

	// The other key name alone, through the binary directly.
	stdin, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": e.network, "type": cnitest.PluginName,
		"socket": e.socket, "stateDir": e.stateDir, "stackNetNS": e.stackNS, "autostart": false,
		"uplink": map[string]any{"subnet": e.uplink.String(), "hostIfName": e.uplinkIf},
		"ipam":   cnitest.HostLocal(e.subnet, e.ipamDir), "cni.dev/attachments": []any{}})
	if out, err := e.runPlugin("GC", stdin, nil); err != nil {
		t.Fatalf("GC with cni.dev/attachments: %v\n%s", err, out)
	}
	e.assertNothingLeft()
}

// runPlugin executes our binary as a plugin with CNI_COMMAND cmd.
func (e *cniEnv) runPlugin(cmd string, stdin []byte, env map[string]string) ([]byte, error) {
	c := exec.Command(filepath.Join(e.bin, cnitest.PluginName))
	c.Env = append(os.Environ(), "CNI_COMMAND="+cmd, "CNI_PATH="+e.bin)
	for k, v := range env {
		c.Env = append(c.Env, k+"="+v)
	}
	c.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	c.Stdout = &out
	c.Stderr = &out
	err := c.Run()
	return out.Bytes(), err
}

// TestCNIStatus: STATUS succeeds with the daemon up and fails with code 50
// when it is down and autostart is false.
func TestCNIStatus(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	if err := e.cni.GetStatusNetworkList(context.Background(), list); err != nil {
		t.Fatalf("STATUS with the daemon up: %v", err)
	}
	e.killDaemon(syscall.SIGTERM)
	err := e.cni.GetStatusNetworkList(context.Background(), list)
	if cniCode(err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with the daemon down: %v (code %d), want code 50", err, cniCode(err))
	}
	t.Logf("STATUS said: %v", err)
}

// TestCNIKill9Recovery: kill -9 the daemon and start it again: both pods
// reach each other and the host again without a new ADD.
func TestCNIKill9Recovery(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	a, b := e.add(list), e.add(list)
	e.ping(a, b.ip.String())
	e.killDaemon(syscall.SIGKILL)
	e.startDaemon()
	if l := e.attachments(); len(l) != 2 || l[0].NIC == 0 || l[1].NIC == 0 {
		t.Fatalf("attachments after restart: %v", l)
	}
	e.ping(a, b.ip.String())
	e.ping(b, a.ip.String())
	e.ping(a, e.uplink.Addr().Next().String())
	if err := e.cni.CheckNetworkList(context.Background(), list, a.rt); err != nil {
		t.Fatalf("CHECK after restart: %v", err)
	}
}

// TestCNIAutostart: with no daemon running, ADD starts one and succeeds.
func TestCNIAutostart(t *testing.T) {
	e := newCNIEnv(t)
	list := e.confList("1.1.0", e.plugin(map[string]any{"autostart": true}))
	a := e.add(list)
	pid := e.statusPID()
	if pid <= 0 {
		t.Fatalf("no daemon answers after an autostarting ADD")
	}
	b := e.add(list)
	if pid2 := e.statusPID(); pid2 != pid {
		t.Fatalf("second ADD started another daemon: pid %d then %d", pid, pid2)
	}
	e.ping(a, b.ip.String())
	if b, err := os.ReadFile(e.logFile); err != nil || !strings.Contains(string(b), "serving") {
		t.Fatalf("autostarted daemon's log %s: %v\n%s", e.logFile, err, b)
	}
}

// TestCNIChainedPortmap: portmap chained after our plugin: ADD and DEL
// succeed and a hostPort reaches the pod. The host port is reached at the
// uplink's host address: portmap's DNAT in OUTPUT sends it to the pod
// address, which the host routes into the stack.
func TestCNIChainedPortmap(t *testing.T) {
	if _, err := exec.LookPath("iptables"); err != nil {
		if _, err := exec.LookPath("nft"); err != nil {
			t.Skip("portmap needs iptables or nft on the host (apt-get install iptables)")
		}
	}
	e := newCNIEnv(t)
	e.startDaemon()
	pm := map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true}
	list := e.confList("1.1.0", e.plugin(map[string]any{"capabilities": map[string]bool{"portMappings": true}}), pm)
	p := &pod{ns: cnitest.NewPodNS(t)}
	hostPort := 20000 + int(randBytes(1)[0])*100 + int(randBytes(1)[0]%100)
	p.rt = cnitest.RuntimeConf(cnitest.UniqueName(t, "ctr"), p.ns.Path(), "eth0", map[string]any{
		"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 8080, "protocol": "tcp"}},
	})
	r, err := e.cni.AddNetworkList(context.Background(), list, p.rt)
	if err != nil {
		t.Fatalf("ADD with portmap: %v", err)
	}
	t.Cleanup(func() { e.cni.DelNetworkList(context.Background(), list, p.rt) })
	res, _ := current.NewResultFromResult(r)
	p.ip, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	cnitest.ServerIn(t, p.ns, net.JoinHostPort(p.ip.String(), "8080"))
	url := fmt.Sprintf("http://%s", net.JoinHostPort(e.uplink.Addr().Next().String(), fmt.Sprint(hostPort)))
	body, err := cnitest.HTTPGet(t, nil, url+"/", 20*time.Second)
	if err != nil || string(body) != cnitest.HostServerBody {
		t.Fatalf("hostPort %d → pod: %q %v", hostPort, body, err)
	}
	if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
		t.Fatalf("DEL with portmap: %v", err)
	}
	e.assertNothingLeft()
}

// TestCNIBadInput: each bad input returns its CNI code and a clear message,
// and leaves nothing behind.
func TestCNIBadInput(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	podNS := cnitest.NewPodNS(t)
	good := func(mod func(m map[string]any)) []byte {
		m := e.plugin(nil)
		m["cniVersion"] = "1.1.0"
		m["name"] = e.network
		if mod != nil {
			mod(m)
		}
		b, _ := json.Marshal(m)
		return b
	}
	env := map[string]string{"CNI_CONTAINERID": "bad-input", "CNI_IFNAME": "eth0", "CNI_NETNS": podNS.Path()}
	cases := []struct {
		name  string
		stdin []byte
		env   map[string]string
		code  uint
		msg   string
	}{
		{"missing ipam", good(func(m map[string]any) { delete(m, "ipam") }), env, 7, "ipam is missing"},
		{"negative mtu", good(func(m map[string]any) { m["mtu"] = -1 }), env, 7, "mtu -1"},
		{"oversized mtu", good(func(m map[string]any) { m["mtu"] = 70000 }), env, 7, "mtu 70000"},
		{"unknown mode", good(func(m map[string]any) { m["mode"] = "bridge" }), env, 7, `mode "bridge"`},
		{"bad routedRanges", good(func(m map[string]any) { m["routedRanges"] = []string{"10.0.0.0/33"} }), env, 7, "routedRanges"},
		{"unsupported cniVersion", good(func(m map[string]any) { m["cniVersion"] = "0.2.0" }), env, 1, "incompatible"},
		{"garbage stdin", []byte("{this is not json"), env, 6, ""},
		{"missing CNI_NETNS", good(nil), map[string]string{"CNI_CONTAINERID": "bad-input", "CNI_IFNAME": "eth0"}, 4, "CNI_NETNS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := e.runPlugin("ADD", c.stdin, c.env)
			if err == nil {
				t.Fatalf("ADD succeeded: %s", out)
			}
			var te types.Error
			if jerr := json.Unmarshal(out, &te); jerr != nil {
				t.Fatalf("output is not CNI error JSON: %v\n%s", jerr, out)
			}
			if te.Code != c.code || !strings.Contains(te.Error(), c.msg) {
				t.Fatalf("got code %d %q, want code %d containing %q", te.Code, te.Error(), c.code, c.msg)
			}
		})
	}
	if slices.Contains(cnitest.Links(t, podNS), "eth0") {
		t.Fatalf("bad input left eth0 in the pod")
	}
	e.assertNothingLeft()
}

// TestCNIRollback: an ADD that fails half-way leaves no veth and no
// reservation: once when IPAM fails, once when the daemon refuses.
func TestCNIRollback(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	podNS := cnitest.NewPodNS(t)
	try := func(what string, plugin map[string]any, wantCode uint) {
		t.Helper()
		list := e.confList("1.1.0", plugin)
		rt := cnitest.RuntimeConf(cnitest.UniqueName(t, "ctr"), podNS.Path(), "eth0", nil)
		_, err := e.cni.AddNetworkList(context.Background(), list, rt)
		if err == nil || (wantCode != 0 && cniCode(err) != wantCode) {
			t.Fatalf("%s: ADD: %v (code %d), want code %d", what, err, cniCode(err), wantCode)
		}
		t.Logf("%s: ADD said: %v", what, err)
		if slices.Contains(cnitest.Links(t, podNS), "eth0") {
			t.Fatalf("%s: eth0 left in the pod", what)
		}
		e.assertNothingLeft()
	}
	// IPAM fails: a range with no usable address left after the gateway.
	try("IPAM fails", e.plugin(map[string]any{"ipam": map[string]any{"type": "host-local", "dataDir": e.ipamDir,
		"ranges": [][]map[string]any{{{"subnet": "10.99.0.0/30", "rangeStart": "10.99.0.1", "rangeEnd": "10.99.0.1", "gateway": "10.99.0.1"}}}}}), 0)
	// The daemon refuses: the pod range overlaps its uplink subnet.
	try("daemon refuses", e.plugin(map[string]any{"ipam": cnitest.HostLocal(netip.PrefixFrom(e.uplink.Addr(), 29).Masked(), e.ipamDir)}), api.CodeStack)
}

// TestCNIAddDelLatency measures ADD and DEL latency, p50 and p99, of our
// plugin and of the reference ptp plugin in the same run: pods added one
// after another and 20 at once. With CNITEST_LATENCY=1 it runs the full
// benchmark (100 pods); otherwise a small run (10 pods, 5 at once) keeps
// the harness tested.
func TestCNIAddDelLatency(t *testing.T) {
	n, par := 10, 5
	if os.Getenv("CNITEST_LATENCY") == "1" {
		n, par = 100, 20
	}
	e := newCNIEnv(t)
	e.startDaemon()
	ours := e.confList("1.1.0")
	node := cnitest.NewPodNS(t) // ptp's host side lives here, not in the host netns
	ptpDir := t.TempDir()
	ptpName := cnitest.UniqueName(t, "ptp")
	ptp := cnitest.ConfList(t, cnitest.PTPConfJSON(t, ptpName, "1.1.0",
		netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, randBytes(1)[0], 0}), 24), ptpDir, 0))
	for _, p := range []int{1, par} {
		add, del, err := cnitest.AddDelLatency(t, e.cni, ours, nil, n, p)
		if err != nil {
			t.Fatalf("cni-userstack, %d at once: %v", p, err)
		}
		padd, pdel, err := cnitest.AddDelLatency(t, e.cni, ptp, node, n, p)
		if err != nil {
			t.Fatalf("ptp, %d at once: %v", p, err)
		}
		t.Logf("%d pods, %d at once: cni-userstack ADD p50 %v p99 %v, DEL p50 %v p99 %v | ptp ADD p50 %v p99 %v, DEL p50 %v p99 %v",
			n, p, add.Percentile(50), add.Percentile(99), del.Percentile(50), del.Percentile(99),
			padd.Percentile(50), padd.Percentile(99), pdel.Percentile(50), pdel.Percentile(99))
	}
	e.assertNothingLeft()
}

// nsRun runs a command inside n through nsenter, bounded by 30 s.
func nsRun(n ns.NetNS, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...).CombinedOutput()
	return string(out), err
}

// TestCNIAntiSpoofing: a pod whose frames carry another source MAC, or
// whose packets carry another source address, is not forwarded; the MAC
// drops are counted; the pod works again once it behaves.
func TestCNIAntiSpoofing(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	a, b := e.add(list), e.add(list)
	e.ping(a, b.ip.String())

	// Source address spoofing: strict rp_filter (RFC 3704 §2.2).
	spoofIP := netip.AddrFrom4([4]byte{e.subnet.Addr().As4()[0], e.subnet.Addr().As4()[1], e.subnet.Addr().As4()[2], 250})
	if out, err := nsRun(a.ns, "ip", "addr", "add", spoofIP.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatalf("add spoofed address: %v\n%s", err, out)
	}
	out, _ := nsRun(a.ns, "ping", "-n", "-c", "3", "-W", "1", "-i", "0.2", "-I", spoofIP.String(), b.ip.String())
	if !strings.Contains(out, "100% packet loss") {
		t.Fatalf("ping from a spoofed source address got through:\n%s", out)
	}
	if st, err := e.client().Status(context.Background()); err != nil || st.Stack.Drops["IP_RPFILTER"] < 3 {
		t.Fatalf("spoofed source addresses not dropped by rp_filter: %v %v", err, st.Stack.Drops)
	}
	nsRun(a.ns, "ip", "addr", "del", spoofIP.String()+"/32", "dev", "eth0")

	// Source MAC spoofing: the PREROUTING check.
	orig := a.res.Interfaces[0].Mac
	if out, err := nsRun(a.ns, "ip", "link", "set", "eth0", "address", "02:42:00:00:be:ef"); err != nil {
		t.Fatalf("set spoofed MAC: %v\n%s", err, out)
	}
	out, _ = nsRun(a.ns, "ping", "-n", "-c", "3", "-W", "1", "-i", "0.2", b.ip.String())
	if !strings.Contains(out, "100% packet loss") {
		t.Fatalf("ping with a spoofed source MAC got through:\n%s", out)
	}
	st, err := e.client().Status(context.Background())
	if err != nil || st.Stack.Counters["PodSrcMACDrops"] == 0 || st.Stack.Drops["POD_SRC_MAC_MISMATCH"] == 0 {
		t.Fatalf("MAC spoofing drops not counted: %v %v / %v", err, st.Stack.Counters["PodSrcMACDrops"], st.Stack.Drops)
	}
	if out, err := nsRun(a.ns, "ip", "link", "set", "eth0", "address", orig); err != nil {
		t.Fatalf("restore MAC: %v\n%s", err, out)
	}
	e.ping(a, b.ip.String())
}

// TestCNIDelWhileDaemonDown: DEL succeeds with the daemon down; the next
// daemon drops the record and the host route of the emptied range.
func TestCNIDelWhileDaemonDown(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	p := e.add(list)
	e.killDaemon(syscall.SIGKILL)
	if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
		t.Fatalf("DEL with the daemon down: %v", err)
	}
	if len(e.records()) != 1 || len(e.hostRoutes()) != 1 {
		t.Fatalf("before restart: records %v, host routes %v (want the stale ones)", e.records(), e.hostRoutes())
	}
	e.startDaemon()
	e.assertNothingLeft()
}

// serve --rules loads a netfilter ruleset into the stack: a FORWARD rule
// dropping ICMP stops pod-to-pod pings while pod-to-pod TCP still flows.
func TestCNIDaemonRules(t *testing.T) {
	e := newCNIEnv(t)
	rules := filepath.Join(t.TempDir(), "stack.rules")
	if err := os.WriteFile(rules, []byte("*filter\n-A FORWARD -p icmp -j DROP\nCOMMIT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.serveArgs = []string{"--rules", rules}
	e.startDaemon()
	list := e.confList("1.1.0")
	a, b := e.add(list), e.add(list)
	loss, out, err := cnitest.Ping(t, a.ns, b.ip.String(), 3)
	if err != nil || loss != 100 {
		t.Fatalf("ping through a DROP rule: loss %v%% err %v\n%s", loss, err, out)
	}
	if _, _, err := cnitest.TCPTransfer(t, b.ns, netip.AddrPortFrom(b.ip, 5301), a.ns, 1<<20, 20*time.Second); err != nil {
		t.Fatalf("TCP must still flow: %v", err)
	}
}
