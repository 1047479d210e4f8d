package route

import (
	"encoding/binary"
	"net/netip"
	"slices"
)

// The IPv6 half of the FIB (net/ipv6/route.c, ip6_fib.c): the same main
// table of Routes and local table of addresses, keyed by IPv6 prefixes,
// with the decisions IPv6 needs that IPv4 does not: link-local
// destinations are reached only through the NIC a flow names (RFC 4291
// §2.5.6, the scope id of a sockaddr_in6), there is no broadcast, and the
// source of an output flow is chosen by RFC 6724 §5 (ipv6_dev_get_saddr)
// instead of a NIC's primary address.

// a128 is an IPv6 address as two words, for masking by prefix length.
type a128 struct{ hi, lo uint64 }

func key6(a netip.Addr) a128 {
	b := a.As16()
	return a128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (k a128) mask(l int) a128 {
	switch {
	case l <= 0:
		return a128{}
	case l < 64:
		return a128{k.hi & (^uint64(0) << (64 - l)), 0}
	case l == 64:
		return a128{k.hi, 0}
	case l < 128:
		return a128{k.hi, k.lo & (^uint64(0) << (128 - l))}
	}
	return k
}

// snapshot6 is the IPv6 part of a published snapshot.
type snapshot6 struct {
	// lens lists the populated prefix lengths, longest first.
	lens  []int
	byLen [129]map[a128][]Route
	// local maps an IPv6 address of the stack to the first NIC it was
	// added to.
	local map[netip.Addr]int
	// nicAddrs lists each NIC's IPv6 addresses in AddLocal order.
	nicAddrs map[int][]netip.Addr
}

var emptySnapshot6 = snapshot6{local: map[netip.Addr]int{}, nicAddrs: map[int][]netip.Addr{}}

// valid6 reports whether a can be a unicast IPv6 address of a route or
// of the stack: IPv6, not IPv4-mapped (RFC 4291 §2.5.5.2: those never
// appear in an IPv6 header), not multicast.
func valid6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() && !a.IsMulticast() }

// publish6 fills the IPv6 part of s from the master lists; t.mu is held.
func (t *Table) publish6(s *snapshot) {
	s6 := &s.v6
	s6.local = map[netip.Addr]int{}
	s6.nicAddrs = map[int][]netip.Addr{}
	for _, r := range t.routes {
		if !r.Dst.Addr().Is6() {
			continue
		}
		l := r.Dst.Bits()
		if s6.byLen[l] == nil {
			s6.byLen[l] = map[a128][]Route{}
			s6.lens = append(s6.lens, l)
		}
		k := key6(r.Dst.Addr())
		s6.byLen[l][k] = append(s6.byLen[l][k], r)
	}
	slices.SortFunc(s6.lens, func(a, b int) int { return b - a })
	for _, l := range s6.lens {
		for _, rs := range s6.byLen[l] {
			slices.SortStableFunc(rs, func(a, b Route) int { return a.Metric - b.Metric })
		}
	}
	for _, la := range t.locals {
		if !la.addr.Is6() {
			continue
		}
		if _, ok := s6.local[la.addr]; !ok {
			s6.local[la.addr] = la.nic
		}
		s6.nicAddrs[la.nic] = append(s6.nicAddrs[la.nic], la.addr)
	}
}

