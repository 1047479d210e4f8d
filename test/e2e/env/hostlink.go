package env

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
)

// HostLink is a veth pair in the current (host) netns holding a few test
// addresses that a pod in proxy mode can target: Local are local addresses
// of the host (servers listen there; the daemon's relay reaches them over
// the host's loopback path), Blackhole is routed out of the link and never
// answers (the pair's other end has no address and ignores it). The
// addresses come from 10.254.0.0/16, a /29 that overlaps no route and no
// address of the netns. Close removes the link with its addresses and
// routes.
type HostLink struct {
	Name      string
	Local     []netip.Addr
	Blackhole netip.Addr
	Prefix    netip.Prefix // the /29 the addresses come from
}

// maxHostLinkLocal bounds how many local addresses a HostLink holds (a
// /29 has 6 usable, one is the blackhole).
const maxHostLinkLocal = 5

// NewHostLink creates the link "usd<6 hex>" with n (1..5) local /32
// addresses and one blackhole /32 route. On error it removes what it made.
func NewHostLink(n int) (h *HostLink, err error) {
	if n < 1 || n > maxHostLinkLocal {
		return nil, fmt.Errorf("env: NewHostLink(%d): 1..%d local addresses", n, maxHostLinkLocal)
	}
	var prefix netip.Prefix
	for i := 0; ; i++ {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 254, b[0], b[1] &^ 7}), 29)
		if FreePrefix(prefix) {
			break
		}
		if i == 20 {
			return nil, errors.New("env: no free /29 in 10.254.0.0/16 after 20 tries")
		}
	}
	h = &HostLink{Name: "usd" + Suffix(), Prefix: prefix}
	// A veth pair with both ends here: the addresses sit on one end, the
	// blackhole is routed out of it and the other end, which has no
	// address, answers no ARP for it. (No dummy/ifb: this kernel lacks the
	// dummy driver, and loading ifb leaves its default ifb0/ifb1 behind.)
	attrs := netlink.LinkAttrs{Name: h.Name}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: h.Name + "p"}); err != nil {
		return nil, fmt.Errorf("env: add veth %s: %w", h.Name, err)
	}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	l, err := netlink.LinkByName(h.Name)
	if err != nil {
		return nil, err
	}
	a := prefix.Addr().Next()
	for i := 0; i < n; i++ {
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return nil, fmt.Errorf("env: add %v to %s: %w", a, h.Name, err)
		}
		h.Local = append(h.Local, a)
		a = a.Next()
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("env: set %s up: %w", h.Name, err)
	}
	peer, err := netlink.LinkByName(h.Name + "p")
	if err == nil {
		err = netlink.LinkSetUp(peer)
	}
	if err != nil {
		return nil, fmt.Errorf("env: set %sp up: %w", h.Name, err)
	}
	h.Blackhole = a
	err = netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	if err != nil {
		return nil, fmt.Errorf("env: route %v dev %s: %w", a, h.Name, err)
	}
	return h, nil
}

// Close deletes the link (its addresses and routes go with it).
// Idempotent.
func (h *HostLink) Close() error {
	l, err := netlink.LinkByName(h.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("env: delete %s: %w", h.Name, err)
	}
	return nil
}

// FreePrefix reports whether p overlaps no route (but a default route) and
// no address of the current netns, in any table.
func FreePrefix(p netip.Prefix) bool {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: syscall.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		if ones > 0 && netip.PrefixFrom(a, ones).Overlaps(p) {
			return false
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		if p.Contains(ip) {
			return false
		}
	}
	return true
}
