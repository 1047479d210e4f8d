package e2e

// End-to-end tests of proxy mode (the default): pod TCP, UDP and ICMP echo
// terminated in the stack and relayed by the daemon over host sockets, DNS
// at the gateway, port mappings into pods. Each test has its own cniEnv
// (daemon, stack netns, uplink, pod range) plus a veth-pair test link in the host
// netns (env.HostLink) whose local addresses are the "host namespace"
// servers a pod targets and whose blackhole address never answers; all of
// it is removed in t.Cleanup. Every wait is bounded.

import (
	"bytes"
	"context"
	"crypto/rand"
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
)

// proxyEnv is a cniEnv whose network is in proxy mode, with host-side
// test addresses.
type proxyEnv struct {
	*cniEnv
	host *env.HostLink
	list *libcni.NetworkConfigList
}

// newProxyEnv starts a daemon with serveArgs and builds the network
// config: our plugin with extra keys (mode "proxy" unless extra says
// otherwise; a nil value deletes a key) and the portMappings capability.
func newProxyEnv(t *testing.T, serveArgs []string, extra map[string]any) *proxyEnv {
	t.Helper()
	e := newCNIEnv(t)
	h, err := env.NewHostLink(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	e.serveArgs = serveArgs
	e.startDaemon()
	x := map[string]any{"mode": "proxy", "capabilities": map[string]bool{"portMappings": true}}
	for k, v := range extra {
		x[k] = v
	}
	return &proxyEnv{cniEnv: e, host: h, list: e.confList("1.1.0", e.plugin(x))}
}

// portMapping is one entry of the portMappings runtime capability.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// addPod is cniEnv.add with port mappings in the runtime config.
func (e *proxyEnv) addPod(pms ...portMapping) *pod {
	e.t.Helper()
	if len(pms) == 0 {
		return e.add(e.list)
	}
	p := &pod{ns: cnitest.NewPodNS(e.t)}
	p.rt = cnitest.RuntimeConf(cnitest.UniqueName(e.t, "ctr"), p.ns.Path(), "eth0", map[string]any{"portMappings": pms})
	r, err := e.cni.AddNetworkList(context.Background(), e.list, p.rt)
	if err != nil {
		e.t.Fatalf("ADD %s with port mappings %+v: %v", p.rt.ContainerID, pms, err)
	}
	e.t.Cleanup(func() { e.cni.DelNetworkList(context.Background(), e.list, p.rt) })
	if p.res, err = current.NewResultFromResult(r); err != nil || len(p.res.IPs) != 1 {
		e.t.Fatalf("ADD result: %v %+v", err, p.res)
	}
	p.ip, _ = netip.AddrFromSlice(p.res.IPs[0].Address.IP.To4())
	return p
}

func (p *pod) gateway() netip.Addr {
	gw, _ := netip.AddrFromSlice(p.res.IPs[0].Gateway.To4())
	return gw
}

// proxyStats is the daemon's Status.Proxy.
func (e *cniEnv) proxyStats() api.ProxyStats {
	e.t.Helper()
	st, err := e.client().Status(context.Background())
	if err != nil {
		e.t.Fatalf("status: %v", err)
	}
	if st.Proxy == nil {
		e.t.Fatalf("status has no proxy stats: %+v", st)
	}
	return *st.Proxy
}

func statsJSON(s api.ProxyStats) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// dialIn dials addr from inside n (nil = here) with a timeout: the socket
// belongs to n.
func dialIn(n ns.NetNS, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := do(n, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

func do(n ns.NetNS, fn func() error) error {
	if n == nil {
		return fn()
	}
	return n.Do(func(ns.NetNS) error { return fn() })
}

// freePort is a port free for both TCP and UDP on every host address,
// picked at random in 20000..44999.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		b := randBytes(2)
		port := 20000 + (int(b[0])<<8|int(b[1]))%25000
		tl, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			continue
		}
		ul, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		return port
	}
	t.Fatal("no free port in 50 tries")
	return 0
}

// hostEcho is a TCP echo server in the host netns on addr (port 0 = free):
// every connection is copied back to itself until EOF, bounded by 2 min.
func hostEcho(t *testing.T, addr netip.Addr) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// remoteIP is the address part of the "/remote" answer of cnitest's
// servers ("ip:port").
func remoteIP(t *testing.T, body []byte) netip.Addr {
	t.Helper()
	ap, err := netip.ParseAddrPort(strings.TrimSpace(string(body)))
	if err != nil {
		t.Fatalf("/remote answered %q: %v", body, err)
	}
	return ap.Addr()
}

