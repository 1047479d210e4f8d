package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Defaults of route mode's uplink.
var (
	// DefaultUplinkSubnet is the link-local /30 of the uplink: the host end
	// gets the first address, the stack the second.
	DefaultUplinkSubnet = netip.MustParsePrefix("169.254.100.0/30")
	// DefaultUplinkSubnet6 is the uplink's IPv6 subnet, brought up with
	// the first dual-stack pod: a unique local prefix (RFC 4193 §3.1,
	// fd00::/8 with a Global ID picked at random once, §3.2.1), never
	// routed beyond the node. The host end gets ::1, the stack ::2.
	DefaultUplinkSubnet6 = netip.MustParsePrefix("fd57:7c5d:8e2a:75::/64")
)

const (
	// DefaultUplinkHostIfName is the uplink's end in the host netns.
	DefaultUplinkHostIfName = "cni-us-uplink"
	// UplinkStackIfName is the uplink's end in the stack netns (and the
	// stack's NIC name for it).
	UplinkStackIfName = "us-uplink"
	// uplinkMTU is the uplink's MTU: pods' MTUs are at most this in
	// practice; a larger pod MTU is fragmented or refused by the stack.
	uplinkMTU = 1500
)

// DropPodSrcMAC is the drop reason of a frame on a pod link whose Ethernet
// source is not the pod's MAC (anti-spoofing).
var DropPodSrcMAC = buf.NewDropReason("POD_SRC_MAC_MISMATCH")

// hostRouteProtocol tags the host routes the daemon installs (rtm_protocol
// in `ip route`, shown as "proto 0x75"): reconciliation only ever removes
// routes carrying it.
const hostRouteProtocol netlink.RouteProtocol = 0x75

// errNoRoute is what RTM_DELROUTE answers for a missing route.
var errNoRoute = syscall.ESRCH

// kernel is what the attacher needs from the host kernel besides the
// stack: the far ends as link endpoints, the uplink pair and host routes.
// kernelOps is the real one; tests use in-memory pipes.
type kernel interface {
	// OpenLink opens the far end name in the stack netns.
	OpenLink(name string) (link.Endpoint, header.MAC, error)
	// UplinkSetup creates or reuses the uplink pair with hostAddr on its
	// host end and returns the host end's ifindex.
	UplinkSetup(hostAddr netip.Prefix) (hostIndex int, err error)
	// UplinkSetup6 turns IPv6 on at the uplink's host end with hostAddr
	// as its only global IPv6 address.
	UplinkSetup6(hostAddr netip.Prefix) error
	// HostRoute adds (replace) or removes `dst via gw dev hostIndex` in
	// the host netns; removing a missing route is success.
	HostRoute(dst netip.Prefix, gw netip.Addr, hostIndex int, add bool) error
}

// kernelOps is the real kernel: AF_PACKET in the stack netns, veth for the
// uplink, netlink in the daemon's (host) netns.
type kernelOps struct {
	nsPath, stackNetNS, uplinkHostIfName string
	busyPoll                             time.Duration
	rxQueues                             int
	// pollAlso is every link's afpacket.Config.BusyPollAlso from
	// SetBusyPollAlso on; shared by the copies of kernelOps.
	pollAlso *atomic.Pointer[func() int]
	log      *slog.Logger
}

func (k kernelOps) OpenLink(name string) (link.Endpoint, header.MAC, error) {
	cfg := afpacket.Config{NetNS: k.nsPath, Name: name, BusyPoll: k.busyPoll, Queues: k.rxQueues}
	if f := k.pollAlso.Load(); f != nil {
		cfg.BusyPollAlso = *f
	}
	ep, err := afpacket.Open(cfg)
	if err != nil {
		return nil, header.MAC{}, fmt.Errorf("open %s in netns %s: %w", name, k.stackNetNS, err)
	}
	// The link is the stack's whole: its frames reach our taps, and
	// the stack netns's kernel, which would parse each and drop it
	// (IpInAddrErrors), gets none. Without it (no cls_bpf, no BPF
	// allowed) the kernel keeps dropping them itself: slower, not wrong.
	if err := veth.DropKernelInput(k.nsPath, name); err != nil {
		k.log.Warn("link: the stack netns's kernel will parse this link's frames before dropping them", "link", name, "err", err)
	}
	return ep, header.MAC(ep.MAC()), nil
}

