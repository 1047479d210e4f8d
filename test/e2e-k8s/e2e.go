package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/kube"
	"github.com/cni-userstack/cni-userstack/veth"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// e2e is one run: its cluster, its binaries and what the steps learn.
type e2e struct {
	r        *runner
	c        *cluster
	w        string
	suffix   string
	imageTar string
	version  string
	mode     string // the ConfigMap's mode
	// routedServices puts serviceCIDR in the ConfigMap's routedRanges.
	routedServices bool
	bin            string // our static binaries, the echo client, the plugins
	probes         bool   // serve has --metrics-addr: the DaemonSet's probes run
	node2          *node2
	podCIDR        netip.Prefix // node1's
	podCIDR6       netip.Prefix // node1's IPv6 one (the cluster is dual-stack)
	pods           map[string]*corev1.Pod
}

const testNS = "default"

func (t *e2e) ourBin() string  { return filepath.Join(t.bin, "cni-userstack") }
func (t *e2e) echoBin() string { return filepath.Join(t.bin, "echo") }

// hostPath redirection of the DaemonSet into the work dir.
func (t *e2e) socketDir() string { return t.c.path("node1", "run-cni-userstack") }
func (t *e2e) socket() string    { return filepath.Join(t.socketDir(), "daemon.sock") }
func (t *e2e) stateDir() string  { return t.c.path("node1", "state") }
func (t *e2e) cniData() string   { return t.c.path("node1", "var-lib-cni") }
func (t *e2e) leaseDir() string  { return filepath.Join(t.cniData(), "networks", "cni-userstack") }

