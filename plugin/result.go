package plugin

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// podAddr is what a pod gets from IPAM (ARCHITECTURE.md "Pod link
// addressing"): its address with the IPAM prefix length, the gateway the
// stack owns on its link, the network's pod range, and its routes in the
// shape of the ptp reference plugin: the gateway as an on-link host route,
// then the range via the gateway, then the IPAM routes (the gateway filled
// in) or, without any, a default route via the gateway. The pod's kernel
// thus knows a router sits between it and every other address, even of
// its own range: a TTL=1 datagram to another pod is expired by a gateway
// it can see, and `ip route get` and traceroute name that hop.
//
// A dual-stack pod has the same in IPv6 (IP6, Gateway6, Range6, its
// routes in Routes beside the IPv4 ones). The IPv6 gateway is, as for
// IPv4, the IPAM range's gateway (host-local: the subnet's first
// address), a global address the stack owns on every pod link; the
// routes are gateway/128 on-link, the range via it, the IPAM routes or
// ::/0 via it. This is what the ptp plugin does for IPv6
// (containernetworking/plugins v1.9.1, plugins/main/ptp/ptp.go:
// setupContainerVeth adds "gw/128 scope link" and "subnet via gw" for
// either family, setupHostVeth puts gw/128 on the host veth). Routing via
// the stack's link-local address instead (fe80::/64 + the far end's
// EUI-64, which the stack also owns on each pod link and answers NDP
// from) would tie the pod's routes to a MAC the plugin learns only after
// the veth exists, and a link-local next hop cannot be the DNS server
// the result names (resolv.conf would need a zone); the global gateway
// keeps one shape for both families and CHECK's rules unchanged.
type podAddr struct {
	IP      netip.Prefix
	Gateway netip.Addr
	Range   netip.Prefix
	// IP6, Gateway6, Range6: the IPv6 side, invalid on an IPv4-only pod.
	IP6      netip.Prefix
	Gateway6 netip.Addr
	Range6   netip.Prefix
	Routes   []veth.Route
}

// IPs are the pod's addresses, IPv4 first.
func (pa *podAddr) IPs() []netip.Prefix {
	if pa.IP6.IsValid() {
		return []netip.Prefix{pa.IP, pa.IP6}
	}
	return []netip.Prefix{pa.IP}
}

// podAddressing picks the pod's addressing from an IPAM result: exactly
// one IPv4 address and at most one IPv6 address (host-local with a range
// set per family gives one of each). IPv4 is required: an IPv6-only
// result is refused (code 7), as is a second address of a family. A
// missing gateway is the first address of the subnet, as ptp does.
func podAddressing(res *current.Result) (*podAddr, error) {
	pa := &podAddr{}
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, confErr("IPAM returned an invalid address %v", ipc.Address.IP)
		}
		a = a.Unmap()
		ones, bits := ipc.Address.Mask.Size()
		if bits == 128 && a.Is4() {
			ones -= 96
		}
		p := netip.PrefixFrom(a, ones)
		if !p.IsValid() {
			return nil, confErr("IPAM returned address %v with an invalid prefix length", ipc.Address.String())
		}
		gw, _ := netip.AddrFromSlice(ipc.Gateway)
		gw = gw.Unmap()
		if !gw.IsValid() {
			gw = p.Masked().Addr().Next()
		}
		if a.Is6() {
			if pa.IP6.IsValid() {
				return nil, confErr("IPAM returned more than one IPv6 address (%v and %v): configure one IPv6 range", pa.IP6, ipc.Address.String())
			}
			if a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLoopback() || a.IsUnspecified() {
				return nil, confErr("IPAM address %v: a global unicast IPv6 address is required", p)
			}
			if ones > 126 {
				return nil, confErr("IPAM address %v: the prefix must be /126 or shorter to hold a gateway", p)
			}
			if !gw.Is6() || gw == a || gw.IsLinkLocalUnicast() || !p.Masked().Contains(gw) {
				return nil, confErr("IPAM gateway %v is not usable for pod address %v (a global address of its subnet is needed)", ipc.Gateway, p)
			}
			pa.IP6, pa.Gateway6, pa.Range6 = p, gw, p.Masked()
			continue
		}
		if pa.IP.IsValid() {
			return nil, confErr("IPAM returned more than one IPv4 address (%v and %v): configure one IPv4 range", pa.IP, ipc.Address.String())
		}
		if ones >= 31 {
			return nil, confErr("IPAM address %v: the prefix must be /30 or shorter to hold a gateway", p)
		}
		if !gw.Is4() || gw == a {
			return nil, confErr("IPAM gateway %v is not usable for pod address %v", ipc.Gateway, p)
		}
		pa.IP, pa.Gateway, pa.Range = p, gw, p.Masked()
	}
	if !pa.IP.IsValid() {
		if pa.IP6.IsValid() {
			return nil, confErr("IPAM returned only IPv6 address %v: cni-userstack needs an IPv4 address beside it (dual stack); add an IPv4 range to the ipam section's ranges", pa.IP6)
		}
		return nil, confErr("IPAM returned no IPv4 address: check the ipam section's ranges")
	}
	pa.Routes = familyRoutes(res.Routes, pa.Gateway, pa.Range)
	if pa.IP6.IsValid() {
		pa.Routes = append(pa.Routes, familyRoutes(res.Routes, pa.Gateway6, pa.Range6)...)
	}
	return pa, nil
}