func (k kernelOps) UplinkSetup(hostAddr netip.Prefix) (int, error) {
	pair, err := veth.UplinkSetup(k.uplinkHostIfName, UplinkStackIfName, k.stackNetNS, hostAddr, uplinkMTU)
	if err != nil {
		return 0, err
	}
	return pair.PodIfIndex, nil
}

func (k kernelOps) UplinkSetup6(hostAddr netip.Prefix) error {
	return veth.UplinkSetup6(k.uplinkHostIfName, hostAddr)
}

func (k kernelOps) HostRoute(dst netip.Prefix, gw netip.Addr, hostIndex int, add bool) error {
	r := &netlink.Route{
		LinkIndex: hostIndex,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Gw:        gw.AsSlice(),
		Protocol:  hostRouteProtocol,
	}
	if add {
		return netlink.RouteReplace(r)
	}
	if err := netlink.RouteDel(r); err != nil && !errors.Is(err, errNoRoute) {
		return err
	}
	return nil
}

// StackConfig configures the real attacher.
type StackConfig struct {
	StackNetNS   string       // name under /var/run/netns
	UplinkSubnet netip.Prefix // an IPv4 prefix of at most /30
	// UplinkSubnet6 is the uplink's IPv6 prefix (at most /126), used
	// once a dual-stack pod attaches; invalid = DefaultUplinkSubnet6.
	UplinkSubnet6    netip.Prefix
	UplinkHostIfName string
	// BusyPoll is every link's afpacket.Config.BusyPoll (0: off).
	BusyPoll time.Duration
	// RxQueues is every link's afpacket.Config.Queues; 0 is
	// DefaultRxQueues.
	RxQueues int
	// ConntrackMax bounds the connection table; 0 is
	// conntrack.DefaultMax.
	ConntrackMax int
	Logger       *slog.Logger
	// Options are passed to netstack.New (forwarding is always on).
	Options []netstack.Option
}

// DefaultRxQueues is the receive queues per link when none are asked
// for: as many as CPUs, at most 2. Two spread one pod's flows over two
// CPUs (make bench, 2 CPUs, 3 interleaved rounds: proxy 4 streams
// pod→host 15.2 → 17.4 Gbit/s and host→pod 11.4 → 14.6, medians; one
// stream and connections/s unchanged within noise); more would cost
// every pod a goroutine and a socket each for CPUs its flows rarely
// fill.
func DefaultRxQueues() int {
	return min(runtime.GOMAXPROCS(0), 2)
}

// UplinkAddrs returns the host and stack addresses of an uplink subnet:
// the first and second host addresses, with the subnet's length.
func UplinkAddrs(subnet netip.Prefix) (host, stack netip.Prefix, err error) {
	if !subnet.IsValid() || !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return host, stack, fmt.Errorf("uplink subnet %v: need an IPv4 prefix of /30 or shorter", subnet)
	}
	s := subnet.Masked()
	h := s.Addr().Next()
	return netip.PrefixFrom(h, s.Bits()), netip.PrefixFrom(h.Next(), s.Bits()), nil
}

// UplinkAddrs6 returns the host and stack IPv6 addresses of an uplink
// subnet: ::1 and ::2 of the subnet, with its length. The subnet must be
// a global unicast IPv6 prefix (ULA or GUA; not IPv4-mapped, link-local
// or multicast) of /126 or shorter.
func UplinkAddrs6(subnet netip.Prefix) (host, stack netip.Prefix, err error) {
	a := subnet.Addr()
	if !subnet.IsValid() || !a.Is6() || a.Is4In6() || a.Zone() != "" || a.IsLinkLocalUnicast() || a.IsMulticast() ||
		a.IsLoopback() || subnet.Bits() > 126 {
		return host, stack, fmt.Errorf("uplink subnet %v: need a global unicast IPv6 prefix of /126 or shorter", subnet)
	}
	s := subnet.Masked()
	h := s.Addr().Next()
	return netip.PrefixFrom(h, s.Bits()), netip.PrefixFrom(h.Next(), s.Bits()), nil
}

