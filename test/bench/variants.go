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
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// attached is one pod namespace attached by a variant, and where its
// "host" side is.
type attached struct {
	pod    ns.NetNS   // the pod netns the harness made
	hostNS ns.NetNS   // where the host-side servers run (nil = host netns)
	listen netip.Addr // address the host-side servers bind
	dial   netip.Addr // address the pod dials to reach them
	pids   []int      // helper processes whose CPU is charged to the variant
	note   string     // how the pod reaches the host, for the report
	// mapped is set when host→pod runs through a port mapping (proxy
	// mode) instead of iperf3 -R: the iperf3 server runs in the pod on
	// podAddr:podPort and the client in the host netns dials host.
	mapped *mappedPort
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

// variant is one row of the table.
type variant struct {
	key    string // -variants name
	label  string // row label
	attach func(h *harness) (*attached, error)
}

var variants = []variant{
	{"ptp", "kernel (ptp)", (*harness).attachPTP},
	{"route", "cni-userstack route", func(h *harness) (*attached, error) { return h.attachOurs("route") }},
	{"proxy", "cni-userstack proxy", func(h *harness) (*attached, error) { return h.attachOurs("proxy") }},
	{"pasta", "pasta", (*harness).attachPasta},
	{"slirp4netns", "slirp4netns", (*harness).attachSlirp},
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

// addPod runs ADD for a fresh pod netns through libcni with the plugins'
// "host" netns hostNS (nil = here) and the capability args caps (nil =
// none), and registers the DEL.
func (h *harness) addPod(cni *libcni.CNIConfig, list *libcni.NetworkConfigList, hostNS ns.NetNS, caps map[string]any) (ns.NetNS, *current.Result, error) {
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
	if len(res.IPs) != 1 {
		return nil, nil, fmt.Errorf("ADD result has %d IPs, want 1", len(res.IPs))
	}
	return pod, res, nil
}

// ptpNode is the reference plugin's setup: its "host" side is a netns of
// the harness (as in the e2e latency test), so ptp's host veths, routes
// and ip_forward=1 stay out of the real host netns; the kernel path a
// packet takes is the same.
func (h *harness) ptpNode() (node ns.NetNS, cni *libcni.CNIConfig, list *libcni.NetworkConfigList) {
	bin := cnitest.BuildReferencePlugins(h.tb)
	h.noteBinDir(bin)
	node = cnitest.NewPodNS(h.tb)
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 251, byte(time.Now().UnixNano()), 0}), 24)
	list = cnitest.ConfList(h.tb, cnitest.PTPConfJSON(h.tb, cnitest.UniqueName(h.tb, "ptp"), "1.1.0", subnet, h.tb.TempDir(), 0))
	return node, cnitest.CNI(h.tb, bin), list
}

func (h *harness) attachPTP() (*attached, error) {
	node, cni, list := h.ptpNode()
	pod, res, err := h.addPod(cni, list, node, nil)
	if err != nil {
		return nil, fmt.Errorf("ptp ADD: %w", err)
	}
	gw, ok := netip.AddrFromSlice(res.IPs[0].Gateway.To4())
	if !ok {
		return nil, fmt.Errorf("ptp result has no IPv4 gateway: %+v", res.IPs[0])
	}
	return &attached{pod: pod, hostNS: node, listen: gw, dial: gw,
		note: fmt.Sprintf("pod → %v, ptp's host-side veth address (in a node netns of the harness)", gw)}, nil
}

// oursNode is our plugin's private node, as the e2e tests' cniEnv: its own
// daemon, socket, state dir, stack netns, uplink, pod range and IPAM dir,
// so it never touches a real installation. One serves every variant of
// ours and the ADD/DEL latency run.
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
}

