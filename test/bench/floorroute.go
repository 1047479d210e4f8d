package main

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/cni-userstack/cni-userstack/test/e2e/cnitest"
	"github.com/vishvananda/netlink"
)

// attachFloorRoute: route mode's topology with the floor forwarder
// (test/bench/floorpacket) where our stack would be. The pod's eth0 is a
// veth whose other end sits in a silent netns of its own (newGVisorLink:
// no address, no IPv6); an uplink veth joins that netns to the host netns,
// its host end holding 169.254.250.X+1/30 and the route to the pod's /24
// via X+2, as our daemon's uplink holds the route to its pod range. The
// forwarder reads both stack ends with AF_PACKET and forwards between
// them. Neighbours are static (the forwarder answers no ARP): the pod's
// gateway and the uplink's far address map to the MACs of the stack ends.
// The pod dials the host's primary address, as route mode's pod does.
// flags are the forwarder's extra flags (-floor-route-flags, or
// -floor-route-b-flags for the floor-route-b variant, an A/B of the
// forwarder in one run).
func (h *harness) attachFloorRoute(flags []string) (*attached, error) {
	if h.tools.packetErr != nil {
		return nil, fmt.Errorf("building the floor forwarder: %w", h.tools.packetErr)
	}
	pod := cnitest.NewPodNS(h.tb)
	g, err := h.newGVisorLink(pod)
	if err != nil {
		return nil, err
	}
	r := make([]byte, 1)
	rand.Read(r)
	hostEnd := netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 250, r[0]&^3 + 1}), 30)
	stackAddr := hostEnd.Addr().Next()
	upStack, upHost := "fu"+randHex(8), "fh"+randHex(8)
	hf, err := os.Open(h.host.path())
	if err != nil {
		return nil, err
	}
	defer hf.Close()
	var upStackMAC, podEndMAC net.HardwareAddr
	err = do(g.linkNS, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: upStack, MTU: gvisorPodMTU}, PeerName: upHost,
			PeerNamespace: netlink.NsFd(int(hf.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("uplink veth: %w", err)
		}
		l, err := netlink.LinkByName(upStack)
		if err != nil {
			return err
		}
		upStackMAC = l.Attrs().HardwareAddr
		pe, err := netlink.LinkByName(g.name)
		if err != nil {
			return err
		}
		podEndMAC = pe.Attrs().HardwareAddr
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return nil, fmt.Errorf("floor uplink: %w", err)
	}
	var upHostMAC net.HardwareAddr
	err = do(h.host.ns, func() error {
		l, err := netlink.LinkByName(upHost)
		if err != nil {
			return err
		}
		upHostMAC = l.Attrs().HardwareAddr
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: hostEnd.Addr().AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: stackAddr.AsSlice(), HardwareAddr: upStackMAC}); err != nil {
			return fmt.Errorf("neighbour %v: %w", stackAddr, err)
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: stackAddr.AsSlice(),
			Dst: &net.IPNet{IP: g.pod.Masked().Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}})
	})
	if err != nil {
		return nil, fmt.Errorf("floor uplink host end %s: %w", upHost, err)
	}
	var podMAC net.HardwareAddr
	err = do(pod, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		podMAC = l.Attrs().HardwareAddr
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: g.gw.Addr().AsSlice(), HardwareAddr: podEndMAC})
	})
	if err != nil {
		return nil, fmt.Errorf("pod neighbour: %w", err)
	}
	args := []string{"-netns", g.linkNS.Path(), "-pod-link", g.name, "-uplink", upStack,
		"-pod-mac", podMAC.String(), "-host-mac", upHostMAC.String()}
	args = append(args, flags...)
	p, _, err := h.startLineProc("floorpacket", h.tools.packet, args...)
	if err != nil {
		return nil, err
	}
	P := h.host.addr()
	return &attached{pod: pod, listen: P, dial: P, pids: []int{p.cmd.Process.Pid}, logs: p.logTail,
		note: fmt.Sprintf("pod %v → %v (the host's primary address) through the floor forwarder (AF_PACKET, flags %q) and an uplink %v", g.pod.Addr(), P, flags, hostEnd)}, nil
}
