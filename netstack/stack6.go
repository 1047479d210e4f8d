package netstack

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// IPv6 wiring (inet6_init, addrconf). IPv6 is always on in a stack, but a
// NIC takes part only once it has an IPv6 address: before that the IPv6
// layer drops what arrives on it (as disable_ipv6 does) and neigh answers
// no Neighbor Solicitation there, so an IPv4-only configuration sends and
// answers exactly what it did before IPv6 existed.
//
// Link-local addresses. RFC 4291 §2.1 gives every IPv6 interface a
// link-local address. A NIC gets its own when it gets its first IPv6
// address (unless that first address is itself link-local): fe80::/64
// with the modified EUI-64 interface identifier of the NIC's MAC (RFC 4291
// §2.5.6 and Appendix A, RFC 2464 §5; Linux's addr_gen_mode eui64). On a
// pod link that is the gateway's link-local address: unique per link
// (the daemon gives each pod NIC its own MAC), stable for the NIC's life,
// and what Router Advertisements and NDP come from. No duplicate address
// detection is run on the stack's addresses (RFC 4862 §5.1,
// DupAddrDetectTransmits = 0): they come from IPAM, which hands each out
// once, and the peer on a pod link has its own MAC-derived link-local.

// newIPv6 creates the IPv6 layer on the stack's devices, neighbours, FIB
// and IPv6 hooks.
func (s *Stack) newIPv6(c ipv6.Config) *ipv6.Layer {
	c.Clock, c.Devices, c.Neigh, c.FIB, c.Hooks = s.clk, s.devs, s.neigh, s.fib, s.hooks6
	return ipv6.New(c)
}

// IPv6 is the IPv6 layer.
func (s *Stack) IPv6() *ipv6.Layer { return s.ip6 }

// Hooks6 are the IPv6 netfilter hooks.
func (s *Stack) Hooks6() *netfilter.Hooks { return s.hooks6 }

// SetForwarding6 turns IPv6 forwarding on or off
// (net.ipv6.conf.all.forwarding); the Router flag of our Neighbor
// Advertisements follows it (RFC 4861 §4.4).
func (s *Stack) SetForwarding6(on bool) { s.ip6.SetForwarding(on) }

// SetRouterAdvert makes a NIC send Router Advertisements with cfg (RFC
// 4861 §6.2; off by default: pods get their routes from CNI), or stops
// them with nil. See neigh.RouterAdvertConfig.
func (s *Stack) SetRouterAdvert(nicID int, cfg *neigh.RouterAdvertConfig) error {
	return s.neigh.SetRouterAdvert(nicID, cfg)
}

// LinkLocal is the link-local address the stack gives nic with its first
// IPv6 address: fe80::/64 with the modified EUI-64 of its MAC.
func LinkLocal(nic *dev.NIC) netip.Addr { return header.LinkLocalFromMAC(nic.MAC()) }

// zoneNIC resolves an IPv6 zone (RFC 4007 §11) for the transports: a
// NIC's name ("fe80::1%eth0", as Ping takes it), or its decimal ID
// ("%2", Linux's sin6_scope_id).
func (s *Stack) zoneNIC(zone string) (int, bool) {
	if nic := s.devs.ByName(zone); nic != nil {
		return nic.ID(), true
	}
	if id, err := strconv.Atoi(zone); err == nil && s.devs.ByID(id) != nil {
		return id, true
	}
	return 0, false
}

// zoneName is the zone the transports give a link-local address received
// on the NIC id: its name.
func (s *Stack) zoneName(id int) string {
	if nic := s.devs.ByID(id); nic != nil {
		return nic.Name()
	}
	return ""
}

// addAddress6Locked is AddAddress for an IPv6 prefix; s.mu is held.
func (s *Stack) addAddress6Locked(nic *dev.NIC, p netip.Prefix) error {
	a := p.Addr().WithZone("")
	p = netip.PrefixFrom(a, p.Bits())
	if a.Is4In6() || a.IsMulticast() || a.IsUnspecified() || a.IsLoopback() {
		return fmt.Errorf("netstack: %v: %w", p, syscall.EAFNOSUPPORT)
	}
	if !s.fib.HasIPv6(nic.ID()) && !a.IsLinkLocalUnicast() {
		ll := netip.PrefixFrom(LinkLocal(nic), 64)
		if err := s.addPrefixLocked(nic, ll); err != nil {
			return fmt.Errorf("netstack: link-local %v on %s: %w", ll, nic.Name(), err)
		}
	}
	return s.addPrefixLocked(nic, p)
}

// addPrefixLocked adds a to the local table, the connected route of its
// prefix (shared by addresses in one prefix), and the NIC's address list
// (which announces it); it undoes the first two when the last fails.
func (s *Stack) addPrefixLocked(nic *dev.NIC, p netip.Prefix) error {
	s.fib.AddLocal(p.Addr(), nic.ID())
	if p.Bits() < p.Addr().BitLen() {
		err := s.fib.Add(route.Route{Dst: p.Masked(), NIC: nic.ID(), Src: p.Addr(), Type: route.Unicast})
		if err != nil && !errors.Is(err, route.ErrExists) {
			s.fib.RemoveLocalFrom(p.Addr(), nic.ID())
			return err
		}
	}
	if err := nic.AddAddress(p); err != nil {
		s.removeRoutesLocked(nic, p)
		return err
	}
	return nil
}
