// Package veth owns the veth pairs that attach pods to the userspace stack
// and the network namespaces they live in: the pod end, named CNI_IFNAME in
// the pod's netns and configured with its MTU, MAC, addresses and routes;
// the far end, with a stable name derived from the container ID and
// interface name, in the persistent stack netns "cni-userstack" with no
// kernel addresses and IPv6 off; the route-mode uplink pair between the
// host netns and the stack netns; and, for the daemon, the ingress drop
// that keeps the stack netns's kernel from parsing the frames of a link
// the stack owns (DropKernelInput, kernelinput.go: a clsact qdisc and a
// cls_bpf program, run after the packet taps).
//
// Not owned here: addressing policy (which addresses and routes a pod gets:
// plugin), the stack that drives the far ends (the daemon, over AF_PACKET).
//
// Kernel counterparts: drivers/net/veth.c (veth_newlink creates both ends,
// the peer directly in the netns named by IFLA_NET_NS_FD), `ip netns add`
// for the persistent namespace. Every netlink request goes through a
// netlink.Handle whose socket was opened in the target namespace, so no
// goroutine's thread changes namespace for it; only /proc/sys writes, which
// resolve against the calling thread's netns, enter the stack netns (with
// ns.WithNetNSPath, which locks and restores the thread).
//
// Offloads (TSO, GSO, checksum) are left as the veth driver sets them: on.
package veth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrExists is wrapped by Setup's error when the pod netns already has an
// interface named IfName, or the stack netns already has HostIfName: a
// duplicate ADD. Nothing is changed in that case.
var ErrExists = errors.New("interface already exists")

// ErrNotFound is wrapped by Inspect's error when the interface is missing.
var ErrNotFound = errors.New("interface not found")

// maxIfName is IFNAMSIZ-1: the longest interface name the kernel accepts.
const maxIfName = unix.IFNAMSIZ - 1

// DefaultMTU is the MTU used when PodConfig.MTU is 0.
const DefaultMTU = 1500

// HostIfName is the stable host-side name for (containerID, ifName): "us"
// followed by the first 13 lowercase hex digits of
// sha256(containerID + "/" + ifName), 15 bytes (IFNAMSIZ-1). Container IDs
// hold no '/', so distinct pairs give distinct inputs.
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostIfNamePrefix + hex.EncodeToString(sum[:7])[:13]
}

// Route is a pod route: Dst via GW, or on-link when GW is the zero Addr.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// PodConfig says how to build a pod's veth pair.
type PodConfig struct {
	PodNetNS   string           // path of the pod's netns (CNI_NETNS)
	IfName     string           // CNI_IFNAME
	HostIfName string           // name of the far end (HostIfName(...))
	StackNetNS string           // name of the stack netns; "" = DefaultStackNetNS
	MTU        int              // 0 = DefaultMTU
	MAC        net.HardwareAddr // optional pod-side MAC
	IPs        []netip.Prefix   // pod addresses with their prefix length
	Routes     []Route          // pod routes (default route via the gateway, etc.)
}

// Pair describes a veth pair. For a pod pair the Pod* fields are the end in
// the pod netns and the Host* fields the far end in the stack netns. For the
// uplink (UplinkSetup) the Pod* fields are the end in the host netns
// (PodNetNS "") and the Host* fields the end in the stack netns: in both,
// Host* is the link the stack drives.
type Pair struct {
	PodIfName      string
	PodIfIndex     int
	PodMAC         net.HardwareAddr
	PodNetNS       string
	HostIfName     string
	HostIfIndex    int
	HostMAC        net.HardwareAddr
	StackNetNSPath string
}

// PodState is the pod end as the kernel reports it, for CNI CHECK.
type PodState struct {
	IfName      string
	IfIndex     int
	Kind        string // "veth" for ours
	MAC         net.HardwareAddr
	MTU         int
	Up          bool
	PeerIfIndex int            // ifindex of the far end in its own netns
	IPs         []netip.Prefix // addresses of global scope (IPv6 link-local left out)
	Routes      []Route        // main-table routes out of this interface
}

