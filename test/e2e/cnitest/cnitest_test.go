package cnitest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
)

func TestMain(m *testing.M) { Main(m) }

// randomSubnet is a /24 in 10.200.0.0/13, so that concurrent runs rarely
// share one (they could: each lives in its own namespaces).
func randomSubnet() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(200 + rand.IntN(8)), byte(rand.IntN(256)), 0}), 24)
}

type ptpPod struct {
	ns ns.NetNS
	rt *libcni.RuntimeConf
	ip netip.Addr
}

// TestPTPBaseline drives the reference ptp plugin with host-local IPAM
// through libcni, with ptp's "host" side in a netns of the test standing in
// for the node: ADD gives each pod an address, the pods reach the gateway,
// each other and an HTTP server on the node, CHECK passes, DEL (twice)
// leaves no link and no reservation. It proves the harness on plugins that
// are not ours, and is the ptp baseline of the benchmarks.
func TestPTPBaseline(t *testing.T) {
	RequireRoot(t)
	bin := BuildReferencePlugins(t)
	node := NewPodNS(t)
	subnet := randomSubnet()
	gw := subnet.Addr().Next()
	dataDir := t.TempDir()
	name := UniqueName(t, "ptp")
	cni := CNI(t, bin)
	list := ConfList(t, PTPConfJSON(t, name, "1.1.0", subnet, dataDir, 0))
	ctx := context.Background()
	nodeLinks := len(Links(t, node))

	inNode := func(fn func() error) error { return InNS(t, node, fn) }
	pods := make([]*ptpPod, 2)
	for i := range pods {
		p := &ptpPod{ns: NewPodNS(t)}
		p.rt = RuntimeConf(UniqueName(t, fmt.Sprintf("ctr%d", i)), p.ns.Path(), "eth0", nil)
		t.Cleanup(func() { inNode(func() error { return cni.DelNetworkList(ctx, list, p.rt) }) })
		var res types.Result
		if err := inNode(func() (err error) { res, err = cni.AddNetworkList(ctx, list, p.rt); return err }); err != nil {
			t.Fatalf("ADD pod %d: %v", i, err)
		}
		r, err := types100.GetResult(res)
		if err != nil {
			t.Fatalf("ADD pod %d: result: %v", i, err)
		}
		if r.CNIVersion != "1.1.0" || len(r.IPs) != 1 || r.IPs[0].Interface == nil {
			t.Fatalf("ADD pod %d: result %+v", i, r)
		}
		ipc := r.IPs[0]
		ip, ok := netip.AddrFromSlice(ipc.Address.IP.To4())
		if !ok || !subnet.Contains(ip) || ip == gw {
			t.Fatalf("ADD pod %d: address %v outside %v", i, ipc.Address, subnet)
		}
		if idx := *ipc.Interface; idx < 0 || idx >= len(r.Interfaces) || r.Interfaces[idx].Sandbox != p.ns.Path() ||
			r.Interfaces[idx].Name != "eth0" {
			t.Fatalf("ADD pod %d: IP's interface %d is not eth0 in %s: %+v", i, idx, p.ns.Path(), r.Interfaces)
		}
		p.ip = ip
		pods[i] = p
	}
	if got := Reservations(t, dataDir, name); !slices.Equal(got, []netip.Addr{pods[0].ip, pods[1].ip}) &&
		!slices.Equal(got, []netip.Addr{pods[1].ip, pods[0].ip}) {
		t.Errorf("host-local reservations = %v, want the pods' %v and %v", got, pods[0].ip, pods[1].ip)
	}

	for _, dst := range []netip.Addr{gw, pods[1].ip} {
		loss, out, err := Ping(t, pods[0].ns, dst.String(), 3)
		if err != nil || loss != 0 {
			t.Errorf("ping %v from pod 0: loss %v%%, %v\n%s", dst, loss, err, out)
		}
	}
	// The helper reports loss: nobody holds the last address of the range.
	unused := netip.AddrFrom4([4]byte{subnet.Addr().As4()[0], subnet.Addr().As4()[1], subnet.Addr().As4()[2], 254})
	if loss, out, err := Ping(t, pods[0].ns, unused.String(), 2); err != nil || loss != 100 {
		t.Errorf("ping of unused %v: loss %v%%, %v; want 100%%\n%s", unused, loss, err, out)
	}

	const size = 16 << 20
	n, d, err := TCPTransfer(t, pods[1].ns, netip.AddrPortFrom(pods[1].ip, 0), pods[0].ns, size, 0)
	if err != nil || n != size {
		t.Fatalf("TCP pod 0 → pod 1: %d bytes, %v", n, err)
	}
	t.Logf("ptp baseline: %d MiB pod→pod in %v (%.2f Gbit/s)", n>>20, d, TransferResult{n, d}.Gbps())
	// A transfer to a port nobody listens on fails.
	if _, err := (Transfer{ServerNS: pods[1].ns, Listen: netip.AddrPortFrom(pods[1].ip, 0), ClientNS: pods[0].ns,
		Dial: netip.AddrPortFrom(pods[1].ip, 9), Bytes: 1}).Run(t); err == nil {
		t.Errorf("transfer to a closed port succeeded")
	}

	url := ServerIn(t, node, netip.AddrPortFrom(gw, 0).String())
	if body, err := HTTPGet(t, pods[0].ns, url, 0); err != nil || string(body) != HostServerBody {
		t.Errorf("GET %s from pod 0: %q, %v", url, body, err)
	}
	if body, err := HTTPGet(t, pods[0].ns, url+"/remote", 0); err != nil || !strings.HasPrefix(string(body), pods[0].ip.String()+":") {
		t.Errorf("GET %s/remote from pod 0: %q, %v; want the pod's own address", url, body, err)
	}

	if err := inNode(func() error { return cni.CheckNetworkList(ctx, list, pods[0].rt) }); err != nil {
		t.Errorf("CHECK pod 0: %v", err)
	}

	for i, p := range pods {
		for try := range 2 {
			if err := inNode(func() error { return cni.DelNetworkList(ctx, list, p.rt) }); err != nil {
				t.Errorf("DEL pod %d (#%d): %v", i, try+1, err)
			}
		}
		if l := Links(t, p.ns); !slices.Equal(l, []string{"lo"}) {
			t.Errorf("pod %d links after DEL = %v, want [lo]", i, l)
		}
		if slices.Contains(Reservations(t, dataDir, name), p.ip) {
			t.Errorf("pod %d's %v still reserved after DEL", i, p.ip)
		}
	}
	if got := len(Links(t, node)); got != nodeLinks {
		t.Errorf("node netns has %d links after DEL, had %d before ADD: %v", got, nodeLinks, Links(t, node))
	}
}