// uplinkLocals is what the uplink holds in the local table: its IPv4
// address, and its IPv6 and link-local addresses.
const uplinkLocals = 3

// localsPerPod is what a pod's NIC holds in the local table: the gateway,
// and for a dual-stack pod the IPv6 gateway and the link's link-local
// address. With MaxAttachments IPv4-only pods the table has room; dual
// stack pods fill it at (route.MaxLocal-uplinkLocals)/3 = 1364.
func localsPerPod(dual bool) int {
	if dual {
		return 3
	}
	return 1
}

type podLink struct {
	nic  int
	rng  netip.Prefix
	pod  netip.Addr
	rng6 netip.Prefix // invalid on an IPv4-only pod
	pod6 netip.Addr
}

type uplinkState struct {
	api.Uplink
	hostIndex int
	v6        bool // ensureUplink6Locked done
}

// StackAttacher drives the userspace stack: one NIC per pod link over an
// AF_PACKET socket opened in the stack netns, the uplink, and proxy
// mode's divert rule (divert.go).
type StackAttacher struct {
	cfg       StackConfig
	hostAddr  netip.Prefix
	stkAddr   netip.Prefix
	hostAddr6 netip.Prefix
	stkAddr6  netip.Prefix
	s         *netstack.Stack
	nf        *netfilter.Netfilter
	k         kernel
	log       *slog.Logger

	// macs maps a pod NIC to its pod's MAC for the source-MAC check; the
	// map is copied on write so the hook reads it without a lock.
	macs       atomic.Pointer[map[int]header.MAC]
	spoofDrops atomic.Uint64

	// proxyNICs maps a proxy-mode pod's NIC to its routed ranges and
	// podAddrs holds every pod address (both modes): the divert hook's
	// tables, copied on write like macs. Bound: MaxAttachments entries.
	proxyNICs    atomic.Pointer[map[int]proxyPod]
	podAddrs     atomic.Pointer[map[netip.Addr]struct{}]
	diverted     atomic.Uint64
	protoDrops   atomic.Uint64
	invalidDrops atomic.Uint64

	mu     sync.Mutex
	locals int                  // local-table entries the pods hold (localsPerPod)
	pods   map[string]podLink   // by attachment ID; bound MaxAttachments
	ranges map[netip.Prefix]int // pods per routed range
	uplink *uplinkState         // nil until the first attach
}

