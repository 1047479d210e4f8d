package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file is the IPv6 side of the harness (issue 15: "make bench runs its
// TCP tests over IPv6 too, side by side with the kernel over IPv6"): the
// host netns's primary IPv6 address, the variants that run over IPv6, and
// the order of a round over both families. An IPv6 variant is measured by
// the same code as an IPv4 one (harness.measure: the servers listen on the
// host's primary IPv6 address and the pod dials it) and summarized the
// same way (buildTable over the IPv6 results alone, so every ratio is to
// the kernel's IPv6 median); report6.go writes its section of the report.

// Address families of -families.
const (
	family4 = 4
	family6 = 6
)

// parseFamilies reads -families: a comma list of 4 and 6, each at most
// once, at least one; returned in ascending order.
func parseFamilies(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || (n != family4 && n != family6) {
			return nil, fmt.Errorf("-families: unknown family %q (known: 4,6)", f)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("-families: %d given twice", n)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-families %q: give 4, 6 or 4,6", s)
	}
	slices.Sort(out)
	return out, nil
}

// randULA64 is a random ULA /64 (RFC 4193 §3.2: fd00::/8 with a random
// Global ID and subnet ID), so that two harnesses (or two daemons of one)
// never share one.
func randULA64() netip.Prefix {
	var a [16]byte
	rand.Read(a[1:8])
	a[0] = 0xfd
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// addIPv6 gives the host netns's primary interface the host's primary
// IPv6 address (::10 of a random ULA /64; no DAD, the link has nobody
// else on it, so the address is usable at once) and an IPv6 default route
// via ::1 of that prefix (a router nobody answers for), as a dual-stack
// node has. Its removal is the host netns's.
func (hn *hostNet) addIPv6() error {
	a16 := randULA64().Addr().As16()
	a16[15] = 0x10
	hn.primary6 = netip.PrefixFrom(netip.AddrFrom16(a16), 64)
	return do(hn.ns, func() error {
		l, err := netlink.LinkByName(hn.ifName)
		if err != nil {
			return err
		}
		a := hn.primary6
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), 128)},
			Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("primary IPv6 address %v: %w", a, err)
		}
		gw := a.Masked().Addr().Next()
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
			Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("IPv6 default route via %v: %w", gw, err)
		}
		return nil
	})
}

// addr6 is the primary IPv6 address (invalid when IPv6 was not set up).
func (hn *hostNet) addr6() netip.Addr { return hn.primary6.Addr() }

// variants6 are the variants that run over IPv6, in run order within a
// round. Their keys are the IPv4 variants' (-variants selects both
// families of a variant), their labels too (the section says IPv6).
var variants6 = []variant{
	{"ptp", "kernel (ptp)", (*harness).attachPTP6},
	{"floor", "floor (ptp + Go relay)", func(h *harness) (*attached, error) { return h.attachFloor6("goroutines") }},
	{"floor-epoll", "floor (ptp + epoll relay)", func(h *harness) (*attached, error) { return h.attachFloor6("epoll") }},
	{"route", "ours, route", func(h *harness) (*attached, error) { return h.attachOurs6(h.ours, "route") }},
	{"proxy", "ours, proxy", func(h *harness) (*attached, error) { return h.attachOurs6(h.ours, "proxy") }},
	{"pasta", "pasta, MTU 1500", func(h *harness) (*attached, error) { return h.attachPasta6(1500) }},
	{"pasta-64k", "pasta, MTU 65520", func(h *harness) (*attached, error) { return h.attachPasta6(65520) }},
	{"slirp4netns", "slirp4netns", (*harness).attachSlirp6},
}

// noIPv6 says, for each variant not in variants6, why it is not measured
// over IPv6 (stated in the report's IPv6 section).
var noIPv6 = map[string]string{
	"floor-route-b": "the floor forwarder (test/bench/floorpacket) forwards IPv4 only",
	"floor-route":   "the floor forwarder (test/bench/floorpacket) forwards IPv4 only",
	"gvisor":        "the gVisor relay (test/bench/gvisorrelay) registers only gVisor's ipv4 and arp protocols",
	"proxy-base":    "the -baseline build may predate IPv6: its daemon gets no IPv6 uplink, A/B rounds are IPv4 only",
	"route-base":    "the -baseline build may predate IPv6: its daemon gets no IPv6 uplink, A/B rounds are IPv4 only",
}

