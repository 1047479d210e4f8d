package veth

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// UplinkSetup creates the route-mode uplink: a veth pair between the
// current (host) netns and the stack netns (created when missing). The
// host end hostIfName gets hostAddr (e.g. 169.254.100.1/30) as its only
// IPv4 address; the stack end stackIfName gets no kernel address, IPv6
// off and arp_ignore=8, as a pod far end; both are up with the given MTU
// (0 = DefaultMTU).
//
// Idempotent: an existing pair with these names (the host end a veth whose
// peer is stackIfName in the stack netns) is reused and brought to the
// requested MTU, address and state. A veth by either name that is not such
// a pair is deleted and the pair created afresh; a non-veth by the host
// name is an error wrapping ErrExists.
//
// The returned Pair has the host end in the Pod* fields (PodNetNS "") and
// the stack end in the Host* fields.
func UplinkSetup(hostIfName, stackIfName, stackNetNS string, hostAddr netip.Prefix, mtu int) (_ *Pair, err error) {
	if err := checkIfName("uplink host interface name", hostIfName); err != nil {
		return nil, stepErr("check config", err)
	}
	if err := checkIfName("uplink stack interface name", stackIfName); err != nil {
		return nil, stepErr("check config", err)
	}
	if !hostAddr.IsValid() || !hostAddr.Addr().Is4() {
		return nil, stepErr("check config", fmt.Errorf("uplink host address %v is not an IPv4 prefix", hostAddr))
	}
	if err := checkMTU(mtu); err != nil {
		return nil, stepErr("check config", err)
	}
	if mtu == 0 {
		mtu = DefaultMTU
	}
	stackPath, err := EnsureStackNetNS(stackName(stackNetNS))
	if err != nil {
		return nil, stepErr("stack netns", err)
	}
	stack, err := openNS(stackPath)
	if err != nil {
		return nil, stepErr("open stack netns", err)
	}
	defer stack.close()
	host, err := netlink.NewHandle()
	if err != nil {
		return nil, stepErr("netlink socket", err)
	}
	defer host.Close()

	hostLink, stackLink, err := findUplink(host, hostIfName, stack, stackIfName)
	if err != nil {
		return nil, stepErr("find existing uplink", err)
	}
	created := false
	if hostLink == nil {
		v := newVeth(hostIfName, mtu, nil, stackIfName, stack.fd)
		if err := host.LinkAdd(v); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("%w: %v", ErrExists, err)
			}
			return nil, stepErr("create uplink veth", err)
		}
		created = true
		defer func() {
			if err != nil {
				if l, lerr := host.LinkByName(hostIfName); lerr == nil {
					host.LinkDel(l)
				}
			}
		}()
		if hostLink, err = host.LinkByName(hostIfName); err != nil {
			return nil, stepErr("find uplink host end", err)
		}
		if stackLink, err = stack.h.LinkByName(stackIfName); err != nil {
			return nil, stepErr("find uplink stack end", err)
		}
	}

	if err := farEndSysctls(stackPath, stackIfName); err != nil {
		return nil, stepErr("uplink stack end sysctls", err)
	}
	if !created {
		if stackLink.Attrs().MTU != mtu {
			if err := stack.h.LinkSetMTU(stackLink, mtu); err != nil {
				return nil, stepErr("uplink stack end MTU", err)
			}
		}
		if hostLink.Attrs().MTU != mtu {
			if err := host.LinkSetMTU(hostLink, mtu); err != nil {
				return nil, stepErr("uplink host end MTU", err)
			}
		}
		if err := flushAddrs(stack.h, stackLink, netip.Prefix{}); err != nil {
			return nil, stepErr("uplink stack end addresses", err)
		}
		if err := flushAddrs(host, hostLink, hostAddr); err != nil {
			return nil, stepErr("uplink host end addresses", err)
		}
	}
	if err := stack.h.LinkSetUp(stackLink); err != nil {
		return nil, stepErr("uplink stack end up", err)
	}
	if err := host.AddrReplace(hostLink, &netlink.Addr{IPNet: prefixToIPNet(hostAddr)}); err != nil {
		return nil, stepErr("uplink host address "+hostAddr.String(), err)
	}
	if err := host.LinkSetUp(hostLink); err != nil {
		return nil, stepErr("uplink host end up", err)
	}
	if hostLink, err = host.LinkByIndex(hostLink.Attrs().Index); err != nil {
		return nil, stepErr("read uplink host end", err)
	}
	if stackLink, err = stack.h.LinkByIndex(stackLink.Attrs().Index); err != nil {
		return nil, stepErr("read uplink stack end", err)
	}
	return &Pair{
		PodIfName:      hostIfName,
		PodIfIndex:     hostLink.Attrs().Index,
		PodMAC:         hostLink.Attrs().HardwareAddr,
		HostIfName:     stackIfName,
		HostIfIndex:    stackLink.Attrs().Index,
		HostMAC:        stackLink.Attrs().HardwareAddr,
		StackNetNSPath: stackPath,
	}, nil
}

