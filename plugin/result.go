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
type podAddr struct {
	IP      netip.Prefix
	Gateway netip.Addr
	Range   netip.Prefix
	Routes  []veth.Route
}

// podAddressing picks the pod's addressing from an IPAM result. The stack
// is IPv4-only in this release: exactly one IPv4 address is required and
// an IPv6 one is refused (code 7) rather than configured and black-holed.
// A missing gateway is the first address of the subnet, as ptp does.
func podAddressing(res *current.Result) (*podAddr, error) {
	var pa *podAddr
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, confErr("IPAM returned an invalid address %v", ipc.Address.IP)
		}
		a = a.Unmap()
		ones, _ := ipc.Address.Mask.Size()
		if a.Is6() {
			return nil, confErr("IPAM returned IPv6 address %v: cni-userstack routes IPv4 only in this release; configure an IPv4-only IPAM range", ipc.Address.String())
		}
		if pa != nil {
			return nil, confErr("IPAM returned more than one IPv4 address (%v and %v): configure one IPv4 range", pa.IP, ipc.Address.String())
		}
		p := netip.PrefixFrom(a, ones)
		if ones >= 31 {
			return nil, confErr("IPAM address %v: the prefix must be /30 or shorter to hold a gateway", p)
		}
		gw, _ := netip.AddrFromSlice(ipc.Gateway)
		gw = gw.Unmap()
		if !gw.IsValid() {
			gw = p.Masked().Addr().Next()
		}
		if !gw.Is4() || gw == a {
			return nil, confErr("IPAM gateway %v is not usable for pod address %v", ipc.Gateway, p)
		}
		pa = &podAddr{IP: p, Gateway: gw, Range: p.Masked()}
	}
	if pa == nil {
		return nil, confErr("IPAM returned no IPv4 address: check the ipam section's ranges")
	}
	pa.Routes = gatewayRoutes(pa.Gateway, pa.Range)
	nShape := len(pa.Routes)
	for _, r := range res.Routes {
		dst, ok := ipNetPrefix(&r.Dst)
		if !ok || !dst.Addr().Is4() {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.GW)
		gw = gw.Unmap()
		if !gw.IsValid() {
			gw = pa.Gateway
		}
		if slices.ContainsFunc(pa.Routes, func(x veth.Route) bool { return x.Dst == dst }) {
			continue // the shape has it already (the range, say)
		}
		pa.Routes = append(pa.Routes, veth.Route{Dst: dst, GW: gw})
	}
	if len(pa.Routes) == nShape {
		pa.Routes = append(pa.Routes, veth.Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), GW: pa.Gateway})
	}
	return pa, nil
}

// gatewayRoutes are the first routes of every pod, as ptp installs them:
// the gateway on-link as a host route, the pod's range via the gateway.
func gatewayRoutes(gw netip.Addr, rng netip.Prefix) []veth.Route {
	return []veth.Route{{Dst: netip.PrefixFrom(gw, gw.BitLen())}, {Dst: rng, GW: gw}}
}

// resultDNS is the result's DNS: the configuration's "dns" when set;
// otherwise in proxy mode the gateway, whose DNS relay forwards to the
// host's resolvers (with the IPAM DNS's domain, search and options), and
// in route mode the IPAM DNS.
func resultDNS(conf *NetConf, ipamDNS types.DNS, gw netip.Addr) types.DNS {
	if !conf.DNS.IsEmpty() {
		return conf.DNS
	}
	if conf.Mode == api.ModeRoute {
		return ipamDNS
	}
	return types.DNS{Nameservers: []string{gw.String()}, Domain: ipamDNS.Domain, Search: ipamDNS.Search, Options: ipamDNS.Options}
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
	r.IPs = append(r.IPs, &current.IPConfig{
		Interface: current.Int(idx),
		Address:   net.IPNet{IP: pa.IP.Addr().AsSlice(), Mask: net.CIDRMask(pa.IP.Bits(), 32)},
		Gateway:   pa.Gateway.AsSlice(),
	})
	for _, rt := range pa.Routes {
		tr := &types.Route{Dst: net.IPNet{IP: rt.Dst.Addr().AsSlice(), Mask: net.CIDRMask(rt.Dst.Bits(), 32)}}
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
// for each address with a gateway the ptp shape (gatewayRoutes), and
// every route of the result through one of those gateways.
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
		if gw, ok := netip.AddrFromSlice(ipc.Gateway); ok && gw.Unmap().Is4() && p.Addr().Is4() {
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
