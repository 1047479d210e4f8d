package e2e

// End-to-end tests of dual-stack networks through libcni: host-local with
// one IPv4 and one IPv6 range gives each pod an address of each family;
// the plugin shapes both families' routes as ptp does, the daemon drives
// both on the pod link and brings IPv6 up on the uplink. Each test has its
// own cniEnv (daemon, stack netns, uplink with a random IPv4 /30 and a
// random ULA /64, pod ranges), removed in t.Cleanup.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dualEnv is a cniEnv whose network is dual stack.
type dualEnv struct {
	*cniEnv
	subnet6 netip.Prefix // the pods' IPv6 range (a random ULA /64)
	uplink6 netip.Prefix // the uplink's IPv6 subnet (a random ULA /64)
}

// randULA64 is a random ULA /64 (RFC 4193 §3.2: fd00::/8, random Global
// ID and subnet), so parallel tests and daemons never share one.
func randULA64() netip.Prefix {
	var a [16]byte
	copy(a[1:8], randBytes(7))
	a[0] = 0xfd
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

func newDualEnv(t *testing.T, serveArgs ...string) *dualEnv {
	t.Helper()
	requireIPv6(t)
	e := &dualEnv{cniEnv: newCNIEnv(t), subnet6: randULA64(), uplink6: randULA64()}
	e.serveArgs = append([]string{"--uplink-subnet6", e.uplink6.String()}, serveArgs...)
	return e
}

// requireIPv6 skips a test on a kernel or host without IPv6.
func requireIPv6(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 on this host: %v", err)
	}
	l.Close()
}

// plugin is the env's plugin config with both ranges and the uplink's
// IPv6 subnet.
func (e *dualEnv) plugin(extra map[string]any) map[string]any {
	p := e.cniEnv.plugin(map[string]any{
		"ipam":   cnitest.HostLocalDual(e.subnet, e.subnet6, e.ipamDir),
		"uplink": map[string]any{"subnet": e.uplink.String(), "subnet6": e.uplink6.String(), "hostIfName": e.uplinkIf},
	})
	for k, v := range extra {
		if v == nil {
			delete(p, k)
		} else {
			p[k] = v
		}
	}
	return p
}

// hostAddr6 is the uplink's host end in IPv6 (::1 of its subnet).
func (e *dualEnv) hostAddr6() netip.Addr { return e.uplink6.Masked().Addr().Next() }

// dualPod is a pod with both families.
type dualPod struct {
	*pod
	ip6  netip.Addr
	gw6  netip.Addr
	list *libcni.NetworkConfigList
}

// addDual ADDs a pod (with port mappings, when given, in its runtime
// config) and checks the result holds one address of each family on the
// pod's interface, each with its gateway.
func (e *dualEnv) addDual(list *libcni.NetworkConfigList, pms ...portMapping) *dualPod {
	e.t.Helper()
	p := &pod{ns: cnitest.NewPodNS(e.t)}
	var caps map[string]any
	if len(pms) > 0 {
		caps = map[string]any{"portMappings": pms}
	}
	p.rt = cnitest.RuntimeConf(cnitest.UniqueName(e.t, "ctr"), p.ns.Path(), "eth0", caps)
	r, err := e.cni.AddNetworkList(context.Background(), list, p.rt)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", p.rt.ContainerID, err)
	}
	e.t.Cleanup(func() { e.cni.DelNetworkList(context.Background(), list, p.rt) })
	if p.res, err = current.NewResultFromResult(r); err != nil {
		e.t.Fatalf("ADD result: %v", err)
	}
	dp := &dualPod{pod: p, list: list}
	for _, ipc := range p.res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		gw, _ := netip.AddrFromSlice(ipc.Gateway)
		if ipc.Interface == nil || *ipc.Interface != 0 {
			e.t.Fatalf("result address %v not on interface 0: %+v", ipc.Address, p.res)
		}
		switch a = a.Unmap(); {
		case a.Is4() && !p.ip.IsValid():
			p.ip = a
		case a.Is6() && !dp.ip6.IsValid():
			dp.ip6, dp.gw6 = a, gw
		default:
			e.t.Fatalf("result has a second address %v: %+v", a, p.res.IPs)
		}
	}
	if !e.subnet.Contains(p.ip) || !e.subnet6.Contains(dp.ip6) || dp.gw6 != e.subnet6.Masked().Addr().Next() {
		e.t.Fatalf("result addresses %v %v (gateway6 %v), want one in %v and one in %v via its first address", p.ip, dp.ip6, dp.gw6, e.subnet, e.subnet6)
	}
	return dp
}