// familyRoutes are one family's pod routes: the ptp shape (gatewayRoutes),
// then the IPAM routes of that family (their gateway filled in with gw
// when they have none), or, without any, the default route via gw.
func familyRoutes(ipamRoutes []*types.Route, gw netip.Addr, rng netip.Prefix) []veth.Route {
	out := gatewayRoutes(gw, rng)
	nShape := len(out)
	for _, r := range ipamRoutes {
		dst, ok := ipNetPrefix(&r.Dst)
		if !ok || dst.Addr().Is4() != gw.Is4() {
			continue
		}
		rgw, _ := netip.AddrFromSlice(r.GW)
		rgw = rgw.Unmap()
		if !rgw.IsValid() {
			rgw = gw
		}
		if slices.ContainsFunc(out, func(x veth.Route) bool { return x.Dst == dst }) {
			continue // the shape has it already (the range, say)
		}
		out = append(out, veth.Route{Dst: dst, GW: rgw})
	}
	if len(out) == nShape {
		out = append(out, veth.Route{Dst: netip.PrefixFrom(unspecified(gw), 0), GW: gw})
	}
	return out
}

// unspecified is the all-zeros address of a's family.
func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// gatewayRoutes are the first routes of every pod, as ptp installs them:
// the gateway on-link as a host route, the pod's range via the gateway.
func gatewayRoutes(gw netip.Addr, rng netip.Prefix) []veth.Route {
	return []veth.Route{{Dst: netip.PrefixFrom(gw, gw.BitLen())}, {Dst: rng, GW: gw}}
}

// resultDNS is the result's DNS: the configuration's "dns" when set;
// otherwise in proxy mode the gateway, whose DNS relay forwards to the
// host's resolvers (with the IPAM DNS's domain, search and options), and
// in route mode the IPAM DNS. A dual-stack pod's IPv6 gateway (gw6
// valid) is the second nameserver: the relay answers on both.
func resultDNS(conf *NetConf, ipamDNS types.DNS, gw, gw6 netip.Addr) types.DNS {
	if !conf.DNS.IsEmpty() {
		return conf.DNS
	}
	if conf.Mode == api.ModeRoute {
		return ipamDNS
	}
	ns := []string{gw.String()}
	if gw6.IsValid() {
		ns = append(ns, gw6.String())
	}
	return types.DNS{Nameservers: ns, Domain: ipamDNS.Domain, Search: ipamDNS.Search, Options: ipamDNS.Options}
}

