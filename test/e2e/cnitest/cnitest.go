// Package cnitest is the harness of the CNI end-to-end tests: it builds the
// plugin binaries (ours and the reference plugins host-local, portmap, ptp,
// loopback, bandwidth, tuning from github.com/containernetworking/plugins),
// drives them through libcni (the library containerd and CRI-O use) with a
// private cache dir, makes pod namespaces, and measures what a pod sees:
// ping loss, a checksummed TCP transfer, an HTTP fetch.
//
// Not owned here: the tests themselves (test/e2e and the packages under
// test), the plugin and the daemon.
//
// Every namespace it makes is uniquely named after the test
// ("cnitest-<test>-<rand>") and removed in t.Cleanup; every wait is
// bounded. The tests need root; RequireRoot skips with a message otherwise.
// A test binary that uses BuildPlugins should run its tests through Main so
// that the binaries are removed at exit:
//
//	func TestMain(m *testing.M) { cnitest.Main(m) }
package cnitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
)

// PluginPackage is the import path of our plugin's main package.
const PluginPackage = "github.com/cni-userstack/cni-userstack/cmd/cni-userstack"

// PluginName is the binary name of our plugin (its CNI "type").
const PluginName = "cni-userstack"

// ReferencePlugins maps the binary name of each reference plugin the
// harness builds to its package in the plugins module (kept in go.mod by
// tools.go).
var ReferencePlugins = map[string]string{
	"host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
	"loopback":   "github.com/containernetworking/plugins/plugins/main/loopback",
	"ptp":        "github.com/containernetworking/plugins/plugins/main/ptp",
	"portmap":    "github.com/containernetworking/plugins/plugins/meta/portmap",
	"bandwidth":  "github.com/containernetworking/plugins/plugins/meta/bandwidth",
	"tuning":     "github.com/containernetworking/plugins/plugins/meta/tuning",
}

// DefaultTimeout bounds InNS and the traffic helpers when no timeout is
// given.
const DefaultTimeout = 60 * time.Second

// buildTimeout bounds one `go build`.
const buildTimeout = 10 * time.Minute

// The binaries are built once per test binary into binDir; the outcome of
// each build (ours, the references) is remembered, error included.
var (
	buildMu sync.Mutex
	binDir  string
	refDone bool
	refErr  error
	ourDone bool
	ourErr  error
)

// RequireRoot skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cnitest: needs root (creates network namespaces and runs CNI plugins); run `make test` as root")
	}
}

// Main runs the tests and then removes the plugin binaries built by
// BuildPlugins.
func Main(m *testing.M) {
	code := m.Run()
	buildMu.Lock()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	buildMu.Unlock()
	os.Exit(code)
}

// BuildPlugins builds, once per test binary, our plugin (go build
// ./cmd/cni-userstack from the module root) and the reference plugins into
// one temp dir, and returns it. A plugin that does not compile fails the
// test with the compiler's output.
func BuildPlugins(t testing.TB) (binDir string) {
	t.Helper()
	dir, err := buildPlugins(true)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// BuildReferencePlugins builds only the reference plugins (the ptp
// baseline needs nothing of ours) and returns the same dir as BuildPlugins.
func BuildReferencePlugins(t testing.TB) (binDir string) {
	t.Helper()
	dir, err := buildPlugins(false)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func buildPlugins(ours bool) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if binDir == "" {
		d, err := os.MkdirTemp("", "cnitest-bin-")
		if err != nil {
			return "", fmt.Errorf("cnitest: bin dir: %w", err)
		}
		binDir = d
	}
	if !refDone {
		refDone = true
		pkgs := make([]string, 0, len(ReferencePlugins))
		for _, p := range ReferencePlugins {
			pkgs = append(pkgs, p)
		}
		if err := goBuild(binDir, pkgs...); err != nil {
			refErr = fmt.Errorf("cnitest: building the reference plugins: %w", err)
		}
	}
	if refErr != nil {
		return "", refErr
	}
	if ours && !ourDone {
		ourDone = true
		if err := goBuild(binDir, PluginPackage); err != nil {
			ourErr = fmt.Errorf("cnitest: building our plugin (./cmd/cni-userstack) failed; "+
				"it must compile before the CNI e2e tests can run: %w", err)
		}
	}
	if ours && ourErr != nil {
		return "", ourErr
	}
	return binDir, nil
}

// goBuild runs `go build -o dir/ pkgs...` from the module root.
func goBuild(dir string, pkgs ...string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	gobin, err := goBinary()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, gobin, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// goBinary finds the go command: PATH first, then the GOROOT this test
// binary was built with.
func goBinary() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		return "", errors.New("cnitest: the go command is not in PATH nor in GOROOT/bin: it is needed to build the plugins")
	}
	return p, nil
}