// TestDualStackRouteMode: two dual-stack pods in route mode. The ADD
// result (1.1.0) has both addresses and both families' ptp-shaped routes;
// the pods' kernels have them (`ip -6 route get` names the gateway, a hop
// limit of 1 expires there, replies arrive with 63); the daemon's
// attachment has the IPv6 side
// and the host routes both ranges over the uplink. Then ping and a
// SHA-256-checked TCP transfer between the pods in both families, pod →
// host over IPv6 (ping and HTTP, the host seeing the pod's own IPv6
// address: route mode forwards), host → pod over IPv6, CHECK passing and
// then failing once the pod's IPv6 default route is removed, and DEL
// (twice) leaving nothing of either family: no far end, reservation,
// attachment, record or host route.
func TestDualStackRouteMode(t *testing.T) {
	e := newDualEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0", e.plugin(nil))
	a, b := e.addDual(list), e.addDual(list)

	gw4 := e.subnet.Masked().Addr().Next()
	gw6 := a.gw6
	want := []string{
		gw4.String() + "/32 on-link", e.subnet.String() + " via " + gw4.String(), "0.0.0.0/0 via " + gw4.String(),
		gw6.String() + "/128 on-link", e.subnet6.String() + " via " + gw6.String(), "::/0 via " + gw6.String(),
	}
	if got := resultRoutes(a.res.Routes); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("result routes %v, want %v", got, want)
	}
	out, err := nsRun(a.ns, "ip", "-6", "route", "get", b.ip6.String())
	if err != nil || !strings.Contains(out, b.ip6.String()+" from :: via "+gw6.String()+" dev eth0") && !strings.Contains(out, b.ip6.String()+" via "+gw6.String()+" dev eth0") {
		t.Fatalf("ip -6 route get %v in pod %v: %v\n%s\nwant it via the gateway %v", b.ip6, a.ip6, err, out, gw6)
	}
	// The pod sees the router in IPv6 too: a hop limit of 1 to the other
	// pod expires at the gateway (RFC 4443 §3.3, ICMPv6 Time Exceeded
	// code 0), and replies come back with the hop limit one lower (the
	// stack forwarded them, RFC 8200 §3).
	out, _ = nsRun(a.ns, "ping", "-6", "-n", "-c", "1", "-W", "2", "-t", "1", b.ip6.String())
	if !strings.Contains(out, "From "+gw6.String()) || !strings.Contains(strings.ToLower(out), "time exceeded") {
		t.Fatalf("ping -6 -t 1 %v: want Time Exceeded from the gateway %v:\n%s", b.ip6, gw6, out)
	}
	out, err = nsRun(a.ns, "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", b.ip6.String())
	if err != nil || strings.Count(out, "ttl=63") != 3 {
		t.Fatalf("ping -6 %v: %v\n%s\nwant 3 replies with hop limit 63", b.ip6, err, out)
	}
	var at *api.Attachment
	for _, x := range e.attachments() {
		if x.ContainerID == a.rt.ContainerID {
			at = &x
		}
	}
	if at == nil || at.IP6.Addr() != a.ip6 || at.Gateway6 != gw6 || at.Range6 != e.subnet6 {
		t.Fatalf("daemon's attachment of pod A: %+v", at)
	}
	if got := e.hostRoutes(); !slices.Contains(got, e.subnet) || !slices.Contains(got, e.subnet6) {
		t.Fatalf("host routes over %s: %v, want %v and %v", e.uplinkIf, got, e.subnet, e.subnet6)
	}
	// The inspect commands show the IPv6 side: the pod's address, and on
	// its NIC the gateway /128 beside the link's link-local address.
	if out := e.cliOK("attachments"); !strings.Contains(out, a.ip6.String()) {
		t.Errorf("attachments table lacks %v:\n%s", a.ip6, out)
	}
	if out := e.cliOK("addr"); !strings.Contains(out, a.ip6.String()) || !strings.Contains(out, gw6.String()+"/128") || !strings.Contains(out, "fe80::") {
		t.Errorf("addr table lacks the pod's IPv6 address, the gateway's /128 or a link-local address:\n%s", out)
	} else {
		t.Logf("addr:\n%s", out)
	}

	// Ping in both families, both ways, and to the gateways.
	for _, c := range []struct {
		from *dualPod
		to   netip.Addr
	}{{a, b.ip}, {b, a.ip}, {a, b.ip6}, {b, a.ip6}, {a, gw6}, {b, e.hostAddr6()}} {
		e.ping(c.from.pod, c.to.String())
	}
	// Both families carry TCP pod → pod (SHA-256 checked).
	for _, dst := range []netip.Addr{b.ip, b.ip6} {
		n, d, err := cnitest.TCPTransfer(t, b.ns, netip.AddrPortFrom(dst, 0), a.ns, 50<<20, 2*time.Minute)
		if err != nil {
			t.Fatalf("50 MB pod A → pod B at %v: %v\nstack drops %v", dst, err, e.stackDrops())
		}
		t.Logf("50 MB pod→pod to %v: %d bytes in %v (%.2f Gbit/s)", dst, n, d, float64(n)*8/d.Seconds()/1e9)
	}
	// Pod → host over IPv6: the host sees the pod's own address.
	url := cnitest.HostServer(t, net.JoinHostPort(e.hostAddr6().String(), "0"))
	for _, p := range []*dualPod{a, b} {
		body, err := cnitest.HTTPGet(t, p.ns, url+"/remote", 20*time.Second)
		if err != nil {
			t.Fatalf("pod %v → host HTTP over IPv6: %v\nstack drops %v", p.ip6, err, e.stackDrops())
		}
		if ap, err := netip.ParseAddrPort(string(body)); err != nil || ap.Addr() != p.ip6 {
			t.Fatalf("host saw %q, want the pod's own IPv6 address %v", body, p.ip6)
		}
	}
	// Host → pod over IPv6 (the host route over the uplink).
	if loss, out, err := cnitest.Ping(t, nil, a.ip6.String(), 5); err != nil || loss > 20 {
		t.Fatalf("host → pod %v: %v loss %.0f%%\n%s", a.ip6, err, loss, out)
	}
	if _, _, err := cnitest.TCPTransfer(t, a.ns, netip.AddrPortFrom(a.ip6, 0), nil, 10<<20, time.Minute); err != nil {
		t.Fatalf("10 MB host → pod %v: %v", a.ip6, err)
	}

	for _, p := range []*dualPod{a, b} {
		if err := e.cni.CheckNetworkList(context.Background(), list, p.rt); err != nil {
			t.Fatalf("CHECK %s: %v", p.rt.ContainerID, err)
		}
	}
	if out, err := nsRun(a.ns, "ip", "-6", "route", "del", "::/0", "dev", "eth0"); err != nil {
		t.Fatalf("remove the pod's IPv6 default route: %v\n%s", err, out)
	}
	err = e.cni.CheckNetworkList(context.Background(), list, a.rt)
	if cniCode(err) != api.CodeAttachmentBroken || !strings.Contains(err.Error(), "::/0 via "+gw6.String()) {
		t.Fatalf("CHECK without the IPv6 default route: %v (code %d), want code %d naming it", err, cniCode(err), api.CodeAttachmentBroken)
	}
	t.Logf("CHECK said: %v", err)

	for i := 0; i < 2; i++ {
		for _, p := range []*dualPod{a, b} {
			if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
				t.Fatalf("DEL #%d %s: %v", i+1, p.rt.ContainerID, err)
			}
		}
	}
	e.assertNothingLeft()
}

