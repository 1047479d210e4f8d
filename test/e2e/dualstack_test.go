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
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
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

// addDual ADDs a pod and checks the result holds one address of each
// family on the pod's interface, each with its gateway.
func (e *dualEnv) addDual(list *libcni.NetworkConfigList) *dualPod {
	e.t.Helper()
	p := &pod{ns: cnitest.NewPodNS(e.t)}
	p.rt = cnitest.RuntimeConf(cnitest.UniqueName(e.t, "ctr"), p.ns.Path(), "eth0", nil)
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
// the pods' kernels have them; the daemon's attachment has the IPv6 side
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