// NewStackAttacher creates the stack netns when missing and a stack with
// forwarding on, netfilter (conntrack) on, the source-MAC check and the
// proxy divert rule at PREROUTING.
func NewStackAttacher(cfg StackConfig) (*StackAttacher, error) {
	if cfg.StackNetNS == "" {
		cfg.StackNetNS = veth.DefaultStackNetNS
	}
	if !cfg.UplinkSubnet.IsValid() {
		cfg.UplinkSubnet = DefaultUplinkSubnet
	}
	cfg.UplinkSubnet = cfg.UplinkSubnet.Masked()
	if cfg.UplinkHostIfName == "" {
		cfg.UplinkHostIfName = DefaultUplinkHostIfName
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if _, _, err := UplinkAddrs(cfg.UplinkSubnet); err != nil {
		return nil, err
	}
	if !cfg.UplinkSubnet6.IsValid() {
		cfg.UplinkSubnet6 = DefaultUplinkSubnet6
	}
	cfg.UplinkSubnet6 = cfg.UplinkSubnet6.Masked()
	if _, _, err := UplinkAddrs6(cfg.UplinkSubnet6); err != nil {
		return nil, err
	}
	path, err := veth.EnsureStackNetNS(cfg.StackNetNS)
	if err != nil {
		return nil, err
	}
	if cfg.RxQueues <= 0 {
		cfg.RxQueues = DefaultRxQueues()
	}
	return newStackAttacher(cfg, kernelOps{nsPath: path, stackNetNS: cfg.StackNetNS, uplinkHostIfName: cfg.UplinkHostIfName,
		busyPoll: cfg.BusyPoll, rxQueues: cfg.RxQueues, pollAlso: new(atomic.Pointer[func() int]), log: cfg.Logger}), nil
}

// SetBusyPollAlso makes f the other event source of every link opened
// from now on (afpacket.Config.BusyPollAlso): serve passes the proxy
// engine's PollHost, so that a link busy polling for a relay's next frame
// from the pod also catches the host socket's answer. Call it before
// the first attachment; a kernel other than the real one ignores it.
func (a *StackAttacher) SetBusyPollAlso(f func() int) {
	if k, ok := a.k.(kernelOps); ok && f != nil {
		k.pollAlso.Store(&f)
	}
}

// newStackAttacher builds the attacher over a kernel; cfg has its
// defaults filled.
func newStackAttacher(cfg StackConfig, k kernel) *StackAttacher {
	if !cfg.UplinkSubnet6.IsValid() {
		cfg.UplinkSubnet6 = DefaultUplinkSubnet6
	}
	hostAddr, stkAddr, _ := UplinkAddrs(cfg.UplinkSubnet)
	hostAddr6, stkAddr6, _ := UplinkAddrs6(cfg.UplinkSubnet6)
	// Every pod holds a static neighbour per family: the table's bound
	// grows with MaxAttachments, leaving Linux's default room for learned
	// entries.
	opts := append([]netstack.Option{netstack.WithNeighConfig(neigh.Config{MaxEntries: 2*MaxAttachments + 1024})}, cfg.Options...)
	opts = append(opts, netstack.WithForwarding(true), netstack.WithForwarding6(true), netstack.WithRPFilter(true))
	a := &StackAttacher{cfg: cfg, hostAddr: hostAddr, stkAddr: stkAddr, hostAddr6: hostAddr6, stkAddr6: stkAddr6,
		s: netstack.New(opts...), k: k,
		log: cfg.Logger, pods: map[string]podLink{}, ranges: map[netip.Prefix]int{}}
	a.macs.Store(&map[int]header.MAC{})
	a.proxyNICs.Store(&map[int]proxyPod{})
	a.podAddrs.Store(&map[netip.Addr]struct{}{})
	// Proxy mode needs conntrack: the divert rule matches new flows, and
	// the flows' later packets carry the divert mark from their conntrack
	// entry. Route mode pays a conntrack lookup per packet for it; the
	// ruleset stays empty (policy ACCEPT) unless `serve --rules` loads one.
	a.nf = a.s.EnableNetfilter(netfilter.Config{Logger: cfg.Logger, Conntrack: conntrack.Config{Max: cfg.ConntrackMax}})
	// Both families' PREROUTING: the source-MAC check and the divert rule
	// hold a dual-stack pod's IPv6 as they hold its IPv4.
	for _, hooks := range []*netfilter.Hooks{a.s.Hooks(), a.s.Hooks6()} {
		hooks.Register(netfilter.Ops{Hook: netfilter.PreRouting, Priority: netfilter.PriRaw, Name: "pod-src-mac", Fn: a.checkSrcMAC})
		hooks.Register(netfilter.Ops{Hook: netfilter.PreRouting, Priority: netfilter.PriMangle, Name: "proxy-divert", Fn: a.proxyDivert})
	}
	return a
}

// Stack is the stack the attacher drives.
func (a *StackAttacher) Stack() *netstack.Stack { return a.s }

// Netfilter is the stack's rule engine (enabled at construction): `serve
// --rules` loads its ruleset here.
func (a *StackAttacher) Netfilter() *netfilter.Netfilter { return a.nf }

// checkSrcMAC drops a frame from a pod link whose Ethernet source is not
// the pod's MAC: the pod may not impersonate another host on its link
// (the IP source is checked by strict rp_filter, RFC 3704 §2.2).
func (a *StackAttacher) checkSrcMAC(skb *buf.SKB, st netfilter.State) netfilter.Verdict {
	want, ok := (*a.macs.Load())[st.In]
	if !ok {
		return netfilter.Accept()
	}
	eth := skb.MACHeader()
	if len(eth) < header.EthernetMinSize || header.Ethernet(eth).Src() != want {
		a.spoofDrops.Add(1)
		return netfilter.Drop(DropPodSrcMAC)
	}
	return netfilter.Accept()
}

func (a *StackAttacher) setMAC(nic int, mac header.MAC, on bool) {
	cowSet(&a.macs, nic, mac, on)
}

// Attach makes the far end a NIC owning the gateway (/32), with a /32
// route and a static neighbour for the pod, proxy ARP for every address
// but the pod's, strict rp_filter and the source-MAC check; the first
// attach sets up the uplink, the first pod of a range installs the host
// route for it (in both modes: the host reaches pods through the uplink).
// A proxy-mode pod's NIC joins the divert rule's table with its routed
// ranges, which the stack forwards through the uplink by its default
// route.
//
// A dual-stack pod (at.IP6 set) gets the same in IPv6: the NIC owns
// Gateway6/128 and, with it, its link-local address fe80::/64 + EUI-64
// of the far end's MAC (netstack's addAddress6: the gateway's link-local
// on every pod link, what NDP answers come from); a /128 route and a
// static neighbour for the pod; proxy NDP for every target but the pod's
// own addresses (RFC 4861 §7.2.8: the stack is the pod's router for the
// whole range, as with ARP); rp_filter strict for IPv6 too (RFC 3704
// §2.2: a pod sources only its own address); no Router Advertisements
// (the routes come from CNI; neigh's RAs stay off) and never a Redirect
// (the stack sends none, neigh/ndisc.go). The first dual-stack pod brings
// IPv6 up on the uplink (ensureUplink6Locked) and each IPv6 range gets
// its host route over it like an IPv4 one.
func (a *StackAttacher) Attach(at *api.Attachment) (err error) {
	podMAC, err := parseMAC(at.PodMAC)
	if err != nil {
		return err
	}
	if at.Range.Overlaps(a.cfg.UplinkSubnet) {
		return fmt.Errorf("pod range %v overlaps the uplink subnet %v: the host could not route it; use another IPAM range or --uplink-subnet", at.Range, a.cfg.UplinkSubnet)
	}
	dual := at.IP6.IsValid()
	if dual && at.Range6.Overlaps(a.cfg.UplinkSubnet6) {
		return fmt.Errorf("pod range %v overlaps the uplink subnet %v: the host could not route it; use another IPAM range or --uplink-subnet6", at.Range6, a.cfg.UplinkSubnet6)
	}
	if dual && at.MTU < api.MinMTU6 {
		return fmt.Errorf("pod MTU %d: a dual-stack link needs at least %d (RFC 8200 §5)", at.MTU, api.MinMTU6)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.pods[at.ID]; ok {
		return fmt.Errorf("%s is already a NIC of the stack", at.ID)
	}
	for _, p := range []netip.Addr{at.IP.Addr(), at.IP6.Addr()} {
		if _, ok := (*a.podAddrs.Load())[p]; ok && p.IsValid() {
			return fmt.Errorf("pod address %v is already attached to the stack", p)
		}
	}
	// The local table (route.MaxLocal) holds one entry per address per
	// NIC: bound the pods by it, never let an address silently not be
	// added.
	if need := localsPerPod(dual); a.locals+need+uplinkLocals > route.MaxLocal {
		return fmt.Errorf("the stack's local address table is full (%d of %d entries; a pod takes 1, a dual-stack pod %d)", a.locals+uplinkLocals, route.MaxLocal, localsPerPod(true))
	}
	if err := a.ensureUplinkLocked(); err != nil {
		return err
	}
	if dual {
		if err := a.ensureUplink6Locked(); err != nil {
			return err
		}
	}
	ep, mac, err := a.k.OpenLink(at.HostIfName)
	if err != nil {
		return err
	}
	nic, err := a.s.AddNIC(ep, netstack.NICConfig{Name: at.HostIfName, MAC: mac, MTU: at.MTU})
	if err != nil {
		ep.Close()
		return fmt.Errorf("add NIC %s: %w", at.HostIfName, err)
	}
	id := nic.ID()
	defer func() {
		if err != nil {
			a.setMAC(id, header.MAC{}, false)
			a.setProxyPod(id, proxyPod{}, false)
			a.s.RemoveNIC(id)
		}
	}()
	pod := at.IP.Addr()
	if err := a.s.AddAddress(id, netip.PrefixFrom(at.Gateway, 32)); err != nil {
		return fmt.Errorf("gateway %v on %s: %w", at.Gateway, at.HostIfName, err)
	}
	if err := a.s.AddRoute(route.Route{Dst: netip.PrefixFrom(pod, 32), NIC: id, Src: at.Gateway, Type: route.Unicast}); err != nil {
		return fmt.Errorf("route %v/32 via %s: %w", pod, at.HostIfName, err)
	}
	if err := a.s.AddStaticNeighbor(id, pod, podMAC); err != nil {
		return fmt.Errorf("neighbour %v %v: %w", pod, podMAC, err)
	}
	var pod6 netip.Addr
	if dual {
		pod6 = at.IP6.Addr()
		if err := a.s.AddAddress(id, netip.PrefixFrom(at.Gateway6, 128)); err != nil {
			return fmt.Errorf("gateway %v on %s: %w", at.Gateway6, at.HostIfName, err)
		}
		if err := a.s.AddRoute(route.Route{Dst: netip.PrefixFrom(pod6, 128), NIC: id, Src: at.Gateway6, Type: route.Unicast}); err != nil {
			return fmt.Errorf("route %v/128 via %s: %w", pod6, at.HostIfName, err)
		}
		if err := a.s.AddStaticNeighbor(id, pod6, podMAC); err != nil {
			return fmt.Errorf("neighbour %v %v: %w", pod6, podMAC, err)
		}
		if at.RouterAdvert {
			// RFC 4861 §6.2: the gateway's link-local address as the
			// pod's default router, the link MTU (§4.6.4) and the
			// gateway as DNS server (RFC 8106); no prefix: the pod's
			// address comes from IPAM.
			ra := &neigh.RouterAdvertConfig{LinkMTU: uint32(at.MTU), RDNSS: []netip.Addr{at.Gateway6}}
			if err := a.s.SetRouterAdvert(id, ra); err != nil {
				return fmt.Errorf("router advertisements on %s: %w", at.HostIfName, err)
			}
		}
	}
	// One policy for ARP and NDP: every target but the pod's own
	// addresses (an IPv4-only pod's pod6 is the zero Addr, never a target).
	a.s.SetProxyARP(id, func(target netip.Addr) bool { return target != pod && target != pod6 })
	a.s.SetRPFilter(id, true) // both families
	a.setMAC(id, podMAC, true)
	if at.Mode != api.ModeRoute {
		a.setProxyPod(id, proxyPod{routed: append([]netip.Prefix(nil), at.RoutedRanges...)}, true)
	}
	if err := a.addRangeLocked(at.Range); err != nil {
		return err
	}
	if dual {
		if err := a.addRangeLocked(at.Range6); err != nil {
			a.delRangeLocked(at.Range) // best effort: its error is the host route's, already reported
			return err
		}
		a.setPodAddr(pod6, true)
	}
	a.setPodAddr(pod, true)
	a.pods[at.ID] = podLink{nic: id, rng: at.Range, pod: pod, rng6: at.Range6, pod6: pod6}
	a.locals += localsPerPod(dual)
	at.NIC = id
	at.StackMAC = nic.MAC().String()
	return nil
}

// Detach removes the pod's NIC (its routes, local address and neighbour
// go with it) and the host route of its range when it was the last pod.
func (a *StackAttacher) Detach(at *api.Attachment) error {
	release, err := a.Unplug(at)
	if release != nil {
		err = errors.Join(err, release())
	}
	return err
}

// Unplug is Detach but for the NIC's endpoint: the pod leaves the stack
// (NIC, addresses, routes, neighbour, the host route of its range when it
// was the last pod there) and release, when not nil, closes the NIC's
// sockets and waits for its goroutines. Closing an AF_PACKET socket waits
// for an RCU grace period in the kernel (tens of milliseconds on a busy
// node): the daemon runs release after letting go of its lock, so that
// pods deleted together do not wait for each other's.
func (a *StackAttacher) Unplug(at *api.Attachment) (release func() error, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pods[at.ID]
	if !ok {
		return nil, nil
	}
	a.setMAC(p.nic, header.MAC{}, false)
	a.setProxyPod(p.nic, proxyPod{}, false)
	a.setPodAddr(p.pod, false)
	if p.pod6.IsValid() {
		a.setPodAddr(p.pod6, false)
	}
	release, err = a.s.DetachNIC(p.nic)
	if err != nil && !errors.Is(err, netstack.ErrNoNIC) {
		return nil, err
	}
	delete(a.pods, at.ID)
	a.locals -= localsPerPod(p.pod6.IsValid())
	err = a.delRangeLocked(p.rng)
	if p.rng6.IsValid() {
		err = errors.Join(err, a.delRangeLocked(p.rng6))
	}
	return release, err
}

// RemoveLinks deletes the pod's veth pair.
func (a *StackAttacher) RemoveLinks(at *api.Attachment) error {
	return veth.Teardown(at.PodNetNS, at.IfName, at.HostIfName, a.cfg.StackNetNS)
}

// Presence looks up the pod netns and far ends of recs.
func (a *StackAttacher) Presence(recs []api.Attachment) Presence {
	p := Presence{NetNS: map[string]bool{}, Links: map[string]bool{}}
	for _, r := range recs {
		if r.PodNetNS != "" {
			p.NetNS[r.PodNetNS] = ns.IsNSorErr(r.PodNetNS) == nil
		}
		if _, err := veth.LookupFarEnd(a.cfg.StackNetNS, r.HostIfName); err == nil {
			p.Links[r.HostIfName] = true
		}
	}
	return p
}

// Reconcile removes host routes over the uplink that no attached pod's
// range needs (left by pods removed while the daemon was down).
func (a *StackAttacher) Reconcile() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(a.cfg.UplinkHostIfName)
	if err != nil {
		return nil // no uplink: no routes over it
	}
	rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Protocol: hostRouteProtocol},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		p, ok := ipNetPrefix(r.Dst)
		if ok && a.ranges[p] > 0 {
			continue
		}
		if err := h.RouteDel(&r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ensureUplinkLocked creates (or reuses) the uplink pair, makes its stack
// end a NIC with the stack's address and the default route via the host
// end. Neighbours on it are resolved by ARP.
func (a *StackAttacher) ensureUplinkLocked() (err error) {
	if a.uplink != nil {
		return nil
	}
	hostIndex, err := a.k.UplinkSetup(a.hostAddr)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	ep, mac, err := a.k.OpenLink(UplinkStackIfName)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	nic, err := a.s.AddNIC(ep, netstack.NICConfig{Name: UplinkStackIfName, MAC: mac})
	if err != nil {
		ep.Close()
		return fmt.Errorf("uplink: add NIC: %w", err)
	}
	id := nic.ID()
	defer func() {
		if err != nil {
			a.nf.SetReplyTo(id, false)
			a.s.RemoveNIC(id)
		}
	}()
	if err := a.s.AddAddress(id, a.stkAddr); err != nil {
		return fmt.Errorf("uplink: address %v: %w", a.stkAddr, err)
	}
	if err := a.s.AddRoute(route.Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: a.hostAddr.Addr(), NIC: id, Type: route.Unicast}); err != nil {
		return fmt.Errorf("uplink: default route via %v: %w", a.hostAddr.Addr(), err)
	}
	// Replies to the host come from anywhere the host routes to us, and
	// so may the host's DNAT of a pod's own packet (a Service whose
	// backend is a pod of this stack): a pod source is accepted here. No
	// pod can forge one: strict rp_filter and the source-MAC check hold
	// every pod to its own address, so a packet from the uplink with a
	// pod's source was put there by the host kernel.
	a.s.SetRPFilter(id, false)
	// The replies of flows the host sends in go back to the host (the
	// uplink's default route), whatever their destination: the host's
	// conntrack must see both directions to undo its DNAT (netfilter's
	// reply-to; see docs/kubernetes.md, "How traffic flows").
	if err := a.nf.SetReplyTo(id, true); err != nil {
		return fmt.Errorf("uplink: reply-to: %w", err)
	}
	a.uplink = &uplinkState{Uplink: api.Uplink{HostIfName: a.cfg.UplinkHostIfName, HostAddr: a.hostAddr, StackAddr: a.stkAddr, NIC: id},
		hostIndex: hostIndex}
	a.log.Info("uplink up", "host", a.cfg.UplinkHostIfName, "hostAddr", a.hostAddr, "stackAddr", a.stkAddr)
	return nil
}

// ensureUplink6Locked brings IPv6 up on the uplink, once, for the first
// dual-stack pod (an IPv4-only node never touches the host's IPv6): the
// host end gets hostAddr6 (no DAD: the stack is the link's only other
// node), the stack's uplink NIC stkAddr6 (and with it a link-local
// address) and the IPv6 default route via the host end. The host's
// neighbour entry for the stack is resolved by NDP (the stack answers NS
// for its own address).
func (a *StackAttacher) ensureUplink6Locked() (err error) {
	if a.uplink.v6 {
		return nil
	}
	if err := a.k.UplinkSetup6(a.hostAddr6); err != nil {
		return fmt.Errorf("uplink IPv6: %w", err)
	}
	id := a.uplink.NIC
	if err := a.s.AddAddress(id, a.stkAddr6); err != nil {
		return fmt.Errorf("uplink: address %v: %w", a.stkAddr6, err)
	}
	defer func() {
		if err != nil {
			a.s.RemoveAddress(id, a.stkAddr6)
		}
	}()
	if err := a.s.AddRoute(route.Route{Dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), Gateway: a.hostAddr6.Addr(), NIC: id, Type: route.Unicast}); err != nil {
		return fmt.Errorf("uplink: IPv6 default route via %v: %w", a.hostAddr6.Addr(), err)
	}
	a.uplink.v6 = true
	a.uplink.HostAddr6, a.uplink.StackAddr6 = a.hostAddr6, a.stkAddr6
	a.log.Info("uplink IPv6 up", "host", a.cfg.UplinkHostIfName, "hostAddr6", a.hostAddr6, "stackAddr6", a.stkAddr6)
	return nil
}