// Error is a failed step of Setup or UplinkSetup. Everything the call
// created has been removed when it is returned.
type Error struct {
	Step string // e.g. "create veth", "add address 10.1.0.5/24"
	Err  error
}

func (e *Error) Error() string { return "veth: " + e.Step + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func stepErr(step string, err error) error { return &Error{Step: step, Err: err} }

// checkIfName rejects names the kernel would (dev_valid_name).
func checkIfName(what, name string) error {
	if name == "" || len(name) > maxIfName || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n\x00") {
		return fmt.Errorf("invalid %s %q (1..%d bytes, no '/', ':' or spaces)", what, name, maxIfName)
	}
	return nil
}

func (cfg *PodConfig) validate() error {
	if cfg.PodNetNS == "" {
		return errors.New("pod netns path is empty")
	}
	if err := checkIfName("interface name", cfg.IfName); err != nil {
		return err
	}
	if err := checkIfName("host interface name", cfg.HostIfName); err != nil {
		return err
	}
	if err := checkMTU(cfg.MTU); err != nil {
		return err
	}
	if cfg.MAC != nil && (len(cfg.MAC) != 6 || cfg.MAC[0]&1 != 0 || isZeroMAC(cfg.MAC)) {
		return fmt.Errorf("invalid pod MAC %s (need a 6-byte unicast address)", cfg.MAC)
	}
	for _, p := range cfg.IPs {
		if !p.IsValid() || p.Addr().Zone() != "" {
			return fmt.Errorf("invalid pod address %v", p)
		}
	}
	for _, r := range cfg.Routes {
		if !r.Dst.IsValid() {
			return fmt.Errorf("invalid route destination %v", r.Dst)
		}
		if r.GW.IsValid() && r.GW.Is4() != r.Dst.Addr().Is4() {
			return fmt.Errorf("route %v via %v mixes address families", r.Dst, r.GW)
		}
	}
	return nil
}

