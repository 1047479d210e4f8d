package neigh

import (
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Neighbor Discovery (RFC 4861; net/ipv6/ndisc.c): IPv6 address
// resolution and reachability in the same table and NUD machine as ARP,
// the answers a router on point-to-point links gives (its own addresses
// and, through the proxy policy, every other off-link address), duplicate
// address detection answers (RFC 4862 §5.4), and Router Advertisements
// where configured (router.go). The ipv6 layer validates the IPv6 header
// and the ICMPv6 checksum and hands NDP messages to RcvNDP; NDP messages
// we send are built here and go straight to the NIC, as ARP's do (they
// pass no netfilter hook).

// NDP's drop reasons are the neighbour layer's, as ARP's are (info.go).
func init() {
	buf.SetDropLayer("neigh", DropNDPInvalid, DropNDPHopLimit, DropNDPBadCode, DropNDPIgnored)
}

// RcvNDP is ndisc_rcv: it processes a Neighbor Solicitation or
// Advertisement, Router Solicitation or Advertisement, or Redirect that
// arrived on nic. It consumes skb, whose Bytes() start at the ICMPv6
// header and whose NetworkHeader() is the IPv6 header; the ICMPv6
// checksum was verified by the caller.
func (t *Table) RcvNDP(nic *dev.NIC, skb *buf.SKB) {
	ip, err := header.CheckIPv6(skb.NetworkHeader())
	b := skb.Bytes()
	if err != nil || len(b) < header.ICMPv6MinSize {
		t.ndpInvalid(skb, DropNDPInvalid)
		return
	}
	// RFC 4861 §6.1.1, §6.1.2, §7.1.1, §7.1.2, §8.1: "The IP Hop Limit
	// field has a value of 255, i.e., the packet could not possibly have
	// been forwarded by a router", and "ICMP Code is 0".
	if ip.HopLimit() != 255 {
		t.ndpInvalid(skb, DropNDPHopLimit)
		return
	}
	if b[1] != 0 {
		t.ndpInvalid(skb, DropNDPBadCode)
		return
	}
	switch b[0] {
	case header.ICMPv6NeighborSolicit:
		t.rcvNS(nic, skb, ip, b)
	case header.ICMPv6NeighborAdvert:
		t.rcvNA(nic, skb, ip, b)
	case header.ICMPv6RouterSolicit:
		t.rcvRS(nic, skb, ip, b)
	case header.ICMPv6RouterAdvert:
		// RFC 4861 §6.1.2: an RA comes from a link-local address. A
		// router does not configure itself from others' RAs (§6.2.7
		// lets it check them for consistency; we only count them).
		if _, err := header.CheckNDPRouterAdvert(b); err != nil || !ip.Src().IsLinkLocalUnicast() {
			t.ndpInvalid(skb, DropNDPInvalid)
			return
		}
		t.count(func(s *Stats) { s.NDPInRouterAdverts++ })
		skb.Free(DropNDPIgnored)
	case header.ICMPv6Redirect:
		// RFC 4861 §8.1: from a link-local source. §8.2: only hosts act on
		// Redirects; "A router MUST NOT update its routing tables upon
		// receipt of a Redirect". We never send one either.
		if _, err := header.CheckNDPRedirect(b); err != nil || !ip.Src().IsLinkLocalUnicast() {
			t.ndpInvalid(skb, DropNDPInvalid)
			return
		}
		t.count(func(s *Stats) { s.NDPInRedirects++ })
		skb.Free(DropNDPIgnored)
	default:
		t.ndpInvalid(skb, DropNDPInvalid)
	}
}

func (t *Table) count(fn func(*Stats)) {
	t.mu.Lock()
	fn(&t.stats)
	t.mu.Unlock()
}

func (t *Table) ndpInvalid(skb *buf.SKB, r buf.DropReason) {
	t.count(func(s *Stats) { s.NDPInErrors++ })
	skb.Free(r)
}

// rcvNS is ndisc_recv_ns (RFC 4861 §7.2.3, RFC 4862 §5.4.3).
func (t *Table) rcvNS(nic *dev.NIC, skb *buf.SKB, ip header.IPv6, b []byte) {
	ns, err := header.CheckNDPNeighborSolicit(b)
	if err != nil {
		t.ndpInvalid(skb, DropNDPInvalid)
		return
	}
	target, src, dst := ns.Target(), ip.Src(), ip.Dst()
	sll, hasSLL := ns.Options().SourceLinkAddr()
	// RFC 4861 §7.1.1: the target is not multicast; a solicitation from
	// the unspecified address (duplicate address detection) goes to a
	// solicited-node group and carries no Source Link-Layer option.
	dad := src.IsUnspecified()
	if !resolvable(target) || target.IsLoopback() || (dad && (!header.IsSolicitedNodeAddr(dst) || hasSLL)) {
		t.ndpInvalid(skb, DropNDPInvalid)
		return
	}
	t.count(func(s *Stats) { s.NDPInSolicits++ })
	ours := nic.HasAddress(target)
	if dad {
		// RFC 4862 §5.4.3: a probe for an address assigned to the
		// interface is answered, to the all-nodes group with S clear (RFC
		// 4861 §7.2.4), so the prober learns it is a duplicate. §5.4:
		// a probe for any other address is never claimed, proxy or not.
		if ours {
			t.count(func(s *Stats) { s.DADReplies++ })
			t.sendNA(nic, header.IPv6MulticastMAC(header.IPv6AllNodes), target, header.IPv6AllNodes, false, true, target)
		}
		skb.Consume()
		return
	}
	// "Am I the target?" — ours, or the proxy policy's (RFC 4861 §7.2.8),
	// which speaks only for off-link unicast addresses of an IPv6 NIC and
	// never for the solicitor itself.
	proxied := false
	if !ours && target != src && !target.IsLinkLocalUnicast() && hasIPv6(nic) {
		t.mu.Lock()
		proxy := t.proxy[nic.ID()]
		t.mu.Unlock()
		proxied = proxy != nil && proxy(target)
	}
	if !ours && !proxied {
		skb.Consume() // §7.2.3: "silently discard"
		return
	}
	// §7.2.3: the solicitor's link-layer address creates or updates its
	// entry (STALE when new or changed).
	var q buf.Queue
	var l2 header.MAC
	t.mu.Lock()
	if hasSLL && !nic.HasAddress(src) {
		q = t.learnLocked(nic, src, sll, false, true)
	}
	if e := t.entries[key{nic.ID(), src}]; e != nil && e.state.valid() {
		l2 = e.mac
	}
	t.mu.Unlock()
	if hasSLL {
		l2 = sll
	}
	if l2.IsZero() {
		// A unicast NUD probe may omit the option (§7.2.2) and we may
		// hold no entry: on our point-to-point links the frame's sender
		// is the solicitor, so answer its Ethernet source rather than
		// resolving first as §7.2.4 would.
		if eth, err := header.CheckEthernet(skb.MACHeader()); err == nil {
			l2 = eth.Src()
		}
	}
	t.flush(nic, sll, header.EtherTypeIPv6, &q)
	if l2.IsZero() || l2.IsMulticast() {
		skb.Consume()
		return
	}
	// §7.2.4: a solicited advertisement to the solicitor, Override set
	// unless we answer as a proxy (§7.2.8: "the Override flag SHOULD be
	// set to zero"), from the target when it is ours.
	naSrc := target
	if !ours {
		var ok bool
		if naSrc, ok = source6(nic, netip.Addr{}); !ok {
			skb.Consume()
			return
		}
	}
	t.sendNA(nic, l2, naSrc, src, true, !proxied, target)
	skb.Consume()
}

// rcvNA is ndisc_recv_na (RFC 4861 §7.2.5).
func (t *Table) rcvNA(nic *dev.NIC, skb *buf.SKB, ip header.IPv6, b []byte) {
	na, err := header.CheckNDPNeighborAdvert(b)
	if err != nil {
		t.ndpInvalid(skb, DropNDPInvalid)
		return
	}
	target := na.Target()
	// §7.1.2: the target is not multicast; an advertisement to a
	// multicast address is not solicited.
	if !resolvable(target) || target.IsLoopback() || (ip.Dst().IsMulticast() && na.Solicited()) {
		t.ndpInvalid(skb, DropNDPInvalid)
		return
	}
	// Counted when processed, so a reader of the counter sees its effect.
	defer t.count(func(s *Stats) { s.NDPInAdverts++ })
	if nic.HasAddress(target) {
		// RFC 4862 §5.4.4: another node advertises one of our
		// (non-tentative) addresses: a duplicate, which we count.
		t.count(func(s *Stats) { s.DADConflicts++ })
		skb.Consume()
		return
	}
	tll, hasTLL := na.Options().TargetLinkAddr()
	t.mu.Lock()
	e := t.entries[key{nic.ID(), target}]
	if e == nil || e.state == Permanent {
		// §7.2.5: "If no entry exists, the advertisement SHOULD be
		// silently discarded."
		t.mu.Unlock()
		skb.Consume()
		return
	}
	var q buf.Queue
	now := t.clk.Now()
	switch {
	case !e.state.valid():
		// INCOMPLETE (or FAILED, which restarts as INCOMPLETE): "If the
		// advertisement's Solicited flag is set, the state of the entry
		// is set to REACHABLE; otherwise, it is set to STALE." Without a
		// target link-layer address there is nothing to record.
		if !hasTLL {
			t.mu.Unlock()
			skb.Consume()
			return
		}
		e.mac = tll
		if na.Solicited() {
			t.reachableLocked(e, now)
		} else {
			t.staleLocked(e)
		}
		q = e.pending.TakeAll()
	case !na.Override() && hasTLL && tll != e.mac:
		// "If the Override flag is clear and the supplied link-layer
		// address differs from that in the cache, then ... if the state
		// of the entry is REACHABLE, set it to STALE, but do not update
		// the entry in any other way"; otherwise ignore it.
		if e.state == Reachable {
			t.staleLocked(e)
		}
	default:
		// "If the Override flag is set, or the supplied link-layer
		// address is the same as that in the cache, or no Target
		// Link-Layer Address option was supplied": record a new address;
		// Solicited → REACHABLE, else a changed address → STALE.
		updated := hasTLL && tll != e.mac
		if updated {
			e.mac = tll
		}
		if na.Solicited() {
			t.reachableLocked(e, now)
		} else if updated {
			t.staleLocked(e)
		}
	}
	mac := e.mac
	t.mu.Unlock()
	t.flush(nic, mac, header.EtherTypeIPv6, &q)
	skb.Consume()
}

// staleLocked moves e to Stale: usable, unconfirmed, no timer.
func (t *Table) staleLocked(e *entry) {
	e.state = Stale
	e.probes = 0
	e.timer.Stop()
}

// rcvRS is ndisc_router_discovery's solicitation side (RFC 4861 §6.2.6).
func (t *Table) rcvRS(nic *dev.NIC, skb *buf.SKB, ip header.IPv6, b []byte) {
	rs, err := header.CheckNDPRouterSolicit(b)
	if err != nil {
		t.ndpInvalid(skb, DropNDPInvalid)
		return
	}
	src := ip.Src()
	sll, hasSLL := rs.Options().SourceLinkAddr()
	// §6.1.1: "If the IP source address is the unspecified address, there
	// is no source link-layer address option in the message."
	if src.IsUnspecified() && hasSLL {
		t.ndpInvalid(skb, DropNDPInvalid)
		return
	}
	var q buf.Queue
	t.mu.Lock()
	t.stats.NDPInRouterSolicits++
	// §6.2.6: "Router Solicitations in which the Source Address is the
	// unspecified address MUST NOT update the router's Neighbor Cache";
	// others with a source link-layer option SHOULD create or update it.
	if hasSLL && !src.IsUnspecified() && !nic.HasAddress(src) {
		q = t.learnLocked(nic, src, sll, false, true)
	}
	t.mu.Unlock()
	t.flush(nic, sll, header.EtherTypeIPv6, &q)
	t.solicitedRA(nic)
	skb.Consume()
}

// hasIPv6 reports whether nic has an IPv6 address: NDP speaks only on
// such a NIC.
func hasIPv6(nic *dev.NIC) bool {
	for _, p := range nic.Addresses() {
		if p.Addr().Is6() {
			return true
		}
	}
	return false
}

// source6 picks the source of an NDP message on nic: hint when it is one
// of nic's IPv6 addresses (RFC 4861 §7.2.2: the source of the packet that
// prompted a solicitation), else nic's link-local address, else its first
// IPv6 address.
func source6(nic *dev.NIC, hint netip.Addr) (netip.Addr, bool) {
	if hint.Is6() && nic.HasAddress(hint) {
		return hint, true
	}
	var first netip.Addr
	for _, p := range nic.Addresses() {
		a := p.Addr()
		if !a.Is6() {
			continue
		}
		if a.IsLinkLocalUnicast() {
			return a, true
		}
		if !first.IsValid() {
			first = a
		}
	}
	return first, first.IsValid()
}

// linkLocal6 is nic's link-local address, the source of Router
// Advertisements (RFC 4861 §4.2).
func linkLocal6(nic *dev.NIC) (netip.Addr, bool) {
	for _, p := range nic.Addresses() {
		if p.Addr().IsLinkLocalUnicast() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// solicit6 is ndisc_solicit: a Neighbor Solicitation for r.target, to its
// solicited-node group while resolving (RFC 4861 §7.2.2) or to the cached
// address when probing reachability (§7.3.3), with our link-layer
// address. A NIC without IPv6 addresses cannot solicit (only duplicate
// address detection speaks from ::): the entry then fails as unanswered.
func (t *Table) solicit6(r request) {
	src, ok := source6(r.nic, r.srcHint)
	if !ok {
		return
	}
	dst, mac := header.SolicitedNodeAddr(r.target), header.IPv6MulticastMAC(header.SolicitedNodeAddr(r.target))
	if r.unicast {
		dst, mac = r.target, r.dstMAC
	}
	f := header.NDPNeighborSolicitFields{Target: r.target, Options: header.NDPOptionFields{SourceLinkAddr: r.nic.MAC()}}
	skb, msg := ndpSKB(f.Len(), src, dst)
	header.NDPNeighborSolicit(msg).Encode(&f)
	t.xmitNDP(r.nic, mac, skb, src, dst)
	t.count(func(s *Stats) { s.NDPOutSolicits++ })
}

// sendNA sends a Neighbor Advertisement for target from src to dst (at
// link address l2) with our link-layer address (RFC 4861 §7.2.4), the
// Router flag when we route.
func (t *Table) sendNA(nic *dev.NIC, l2 header.MAC, src, dst netip.Addr, solicited, override bool, target netip.Addr) {
	f := header.NDPNeighborAdvertFields{Router: t.router.Load(), Solicited: solicited, Override: override, Target: target,
		Options: header.NDPOptionFields{TargetLinkAddr: nic.MAC()}}
	skb, msg := ndpSKB(f.Len(), src, dst)
	header.NDPNeighborAdvert(msg).Encode(&f)
	t.xmitNDP(nic, l2, skb, src, dst)
	t.count(func(s *Stats) { s.NDPOutAdverts++ })
}

// announce6 announces a new IPv6 address with one unsolicited Neighbor
// Advertisement to all nodes, Override set (RFC 4861 §7.2.6: a node MAY
// send unsolicited advertisements; the IPv6 twin of our gratuitous ARP).
// The stack does not perform duplicate address detection on its own
// addresses (RFC 4862 §5.1, DupAddrDetectTransmits = 0): they come from
// IPAM, which hands each out once.
func (t *Table) announce6(nic *dev.NIC, a netip.Addr) {
	if !a.Is6() || a.IsMulticast() || a.Is4In6() {
		return
	}
	t.sendNA(nic, header.IPv6MulticastMAC(header.IPv6AllNodes), a, header.IPv6AllNodes, false, true, a)
}

// ndpSKB allocates an SKB holding an IPv6 header from src to dst with hop
// limit 255 (RFC 4861: every NDP message) and an ICMPv6 message of n
// bytes, returned for the caller to encode.
func ndpSKB(n int, src, dst netip.Addr) (*buf.SKB, []byte) {
	skb := buf.Alloc(buf.MaxHeadroom, header.IPv6MinSize+n)
	p := skb.Put(header.IPv6MinSize + n)
	header.IPv6(p).Encode(header.IPv6Fields{PayloadLen: uint16(n), NextHeader: header.ProtoICMPv6, HopLimit: 255, Src: src, Dst: dst})
	skb.SetNetworkHeader()
	skb.Protocol = uint16(header.EtherTypeIPv6)
	return skb, p[header.IPv6MinSize:]
}

// xmitNDP completes the ICMPv6 checksum and hands the message to the NIC.
func (t *Table) xmitNDP(nic *dev.NIC, l2 header.MAC, skb *buf.SKB, src, dst netip.Addr) {
	header.ICMPv6(skb.Bytes()[header.IPv6MinSize:]).SetChecksum(src, dst)
	nic.HardHeader(skb, l2, header.EtherTypeIPv6)
	nic.Xmit(skb)
}