// addRangeLocked counts a pod in its range and installs `ip route replace
// RANGE via STACK dev UPLINK proto 0x75` in the host netns for the first.
func (a *StackAttacher) addRangeLocked(p netip.Prefix) error {
	if a.ranges[p] == 0 {
		if err := a.hostRoute(p, true); err != nil {
			return fmt.Errorf("host route %v over the uplink: %w", p, err)
		}
	}
	a.ranges[p]++
	return nil
}

func (a *StackAttacher) delRangeLocked(p netip.Prefix) error {
	if a.ranges[p] == 0 {
		return nil
	}
	a.ranges[p]--
	if a.ranges[p] > 0 {
		return nil
	}
	delete(a.ranges, p)
	if err := a.hostRoute(p, false); err != nil {
		return fmt.Errorf("remove host route %v: %w", p, err)
	}
	return nil
}

func (a *StackAttacher) hostRoute(p netip.Prefix, add bool) error {
	via := a.stkAddr.Addr()
	if p.Addr().Is6() {
		via = a.stkAddr6.Addr()
	}
	return a.k.HostRoute(p, via, a.uplink.hostIndex, add)
}

// Status fills the stack counters and the uplink.
func (a *StackAttacher) Status(st *api.Status) {
	s := a.s.Stats()
	st.Stack = api.StackStats{Counters: s.Counters, Drops: s.Drops}
	st.Stack.Counters["PodSrcMACDrops"] = a.spoofDrops.Load()
	st.Stack.Counters["ProxyDiverted"] = a.diverted.Load()
	st.Stack.Counters["ProxyProtoDrops"] = a.protoDrops.Load()
	st.Stack.Counters["ProxyInvalidDrops"] = a.invalidDrops.Load()
	for _, n := range s.NICs {
		st.Stack.NICs = append(st.Stack.NICs, nicStats(n.ID, n.Name, n.Stats))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.uplink != nil {
		u := a.uplink.Uplink
		for p := range a.ranges {
			u.Routes = append(u.Routes, p)
		}
		sort.Slice(u.Routes, func(i, j int) bool { return u.Routes[i].String() < u.Routes[j].String() })
		st.Uplink = &u
	}
}

// Close stops the stack; links, records and host routes stay for the
// next daemon.
func (a *StackAttacher) Close() error { return a.s.Close() }

func parseMAC(s string) (header.MAC, error) {
	var m header.MAC
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return m, fmt.Errorf("pod MAC %q: not an Ethernet MAC", s)
	}
	copy(m[:], hw)
	if m.IsMulticast() || m == (header.MAC{}) {
		return m, fmt.Errorf("pod MAC %v: not a unicast MAC", m)
	}
	return m, nil
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