// checkMTU accepts 0 (default) and 68..65535 (RFC 791 minimum, the veth
// driver's maximum).
func checkMTU(mtu int) error {
	if mtu != 0 && (mtu < 68 || mtu > 65535) {
		return fmt.Errorf("invalid MTU %d (68..65535)", mtu)
	}
	return nil
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// newVeth returns the netlink request for a veth whose peer is created
// directly in the netns open at peerFD (veth_newlink honours
// IFLA_NET_NS_FD in the peer's attributes): the far end never appears in
// the namespace of the near end, so its name cannot collide there.
func newVeth(name string, mtu int, mac net.HardwareAddr, peer string, peerFD int) *netlink.Veth {
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.MTU = mtu
	la.HardwareAddr = mac
	return &netlink.Veth{
		LinkAttrs:     la,
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(peerFD),
		PeerMTU:       uint32(mtu),
		PeerTxQLen:    -1,
	}
}

// Setup creates the pair in the pod netns with the far end created directly
// in the stack netns (made when missing), configures the pod end (MTU, MAC,
// addresses, routes, up) and the far end (MTU, IPv6 off, arp_ignore=8, no
// kernel addresses, up).
//
// The pod end's routes are exactly cfg.Routes: its addresses are added
// without their prefix route (IFA_F_NOPREFIXROUTE), as the ptp plugin
// deletes it, so nothing is on-link that the list does not say is (the
// ptp shape: the gateway as an on-link host route, everything else via
// the gateway). A route whose gateway no earlier on-link route of the list
// covers gets an on-link host route to that gateway first.
//
// An existing IfName in the pod netns or HostIfName in the stack netns
// fails with an error wrapping ErrExists and changes nothing. Any other
// failure removes the pair (deleting one end deletes both) and returns an
// *Error naming the step.
func Setup(cfg PodConfig) (_ *Pair, err error) {
	if err := cfg.validate(); err != nil {
		return nil, stepErr("check config", err)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	stackPath, err := EnsureStackNetNS(stackName(cfg.StackNetNS))
	if err != nil {
		return nil, stepErr("stack netns", err)
	}
	pod, err := openNS(cfg.PodNetNS)
	if err != nil {
		return nil, stepErr("open pod netns", err)
	}
	defer pod.close()
	stack, err := openNS(stackPath)
	if err != nil {
		return nil, stepErr("open stack netns", err)
	}
	defer stack.close()

	if err := checkFree(pod, cfg.IfName, stack, cfg.HostIfName); err != nil {
		return nil, stepErr("check names", err)
	}
	v := newVeth(cfg.IfName, mtu, cfg.MAC, cfg.HostIfName, stack.fd)
	if err := pod.h.LinkAdd(v); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// Lost a race with a concurrent ADD: report which name.
			if ferr := checkFree(pod, cfg.IfName, stack, cfg.HostIfName); ferr != nil {
				return nil, stepErr("create veth", ferr)
			}
			return nil, stepErr("create veth", fmt.Errorf("%w: %v", ErrExists, err))
		}
		return nil, stepErr("create veth", err)
	}
	defer func() {
		if err != nil {
			rollback(pod, cfg.IfName, stack, cfg.HostIfName)
		}
	}()

	podLink, err := pod.h.LinkByName(cfg.IfName)
	if err != nil {
		return nil, stepErr("find pod end", err)
	}
	hostLink, err := stack.h.LinkByName(cfg.HostIfName)
	if err != nil {
		return nil, stepErr("find far end", err)
	}

	// Far end: IPv6 off and arp_ignore before it goes up, so the kernel
	// never sends or answers anything on it.
	if err := farEndSysctls(stackPath, cfg.HostIfName); err != nil {
		return nil, stepErr("far end sysctls", err)
	}
	if err := stack.h.LinkSetUp(hostLink); err != nil {
		return nil, stepErr("far end up", err)
	}

	for _, p := range cfg.IPs {
		// No prefix route: the routes below say what is on-link.
		a := &netlink.Addr{IPNet: prefixToIPNet(p), Flags: unix.IFA_F_NOPREFIXROUTE}
		if p.Addr().Is6() {
			a.Flags |= unix.IFA_F_NODAD // the far end never answers NS
		}
		if err := pod.h.AddrAdd(podLink, a); err != nil {
			return nil, stepErr("add address "+p.String(), err)
		}
	}
	if err := pod.h.LinkSetUp(podLink); err != nil {
		return nil, stepErr("pod end up", err)
	}
	if err := addRoutes(pod.h, podLink.Attrs().Index, cfg.Routes); err != nil {
		return nil, err
	}

	// Re-read both ends for the kernel's view (MACs, indexes).
	if podLink, err = pod.h.LinkByIndex(podLink.Attrs().Index); err != nil {
		return nil, stepErr("read pod end", err)
	}
	if hostLink, err = stack.h.LinkByIndex(hostLink.Attrs().Index); err != nil {
		return nil, stepErr("read far end", err)
	}
	return &Pair{
		PodIfName:      cfg.IfName,
		PodIfIndex:     podLink.Attrs().Index,
		PodMAC:         podLink.Attrs().HardwareAddr,
		PodNetNS:       cfg.PodNetNS,
		HostIfName:     cfg.HostIfName,
		HostIfIndex:    hostLink.Attrs().Index,
		HostMAC:        hostLink.Attrs().HardwareAddr,
		StackNetNSPath: stackPath,
	}, nil
}

// checkFree returns an error wrapping ErrExists when either name is taken.
func checkFree(pod *nsRef, ifName string, stack *nsRef, hostIfName string) error {
	if _, err := pod.h.LinkByName(ifName); err == nil {
		return fmt.Errorf("%w: %q in pod netns %s", ErrExists, ifName, pod.path)
	} else if !isNotFound(err) {
		return err
	}
	if _, err := stack.h.LinkByName(hostIfName); err == nil {
		return fmt.Errorf("%w: %q in stack netns %s (same container ID and interface name already attached)", ErrExists, hostIfName, stack.path)
	} else if !isNotFound(err) {
		return err
	}
	return nil
}

// rollback deletes a pair Setup created; either end takes the other with it.
func rollback(pod *nsRef, ifName string, stack *nsRef, hostIfName string) {
	if l, err := pod.h.LinkByName(ifName); err == nil {
		pod.h.LinkDel(l)
	}
	if l, err := stack.h.LinkByName(hostIfName); err == nil {
		stack.h.LinkDel(l)
	}
}