// BuildPlugins' error names the package that did not compile.
func TestBuildError(t *testing.T) {
	err := goBuild(t.TempDir(), "github.com/cni-userstack/cni-userstack/test/e2e/cnitest/no-such-package")
	if err == nil || !strings.Contains(err.Error(), "no-such-package") {
		t.Fatalf("goBuild of a missing package: err = %v", err)
	}
}

func TestLatenciesPercentile(t *testing.T) {
	ms := func(v ...int) Latencies {
		l := make(Latencies, len(v))
		for i, x := range v {
			l[i] = time.Duration(x) * time.Millisecond
		}
		return l
	}
	tests := []struct {
		l    Latencies
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 50, 3 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 100, 5 * time.Millisecond},
		{ms(5, 1, 4, 2, 3), 1, 1 * time.Millisecond},
		{ms(10, 20, 30, 40, 50, 60, 70, 80, 90, 100), 90, 90 * time.Millisecond},
		{ms(10, 20, 30, 40, 50, 60, 70, 80, 90, 100), 99, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := tt.l.Percentile(tt.p); got != tt.want {
			t.Errorf("%v.Percentile(%v) = %v, want %v", tt.l, tt.p, got, tt.want)
		}
	}
}

// TestPTPAddDelLatency runs the latency harness on ptp: the baseline our
// plugin's ADD/DEL latencies are reported beside (the full 100-pod run is
// the benchmark's; this is a small one).
func TestPTPAddDelLatency(t *testing.T) {
	RequireRoot(t)
	bin := BuildReferencePlugins(t)
	node := NewPodNS(t)
	dataDir := t.TempDir()
	name := UniqueName(t, "ptp")
	cni := CNI(t, bin)
	list := ConfList(t, PTPConfJSON(t, name, "1.1.0", randomSubnet(), dataDir, 0))
	for _, par := range []int{1, 5} {
		add, del, err := AddDelLatency(t, cni, list, node, 10, par)
		if err != nil {
			t.Fatalf("parallel %d: %v", par, err)
		}
		if len(add) != 10 || len(del) != 10 || add.Percentile(50) <= 0 || del.Percentile(50) <= 0 {
			t.Fatalf("parallel %d: add %v del %v", par, add, del)
		}
		t.Logf("ptp parallel=%d ADD %v; DEL %v", par, add, del)
		if r := Reservations(t, dataDir, name); len(r) != 0 {
			t.Errorf("parallel %d: reservations left after DEL: %v", par, r)
		}
	}
	if l := Links(t, node); !slices.Equal(l, []string{"lo"}) {
		t.Errorf("node links after DEL = %v, want [lo]", l)
	}
}
