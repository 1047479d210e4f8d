package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	"github.com/cni-userstack/cni-userstack/veth"
)

// Names and ranges of the demo's own node, kept apart from a real
// installation's defaults (stack netns cni-userstack, 169.254.100.0/30).
const (
	demoNetwork  = "cni-userstack-demo"
	demoStackNS  = "cnius-demo"
	demoUplinkIf = "cnius-demo-up"
	demoUplink   = "169.254.252.0/30"
	demoSubnet   = "10.252.0.0/24"
	demoHostAddr = "169.254.252.1"
	// The IPv6 side (dual stack): the uplink's ULA subnet with the host
	// end ::1, the pods' IPv6 range.
	demoUplink6   = "fd00:252:1::/64"
	demoHostAddr6 = "fd00:252:1::1"
	demoSubnet6   = "fd00:252::/64"
	demoHostPort  = 18080
	demoName      = "host.demo.test"
)

// demoResolver is the demo's DNS server, on a loopback address of the host
// netns: the daemon relays the pods' queries to it.
var demoResolver = netip.MustParseAddrPort("127.77.0.53:53")

type demoPod struct {
	name, nsPath string
	rt           *libcni.RuntimeConf
	ip, gw       netip.Addr
	ip6, gw6     netip.Addr
}

// addr is the pod's address (v6: IPv6) and gateway of one family.
func (p *demoPod) addr(v6 bool) (ip, gw netip.Addr) {
	if v6 {
		return p.ip6, p.gw6
	}
	return p.ip, p.gw
}

// hostAddr is the demo host's address of one family (the uplink's host end).
func hostAddr(v6 bool) string {
	if v6 {
		return demoHostAddr6
	}
	return demoHostAddr
}

// fam is the Go network suffix of one family.
func fam(v6 bool) string {
	if v6 {
		return "6"
	}
	return "4"
}