// results6 are the IPv6 results of the selected variants (keys) in run
// order, and for each selected variant that has no IPv6 twin, its label
// and why.
func results6(keys []string) (rs []*variantResult, left []string) {
	for _, v := range variants6 {
		if slices.Contains(keys, v.key) {
			rs = append(rs, &variantResult{v: v, family: family6})
		}
	}
	for _, v := range variants {
		if slices.Contains(keys, v.key) && !slices.ContainsFunc(variants6, func(x variant) bool { return x.key == v.key }) {
			why := noIPv6[v.key]
			if why == "" {
				why = "no IPv6 variant"
			}
			left = append(left, v.label+": "+why)
		}
	}
	return rs, left
}

// runOrder is round (from 1) over both families: the IPv4 variants with
// the kernel at both ends (roundOrder), then the IPv6 ones with the kernel
// over IPv6 at both ends, so that each family's reference brackets the
// variants it is the reference of.
func runOrder(r4, r6 []*variantResult, round int) []*variantResult {
	return append(roundOrder(r4, round), roundOrder(r6, round)...)
}

// name is the result's label with its family when that is IPv6 (the log).
func (r *variantResult) name() string {
	if r.family == family6 {
		return r.v.label + ", IPv6"
	}
	return r.v.label
}

// ptpCNI6 is ptpCNI with a dual-stack network: host-local with one range
// per family (a random 10.251.X.0/24 and a random ULA /64) and a default
// route per family via its gateway. ptp gives the host-side veth both
// gateways and routes the pod's two addresses to it; it turns on IPv4 and
// IPv6 forwarding in the harness's host netns (not the real host's).
func (h *harness) ptpCNI6() (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	b := make([]byte, 1)
	rand.Read(b)
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 251, b[0], 0}), 24)
	ipam := cnitest.HostLocalDual(subnet, randULA64(), h.tb.TempDir())
	ipam["routes"] = []map[string]any{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}}
	js, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0",
		"name":       cnitest.UniqueName(h.tb, "ptp6"),
		"plugins":    []any{map[string]any{"type": "ptp", "ipMasq": false, "ipam": ipam}},
	})
	if err != nil {
		h.tb.Fatal(err)
	}
	return cnitest.CNI(h.tb, h.refBin), cnitest.ConfList(h.tb, string(js))
}

// dualAddrs is the IPv6 address and gateway of a dual-stack ADD result,
// which must hold one address of each family.
func dualAddrs(res *current.Result) (ip6, gw6 netip.Addr, err error) {
	var n4 int
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		a = a.Unmap()
		switch {
		case !ok:
			return ip6, gw6, fmt.Errorf("result address %v", ipc.Address)
		case a.Is4():
			n4++
		case ip6.IsValid():
			return ip6, gw6, fmt.Errorf("result has two IPv6 addresses: %v and %v", ip6, a)
		default:
			ip6 = a
			gw6, _ = netip.AddrFromSlice(ipc.Gateway)
		}
	}
	if n4 != 1 || !ip6.IsValid() {
		return ip6, gw6, fmt.Errorf("result has %d IPv4 and %d IPv6 addresses, want one of each: %v", n4, len(res.IPs)-n4, res.IPs)
	}
	return ip6, gw6, nil
}

// needIPv6 is the error of an IPv6 variant when the host netns has no
// IPv6 primary address (its setup failed; the report says why).
func (h *harness) needIPv6() error {
	if !h.host.addr6().IsValid() {
		return &notAvailable{"the host netns has no IPv6 primary address"}
	}
	return nil
}