// findUplink returns the existing uplink ends, or nils after removing a
// veth by either name that is not the expected pair.
func findUplink(host *netlink.Handle, hostIfName string, stack *nsRef, stackIfName string) (netlink.Link, netlink.Link, error) {
	hl, err := host.LinkByName(hostIfName)
	if err != nil && !isNotFound(err) {
		return nil, nil, err
	}
	sl, err := stack.h.LinkByName(stackIfName)
	if err != nil && !isNotFound(err) {
		return nil, nil, err
	}
	if hl != nil && hl.Type() != "veth" {
		return nil, nil, fmt.Errorf("%w: %q in the host netns is a %s, not a veth", ErrExists, hostIfName, hl.Type())
	}
	if sl != nil && sl.Type() != "veth" {
		return nil, nil, fmt.Errorf("%w: %q in the stack netns is a %s, not a veth", ErrExists, stackIfName, sl.Type())
	}
	// A veth's IFLA_LINK is its peer's ifindex in the peer's netns.
	if hl != nil && sl != nil && hl.Attrs().ParentIndex == sl.Attrs().Index &&
		sl.Attrs().ParentIndex == hl.Attrs().Index && hl.Attrs().NetNsID >= 0 {
		return hl, sl, nil
	}
	if hl != nil {
		if err := host.LinkDel(hl); err != nil && !isNotFound(err) {
			return nil, nil, fmt.Errorf("delete stale %s: %w", hostIfName, err)
		}
	}
	if sl != nil {
		if err := stack.h.LinkDel(sl); err != nil && !isNotFound(err) {
			return nil, nil, fmt.Errorf("delete stale %s: %w", stackIfName, err)
		}
	}
	return nil, nil, nil
}

// flushAddrs removes every IPv4 address of l but keep (a zero keep removes
// all).
func flushAddrs(h *netlink.Handle, l netlink.Link, keep netip.Prefix) error {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if p, ok := ipNetToPrefix(a.IPNet); ok && p == keep {
			continue
		}
		if err := h.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return err
		}
	}
	return nil
}

// UplinkTeardown deletes the uplink pair by its host end in the current
// netns. Idempotent: a missing link is success; a non-veth by that name is
// an error and left alone.
func UplinkTeardown(hostIfName string) error {
	host, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("veth: netlink socket: %w", err)
	}
	defer host.Close()
	l, err := host.LinkByName(hostIfName)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("veth: uplink teardown %s: %w", hostIfName, err)
	}
	if l.Type() != "veth" {
		return fmt.Errorf("veth: uplink teardown: %q is a %s, not a veth: left alone", hostIfName, l.Type())
	}
	if err := host.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("veth: uplink teardown %s: %w", hostIfName, err)
	}
	return nil
}

// UplinkSetup6 turns IPv6 on at the uplink's host end hostIfName (in the
// current netns; UplinkSetup made it) and gives it hostAddr as its only
// global IPv6 address, without duplicate address detection (the stack is
// the link's only other node and claims only its own address) and with
// accept_ra=0 (the host's routes to pods are the daemon's, never learnt
// from the link). A kernel or host with IPv6 disabled fails here, naming
// the step. Idempotent.
func UplinkSetup6(hostIfName string, hostAddr netip.Prefix) error {
	if !hostAddr.IsValid() || !hostAddr.Addr().Is6() || hostAddr.Addr().Is4In6() {
		return stepErr("check config", fmt.Errorf("uplink host address %v is not an IPv6 prefix", hostAddr))
	}
	host, err := netlink.NewHandle()
	if err != nil {
		return stepErr("netlink socket", err)
	}
	defer host.Close()
	l, err := host.LinkByName(hostIfName)
	if err != nil {
		return stepErr("find uplink host end "+hostIfName, err)
	}
	if l.Type() != "veth" {
		return stepErr("find uplink host end", fmt.Errorf("%q is a %s, not the uplink veth", hostIfName, l.Type()))
	}
	for _, kv := range [][2]string{{"accept_ra", "0"}, {"disable_ipv6", "0"}} {
		if err := writeSysctl("net/ipv6/conf/"+hostIfName+"/"+kv[0], kv[1]); err != nil {
			return stepErr("uplink host end IPv6 sysctl "+kv[0], err)
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return host.AddrList(l, netlink.FAMILY_V6) })
	if err != nil {
		return stepErr("uplink host end IPv6 addresses", err)
	}
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue // the kernel's link-local stays
		}
		if p, ok := ipNetToPrefix(a.IPNet); ok && p == hostAddr {
			continue
		}
		if err := host.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return stepErr("uplink host end: remove stale "+a.IPNet.String(), err)
		}
	}
	if err := host.AddrReplace(l, &netlink.Addr{IPNet: prefixToIPNet(hostAddr), Flags: unix.IFA_F_NODAD}); err != nil {
		return stepErr("uplink host address "+hostAddr.String(), err)
	}
	return nil
}