// lpm6 is the IPv6 longest-prefix match (fib6_lookup), with lpm's NIC
// filter.
func (s *snapshot6) lpm6(dst netip.Addr, nic int) (Route, bool) {
	k := key6(dst)
	for _, l := range s.lens {
		rs, ok := s.byLen[l][k.mask(l)]
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

// isLinkLocal6 reports fe80::/10 (RFC 4291 §2.5.6).
func isLinkLocal6(a netip.Addr) bool { return a.IsLinkLocalUnicast() }

// HasIPv6 reports whether nic has an IPv6 address in the local table:
// the IPv6 layer treats a NIC without one as having IPv6 disabled. It
// neither locks nor allocates.
func (t *Table) HasIPv6(nic int) bool { return len(t.load().v6.nicAddrs[nic]) > 0 }

// Addresses6 returns nic's IPv6 addresses in the order they were added.
func (t *Table) Addresses6(nic int) []netip.Addr {
	return slices.Clone(t.load().v6.nicAddrs[nic])
}

// scope6 is an address's scope for RFC 6724 §3.1: link-local unicast
// and loopback are link scope (2), the rest of unicast (ULAs included) is
// global (0xe); a multicast address carries its scope in its second
// octet.
func scope6(a netip.Addr) int {
	switch {
	case a.IsMulticast():
		return int(a.As16()[1] & 0x0f)
	case a.IsLinkLocalUnicast(), a.IsLoopback():
		return 0x2
	}
	return 0xe
}

// commonPrefixLen is RFC 6724's CommonPrefixLen, capped at 64 (the
// interface identifier is not compared, §2.2).
func commonPrefixLen(a, b netip.Addr) int {
	ka, kb := key6(a), key6(b)
	x := ka.hi ^ kb.hi
	n := 0
	for n < 64 && x&(1<<63) == 0 {
		x <<= 1
		n++
	}
	return n
}

// selectSource6 is RFC 6724 §5 source address selection over cands for
// dst (ipv6_dev_get_saddr), with the rules that apply to a stack without
// deprecated, temporary, home or care-of addresses: Rule 1 (prefer the
// same address), Rule 2 (prefer appropriate scope) and Rule 8 (prefer the
// longest matching prefix). Ties keep the earlier candidate.
func selectSource6(cands []netip.Addr, dst netip.Addr) (netip.Addr, bool) {
	// Rule 1: prefer the same address.
	if slices.Contains(cands, dst) {
		return dst, true
	}
	var best netip.Addr
	for _, c := range cands {
		if !best.IsValid() {
			best = c
			continue
		}
		// Rule 2: if Scope(SA) < Scope(SB): if Scope(SA) < Scope(D),
		// prefer SB, otherwise prefer SA (and symmetrically).
		sb, sc, sd := scope6(best), scope6(c), scope6(dst)
		if sb != sc {
			if sb < sc {
				if sb < sd {
					best = c
				}
			} else if sc >= sd {
				best = c
			}
			continue
		}
		// Rule 8: longest matching prefix.
		if commonPrefixLen(c, dst) > commonPrefixLen(best, dst) {
			best = c
		}
	}
	return best, best.IsValid()
}

// SelectSource6 picks the source for a packet to dst leaving through nic
// (RFC 6724 §5 over nic's addresses). When nic has none of at least dst's
// scope, the stack's global addresses on other NICs are candidates too
// (Linux does the same unless strict interface mode is asked for). ok is
// false when no address fits: a link-local destination needs a link-local
// address on nic.
func (t *Table) SelectSource6(nic int, dst netip.Addr) (netip.Addr, bool) {
	return t.load().v6.selectSource(nic, dst)
}

func (s *snapshot6) selectSource(nic int, dst netip.Addr) (netip.Addr, bool) {
	if a, ok := selectSource6(s.nicAddrs[nic], dst); ok && scope6(a) >= min(scope6(dst), 0xe) {
		return a, true
	}
	if scope6(dst) <= 0x2 {
		// A link-scope destination is answered from the NIC's own
		// link-local address or not at all.
		return selectSource6(s.nicAddrs[nic], dst)
	}
	var global []netip.Addr
	for _, as := range s.nicAddrs {
		for _, a := range as {
			if scope6(a) == 0xe {
				global = append(global, a)
			}
		}
	}
	slices.SortFunc(global, func(a, b netip.Addr) int { return a.Compare(b) }) // map order is random
	if a, ok := selectSource6(global, dst); ok {
		return a, true
	}
	return selectSource6(s.nicAddrs[nic], dst)
}

// lookup6 is Lookup for an IPv6 destination.
func (s *snapshot) lookup6(dst netip.Addr) (Result, bool) {
	s6 := &s.v6
	if nic, ok := s6.local[dst]; ok {
		return Result{Type: Local, NIC: nic, NextHop: dst, Src: dst}, true
	}
	r, ok := s6.lpm6(dst, 0)
	if !ok {
		return Result{}, false
	}
	res := Result{Type: r.Type, NIC: r.NIC, MTU: r.MTU, Route: r, NextHop: dst, Src: r.Src}
	if r.Gateway.IsValid() {
		res.NextHop = r.Gateway
	}
	if !res.Src.IsValid() && r.Type == Unicast {
		res.Src, _ = s6.selectSource(r.NIC, dst)
	}
	return res, true
}

// via6 is Via for an IPv6 destination: the longest Unicast prefix through
// nic holding dst, its source chosen as Output would.
func (s *snapshot) via6(dst netip.Addr, nic int) (Result, bool) {
	s6 := &s.v6
	k := key6(dst)
	for _, l := range s6.lens {
		for _, r := range s6.byLen[l][k.mask(l)] {
			if r.Type != Unicast || r.NIC != nic {
				continue
			}
			res := Result{Type: Unicast, NIC: r.NIC, MTU: r.MTU, Route: r, NextHop: dst, Src: r.Src}
			if r.Gateway.IsValid() {
				res.NextHop = r.Gateway
			}
			if !res.Src.IsValid() {
				res.Src, _ = s6.selectSource(r.NIC, dst)
			}
			return res, true
		}
	}
	return Result{}, false
}

// output6 is ip6_route_output for a locally originated flow; see Output.
func (s *snapshot) output6(fl Flow) (Result, error) {
	s6 := &s.v6
	dst := fl.Dst.WithZone("")
	if !valid6(dst) && !(dst.IsMulticast() && dst.Is6()) {
		return Result{}, ErrInvalid
	}
	if fl.Src.IsValid() {
		src := fl.Src.WithZone("")
		// RFC 4291 §2.7: a multicast address is never a source; the
		// unspecified address is only a source before a node has one.
		if !valid6(src) || src.IsUnspecified() {
			return Result{}, ErrBadSource
		}
		// As for IPv4: a source that is not ours is EINVAL unless the
		// flow is transparent, and never a loopback address not ours.
		if _, ok := s6.local[src]; !ok && (!fl.Transparent || src.IsLoopback()) {
			return Result{}, ErrBadSource
		}
		fl.Src = src
	}
	if dst.IsUnspecified() {
		return Result{}, ErrMartianDest
	}
	if nic, ok := s6.local[dst]; ok {
		src := fl.Src
		if !src.IsValid() {
			src = dst
		}
		return Result{Type: Local, NIC: nic, NextHop: dst, Src: src}, nil
	}
	if dst.IsLoopback() {
		return Result{}, ErrMartianDest
	}
	// RFC 4291 §2.5.6 / §2.7: a link-local unicast or link-scope multicast
	// destination is on the link the flow names (the scope id); without
	// one it is ambiguous (Linux: EINVAL).
	if isLinkLocal6(dst) || (dst.IsMulticast() && scope6(dst) <= 0x2) {
		if fl.NIC == 0 {
			return Result{}, ErrInvalid
		}
		return s6.withSource(Result{Type: Unicast, NIC: fl.NIC, NextHop: dst}, fl)
	}
	if dst.IsMulticast() {
		return Result{}, ErrMulticast
	}
	r, ok := s6.lpm6(dst, fl.NIC)
	if !ok {
		if fl.NIC != 0 {
			return s6.withSource(Result{Type: Unicast, NIC: fl.NIC, NextHop: dst}, fl)
		}
		return Result{}, ErrNoRoute
	}
	if err := routeError(r.Type); err != nil {
		return Result{}, err
	}
	res := Result{Type: Unicast, NIC: r.NIC, MTU: r.MTU, Route: r, NextHop: dst, Src: r.Src}
	if r.Gateway.IsValid() {
		res.NextHop = r.Gateway
	}
	return s6.withSource(res, fl)
}

// withSource fills res.Src: the flow's, else the route's, else RFC 6724's
// choice among the output NIC's addresses.
func (s *snapshot6) withSource(res Result, fl Flow) (Result, error) {
	switch {
	case fl.Src.IsValid():
		res.Src = fl.Src
	case res.Src.IsValid():
	default:
		src, ok := s.selectSource(res.NIC, fl.Dst.WithZone(""))
		if !ok {
			return Result{}, ErrNoSource
		}
		res.Src = src
	}
	return res, nil
}

// input6 is ip6_route_input for a packet from src to dst received on
// inNIC; see Input. Multicast destinations are the IPv6 layer's own
// business (ip6_mc_input): they are ErrMulticast here.
func (s *snapshot) input6(src, dst netip.Addr, inNIC int) (Result, error) {
	s6 := &s.v6
	// RFC 4291 §2.5.2: the unspecified address is never the source of a
	// routed packet; §2.5.3: loopback never appears on a link; §2.7:
	// multicast is never a source; §2.5.5.2: IPv4-mapped addresses do
	// not appear in IPv6 headers.
	if !src.Is6() || src.IsUnspecified() || src.IsLoopback() || src.IsMulticast() || src.Is4In6() {
		return Result{}, ErrMartianSource
	}
	if !dst.Is6() || dst.IsUnspecified() || dst.IsLoopback() || dst.Is4In6() {
		return Result{}, ErrMartianDest
	}
	if dst.IsMulticast() {
		return Result{}, ErrMulticast
	}
	// A source that is one of our addresses arrived from outside: as for
	// IPv4 (fib_validate_source without accept_local), a spoof.
	if _, ok := s6.local[src]; ok {
		return Result{}, ErrMartianSource
	}
	if _, ok := s6.local[dst]; ok {
		// RFC 4291 §2.5.6: a link-local address is ours only on its link.
		if isLinkLocal6(dst) && !s6.hasAddr(inNIC, dst) {
			return Result{}, ErrMartianDest
		}
		return Result{Type: Local, NIC: inNIC, NextHop: dst, Src: dst}, nil
	}
	// RFC 4291 §2.5.6: "Routers must not forward any packets with
	// Link-Local source or destination addresses to other links"; a
	// link-local destination that is not ours has nowhere to go.
	if isLinkLocal6(dst) {
		return Result{}, ErrMartianDest
	}
	r, ok := s6.lpm6(dst, 0)
	if !ok {
		return Result{}, ErrNoRoute
	}
	if err := routeError(r.Type); err != nil {
		return Result{}, err
	}
	res := Result{Type: Unicast, NIC: r.NIC, MTU: r.MTU, Route: r, NextHop: dst, Src: r.Src}
	if r.Gateway.IsValid() {
		res.NextHop = r.Gateway
	}
	return res, nil
}

func (s *snapshot6) hasAddr(nic int, a netip.Addr) bool {
	return slices.Contains(s.nicAddrs[nic], a)
}

// reversePathOK6 is ReversePathOK for an IPv6 source. The unspecified
// source passes (a node performing duplicate address detection has no
// address yet, RFC 4862 §5.4.2).
func (s *snapshot) reversePathOK6(src netip.Addr, inNIC int) bool {
	if src.IsUnspecified() {
		return true
	}
	s6 := &s.v6
	k := key6(src)
	for _, l := range s6.lens {
		rs, ok := s6.byLen[l][k.mask(l)]
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