// attachPTP6 is attachPTP over IPv6: a dual-stack ptp pod dialling the
// host's primary IPv6 address through the kernel veth path.
func (h *harness) attachPTP6() (*attached, error) {
	if err := h.needIPv6(); err != nil {
		return nil, err
	}
	pod, ip6, gw6, err := h.addPTPPod6()
	if err != nil {
		return nil, err
	}
	P := h.host.addr6()
	return &attached{pod: pod, listen: P, dial: P,
		note: fmt.Sprintf("pod %v → %v (the host's primary IPv6 address) via ptp's gateway %v: the kernel veth path", ip6, P, gw6)}, nil
}

// addPTPPod6 adds a dual-stack pod with ptp and returns it with its IPv6
// address and gateway (ptp's host-side veth's IPv6 address), once the
// pod's and the host netns's IPv6 addresses are out of DAD.
func (h *harness) addPTPPod6() (pod ns.NetNS, ip6, gw6 netip.Addr, err error) {
	cni, list := h.ptpCNI6()
	pod, res, err := h.addPodIPs(cni, list, nil, 2)
	if err != nil {
		return nil, ip6, gw6, fmt.Errorf("ptp ADD (dual stack): %w", err)
	}
	if ip6, gw6, err = dualAddrs(res); err != nil {
		return nil, ip6, gw6, fmt.Errorf("ptp: %w", err)
	}
	if !gw6.IsValid() {
		return nil, ip6, gw6, fmt.Errorf("ptp result has no IPv6 gateway: %v", res.IPs)
	}
	if err := h.settled(pod); err != nil {
		return nil, ip6, gw6, fmt.Errorf("ptp pod: %w", err)
	}
	if err := h.settled(h.host.ns); err != nil {
		return nil, ip6, gw6, fmt.Errorf("ptp host side: %w", err)
	}
	return pod, ip6, gw6, nil
}

// attachFloor6 is attachFloor over IPv6: a dual-stack ptp pod dials its
// IPv6 gateway, where the floor relay listens; the relay dials the host's
// primary IPv6 address.
func (h *harness) attachFloor6(mode string) (*attached, error) {
	if err := h.needIPv6(); err != nil {
		return nil, err
	}
	if h.tools.floorErr != nil {
		return nil, fmt.Errorf("building the floor relay: %w", h.tools.floorErr)
	}
	pod, ip6, gw6, err := h.addPTPPod6()
	if err != nil {
		return nil, err
	}
	P := h.host.addr6()
	a := &attached{pod: pod, listen: P, dial: gw6,
		note: fmt.Sprintf("pod %v → %v (its ptp gateway) where the floor relay (-mode %s) listens; the relay dials %v (the host's primary IPv6 address) and splices", ip6, gw6, mode, P)}
	a.relayFor = func(ports []int) error {
		var ps []string
		for _, p := range ports {
			ps = append(ps, strconv.Itoa(p))
		}
		p, _, err := h.startLineProc("floorrelay", h.tools.floor, "-mode", mode, "-listen", gw6.String(), "-upstream", P.String(), "-ports", strings.Join(ps, ","))
		if err != nil {
			return err
		}
		a.pids = append(a.pids, p.cmd.Process.Pid)
		a.mem, a.logs = p.memstats, p.logTail
		return nil
	}
	return a, nil
}