// startOurs builds the plugin, starts its daemon and registers the undo:
// kill the daemon, remove the uplink (its host routes go with it) and the
// stack netns (its veths go with it).
func (h *harness) startOurs() (*oursNode, error) {
	bin := cnitest.BuildPlugins(h.tb)
	h.noteBinDir(bin)
	dir := h.tb.TempDir()
	o := &oursNode{
		bin:      bin,
		cni:      cnitest.CNI(h.tb, bin),
		network:  "bench-" + randHex(8),
		socket:   filepath.Join(dir, "run", "daemon.sock"),
		stateDir: filepath.Join(dir, "state"),
		stackNS:  cnitest.UniqueName(h.tb, "usstack"),
		uplinkIf: "usb" + randHex(8),
		ipamDir:  filepath.Join(dir, "ipam"),
		logFile:  filepath.Join(dir, "daemon.log"),
	}
	for i := 0; ; i++ {
		r := make([]byte, 4)
		rand.Read(r)
		o.uplink = netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 101 + r[0]%150, r[1] &^ 3}), 30)
		o.subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + r[2]%50, r[3], 0}), 24)
		if env.FreePrefix(o.uplink) && env.FreePrefix(o.subnet) {
			break
		}
		if i == 20 {
			return nil, errors.New("no free uplink /30 and pod /24 in 20 tries")
		}
	}
	logf, err := os.OpenFile(o.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(bin, cnitest.PluginName), "serve",
		"--socket", o.socket, "--state-dir", o.stateDir, "--stack-netns", o.stackNS,
		"--uplink-subnet", o.uplink.String(), "--uplink-host-ifname", o.uplinkIf, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	h.undo.add("stack netns "+o.stackNS, func() {
		if err := veth.DeleteNetNS(o.stackNS); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	})
	h.undo.add("uplink "+o.uplinkIf, func() {
		if err := veth.UplinkTeardown(o.uplinkIf); err != nil {
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
	b, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": o.network, "plugins": []any{p}})
	if err != nil {
		h.tb.Fatal(err)
	}
	return cnitest.ConfList(h.tb, string(b))
}

// benchPodPort is the pod's iperf3 server port behind the proxy row's
// port mapping.
const benchPodPort = 5201

// attachOurs adds a pod in mode. The host side is the uplink's host
// address in the host netns: route mode forwards to it, proxy mode
// terminates the pod's flows in the stack and the daemon relays them over
// host sockets to it. In proxy mode the pod also gets a TCP port mapping
// (a free host port on that address → benchPodPort) for host→pod.
func (h *harness) attachOurs(mode string) (*attached, error) {
	if h.oursErr != nil {
		return nil, fmt.Errorf("our daemon: %w", h.oursErr)
	}
	o := h.ours
	host := o.uplink.Addr().Next()
	var caps map[string]any
	var mapped *mappedPort
	if mode == "proxy" {
		l, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(host, 0)))
		if err != nil {
			return nil, fmt.Errorf("free host port on %v: %w", host, err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		mapped = &mappedPort{podPort: benchPodPort, host: netip.AddrPortFrom(host, uint16(port))}
		caps = map[string]any{"portMappings": []map[string]any{
			{"hostPort": port, "containerPort": benchPodPort, "protocol": "tcp", "hostIP": host.String()}}}
	}
	pod, res, err := h.addPod(o.cni, o.confList(h, mode), nil, caps)
	if err != nil {
		var te *types.Error
		if mode == "proxy" && errors.As(err, &te) && te.Code == types.ErrInvalidNetworkConfig &&
			strings.Contains(strings.ToLower(te.Msg+te.Details), "proxy") {
			return nil, &notAvailable{"not implemented; the plugin says: " + strings.TrimSpace(te.Msg)}
		}
		return nil, fmt.Errorf("ADD mode %s: %w", mode, err)
	}
	a := &attached{pod: pod, listen: host, dial: host, pids: []int{o.daemon.Process.Pid},
		note: fmt.Sprintf("pod → %v, the uplink's host address (%s mode)", host, mode)}
	if mapped != nil {
		mapped.podAddr, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		a.mapped = mapped
		a.note = fmt.Sprintf("pod → %v, the uplink's host address, relayed by the daemon over host sockets; "+
			"host → pod through the port mapping %v → %v:%d (iperf3 -s in the pod, the client in the host netns)",
			host, mapped.host, mapped.podAddr, benchPodPort)
	}
	return a, nil
}

// helper is a pasta or slirp4netns process serving a pod netns.
func (h *harness) startHelper(name string, pod ns.NetNS, args ...string) (*exec.Cmd, string, error) {
	if _, err := exec.LookPath(name); err != nil {
		pkg := name
		if name == "pasta" {
			pkg = "passt"
		}
		return nil, "", &notAvailable{fmt.Sprintf("%s not installed (Debian package %s; `make bench` installs it)", name, pkg)}
	}
	logPath := filepath.Join(h.tb.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, "", err
	}
	defer logf.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, "", &notAvailable{fmt.Sprintf("cannot start %s: %v", name, err)}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	h.undo.add(name, func() { killWait(cmd, done, syscall.SIGTERM, 5*time.Second) })
	// Ready when the pod's interface has its address (bounded).
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
			return cmd, logPath, nil
		}
		select {
		case err := <-done:
			done <- err
			b, _ := os.ReadFile(logPath)
			return nil, "", &notAvailable{fmt.Sprintf("%s exited: %v: %s", name, err, tail(string(b), 400))}
		case <-h.ctx.Done():
			return nil, "", h.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			return nil, "", &notAvailable{fmt.Sprintf("%s did not configure the pod within 10s: %s", name, tail(string(b), 400))}
		}
	}
}

// attachPasta: pasta joins the pod netns by path (no user namespace: we
// are root; --runas 0 because as nobody it cannot enter the netns),
// configures 10.0.2.100/24 with gateway 10.0.2.2, and maps TCP to the
// gateway onto the host's loopback (its default; --no-map-gw turns it off).
// No port forwarding either way (-t/-u/-T/-U none) so it opens no host
// ports. The host server listens on 127.0.0.1.
func (h *harness) attachPasta() (*attached, error) {
	pod := cnitest.NewPodNS(h.tb)
	cmd, _, err := h.startHelper("pasta", pod, "-f", "-q", "--runas", "0", "--config-net", "-4",
		"-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
		"--netns", pod.Path())
	if err != nil {
		return nil, err
	}
	return &attached{pod: pod, listen: netip.MustParseAddr("127.0.0.1"), dial: netip.MustParseAddr("10.0.2.2"),
		pids: []int{cmd.Process.Pid}, note: "pod → 10.0.2.2 (pasta's gateway, mapped to host 127.0.0.1)"}, nil
}

// attachSlirp: slirp4netns joins the pod netns by path (--netns-type=path),
// creates tap0 with 10.0.2.100/24 (--configure), MTU 65520 as its man page
// recommends; 10.0.2.2 is the host's loopback (host loopback is allowed by
// default). The host server listens on 127.0.0.1.
func (h *harness) attachSlirp() (*attached, error) {
	pod := cnitest.NewPodNS(h.tb)
	cmd, _, err := h.startHelper("slirp4netns", pod, "--configure", "--mtu=65520", "--disable-dns",
		"--netns-type=path", pod.Path(), "tap0")
	if err != nil {
		return nil, err
	}
	return &attached{pod: pod, listen: netip.MustParseAddr("127.0.0.1"), dial: netip.MustParseAddr("10.0.2.2"),
		pids: []int{cmd.Process.Pid}, note: "pod → 10.0.2.2 (slirp4netns's host alias, host 127.0.0.1)"}, nil
}
