package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/kube"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// node2 is the simulated second node: its namespace on the lan, a Node
// object, its own daemon (`serve --kubernetes` with the DaemonSet's
// service account token), its own stack namespace and conflist (written
// by `cni-userstack install` from its Node), and one pod attached through
// libcni, as a runtime would.
type node2 struct {
	t                     *e2e
	dir                   string
	podNS, podPath, podIP string
	podIP6                netip.Addr
	cidr, cidr6           netip.Prefix
	cni                   *libcni.CNIConfig
	list                  *libcni.NetworkConfigList
	rt                    *libcni.RuntimeConf
}

func (n *node2) path(p ...string) string { return filepath.Join(append([]string{n.dir}, p...)...) }

func (t *e2e) secondNode(ctx context.Context) {
	r := t.r
	if r.broken != "" {
		return
	}
	c := t.c
	n := &node2{t: t, dir: c.path("node2")}
	t.node2 = n
	ok := r.step(false, "second node: a Node object, its pod CIDR, its own daemon, stack namespace, conflist and a pod", func() (string, error) {
		return n.up(ctx)
	})
	if !ok {
		r.skip("node2 routes and pod <-> pod across nodes", "the second node did not come up")
		return
	}
	var a *corev1.Pod = t.pods["echo-a"]
	r.step(false, "node1's daemon routes node2's pod CIDRs via node2's InternalIPs, one per family (and node2's routes node1's); node1's status and /metrics show the routes", func() (string, error) {
		var got []string
		for _, want := range []struct {
			nsPath string
			dst    netip.Prefix
			via    netip.Addr
		}{{c.n1Path, n.cidr, node2IP}, {c.n2Path, t.podCIDR, node1IP}, {c.n1Path, n.cidr6, node2IP6}, {c.n2Path, t.podCIDR6, node1IP6}} {
			if err := waitFor(ctx, "route", 30*time.Second, nil, func() error {
				tbl, err := kube.NewNetlinkTableAt(want.nsPath)
				if err != nil {
					return err
				}
				defer tbl.Close()
				rs, err := tbl.List()
				if err != nil {
					return err
				}
				for _, r := range rs {
					if r.Dst == want.dst && r.Via == want.via && r.Owned() {
						got = append(got, fmt.Sprintf("%v via %v proto 0x76", r.Dst, r.Via))
						return nil
					}
				}
				return fmt.Errorf("no route %v via %v proto 0x76 in %v", want.dst, want.via, rs)
			}); err != nil {
				return "", err
			}
		}
		// The operator's view of the same: node1's status and metrics.
		var ks *api.KubeStatus
		if err := waitFor(ctx, "node1's route controller status", 30*time.Second, nil, func() error {
			st, err := api.NewClient(t.socket(), 5*time.Second).Status(ctx)
			if err != nil {
				return err
			}
			if ks = st.Kubernetes; ks == nil {
				return fmt.Errorf("node1's status has no kubernetes section")
			}
			found := 0
			for _, r := range ks.Routes {
				if r.Node == node2Name && (r.Dst == n.cidr && r.Via == node2IP || r.Dst == n.cidr6 && r.Via == node2IP6) {
					found++
				}
			}
			if found != 2 {
				return fmt.Errorf("node1's status lists routes %+v, not %v via %v and %v via %v to %s", ks.Routes, n.cidr, node2IP, n.cidr6, node2IP6, node2Name)
			}
			return nil
		}); err != nil {
			return "", err
		}
		body, err := t.inNetNS(ctx, c.n1Path, "get", "http://127.0.0.1:9765/metrics")
		if err != nil {
			return "", err
		}
		want := fmt.Sprintf("cni_userstack_kube_routes %d\n", len(ks.Routes))
		if !strings.Contains(body, want) {
			return "", fmt.Errorf("node1's /metrics lacks %q", strings.TrimSpace(want))
		}
		return "node1: " + got[0] + ", " + got[2] + "; node2: " + got[1] + ", " + got[3] + fmt.Sprintf("; node1's status: %d route(s), pod CIDRs %v, %d passes; /metrics %s",
			len(ks.Routes), ks.PodCIDRs, ks.Reconciles, strings.TrimSpace(want)), nil
	})
	r.step(false, "pod on node1 <-> pod on node2 by their own addresses (each receiver sees the sender's pod IP)", func() (string, error) {
		aNS, err := t.podNetNS(ctx, t.socket(), a.Status.PodIP)
		if err != nil {
			return "", err
		}
		var out1, out2 string
		if err := waitFor(ctx, "node1 pod -> node2 pod", 20*time.Second, nil, func() error {
			var err error
			out1, err = t.whoami(ctx, aNS, n.podIP+":8080", "pod2", a.Status.PodIP)
			return err
		}); err != nil {
			return "", err
		}
		out2, err = t.whoami(ctx, n.podPath, a.Status.PodIP+":8080", "echo-a", n.podIP)
		if err != nil {
			return "", err
		}
		return out1 + "; " + out2, nil
	})
	r.step(false, "pod on node1 <-> pod on node2 over IPv6 (each receiver sees the sender's pod IPv6 address)", func() (string, error) {
		aNS, err := t.podNetNS(ctx, t.socket(), a.Status.PodIP)
		if err != nil {
			return "", err
		}
		a6, err := podIP6(a)
		if err != nil {
			return "", err
		}
		var out1, out2 string
		if err := waitFor(ctx, "node1 pod -> node2 pod over IPv6", 20*time.Second, nil, func() error {
			var err error
			out1, err = t.whoami(ctx, aNS, netip.AddrPortFrom(n.podIP6, 8080).String(), "pod2", a6.String())
			return err
		}); err != nil {
			return "", err
		}
		out2, err = t.whoami(ctx, n.podPath, netip.AddrPortFrom(a6, 8080).String(), "echo-a", n.podIP6.String())
		if err != nil {
			return "", err
		}
		return out1 + "; " + out2, nil
	})
	r.step(false, "deleting node2's Node removes node1's routes to its pod CIDRs", func() (string, error) {
		if err := c.admin.CoreV1().Nodes().Delete(ctx, node2Name, metav1.DeleteOptions{}); err != nil {
			return "", err
		}
		err := waitFor(ctx, "route removed", 30*time.Second, nil, func() error {
			tbl, err := kube.NewNetlinkTableAt(c.n1Path)
			if err != nil {
				return err
			}
			defer tbl.Close()
			rs, err := tbl.List()
			if err != nil {
				return err
			}
			for _, r := range rs {
				if r.Dst == n.cidr || r.Dst == n.cidr6 {
					return fmt.Errorf("route %v via %v proto %#x still there", r.Dst, r.Via, r.Proto)
				}
			}
			return nil
		})
		return fmt.Sprintf("no route to %v or %v on node1", n.cidr, n.cidr6), err
	})
}