// TestDualStackResultPerVersion: a dual-stack ADD in every cniVersion
// libcni and the plugin speak that can carry IPv6 (all of them: "ips"
// holds either family since 0.3.0) has both addresses in that version's
// shape (0.3.x/0.4.0: "version" "4" and "6"), and DEL leaves nothing.
func TestDualStackResultPerVersion(t *testing.T) {
	e := newDualEnv(t)
	e.startDaemon()
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		list := e.confList(v, e.plugin(nil))
		p := e.addDual(list)
		r, err := p.res.GetAsVersion(v)
		if err != nil || r.Version() != v {
			t.Fatalf("%s: result as %s: %v", v, v, err)
		}
		js, _ := jsonOf(r)
		if v < "1.0.0" && (!strings.Contains(js, `"version":"6"`) || !strings.Contains(js, `"version":"4"`)) {
			t.Fatalf("%s result without per-address versions: %s", v, js)
		}
		if !strings.Contains(js, p.ip6.String()) || !strings.Contains(js, `"dst":"::/0"`) {
			t.Fatalf("%s result lacks the IPv6 address or route: %s", v, js)
		}
		if err := e.cni.CheckNetworkList(context.Background(), list, p.rt); err != nil && v >= "0.4.0" {
			t.Fatalf("CHECK %s: %v", v, err)
		}
		if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
			t.Fatalf("DEL %s: %v", v, err)
		}
	}
	e.assertNothingLeft()
}