// cniPods drives the real plugin through libcni, as containerd and CRI-O
// do, in proxy mode (the default): two pods get addresses from host-local,
// ping each other (forwarded inside the stack) and their gateway (answered
// by the stack), move data over TCP, fetch a page from a server in the host
// namespace (terminated in the stack and relayed by the daemon over a host
// socket), resolve a name through the gateway (relayed to the demo's
// resolver on a loopback address of the host), and serve a page to the
// host through a port mapping. The network is dual stack: every step has
// its IPv6 twin (IPv6 addresses from host-local, the IPv6 gateway, the
// uplink's IPv6 host address, a port mapping on it).
func cniPods(r *report, outDir, bin string, cleanups *[]func()) {
	r.section("Dual-stack pods attached by the CNI plugin (proxy mode, the default), driven by libcni")
	outDir, _ = filepath.Abs(outDir)
	binDir := filepath.Join(outDir, "cni-bin")
	socket := filepath.Join(outDir, "run", "daemon.sock")
	stateDir := filepath.Join(outDir, "state")
	logFile := filepath.Join(outDir, "daemon.log")
	// A previous run's state (leases, records) must not leak into this one.
	for _, d := range []string{"run", "state", "ipam", "cni-cache"} {
		_ = os.RemoveAll(filepath.Join(outDir, d))
	}
	ok := true
	r.step("install the plugin and host-local into a CNI bin dir", func() (string, error) {
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			ok = false
			return "", err
		}
		if _, err := env.Run("cp", bin, filepath.Join(binDir, "cni-userstack")); err != nil {
			ok = false
			return "", err
		}
		if _, err := env.Run("go", "build", "-o", filepath.Join(binDir, "host-local"),
			"github.com/containernetworking/plugins/plugins/ipam/host-local"); err != nil {
			ok = false
			return "", err
		}
		return binDir, nil
	})
	if !ok {
		return
	}
	resolvConf := filepath.Join(outDir, "resolv.conf")
	r.step("start a resolver on "+demoResolver.String()+" (host netns)", func() (string, error) {
		srv, err := env.StartDNSServer(demoResolver, map[string]netip.Addr{demoName: netip.MustParseAddr(demoHostAddr)})
		if err != nil {
			ok = false
			return "", err
		}
		*cleanups = append(*cleanups, srv.Close)
		if err := os.WriteFile(resolvConf, []byte("nameserver "+demoResolver.Addr().String()+"\n"), 0o644); err != nil {
			ok = false
			return "", err
		}
		return fmt.Sprintf("answers A %s = %s; %s names it", demoName, demoHostAddr, resolvConf), nil
	})
	if !ok {
		return
	}
	*cleanups = append(*cleanups, func() {
		// Stop whatever daemon serves the socket by its PID (ours, or one
		// an ADD autostarted).
		if st, err := api.NewClient(socket, 2*time.Second).Status(context.Background()); err == nil && st.PID > 0 {
			_ = syscall.Kill(st.PID, syscall.SIGTERM)
			waitExit(st.PID, 5*time.Second)
		}
		_ = veth.UplinkTeardown(demoUplinkIf)
		_ = veth.DeleteNetNS(demoStackNS)
	})
	r.step("start the daemon (serve --resolv-conf)", func() (string, error) {
		logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			ok = false
			return "", err
		}
		defer logf.Close()
		cmd := exec.Command(filepath.Join(binDir, "cni-userstack"), "serve", "--socket", socket, "--state-dir", stateDir,
			"--stack-netns", demoStackNS, "--uplink-subnet", demoUplink, "--uplink-subnet6", demoUplink6, "--uplink-host-ifname", demoUplinkIf,
			"--resolv-conf", resolvConf)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			ok = false
			return "", err
		}
		go func() { _ = cmd.Wait() }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := api.NewClient(socket, 2*time.Second).Status(context.Background())
			if err == nil {
				return fmt.Sprintf("pid %d, stack netns %s, log %s", st.PID, st.StackNetNS, logFile), nil
			}
			if time.Now().After(deadline) {
				ok = false
				return "", fmt.Errorf("the daemon did not answer within 10s (log %s): %v", logFile, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if !ok {
		return
	}

	conf := map[string]any{
		"cniVersion": "1.1.0", "name": demoNetwork,
		"plugins": []any{map[string]any{
			"type": "cni-userstack", "mtu": 1500, "autostart": false,
			"socket": socket, "stateDir": stateDir, "stackNetNS": demoStackNS,
			"logFile":      logFile,
			"capabilities": map[string]bool{"portMappings": true},
			"uplink":       map[string]any{"subnet": demoUplink, "subnet6": demoUplink6, "hostIfName": demoUplinkIf},
			"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": demoSubnet}}, {{"subnet": demoSubnet6}}},
				"dataDir": filepath.Join(outDir, "ipam")},
		}},
	}
	js, _ := json.Marshal(conf)
	list, err := libcni.ConfListFromBytes(js)
	if err != nil {
		r.step("parse the network config", func() (string, error) { return "", err })
		return
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(outDir, "cni-cache"), nil)

	pods := make([]*demoPod, 2)
	for i := range pods {
		name := fmt.Sprintf("pod-%c-%s", 'a'+i, env.Suffix())
		p := &demoPod{name: name}
		pods[i] = p
		var caps map[string]any
		what := fmt.Sprintf("CNI ADD %s", name)
		if i == 0 {
			caps = map[string]any{"portMappings": []map[string]any{
				{"hostPort": demoHostPort, "containerPort": 8080, "protocol": "tcp", "hostIP": demoHostAddr},
				{"hostPort": demoHostPort, "containerPort": 8080, "protocol": "tcp", "hostIP": demoHostAddr6}}}
			what += fmt.Sprintf(", host port %d → 8080 (IPv4 and IPv6)", demoHostPort)
		}
		r.step(what, func() (string, error) {
			path, err := veth.NewNetNS(name)
			if err != nil {
				ok = false
				return "", err
			}
			p.nsPath = path
			*cleanups = append(*cleanups, func() { _ = veth.DeleteNetNS(name) })
			p.rt = &libcni.RuntimeConf{ContainerID: name, NetNS: path, IfName: "eth0", CapabilityArgs: caps}
			res, err := cni.AddNetworkList(context.Background(), list, p.rt)
			if err != nil {
				ok = false
				return "", err
			}
			*cleanups = append(*cleanups, func() { _ = cni.DelNetworkList(context.Background(), list, p.rt) })
			cur, err := current.NewResultFromResult(res)
			if err != nil || len(cur.IPs) != 2 {
				ok = false
				return "", fmt.Errorf("unexpected result %v: %v (want an IPv4 and an IPv6 address)", res, err)
			}
			var desc []string
			for _, ipc := range cur.IPs {
				a, _ := netip.AddrFromSlice(ipc.Address.IP)
				gw, _ := netip.AddrFromSlice(ipc.Gateway)
				if a, gw = a.Unmap(), gw.Unmap(); a.Is4() {
					p.ip, p.gw = a, gw
				} else {
					p.ip6, p.gw6 = a, gw
				}
				desc = append(desc, fmt.Sprintf("%s gw %s", ipc.Address.String(), ipc.Gateway))
			}
			if !p.ip.IsValid() || !p.ip6.IsValid() {
				ok = false
				return "", fmt.Errorf("result %v: want one address of each family", cur.IPs)
			}
			return fmt.Sprintf("eth0 %s, dns %v", strings.Join(desc, ", "), cur.DNS.Nameservers), nil
		})
		if !ok {
			return
		}
	}
	a, b := pods[0], pods[1]
	for _, v6 := range []bool{false, true} {
		ipv := "IPv4"
		if v6 {
			ipv = "IPv6"
		}
		bIP, _ := b.addr(v6)
		aIP, _ := a.addr(v6)
		r.step("pod A pings pod B over "+ipv+" (forwarded inside the stack)", func() (string, error) {
			return podPing(a, bIP.String())
		})
		r.step("pod B pings pod A over "+ipv, func() (string, error) {
			return podPing(b, aIP.String())
		})
		r.step("both pods ping their "+ipv+" gateway (the stack answers)", func() (string, error) {
			var out []string
			for _, p := range pods {
				_, gw := p.addr(v6)
				s, err := podPing(p, gw.String())
				if err != nil {
					return s, err
				}
				out = append(out, s)
			}
			return out[0], nil
		})
		r.step("pod A → pod B: 64 MiB over TCP/"+ipv+", SHA-256 checked", func() (string, error) {
			return podTransfer(a, b, 64<<20, v6)
		})
		r.step("pod B fetches a page from a host-namespace server over "+ipv, func() (string, error) {
			return podFetch(b, v6)
		})
		r.step("pod B pings the host over "+ipv+" (relayed by the daemon)", func() (string, error) {
			return podPing(b, hostAddr(v6))
		})
		r.step("pod B resolves "+demoName+" via its "+ipv+" gateway", func() (string, error) {
			return podResolve(b, v6)
		})
		r.step(fmt.Sprintf("host fetches a page from pod A via host port %d on %s", demoHostPort, hostAddr(v6)), func() (string, error) {
			return hostToMappedPod(a, v6)
		})
	}
	r.step("the daemon's view of its attachments", func() (string, error) {
		atts, err := api.NewClient(socket, 5*time.Second).List(context.Background())
		if err != nil {
			return "", err
		}
		var lines []string
		for _, at := range atts {
			lines = append(lines, fmt.Sprintf("%s %s: pod %s and %s (mac %s) on stack NIC %d %s, gateways %s and %s, ranges %s and %s, mode %s, port mappings %v",
				at.ContainerID, at.IfName, at.IP, at.IP6, at.PodMAC, at.NIC, at.HostIfName, at.Gateway, at.Gateway6, at.Range, at.Range6, at.Mode, at.PortMappings))
		}
		if len(atts) != 2 {
			return strings.Join(lines, "\n"), fmt.Errorf("%d attachments, want 2", len(atts))
		}
		return strings.Join(lines, "\n        "), nil
	})
	r.step("the proxy's counters", func() (string, error) {
		st, err := api.NewClient(socket, 5*time.Second).Status(context.Background())
		if err != nil {
			return "", err
		}
		if st.Proxy == nil {
			return "", fmt.Errorf("the daemon reports no proxy counters")
		}
		x := st.Proxy
		return fmt.Sprintf("TCP accepted %d refused %d, DNS queries %d, port-mapping connections %d, UDP flows %d, echo relayed %d denied %d",
			x.TCPAccepted, x.TCPRefused, x.DNSQueries, x.PortMapConns, x.UDPFlowsOpened, x.EchoRelayed, x.EchoDenied), nil
	})
	r.step("CNI DEL both pods", func() (string, error) {
		for _, p := range pods {
			if err := cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
				return "", err
			}
		}
		atts, err := api.NewClient(socket, 5*time.Second).List(context.Background())
		if err == nil && len(atts) != 0 {
			err = fmt.Errorf("%d attachments left", len(atts))
		}
		if err != nil {
			return "", err
		}
		for _, v6 := range []bool{false, true} {
			hp := netip.AddrPortFrom(netip.MustParseAddr(hostAddr(v6)), demoHostPort).String()
			if c, err := net.DialTimeout("tcp"+fam(v6), hp, 2*time.Second); err == nil {
				c.Close()
				return "", fmt.Errorf("host port %s still open after DEL", hp)
			}
		}
		return fmt.Sprintf("no attachment left, host port %d closed on %s and %s", demoHostPort, demoHostAddr, demoHostAddr6), nil
	})
}

