package main

import (
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// attached is one pod namespace attached by a variant, and where its
// host side is. The host side is always the harness's host netns
// (harness.host): servers listen there, on listen.
type attached struct {
	pod    ns.NetNS   // the pod netns the harness made
	listen netip.Addr // address the host-side servers bind
	dial   netip.Addr // address the pod dials to reach them
	pids   []int      // helper processes whose CPU is the variant's data path
	note   string     // how the pod reaches the host, for the report
	// mapped is set when the variant has a port mapping host → pod
	// (proxy mode): the extra figure host→pod through it.
	mapped *mappedPort
	// relayFor, when set, starts what relays the servers' ports (the
	// floor relay); it runs once the servers listen.
	relayFor func(ports []int) error
	// mem, when set, is the helper's Go memory after a forced GC (the
	// relays of the harness).
	mem func() (goMem, error)
	// logs, when set, is the tail of the helper's stderr (for errors).
	logs func() string
}

// mappedPort is a port mapping host → pod.
type mappedPort struct {
	podAddr netip.Addr
	podPort int
	host    netip.AddrPort
}

// notAvailable is a variant that cannot run here or is not implemented:
// its row says why instead of failing the run.
type notAvailable struct{ reason string }

func (e *notAvailable) Error() string { return e.reason }

// variant is one column of the table.
type variant struct {
	key    string // -variants name
	label  string // column label
	attach func(h *harness) (*attached, error)
}

// variants in run order within a round.
var variants = []variant{
	{"ptp", "kernel (ptp)", (*harness).attachPTP},
	{"floor", "floor (ptp + Go relay)", func(h *harness) (*attached, error) { return h.attachFloor("goroutines") }},
	{"floor-epoll", "floor (ptp + epoll relay)", func(h *harness) (*attached, error) { return h.attachFloor("epoll") }},
	{"floor-route", "floor (AF_PACKET forwarder)", func(h *harness) (*attached, error) { return h.attachFloorRoute(h.opts.floorPacketFlags) }},
	{"floor-route-b", "floor (AF_PACKET forwarder, -floor-route-b-flags)", func(h *harness) (*attached, error) {
		return h.attachFloorRoute(h.opts.floorPacketBFlags)
	}},
	{"route", "ours, route", func(h *harness) (*attached, error) { return h.attachOurs(h.ours, "route") }},
	{"proxy", "ours, proxy", func(h *harness) (*attached, error) { return h.attachOurs(h.ours, "proxy") }},
	{"proxy-base", "ours, proxy (-baseline build)", func(h *harness) (*attached, error) {
		if h.base == nil {
			return nil, fmt.Errorf("the baseline daemon: %w", h.baseErr)
		}
		return h.attachOurs(h.base, "proxy")
	}},
	{"route-base", "ours, route (-baseline build)", func(h *harness) (*attached, error) {
		if h.base == nil {
			return nil, fmt.Errorf("the baseline daemon: %w", h.baseErr)
		}
		return h.attachOurs(h.base, "route")
	}},
	{"gvisor", "gVisor relay", (*harness).attachGVisor},
	{"pasta", "pasta, MTU 1500", func(h *harness) (*attached, error) { return h.attachPasta(1500) }},
	{"pasta-64k", "pasta, MTU 65520", func(h *harness) (*attached, error) { return h.attachPasta(65520) }},
	{"slirp4netns", "slirp4netns", (*harness).attachSlirp},
}

// defaultVariants is every variant but proxy-base and route-base, which
// need -baseline, and floor-route-b, the floor's A/B twin.
func defaultVariants() []string {
	var out []string
	for _, k := range variantKeys() {
		if k != "proxy-base" && k != "route-base" && k != "floor-route-b" {
			out = append(out, k)
		}
	}
	return out
}

func variantKeys() []string {
	var out []string
	for _, v := range variants {
		out = append(out, v.key)
	}
	return out
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// cniTimeout bounds one CNI ADD or DEL of the data-path variants.
const cniTimeout = time.Minute

// inNS runs fn inside n (nil = here), bounded.
func inNS(h *harness, n ns.NetNS, fn func() error) error {
	if n == nil {
		return fn()
	}
	return cnitest.InNSTimeout(h.tb, n, 2*time.Minute, fn)
}

// addPod runs ADD for a fresh pod netns through libcni with the host netns
// as the plugins' netns and the capability args caps (nil = none), and
// registers the DEL. The result must hold one address.
func (h *harness) addPod(cni *libcni.CNIConfig, list *libcni.NetworkConfigList, caps map[string]any) (ns.NetNS, *current.Result, error) {
	return h.addPodIPs(cni, list, caps, 1)
}

// addPodIPs is addPod with a result of nIPs addresses (2: dual stack).
func (h *harness) addPodIPs(cni *libcni.CNIConfig, list *libcni.NetworkConfigList, caps map[string]any, nIPs int) (ns.NetNS, *current.Result, error) {
	hostNS := h.host.ns
	pod := cnitest.NewPodNS(h.tb)
	rt := cnitest.RuntimeConf(cnitest.UniqueName(h.tb, "ctr"), pod.Path(), "eth0", caps)
	var r types.Result
	// libcni kills the plugin when ctx ends: both calls are bounded.
	ctx, cancel := context.WithTimeout(h.ctx, cniTimeout)
	defer cancel()
	err := inNS(h, hostNS, func() error {
		var err error
		r, err = cni.AddNetworkList(ctx, list, rt)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	h.undo.add("CNI DEL "+rt.ContainerID, func() {
		ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
		defer cancel()
		inNS(h, hostNS, func() error { return cni.DelNetworkList(ctx, list, rt) })
	})
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, nil, fmt.Errorf("ADD result: %w", err)
	}
	if len(res.IPs) != nIPs {
		return nil, nil, fmt.Errorf("ADD result has %d IPs, want %d", len(res.IPs), nIPs)
	}
	return pod, res, nil
}

// ptpCNI is the reference plugin's CNI and a fresh network for it:
// host-local IPAM on a random 10.251.X.0/24 with a default route via the
// gateway (ptp gives the pod a route to the subnet only otherwise), no
// masquerade. Its "host" side is the harness's host netns, so ptp's host
// veths, routes and ip_forward=1 stay out of the real host netns.
func (h *harness) ptpCNI() (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	b := make([]byte, 1)
	rand.Read(b)
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 251, b[0], 0}), 24)
	ipam := cnitest.HostLocal(subnet, h.tb.TempDir())
	ipam["routes"] = []map[string]any{{"dst": "0.0.0.0/0"}}
	js, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0",
		"name":       cnitest.UniqueName(h.tb, "ptp"),
		"plugins":    []any{map[string]any{"type": "ptp", "ipMasq": false, "ipam": ipam}},
	})
	if err != nil {
		h.tb.Fatal(err)
	}
	return cnitest.CNI(h.tb, h.refBin), cnitest.ConfList(h.tb, string(js))
}

