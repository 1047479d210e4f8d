package route

import (
	"math/bits"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// Bounds of a Table. Add and AddLocal beyond them return ErrTableFull.
const (
	// MaxRoutes bounds the main table (a node holds a route per pod link
	// plus a few uplink routes; 64 Ki leaves room for a full cluster).
	MaxRoutes = 1 << 16
	// MaxLocal bounds the local table (addresses of the stack).
	MaxLocal = 4096
)

// Table is the FIB of one stack: the main table (LPM over Route), the local
// table (the stack's addresses) and the broadcast addresses. Reads are
// lock-free and allocation-free; writes serialise on mu and publish a new
// snapshot.
type Table struct {
	mu     sync.Mutex
	routes []Route     // master list, insertion order
	locals []localAddr // master list of (address, NIC), insertion order
	snap   atomic.Pointer[snapshot]
}

type localAddr struct {
	addr netip.Addr
	nic  int
}

// snapshot is an immutable view published to readers.
type snapshot struct {
	// lens has bit l set when byLen[l] holds at least one prefix.
	lens  uint64
	byLen [33]map[uint32][]Route // masked prefix → routes sorted by Metric
	// local maps an address of the stack to the first NIC it was added
	// to (the local table's RTN_LOCAL entries).
	local map[uint32]int
	// bcast maps the directed broadcast address of each connected prefix
	// (wider than /31, RFC 3021) to the NIC of that prefix, as
	// fib_add_ifaddr adds RTN_BROADCAST entries to the local table.
	bcast map[uint32]int
	// nicAddrs lists each NIC's IPv4 addresses in AddLocal order; the
	// first is the NIC's primary address, the default output source.
	nicAddrs map[int][]netip.Addr
	// v6 is the IPv6 half (table6.go).
	v6 snapshot6
}

var emptySnapshot = &snapshot{
	local:    map[uint32]int{},
	bcast:    map[uint32]int{},
	nicAddrs: map[int][]netip.Addr{},
	v6:       emptySnapshot6,
}

// NewTable returns an empty FIB.
func NewTable() *Table {
	t := &Table{}
	t.snap.Store(emptySnapshot)
	return t
}

func (t *Table) load() *snapshot { return t.snap.Load() }

func key(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func mask(l int) uint32 {
	if l == 0 {
		return 0
	}
	return ^uint32(0) << (32 - l)
}

func addrOf(k uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)})
}

// Add inserts r into the main table. The prefix is stored masked. A route
// with the same prefix, NIC and metric already present is ErrExists.
// Prefix, gateway and source are of one family; an IPv6 route's are
// neither IPv4-mapped nor multicast (nor a multicast prefix).
func (t *Table) Add(r Route) error {
	if !r.Dst.IsValid() || !(r.Dst.Addr().Is4() || valid6(r.Dst.Addr())) {
		return ErrInvalid
	}
	v4 := r.Dst.Addr().Is4()
	sameFamily := func(a netip.Addr) bool {
		if v4 {
			return a.Is4()
		}
		return valid6(a)
	}
	r.Dst = r.Dst.Masked()
	switch r.Type {
	case Unicast:
		if r.NIC <= 0 {
			return ErrInvalid
		}
		if r.Gateway.IsValid() && !sameFamily(r.Gateway) {
			return ErrInvalid
		}
	case Unreachable, Blackhole, Prohibit:
		r.Gateway = netip.Addr{}
	default:
		// Local and Broadcast entries come from AddLocal and the
		// connected prefixes, not from Add.
		return ErrInvalid
	}
	if r.Src.IsValid() && !sameFamily(r.Src) {
		return ErrInvalid
	}
	if r.MTU < 0 {
		return ErrInvalid
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range t.routes {
		if o.Dst == r.Dst && o.NIC == r.NIC && o.Metric == r.Metric {
			return ErrExists
		}
	}
	if len(t.routes) >= MaxRoutes {
		return ErrTableFull
	}
	t.routes = append(t.routes, r)
	t.publish()
	return nil
}

// Remove deletes the routes to dst through nic (nic 0: through any NIC).
func (t *Table) Remove(dst netip.Prefix, nic int) error {
	if !dst.IsValid() || !(dst.Addr().Is4() || valid6(dst.Addr())) {
		return ErrInvalid
	}
	dst = dst.Masked()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.routes)
	t.routes = slices.DeleteFunc(t.routes, func(r Route) bool {
		return r.Dst == dst && (nic == 0 || r.NIC == nic)
	})
	if len(t.routes) == n {
		return ErrNotFound
	}
	t.publish()
	return nil
}

