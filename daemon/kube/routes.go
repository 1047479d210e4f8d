package kube

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NodeRouteProtocol is the rtnetlink protocol (rtm_protocol) of the routes
// to other nodes' pod CIDRs: `ip route show proto 0x76` lists them,
// `ip route flush proto 0x76` removes them. 0x75 is the daemon's routes to
// its own pods over the uplink; neither is assigned in iproute2's
// rt_protos.
const NodeRouteProtocol = 0x76

// RouteTable is what the controller needs from the host's main routing
// table. NetlinkTable is the real one; tests use a fake.
type RouteTable interface {
	// List returns every route of the main table with a destination
	// prefix (default routes and routes of other tables are not listed),
	// both families.
	List() ([]TableRoute, error)
	// Replace installs r with NodeRouteProtocol, replacing a route to
	// the same destination (ip route replace).
	Replace(r Route) error
	// Delete removes the route to r.Dst carrying NodeRouteProtocol; a
	// missing route is success. Routes of other protocols are never
	// matched.
	Delete(r TableRoute) error
}

// NetlinkTable is the host's main table over rtnetlink, in the network
// namespace the handle was opened in.
type NetlinkTable struct {
	h *netlink.Handle
}

// NewNetlinkTable opens the table of the calling process's network
// namespace.
func NewNetlinkTable() (*NetlinkTable, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, err
	}
	return &NetlinkTable{h: h}, nil
}

// NewNetlinkTableAt opens the table of the network namespace at path.
func NewNetlinkTableAt(path string) (*NetlinkTable, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	return &NetlinkTable{h: h}, nil
}

// Close releases the netlink socket.
func (t *NetlinkTable) Close() { t.h.Close() }

// List implements RouteTable.
func (t *NetlinkTable) List() ([]TableRoute, error) {
	rs, err := t.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []TableRoute
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		tr := TableRoute{Dst: netip.PrefixFrom(a.Unmap(), ones), Proto: int(r.Protocol)}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			tr.Via = gw.Unmap()
		}
		out = append(out, tr)
	}
	return out, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// ErrUnreachable is wrapped when the kernel refuses a route because its
// gateway is not on a network directly connected to this node.
var ErrUnreachable = errors.New("gateway not on a directly connected network")

// Replace implements RouteTable.
func (t *NetlinkTable) Replace(r Route) error {
	err := t.h.RouteReplace(&netlink.Route{Dst: ipNet(r.Dst), Gw: r.Via.AsSlice(), Protocol: NodeRouteProtocol,
		Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_UNIVERSE})
	if errors.Is(err, syscall.ENETUNREACH) {
		return fmt.Errorf("%v: %w", err, ErrUnreachable)
	}
	return err
}

// Delete implements RouteTable. The kernel matches rtm_protocol on
// delete, so a route of another owner with the same destination is left.
func (t *NetlinkTable) Delete(r TableRoute) error {
	nr := &netlink.Route{Dst: ipNet(r.Dst), Protocol: NodeRouteProtocol, Table: unix.RT_TABLE_MAIN}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	}
	if err := t.h.RouteDel(nr); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}
