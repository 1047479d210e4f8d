package e2e

// End-to-end test of the Kubernetes Service case without Kubernetes
// (docs/kubernetes.md, "How traffic flows"): a pod talks to a Service
// address that the host DNATs, as kube-proxy does, to another pod of the
// same stack. The daemon runs in a network namespace of the test that
// plays the host (its uplink, host routes, proxy sockets, IPv4 forwarding
// and the iptables DNAT rules are all there, gone with it); the pods are
// added through libcni.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	"github.com/containernetworking/plugins/pkg/ns"
)

// svcAddr is the "ClusterIP": it exists only in the host namespace's
// DNAT rules (the namespace is the test's own, so a fixed address is
// safe), in a range no pod range of newCNIEnv (10.100-199.x.0/24) meets.
var svcAddr = netip.MustParseAddr("10.96.0.10")

// TestServiceBackendOnSameNode: pod A fetches http://SERVICE/remote and
// echoes UDP through SERVICE:53, both DNATed by the host's iptables to
// pod B on the same stack, and gets its answers from the Service address:
//
//   - route mode: B sees A's own address (the stack sends B's replies back
//     to the host, whose conntrack undoes the DNAT);
//   - proxy mode with the Service range in routedRanges: the same;
//   - proxy mode (default): the daemon's host socket meets the DNAT in the
//     host's OUTPUT chain, B sees the uplink's host address.
//
// Pod A → pod B directly and host → pod B still work, and the host's DNAT
// rules counted the Service traffic.
func TestServiceBackendOnSameNode(t *testing.T) {
	requireCmd(t, "iptables")
	requireCmd(t, "nsenter")
	for _, tc := range []struct {
		name, mode string
		routed     bool
	}{
		{"route", "route", false},
		{"proxy-routedRanges", "proxy", true},
		{"proxy", "proxy", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cnitest.RequireRoot(t)
			// Made before the env, so it is removed after the daemon is
			// gone (cleanups run last-in first-out).
			host := cnitest.NewPodNS(t)
			e := newCNIEnv(t)
			e.daemonNetNS = host.Path()
			if err := cnitest.InNS(t, host, func() error {
				return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
			}); err != nil {
				t.Fatalf("ip_forward in the host namespace: %v", err)
			}
			e.startDaemon()
			extra := map[string]any{"mode": tc.mode}
			if tc.routed {
				extra["routedRanges"] = []string{"10.96.0.0/16"}
			}
			list := e.confList("1.1.0", e.plugin(extra))
			a, b := e.add(list), e.add(list)
			// A node routes the Service range somewhere (its default
			// route): the host's own connect() needs a route before
			// OUTPUT's DNAT runs. The uplink, up since the first ADD,
			// stands in for it here.
			if out, err := nsRun(host, "ip", "route", "add", "10.96.0.0/16", "dev", e.uplinkIf); err != nil {
				t.Fatalf("route for the Service range in the host namespace: %v\n%s", err, out)
			}

			// kube-proxy's shape: PREROUTING for forwarded packets,
			// OUTPUT for the host's own sockets (the proxy's).
			for _, chain := range []string{"PREROUTING", "OUTPUT"} {
				for _, r := range [][]string{
					{"-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", b.ip.String() + ":8080"},
					{"-p", "udp", "--dport", "53", "-j", "DNAT", "--to-destination", b.ip.String() + ":5353"},
				} {
					args := append([]string{"-w", "5", "-t", "nat", "-A", chain, "-d", svcAddr.String() + "/32"}, r...)
					if out, err := nsRun(host, "iptables", args...); err != nil {
						t.Fatalf("iptables %s in the host namespace: %v\n%s", strings.Join(args, " "), err, out)
					}
				}
			}
			cnitest.ServerIn(t, b.ns, netip.AddrPortFrom(b.ip, 8080).String())
			var usrv *net.UDPConn
			if err := do(b.ns, func() (err error) {
				usrv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.ip, 5353)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { usrv.Close() })
			go env.ServeUDPEcho(usrv)

			url := fmt.Sprintf("http://%v:80/remote", svcAddr)
			body, err := cnitest.HTTPGet(t, a.ns, url, 10*time.Second)
			if err != nil {
				t.Fatalf("pod A → %s (DNAT to pod B %v): %v\nstack drops %v\nhost nat:\n%s", url, b.ip, err, e.stackDrops(), natRules(host))
			}
			want := a.ip
			if tc.mode == "proxy" && !tc.routed {
				want = e.uplink.Addr().Next()
			}
			if got := remoteIP(t, body); got != want {
				t.Fatalf("pod B saw pod A's request from %v, want %v", got, want)
			}
			t.Logf("pod A %v → %s → pod B %v: B saw %s", a.ip, url, b.ip, body)

			uc, err := dialIn(a.ns, "udp4", netip.AddrPortFrom(svcAddr, 53).String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			// A connected kernel socket takes only answers from the
			// Service's address.
			if out, err := env.CheckEcho(uc, []int{64, 1400}, 3*time.Second); err != nil {
				t.Fatalf("UDP echo via %v:53: %v (%s)\nstack drops %v", svcAddr, err, out, e.stackDrops())
			}

			e.ping(a, b.ip.String())
			if _, err := cnitest.HTTPGet(t, host, fmt.Sprintf("http://%v:8080/", b.ip), 10*time.Second); err != nil {
				t.Fatalf("host → pod B: %v", err)
			}
			// The first packet of each flow (TCP, UDP) met the DNAT of
			// the chain its path crosses, and none the other.
			used, unused := "PREROUTING", "OUTPUT"
			if tc.mode == "proxy" && !tc.routed {
				used, unused = unused, used
			}
			rules := natRules(host)
			if natPackets(rules, used) < 2 || natPackets(rules, unused) != 0 {
				t.Fatalf("the host's DNAT rules: want %s to count the Service's flows, %s none\n%s", used, unused, rules)
			}
		})
	}
}

// natRules is n's nat table with counters (`iptables -t nat -L -n -v -x`).
func natRules(n ns.NetNS) string {
	out, err := nsRun(n, "iptables", "-w", "5", "-t", "nat", "-L", "-n", "-v", "-x")
	if err != nil {
		return fmt.Sprintf("iptables: %v: %s", err, out)
	}
	return out
}

// natPackets sums the packet counters of the DNAT rules of one chain in
// `iptables -L -n -v -x` output.
func natPackets(listing, chain string) int {
	in, sum := false, 0
	for _, l := range strings.Split(listing, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && f[0] == "Chain":
			in = f[1] == chain
		case in && len(f) >= 3 && f[2] == "DNAT":
			var n int
			fmt.Sscan(f[0], &n)
			sum += n
		}
	}
	return sum
}