// Routes returns a copy of the main table, sorted by prefix length
// (longest first), then metric.
func (t *Table) Routes() []Route {
	t.mu.Lock()
	out := slices.Clone(t.routes)
	t.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Route) int {
		if a.Dst.Bits() != b.Dst.Bits() {
			return b.Dst.Bits() - a.Dst.Bits()
		}
		return a.Metric - b.Metric
	})
	return out
}

// AddLocal adds a to the local table as an address of nic. An address may
// be local on several NICs at once (the gateway address on every pod
// link, as the CNI ptp plugin configures it); LocalNIC reports the NIC it
// was first added to. The first address added for a NIC is its primary
// address: Output uses it as the source when neither the flow nor the
// route names one (a simplification of inet_select_addr, which prefers an
// address in the next hop's subnet; give the route a Src to choose
// differently). IPv6 addresses are listed apart: they have no primary,
// Output picks among them by RFC 6724. Adding a pair already present, an
// address that is not IPv4 or unicast IPv6 (IPv4-mapped addresses are
// neither), the unspecified address, or more than MaxLocal entries does
// nothing. A zone is dropped: NIC IDs carry the scope here.
func (t *Table) AddLocal(a netip.Addr, nic int) {
	a = a.WithZone("")
	if !(a.Is4() || valid6(a)) || a.IsUnspecified() {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.locals {
		if l.addr == a && l.nic == nic {
			return
		}
	}
	if len(t.locals) >= MaxLocal {
		return
	}
	t.locals = append(t.locals, localAddr{a, nic})
	t.publish()
}

// RemoveLocal removes a from the local table, from every NIC.
func (t *Table) RemoveLocal(a netip.Addr) { t.RemoveLocalFrom(a, 0) }

// RemoveLocalFrom removes a from nic's addresses (nic 0: from every NIC);
// the address stays local while another NIC has it.
func (t *Table) RemoveLocalFrom(a netip.Addr, nic int) {
	a = a.WithZone("")
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.locals)
	t.locals = slices.DeleteFunc(t.locals, func(l localAddr) bool { return l.addr == a && (nic == 0 || l.nic == nic) })
	if len(t.locals) != n {
		t.publish()
	}
}

// FlushNIC removes every route through nic and every local address of nic
// (a NIC went away: fib_disable_ip / fib_sync_down_dev).
func (t *Table) FlushNIC(nic int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.routes = slices.DeleteFunc(t.routes, func(r Route) bool { return r.NIC == nic })
	t.locals = slices.DeleteFunc(t.locals, func(l localAddr) bool { return l.nic == nic })
	t.publish()
}

// publish builds and stores a new snapshot; t.mu is held.
func (t *Table) publish() {
	s := &snapshot{
		local:    make(map[uint32]int, len(t.locals)),
		bcast:    map[uint32]int{},
		nicAddrs: map[int][]netip.Addr{},
	}
	for _, r := range t.routes {
		if !r.Dst.Addr().Is4() {
			continue
		}
		l := r.Dst.Bits()
		if s.byLen[l] == nil {
			s.byLen[l] = map[uint32][]Route{}
		}
		k := key(r.Dst.Addr())
		s.byLen[l][k] = append(s.byLen[l][k], r)
		s.lens |= 1 << l
		if r.Connected() && l < 31 {
			s.bcast[k|^mask(l)] = r.NIC
		}
	}
	for l := range s.byLen {
		for _, rs := range s.byLen[l] {
			slices.SortStableFunc(rs, func(a, b Route) int { return a.Metric - b.Metric })
		}
	}
	for _, la := range t.locals {
		if !la.addr.Is4() {
			continue
		}
		if _, ok := s.local[key(la.addr)]; !ok {
			s.local[key(la.addr)] = la.nic
		}
		s.nicAddrs[la.nic] = append(s.nicAddrs[la.nic], la.addr)
	}
	t.publish6(s)
	t.snap.Store(s)
}