func waitExit(pid int, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func podPing(p *demoPod, addr string) (string, error) {
	out, err := env.Run("ip", "netns", "exec", p.name, "ping", "-c", "5", "-i", "0.05", "-W", "2", "-q", addr)
	return lastLines(out, 1), pingErr(out, err)
}

// inPod runs fn on a thread in the pod's namespace; sockets it opens stay there.
func inPod(p *demoPod, fn func() error) error {
	return ns.WithNetNSPath(p.nsPath, func(ns.NetNS) error { return fn() })
}

func podTransfer(from, to *demoPod, n int64, v6 bool) (string, error) {
	toIP, _ := to.addr(v6)
	addr := netip.AddrPortFrom(toIP, 5201).String()
	var ln net.Listener
	if err := inPod(to, func() (err error) {
		ln, err = net.Listen("tcp"+fam(v6), addr)
		return err
	}); err != nil {
		return "", err
	}
	defer ln.Close()
	var c net.Conn
	dial := func() error {
		return inPod(from, func() (err error) {
			c, err = net.DialTimeout("tcp"+fam(v6), addr, 5*time.Second)
			return err
		})
	}
	return tcpTransfer(ln, dial, &c, n)
}

func podFetch(p *demoPod, v6 bool) (string, error) {
	host := net.JoinHostPort(hostAddr(v6), "8080")
	ln, err := net.Listen("tcp"+fam(v6), host)
	if err != nil {
		return "", err
	}
	body := "hello from the host namespace\n"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprintf(w, "%s(you are %s)\n", body, req.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	// The transport dials on its own goroutine: the dial itself must enter
	// the pod's namespace.
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = inPod(p, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	var page string
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: tr}).Get("http://" + host + "/")
	if err == nil {
		var b []byte
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		page = string(b)
	}
	podIP, _ := p.addr(v6)
	if seen := netip.AddrPortFrom(podIP, 0).String(); err == nil && strings.Contains(page, "you are "+strings.TrimSuffix(seen, "0")) {
		err = fmt.Errorf("the server saw the pod's own address %s: forwarded, not proxied: %q", podIP, page)
	}
	if err == nil && !strings.HasPrefix(page, body) {
		err = fmt.Errorf("unexpected page %q", page)
	}
	return strings.ReplaceAll(strings.TrimSpace(page), "\n", " ") + ": relayed by the daemon's host socket", err
}

// podResolve asks the pod's gateway of one family for demoName's A record
// over UDP and over TCP, from sockets in the pod.
func podResolve(p *demoPod, v6 bool) (string, error) {
	var out []string
	_, gw := p.addr(v6)
	for i, network := range []string{"udp" + fam(v6), "tcp" + fam(v6)} {
		var c net.Conn
		if err := inPod(p, func() (err error) {
			c, err = net.DialTimeout(network, netip.AddrPortFrom(gw, 53).String(), 5*time.Second)
			return err
		}); err != nil {
			return strings.Join(out, "; "), err
		}
		a, err := env.LookupA(c, demoName, uint16(100+i), 5*time.Second)
		c.Close()
		if err != nil {
			return strings.Join(out, "; "), fmt.Errorf("over %s: %w", network, err)
		}
		if a.String() != demoHostAddr {
			return strings.Join(out, "; "), fmt.Errorf("over %s: %s = %v, want %s", network, demoName, a, demoHostAddr)
		}
		out = append(out, fmt.Sprintf("%s → %v over %s via %v", demoName, a, network, gw))
	}
	return strings.Join(out, "; "), nil
}

// hostToMappedPod serves a page in pod p on 8080 and fetches it from the
// host netns at the mapped host port; the page says who the pod saw.
func hostToMappedPod(p *demoPod, v6 bool) (string, error) {
	podIP, _ := p.addr(v6)
	var ln net.Listener
	if err := inPod(p, func() (err error) {
		ln, err = net.Listen("tcp"+fam(v6), netip.AddrPortFrom(podIP, 8080).String())
		return err
	}); err != nil {
		return "", err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprintf(w, "hello from pod %s (you are %s)\n", podIP, req.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: tr}).Get("http://" + net.JoinHostPort(hostAddr(v6), fmt.Sprint(demoHostPort)) + "/")
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := strings.TrimSpace(string(b))
	if want := strings.TrimSuffix(netip.AddrPortFrom(netip.MustParseAddr(hostAddr(v6)), 0).String(), "0"); err == nil && !strings.Contains(page, "you are "+want) {
		err = fmt.Errorf("the pod should see the host client's own address %s: %q", hostAddr(v6), page)
	}
	return page, err
}
