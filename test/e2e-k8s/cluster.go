package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Addresses of the run. They exist only inside the run's namespaces:
// node1 and node2 hang off one bridge in the "lan" namespace.
var (
	nodeNet = netip.MustParsePrefix("192.168.250.0/24")
	node1IP = netip.MustParseAddr("192.168.250.1")
	node2IP = netip.MustParseAddr("192.168.250.2")
	// lanGateway is the nodes' default route: no host has it, nothing
	// leaves the run's namespaces.
	lanGateway = netip.MustParseAddr("192.168.250.254")
	// The cluster is dual-stack: the nodes have an IPv6 address on the
	// lan too (their second InternalIP), the controller manager gives
	// each node a pod CIDR of each family, Services get both.
	nodeNet6    = netip.MustParsePrefix("fd00:250::/64")
	node1IP6    = netip.MustParseAddr("fd00:250::1")
	node2IP6    = netip.MustParseAddr("fd00:250::2")
	lanGateway6 = netip.MustParseAddr("fd00:250::fe")
	clusterCIDR = "10.244.0.0/16,fd00:10:244::/56"
	serviceCIDR = "10.96.0.0/16,fd00:10:96::/112"
	apiPort     = 6443
)

const (
	node1Name = "k8s-node1"
	node2Name = "k8s-node2"
	// Images built and imported by the run; no registry is ever asked.
	pauseRef = "localhost/e2e-pause:1.0"
	echoRef  = "localhost/e2e-echo:1.0"
)

// proc is a process the run started (a cluster component).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// cluster is everything one run creates; teardown removes all of it.
type cluster struct {
	w, suffix             string // private work dir, random name part
	k8sBin, ourBin        string // Kubernetes binaries, ours (+ echo)
	lanNS, n1NS, n2NS     string // namespace names
	stack1NS, stack2NS    string
	n1Path, n2Path        string
	pki                   *pki
	procs                 []*proc
	cgroupRoot            string
	netnsBefore           map[string]bool
	admin                 kubernetes.Interface
	adminKubeconfig       string // server https://127.0.0.1 (inside node1)
	adminKubeconfigRemote string // server https://node1IP (from node2)
	logf                  func(string, ...any)
}

func newCluster(w, suffix, k8sBin, ourBin string, logf func(string, ...any)) *cluster {
	return &cluster{w: w, suffix: suffix, k8sBin: k8sBin, ourBin: ourBin, logf: logf,
		lanNS: "e2ek8s-lan-" + suffix, n1NS: "e2ek8s-n1-" + suffix, n2NS: "e2ek8s-n2-" + suffix,
		stack1NS: "e2ek8s-stk1-" + suffix, stack2NS: "e2ek8s-stk2-" + suffix,
		cgroupRoot: "/e2ek8s-" + suffix}
}

func (c *cluster) path(p ...string) string { return filepath.Join(append([]string{c.w}, p...)...) }

// netnsNames lists /run/netns.
func netnsNames() map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir(veth.NetNSRunDir)
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}

// network creates the lan namespace with a bridge and the two node
// namespaces, each with a veth on the bridge and its address.
func (c *cluster) network() error {
	c.netnsBefore = netnsNames()
	lanPath, err := veth.NewNetNS(c.lanNS)
	if err != nil {
		return err
	}
	if c.n1Path, err = veth.NewNetNS(c.n1NS); err != nil {
		return err
	}
	if c.n2Path, err = veth.NewNetNS(c.n2NS); err != nil {
		return err
	}
	return ns.WithNetNSPath(lanPath, func(ns.NetNS) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		for i, n := range []struct {
			path    string
			ip, ip6 netip.Addr
		}{{c.n1Path, node1IP, node1IP6}, {c.n2Path, node2IP, node2IP6}} {
			port := fmt.Sprintf("port%d", i+1)
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MasterIndex: br.Index}, PeerName: "eth0"}); err != nil {
				return fmt.Errorf("veth %s: %w", port, err)
			}
			pl, _ := netlink.LinkByName(port)
			if err := netlink.LinkSetUp(pl); err != nil {
				return err
			}
			peer, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			nsh, err := ns.GetNS(n.path)
			if err != nil {
				return err
			}
			err = netlink.LinkSetNsFd(peer, int(nsh.Fd()))
			nsh.Close()
			if err != nil {
				return err
			}
			ip, ip6 := n.ip, n.ip6
			if err := ns.WithNetNSPath(n.path, func(ns.NetNS) error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(nodeNet.Bits(), 32)}}
				if err := netlink.AddrAdd(l, a); err != nil {
					return err
				}
				// No duplicate address detection: the address is usable at
				// once (the lan is the run's own).
				a6 := &netlink.Addr{IPNet: &net.IPNet{IP: ip6.AsSlice(), Mask: net.CIDRMask(nodeNet6.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
				if err := netlink.AddrAdd(l, a6); err != nil {
					return fmt.Errorf("IPv6 address: %w", err)
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
				// The nodes' default routes: the lan (nothing answers past it).
				if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: nil, Gw: lanGateway.AsSlice(), Scope: netlink.SCOPE_UNIVERSE}); err != nil {
					return err
				}
				return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
					Gw: lanGateway6.AsSlice(), Scope: netlink.SCOPE_UNIVERSE})
			}); err != nil {
				return fmt.Errorf("node %v: %w", ip, err)
			}
		}
		return nil
	})
}