// TestProxyPodFetchesHostPageAndEchoes: with no "mode" in the config
// (proxy is the default) the pod's curl fetches a page from a server in the
// host namespace, which sees the daemon's host socket rather than the pod;
// then 1000 concurrent pod connections each echo 64 KiB intact.
func TestProxyPodFetchesHostPageAndEchoes(t *testing.T) {
	e := newProxyEnv(t, nil, map[string]any{"mode": nil})
	p := e.addPod()
	hostA := e.host.Local[0]
	url := cnitest.HostServer(t, netip.AddrPortFrom(hostA, 0).String())

	var page, remote []byte
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := nsRun(p.ns, "curl", "-sS", "--max-time", "10", url+"/")
		if err != nil {
			t.Fatalf("curl %s in the pod: %v\n%s", url, err, out)
		}
		page = []byte(out)
		out, err = nsRun(p.ns, "curl", "-sS", "--max-time", "10", url+"/remote")
		if err != nil {
			t.Fatalf("curl %s/remote in the pod: %v\n%s", url, err, out)
		}
		remote = []byte(out)
	} else {
		t.Log("curl not installed: fetching with a Go client on kernel sockets in the pod")
		var err error
		if page, err = cnitest.HTTPGet(t, p.ns, url+"/", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if remote, err = cnitest.HTTPGet(t, p.ns, url+"/remote", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if string(page) != cnitest.HostServerBody {
		t.Fatalf("pod fetched %q, want %q", page, cnitest.HostServerBody)
	}
	if ip := remoteIP(t, remote); ip == p.ip {
		t.Fatalf("the host server saw the pod's own address %v: the flow was forwarded, not proxied", ip)
	} else {
		t.Logf("pod %v fetched %s; the host server saw %v (the daemon's host socket)", p.ip, url, ip)
	}

	const conns, size = 1000, 64 << 10
	echo := hostEcho(t, hostA)
	cs := make([]net.Conn, conns)
	t.Cleanup(func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	})
	// 50 threads locked in the pod netns dial 20 each.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := 0; w < 50; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < conns; i += 50 {
				c, err := dialIn(p.ns, "tcp4", echo.String(), 10*time.Second)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				cs[i] = c
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("dialing %d connections from the pod: %v", conns, err)
	default:
	}
	t.Logf("%d connections from the pod established in %v", conns, time.Since(start).Round(time.Millisecond))
	deadline := time.Now().Add(90 * time.Second)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(deadline)
			msg := make([]byte, size)
			rand.Read(msg)
			werr := make(chan error, 1)
			go func() { _, err := c.Write(msg); werr <- err }()
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- fmt.Errorf("connection %d: read: %w", i, err)
				return
			}
			if err := <-werr; err != nil {
				errs <- fmt.Errorf("connection %d: write: %w", i, err)
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("connection %d: 64 KiB came back altered", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	var failed []string
	for err := range errs {
		failed = append(failed, err.Error())
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d echoes failed, first: %s\nproxy stats: %s", len(failed), conns, failed[0], statsJSON(e.proxyStats()))
	}
	st := e.proxyStats()
	t.Logf("%d × 64 KiB echoed intact in %v; proxy stats %s", conns, time.Since(start).Round(time.Millisecond), statsJSON(st))
	if st.TCPAccepted < conns+2 {
		t.Fatalf("proxy counted %d accepted TCP flows, want ≥ %d", st.TCPAccepted, conns+2)
	}
}

// TestProxyProbePathAndRoutedRanges: in proxy mode the host still reaches
// a server in the pod at the pod's address (the kubelet-probe path, over
// the uplink), a destination inside routedRanges is forwarded with the
// pod's own source address, and one outside is proxied.
func TestProxyProbePathAndRoutedRanges(t *testing.T) {
	// The host link must exist before the config names its address.
	e := newProxyEnv(t, nil, nil)
	hostA, hostR := e.host.Local[0], e.host.Local[1]
	e.list = e.confList("1.1.0", e.plugin(map[string]any{"mode": "proxy", "routedRanges": []string{netip.PrefixFrom(hostR, 32).String()}}))
	p := e.addPod()

	podURL := cnitest.ServerIn(t, p.ns, netip.AddrPortFrom(p.ip, 8080).String())
	body, err := cnitest.HTTPGet(t, nil, podURL+"/remote", 10*time.Second)
	if err != nil {
		t.Fatalf("host → pod at %v (the probe path): %v", p.ip, err)
	}
	if ip := remoteIP(t, body); ip != e.uplink.Addr().Next() {
		t.Fatalf("the pod saw the host as %v, want the uplink's host address %v", ip, e.uplink.Addr().Next())
	}

	routed := cnitest.HostServer(t, netip.AddrPortFrom(hostR, 0).String())
	body, err = cnitest.HTTPGet(t, p.ns, routed+"/remote", 10*time.Second)
	if err != nil {
		t.Fatalf("pod → %v inside routedRanges: %v", hostR, err)
	}
	if ip := remoteIP(t, body); ip != p.ip {
		t.Fatalf("a server inside routedRanges saw %v, want the pod's own address %v", ip, p.ip)
	}

	before := e.proxyStats().TCPAccepted
	proxied := cnitest.HostServer(t, netip.AddrPortFrom(hostA, 0).String())
	body, err = cnitest.HTTPGet(t, p.ns, proxied+"/remote", 10*time.Second)
	if err != nil {
		t.Fatalf("pod → %v outside routedRanges: %v", hostA, err)
	}
	if ip := remoteIP(t, body); ip == p.ip {
		t.Fatalf("a server outside routedRanges saw the pod's own address: not proxied")
	}
	if after := e.proxyStats().TCPAccepted; after != before+1 {
		t.Fatalf("proxy accepted %d TCP flows for one proxied fetch (routed and probe flows must not be proxied)", after-before)
	}
}

// TestProxyConnectRefusedAndUnanswered: a closed host port refuses the
// pod's connect in under a second; an address nobody answers fails the
// pod's connect (its own timeout 5 s) once the daemon's upstream connect
// times out (--proxy-connect-timeout=2s), and the daemon holds no flow
// for it afterwards.
func TestProxyConnectRefusedAndUnanswered(t *testing.T) {
	e := newProxyEnv(t, []string{"--proxy-connect-timeout=2s"}, nil)
	p := e.addPod()

	closed := netip.AddrPortFrom(e.host.Local[0], uint16(freePort(t)))
	start := time.Now()
	c, err := dialIn(p.ns, "tcp4", closed.String(), 5*time.Second)
	d := time.Since(start)
	if err == nil {
		c.Close()
		t.Fatalf("connect to the closed host port %v succeeded", closed)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) || d >= time.Second {
		t.Fatalf("connect to the closed host port %v: %v after %v, want ECONNREFUSED in under 1s", closed, err, d)
	}
	t.Logf("closed port: %v after %v", err, d.Round(time.Millisecond))

	dead := netip.AddrPortFrom(e.host.Blackhole, 80)
	start = time.Now()
	c, err = dialIn(p.ns, "tcp4", dead.String(), 5*time.Second)
	d = time.Since(start)
	if err == nil {
		c.Close()
		t.Fatalf("connect to the unanswered %v succeeded", dead)
	}
	// Upstream timeout → RST to the pod (documented): ECONNREFUSED once
	// the daemon gives up, well inside the pod's own 5 s.
	if !errors.Is(err, syscall.ECONNREFUSED) || d < 1500*time.Millisecond || d > 4500*time.Millisecond {
		t.Fatalf("connect to the unanswered %v: %v after %v, want ECONNREFUSED after the daemon's 2s connect timeout", dead, err, d)
	}
	t.Logf("unanswered address: %v after %v", err, d.Round(time.Millisecond))

	var st api.ProxyStats
	deadline := time.Now().Add(5 * time.Second)
	for {
		st = e.proxyStats()
		if st.ActiveTCP == 0 && st.PendingTCP == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon still holds flows 5s later: %s", statsJSON(st))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.TCPTimeouts < 1 || st.TCPRefused < 1 {
		t.Fatalf("proxy stats count no timeout or no refusal: %s", statsJSON(st))
	}
	for id, ps := range st.Pods {
		if ps.ActiveFlows != 0 {
			t.Fatalf("pod %s (%v) still has %d active flows", id, p.ip, ps.ActiveFlows)
		}
	}
}

// iperf3Server starts `iperf3 -s -1` bound to addr:port inside n (nil =
// host netns), killed in t.Cleanup.
func iperf3Server(t *testing.T, n ns.NetNS, addr netip.Addr, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	args := []string{"iperf3", "-s", "-1", "-B", addr.String(), "-p", strconv.Itoa(port)}
	if n != nil {
		args = append([]string{"nsenter", "--net=" + n.Path(), "--"}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("iperf3 server %v:%d:\n%s", addr, port, tail(out.String(), 2000))
		}
	})
	// Wait (5 s) until it listens: a client through a port mapping would
	// otherwise be accepted by the daemon and reset when the dial into the
	// pod is refused. `ss` looks without connecting (a probe connection
	// would be iperf3's one test).
	filter := fmt.Sprintf("( sport = :%d )", port)
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := nsRunOrHere(n, "ss", "-Hltn", filter)
		if err == nil && strings.TrimSpace(out) != "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("iperf3 server on %v:%d not listening after 5s: %v %s", addr, port, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nsRunOrHere is nsRun, or the command run here when n is nil.
func nsRunOrHere(n ns.NetNS, name string, args ...string) (string, error) {
	if n != nil {
		return nsRun(n, name, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// iperf3Client runs `iperf3 -c addr -p port -t 3 -J` inside n (nil = host
// netns), retrying the connect for 5 s while the server comes up, and
// returns the bytes received.
func iperf3Client(t *testing.T, n ns.NetNS, addr netip.Addr, port int) (float64, error) {
	t.Helper()
	args := []string{"iperf3", "-c", addr.String(), "-p", strconv.Itoa(port), "-t", "3", "-J", "--connect-timeout", "3000"}
	if n != nil {
		args = append([]string{"nsenter", "--net=" + n.Path(), "--"}, args...)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, runErr := exec.CommandContext(ctx, args[0], args[1:]...).Output()
		cancel()
		var j struct {
			End struct {
				SumReceived struct {
					Bytes         float64 `json:"bytes"`
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		jerr := json.Unmarshal(out, &j)
		if runErr == nil && jerr == nil && j.Error == "" && j.End.SumReceived.Bytes > 0 {
			t.Logf("iperf3 -c %v:%d: %.0f MB at %.2f Gbit/s", addr, port, j.End.SumReceived.Bytes/1e6, j.End.SumReceived.BitsPerSecond/1e9)
			return j.End.SumReceived.Bytes, nil
		}
		if strings.Contains(j.Error, "unable to connect") && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		return 0, fmt.Errorf("%s: %v (json: %v): %s", strings.Join(args, " "), runErr, jerr, firstNonEmpty(j.Error, tail(string(out), 500)))
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// TestProxyIperf3: iperf3 pod→host (the pod's client against a host
// server) and host→pod through a port mapping (the pod's server, a host
// client at the host port) complete with no errors.
func TestProxyIperf3(t *testing.T) {
	requireCmd(t, "iperf3")
	e := newProxyEnv(t, nil, nil)
	hostA := e.host.Local[0]
	hostPort := freePort(t)
	p := e.addPod(portMapping{HostPort: hostPort, ContainerPort: 5201, Protocol: "tcp", HostIP: hostA.String()})

	port := freePort(t)
	iperf3Server(t, nil, hostA, port)
	if _, err := iperf3Client(t, p.ns, hostA, port); err != nil {
		t.Fatalf("pod → host: %v", err)
	}
	iperf3Server(t, p.ns, p.ip, 5201)
	if _, err := iperf3Client(t, nil, hostA, hostPort); err != nil {
		t.Fatalf("host → pod through host port %v:%d: %v", hostA, hostPort, err)
	}
}

// TestProxyUDP: UDP echo pod→host (proxied) and host→pod (at the pod's
// address); a datagram from the pod to a closed host port gives the pod's
// connected socket ECONNREFUSED.
func TestProxyUDP(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	p := e.addPod()
	hostA := e.host.Local[0]
	sizes := []int{64, 1400, 8000}

	srv, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(hostA, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go env.ServeUDPEcho(srv)
	c, err := dialIn(p.ns, "udp4", srv.LocalAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if out, err := env.CheckEcho(c, sizes, 3*time.Second); err != nil {
		t.Fatalf("pod → host UDP echo: %v (%s)\nproxy stats %s", err, out, statsJSON(e.proxyStats()))
	}

	var psrv *net.UDPConn
	if err := do(p.ns, func() (err error) {
		psrv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.ip, 7007)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer psrv.Close()
	go env.ServeUDPEcho(psrv)
	hc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.ip, 7007)))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if out, err := env.CheckEcho(hc, sizes, 3*time.Second); err != nil {
		t.Fatalf("host → pod UDP echo: %v (%s)", err, out)
	}

	closed := netip.AddrPortFrom(hostA, uint16(freePort(t)))
	cc, err := dialIn(p.ns, "udp4", closed.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var last error
	for i := 0; i < 3 && !errors.Is(last, syscall.ECONNREFUSED); i++ {
		if _, last = cc.Write([]byte("anyone there?")); last != nil {
			continue
		}
		cc.SetReadDeadline(time.Now().Add(time.Second))
		_, last = cc.Read(make([]byte, 100))
	}
	if !errors.Is(last, syscall.ECONNREFUSED) {
		t.Fatalf("UDP to the closed host port %v: %v, want ECONNREFUSED\nproxy stats %s", closed, last, statsJSON(e.proxyStats()))
	}
	if st := e.proxyStats(); st.UDPPortUnreachables < 1 {
		t.Fatalf("no port unreachable counted: %s", statsJSON(st))
	}
}

// TestProxyDNS: the CNI result points the pod at the gateway; a query to
// it over UDP and over TCP is answered by a test resolver on a loopback
// address of the host netns named by the --resolv-conf file.
func TestProxyDNS(t *testing.T) {
	r := randBytes(3)
	resolver := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 20 + r[0]%200, r[1], 2 + r[2]%250}), 53)
	want := netip.MustParseAddr("192.0.2.123")
	srv, err := env.StartDNSServer(resolver, map[string]netip.Addr{"proxy-e2e.test": want})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("# test resolver\nnameserver "+resolver.Addr().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newProxyEnv(t, []string{"--resolv-conf", resolv}, nil)
	p := e.addPod()
	gw := p.gateway()
	if got := p.res.DNS.Nameservers; !slices.Equal(got, []string{gw.String()}) {
		t.Fatalf("result dns.nameservers %v, want [%v] (the gateway)", got, gw)
	}
	for i, network := range []string{"udp4", "tcp4"} {
		c, err := dialIn(p.ns, network, netip.AddrPortFrom(gw, 53).String(), 5*time.Second)
		if err != nil {
			t.Fatalf("%s to the gateway's port 53: %v", network, err)
		}
		got, err := env.LookupA(c, "proxy-e2e.test", uint16(0x4000+i), 5*time.Second)
		if err != nil || got != want {
			c.Close()
			t.Fatalf("A proxy-e2e.test over %s via %v: %v %v, want %v\nproxy stats %s", network, gw, got, err, want, statsJSON(e.proxyStats()))
		}
		_, err = env.LookupA(c, "nobody.proxy-e2e.test", uint16(0x5000+i), 5*time.Second)
		c.Close()
		if err == nil || !strings.Contains(err.Error(), "RCODE 3") {
			t.Fatalf("unknown name over %s: %v, want the resolver's NXDOMAIN", network, err)
		}
	}
	if n := srv.UDPQueries.Load() + srv.TCPQueries.Load(); n < 4 {
		t.Fatalf("the test resolver answered %d queries, want 4", n)
	}
	// Two UDP queries and one TCP connection: the relay splices a DNS-over-
	// TCP connection whole and counts it once. It may count after the
	// answer is out: poll briefly.
	deadline := time.Now().Add(3 * time.Second)
	for st := e.proxyStats(); st.DNSQueries < 3; st = e.proxyStats() {
		if time.Now().After(deadline) {
			t.Fatalf("proxy counted %d DNS queries, want ≥ 3: %s", st.DNSQueries, statsJSON(st))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpGetFrom fetches url from the host netns with the client bound to
// src (invalid = any).
func httpGetFrom(src netip.Addr, url string, timeout time.Duration) ([]byte, error) {
	d := &net.Dialer{Timeout: timeout}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	tr := &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: timeout}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	return b, err
}

// udpTagServer answers each datagram with tag + the datagram.
func udpTagServer(c *net.UDPConn, tag string) {
	b := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(b)
		if err != nil {
			return
		}
		c.WriteToUDPAddrPort(append([]byte(tag), b[:n]...), from)
	}
}

func udpAsk(to netip.AddrPort, msg string) (string, error) {
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return "", err
	}
	defer c.Close()
	b := make([]byte, 2048)
	for i := 0; i < 3; i++ {
		if _, err = c.Write([]byte(msg)); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		var n int
		if n, err = c.Read(b); err == nil {
			return string(b[:n]), nil
		}
	}
	return "", err
}

// TestProxyPortMapping: the portMappings capability. A host client reaches
// the pod server through the host port and is seen with its own address;
// 127.0.0.1:<hostPort> works (seen as the gateway, documented) and so does
// the pod reaching its own host port (hairpin); TCP and UDP on one port
// number reach different pod servers; a mapping bound to a hostIP is not
// reachable at another host address. After kill -9 and a restart the
// mapping works again (recovery); DEL closes the host port.
func TestProxyPortMapping(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	hostA, hostB := e.host.Local[0], e.host.Local[1]
	h1, h2 := freePort(t), freePort(t)
	for h2 == h1 {
		h2 = freePort(t)
	}
	p := e.addPod(
		portMapping{HostPort: h1, ContainerPort: 8080, Protocol: "tcp"},
		portMapping{HostPort: h1, ContainerPort: 8081, Protocol: "udp"},
		portMapping{HostPort: h2, ContainerPort: 8082, Protocol: "tcp", HostIP: hostA.String()},
	)
	cnitest.ServerIn(t, p.ns, netip.AddrPortFrom(p.ip, 8080).String())
	cnitest.ServerIn(t, p.ns, netip.AddrPortFrom(p.ip, 8082).String())
	var us *net.UDPConn
	if err := do(p.ns, func() (err error) {
		us, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.ip, 8081)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer us.Close()
	go udpTagServer(us, "udp8081:")
	url1 := fmt.Sprintf("http://%s", netip.AddrPortFrom(hostA, uint16(h1)))

	checkClientAddr := func(when string) {
		t.Helper()
		body, err := httpGetFrom(hostB, url1+"/remote", 10*time.Second)
		if err != nil {
			t.Fatalf("%s: host client %v → %s: %v\nproxy stats %s", when, hostB, url1, err, statsJSON(e.proxyStats()))
		}
		if ip := remoteIP(t, body); ip != hostB {
			t.Fatalf("%s: the pod saw the host client as %v, want its own address %v", when, ip, hostB)
		}
	}
	checkClientAddr("mapping")

	body, err := httpGetFrom(netip.Addr{}, fmt.Sprintf("http://127.0.0.1:%d/remote", h1), 10*time.Second)
	if err != nil {
		t.Fatalf("127.0.0.1:%d → pod: %v", h1, err)
	}
	if ip := remoteIP(t, body); ip != p.gateway() {
		t.Fatalf("a loopback client appeared in the pod as %v, want the gateway %v (documented)", ip, p.gateway())
	}

	body, err = cnitest.HTTPGet(t, p.ns, url1+"/", 10*time.Second)
	if err != nil || string(body) != cnitest.HostServerBody {
		t.Fatalf("hairpin: pod → its own host port %s: %q %v", url1, body, err)
	}

	got, err := udpAsk(netip.AddrPortFrom(hostA, uint16(h1)), "hello")
	if err != nil || got != "udp8081:hello" {
		t.Fatalf("UDP to host port %d: %q %v, want the pod's UDP server on 8081", h1, got, err)
	}

	if body, err := httpGetFrom(netip.Addr{}, fmt.Sprintf("http://%s/", netip.AddrPortFrom(hostA, uint16(h2))), 10*time.Second); err != nil || string(body) != cnitest.HostServerBody {
		t.Fatalf("mapping bound to %v:%d: %q %v", hostA, h2, body, err)
	}
	if c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(hostB, uint16(h2)).String(), 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("the mapping bound to hostIP %v answers at %v:%d too", hostA, hostB, h2)
	}
	if st := e.proxyStats(); st.PortMapConns < 4 {
		t.Fatalf("proxy counted %d port-mapping connections, want ≥ 4: %s", st.PortMapConns, statsJSON(st))
	}

	e.killDaemon(syscall.SIGKILL)
	e.startDaemon()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := httpGetFrom(hostB, url1+"/", 2*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host port %d not re-established 10s after the restart: %v", h1, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkClientAddr("after kill -9 and restart")
	if got, err := udpAsk(netip.AddrPortFrom(hostA, uint16(h1)), "again"); err != nil || got != "udp8081:again" {
		t.Fatalf("UDP host port %d after restart: %q %v", h1, got, err)
	}

	if err := e.cni.DelNetworkList(context.Background(), e.list, p.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	for _, hp := range []netip.AddrPort{netip.AddrPortFrom(hostA, uint16(h1)), netip.AddrPortFrom(hostA, uint16(h2))} {
		if c, err := net.DialTimeout("tcp4", hp.String(), 2*time.Second); err == nil {
			c.Close()
			t.Fatalf("host port %v still open after DEL", hp)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("host port %v after DEL: %v, want ECONNREFUSED", hp, err)
		}
	}
	t.Logf("host ports %d (tcp+udp) and %v:%d (tcp): client address kept, loopback as %v, hairpin, protocol and hostIP apart; "+
		"re-established after kill -9 and restart, closed after DEL", h1, hostA, h2, p.gateway())
}

// vmRSS is a process's resident set from /proc/PID/status, in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// TestProxyBackpressure: the pod sends up to 1 GiB to a host sink that
// reads 32 KiB per millisecond (at most ~32 MB/s, far below what the pod
// can send); the transfer is cut after 15 s. The daemon's resident memory,
// sampled every 100 ms, stays under 256 MiB throughout: its relay buffers
// are bounded, so the slow reader's window pushes back into the stack and
// the pod.
func TestProxyBackpressure(t *testing.T) {
	const (
		total    = 1 << 30
		rssBound = 256 << 20
		runFor   = 15 * time.Second
	)
	e := newProxyEnv(t, nil, nil)
	p := e.addPod()
	pid := e.daemon.Process.Pid
	base, err := vmRSS(pid)
	if err != nil {
		t.Fatal(err)
	}

	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(e.host.Local[0], 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var sunk atomic.Int64
	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		ln.SetDeadline(time.Now().Add(10 * time.Second))
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadBuffer(64 << 10)
		c.SetDeadline(time.Now().Add(runFor + 10*time.Second))
		b := make([]byte, 32<<10)
		for {
			n, err := c.Read(b)
			sunk.Add(int64(n))
			if err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()

	var maxRSS atomic.Int64
	maxRSS.Store(base)
	stop := make(chan struct{})
	sampled := make(chan error, 1)
	go func() {
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				sampled <- nil
				return
			case <-tk.C:
				r, err := vmRSS(pid)
				if err != nil {
					sampled <- err
					return
				}
				if r > maxRSS.Load() {
					maxRSS.Store(r)
				}
			}
		}
	}()

	c, err := dialIn(p.ns, "tcp4", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetWriteDeadline(start.Add(runFor))
	chunk := make([]byte, 256<<10)
	var sent int64
	for sent < total {
		n, err := c.Write(chunk)
		sent += int64(n)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("pod write after %d bytes: %v", sent, err)
			}
			break
		}
	}
	d := time.Since(start)
	c.Close()
	close(stop)
	<-sinkDone
	if err := <-sampled; err != nil {
		t.Fatalf("sampling the daemon's RSS: %v", err)
	}
	t.Logf("pod wrote %d MiB in %v, the sink read %d MiB; daemon RSS %d MiB before, max %d MiB during (bound %d MiB)",
		sent>>20, d.Round(time.Millisecond), sunk.Load()>>20, base>>20, maxRSS.Load()>>20, rssBound>>20)
	if maxRSS.Load() >= rssBound {
		t.Fatalf("daemon RSS reached %d MiB, bound %d MiB: relay buffers are not bounded", maxRSS.Load()>>20, rssBound>>20)
	}
	if sunk.Load() < 16<<20 {
		t.Fatalf("the sink read only %d bytes in %v: the transfer did not run", sunk.Load(), d)
	}
	if sent-sunk.Load() > 64<<20 && sent < total {
		t.Fatalf("the pod wrote %d MiB more than the sink read: nothing pushed back", (sent-sunk.Load())>>20)
	}
}

// TestProxyHalfClose: the pod shuts down writing; the host server reads
// the request to EOF and still sends its reply, which the pod reads before
// EOF. Then the other way: the host server sends and shuts down writing;
// the pod reads to EOF, answers, closes; the server reads the answer then
// EOF.
func TestProxyHalfClose(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	p := e.addPod()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(e.host.Local[0], 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(30 * time.Second))
	type seen struct {
		got string
		err error
	}
	srv := make(chan seen, 2)
	go func() {
		// Pod closes first.
		c, err := ln.AcceptTCP()
		if err != nil {
			srv <- seen{err: err}
			return
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		req, err := io.ReadAll(c)
		if err == nil {
			_, err = fmt.Fprintf(c, "reply to %d bytes, after EOF", len(req))
		}
		c.Close()
		srv <- seen{string(req), err}

		// Server closes first.
		c, err = ln.AcceptTCP()
		if err != nil {
			srv <- seen{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "greeting"); err != nil {
			srv <- seen{err: err}
			return
		}
		if err := c.CloseWrite(); err != nil {
			srv <- seen{err: err}
			return
		}
		ans, err := io.ReadAll(c)
		srv <- seen{string(ans), err}
	}()

	c, err := dialIn(p.ns, "tcp4", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "request body"); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	c.Close()
	s := <-srv
	if s.err != nil || s.got != "request body" {
		t.Fatalf("server read %q, %v; want the request then EOF", s.got, s.err)
	}
	if err != nil || string(reply) != "reply to 12 bytes, after EOF" {
		t.Fatalf("pod read %q, %v after shutting down writing; want the server's reply then EOF", reply, err)
	}

	c, err = dialIn(p.ns, "tcp4", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	greeting, err := io.ReadAll(c)
	if err != nil || string(greeting) != "greeting" {
		t.Fatalf("pod read %q, %v; want the server's greeting then EOF", greeting, err)
	}
	if _, err := io.WriteString(c, "answer after EOF"); err != nil {
		t.Fatalf("pod write after the server's FIN: %v", err)
	}
	c.Close()
	if s := <-srv; s.err != nil || s.got != "answer after EOF" {
		t.Fatalf("server read %q, %v after shutting down writing; want the pod's answer then EOF", s.got, s.err)
	}
}

// TestProxyResetPropagation: an abortive close (SO_LINGER 0: RST) on
// either side reaches the other side as ECONNRESET, through the relay.
func TestProxyResetPropagation(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	p := e.addPod()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(e.host.Local[0], 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(30 * time.Second))
	for _, hostAborts := range []bool{true, false} {
		c, err := dialIn(p.ns, "tcp4", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.AcceptTCP()
		if err != nil {
			c.Close()
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		c.SetDeadline(deadline)
		s.SetDeadline(deadline)
		// One exchange first, so both legs of the relay are established.
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		aborter, other, who := net.Conn(s), c, "host server"
		if !hostAborts {
			aborter, other, who = c, s, "pod"
		}
		aborter.(*net.TCPConn).SetLinger(0)
		start := time.Now()
		aborter.Close()
		_, err = other.Read(make([]byte, 10))
		other.Close()
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the %s reset its connection; the other side read %v after %v, want ECONNRESET", who, err, time.Since(start))
		}
		t.Logf("the %s reset its connection: the other side read %v after %v", who, err, time.Since(start).Round(time.Microsecond))
	}
}

// TestProxyPodToPodAndFlowLimit: pod-to-pod traffic is routed inside the
// stack (the server sees the other pod's address; the proxy accepts
// nothing), and a pod past --proxy-max-flows-per-pod gets its new flows
// refused and counted while its open flows keep working.
func TestProxyPodToPodAndFlowLimit(t *testing.T) {
	const limit = 5
	e := newProxyEnv(t, []string{"--proxy-max-flows-per-pod=" + strconv.Itoa(limit)}, nil)
	a, b := e.addPod(), e.addPod()

	url := cnitest.ServerIn(t, b.ns, netip.AddrPortFrom(b.ip, 8080).String())
	body, err := cnitest.HTTPGet(t, a.ns, url+"/remote", 10*time.Second)
	if err != nil {
		t.Fatalf("pod A → pod B: %v", err)
	}
	if ip := remoteIP(t, body); ip != a.ip {
		t.Fatalf("pod B saw pod A as %v, want its own address %v", ip, a.ip)
	}
	if st := e.proxyStats(); st.TCPAccepted != 0 {
		t.Fatalf("pod-to-pod traffic went through the proxy: %s", statsJSON(st))
	}

	echo := hostEcho(t, e.host.Local[0])
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < limit; i++ {
		c, err := dialIn(a.ns, "tcp4", echo.String(), 5*time.Second)
		if err != nil {
			t.Fatalf("flow %d of %d: %v", i+1, limit, err)
		}
		held = append(held, c)
	}
	c, err := dialIn(a.ns, "tcp4", echo.String(), 5*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("flow %d past the per-pod limit %d was accepted: %s", limit+1, limit, statsJSON(e.proxyStats()))
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("flow past the limit: %v, want ECONNREFUSED", err)
	}
	st := e.proxyStats()
	if st.FlowLimitDrops < 1 {
		t.Fatalf("flow over the limit not counted: %s", statsJSON(st))
	}
	var podDrops uint64
	for _, ps := range st.Pods {
		podDrops += ps.FlowLimitDrops
	}
	if podDrops < 1 {
		t.Fatalf("per-pod FlowLimitDrops not counted: %s", statsJSON(st))
	}
	// The open flows still work, and pod B is not limited by pod A.
	held[0].SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := held[0].Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 10)
	if _, err := io.ReadFull(held[0], got); err != nil || string(got) != "still here" {
		t.Fatalf("an open flow stopped working at the limit: %q %v", got, err)
	}
	cb, err := dialIn(b.ns, "tcp4", echo.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("pod B limited by pod A's flows: %v", err)
	}
	cb.Close()
}

// TestProxyBusyPoll: with serve --busy-poll the pod link's receive
// goroutine polls its socket and the proxy's host sockets between
// batches; request/response traffic and a bulk transfer through a relay
// stay intact, and the link reports how its polls ended (the busyPoll
// counters of `cni-userstack link`, the nic_busy_poll metrics).
func TestProxyBusyPoll(t *testing.T) {
	e := newProxyEnv(t, []string{"--busy-poll", "1ms", "--rx-queues", "1"}, nil)
	p := e.addPod()
	dst := hostEcho(t, e.host.Local[0])
	c, err := dialIn(p.ns, "tcp4", dst.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	c.(*net.TCPConn).SetNoDelay(true)
	const rounds = 300
	b := []byte{0}
	for i := 0; i < rounds; i++ {
		b[0] = byte(i)
		if _, err := c.Write(b); err != nil {
			t.Fatalf("round %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("round %d: read %d, %v", i, b[0], err)
		}
	}
	// 4 MiB each way at once, checked byte for byte.
	bulk := randBytes(4 << 20)
	go func() { c.Write(bulk) }()
	got := make([]byte, len(bulk))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("bulk echo: %v (equal %v)", err, bytes.Equal(got, bulk))
	}

	links, err := e.client().Links(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var bp *api.BusyPoll
	for _, l := range links {
		if l.Kind == api.KindPod {
			bp = l.BusyPoll
		}
	}
	if bp == nil {
		t.Fatalf("the pod link reports no busy-poll counters: %+v", links)
	}
	t.Logf("busy polls: %+v", *bp)
	// Every round trip leaves the link's queue empty at least once, and
	// each such read polls or finds the polling slot taken; a poll
	// handles host events and ends in a frame, the budget, or a yield on
	// a machine with no CPU to spare.
	if polls := bp.Hits + bp.Sleeps + bp.Yields + bp.Skips + bp.HostEvents; polls < rounds {
		t.Fatalf("%d busy-poll outcomes for %d round trips: %+v", polls, rounds, *bp)
	}
}