// addPTPPod adds a pod with ptp and returns it with its gateway (ptp's
// host-side veth address).
func (h *harness) addPTPPod() (ns.NetNS, netip.Addr, error) {
	cni, list := h.ptpCNI()
	pod, res, err := h.addPod(cni, list, nil)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("ptp ADD: %w", err)
	}
	gw, ok := netip.AddrFromSlice(res.IPs[0].Gateway.To4())
	if !ok {
		return nil, netip.Addr{}, fmt.Errorf("ptp result has no IPv4 gateway: %+v", res.IPs[0])
	}
	return pod, gw, nil
}

func (h *harness) attachPTP() (*attached, error) {
	pod, gw, err := h.addPTPPod()
	if err != nil {
		return nil, err
	}
	P := h.host.addr()
	return &attached{pod: pod, listen: P, dial: P,
		note: fmt.Sprintf("pod → %v (the host's primary address) via ptp's gateway %v: the kernel veth path", P, gw)}, nil
}

// oursNode is our plugin's private node, as the e2e tests' cniEnv: its own
// daemon (running in the harness's host netns), socket, state dir, stack
// netns, uplink, pod range and IPAM dir, so it never touches a real
// installation. One serves the data-path variants of ours and the ADD/DEL
// latency run; the memory benchmark starts one of its own.
type oursNode struct {
	bin      string
	cni      *libcni.CNIConfig
	network  string
	socket   string
	stateDir string
	stackNS  string
	uplinkIf string
	uplink   netip.Prefix
	subnet   netip.Prefix
	ipamDir  string
	logFile  string
	daemon   *exec.Cmd
	done     chan error
	// uplink6 and subnet6 are the IPv6 uplink and pod range of our
	// build's daemons (startOurs; invalid for the -baseline build's, which
	// may predate IPv6): the daemon brings IPv6 up on the uplink with the
	// first dual-stack pod (ipv6.go), never before.
	uplink6 netip.Prefix
	subnet6 netip.Prefix
}