// start runs name inside the network namespace nsPath (nsenter --net:
// the mount namespace stays the host's) with its output in logs/NAME.log.
func (c *cluster) start(name, nsPath, bin string, args ...string) (*proc, error) {
	logPath := c.path("logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	full := append([]string{"--net=" + nsPath, "--", bin}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return p, nil
}

// spawnReq asks the spawner thread to start a command.
type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

var spawnCh = make(chan spawnReq)

// The spawner: one goroutine locked to its OS thread for the life of the
// run. Pdeathsig fires when the *thread* that forked the child exits, and
// the Go runtime ends threads (every namespace switch here leaves its
// thread to die): a component forked from such a thread was SIGKILLed at a
// random moment. Forked from this thread, which never exits, a component
// dies with the harness only.
func init() {
	go func() {
		runtime.LockOSThread()
		for r := range spawnCh {
			r.err <- r.cmd.Start()
		}
	}()
}

func spawn(cmd *exec.Cmd) error {
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	spawnCh <- r
	return <-r.err
}

// stop sends SIGTERM, waits up to 10 s, then SIGKILL.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v); see %s; its last lines:\n%s", p.name, p.err, p.log, tail(p.log, 8))
	default:
		return nil
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond every 250 ms until it returns nil or the bound
// passes; the error is cond's last. p (may be nil) failing ends it early.
func waitFor(ctx context.Context, what string, bound time.Duration, p *proc, cond func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if p != nil {
			if perr := p.exited(); perr != nil {
				return perr
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v: %w", what, bound, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// inNS dials inside a namespace: a connection made there stays there.
func inNS(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ns.WithNetNSPath(path, func(ns.NetNS) error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// controlPlane writes the PKI and starts etcd, kube-apiserver,
// kube-controller-manager (allocating node CIDRs) and kube-scheduler in
// node1's namespace.
func (c *cluster) controlPlane(ctx context.Context) error {
	var err error
	if c.pki, err = newPKI(c.path("pki")); err != nil {
		return err
	}
	p := c.pki
	ips := []net.IP{net.ParseIP("127.0.0.1"), node1IP.AsSlice(), net.ParseIP("10.96.0.1")}
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", node1Name}
	if err := p.issue("apiserver", "kube-apiserver", nil, ips, dns, true); err != nil {
		return err
	}
	if err := p.issue("admin", "e2e-admin", []string{"system:masters"}, nil, nil, false); err != nil {
		return err
	}
	if err := p.issue("kubelet", "system:node:"+node1Name, []string{"system:nodes"}, []net.IP{node1IP.AsSlice(), net.ParseIP("127.0.0.1")}, []string{node1Name}, true); err != nil {
		return err
	}
	c.adminKubeconfig = c.path("admin.kubeconfig")
	c.adminKubeconfigRemote = c.path("admin-remote.kubeconfig")
	local := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	remote := fmt.Sprintf("https://%s:%d", node1IP, apiPort)
	for path, server := range map[string]string{c.adminKubeconfig: local, c.adminKubeconfigRemote: remote} {
		if err := p.kubeconfig(path, server, "admin", ""); err != nil {
			return err
		}
	}
	if err := p.kubeconfig(c.path("kubelet.kubeconfig"), local, "kubelet", ""); err != nil {
		return err
	}

	etcd, err := c.start("etcd", c.n1Path, "etcd", "--name", "e2e", "--data-dir", c.path("etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e2e=http://127.0.0.1:2380", "--log-level", "warn")
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: inNS(c.n1Path)}}
	if err := waitFor(ctx, "etcd /health", 60*time.Second, etcd, func() error {
		resp, err := hc.Get("http://127.0.0.1:2379/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}); err != nil {
		return err
	}
	api, err := c.start("kube-apiserver", c.n1Path, c.k8s("kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address=0.0.0.0", "--secure-port="+strconv.Itoa(apiPort),
		"--advertise-address="+node1IP.String(), "--service-cluster-ip-range="+serviceCIDR,
		"--client-ca-file="+p.path("ca.crt"), "--tls-cert-file="+p.path("apiserver.crt"), "--tls-private-key-file="+p.path("apiserver.key"),
		"--service-account-key-file="+p.path("sa.pub"), "--service-account-signing-key-file="+p.path("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--kubelet-client-certificate="+p.path("admin.crt"), "--kubelet-client-key="+p.path("admin.key"),
		"--authorization-mode=Node,RBAC", "--allow-privileged=true", "--cert-dir="+c.path("apiserver"),
		"--enable-priority-and-fairness=false", "--v=1")
	if err != nil {
		return err
	}
	tlsHC := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: inNS(c.n1Path),
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // readiness only; the clients verify
	if err := waitFor(ctx, "kube-apiserver /readyz", 120*time.Second, api, func() error {
		resp, err := tlsHC.Get(fmt.Sprintf("https://127.0.0.1:%d/readyz", apiPort))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	}); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.adminKubeconfig)
	if err != nil {
		return err
	}
	cfg.Dial = inNS(c.n1Path)
	if c.admin, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if _, err := c.start("kube-controller-manager", c.n1Path, c.k8s("kube-controller-manager"),
		"--kubeconfig="+c.adminKubeconfig, "--authentication-kubeconfig="+c.adminKubeconfig, "--authorization-kubeconfig="+c.adminKubeconfig,
		"--allocate-node-cidrs=true", "--cluster-cidr="+clusterCIDR, "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64",
		"--service-cluster-ip-range="+serviceCIDR, "--service-account-private-key-file="+p.path("sa.key"),
		"--root-ca-file="+p.path("ca.crt"), "--leader-elect=false", "--bind-address=127.0.0.1",
		"--cert-dir="+c.path("kcm"), "--controllers=*,-cloud-node-lifecycle", "--v=1"); err != nil {
		return err
	}
	if _, err := c.start("kube-scheduler", c.n1Path, c.k8s("kube-scheduler"),
		"--kubeconfig="+c.adminKubeconfig, "--authentication-kubeconfig="+c.adminKubeconfig, "--authorization-kubeconfig="+c.adminKubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--cert-dir="+c.path("scheduler"), "--v=1"); err != nil {
		return err
	}
	return nil
}

func (c *cluster) k8s(name string) string { return filepath.Join(c.k8sBin, name) }

// node1Dirs are node1's private stand-ins for the host paths of the
// DaemonSet and of containerd's CNI settings.
func (c *cluster) cniBinDir() string  { return c.path("node1", "opt-cni-bin") }
func (c *cluster) cniConfDir() string { return c.path("node1", "cni-net.d") }
func (c *cluster) ctrdSock() string   { return c.path("containerd", "containerd.sock") }

// containerd starts containerd in node1's namespace with private root,
// state, runc root and CNI dirs, the locally built pause image as the
// sandbox image and restrict_oom_score_adj (root here lacks
// CAP_SYS_RESOURCE, and runc fails every pod without it).
func (c *cluster) containerd(ctx context.Context) error {
	for _, d := range []string{c.cniBinDir(), c.cniConfDir(), c.path("containerd")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	conf := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[7]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[9]q
    max_conf_num = 1
`, c.path("containerd", "root"), c.path("containerd", "state"), c.ctrdSock(), c.path("containerd", "ttrpc.sock"),
		c.path("containerd", "opt"), pauseRef, c.path("containerd", "runc"), c.cniBinDir(), c.cniConfDir())
	cfgPath := c.path("containerd", "config.toml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		return err
	}
	p, err := c.start("containerd", c.n1Path, "containerd", "--config", cfgPath)
	if err != nil {
		return err
	}
	return waitFor(ctx, "containerd socket", 60*time.Second, p, func() error {
		_, err := output(ctx, "ctr", "--address", c.ctrdSock(), "version")
		return err
	})
}

// importImage loads an image tarball with `ctr -n k8s.io images import`.
func (c *cluster) importImage(ctx context.Context, tar string) (string, error) {
	return output(ctx, "ctr", "--address", c.ctrdSock(), "-n", "k8s.io", "images", "import", "--snapshotter", "overlayfs", tar)
}

// kubelet starts the kubelet of node1 (cgroupfs under a private cgroup
// root, private root and pod-log dirs, images never garbage-collected)
// and kube-proxy (iptables mode, in node1's namespace).
func (c *cluster) kubelet(ctx context.Context) error {
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[1]q}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: %[2]q
failSwapOn: false
port: 10250
healthzPort: 10248
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
tlsCertFile: %[3]q
tlsPrivateKeyFile: %[4]q
containerRuntimeEndpoint: unix://%[5]s
podLogsDir: %[6]q
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
maxPods: 30
registerNode: true
serializeImagePulls: false
`, c.pki.path("ca.crt"), c.cgroupRoot, c.pki.path("kubelet.crt"), c.pki.path("kubelet.key"), c.ctrdSock(), c.path("pod-logs"))
	cfgPath := c.path("kubelet-config.yaml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		return err
	}
	if err := makeCgroups(c.cgroupRoot); err != nil {
		return err
	}
	kl, err := c.start("kubelet", c.n1Path, c.k8s("kubelet"), "--config="+cfgPath, "--kubeconfig="+c.path("kubelet.kubeconfig"),
		"--root-dir="+c.path("kubelet"), "--cert-dir="+c.path("kubelet", "pki"), "--hostname-override="+node1Name,
		"--node-ip="+node1IP.String()+","+node1IP6.String(), "--v=1")
	if err != nil {
		return err
	}
	if _, err := c.start("kube-proxy", c.n1Path, c.k8s("kube-proxy"), "--kubeconfig="+c.adminKubeconfig,
		"--hostname-override="+node1Name, "--cluster-cidr="+clusterCIDR, "--proxy-mode=iptables",
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--v=1"); err != nil {
		return err
	}
	return waitFor(ctx, "node "+node1Name+" registered", 90*time.Second, kl, func() error {
		_, err := c.admin.CoreV1().Nodes().Get(ctx, node1Name, getOpts)
		return err
	})
}

// teardown removes everything of the run, also after a failure: the
// pods (through the kubelet while it runs, so the plugin's DEL cleans
// them), the processes (cluster components, containerd's shims and
// containers, identified by this run's paths), namespaces, mounts,
// cgroups and the work dir. It returns what it could not remove.
func (c *cluster) teardown(keepWork bool) error {
	var errs []error
	// Every container's init process, from runc's state under our root.
	if runcRoot := c.path("containerd", "runc"); dirExists(runcRoot) {
		filepath.Walk(runcRoot, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Name() == "state.json" {
				if pid := jsonInt(p, "init_process_pid"); pid > 1 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			return nil
		})
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	// containerd's shims outlive it: they name our socket in their argv.
	if c.w != "" {
		for _, pid := range pidsWithArg(c.w) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
		if left := pidsWithArg(c.w); len(left) > 0 {
			errs = append(errs, fmt.Errorf("processes still running with %s in their command line: %v", c.w, left))
		}
	}
	// Namespaces: ours, and the pods' that containerd made during the run
	// (cni-*) and did not remove.
	for _, n := range []string{c.stack1NS, c.stack2NS, c.n1NS, c.n2NS, c.lanNS} {
		if err := veth.DeleteNetNS(n); err != nil {
			errs = append(errs, err)
		}
	}
	if c.netnsBefore != nil {
		for n := range netnsNames() {
			if strings.HasPrefix(n, "cni-") && !c.netnsBefore[n] {
				if err := veth.DeleteNetNS(n); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// Mounts under the work dir (container root filesystems, the
	// kubelet's volumes), deepest first.
	if c.w != "" {
		for _, m := range mountsUnder(c.w) {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			}
		}
	}
	// The kubelet's cgroups, leaves first, in every hierarchy.
	if err := removeCgroups(c.cgroupRoot); err != nil {
		errs = append(errs, err)
	}
	if c.w != "" && !keepWork {
		if err := os.RemoveAll(c.w); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// jsonInt reads a top-level integer field from a JSON file without
// decoding the rest (runc's state.json is large).
func jsonInt(path, field string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	i := strings.Index(string(b), `"`+field+`":`)
	if i < 0 {
		return 0
	}
	s := string(b[i+len(field)+3:])
	j := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if j <= 0 {
		return 0
	}
	n, _ := strconv.Atoi(s[:j])
	return n
}

// pidsWithArg lists processes (not this one) with an argument containing s.
func pidsWithArg(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, pid)
		}
	}
	return out
}

// mountsUnder lists mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// makeCgroups creates the kubelet's cgroup root in every v1 hierarchy
// (the kubelet requires it to exist), cpuset with its parent's CPUs and
// memory nodes.
func makeCgroups(root string) error {
	hs, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return err
	}
	for _, h := range hs {
		base := filepath.Join("/sys/fs/cgroup", h.Name())
		if h.Name() == "unified" || !dirExists(base) {
			continue
		}
		d := filepath.Join(base, root)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		if h.Name() == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(base, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s/%s: %w", d, f, err)
				}
			}
		}
	}
	return nil
}

// removeCgroups removes root and everything under it in each cgroup v1
// hierarchy (and the unified one), leaves first.
func removeCgroups(root string) error {
	var errs []error
	hs, _ := os.ReadDir("/sys/fs/cgroup")
	for _, h := range hs {
		base := filepath.Join("/sys/fs/cgroup", h.Name(), root)
		if !dirExists(base) {
			continue
		}
		var dirs []string
		filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}