// addRoutes installs routes on link index idx in order, each gateway
// preceded, where no earlier on-link route of the list covers it, by an
// on-link host route to it (the pod's addresses have no prefix route to
// cover it: Setup adds them with IFA_F_NOPREFIXROUTE).
func addRoutes(h *netlink.Handle, idx int, routes []Route) error {
	var onLink []netip.Prefix
	for _, r := range routes {
		if r.GW.IsValid() && !covered(onLink, r.GW) {
			host := netip.PrefixFrom(r.GW, r.GW.BitLen())
			hr := &netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(host), Scope: netlink.SCOPE_LINK}
			if err := h.RouteReplace(hr); err != nil {
				return stepErr("add on-link route to gateway "+r.GW.String(), err)
			}
			onLink = append(onLink, host)
		}
		dst := r.Dst.Masked()
		if !r.GW.IsValid() {
			// Replace: an on-link route may repeat one added above.
			nr := &netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(dst), Scope: netlink.SCOPE_LINK}
			if err := h.RouteReplace(nr); err != nil {
				return stepErr("add on-link route "+dst.String(), err)
			}
			onLink = append(onLink, dst)
			continue
		}
		nr := &netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(dst), Gw: net.IP(r.GW.AsSlice()), Scope: netlink.SCOPE_UNIVERSE}
		if err := h.RouteAdd(nr); err != nil {
			return stepErr("add route "+r.Dst.String()+" via "+r.GW.String(), err)
		}
	}
	return nil
}

// covered reports whether one of the on-link prefixes reaches a.
func covered(onLink []netip.Prefix, a netip.Addr) bool {
	for _, p := range onLink {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Teardown deletes the pair: the far end HostIfName in the stack netns
// when present (taking the pod end with it), else the pod end IfName when
// it is a veth (its far end was moved or renamed; a non-veth is never
// ours). Idempotent: a missing netns or missing links are not errors.
func Teardown(podNetNS, ifName, hostIfName, stackNetNS string) error {
	var errs []error
	if hostIfName != "" {
		if err := delLinkIn(NetNSPath(stackName(stackNetNS)), hostIfName, false); err != nil {
			errs = append(errs, fmt.Errorf("veth: delete far end %s: %w", hostIfName, err))
		}
	}
	if podNetNS != "" && ifName != "" {
		if err := delLinkIn(podNetNS, ifName, true); err != nil {
			errs = append(errs, fmt.Errorf("veth: delete pod end %s: %w", ifName, err))
		}
	}
	return errors.Join(errs...)
}

// delLinkIn deletes the veth name in the netns at path; a missing netns or
// link is success. A non-veth by that name is left alone: silently on the
// pod side (it is not ours), with an error on the stack side (far-end names
// are ours alone, so someone else took one).
func delLinkIn(path, name string, podSide bool) error {
	r, err := openNS(path)
	if err != nil {
		if errors.Is(err, ErrNetNSNotFound) {
			return nil
		}
		return err
	}
	defer r.close()
	l, err := r.h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
	}
	if l.Type() != "veth" {
		if podSide {
			return nil
		}
		return fmt.Errorf("%q is a %s, not a veth: left alone", name, l.Type())
	}
	if err := r.h.LinkDel(l); err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

// Inspect reads the pod end for CNI CHECK. A missing interface wraps
// ErrNotFound; a missing netns wraps ErrNetNSNotFound.
func Inspect(podNetNS, ifName string) (*PodState, error) {
	r, err := openNS(podNetNS)
	if err != nil {
		return nil, fmt.Errorf("veth: inspect %s: %w", ifName, err)
	}
	defer r.close()
	l, err := r.h.LinkByName(ifName)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("veth: %w: %q in netns %s", ErrNotFound, ifName, podNetNS)
		}
		return nil, fmt.Errorf("veth: inspect %s: %w", ifName, err)
	}
	a := l.Attrs()
	st := &PodState{
		IfName:      a.Name,
		IfIndex:     a.Index,
		Kind:        l.Type(),
		MAC:         a.HardwareAddr,
		MTU:         a.MTU,
		Up:          a.RawFlags&unix.IFF_UP != 0,
		PeerIfIndex: a.ParentIndex,
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return r.h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("veth: inspect %s: addresses: %w", ifName, err)
	}
	for _, ad := range addrs {
		if ad.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if p, ok := ipNetToPrefix(ad.IPNet); ok {
			st.IPs = append(st.IPs, p)
		}
	}
	filter := &netlink.Route{LinkIndex: a.Index, Table: unix.RT_TABLE_MAIN}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return r.h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("veth: inspect %s: routes: %w", ifName, err)
	}
	for _, rt := range routes {
		var dst netip.Prefix
		if rt.Dst == nil {
			if rt.Family == unix.AF_INET6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			} else {
				dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			}
		} else if p, ok := ipNetToPrefix(rt.Dst); ok {
			dst = p
		} else {
			continue
		}
		if (dst.Addr().Is6() && dst.Addr().IsLinkLocalUnicast()) || dst.Addr().IsMulticast() {
			continue // fe80::/64 and ff00::/8 the kernel adds by itself
		}
		var gw netip.Addr
		if rt.Gw != nil {
			gw, _ = netip.AddrFromSlice(rt.Gw)
			gw = gw.Unmap()
		}
		st.Routes = append(st.Routes, Route{Dst: dst, GW: gw})
	}
	return st, nil
}