// up creates everything of node2 and returns a summary.
func (n *node2) up(ctx context.Context) (string, error) {
	t, c := n.t, n.t.c
	for _, d := range []string{n.path("bin"), n.path("conf"), n.path("state"), n.path("ipam"), n.path("cache"), n.path("run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	// The Node: its InternalIP on the lan; no kubernetes.io/os label, so
	// the DaemonSet does not schedule onto this kubelet-less node.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node2Name, Labels: map[string]string{"e2e.cni-userstack/simulated": "true"}}}
	if _, err := c.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	// The controller manager writes the node too (its pod CIDR): retry on
	// a conflict.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := c.admin.CoreV1().Nodes().Get(ctx, node2Name, getOpts)
		if err != nil {
			return err
		}
		cur.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: node2IP.String()},
			{Type: corev1.NodeInternalIP, Address: node2IP6.String()}, {Type: corev1.NodeHostName, Address: node2Name}}
		_, err = c.admin.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	}); err != nil {
		return "", err
	}
	if err := waitFor(ctx, "node2 pod CIDR", 60*time.Second, nil, func() error {
		nd, err := c.admin.CoreV1().Nodes().Get(ctx, node2Name, getOpts)
		if err != nil {
			return err
		}
		cidrs, err := kube.PodCIDRs(nd)
		if err != nil || len(cidrs) == 0 {
			return fmt.Errorf("no pod CIDR yet (%v)", err)
		}
		n.cidr, n.cidr6, err = bothFamilies(cidrs)
		return err
	}); err != nil {
		return "", err
	}
	// The DaemonSet's service account, outside the cluster: the same
	// ClusterRole must suffice.
	tok, err := c.admin.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "cni-userstack",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	kc := n.path("kubeconfig")
	if err := c.pki.kubeconfig(kc, fmt.Sprintf("https://%s:%d", node1IP, apiPort), "cni-userstack", tok.Status.Token); err != nil {
		return "", err
	}
	socket := n.path("daemon.sock")
	common := []string{"--socket=" + socket, "--state-dir=" + n.path("state"), "--stack-netns=" + c.stack2NS}
	install := append([]string{"install", "--kubeconfig=" + kc, "--node-name=" + node2Name, "--source-dir=" + t.bin,
		"--cni-bin-dir=" + n.path("bin"), "--cni-conf-dir=" + n.path("conf"), "--ipam-data-dir=" + n.path("ipam"),
		"--cluster-cidr=" + clusterCIDR, "--wait=60s"}, common...)
	if out, err := output(ctx, "nsenter", append([]string{"--net=" + c.n2Path, "--", t.ourBin()}, install...)...); err != nil {
		return "", fmt.Errorf("install on node2: %w\n%s", err, out)
	}
	serve := append([]string{"serve", "--kubernetes", "--kubeconfig=" + kc, "--node-name=" + node2Name, "--lock-dir=" + n.path("run")}, common...)
	d, err := c.start("node2-daemon", c.n2Path, t.ourBin(), serve...)
	if err != nil {
		return "", err
	}
	if err := waitFor(ctx, "node2 daemon", 30*time.Second, d, func() error {
		_, err := api.NewClient(socket, 2*time.Second).Status(ctx)
		return err
	}); err != nil {
		return "", err
	}
	// A pod: a namespace attached through libcni with node2's conflist.
	n.podNS = "e2ek8s-pod2-" + t.suffix
	if n.podPath, err = veth.NewNetNS(n.podNS); err != nil {
		return "", err
	}
	if n.list, err = libcni.ConfListFromFile(filepath.Join(n.path("conf"), "10-cni-userstack.conflist")); err != nil {
		return "", err
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{n.path("bin")}, n.path("cache"), nil)
	n.rt = &libcni.RuntimeConf{ContainerID: n.podNS, NetNS: n.podPath, IfName: "eth0"}
	res, err := n.cni.AddNetworkList(ctx, n.list, n.rt)
	if err != nil {
		return "", fmt.Errorf("CNI ADD on node2: %w\n%s", err, tail(filepath.Join(c.w, "logs", "node2-daemon.log"), 20))
	}
	cr, err := current.NewResultFromResult(res)
	if err != nil || len(cr.IPs) == 0 {
		return "", fmt.Errorf("CNI result %v: %v", res, err)
	}
	for _, ipc := range cr.IPs {
		ip, _ := netip.AddrFromSlice(ipc.Address.IP)
		if ip = ip.Unmap(); ip.Is4() {
			n.podIP = ip.String()
		} else {
			n.podIP6 = ip
		}
	}
	if ip, err := netip.ParseAddr(n.podIP); err != nil || !n.cidr.Contains(ip) || !n.cidr6.Contains(n.podIP6) {
		return "", fmt.Errorf("node2's pod got %v, not one address in each of its pod CIDRs %v and %v", cr.IPs, n.cidr, n.cidr6)
	}
	// Its server, with the name the checks expect.
	os.Setenv("POD_NAME", "pod2")
	_, err = c.start("node2-pod-echo", n.podPath, t.echoBin(), "serve")
	os.Unsetenv("POD_NAME")
	if err != nil {
		return "", err
	}
	if err := waitFor(ctx, "node2 pod's server", 15*time.Second, nil, func() error {
		_, err := t.inNetNS(ctx, n.podPath, "get", "http://127.0.0.1:8080/healthz")
		return err
	}); err != nil {
		return "", err
	}
	return fmt.Sprintf("Node %s (InternalIPs %v, %v) got %v and %v; its daemon (service-account token) and conflist; pod %s %v", node2Name, node2IP, node2IP6,
		n.cidr, n.cidr6, strings.TrimSpace(n.podIP), n.podIP6), nil
}

// delPod runs the CNI DEL of node2's pod (teardown) and removes its
// namespace.
func (n *node2) delPod(ctx context.Context) {
	if n.list != nil && n.rt != nil {
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		n.cni.DelNetworkList(ctx, n.list, n.rt)
		cancel()
		n.list = nil
	}
	if n.podNS != "" {
		veth.DeleteNetNS(n.podNS)
	}
}

func ptr[T any](v T) *T { return &v }