func (t *e2e) all(ctx context.Context, k8sCache string) {
	r := t.r
	var kubeVersion, staging string
	r.step(true, "prerequisites (root; etcd, containerd, runc, ctr, nsenter, iptables; the image of make image)", func() (string, error) {
		for _, c := range []string{"etcd", "containerd", "runc", "ctr", "nsenter", "iptables", "go"} {
			if _, err := exec.LookPath(c); err != nil {
				return "", fmt.Errorf("%s not found (make e2e-k8s installs etcd-server, containerd, runc, iptables)", c)
			}
		}
		if _, err := os.Stat(t.imageTar); err != nil {
			return "", fmt.Errorf("image tarball: %w (run make image)", err)
		}
		if t.version == "" {
			b, err := os.ReadFile("cmd/cni-userstack/main.go")
			if err != nil {
				return "", fmt.Errorf("run from the module root: %w", err)
			}
			m := regexp.MustCompile(`var Version = "([^"]+)"`).FindSubmatch(b)
			if m == nil {
				return "", fmt.Errorf("no Version in cmd/cni-userstack/main.go")
			}
			t.version = string(m[1])
		}
		var err error
		kubeVersion, staging, err = kubeVersionFromGoMod(ctx)
		return fmt.Sprintf("image localhost/cni-userstack:%s, Kubernetes %s (k8s.io modules %s)", t.version, kubeVersion, staging), err
	})
	var k8sBin string
	r.step(true, "Kubernetes binaries (built once from the module proxy, then cached)", func() (string, error) {
		bin, built, err := buildKubernetes(ctx, k8sCache, kubeVersion, staging, r.logf)
		k8sBin = bin
		if built {
			return "built into " + bin, err
		}
		return "cached in " + bin, err
	})
	r.step(true, "static binaries (cni-userstack, reference plugins, echo, pause) and the test images", func() (string, error) {
		t.bin = filepath.Join(t.w, "bin")
		if err := goBuildStatic(ctx, t.bin, "./cmd/cni-userstack", "./test/e2e-k8s/images/echo", "./test/e2e-k8s/images/pause",
			"github.com/containernetworking/plugins/plugins/ipam/host-local", "github.com/containernetworking/plugins/plugins/main/loopback",
			"github.com/containernetworking/plugins/plugins/meta/portmap"); err != nil {
			return "", err
		}
		if err := testImage(t.w, filepath.Join(t.w, "pause.tar"), pauseRef, filepath.Join(t.bin, "pause"), []string{"/pause"}); err != nil {
			return "", err
		}
		if err := testImage(t.w, filepath.Join(t.w, "echo.tar"), echoRef, t.echoBin(), []string{"/echo", "serve"}); err != nil {
			return "", err
		}
		help, _ := exec.CommandContext(ctx, t.ourBin(), "serve", "--help").CombinedOutput()
		t.probes = bytes.Contains(help, []byte("--metrics-addr"))
		return fmt.Sprintf("%s, %s; serve --metrics-addr present: %v", pauseRef, echoRef, t.probes), nil
	})
	t.c = newCluster(t.w, t.suffix, k8sBin, t.bin, r.logf)
	c := t.c
	r.step(true, "namespaces: a lan bridge, node1 and node2 on it", func() (string, error) {
		return fmt.Sprintf("node1 %v (%s), node2 %v (%s)", node1IP, c.n1NS, node2IP, c.n2NS), c.network()
	})
	r.step(true, "control plane: etcd, kube-apiserver, kube-controller-manager --allocate-node-cidrs, kube-scheduler", func() (string, error) {
		return "", c.controlPlane(ctx)
	})
	r.step(true, "containerd; pause, echo and cni-userstack images imported with ctr", func() (string, error) {
		if err := c.containerd(ctx); err != nil {
			return "", err
		}
		var out []string
		for _, tar := range []string{filepath.Join(t.w, "pause.tar"), filepath.Join(t.w, "echo.tar"), t.imageTar} {
			o, err := c.importImage(ctx, tar)
			if err != nil {
				return "", err
			}
			out = append(out, strings.TrimSpace(o))
		}
		return strings.Join(out, "; "), nil
	})
	if _, err := exec.LookPath("podman"); err == nil {
		r.step(false, "podman load accepts the image (private store)", func() (string, error) {
			d := filepath.Join(t.w, "podman")
			o, err := output(ctx, "podman", "--root", d+"/root", "--runroot", d+"/run", "--storage-driver", "vfs", "load", "-i", t.imageTar)
			defer exec.Command("podman", "--root", d+"/root", "--runroot", d+"/run", "--storage-driver", "vfs", "system", "reset", "-f").Run()
			if err != nil {
				return "", err
			}
			want := "localhost/cni-userstack:" + t.version
			if !strings.Contains(o, want) {
				return "", fmt.Errorf("podman load did not name %s: %s", want, o)
			}
			return "Loaded image: " + want, nil
		})
	} else {
		r.skip("podman load accepts the image", "podman is not installed")
	}
	r.step(true, "kubelet and kube-proxy; the node registers, NotReady without a CNI config", func() (string, error) {
		if err := c.kubelet(ctx); err != nil {
			return "", err
		}
		n, err := c.admin.CoreV1().Nodes().Get(ctx, node1Name, getOpts)
		if err != nil {
			return "", err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return "", fmt.Errorf("node Ready before any CNI config was written")
			}
		}
		return "node " + node1Name + " NotReady: " + readyMessage(n), nil
	})
	r.step(true, "kubectl apply -f manifests/ (host paths redirected into the work dir)", func() (string, error) {
		dir, note, err := t.renderManifests()
		if err != nil {
			return "", err
		}
		out, err := t.kubectl(ctx, "apply", "-f", dir)
		return strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(out), "\n", ",")), " ") + note, err
	})
	r.step(true, "DaemonSet pod Running and Ready; node Ready once the init container wrote the conflist with the node's pod CIDR", func() (string, error) {
		return t.daemonReady(ctx, "")
	})
	if !t.probes {
		r.skip("DaemonSet liveness/readiness probes on /healthz and /readyz",
			"this cni-userstack has no `serve --metrics-addr` yet (the operations issue serves /healthz and /readyz); probes removed from the applied copy")
	} else {
		r.step(false, "DaemonSet probes: the kubelet's liveness /healthz and readiness /readyz on 127.0.0.1:9765 answer", func() (string, error) {
			l, err := c.admin.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=cni-userstack"})
			if err != nil || len(l.Items) != 1 {
				return "", fmt.Errorf("daemon pods: %d %v", len(l.Items), err)
			}
			ct := l.Items[0].Spec.Containers[0]
			if ct.LivenessProbe == nil || ct.ReadinessProbe == nil || ct.LivenessProbe.HTTPGet.Path != "/healthz" || ct.ReadinessProbe.HTTPGet.Path != "/readyz" {
				return "", fmt.Errorf("the running pod has probes %+v / %+v", ct.LivenessProbe, ct.ReadinessProbe)
			}
			var out []string
			for _, path := range []string{"/healthz", "/readyz"} {
				body, err := t.inNetNS(ctx, c.n1Path, "get", "http://127.0.0.1:9765"+path)
				if err != nil {
					return "", err
				}
				out = append(out, path+": "+strings.TrimSpace(body))
			}
			return strings.Join(out, "; ") + fmt.Sprintf("; restarts %d", l.Items[0].Status.ContainerStatuses[0].RestartCount), nil
		})
	}
	r.step(true, "test pods Ready: HTTP readiness probe (kubelet -> pod IP) passes; addresses from the node's pod CIDR", func() (string, error) {
		return t.createTestPods(ctx)
	})
	t.checks(ctx)
	t.restartDaemon(ctx)
	t.secondNode(ctx)
	r.step(false, "deleting the test pods leaves no attachment, veth, lease or route", func() (string, error) {
		return t.deleteTestPods(ctx)
	})
}