// jsonOf is a result's JSON as printed to the runtime.
func jsonOf(r types.Result) (string, error) {
	var b bytes.Buffer
	err := r.PrintTo(&b)
	return strings.Join(strings.Fields(b.String()), ""), err
}

// hostAddr6Link is a veth pair in the host netns (both ends here, as
// env.HostLink) whose first end holds addr/128 (no DAD): an IPv6 address
// of the host a test client binds to. Removed in t.Cleanup.
func hostAddr6Link(t *testing.T, addr netip.Addr) {
	t.Helper()
	name := "us6" + env.Suffix()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			netlink.LinkDel(l)
		}
	})
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err == nil {
		err = netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD})
	}
	if err != nil {
		t.Fatalf("%v on %s: %v", addr, name, err)
	}
}

// podServer6 is a TCP server inside n on [::]:port answering each
// connection with the client's address as it saw it ("[ip]:port").
func podServer6(t *testing.T, n ns.NetNS, port int) {
	t.Helper()
	var ln net.Listener
	if err := do(n, func() error {
		var err error
		ln, err = net.Listen("tcp6", fmt.Sprintf("[::]:%d", port))
		return err
	}); err != nil {
		t.Fatalf("pod server on [::]:%d: %v", port, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(c.RemoteAddr().String()))
			c.Close()
		}
	}()
}