// attachOurs6 is attachOurs over IPv6: a dual-stack pod of node o in mode
// (host-local with one range per family, the uplink's IPv6 subnet in the
// config as in the daemon's flags) dialling the host's primary IPv6
// address: route mode forwards it through the stack and the uplink's IPv6
// side, proxy mode relays it over IPv6 host sockets. In proxy mode the pod
// also gets a TCP port mapping on the host's primary IPv6 address.
func (h *harness) attachOurs6(o *oursNode, mode string) (*attached, error) {
	if o == nil {
		return nil, fmt.Errorf("our daemon: %w", h.oursErr)
	}
	if err := h.needIPv6(); err != nil {
		return nil, err
	}
	P := h.host.addr6()
	var caps map[string]any
	var mapped *mappedPort
	if mode == "proxy" {
		port, err := freePort(h.host.ns, P)
		if err != nil {
			return nil, fmt.Errorf("free host port on %v: %w", P, err)
		}
		mapped = &mappedPort{podPort: benchPodPort, host: netip.AddrPortFrom(P, uint16(port))}
		caps = map[string]any{"portMappings": []map[string]any{
			{"hostPort": port, "containerPort": benchPodPort, "protocol": "tcp", "hostIP": P.String()}}}
	}
	p := o.pluginConf(mode)
	p["ipam"] = cnitest.HostLocalDual(o.subnet, o.subnet6, o.ipamDir)
	p["uplink"] = map[string]any{"subnet": o.uplink.String(), "subnet6": o.uplink6.String(), "hostIfName": o.uplinkIf}
	pod, res, err := h.addPodIPs(o.cni, o.confListOf(h, p), caps, 2)
	if err != nil {
		return nil, fmt.Errorf("ADD mode %s (dual stack): %w", mode, err)
	}
	ip6, _, err := dualAddrs(res)
	if err != nil {
		return nil, err
	}
	if err := h.settled(pod); err != nil {
		return nil, err
	}
	a := &attached{pod: pod, listen: P, dial: P, pids: []int{o.daemon.Process.Pid},
		note: fmt.Sprintf("pod %v → %v (the host's primary IPv6 address), forwarded by the stack through the uplink %v", ip6, P, o.uplink6)}
	if mapped != nil {
		mapped.podAddr = ip6
		a.mapped = mapped
		a.note = fmt.Sprintf("pod %v → %v (the host's primary IPv6 address), relayed by the daemon over IPv6 host sockets; "+
			"the port-mapping figure: the host netns → %v → pod:%d (iperf3 -s in the pod)", ip6, P, mapped.host, benchPodPort)
	}
	return a, nil
}