func readyMessage(n *corev1.Node) string {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Reason + ": " + cond.Message
		}
	}
	return "no Ready condition yet"
}

// kubectl runs the built kubectl in node1's namespace as admin.
func (t *e2e) kubectl(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--net=" + t.c.n1Path, "--", t.c.k8s("kubectl"), "--kubeconfig", t.c.adminKubeconfig}, args...)
	return output(ctx, "nsenter", full...)
}

// inNetNS runs our echo binary (client mode) in a network namespace.
func (t *e2e) inNetNS(ctx context.Context, nsPath string, args ...string) (string, error) {
	full := append([]string{"--net=" + nsPath, "--", t.echoBin()}, args...)
	return output(ctx, "nsenter", full...)
}

// renderManifests writes manifests/cni-userstack.yaml with the host paths
// the run must keep private redirected into the work dir (the same path
// inside the container, so the conflist the init step writes names paths
// the plugin on the host finds), the stack namespace renamed, host-local's
// leases under the work dir, and, without `serve --metrics-addr`, no
// probes. Everything else is applied as shipped.
func (t *e2e) renderManifests() (dir, note string, err error) {
	b, err := os.ReadFile("manifests/cni-userstack.yaml")
	if err != nil {
		return "", "", err
	}
	redirect := map[string]string{
		"/opt/cni/bin":           t.c.cniBinDir(),
		"/etc/cni/net.d":         t.c.cniConfDir(),
		"/run/cni-userstack":     t.socketDir(),
		"/var/lib/cni-userstack": t.stateDir(),
		"/var/lib/cni":           t.cniData(),
	}
	var docs [][]byte
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var head struct{ Kind string }
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return "", "", err
		}
		if head.Kind == "ConfigMap" {
			var cm corev1.ConfigMap
			if err := yaml.UnmarshalStrict(doc, &cm); err != nil {
				return "", "", err
			}
			cm.Data["mode"] = t.mode
			cm.Data["clusterCIDR"] = clusterCIDR
			if t.routedServices {
				cm.Data["routedRanges"] = serviceCIDR
			}
			out, err := yaml.Marshal(&cm)
			if err != nil {
				return "", "", err
			}
			docs = append(docs, out)
			continue
		}
		if head.Kind != "DaemonSet" {
			docs = append(docs, doc)
			continue
		}
		var ds appsv1.DaemonSet
		if err := yaml.UnmarshalStrict(doc, &ds); err != nil {
			return "", "", err
		}
		spec := &ds.Spec.Template.Spec
		for i := range spec.Volumes {
			if hp := spec.Volumes[i].HostPath; hp != nil {
				if to, ok := redirect[hp.Path]; ok {
					hp.Path = to
				}
			}
		}
		fix := func(ct *corev1.Container) {
			for i := range ct.VolumeMounts {
				if to, ok := redirect[ct.VolumeMounts[i].MountPath]; ok {
					ct.VolumeMounts[i].MountPath = to
				}
			}
			for i, a := range ct.Args {
				switch {
				case a == "--socket=/run/cni-userstack/daemon.sock":
					ct.Args[i] = "--socket=" + t.socket()
				case a == "--lock-dir=/run/cni-userstack":
					ct.Args[i] = "--lock-dir=" + t.socketDir()
				case a == "--state-dir=/var/lib/cni-userstack":
					ct.Args[i] = "--state-dir=" + t.stateDir()
				case strings.HasPrefix(a, "--stack-netns="):
					ct.Args[i] = "--stack-netns=" + t.c.stack1NS
				}
			}
			if !t.probes {
				ct.LivenessProbe, ct.ReadinessProbe = nil, nil
			}
		}
		for i := range spec.InitContainers {
			fix(&spec.InitContainers[i])
			spec.InitContainers[i].Args = append(spec.InitContainers[i].Args, "--ipam-data-dir="+filepath.Join(t.cniData(), "networks"))
		}
		for i := range spec.Containers {
			fix(&spec.Containers[i])
		}
		if img := spec.Containers[0].Image; img != "localhost/cni-userstack:"+t.version {
			return "", "", fmt.Errorf("the manifest's image %s is not the version built (%s)", img, t.version)
		}
		out, err := yaml.Marshal(&ds)
		if err != nil {
			return "", "", err
		}
		docs = append(docs, out)
	}
	dir = filepath.Join(t.w, "manifests")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	err = os.WriteFile(filepath.Join(dir, "cni-userstack.yaml"), bytes.Join(docs, []byte("\n---\n")), 0o644)
	routed := ""
	if t.routedServices {
		routed = "; routedRanges " + serviceCIDR
	}
	return dir, fmt.Sprintf(" [mode %s%s; host paths under %s/node1, stack netns %s]", t.mode, routed, t.w, t.c.stack1NS), err
}