// TestDualStackProxyMode: a dual-stack pod in proxy mode (the default).
// Its IPv6 flows are relayed over IPv6 host sockets: the pod fetches a
// page from a host address over IPv6 and the host server sees the
// daemon's socket, not the pod; 20 MB go pod → host over IPv6 SHA-256
// checked; UDP to the host is relayed and a closed host port answers the
// pod with ICMPv6 port unreachable; ping (ICMPv6 echo) to the host is relayed; DNS to the IPv6 gateway (UDP and TCP) is answered through the
// relay (the result names both gateways); a port mapping on an IPv6 host
// address reaches the pod's IPv6 servers, TCP and UDP on one port number,
// which see the client's own IPv6 address; the pod's IPv4 keeps working beside it; DEL leaves nothing of
// either family.
func TestDualStackProxyMode(t *testing.T) {
	r := randBytes(3)
	resolver := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 20 + r[0]%200, r[1], 2 + r[2]%250}), 53)
	want := netip.MustParseAddr("192.0.2.66")
	srv, err := env.StartDNSServer(resolver, map[string]netip.Addr{"dual-e2e.test": want})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+resolver.Addr().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newDualEnv(t, "--resolv-conf", resolv)
	e.startDaemon()
	client6 := randULA64().Addr().Next()
	hostAddr6Link(t, client6)
	hostPort := freePort(t)
	list := e.confList("1.1.0", e.plugin(map[string]any{"mode": "proxy", "capabilities": map[string]bool{"portMappings": true}}))
	p := e.addDual(list,
		portMapping{HostPort: hostPort, ContainerPort: 8080, Protocol: "tcp", HostIP: e.hostAddr6().String()},
		portMapping{HostPort: hostPort, ContainerPort: 8081, Protocol: "udp", HostIP: e.hostAddr6().String()},
	)

	gw4 := e.subnet.Masked().Addr().Next()
	if got := p.res.DNS.Nameservers; !slices.Equal(got, []string{gw4.String(), p.gw6.String()}) {
		t.Fatalf("result dns.nameservers %v, want both gateways [%v %v]", got, gw4, p.gw6)
	}

	// Pod → host over IPv6: relayed, so the host sees the daemon.
	url := cnitest.HostServer(t, net.JoinHostPort(e.hostAddr6().String(), "0"))
	body, err := cnitest.HTTPGet(t, p.ns, url+"/remote", 20*time.Second)
	if err != nil {
		t.Fatalf("pod → host HTTP over IPv6: %v\nproxy stats %s\nstack drops %v", err, statsJSON(e.proxyStats()), e.stackDrops())
	}
	if ip := remoteIP(t, body); ip == p.ip6 || !ip.Is6() {
		t.Fatalf("the host server saw %v: want the daemon's IPv6 host socket, not the pod's %v", ip, p.ip6)
	} else {
		t.Logf("pod %v fetched %s; the host server saw %v (the daemon's host socket)", p.ip6, url, ip)
	}
	if st := e.proxyStats(); st.TCPAccepted < 1 {
		t.Fatalf("proxy accepted no TCP flow: %s", statsJSON(st))
	}
	if _, _, err := cnitest.TCPTransfer(t, nil, netip.AddrPortFrom(e.hostAddr6(), 0), p.ns, 20<<20, time.Minute); err != nil {
		t.Fatalf("20 MB pod → host over IPv6 through the relay: %v", err)
	}
	// The pod's IPv4 is relayed as before, beside it.
	if body, err := cnitest.HTTPGet(t, p.ns, cnitest.HostServer(t, netip.AddrPortFrom(e.uplink.Masked().Addr().Next(), 0).String())+"/remote", 20*time.Second); err != nil || remoteIP(t, body) == p.ip {
		t.Fatalf("pod → host over IPv4: %q %v", body, err)
	}

	// UDP over IPv6 to the host, relayed; and a closed host port comes
	// back to the pod as ICMPv6 port unreachable (RFC 4443 §3.1), which
	// its connected socket reports as ECONNREFUSED.
	uc, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.hostAddr6(), 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	go udpTagServer(uc, "host6:")
	closed := netip.AddrPortFrom(e.hostAddr6(), uint16(freePort(t)))
	for _, c := range []struct {
		to   netip.AddrPort
		want string
	}{{uc.LocalAddr().(*net.UDPAddr).AddrPort(), "host6:ping"}, {closed, ""}} {
		var got string
		err := do(p.ns, func() error {
			conn, err := net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(c.to))
			if err != nil {
				return err
			}
			defer conn.Close()
			b := make([]byte, 64)
			for i := 0; i < 3; i++ {
				conn.Write([]byte("ping"))
				conn.SetReadDeadline(time.Now().Add(time.Second))
				var n int
				if n, err = conn.Read(b); err == nil || errors.Is(err, syscall.ECONNREFUSED) {
					got = string(b[:n])
					return err
				}
			}
			return err
		})
		switch {
		case c.want != "" && (err != nil || got != c.want):
			t.Fatalf("UDP over IPv6 pod → %v: %q %v, want %q\nproxy stats %s", c.to, got, err, c.want, statsJSON(e.proxyStats()))
		case c.want == "" && !errors.Is(err, syscall.ECONNREFUSED):
			t.Fatalf("UDP over IPv6 pod → closed %v: %q %v, want ECONNREFUSED (ICMPv6 port unreachable)\nproxy stats %s", c.to, got, err, statsJSON(e.proxyStats()))
		}
	}
	if st := e.proxyStats(); st.UDPPortUnreachables < 1 {
		t.Fatalf("no port unreachable relayed: %s", statsJSON(st))
	}

	// ICMPv6 echo to the host, relayed (a ping or raw ICMPv6 socket of
	// the daemon's), and to the IPv6 gateway, answered by the stack.
	before := e.proxyStats().EchoRelayed
	e.ping(p.pod, e.hostAddr6().String())
	e.ping(p.pod, p.gw6.String())
	if st := e.proxyStats(); st.EchoRelayed < before+4 {
		t.Fatalf("echo requests relayed %d → %d, want the pod's pings to the host relayed: %s", before, st.EchoRelayed, statsJSON(st))
	}

	// An IPv6 address on the uplink's link that never answers NDP: the
	// host reports address unreachable for the relayed request, and the
	// pod gets it about its own request (RFC 4443 §3.1), through a ping
	// socket ("0 0") and through the raw ICMPv6 socket ("1 0", the
	// kernel's default).
	blackhole := e.uplink6.Masked().Addr()
	for range 0x99 {
		blackhole = blackhole.Next()
	}
	for _, groups := range []string{"0 0", "1 0"} {
		setPingGroupRange(t, groups)
		errsBefore := e.proxyStats().EchoICMPErrors
		out, _ := nsRun(p.pod.ns, "ping", "-6", "-n", "-c", "1", "-W", "8", blackhole.String())
		if !strings.Contains(out, "Address unreachable") {
			t.Fatalf("ping_group_range %q: ping -6 %v (never answers NDP): want Destination unreachable: Address unreachable\n%s\nproxy stats %s",
				groups, blackhole, out, statsJSON(e.proxyStats()))
		}
		if st := e.proxyStats(); st.EchoICMPErrors <= errsBefore {
			t.Fatalf("ping_group_range %q: echoICMPErrors %d → %d, want the ICMPv6 error counted", groups, errsBefore, st.EchoICMPErrors)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "Address unreachable") {
				t.Logf("ping_group_range %q: %s", groups, strings.TrimSpace(l))
				break
			}
		}
	}

	// DNS over IPv6 to the gateway's IPv6 address.
	for i, network := range []string{"udp6", "tcp6"} {
		c, err := dialIn(p.ns, network, netip.AddrPortFrom(p.gw6, 53).String(), 5*time.Second)
		if err != nil {
			t.Fatalf("%s to [%v]:53: %v", network, p.gw6, err)
		}
		got, err := env.LookupA(c, "dual-e2e.test", uint16(0x6000+i), 5*time.Second)
		c.Close()
		if err != nil || got != want {
			t.Fatalf("A dual-e2e.test over %s via %v: %v %v, want %v\nproxy stats %s", network, p.gw6, got, err, want, statsJSON(e.proxyStats()))
		}
	}

	// The port mapping on the host's IPv6 address: the pod sees the
	// client's own address.
	podServer6(t, p.ns, 8080)
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(client6, 0))}
	c, err := d.Dial("tcp6", netip.AddrPortFrom(e.hostAddr6(), uint16(hostPort)).String())
	if err != nil {
		t.Fatalf("client %v → [%v]:%d: %v", client6, e.hostAddr6(), hostPort, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	seen, err := io.ReadAll(c)
	c.Close()
	if err != nil || remoteIP(t, seen) != client6 {
		t.Fatalf("the pod's server saw %q (%v), want the client's own address %v\nproxy stats %s", seen, err, client6, statsJSON(e.proxyStats()))
	}
	if st := e.proxyStats(); st.PortMapConns < 1 {
		t.Fatalf("no port-mapping connection counted: %s", statsJSON(st))
	}
	// The UDP mapping on the same IPv6 host port: the pod's server sees
	// the client's own address and its answer comes back to the client
	// (the flow's reply path sends to an IPv6 sockaddr).
	var us *net.UDPConn
	if err := do(p.ns, func() (err error) {
		us, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.ip6, 8081)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer us.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := us.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			us.WriteToUDPAddrPort([]byte(from.Addr().String()+" "+string(b[:n])), from)
		}
	}()
	uc6, err := net.DialUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(client6, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.hostAddr6(), uint16(hostPort))))
	if err != nil {
		t.Fatal(err)
	}
	defer uc6.Close()
	wantUDP := client6.String() + " over udp6"
	var gotUDP string
	for try := 0; try < 3 && gotUDP != wantUDP; try++ {
		uc6.Write([]byte("over udp6"))
		uc6.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 2048)
		if n, err := uc6.Read(b); err == nil {
			gotUDP = string(b[:n])
		}
	}
	if gotUDP != wantUDP {
		t.Fatalf("UDP port mapping on [%v]:%d: got %q, want %q\nproxy stats %s", e.hostAddr6(), hostPort, gotUDP, wantUDP, statsJSON(e.proxyStats()))
	}

	if err := e.cni.CheckNetworkList(context.Background(), list, p.rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := net.DialTimeout("tcp6", netip.AddrPortFrom(e.hostAddr6(), uint16(hostPort)).String(), time.Second); err == nil {
		t.Fatalf("the IPv6 host port %d still answers after DEL", hostPort)
	}
	e.assertNothingLeft()
}