// lpm is the longest-prefix match (fib_table_lookup). With nic != 0 only
// Unicast routes through nic match (the flowi4_oif nexthop filter); error
// routes (Unreachable, Blackhole, Prohibit) match whatever the NIC, as
// their fib_props error is returned before nexthops are looked at.
func (s *snapshot) lpm(dst uint32, nic int) (Route, bool) {
	for m := s.lens; m != 0; {
		l := bits.Len64(m) - 1
		m &^= 1 << l
		rs, ok := s.byLen[l][dst&mask(l)]
		if !ok {
			continue
		}
		if nic == 0 {
			return rs[0], true
		}
		for _, r := range rs {
			if r.Type != Unicast || r.NIC == nic {
				return r, true
			}
		}
	}
	return Route{}, false
}

// primary returns the first address of nic.
func (s *snapshot) primary(nic int) (netip.Addr, bool) {
	if as := s.nicAddrs[nic]; len(as) > 0 {
		return as[0], true
	}
	return netip.Addr{}, false
}

// IsLocal reports whether a is an address of the stack (of either family).
func (t *Table) IsLocal(a netip.Addr) bool {
	_, ok := t.LocalNIC(a)
	return ok
}

// LocalNIC returns the NIC owning local address a (the first it was
// added to).
func (t *Table) LocalNIC(a netip.Addr) (int, bool) {
	switch {
	case a.Is4():
		nic, ok := t.load().local[key(a)]
		return nic, ok
	case a.Is6():
		nic, ok := t.load().v6.local[a.WithZone("")]
		return nic, ok
	}
	return 0, false
}

// IsBroadcast reports whether a is the limited broadcast or the directed
// broadcast address of a connected prefix.
func (t *Table) IsBroadcast(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	if a == limitedBroadcast {
		return true
	}
	_, ok := t.load().bcast[key(a)]
	return ok
}

// PrimaryAddr is the first IPv4 address AddLocal registered for nic, the
// source of IPv4 packets the stack originates on it (ICMP errors about
// packets that arrived on nic, ARP requests). IPv6 has no primary
// address: see SelectSource6.
func (t *Table) PrimaryAddr(nic int) (netip.Addr, bool) { return t.load().primary(nic) }

// Addresses returns the local addresses of nic: its IPv4 addresses,
// primary first, then its IPv6 addresses in the order added.
func (t *Table) Addresses(nic int) []netip.Addr {
	s := t.load()
	return append(slices.Clone(s.nicAddrs[nic]), s.v6.nicAddrs[nic]...)
}

// routeError maps an error route type to its failure (fib_props[].error).
func routeError(ty Type) error {
	switch ty {
	case Unreachable:
		return ErrHostUnreach
	case Prohibit:
		return ErrProhibited
	case Blackhole:
		return ErrBlackhole
	}
	return nil
}

// Lookup resolves dst as a destination: the local table first, then the
// broadcast addresses, then the main table. The bool is false when nothing
// matches; error routes are returned with their Type.
func (t *Table) Lookup(dst netip.Addr) (Result, bool) {
	if dst.Is6() {
		return t.load().lookup6(dst.WithZone(""))
	}
	if !dst.Is4() {
		return Result{}, false
	}
	s := t.load()
	k := key(dst)
	if nic, ok := s.local[k]; ok {
		return Result{Type: Local, NIC: nic, NextHop: dst, Src: dst}, true
	}
	if dst == limitedBroadcast {
		return Result{Type: Broadcast, NextHop: dst}, true
	}
	if nic, ok := s.bcast[k]; ok {
		src, _ := s.primary(nic)
		return Result{Type: Broadcast, NIC: nic, NextHop: dst, Src: src}, true
	}
	r, ok := s.lpm(k, 0)
	if !ok {
		return Result{}, false
	}
	return unicastResult(s, r, dst), true
}

func unicastResult(s *snapshot, r Route, dst netip.Addr) Result {
	res := Result{Type: r.Type, NIC: r.NIC, MTU: r.MTU, Route: r, NextHop: dst}
	if r.Gateway.IsValid() {
		res.NextHop = r.Gateway
	}
	res.Src = r.Src
	if !res.Src.IsValid() {
		res.Src, _ = s.primary(r.NIC)
	}
	return res
}

// Via is the route to dst through nic alone: the longest Unicast prefix
// of the main table that holds dst and leaves through nic, as a lookup of
// a policy table holding only nic's routes would find it (the uplink's
// default route, for netfilter's reply-to). ok is false when nic has no
// such route; the caller then keeps the FIB's own choice, as a policy
// rule whose table has no match falls through to the main table.
// Error routes are skipped: they name no NIC.
func (t *Table) Via(dst netip.Addr, nic int) (Result, bool) {
	if dst.Is6() && nic > 0 {
		return t.load().via6(dst.WithZone(""), nic)
	}
	if !dst.Is4() || nic <= 0 {
		return Result{}, false
	}
	s := t.load()
	dk := key(dst)
	for m := s.lens; m != 0; {
		l := bits.Len64(m) - 1
		m &^= 1 << l
		for _, r := range s.byLen[l][dk&mask(l)] {
			if r.Type == Unicast && r.NIC == nic {
				return unicastResult(s, r, dst), true
			}
		}
	}
	return Result{}, false
}