// startOurs starts a daemon of the built plugin in the host netns with
// extra serve flags (its claim files in a lock dir of its own, so nothing
// is left in the node's /run; its /metrics on a port the kernel picks on
// the host netns's loopback), and registers the undo: kill the daemon, remove the
// uplink (its host routes go with it) and the stack netns (its veths go
// with it). slot (0..9) keeps the pod range and uplink of two daemons in
// the one host netns apart: 10.(200+slot).X.0/24 and 169.254.(101+slot).X/30.
func (h *harness) startOurs(slot int, extra ...string) (*oursNode, error) {
	u6 := randULA64()
	extra = append(append([]string{"--uplink-subnet6", u6.String()}, extra...), h.opts.daemonFlags...)
	o, err := h.startOursBin(slot, []string{h.ourBin}, h.opts.daemonEnv, extra...)
	if o != nil {
		o.uplink6, o.subnet6 = u6, randULA64()
	}
	return o, err
}

// startOursBin is startOurs with the plugin searched in bins, in order
// (the daemon is the first dir's cni-userstack; IPAM plugins may come
// from a later dir), and env (VAR=value) added to the daemon's environment.
func (h *harness) startOursBin(slot int, bins, env []string, extra ...string) (*oursNode, error) {
	if slot < 0 || slot > 9 {
		return nil, fmt.Errorf("daemon slot %d: 0..9", slot)
	}
	bin := bins[0]
	dir := h.tb.TempDir()
	o := &oursNode{
		bin:      bin,
		cni:      libcni.NewCNIConfigWithCacheDir(bins, h.tb.TempDir(), nil),
		network:  "bench-" + randHex(8),
		socket:   filepath.Join(dir, "run", "daemon.sock"),
		stateDir: filepath.Join(dir, "state"),
		stackNS:  cnitest.UniqueName(h.tb, "usstack"),
		uplinkIf: "usb" + randHex(8),
		ipamDir:  filepath.Join(dir, "ipam"),
		logFile:  filepath.Join(dir, "daemon.log"),
	}
	r := make([]byte, 2)
	rand.Read(r)
	o.uplink = netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, byte(101 + slot), r[0] &^ 3}), 30)
	o.subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(200 + slot), r[1], 0}), 24)
	logf, err := os.OpenFile(o.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append([]string{"--net=" + h.host.path(), "--", filepath.Join(bin, cnitest.PluginName), "serve",
		"--socket", o.socket, "--state-dir", o.stateDir, "--stack-netns", o.stackNS,
		"--uplink-subnet", o.uplink.String(), "--uplink-host-ifname", o.uplinkIf, "--log-level", "info",
		"--lock-dir", filepath.Join(dir, "lock"), "--metrics-addr", "127.0.0.1:0"}, extra...)
	cmd := exec.Command("nsenter", args...) // nsenter execs: the pid is the daemon's
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	h.undo.add("stack netns "+o.stackNS, func() {
		if err := veth.DeleteNetNS(o.stackNS); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	})
	h.undo.add("uplink "+o.uplinkIf, func() {
		if err := do(h.host.ns, func() error { return veth.UplinkTeardown(o.uplinkIf) }); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	})
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	o.daemon, o.done = cmd, make(chan error, 1)
	go func() { o.done <- cmd.Wait() }()
	h.undo.add("daemon", func() { killWait(cmd, o.done, syscall.SIGTERM, 10*time.Second) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := o.client().Status(h.ctx); err == nil {
			return o, nil
		}
		select {
		case err := <-o.done:
			o.done <- err
			b, _ := os.ReadFile(o.logFile)
			return nil, fmt.Errorf("daemon exited at start: %v\n%s", err, tail(string(b), 2000))
		case <-h.ctx.Done():
			return nil, h.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("daemon did not answer on %s within 15s", o.socket)
		}
	}
}

func (o *oursNode) client() *api.Client { return api.NewClient(o.socket, 5*time.Second) }

// confList is our network with mode (the same keys as the e2e tests).
func (o *oursNode) confList(h *harness, mode string) *libcni.NetworkConfigList {
	return o.confListOf(h, o.pluginConf(mode))
}

// pluginConf is the plugin's entry of our network with mode.
func (o *oursNode) pluginConf(mode string) map[string]any {
	p := map[string]any{
		"type":       cnitest.PluginName,
		"mode":       mode,
		"socket":     o.socket,
		"stateDir":   o.stateDir,
		"stackNetNS": o.stackNS,
		"autostart":  false,
		"logFile":    o.logFile,
		"uplink":     map[string]any{"subnet": o.uplink.String(), "hostIfName": o.uplinkIf},
		"ipam":       cnitest.HostLocal(o.subnet, o.ipamDir),
	}
	if mode == "proxy" {
		p["capabilities"] = map[string]bool{"portMappings": true}
	}
	return p
}

// confListOf is our network with the plugin entry p.
func (o *oursNode) confListOf(h *harness, p map[string]any) *libcni.NetworkConfigList {
	b, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": o.network, "plugins": []any{p}})
	if err != nil {
		h.tb.Fatal(err)
	}
	return cnitest.ConfList(h.tb, string(b))
}

// benchPodPort is the pod's iperf3 server port behind the proxy
// variant's port mapping.
const benchPodPort = 5201

// attachOurs adds a pod of node o in mode. The pod dials the host's
// primary address: route mode forwards to it through the stack and the
// uplink; proxy mode terminates the pod's flows in the stack and the daemon
// relays them over host sockets in the host netns. In proxy mode the pod
// also gets a TCP port mapping (a free port on the primary address →
// benchPodPort) for the port-mapping figure.
func (h *harness) attachOurs(o *oursNode, mode string) (*attached, error) {
	if o == nil {
		return nil, fmt.Errorf("our daemon: %w", h.oursErr)
	}
	P := h.host.addr()
	var caps map[string]any
	var mapped *mappedPort
	if mode == "proxy" {
		port, err := freePort(h.host.ns, P)
		if err != nil {
			return nil, fmt.Errorf("free host port on %v: %w", P, err)
		}
		mapped = &mappedPort{podPort: benchPodPort, host: netip.AddrPortFrom(P, uint16(port))}
		caps = map[string]any{"portMappings": []map[string]any{
			{"hostPort": port, "containerPort": benchPodPort, "protocol": "tcp", "hostIP": P.String()}}}
	}
	pod, res, err := h.addPod(o.cni, o.confList(h, mode), caps)
	if err != nil {
		var te *types.Error
		if mode == "proxy" && errors.As(err, &te) && te.Code == types.ErrInvalidNetworkConfig &&
			strings.Contains(strings.ToLower(te.Msg+te.Details), "proxy") {
			return nil, &notAvailable{"not implemented; the plugin says: " + strings.TrimSpace(te.Msg)}
		}
		return nil, fmt.Errorf("ADD mode %s: %w", mode, err)
	}
	podAddr, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	a := &attached{pod: pod, listen: P, dial: P, pids: []int{o.daemon.Process.Pid},
		note: fmt.Sprintf("pod %v → %v (the host's primary address), forwarded by the stack through the uplink %v", podAddr, P, o.uplink)}
	if mapped != nil {
		mapped.podAddr = podAddr
		a.mapped = mapped
		a.note = fmt.Sprintf("pod %v → %v (the host's primary address), relayed by the daemon over host sockets; "+
			"the port-mapping figure: the host netns → %v → pod:%d (iperf3 -s in the pod)", podAddr, P, mapped.host, benchPodPort)
	}
	return a, nil
}

// startHelper starts a pasta or slirp4netns process in the host netns
// serving pod, and waits (bounded) until the pod's interface has the
// address the helper configures (10.0.2.100).
func (h *harness) startHelper(name string, pod ns.NetNS, args ...string) (*exec.Cmd, error) {
	if _, err := exec.LookPath(name); err != nil {
		pkg := name
		if name == "pasta" {
			pkg = "passt"
		}
		return nil, &notAvailable{fmt.Sprintf("%s not installed (Debian package %s; `make bench` installs it)", name, pkg)}
	}
	logPath := filepath.Join(h.tb.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + h.host.path(), "--", name}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, &notAvailable{fmt.Sprintf("cannot start %s: %v", name, err)}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	h.undo.add(name, func() { killWait(cmd, done, syscall.SIGTERM, 5*time.Second) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := false
		do(pod, func() error {
			as, err := netlink.AddrList(nil, netlink.FAMILY_V4)
			for _, a := range as {
				if a.IP.Equal(net.IPv4(10, 0, 2, 100)) {
					ok = true
				}
			}
			return err
		})
		if ok {
			return cmd, nil
		}
		select {
		case err := <-done:
			done <- err
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("%s exited: %v: %s", name, err, tail(string(b), 400))
		case <-h.ctx.Done():
			return nil, h.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("%s did not configure the pod within 10s: %s", name, tail(string(b), 400))
		}
	}
}

// attachPasta: pasta runs in the host netns and joins the pod netns by
// path (no user namespace: we are root; --runas 0 because as nobody it
// cannot enter the netns), configures 10.0.2.100/24 with gateway 10.0.2.2
// and the link MTU mtu (-m; 65520 is pasta's default). No port forwarding
// either way (-t/-u/-T/-U none). The pod dials the host's primary address,
// which pasta reaches with its own host sockets (its tap path; its splice
// path is only for the gateway's loopback mapping, not used here).
func (h *harness) attachPasta(mtu int) (*attached, error) {
	pod := cnitest.NewPodNS(h.tb)
	cmd, err := h.startHelper("pasta", pod, "-f", "-q", "--runas", "0", "--config-net", "-4", "-m", strconv.Itoa(mtu),
		"-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
		"--netns", pod.Path())
	if err != nil {
		return nil, err
	}
	P := h.host.addr()
	return &attached{pod: pod, listen: P, dial: P, pids: []int{cmd.Process.Pid},
		note: fmt.Sprintf("pod 10.0.2.100 → %v (the host's primary address) through pasta, MTU %d", P, mtu)}, nil
}

// attachSlirp: slirp4netns runs in the host netns and joins the pod netns
// by path (--netns-type=path), creates tap0 with 10.0.2.100/24
// (--configure), MTU 65520 as its man page recommends. The pod dials the
// host's primary address, which slirp4netns reaches with host sockets.
func (h *harness) attachSlirp() (*attached, error) {
	pod := cnitest.NewPodNS(h.tb)
	cmd, err := h.startHelper("slirp4netns", pod, "--configure", "--mtu=65520", "--disable-dns",
		"--netns-type=path", pod.Path(), "tap0")
	if err != nil {
		return nil, err
	}
	P := h.host.addr()
	return &attached{pod: pod, listen: P, dial: P, pids: []int{cmd.Process.Pid},
		note: fmt.Sprintf("pod 10.0.2.100 → %v (the host's primary address) through slirp4netns, MTU 65520", P)}, nil
}