// daemonReady waits for the DaemonSet's pod on node1 (not old, when set)
// to be Running and Ready, and for the node to be Ready with our
// conflist in containerd's conf dir.
func (t *e2e) daemonReady(ctx context.Context, old string) (string, error) {
	c := t.c
	var pod *corev1.Pod
	err := waitFor(ctx, "DaemonSet pod Ready", 180*time.Second, nil, func() error {
		l, err := c.admin.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=cni-userstack"})
		if err != nil {
			return err
		}
		for i := range l.Items {
			p := &l.Items[i]
			if p.Spec.NodeName != node1Name || p.Name == old || p.DeletionTimestamp != nil {
				continue
			}
			pod = p
			if p.Status.Phase == corev1.PodRunning && podReady(p) {
				return nil
			}
			return fmt.Errorf("pod %s: %s", p.Name, podState(p))
		}
		return fmt.Errorf("no DaemonSet pod on %s yet", node1Name)
	})
	if err != nil {
		return "", fmt.Errorf("%w\n%s", err, t.podLogs("cni-userstack"))
	}
	var node *corev1.Node
	if err := waitFor(ctx, "node Ready", 90*time.Second, nil, func() error {
		n, err := c.admin.CoreV1().Nodes().Get(ctx, node1Name, getOpts)
		if err != nil {
			return err
		}
		node = n
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("%s", readyMessage(n))
	}); err != nil {
		return "", err
	}
	cidrs, err := kube.PodCIDRs(node)
	if err != nil || len(cidrs) == 0 {
		return "", fmt.Errorf("node pod CIDRs %v: %v", cidrs, err)
	}
	if t.podCIDR, t.podCIDR6, err = bothFamilies(cidrs); err != nil {
		return "", fmt.Errorf("node %s: %w", node1Name, err)
	}
	conf, err := os.ReadFile(filepath.Join(c.cniConfDir(), "10-cni-userstack.conflist"))
	if err != nil {
		return "", err
	}
	if !bytes.Contains(conf, []byte(`"subnet": "`+t.podCIDR.String()+`"`)) || !bytes.Contains(conf, []byte(`"subnet": "`+t.podCIDR6.String()+`"`)) ||
		!bytes.Contains(conf, []byte(`"autostart": false`)) {
		return "", fmt.Errorf("conflist lacks the pod CIDRs %v, %v or autostart false:\n%s", t.podCIDR, t.podCIDR6, conf)
	}
	for _, b := range []string{"cni-userstack", "host-local", "loopback", "portmap"} {
		if fi, err := os.Stat(filepath.Join(c.cniBinDir(), b)); err != nil || fi.Mode().Perm() != 0o755 {
			return "", fmt.Errorf("binary %s in the CNI bin dir: %v", b, err)
		}
	}
	return fmt.Sprintf("pod %s Ready; node Ready; conflist with %v and %v and autostart false; 4 binaries installed", pod.Name, t.podCIDR, t.podCIDR6), nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podState(p *corev1.Pod) string {
	s := string(p.Status.Phase)
	for _, cs := range append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			s += fmt.Sprintf(" %s waiting (%s: %s)", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			s += fmt.Sprintf(" %s terminated (%s, exit %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
		case cs.State.Running != nil:
			s += fmt.Sprintf(" %s running ready=%v restarts=%d", cs.Name, cs.Ready, cs.RestartCount)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			s += fmt.Sprintf(" [%s: %s]", c.Type, c.Message)
		}
	}
	return s
}

// podLogs returns the tails of the container logs of pods whose name
// starts with prefix (the kubelet writes them under the run's pod-log
// dir).
func (t *e2e) podLogs(prefix string) string {
	var out []string
	dirs, _ := filepath.Glob(filepath.Join(t.c.path("pod-logs"), "*_"+prefix+"*", "*", "*.log"))
	for _, f := range dirs {
		out = append(out, "--- "+f+"\n"+tail(f, 25))
	}
	return strings.Join(out, "\n")
}

func echoPod(name string, labels map[string]string, hostPorts bool) *corev1.Pod {
	ct := corev1.Container{
		Name: "echo", Image: echoRef, ImagePullPolicy: corev1.PullNever,
		Args: []string{"serve"},
		Env:  []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
			{Name: "udp", ContainerPort: 9000, Protocol: corev1.ProtocolUDP}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 2, TimeoutSeconds: 2},
	}
	if hostPorts {
		ct.Ports[0].HostPort, ct.Ports[1].HostPort = 30080, 30090
	}
	zero := int64(0)
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node1Name, Containers: []corev1.Container{ct}, TerminationGracePeriodSeconds: &zero}}
}

