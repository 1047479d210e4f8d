// Command e2e-k8s is `make e2e-k8s`: cni-userstack installed with
// `kubectl apply -f manifests/` on a real single-node Kubernetes built on
// this machine, plus a simulated second node, and checked end to end. It
// is not part of `make test` (it builds Kubernetes once, ~6 min).
//
// What it builds and runs, all private to the run (a work dir under
// /tmp, namespaces and a cgroup root named with a random suffix):
//
//   - Kubernetes (kube-apiserver, kube-controller-manager with
//     --allocate-node-cidrs, kube-scheduler, kubelet, kube-proxy,
//     kubectl) from the module proxy at the release of go.mod's
//     k8s.io/client-go (build.go; cached under -k8s-cache);
//   - a "lan" namespace with a bridge, and two node namespaces on it.
//     Node 1 runs etcd (Debian's etcd-server), the control plane,
//     containerd (Debian's) and the kubelet and kube-proxy inside its
//     namespace (nsenter --net: the host's mount namespace, so the pods'
//     and the stack's namespaces under /run/netns are shared as on a
//     real node), so its ports, routes and iptables rules are its own;
//   - the pause and echo images, built locally and imported with ctr
//     (containerd's sandbox_image is the pause image; no registry);
//   - the product image of `make image`, imported with ctr (and loaded
//     with podman into a private store, to show podman accepts it).
//
// Then it applies manifests/cni-userstack.yaml (with its host paths
// redirected into the work dir and the stack namespace renamed: see
// renderManifests) and runs the checks of issue 12, printing each step
// PASS/FAIL/SKIP with its time and the total. Teardown (always, also on
// failure or SIGINT) removes every process, namespace, mount, cgroup and
// file of the run and fails the run if something is left.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var getOpts = metav1.GetOptions{}

type result struct {
	name, status, detail string
	dur                  time.Duration
}

// runner runs the steps in order: a failed "must" step skips the rest
// (but teardown); a failed check is recorded and the run goes on.
type runner struct {
	results []result
	broken  string
	start   time.Time
}

func (r *runner) logf(format string, a ...any) {
	fmt.Printf("       %s\n", fmt.Sprintf(format, a...))
}

func (r *runner) step(must bool, name string, fn func() (string, error)) bool {
	if r.broken != "" {
		r.results = append(r.results, result{name: name, status: "SKIP", detail: "after the failure of: " + r.broken})
		return false
	}
	fmt.Printf("==> %s\n", name)
	t := time.Now()
	detail, err := fn()
	res := result{name: name, status: "PASS", detail: detail, dur: time.Since(t)}
	if err != nil {
		res.status, res.detail = "FAIL", err.Error()
		if must {
			r.broken = name
		}
	}
	r.results = append(r.results, res)
	fmt.Printf("    %s %s (%.1fs)", res.status, name, res.dur.Seconds())
	if res.detail != "" {
		fmt.Printf(": %s", firstLines(res.detail, 40))
	}
	fmt.Println()
	return err == nil
}

func (r *runner) skip(name, why string) {
	r.results = append(r.results, result{name: name, status: "SKIP", detail: why})
	fmt.Printf("    SKIP %s: %s\n", name, why)
}

func firstLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = append(l[:n], "...")
	}
	return strings.Join(l, "\n      ")
}

// headTail is the first line and the last four of s.
func headTail(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > 5 {
		l = append(l[:1], append([]string{"..."}, l[len(l)-4:]...)...)
	}
	return strings.Join(l, "\n              ")
}

func (r *runner) summary() int {
	fmt.Println()
	fmt.Println("==================== make e2e-k8s summary ====================")
	pass, fail, skip := 0, 0, 0
	for _, res := range r.results {
		fmt.Printf("%-4s %7.1fs  %s\n", res.status, res.dur.Seconds(), res.name)
		if res.status != "PASS" && res.detail != "" {
			fmt.Printf("              %s\n", headTail(res.detail))
		}
		switch res.status {
		case "PASS":
			pass++
		case "FAIL":
			fail++
		default:
			skip++
		}
	}
	fmt.Printf("total %.1fs: %d passed, %d failed, %d skipped\n", time.Since(r.start).Seconds(), pass, fail, skip)
	if fail > 0 {
		return 1
	}
	return 0
}

func main() {
	k8sCache := flag.String("k8s-cache", filepath.Join(os.Getenv("HOME"), ".cache", "cni-userstack", "kubernetes"), "where the built Kubernetes binaries are kept between runs")
	imageTar := flag.String("image", "bin/cni-userstack-image.tar", "the image tarball of `make image`")
	version := flag.String("version", "", "the image's tag (default: cmd/cni-userstack's Version)")
	keep := flag.Bool("keep-work", false, "keep the work dir (logs) after teardown")
	mode := flag.String("mode", "proxy", "the ConfigMap's mode: proxy or route")
	routedServices := flag.Bool("routed-services", false, "put the run's Service CIDR ("+serviceCIDR+") in the ConfigMap's routedRanges (proxy mode forwards Service traffic with the pod's address)")
	flag.Parse()
	os.Exit(run1(*k8sCache, *imageTar, *version, *mode, *routedServices, *keep))
}

func run1(k8sCache, imageTar, version, mode string, routedServices, keep bool) int {
	r := &runner{start: time.Now()}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e-k8s: needs root (network namespaces, containerd, the kubelet)")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	suffix := env.Suffix()
	w, err := os.MkdirTemp("", "e2ek8s-"+suffix+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.MkdirAll(filepath.Join(w, "logs"), 0o755)
	fmt.Printf("e2e-k8s: work dir %s (logs in %s/logs)\n", w, w)
	t := &e2e{r: r, w: w, suffix: suffix, imageTar: imageTar, version: version, mode: mode, routedServices: routedServices}
	func() {
		defer func() {
			if p := recover(); p != nil {
				r.results = append(r.results, result{name: "panic", status: "FAIL", detail: fmt.Sprint(p)})
			}
		}()
		t.all(ctx, k8sCache)
	}()
	if ctx.Err() != nil {
		r.results = append(r.results, result{name: "interrupted", status: "FAIL", detail: "SIGINT/SIGTERM"})
	}
	stop() // a second ^C during teardown kills the run
	r.broken = ""
	r.step(false, "teardown: nothing of the run left (processes, namespaces, mounts, cgroups, files)", func() (string, error) {
		if t.c == nil {
			return "", os.RemoveAll(w)
		}
		t.beforeTeardown(context.Background())
		if err := t.c.teardown(keep); err != nil {
			return "", err
		}
		return t.c.leftovers()
	})
	return r.summary()
}