// buildResult is the ADD result: the pod interface with its sandbox path,
// its address (interface index pointing at it) with the gateway, the pod
// routes and dns (resultDNS), appended to prev when the plugin is chained
// after another one (prev's DNS, when it has one, is kept). It is in the
// current (1.1.0) shape; PrintResult converts it to the requested version.
func buildResult(prev *current.Result, dns types.DNS, ifName, netns string, podMAC net.HardwareAddr, pa *podAddr) *current.Result {
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if prev != nil {
		cp := *prev
		r = &cp
		r.CNIVersion = current.ImplementedSpecVersion
	}
	idx := len(r.Interfaces)
	r.Interfaces = append(r.Interfaces, &current.Interface{Name: ifName, Mac: podMAC.String(), Sandbox: netns})
	for _, ip := range []struct {
		p  netip.Prefix
		gw netip.Addr
	}{{pa.IP, pa.Gateway}, {pa.IP6, pa.Gateway6}} {
		if !ip.p.IsValid() {
			continue
		}
		r.IPs = append(r.IPs, &current.IPConfig{
			Interface: current.Int(idx),
			Address:   *prefixIPNet(ip.p),
			Gateway:   ip.gw.AsSlice(),
		})
	}
	for _, rt := range pa.Routes {
		tr := &types.Route{Dst: *prefixIPNet(rt.Dst)}
		if rt.GW.IsValid() {
			tr.GW = rt.GW.AsSlice()
		} else {
			// On-link (the gateway's host route): spec 1.1's scope
			// says so; a route without gw and scope would read "via
			// the default gateway".
			tr.Scope = &scopeLink
		}
		r.Routes = append(r.Routes, tr)
	}
	if prev == nil || (len(r.DNS.Nameservers) == 0 && r.DNS.Domain == "" && len(r.DNS.Search) == 0) {
		r.DNS = dns
	}
	return r
}

// prefixIPNet is p as a net.IPNet of its family's length (4 or 16
// bytes), as the result's JSON writes it.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// scopeLink is RT_SCOPE_LINK, a route's "scope" in a 1.1 result.
var scopeLink = 253

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if a.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

// resultIPs lists the addresses of a result on the interface (name,
// sandbox), for CHECK, with its MAC and the routes CHECK expects on it:
// for each address (of either family) with a gateway of its family the
// ptp shape (gatewayRoutes), and every route of the result through one
// of those gateways.
func resultIPs(r *current.Result, ifName, netns string) ([]netip.Prefix, string, []veth.Route, error) {
	idx := -1
	mac := ""
	for i, in := range r.Interfaces {
		if in.Name == ifName && in.Sandbox == netns {
			idx, mac = i, in.Mac
		}
	}
	if idx < 0 {
		return nil, "", nil, fmt.Errorf("prevResult has no interface %q in sandbox %s", ifName, netns)
	}
	var out []netip.Prefix
	var want []veth.Route
	var gws []netip.Addr
	add := func(rt veth.Route) {
		if !slices.Contains(want, rt) {
			want = append(want, rt)
		}
	}
	for _, ipc := range r.IPs {
		if ipc.Interface == nil || *ipc.Interface != idx {
			continue
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		ones, _ := ipc.Address.Mask.Size()
		p := netip.PrefixFrom(a.Unmap(), ones)
		out = append(out, p)
		if gw, ok := netip.AddrFromSlice(ipc.Gateway); ok && gw.Unmap().Is4() == p.Addr().Is4() {
			gws = append(gws, gw.Unmap())
			for _, rt := range gatewayRoutes(gw.Unmap(), p.Masked()) {
				add(rt)
			}
		}
	}
	// Routes of other interfaces (a plugin chained before us) are not
	// ours to check: only those through one of our gateways.
	for _, rt := range r.Routes {
		dst, ok := ipNetPrefix(&rt.Dst)
		if !ok {
			continue
		}
		gw, _ := netip.AddrFromSlice(rt.GW)
		if gw = gw.Unmap(); gw.IsValid() && slices.Contains(gws, gw) {
			add(veth.Route{Dst: dst, GW: gw})
		}
	}
	return out, mac, want, nil
}