// Address classes of RFC 1812 §5.3.7 and RFC 1122 §3.2.1.3.
func isZeroNet(k uint32) bool   { return k>>24 == 0 }   // 0/8 "this network"
func isLoopback(k uint32) bool  { return k>>24 == 127 } // 127/8
func isMulticast(k uint32) bool { return k>>28 == 0xe } // 224/4

// Output is ip_route_output_key: the route for a locally originated flow.
//
// fl.NIC, when set, restricts the main-table match to routes through that
// NIC; when none matches, the destination is assumed on-link through it,
// as Linux does for a bound socket ("Apparently, routing tables are wrong.
// Assume, that the destination is on link."). The source is fl.Src (which
// must be an address of the stack: ErrBadSource otherwise), else the
// route's Src, else the output NIC's primary address (ErrNoSource when it
// has none); a Transparent flow's Src may be any single-host address
// (loopback included only if it is local). A local destination yields
// Type Local (the caller loops it back); its source defaults to the
// destination, as Linux does.
func (t *Table) Output(fl Flow) (Result, error) {
	if fl.Dst.Is6() {
		return t.load().output6(fl)
	}
	if !fl.Dst.Is4() {
		return Result{}, ErrInvalid
	}
	s := t.load()
	dk := key(fl.Dst)
	if fl.Src.IsValid() {
		if !fl.Src.Is4() {
			return Result{}, ErrBadSource
		}
		sk := key(fl.Src)
		if isZeroNet(sk) || isMulticast(sk) || fl.Src == limitedBroadcast {
			return Result{}, ErrBadSource
		}
		// __ip_route_output_key: a source that is not ours is EINVAL,
		// unless the flow is transparent (FLOWI_FLAG_ANYSRC).
		// A transparent source still may not be a loopback address
		// that is not ours (a martian on any wire, RFC 1122 §3.2.1.3).
		if _, ok := s.local[sk]; !ok && (!fl.Transparent || isLoopback(sk)) {
			return Result{}, ErrBadSource
		}
	}
	if isZeroNet(dk) {
		return Result{}, ErrMartianDest
	}
	if nic, ok := s.local[dk]; ok {
		src := fl.Src
		if !src.IsValid() {
			src = fl.Dst
		}
		return Result{Type: Local, NIC: nic, NextHop: fl.Dst, Src: src}, nil
	}
	if isMulticast(dk) {
		return Result{}, ErrMulticast
	}
	if fl.Dst == limitedBroadcast {
		// RFC 1122 §3.3.6: a limited broadcast goes out one interface:
		// the bound one, the one owning the source, or the one the
		// default route uses.
		nic := fl.NIC
		if nic == 0 && fl.Src.IsValid() {
			nic = s.local[key(fl.Src)]
		}
		if nic == 0 {
			r, ok := s.lpm(dk, 0)
			if !ok || r.Type != Unicast {
				return Result{}, ErrNoRoute
			}
			nic = r.NIC
		}
		return withSource(s, Result{Type: Broadcast, NIC: nic, NextHop: fl.Dst}, fl)
	}
	if nic, ok := s.bcast[dk]; ok && (fl.NIC == 0 || fl.NIC == nic) {
		return withSource(s, Result{Type: Broadcast, NIC: nic, NextHop: fl.Dst}, fl)
	}
	r, ok := s.lpm(dk, fl.NIC)
	if !ok {
		if fl.NIC != 0 {
			return withSource(s, Result{Type: Unicast, NIC: fl.NIC, NextHop: fl.Dst}, fl)
		}
		return Result{}, ErrNoRoute
	}
	if err := routeError(r.Type); err != nil {
		return Result{}, err
	}
	res := Result{Type: Unicast, NIC: r.NIC, MTU: r.MTU, Route: r, NextHop: fl.Dst, Src: r.Src}
	if r.Gateway.IsValid() {
		res.NextHop = r.Gateway
	}
	return withSource(s, res, fl)
}

