package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/plugin"
	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func testNetwork() Network {
	return Network{Name: "k8s-pod-network", CNIVersion: DefaultCNIVersion, Mode: api.ModeProxy, MTU: 1500,
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")},
		RoutedRanges: []netip.Prefix{pfx("10.96.0.0/12"), pfx("10.244.0.0/16")},
		Socket:       "/run/cni-userstack/daemon.sock", StateDir: "/var/lib/cni-userstack", StackNetNS: "cni-userstack"}
}

// TestRenderProxy: the proxy-mode conflist a node with a dual-stack pod
// CIDR gets, key by key, and that our plugin's own parser accepts its
// entry with those values.
func TestRenderProxy(t *testing.T) {
	b, err := Render(testNetwork(), []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")})
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {
      "type": "cni-userstack",
      "mode": "proxy",
      "mtu": 1500,
      "routedRanges": [
        "10.244.0.0/16",
        "fd00:10:244::/56",
        "10.96.0.0/12"
      ],
      "socket": "/run/cni-userstack/daemon.sock",
      "stateDir": "/var/lib/cni-userstack",
      "stackNetNS": "cni-userstack",
      "autostart": false,
      "capabilities": {
        "portMappings": true
      },
      "ipam": {
        "type": "host-local",
        "ranges": [
          [
            {
              "subnet": "10.244.1.0/24"
            }
          ],
          [
            {
              "subnet": "fd00:10:244:1::/64"
            }
          ]
        ]
      }
    }
  ]
}
`
	if string(b) != want {
		t.Fatalf("conflist:\n%s\nwant:\n%s", b, want)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("libcni: %v", err)
	}
	c, err := plugin.LoadConf(asRuntime(t, list, 0))
	if err != nil {
		t.Fatalf("our plugin refuses its own conflist: %v", err)
	}
	if c.AutostartOn() || c.Mode != api.ModeProxy || len(c.Routed()) != 3 || c.Socket != "/run/cni-userstack/daemon.sock" {
		t.Fatalf("plugin sees %+v", c)
	}
}

// TestRenderRoute: route mode chains portmap and drops routedRanges (route
// mode forwards everything); a dual-stack node's ranges go IPv4 first,
// whatever order spec.podCIDRs lists them in.
func TestRenderRoute(t *testing.T) {
	n := testNetwork()
	n.Mode, n.MTU, n.IPAMDataDir = api.ModeRoute, 1450, "/var/lib/cni/x"
	b, err := Render(n, []netip.Prefix{pfx("fd00:10:244:1::/64"), pfx("10.244.1.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) != 2 || list.Plugins[1].Network.Type != "portmap" || !list.Plugins[1].Network.Capabilities["portMappings"] {
		t.Fatalf("route mode plugins: %s", b)
	}
	var conf struct {
		Plugins []struct {
			RoutedRanges []string       `json:"routedRanges"`
			Capabilities map[string]any `json:"capabilities"`
			IPAM         ipamConf       `json:"ipam"`
		} `json:"plugins"`
	}
	json.Unmarshal(b, &conf)
	p := conf.Plugins[0]
	if p.RoutedRanges != nil || p.Capabilities != nil || p.IPAM.DataDir != "/var/lib/cni/x" || len(p.IPAM.Ranges) != 2 || p.IPAM.Ranges[0][0].Subnet != "10.244.1.0/24" || p.IPAM.Ranges[1][0].Subnet != "fd00:10:244:1::/64" {
		t.Fatalf("route mode entry: %s", b)
	}
	if c, err := plugin.LoadConf(asRuntime(t, list, 0)); err != nil || c.MTU != 1450 || c.Mode != api.ModeRoute {
		t.Fatalf("plugin: %+v %v", c, err)
	}
}

func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mod   func(*Network)
		cidrs []netip.Prefix
		want  string
	}{
		{"v6 only node", nil, []netip.Prefix{pfx("fd00::/64")}, "no IPv4 pod CIDR"},
		{"no cidr", nil, nil, "no IPv4 pod CIDR"},
		{"two v4", nil, []netip.Prefix{pfx("10.244.1.0/24"), pfx("10.245.1.0/24")}, "at most one per family"},
		{"two v6", nil, []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00::/64"), pfx("fd01::/64")}, "at most one per family"},
		{"pod cidr host bits", nil, []netip.Prefix{pfx("10.244.1.1/24")}, "not a network address"},
		{"mode", func(n *Network) { n.Mode = "bridge" }, nil, "--mode"},
		{"mtu", func(n *Network) { n.MTU = 20 }, nil, "--mtu"},
		{"cni version", func(n *Network) { n.CNIVersion = "2.0.0" }, nil, "--cni-version"},
		{"host bits", func(n *Network) { n.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/16")} }, nil, "not a network address"},
		{"no socket", func(n *Network) { n.Socket = "" }, nil, "--socket"},
	} {
		n := testNetwork()
		if tc.mod != nil {
			tc.mod(&n)
		}
		cidrs := tc.cidrs
		if tc.mod != nil {
			cidrs = []netip.Prefix{pfx("10.244.1.0/24")}
		}
		if _, err := Render(n, cidrs); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestInstallFileAtomic: a reader that opens the destination while
// InstallFile replaces it, over and over, only ever sees the old or the
// new content in full (never a prefix), with the executable mode; no temp
// file is left; identical content is not rewritten.
func TestInstallFileAtomic(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	old := bytes.Repeat([]byte("old binary "), 50000)
	nw := bytes.Repeat([]byte("NEW BINARY, LONGER "), 60000)
	os.WriteFile(filepath.Join(dst, "cni-userstack"), old, 0o755)
	os.WriteFile(filepath.Join(src, "v1"), old, 0o644)
	os.WriteFile(filepath.Join(src, "v2"), nw, 0o644)

	var stop atomic.Bool
	var bad atomic.Value
	var wg sync.WaitGroup
	reads := atomic.Int64{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			f, err := os.Open(filepath.Join(dst, "cni-userstack"))
			if err != nil {
				bad.Store("open: " + err.Error())
				return
			}
			fi, _ := f.Stat()
			b, _ := io.ReadAll(f)
			f.Close()
			reads.Add(1)
			if !bytes.Equal(b, old) && !bytes.Equal(b, nw) {
				bad.Store(fmt.Sprintf("a reader saw a partial file of %d bytes", len(b)))
				return
			}
			if fi.Mode().Perm() != 0o755 {
				bad.Store("a reader saw mode " + fi.Mode().String())
				return
			}
		}
	}()
	for i := 0; i < 40; i++ {
		from := "v1"
		if i%2 == 0 {
			from = "v2"
		}
		changed, err := InstallFile(filepath.Join(src, from), dst, "cni-userstack", 0o755)
		if err != nil || !changed {
			t.Fatalf("install %d: changed %v err %v", i, changed, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	if reads.Load() == 0 {
		t.Fatal("the reader never read")
	}
	// Same content: nothing rewritten (the inode stays).
	before, _ := os.Stat(filepath.Join(dst, "cni-userstack"))
	if changed, err := InstallFile(filepath.Join(src, "v1"), dst, "cni-userstack", 0o755); err != nil || changed {
		t.Fatalf("identical install: changed %v err %v", changed, err)
	}
	after, _ := os.Stat(filepath.Join(dst, "cni-userstack"))
	if !os.SameFile(before, after) {
		t.Fatal("an identical file was replaced")
	}
	// Same content, wrong mode: rewritten with the mode.
	os.Chmod(filepath.Join(dst, "cni-userstack"), 0o600)
	if changed, err := InstallFile(filepath.Join(src, "v1"), dst, "cni-userstack", 0o755); err != nil || !changed {
		t.Fatalf("mode fix: changed %v err %v", changed, err)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "cni-userstack")); fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode %v", fi.Mode())
	}
	ents, _ := os.ReadDir(dst)
	if len(ents) != 1 {
		t.Fatalf("dest dir holds %d entries, want only the binary", len(ents))
	}
}

// TestWriteFailureLeavesDestination: a write that fails midway removes
// its temp file and leaves the old destination in place.
func TestWriteFailureLeavesDestination(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x.conflist"), []byte("old"), 0o644)
	err := writeAtomic(dir, "x.conflist", 0o644, func(w io.Writer) error {
		w.Write([]byte("half"))
		return errors.New("disk full")
	})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "x.conflist")); string(b) != "old" {
		t.Fatalf("destination now %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d entries left", len(ents))
	}
	if _, err := InstallFile(filepath.Join(dir, "missing"), dir, "y", 0o755); err == nil {
		t.Fatal("missing source must fail")
	}
}

// TestRunWaitsForPodCIDR: the binaries go in at once; the conflist only
// once the Node has a pod CIDR; a stale temp file of an interrupted
// install is removed; a second run changes nothing.
func TestRunWaitsForPodCIDR(t *testing.T) {
	src, bin, conf := t.TempDir(), t.TempDir(), t.TempDir()
	for _, b := range DefaultBinaries {
		os.WriteFile(filepath.Join(src, b), []byte("#!binary "+b), 0o755)
	}
	stale := filepath.Join(bin, ".portmap.tmp-123")
	os.WriteFile(stale, []byte("partial"), 0o600)
	cs := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	var logs syncBuf
	o := Options{SourceDir: src, Binaries: DefaultBinaries, BinDir: bin, ConfDir: conf, Network: testNetwork(),
		Client: cs.CoreV1().Nodes(), NodeName: "n1", Logger: slogTo(&logs)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()

	confPath := filepath.Join(conf, DefaultConfName)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "waiting for this node's pod CIDR") {
		if time.Now().After(deadline) {
			t.Fatalf("no wait message:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, b := range DefaultBinaries {
		if fi, err := os.Stat(filepath.Join(bin, b)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Fatalf("binary %s before the CIDR: %v", b, err)
		}
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temp file: %v", err)
	}
	if _, err := os.Stat(confPath); !os.IsNotExist(err) {
		t.Fatalf("conflist written before the node had a pod CIDR: %v", err)
	}
	if !strings.Contains(logs.String(), "--allocate-node-cidrs") {
		t.Fatalf("the wait does not say why:\n%s", logs.String())
	}
	n, _ := cs.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	n.Spec.PodCIDRs = []string{"10.244.7.0/24"}
	cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(confPath)
	if err != nil || !strings.Contains(string(b), `"subnet": "10.244.7.0/24"`) {
		t.Fatalf("conflist %s: %v", b, err)
	}
	logs.Reset()
	if err := Run(ctx, o); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "changed=true") {
		t.Fatalf("second run changed files:\n%s", logs.String())
	}

	// Bounded wait: a node that never gets a CIDR fails with the reason
	// and writes nothing.
	cs2 := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}})
	o.Client, o.NodeName, o.ConfDir, o.Wait = cs2.CoreV1().Nodes(), "n2", t.TempDir(), 50*time.Millisecond
	err = Run(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "no conflist written") || !strings.Contains(err.Error(), "spec.podCIDRs is empty") {
		t.Fatalf("bounded wait: %v", err)
	}
	if ents, _ := os.ReadDir(o.ConfDir); len(ents) != 0 {
		t.Fatalf("conf dir not empty after a failed wait")
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuf) Reset() {
	s.mu.Lock()
	s.b.Reset()
	s.mu.Unlock()
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// asRuntime is plugin i's stdin as a runtime builds it from the list:
// the entry plus the list's name and cniVersion.
func asRuntime(t *testing.T, list *libcni.NetworkConfigList, i int) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(list.Plugins[i].Bytes, &m); err != nil {
		t.Fatal(err)
	}
	m["name"], m["cniVersion"] = list.Name, list.CNIVersion
	b, _ := json.Marshal(m)
	return b
}
