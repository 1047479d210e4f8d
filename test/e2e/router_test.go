package e2e

// End-to-end tests of the pod's view of its link (ARCHITECTURE.md "Pod
// link addressing"): the routes are shaped as the ptp reference plugin
// shapes them, so the pod's kernel sees the stack as the router it is, in
// both modes. Each test has its own cniEnv (daemon, stack netns, uplink,
// pod range), removed in t.Cleanup.

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
	"github.com/containernetworking/cni/pkg/types"
)

// TestPodSeesTheRouter, in route and proxy mode: the ADD result lists the
// gateway's on-link host route, the range via the gateway and the default
// via the gateway; from one pod, `ip route get <other pod>` names the
// gateway; an echo with TTL 1 to the other pod is answered by the gateway
// with ICMP time exceeded (RFC 1812 §5.3.1) quoting the request byte for
// byte; a normal echo comes back with TTL 63 (the stack forwarded it and
// decremented the TTL); CHECK passes, and fails once the gateway's route
// is removed from the pod.
func TestPodSeesTheRouter(t *testing.T) {
	for _, mode := range []string{"route", "proxy"} {
		t.Run(mode, func(t *testing.T) {
			e := newCNIEnv(t)
			e.startDaemon()
			list := e.confList("1.1.0", e.plugin(map[string]any{"mode": mode}))
			a, b := e.add(list), e.add(list)
			gw := a.gateway()

			want := []string{gw.String() + "/32 on-link", e.subnet.String() + " via " + gw.String(), "0.0.0.0/0 via " + gw.String()}
			if got := resultRoutes(a.res.Routes); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("result routes %v, want %v", got, want)
			}

			out, err := nsRun(a.ns, "ip", "-4", "route", "get", b.ip.String())
			if err != nil || !strings.Contains(out, b.ip.String()+" via "+gw.String()+" dev eth0") {
				t.Fatalf("ip route get %v in pod %v: %v\n%s\nwant it via the gateway %v", b.ip, a.ip, err, out, gw)
			}
			t.Logf("ip route get %v: %s", b.ip, strings.TrimSpace(out))

			// A TTL=1 echo request, built whole: the gateway expires it
			// and quotes it as sent (it was not forwarded: no TTL
			// decrement, no checksum update).
			echo := make([]byte, header.ICMPv4MinSize+32)
			header.ICMPv4(echo).Encode(header.ICMPv4Fields{Type: header.ICMPv4Echo, RestOfHeader: header.EchoRest(0x4242, 1)})
			copy(echo[header.ICMPv4MinSize:], "a TTL of one ends at the router")
			header.ICMPv4(echo).SetChecksum()
			req := env.IPv4Datagram(a.ip, b.ip, header.ProtoICMP, 0x7b1d, 1, false, nil, echo)
			var got []byte
			err = do(a.ns, func() error {
				var err error
				got, err = env.RawICMPExchange(req, func(ip header.IPv4, m header.ICMPv4) bool {
					return m.Type() == header.ICMPv4TimeExceeded && quotes(m, req)
				}, 5*time.Second)
				return err
			})
			if err != nil {
				t.Fatalf("TTL=1 echo to %v: %v\nstack drops %v", b.ip, err, e.stackDrops())
			}
			ip := header.IPv4(got)
			m := header.ICMPv4(ip.Payload())
			if ip.Src() != gw || m.Code() != header.ICMPv4TTLExceeded {
				t.Fatalf("time exceeded from %v code %d, want from the gateway %v code 0", ip.Src(), m.Code(), gw)
			}
			if !bytes.Equal(m.Payload(), req) {
				t.Fatalf("time exceeded quotes\n% x\nwant the request\n% x", m.Payload(), req)
			}

			out, err = nsRun(a.ns, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", b.ip.String())
			if err != nil || strings.Count(out, "ttl=63") != 3 {
				t.Fatalf("ping %v: %v\n%s\nwant 3 replies with ttl=63", b.ip, err, out)
			}

			if err := e.cni.CheckNetworkList(context.Background(), list, a.rt); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			if out, err := nsRun(a.ns, "ip", "route", "del", gw.String()+"/32", "dev", "eth0"); err != nil {
				t.Fatalf("remove the gateway route: %v\n%s", err, out)
			}
			err = e.cni.CheckNetworkList(context.Background(), list, a.rt)
			if cniCode(err) != api.CodeAttachmentBroken || !strings.Contains(err.Error(), "on-link route to its gateway "+gw.String()) {
				t.Fatalf("CHECK without the gateway route: %v (code %d), want code %d naming the gateway route", err, cniCode(err), api.CodeAttachmentBroken)
			}
			t.Logf("CHECK said: %v", err)
		})
	}
}

// quotes reports whether the ICMP error m quotes (at least the header and
// first 8 bytes of) the datagram dg, by its addresses, protocol and ID.
func quotes(m header.ICMPv4, dg []byte) bool {
	p := m.Payload()
	if len(p) < header.IPv4MinSize || p[0]>>4 != 4 || len(p) < header.IPv4(p).HeaderLen()+8 {
		return false
	}
	q, d := header.IPv4(p), header.IPv4(dg)
	return q.Src() == d.Src() && q.Dst() == d.Dst() && q.ID() == d.ID() && q.Protocol() == d.Protocol()
}

// resultRoutes renders result routes as "dst via gw" or "dst on-link"
// (no gateway, scope link).
func resultRoutes(rs []*types.Route) []string {
	var out []string
	for _, r := range rs {
		if r.GW == nil {
			s := r.Dst.String() + " on-link"
			if r.Scope == nil || *r.Scope != 253 {
				s = r.Dst.String() + " (no gw, scope not link)"
			}
			out = append(out, s)
			continue
		}
		out = append(out, r.Dst.String()+" via "+r.GW.String())
	}
	return out
}

// stackDrops is the stack's drop counters, for failure messages.
func (e *cniEnv) stackDrops() map[string]uint64 {
	st, err := e.client().Status(context.Background())
	if err != nil {
		return nil
	}
	return st.Stack.Drops
}
