package route

import (
	"fmt"
	"net/netip"
	"syscall"
)

// Type is the kind of a route (RTN_*).
type Type uint8

const (
	// Unicast: forward to a gateway or a directly connected host (RTN_UNICAST).
	Unicast Type = iota
	// Local: the destination is an address of the stack (RTN_LOCAL).
	Local
	// Broadcast: limited or directed broadcast (RTN_BROADCAST).
	Broadcast
	// Unreachable: drop with EHOSTUNREACH / ICMP host unreachable (RTN_UNREACHABLE).
	Unreachable
	// Blackhole: drop silently, EINVAL to local senders (RTN_BLACKHOLE).
	Blackhole
	// Prohibit: drop with EACCES / ICMP administratively prohibited (RTN_PROHIBIT).
	Prohibit
)

var typeNames = [...]string{"unicast", "local", "broadcast", "unreachable", "blackhole", "prohibit"}

// String is the name `ip route` prints.
func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Route is one entry of the main table (struct fib_alias + fib_nh).
type Route struct {
	// Dst is the destination prefix; Add stores it masked.
	Dst netip.Prefix
	// Gateway is the next hop; invalid (zero) for a connected route, whose
	// next hop is the destination itself.
	Gateway netip.Addr
	// NIC is the output NIC ID; required for Unicast routes.
	NIC int
	// Src is the preferred source address (`ip route ... src`), zero = pick.
	Src netip.Addr
	// MTU is the path MTU of the route (`ip route ... mtu`), 0 = the NIC's.
	MTU int
	// Metric orders routes with the same prefix: lower wins.
	Metric int
	// Type is Unicast, Unreachable, Blackhole or Prohibit.
	Type Type
}

// Connected reports whether the route reaches its prefix without a gateway
// (scope link).
func (r Route) Connected() bool { return !r.Gateway.IsValid() && r.Type == Unicast }

// String formats the route like `ip route`.
func (r Route) String() string {
	s := r.Dst.String()
	if r.Type != Unicast {
		s = r.Type.String() + " " + s
	}
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	if r.NIC != 0 {
		s += fmt.Sprintf(" dev %d", r.NIC)
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	if r.MTU != 0 {
		s += fmt.Sprintf(" mtu %d", r.MTU)
	}
	return s
}

// Flow is the key of an output lookup (struct flowi4).
type Flow struct {
	Src, Dst netip.Addr
	Proto    uint8
	TOS      uint8
	// TTL for the packet, 0 = the layer's default (64).
	TTL uint8
	// NIC is the bound output interface (flowi4_oif, SO_BINDTODEVICE); 0 = any.
	NIC  int
	Mark uint32
	// DontFragment sets IP DF on output (IP_PMTUDISC_DO).
	DontFragment     bool
	SrcPort, DstPort uint16
	// Transparent is IP_TRANSPARENT (FLOWI_FLAG_ANYSRC): Src need not be
	// an address of the stack, so a proxy answers from the destination a
	// diverted flow was sent to. Src must still name a single host (not
	// 0/8, multicast or the limited broadcast); output picks the NIC and
	// next hop by Dst as usual.
	Transparent bool
}

// Result is a routing decision (struct rtable / dst_entry).
type Result struct {
	Type Type
	// NIC is the output NIC for Unicast/Broadcast output and forwarding;
	// for Input results of type Local it is the input NIC, for Output
	// results of type Local the NIC owning the address.
	NIC int
	// NextHop is the gateway, or the destination itself for a connected
	// route, a broadcast or a local address (rt_gw4 / rt_nexthop).
	NextHop netip.Addr
	// Src is the source to use on output, or the local address that
	// matched on input.
	Src netip.Addr
	// MTU is the route MTU, 0 = the output NIC's MTU.
	MTU int
	// Route is the main-table entry used, zero for local and broadcast
	// results that came from the local table.
	Route Route
}

// Error is a routing failure. It unwraps to the errno a socket call
// returns, so errors.Is(err, syscall.ENETUNREACH) holds for ErrNoRoute.
type Error struct {
	name  string
	errno syscall.Errno
}

func (e *Error) Error() string { return "route: " + e.name }

// Unwrap returns the errno.
func (e *Error) Unwrap() error { return e.errno }

// Errno is the errno a socket call reports for this failure.
func (e *Error) Errno() syscall.Errno { return e.errno }

// Routing failures, with the errno Linux returns for each.
var (
	// ErrNoRoute: no route matches (ENETUNREACH, RTN_UNREACHABLE of an empty table).
	ErrNoRoute = &Error{"no route to network", syscall.ENETUNREACH}
	// ErrHostUnreach: an Unreachable route matched (fib_props[RTN_UNREACHABLE]).
	ErrHostUnreach = &Error{"host unreachable", syscall.EHOSTUNREACH}
	// ErrProhibited: a Prohibit route matched (fib_props[RTN_PROHIBIT]).
	ErrProhibited = &Error{"administratively prohibited", syscall.EACCES}
	// ErrBlackhole: a Blackhole route matched (fib_props[RTN_BLACKHOLE]).
	ErrBlackhole = &Error{"blackhole route", syscall.EINVAL}
	// ErrMartianSource: RFC 1812 §5.3.7 invalid source address.
	ErrMartianSource = &Error{"martian source", syscall.EINVAL}
	// ErrMartianDest: RFC 1812 §5.3.7 invalid destination address.
	ErrMartianDest = &Error{"martian destination", syscall.EINVAL}
	// ErrMulticast: multicast destinations are not routed (no group
	// memberships, no multicast forwarding).
	ErrMulticast = &Error{"multicast not supported", syscall.EINVAL}
	// ErrBadSource: Flow.Src is not an address of the stack
	// (__ip_route_output_key: __ip_dev_find fails → EINVAL).
	ErrBadSource = &Error{"source address is not local", syscall.EINVAL}
	// ErrNoSource: the output NIC has no address to use as source.
	ErrNoSource = &Error{"no source address on output interface", syscall.EADDRNOTAVAIL}
	// ErrInvalid: a malformed route or address.
	ErrInvalid = &Error{"invalid route", syscall.EINVAL}
	// ErrExists: Add of a route with the same prefix, NIC and metric.
	ErrExists = &Error{"route exists", syscall.EEXIST}
	// ErrNotFound: Remove of a route that is not there (ESRCH, like RTM_DELROUTE).
	ErrNotFound = &Error{"no such route", syscall.ESRCH}
	// ErrTableFull: MaxRoutes or MaxLocal reached.
	ErrTableFull = &Error{"routing table full", syscall.ENOBUFS}
)

// Limited broadcast address (RFC 919, RFC 1122 §3.2.1.3 (c)).
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// LimitedBroadcast is 255.255.255.255.
func LimitedBroadcast() netip.Addr { return limitedBroadcast }