// retryDump repeats a netlink dump the kernel interrupted (NLM_F_DUMP_INTR:
// the table changed during the dump), at most 5 times.
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 5 {
			continue
		}
		return v, err
	}
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if a.BitLen() != bits {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// HostIfNamePrefix starts every name HostIfName returns.
const HostIfNamePrefix = "us"

// FarEnd is a far end found in the stack netns.
type FarEnd struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	MTU   int
	Up    bool
}

// LookupFarEnd finds the far end hostIfName in the stack netns ("" =
// DefaultStackNetNS), for a daemon re-attaching a recorded pod after a
// restart. A missing link wraps ErrNotFound, a missing netns
// ErrNetNSNotFound.
func LookupFarEnd(stackNetNS, hostIfName string) (*FarEnd, error) {
	r, err := openNS(NetNSPath(stackName(stackNetNS)))
	if err != nil {
		return nil, fmt.Errorf("veth: lookup %s: %w", hostIfName, err)
	}
	defer r.close()
	l, err := r.h.LinkByName(hostIfName)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("veth: %w: %q in the stack netns", ErrNotFound, hostIfName)
		}
		return nil, fmt.Errorf("veth: lookup %s: %w", hostIfName, err)
	}
	if l.Type() != "veth" {
		return nil, fmt.Errorf("veth: %q in the stack netns is a %s, not a veth", hostIfName, l.Type())
	}
	return farEnd(l), nil
}

// ListFarEnds lists the veths in the stack netns whose names HostIfName
// could have made (HostIfNamePrefix + 13 lowercase hex), for GC of links no
// attachment claims. A missing netns gives none and no error.
func ListFarEnds(stackNetNS string) ([]FarEnd, error) {
	r, err := openNS(NetNSPath(stackName(stackNetNS)))
	if err != nil {
		if errors.Is(err, ErrNetNSNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("veth: list far ends: %w", err)
	}
	defer r.close()
	ls, err := retryDump(r.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("veth: list far ends: %w", err)
	}
	var out []FarEnd
	for _, l := range ls {
		if l.Type() == "veth" && isHostIfName(l.Attrs().Name) {
			out = append(out, *farEnd(l))
		}
	}
	return out, nil
}

func farEnd(l netlink.Link) *FarEnd {
	a := l.Attrs()
	return &FarEnd{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU, Up: a.RawFlags&unix.IFF_UP != 0}
}

func isHostIfName(s string) bool {
	if len(s) != maxIfName || !strings.HasPrefix(s, HostIfNamePrefix) {
		return false
	}
	for _, c := range s[len(HostIfNamePrefix):] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