// TestDualStackAntiSpoofingAndRecovery: a dual-stack pod sourcing another
// address over IPv6 (another pod's range address it does not own, or an
// address outside the node) is dropped by the stack's strict rp_filter
// (RFC 3704 §2.2, IP_RPFILTER counted), as in IPv4. Then the daemon is
// killed (-9) and restarted: its recovery re-attaches both pods with their
// IPv6 side (the uplink's IPv6 and the host route reused), and IPv6 works
// again pod to pod, pod to host and host to pod; CHECK passes; DEL leaves
// nothing.
func TestDualStackAntiSpoofingAndRecovery(t *testing.T) {
	e := newDualEnv(t)
	e.startDaemon()
	list := e.confList("1.1.0", e.plugin(nil))
	a, b := e.addDual(list), e.addDual(list)
	e.ping(a.pod, b.ip6.String())

	spoof6 := e.subnet6.Masked().Addr().As16()
	spoof6[15] = 0xfa
	for _, spoof := range []netip.Addr{netip.AddrFrom16(spoof6), netip.MustParseAddr("2001:db8::1")} {
		before := e.stackDrops()["IP_RPFILTER"]
		if out, err := nsRun(a.ns, "ip", "-6", "addr", "add", spoof.String()+"/128", "dev", "eth0", "nodad"); err != nil {
			t.Fatalf("add spoofed address %v: %v\n%s", spoof, err, out)
		}
		out, _ := nsRun(a.ns, "ping", "-6", "-n", "-c", "3", "-W", "1", "-i", "0.2", "-I", spoof.String(), b.ip6.String())
		if !strings.Contains(out, "100% packet loss") {
			t.Fatalf("ping -6 from the spoofed source %v got through:\n%s", spoof, out)
		}
		if after := e.stackDrops()["IP_RPFILTER"]; after < before+3 {
			t.Fatalf("spoofed IPv6 source %v: IP_RPFILTER drops %d → %d, want 3 more", spoof, before, after)
		}
		nsRun(a.ns, "ip", "-6", "addr", "del", spoof.String()+"/128", "dev", "eth0")
	}
	e.ping(a.pod, b.ip6.String())

	e.killDaemon(syscall.SIGKILL)
	e.startDaemon()
	l := e.attachments()
	if len(l) != 2 || l[0].NIC == 0 || l[1].NIC == 0 || !l[0].IP6.IsValid() || !l[1].IP6.IsValid() {
		t.Fatalf("attachments after restart: %v", l)
	}
	if st, err := e.client().Status(context.Background()); err != nil || st.Uplink == nil || st.Uplink.StackAddr6.Addr() != e.hostAddr6().Next() {
		t.Fatalf("uplink after restart: %+v %v", st, err)
	}
	e.ping(a.pod, b.ip6.String())
	e.ping(b.pod, a.ip6.String())
	e.ping(a.pod, e.hostAddr6().String())
	if loss, out, err := cnitest.Ping(t, nil, b.ip6.String(), 5); err != nil || loss > 20 {
		t.Fatalf("host → pod %v after restart: %v loss %.0f%%\n%s", b.ip6, err, loss, out)
	}
	for _, p := range []*dualPod{a, b} {
		if err := e.cni.CheckNetworkList(context.Background(), list, p.rt); err != nil {
			t.Fatalf("CHECK %s after restart: %v", p.rt.ContainerID, err)
		}
		if err := e.cni.DelNetworkList(context.Background(), list, p.rt); err != nil {
			t.Fatalf("DEL %s: %v", p.rt.ContainerID, err)
		}
	}
	e.assertNothingLeft()
}