// settled waits (bounded: settleTimeout) until no global IPv6 address
// in pod is tentative (duplicate address detection, RFC 4862 §5.4): a
// tentative address cannot be bound (iperf3 -s in the pod) nor used as a
// source. Both plugins settle the pod's addresses before ADD returns, so
// this normally returns at the first look. An address that failed DAD is
// an error at once.
func (h *harness) settled(pod ns.NetNS) error {
	deadline := time.Now().Add(settleTimeout)
	for {
		var tentative []string
		err := do(pod, func() error {
			as, err := netlink.AddrList(nil, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			for _, a := range as {
				switch {
				case a.IP.IsLinkLocalUnicast():
				case a.Flags&unix.IFA_F_DADFAILED != 0:
					return fmt.Errorf("IPv6 address %v failed duplicate address detection", a.IPNet)
				case a.Flags&unix.IFA_F_TENTATIVE != 0:
					tentative = append(tentative, a.IPNet.String())
				}
			}
			return nil
		})
		if err != nil || len(tentative) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("IPv6 address %s still tentative %v after ADD", strings.Join(tentative, ", "), settleTimeout)
		}
		select {
		case <-h.ctx.Done():
			return h.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// settleTimeout bounds settled: DAD takes about a second
// (net.ipv6.conf.*.dad_transmits × retrans_time).
const settleTimeout = 5 * time.Second

// attachPasta6 is attachPasta over IPv6: pasta serves both families
// (no -4), the pod gets 10.0.2.100/24 as over IPv4 and ::100 of the
// host's primary IPv6 prefix (-a; pasta takes the /64 from the host's
// address in that prefix and the gateway from the host's IPv6 default
// route), and dials the host's primary IPv6 address, which pasta reaches
// with its own IPv6 host sockets.
func (h *harness) attachPasta6(mtu int) (*attached, error) {
	if err := h.needIPv6(); err != nil {
		return nil, err
	}
	a16 := h.host.primary6.Masked().Addr().As16()
	a16[15] = 0x01
	a16[14] = 0x01 // ::101, beside the host's ::10 and the router's ::1
	pod6 := netip.AddrFrom16(a16)
	pod := cnitest.NewPodNS(h.tb)
	cmd, err := h.startHelper("pasta", pod, "-f", "-q", "--runas", "0", "--config-net", "-m", strconv.Itoa(mtu),
		"-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2", "-a", pod6.String(),
		"-t", "none", "-u", "none", "-T", "none", "-U", "none", "--netns", pod.Path())
	if err != nil {
		return nil, err
	}
	if err := h.waitAddr(pod, pod6); err != nil {
		return nil, fmt.Errorf("pasta: %w", err)
	}
	if err := h.settled(pod); err != nil {
		return nil, fmt.Errorf("pasta: %w", err)
	}
	P := h.host.addr6()
	return &attached{pod: pod, listen: P, dial: P, pids: []int{cmd.Process.Pid},
		note: fmt.Sprintf("pod %v → %v (the host's primary IPv6 address) through pasta, MTU %d", pod6, P, mtu)}, nil
}

// waitAddr waits (bounded: settleTimeout) until pod has addr on an
// interface.
func (h *harness) waitAddr(pod ns.NetNS, addr netip.Addr) error {
	deadline := time.Now().Add(settleTimeout)
	for {
		found := false
		err := do(pod, func() error {
			as, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
			for _, a := range as {
				found = found || a.IP.Equal(addr.AsSlice())
			}
			return err
		})
		if err != nil || found {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the pod has no address %v after %v", addr, settleTimeout)
		}
		select {
		case <-h.ctx.Done():
			return h.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// slirpPrefix6 is slirp4netns's IPv6 network (its man page: fd00::/64,
// gateway fd00::2); the pod takes an address in it by SLAAC.
var slirpPrefix6 = netip.MustParsePrefix("fd00::/64")

// attachSlirp6 is attachSlirp over IPv6: slirp4netns with --enable-ipv6
// (experimental in 1.2), the pod's tap0 autoconfigures an address in
// fd00::/64 from slirp's Router Advertisement (waited for, bounded), and
// dials the host's primary IPv6 address, which slirp4netns reaches with
// IPv6 host sockets.
func (h *harness) attachSlirp6() (*attached, error) {
	if err := h.needIPv6(); err != nil {
		return nil, err
	}
	pod := cnitest.NewPodNS(h.tb)
	cmd, err := h.startHelper("slirp4netns", pod, "--configure", "--mtu=65520", "--disable-dns", "--enable-ipv6",
		"--netns-type=path", pod.Path(), "tap0")
	if err != nil {
		return nil, err
	}
	pod6, err := h.waitSLAAC(pod, slirpPrefix6)
	if err != nil {
		return nil, fmt.Errorf("slirp4netns: %w", err)
	}
	P := h.host.addr6()
	return &attached{pod: pod, listen: P, dial: P, pids: []int{cmd.Process.Pid},
		note: fmt.Sprintf("pod %v → %v (the host's primary IPv6 address) through slirp4netns --enable-ipv6, MTU 65520", pod6, P)}, nil
}

// waitSLAAC waits (bounded: slaacTimeout) until pod has an address in
// prefix that is out of DAD, and returns it.
func (h *harness) waitSLAAC(pod ns.NetNS, prefix netip.Prefix) (netip.Addr, error) {
	deadline := time.Now().Add(slaacTimeout)
	for {
		var got netip.Addr
		err := do(pod, func() error {
			as, err := netlink.AddrList(nil, netlink.FAMILY_V6)
			for _, a := range as {
				ip, ok := netip.AddrFromSlice(a.IP)
				if ok && prefix.Contains(ip) && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
					got = ip
				}
			}
			return err
		})
		if err != nil || got.IsValid() {
			return got, err
		}
		if time.Now().After(deadline) {
			return got, fmt.Errorf("the pod has no usable address in %v after %v", prefix, slaacTimeout)
		}
		select {
		case <-h.ctx.Done():
			return got, h.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// slaacTimeout bounds waitSLAAC: a Router Advertisement (slirp sends one
// on the router solicitation of a link coming up) and DAD.
const slaacTimeout = 10 * time.Second