// withSource fills res.Src: the flow's, else the route's, else the NIC's primary.
func withSource(s *snapshot, res Result, fl Flow) (Result, error) {
	switch {
	case fl.Src.IsValid():
		res.Src = fl.Src
	case res.Src.IsValid():
	default:
		src, ok := s.primary(res.NIC)
		if !ok {
			return Result{}, ErrNoSource
		}
		res.Src = src
	}
	return res, nil
}

// Input is ip_route_input_slow: what to do with a packet from src to dst
// that arrived on inNIC. It applies the RFC 1812 §5.3.7 martian filters and
// returns Local (deliver), Broadcast (deliver, never forward) or Unicast
// (forward to Result.NIC/NextHop). Whether forwarding is enabled, and the
// reverse-path filter, are the caller's policy (see ReversePathOK).
func (t *Table) Input(src, dst netip.Addr, inNIC int) (Result, error) {
	if dst.Is6() {
		return t.load().input6(src, dst, inNIC)
	}
	if !src.Is4() {
		return Result{}, ErrMartianSource
	}
	if !dst.Is4() {
		return Result{}, ErrMartianDest
	}
	s := t.load()
	sk, dk := key(src), key(dst)
	// RFC 1812 §5.3.7: "A router SHOULD NOT forward any packet that has an
	// invalid IP source address": multicast, limited broadcast, loopback
	// (127/8 never appears on a wire, RFC 1122 §3.2.1.3 (g)).
	if isMulticast(sk) || src == limitedBroadcast || isLoopback(sk) {
		return Result{}, ErrMartianSource
	}
	// Limited broadcast, and 0.0.0.0 → 0.0.0.0, are delivered locally
	// before the 0/8 source check: a host without an address (a DHCP or
	// BOOTP client) sends from 0.0.0.0 (RFC 1122 §3.2.1.3 (a), RFC 2131 §4.1).
	if dst == limitedBroadcast || (sk == 0 && dk == 0) {
		src2, _ := s.primary(inNIC)
		return Result{Type: Broadcast, NIC: inNIC, NextHop: dst, Src: src2}, nil
	}
	if isZeroNet(sk) {
		return Result{}, ErrMartianSource
	}
	// RFC 1812 §5.3.7: 0/8 and 127/8 destinations are not forwarded, and
	// we are no destination for them either.
	if isZeroNet(dk) || isLoopback(dk) {
		return Result{}, ErrMartianDest
	}
	// A source that is one of our addresses or a directed broadcast
	// arrived from outside: fib_validate_source rejects both (accept_local
	// off; RFC 1812 §5.3.7 for broadcast sources).
	if _, ok := s.local[sk]; ok {
		return Result{}, ErrMartianSource
	}
	if _, ok := s.bcast[sk]; ok {
		return Result{}, ErrMartianSource
	}
	if isMulticast(dk) {
		return Result{}, ErrMulticast
	}
	if _, ok := s.local[dk]; ok {
		return Result{Type: Local, NIC: inNIC, NextHop: dst, Src: dst}, nil
	}
	if nic, ok := s.bcast[dk]; ok {
		src2, _ := s.primary(nic)
		return Result{Type: Broadcast, NIC: nic, NextHop: dst, Src: src2}, nil
	}
	r, ok := s.lpm(dk, 0)
	if !ok {
		return Result{}, ErrNoRoute
	}
	if err := routeError(r.Type); err != nil {
		return Result{}, err
	}
	return unicastResult(s, r, dst), nil
}

// ReversePathOK is the strict reverse-path filter (RFC 3704 §2.2,
// rp_filter=1, fib_validate_source): the best route back to src must leave
// through inNIC. 0.0.0.0 passes (a DHCP client has no address yet); a
// source with no route, or one reached through an error route, fails.
// Among equal-length routes any one through inNIC passes (multipath).
func (t *Table) ReversePathOK(src netip.Addr, inNIC int) bool {
	if src.Is6() {
		return t.load().reversePathOK6(src, inNIC)
	}
	if !src.Is4() {
		return false
	}
	sk := key(src)
	if sk == 0 {
		return true
	}
	s := t.load()
	for m := s.lens; m != 0; {
		l := bits.Len64(m) - 1
		m &^= 1 << l
		rs, ok := s.byLen[l][sk&mask(l)]
		if !ok {
			continue
		}
		for _, r := range rs {
			if r.Type == Unicast && r.NIC == inNIC {
				return true
			}
		}
		return false
	}
	return false
}