// moduleRoot walks up from the working directory (a test runs in its
// package dir) to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cnitest: no go.mod above the working directory")
		}
		dir = parent
	}
}

var nonName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// UniqueName is prefix-<test name>-<8 hex>, safe as a netns, network or
// container name (the test name is cut to 40 bytes).
func UniqueName(t testing.TB, prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	tn := strings.Trim(nonName.ReplaceAllString(t.Name(), "-"), "-")
	if len(tn) > 40 {
		tn = tn[:40]
	}
	return prefix + "-" + tn + "-" + hex.EncodeToString(b)
}

// NewPodNS creates a uniquely named persistent netns ("cnitest-<test>-<rand>"
// under /var/run/netns) with lo up and the kernel's defaults, removed in
// t.Cleanup.
func NewPodNS(t testing.TB) ns.NetNS {
	t.Helper()
	name := UniqueName(t, "cnitest")
	path, err := veth.NewNetNS(name)
	if err != nil {
		t.Fatalf("cnitest: %v", err)
	}
	n, err := ns.GetNS(path)
	if err != nil {
		veth.DeleteNetNS(name)
		t.Fatalf("cnitest: open netns %s: %v", path, err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := veth.DeleteNetNS(name); err != nil {
			t.Errorf("cnitest: %v", err)
		}
	})
	return n
}

// CNI returns a libcni.CNIConfig over binDir with a private cache dir under
// t.TempDir().
func CNI(t testing.TB, binDir string) *libcni.CNIConfig {
	t.Helper()
	return libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil)
}

// RuntimeConf builds a libcni.RuntimeConf for (containerID, netns path,
// ifName) with optional capability args (e.g. "portMappings").
func RuntimeConf(containerID, netnsPath, ifName string, caps map[string]interface{}) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID:    containerID,
		NetNS:          netnsPath,
		IfName:         ifName,
		CapabilityArgs: caps,
	}
}

// ConfList parses a conflist JSON string (t.Fatal on error).
func ConfList(t testing.TB, js string) *libcni.NetworkConfigList {
	t.Helper()
	l, err := libcni.ConfListFromBytes([]byte(js))
	if err != nil {
		t.Fatalf("cnitest: conflist: %v\n%s", err, js)
	}
	return l
}

// InNS runs fn on a thread inside n (ns.Do), bounded by DefaultTimeout. A
// plugin that libcni executes from fn inherits n as its netns: use it to
// run a plugin's "host" side in a netns of the test.
func InNS(t testing.TB, n ns.NetNS, fn func() error) error {
	return InNSTimeout(t, n, DefaultTimeout, fn)
}

// InNSTimeout is InNS with its own bound. On timeout fn is left running (its
// thread returns to its own netns when it ends) and an error is returned.
func InNSTimeout(t testing.TB, n ns.NetNS, d time.Duration, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- n.Do(func(ns.NetNS) error { return fn() }) }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("cnitest: function in netns %s did not finish within %v", n.Path(), d)
	}
}

// do runs fn in n, or directly when n is nil (the current netns).
func do(n ns.NetNS, fn func() error) error {
	if n == nil {
		return fn()
	}
	return n.Do(func(ns.NetNS) error { return fn() })
}

// Links lists the interface names in n (nil = current netns), by running
// `ip -o link` there: for "nothing left behind" checks.
func Links(t testing.TB, n ns.NetNS) []string {
	t.Helper()
	out, err := nsExec(context.Background(), n, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatalf("cnitest: ip link in %v: %v\n%s", nsPath(n), err, out)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		if i := strings.IndexByte(name, '@'); i >= 0 {
			name = name[:i]
		}
		names = append(names, name)
	}
	return names
}

func nsPath(n ns.NetNS) string {
	if n == nil {
		return "the current netns"
	}
	return n.Path()
}

// nsExec runs a command in n (nil = current netns) through nsenter.
func nsExec(ctx context.Context, n ns.NetNS, name string, args ...string) ([]byte, error) {
	var cmd *exec.Cmd
	if n == nil {
		cmd = exec.CommandContext(ctx, name, args...)
	} else {
		if _, err := exec.LookPath("nsenter"); err != nil {
			return nil, errors.New("cnitest: nsenter (util-linux) not found")
		}
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
	}
	return cmd.CombinedOutput()
}
