package e2e

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/cni-userstack/cni-userstack/veth"
)

// TestDaemonClaimsStackNetNS: one daemon per stack netns and uplink. A
// second `serve` on the stack netns of a running one (its own socket,
// state dir and uplink otherwise) exits non-zero with a message naming
// the first (pid, socket), and so does one on its uplink; neither touches
// anything (the pods keep working, no namespace is created). After kill -9
// of the first, its claim is gone with it: a new daemon starts and
// re-attaches the pods.
func TestDaemonClaimsStackNetNS(t *testing.T) {
	e := newCNIEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0")
	a, b := e.add(list), e.add(list)
	e.ping(a, b.ip.String())
	first := e.statusPID()

	otherNS := cnitest.UniqueName(t, "usother")
	t.Cleanup(func() { veth.DeleteNetNS(otherNS) })
	for _, tc := range []struct {
		name, stackNS, uplink, claimed string
	}{
		{"same stack netns", e.stackNS, "usu" + hex.EncodeToString(randBytes(4)), fmt.Sprintf("stack netns %q", e.stackNS)},
		{"same uplink", otherNS, e.uplinkIf, fmt.Sprintf("uplink %q", e.uplinkIf)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out, err := e.serveOnce(15*time.Second, "--socket", filepath.Join(dir, "daemon.sock"), "--state-dir", filepath.Join(dir, "state"),
				"--stack-netns", tc.stackNS, "--uplink-host-ifname", tc.uplink, "--uplink-subnet", "169.254.99.0/30")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("second daemon: %v, want a non-zero exit\n%s", err, out)
			}
			want := fmt.Sprintf("%s is claimed by the daemon pid %d serving %s", tc.claimed, first, e.socket)
			if !strings.Contains(out, want) {
				t.Fatalf("second daemon said:\n%s\nwant it to name the first: %q", out, want)
			}
			t.Logf("second daemon (exit %d): %s", ee.ExitCode(), strings.TrimSpace(out))
			if slices.Contains(netnsList(t), otherNS) {
				t.Fatalf("the refused daemon created its stack netns %s", otherNS)
			}
			e.ping(a, b.ip.String())
		})
	}

	e.killDaemon(syscall.SIGKILL)
	e.startDaemon()
	if pid := e.statusPID(); pid == first || pid == 0 {
		t.Fatalf("daemon after kill -9 and restart: pid %d (first %d)", pid, first)
	}
	if l := e.attachments(); len(l) != 2 || l[0].NIC == 0 || l[1].NIC == 0 {
		t.Fatalf("attachments after restart: %v", l)
	}
	e.ping(a, b.ip.String())
	e.ping(b, a.ip.String())
}

// serveOnce runs `cni-userstack serve` with args until it exits, bounded
// by d (then killed), and returns its output.
func (e *cniEnv) serveOnce(d time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(e.bin, cnitest.PluginName), append([]string{"serve"}, args...)...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("still running after %v (killed): %w", d, ctx.Err())
	}
	return string(out), err
}

// netnsList is `ip netns list`, names only.
func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}