// createTestPods creates echo-a (with hostPorts), echo-b (the Service's
// backend) and the Service, and waits for both pods to be Ready.
func (t *e2e) createTestPods(ctx context.Context) (string, error) {
	c := t.c
	t.pods = map[string]*corev1.Pod{}
	for _, p := range []*corev1.Pod{echoPod("echo-a", map[string]string{"app": "echo-a"}, true), echoPod("echo-b", map[string]string{"app": "echo-b", "role": "backend"}, false)} {
		if _, err := c.admin.CoreV1().Pods(testNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return "", err
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo-svc", Namespace: testNS},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"role": "backend"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}}
	if _, err := c.admin.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	var notes []string
	for _, name := range []string{"echo-a", "echo-b"} {
		p, err := t.waitPodReady(ctx, name)
		if err != nil {
			return "", err
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !t.podCIDR.Contains(ip) {
			return "", fmt.Errorf("pod %s has IP %q, not in the node's pod CIDR %v", name, p.Status.PodIP, t.podCIDR)
		}
		ip6, err := podIP6(p)
		if err != nil || !t.podCIDR6.Contains(ip6) {
			return "", fmt.Errorf("pod %s has IPs %v, none in the node's IPv6 pod CIDR %v (%v)", name, p.Status.PodIPs, t.podCIDR6, err)
		}
		t.pods[name] = p
		notes = append(notes, fmt.Sprintf("%s %s %s", name, ip, ip6))
	}
	return strings.Join(notes, ", ") + " in " + t.podCIDR.String() + " and " + t.podCIDR6.String(), nil
}

// bothFamilies splits a dual-stack node's pod CIDRs into its IPv4 and
// IPv6 one, which must both be there.
func bothFamilies(cidrs []netip.Prefix) (v4, v6 netip.Prefix, err error) {
	for _, c := range cidrs {
		if c.Addr().Is4() {
			v4 = c
		} else {
			v6 = c
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		return v4, v6, fmt.Errorf("pod CIDRs %v: want one of each family (the cluster is dual-stack)", cidrs)
	}
	return v4, v6, nil
}

// podIP6 is a pod's IPv6 address from status.podIPs.
func podIP6(p *corev1.Pod) (netip.Addr, error) {
	for _, a := range p.Status.PodIPs {
		if ip, err := netip.ParseAddr(a.IP); err == nil && ip.Is6() {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no IPv6 address in %v", p.Status.PodIPs)
}

func (t *e2e) waitPodReady(ctx context.Context, name string) (*corev1.Pod, error) {
	var pod *corev1.Pod
	err := waitFor(ctx, "pod "+name+" Ready", 120*time.Second, nil, func() error {
		p, err := t.c.admin.CoreV1().Pods(testNS).Get(ctx, name, getOpts)
		if err != nil {
			return err
		}
		pod = p
		if p.Status.PodIP != "" && podReady(p) {
			return nil
		}
		return fmt.Errorf("%s", podState(p))
	})
	if err != nil {
		return nil, fmt.Errorf("%w\nevents: %s", err, t.events(ctx, name))
	}
	return pod, nil
}

// events lists the events of an object (for failure messages).
func (t *e2e) events(ctx context.Context, name string) string {
	l, err := t.c.admin.CoreV1().Events(testNS).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range l.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return strings.Join(out, " | ")
}

// podNetNS finds a pod's network namespace through the daemon's
// attachments (the plugin recorded it at ADD).
func (t *e2e) podNetNS(ctx context.Context, socket string, ip string) (string, error) {
	l, err := api.NewClient(socket, 10*time.Second).List(ctx)
	if err != nil {
		return "", err
	}
	for _, a := range l {
		if a.IP.Addr().String() == ip {
			return a.PodNetNS, nil
		}
	}
	return "", fmt.Errorf("no attachment with IP %s among %d", ip, len(l))
}

// whoami GETs http://ADDR/whoami from a namespace and checks who the
// server says it is and whom it sees.
func (t *e2e) whoami(ctx context.Context, fromNS, addr, wantServer, wantSrc string) (string, error) {
	out, err := t.inNetNS(ctx, fromNS, "get", "http://"+addr+"/whoami")
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return "", fmt.Errorf("answer %q", out)
	}
	if wantServer != "" && f[0] != wantServer {
		return "", fmt.Errorf("answered by %s, want %s", f[0], wantServer)
	}
	src, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return "", fmt.Errorf("answer %q: %w", out, err)
	}
	if wantSrc != "" && src.Addr().String() != wantSrc {
		return "", fmt.Errorf("%s saw the request from %s, want %s", f[0], src.Addr(), wantSrc)
	}
	return fmt.Sprintf("%s saw %s", f[0], f[1]), nil
}

func (t *e2e) checks(ctx context.Context) {
	r := t.r
	if r.broken != "" {
		return
	}
	a, b := t.pods["echo-a"], t.pods["echo-b"]
	aNS, errA := t.podNetNS(ctx, t.socket(), a.Status.PodIP)
	_, errB := t.podNetNS(ctx, t.socket(), b.Status.PodIP)
	if errA != nil || errB != nil {
		r.step(true, "pod namespaces from the daemon's attachments", func() (string, error) { return "", fmt.Errorf("%v %v", errA, errB) })
		return
	}
	n1 := t.c.n1Path
	r.step(false, "pod -> pod (the receiver sees the sender's pod IP)", func() (string, error) {
		return t.whoami(ctx, aNS, b.Status.PodIP+":8080", "echo-b", a.Status.PodIP)
	})
	r.step(false, "pod -> node (a server on the node's IP)", func() (string, error) {
		p, err := t.c.start("node1-echo", n1, t.echoBin(), "serve", "-http", node1IP.String()+":18080", "-udp", node1IP.String()+":19000")
		if err != nil {
			return "", err
		}
		var out string
		err = waitFor(ctx, "pod -> node", 15*time.Second, p, func() error {
			var err error
			out, err = t.whoami(ctx, aNS, node1IP.String()+":18080", "", "")
			return err
		})
		return out, err
	})
	r.step(false, "node -> pod", func() (string, error) {
		return t.whoami(ctx, n1, a.Status.PodIP+":8080", "echo-a", "")
	})
	// The same over IPv6: the cluster is dual-stack, every pod has an
	// address of each family.
	a6, errA6 := podIP6(a)
	b6, errB6 := podIP6(b)
	r.step(false, "pod -> pod over IPv6 (the receiver sees the sender's pod IPv6 address)", func() (string, error) {
		if errA6 != nil || errB6 != nil {
			return "", fmt.Errorf("%v %v", errA6, errB6)
		}
		return t.whoami(ctx, aNS, netip.AddrPortFrom(b6, 8080).String(), "echo-b", a6.String())
	})
	r.step(false, "pod -> node over IPv6 (a server on the node's IPv6 address)", func() (string, error) {
		hp := netip.AddrPortFrom(node1IP6, 18081).String()
		p, err := t.c.start("node1-echo6", n1, t.echoBin(), "serve", "-http", hp, "-udp", netip.AddrPortFrom(node1IP6, 19001).String())
		if err != nil {
			return "", err
		}
		var out string
		err = waitFor(ctx, "pod -> node over IPv6", 15*time.Second, p, func() error {
			var err error
			out, err = t.whoami(ctx, aNS, hp, "", "")
			return err
		})
		return out, err
	})
	r.step(false, "node -> pod over IPv6", func() (string, error) {
		if errA6 != nil {
			return "", errA6
		}
		return t.whoami(ctx, n1, netip.AddrPortFrom(a6, 8080).String(), "echo-a", "")
	})
	r.step(false, "pod -> ClusterIP Service whose backend pod is on the same node (kube-proxy)", func() (string, error) {
		svc, err := t.c.admin.CoreV1().Services(testNS).Get(ctx, "echo-svc", getOpts)
		if err != nil {
			return "", err
		}
		if a.Spec.NodeName != b.Spec.NodeName {
			return "", fmt.Errorf("echo-a is on %s, the backend echo-b on %s: not the same node", a.Spec.NodeName, b.Spec.NodeName)
		}
		// Forwarded to kube-proxy's PREROUTING DNAT (route mode, or the
		// Service CIDR routed): the backend sees the client pod, and the
		// answer reaches it from the ClusterIP only because the stack
		// sends it back through the host (docs/kubernetes.md, "How
		// traffic flows"). Proxied: the daemon's socket meets the DNAT in
		// OUTPUT, from the uplink's host address.
		wantSrc, how := a.Status.PodIP, "forwarded"
		if t.mode == "proxy" && !t.routedServices {
			st, err := api.NewClient(t.socket(), 5*time.Second).Status(ctx)
			if err != nil || st.Uplink == nil {
				return "", fmt.Errorf("the daemon's uplink: %v %+v", err, st)
			}
			wantSrc, how = st.Uplink.HostAddr.Addr().String(), "proxied"
		}
		var out string
		err = waitFor(ctx, "service answers", 30*time.Second, nil, func() error {
			var err error
			out, err = t.whoami(ctx, aNS, svc.Spec.ClusterIP+":80", "echo-b", wantSrc)
			return err
		})
		return fmt.Sprintf("%s:80 -> %s (%s, both pods on %s)", svc.Spec.ClusterIP, out, how, a.Spec.NodeName), err
	})
	for _, host := range []string{node1IP.String(), "127.0.0.1"} {
		r.step(false, "hostPort TCP 30080 on "+host+" reaches the pod", func() (string, error) {
			return t.whoami(ctx, n1, host+":30080", "echo-a", "")
		})
		r.step(false, "hostPort UDP 30090 on "+host+" reaches the pod", func() (string, error) {
			return t.inNetNS(ctx, n1, "udp", host+":30090", "64")
		})
	}
	r.step(false, "a 2000-byte UDP datagram pod -> pod arrives whole (and back)", func() (string, error) {
		return t.inNetNS(ctx, aNS, "udp", b.Status.PodIP+":9000", "2000")
	})
}

// restartDaemon deletes the daemon's pod, creates a pod at once, and
// checks that the DaemonSet's new pod comes up, the running pods stay
// reachable and the new pod gets its network (the plugin waited for the
// new daemon's socket).
func (t *e2e) restartDaemon(ctx context.Context) {
	r := t.r
	if r.broken != "" {
		return
	}
	c := t.c
	r.step(false, "daemon pod deleted (DaemonSet recreates it): test pods stay reachable; a pod created right after gets its network", func() (string, error) {
		l, err := c.admin.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=cni-userstack"})
		if err != nil || len(l.Items) != 1 {
			return "", fmt.Errorf("daemon pods: %v %v", len(l.Items), err)
		}
		old := l.Items[0].Name
		before, _ := api.NewClient(t.socket(), 5*time.Second).Status(ctx)
		if err := c.admin.CoreV1().Pods("kube-system").Delete(ctx, old, metav1.DeleteOptions{}); err != nil {
			return "", err
		}
		// The pod is created once the old daemon has stopped answering,
		// so its ADD meets the gap of the restart.
		if err := waitFor(ctx, "old daemon stopped", 60*time.Second, nil, func() error {
			if _, err := api.NewClient(t.socket(), time.Second).Status(ctx); err == nil {
				return fmt.Errorf("the old daemon still answers")
			}
			return nil
		}); err != nil {
			return "", err
		}
		gap := time.Now()
		if _, err := c.admin.CoreV1().Pods(testNS).Create(ctx, echoPod("echo-c", map[string]string{"app": "echo-c"}, false), metav1.CreateOptions{}); err != nil {
			return "", err
		}
		if _, err := t.daemonReady(ctx, old); err != nil {
			return "", err
		}
		after, err := api.NewClient(t.socket(), 5*time.Second).Status(ctx)
		if err != nil {
			return "", err
		}
		if before == nil || !after.Started.After(before.Started) {
			return "", fmt.Errorf("the daemon was not restarted (started %v, before %v)", after.Started, before)
		}
		a, b := t.pods["echo-a"], t.pods["echo-b"]
		aNS, err := t.podNetNS(ctx, t.socket(), a.Status.PodIP)
		if err != nil {
			return "", fmt.Errorf("after the restart: %w", err)
		}
		var notes []string
		if _, err := t.whoami(ctx, aNS, b.Status.PodIP+":8080", "echo-b", a.Status.PodIP); err != nil {
			return "", fmt.Errorf("pod -> pod after the restart: %w", err)
		}
		if _, err := t.whoami(ctx, c.n1Path, a.Status.PodIP+":8080", "echo-a", ""); err != nil {
			return "", fmt.Errorf("node -> pod after the restart: %w", err)
		}
		pc, err := t.waitPodReady(ctx, "echo-c")
		if err != nil {
			return "", err
		}
		t.pods["echo-c"] = pc
		// Its first sandbox came up: the plugin waited for the new daemon
		// instead of failing the ADD (which the kubelet would report).
		if ev := t.events(ctx, "echo-c"); strings.Contains(ev, "FailedCreatePodSandBox") {
			return "", fmt.Errorf("echo-c's sandbox failed before it came up: %s", ev)
		}
		cNS, err := t.podNetNS(ctx, t.socket(), pc.Status.PodIP)
		if err != nil {
			return "", err
		}
		if _, err := t.whoami(ctx, cNS, b.Status.PodIP+":8080", "echo-b", pc.Status.PodIP); err != nil {
			return "", fmt.Errorf("new pod -> pod: %w", err)
		}
		notes = append(notes, fmt.Sprintf("echo-c created %s while no daemon answered; new daemon started %s with %d attachments",
			gap.Format("15:04:05.000"), after.Started.Format("15:04:05.000"), after.Attachments),
			"echo-a -> echo-b and node -> echo-a still answer", "echo-c "+pc.Status.PodIP+" Ready at its first sandbox (no FailedCreatePodSandBox) and reaches echo-b")
		return strings.Join(notes, "; "), nil
	})
}

// deleteTestPods deletes the test pods and the Service and checks that
// nothing of them is left: no attachment in the daemon, no far end in the
// stack namespace, no host-local lease, no route to the pod range.
func (t *e2e) deleteTestPods(ctx context.Context) (string, error) {
	c := t.c
	zero := int64(0)
	all, err := c.admin.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	for _, p := range all.Items {
		if err := c.admin.CoreV1().Pods(testNS).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return "", err
		}
	}
	c.admin.CoreV1().Services(testNS).Delete(ctx, "echo-svc", metav1.DeleteOptions{})
	if err := waitFor(ctx, "test pods gone", 90*time.Second, nil, func() error {
		l, err := c.admin.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(l.Items) > 0 {
			return fmt.Errorf("%d pods left", len(l.Items))
		}
		return nil
	}); err != nil {
		return "", err
	}
	// The kubelet removes a deleted pod's sandbox (CNI DEL) right after.
	var left []string
	err = waitFor(ctx, "nothing left", 60*time.Second, nil, func() error {
		left = nil
		l, err := api.NewClient(t.socket(), 5*time.Second).List(ctx)
		if err != nil {
			return err
		}
		for _, a := range l {
			left = append(left, "attachment "+a.String())
		}
		fe, err := veth.ListFarEnds(c.stack1NS)
		if err != nil {
			return err
		}
		for _, f := range fe {
			left = append(left, "far end "+f.Name)
		}
		leases, _ := os.ReadDir(t.leaseDir())
		for _, e := range leases {
			if _, err := netip.ParseAddr(e.Name()); err == nil {
				left = append(left, "lease "+e.Name())
			}
		}
		tbl, err := kube.NewNetlinkTableAt(c.n1Path)
		if err != nil {
			return err
		}
		rs, err := tbl.List()
		tbl.Close()
		if err != nil {
			return err
		}
		for _, r := range rs {
			// 0x75: the uplink routes to this node's pod ranges (0x76,
			// the routes to other nodes, have their own step).
			if r.Proto == 0x75 {
				left = append(left, fmt.Sprintf("route %v proto %#x", r.Dst, r.Proto))
			}
		}
		for n := range netnsNames() {
			if strings.HasPrefix(n, "cni-") && !c.netnsBefore[n] {
				left = append(left, "pod netns "+n)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("left: %s", strings.Join(left, ", "))
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	t.pods = nil
	return "no attachment, far end, lease, uplink route (proto 0x75) or pod netns left", nil
}

// beforeTeardown removes the test pods and the DaemonSet through the API
// while the cluster runs (best effort, bounded), so that the plugin's DEL
// and the kubelet clean what they made; then node2's pod.
func (t *e2e) beforeTeardown(ctx context.Context) {
	if t.node2 != nil {
		t.node2.delPod(ctx)
	}
	c := t.c
	if c.admin == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	zero := int64(0)
	l, err := c.admin.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
	if err == nil && len(l.Items) > 0 {
		for _, p := range l.Items {
			c.admin.CoreV1().Pods(testNS).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		}
		waitFor(ctx, "pods gone", 60*time.Second, nil, func() error {
			l, err := c.admin.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
			if err == nil && len(l.Items) > 0 {
				return fmt.Errorf("%d left", len(l.Items))
			}
			return err
		})
		time.Sleep(3 * time.Second) // the kubelet's sandbox removal (CNI DEL)
	}
	c.admin.AppsV1().DaemonSets("kube-system").Delete(ctx, "cni-userstack", metav1.DeleteOptions{})
	waitFor(ctx, "daemon pod gone", 40*time.Second, nil, func() error {
		l, err := c.admin.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=cni-userstack"})
		if err == nil && len(l.Items) > 0 {
			return fmt.Errorf("%d left", len(l.Items))
		}
		return err
	})
}

// leftovers checks the machine after teardown: none of the run's
// namespaces, processes or files.
func (c *cluster) leftovers() (string, error) {
	var left []string
	for n := range netnsNames() {
		if strings.Contains(n, c.suffix) || (strings.HasPrefix(n, "cni-") && !c.netnsBefore[n]) {
			left = append(left, "netns "+n)
		}
	}
	if pids := pidsWithArg(c.w); len(pids) > 0 {
		left = append(left, fmt.Sprintf("processes %v", pids))
	}
	for _, h := range []string{"memory", "pids", "cpu", "systemd"} {
		if dirExists(filepath.Join("/sys/fs/cgroup", h, c.cgroupRoot)) {
			left = append(left, "cgroup "+h+c.cgroupRoot)
		}
	}
	if len(mountsUnder(c.w)) > 0 {
		left = append(left, fmt.Sprintf("mounts %v", mountsUnder(c.w)))
	}
	if len(left) > 0 {
		return "", fmt.Errorf("left behind: %s", strings.Join(left, ", "))
	}
	return "namespaces, processes, mounts and cgroups of the run gone", nil
}
