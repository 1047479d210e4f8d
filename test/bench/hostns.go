package main

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// hostNet is the benchmark's "host": a netns of the harness that plays the
// node every variant runs on. It has a primary interface (hostIfName, a
// veth whose peer stays in it without an address, as the e2e HostLink:
// this kernel has no dummy driver) holding the host's primary address and
// the default route, as a node's eth0 does. Everything a variant puts on
// the host side runs in it: ptp's host veths, our daemon (its uplink and
// host routes), pasta, slirp4netns, the gVisor and floor relays, and the
// servers the pods talk to, which listen on the primary address. A pod
// dials that address as a new user would dial the node's IP — no loopback
// mapping, no gateway alias — and nothing of the benchmark touches the real
// host netns's addresses, routes or sysctls.
//
// It is tuned like a busy node, for every variant alike: tcp_tw_reuse=1
// and ip_local_port_range 1024-65000, so the relays' host sockets (which
// close first, so keep TIME_WAIT) do not run out of ports over the
// connections/s runs and the 10 000 idle connections.
type hostNet struct {
	ns      ns.NetNS
	ifName  string
	primary netip.Prefix // the host's primary address, 192.168.X.10/24
	// primary6 is the host's primary IPv6 address (a random ULA ::10/64)
	// when -families has 6 (addIPv6, ipv6.go); invalid otherwise.
	primary6 netip.Prefix
}

// hostIfName is the primary interface's name inside the host netns (its
// own netns: no clash with anyone's).
const hostIfName = "eth0"

// newHostNet makes the host netns and registers its removal (its links,
// addresses and routes go with it).
func (h *harness) newHostNet() (*hostNet, error) {
	n := cnitest.NewPodNS(h.tb) // "cnitest-bench-<hex>", lo up, removed on undo
	b := make([]byte, 1)
	rand.Read(b)
	hn := &hostNet{ns: n, ifName: hostIfName,
		primary: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, 100 + b[0]%100, 10}), 24)}
	err := do(n, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIfName}, PeerName: hostIfName + "peer"}); err != nil {
			return fmt.Errorf("primary link: %w", err)
		}
		l, err := netlink.LinkByName(hostIfName)
		if err != nil {
			return err
		}
		p, err := netlink.LinkByName(hostIfName + "peer")
		if err != nil {
			return err
		}
		a := hn.primary
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), 32)}}); err != nil {
			return fmt.Errorf("primary address %v: %w", a, err)
		}
		for _, x := range []netlink.Link{l, p} {
			if err := netlink.LinkSetUp(x); err != nil {
				return err
			}
		}
		gw := a.Masked().Addr().Next() // 192.168.X.1: a router nobody answers for
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %v: %w", gw, err)
		}
		for k, v := range map[string]string{
			"net/ipv4/tcp_tw_reuse":        "1",
			"net/ipv4/ip_local_port_range": "1024 65000",
		} {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s: %w", k, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("host netns %s: %w", n.Path(), err)
	}
	return hn, nil
}

// path is the host netns's bind mount (for nsenter --net=).
func (hn *hostNet) path() string { return hn.ns.Path() }

// addr is the primary address.
func (hn *hostNet) addr() netip.Addr { return hn.primary.Addr() }