// TestDualStackRouterAdvertisements: with "routerAdvertisements": true
// the stack sends a dual-stack pod Router Advertisements (RFC 4861 §6.2)
// from the gateway's link-local address, which the pod's kernel (accept_ra
// on, not forwarding) turns into a default route "proto ra" via that
// address and the link MTU; without the key it sends none. An IPv4-only
// pod of the same network gets none either.
func TestDualStackRouterAdvertisements(t *testing.T) {
	e := newDualEnv(t)
	e.startDaemon()
	on := e.addDual(e.confList("1.1.0", e.plugin(map[string]any{"routerAdvertisements": true})))
	off := e.addDual(e.confList("1.1.0", e.plugin(nil)))

	var out string
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ = nsRun(on.ns, "ip", "-6", "route", "show", "proto", "ra")
		if strings.Contains(out, "default via fe80:") || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(out, "default via fe80:") || !strings.Contains(out, "dev eth0") {
		t.Fatalf("pod with routerAdvertisements: ip -6 route show proto ra:\n%s\nwant a default route via the gateway's link-local address", out)
	}
	t.Logf("pod with routerAdvertisements: %s", strings.TrimSpace(out))
	st, err := e.client().Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters["Icmp6OutRouterAdvertisements"] == 0 {
		t.Fatalf("Icmp6OutRouterAdvertisements not counted")
	}
	// The other pod (no key): nothing learnt from RAs, even after the
	// first pod's were sent.
	if out, _ := nsRun(off.ns, "ip", "-6", "route", "show", "proto", "ra"); strings.TrimSpace(out) != "" {
		t.Fatalf("pod without routerAdvertisements learnt routes from RAs:\n%s", out)
	}
}
