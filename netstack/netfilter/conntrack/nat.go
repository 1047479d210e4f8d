package conntrack

import (
	"encoding/binary"
	"net/netip"
)

// Manip is which end of a flow NAT rewrites (enum nf_nat_manip_type).
type Manip uint8

const (
	ManipSrc Manip = iota // SNAT, MASQUERADE: at POSTROUTING and INPUT
	ManipDst              // DNAT, REDIRECT: at PREROUTING and OUTPUT
)

// Range is a NAT target (struct nf_nat_range2): an address range and,
// with Ports set, a port range. The zero port range keeps ports where it
// can and otherwise picks from the class of the original port.
type Range struct {
	Min, Max         netip.Addr
	MinPort, MaxPort uint16
	Ports            bool
}

// Done reports whether c already has a binding (or a null binding) for m
// (nf_nat_initialized).
func (c *Conn) Done(m Manip) bool {
	if m == ManipSrc {
		return c.status.Load()&StatusSrcNATDone != 0
	}
	return c.status.Load()&StatusDstNATDone != 0
}

// Translated reports whether c's manip m changes packets.
func (c *Conn) Translated(m Manip) bool {
	if m == ManipSrc {
		return c.status.Load()&StatusSrcNAT != 0
	}
	return c.status.Load()&StatusDstNAT != 0
}

// NullBinding records that no rule translated m for c, so later packets
// skip the NAT rules (nf_nat_alloc_null_binding).
func (t *Table) NullBinding(c *Conn, m Manip) {
	if m == ManipSrc {
		c.status.Or(StatusSrcNATDone)
	} else {
		c.status.Or(StatusDstNATDone)
	}
}

// BindNAT translates c's m end into r (nf_nat_setup_info): it picks an
// address and port in r such that the resulting reply tuple belongs to no
// other flow, and rekeys the reply tuple. Without a free tuple it returns
// ErrNoTuple and c is unchanged.
func (t *Table) BindNAT(c *Conn, m Manip, r Range) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.Done(m) {
		return nil
	}
	reply, ok := t.uniqueLocked(c, m, r)
	if !ok {
		t.insertFailed.Add(1)
		return ErrNoTuple
	}
	if t.slots[c.id] == c {
		delete(t.hash, c.Tuple(Reply))
		t.hash[reply] = tupleRef{c, Reply}
	}
	c.reply.Store(&reply)
	if m == ManipSrc {
		c.status.Or(StatusSrcNATDone)
		if reply.Dst != c.orig.Src || reply.DstPort != c.orig.SrcPort ||
			(isICMP(reply.Proto) && reply.SrcPort != c.orig.SrcPort) {
			c.status.Or(StatusSrcNAT)
		}
	} else {
		c.status.Or(StatusDstNATDone)
		if reply.Src != c.orig.Dst || reply.SrcPort != c.orig.DstPort {
			c.status.Or(StatusDstNAT)
		}
	}
	return nil
}

// uniqueLocked is get_unique_tuple: the reply tuple c gets when its m end
// becomes an address/port of r, unused by any other flow. t.mu held.
func (t *Table) uniqueLocked(c *Conn, m Manip, r Range) (Tuple, bool) {
	cur := c.Tuple(Reply).Reverse() // the original direction as it leaves us
	addr := pickAddr(cur, m, r)
	hasPort := hasPorts(cur.Proto)
	var orig uint16
	if hasPort {
		orig = curPort(cur, m)
	}
	free := func(port uint16) (Tuple, bool) {
		n := cur
		if m == ManipSrc {
			n.Src = addr
		} else {
			n.Dst = addr
		}
		if hasPort {
			setPort(&n, m, port)
		}
		rep := n.Reverse()
		if o, taken := t.hash[rep]; taken && o.c != c {
			return rep, false
		}
		return rep, true
	}
	if !hasPort {
		return free(0)
	}
	lo, hi := r.MinPort, r.MaxPort
	if !r.Ports {
		// nf_nat_l4proto_unique_tuple without a range: the original
		// port if it is free, else one of its class.
		if rep, ok := free(orig); ok {
			return rep, true
		}
		lo, hi = portClass(cur.Proto, orig)
	} else if lo > hi {
		lo, hi = hi, lo
	}
	if r.Ports && orig >= lo && orig <= hi {
		if rep, ok := free(orig); ok {
			return rep, true
		}
	}
	size := uint32(hi-lo) + 1
	off := portHash(cur) % size
	for i := uint32(0); i < size && i < maxPortTries; i++ {
		p := lo + uint16((off+i)%size)
		if rep, ok := free(p); ok {
			return rep, true
		}
	}
	return Tuple{}, false
}

// portClass is the range a port is remapped within when no range was
// given: privileged ports stay privileged (nf_nat_l4proto_unique_tuple).
// An ICMP identifier may be any value.
func portClass(proto uint8, p uint16) (uint16, uint16) {
	switch {
	case isICMP(proto):
		return 0, 0xffff
	case p < 512:
		return 1, 511
	case p < 1024:
		return 600, 1023
	}
	return 1024, 0xffff
}

func curPort(t Tuple, m Manip) uint16 {
	if m == ManipSrc || isICMP(t.Proto) {
		return t.SrcPort
	}
	return t.DstPort
}

// setPort writes the manipulated port; an ICMP query's identifier is only
// changed by source NAT (nf_nat_proto's icmp_manip_pkt).
func setPort(t *Tuple, m Manip, p uint16) {
	switch {
	case isICMP(t.Proto):
		if m == ManipSrc {
			t.SrcPort = p
		}
	case m == ManipSrc:
		t.SrcPort = p
	default:
		t.DstPort = p
	}
}

// pickAddr chooses within r by a hash of the flow's addresses, so one
// client keeps one translated address (find_best_ips_proto).
func pickAddr(t Tuple, m Manip, r Range) netip.Addr {
	if !r.Min.IsValid() {
		if m == ManipSrc {
			return t.Src
		}
		return t.Dst
	}
	if !r.Max.IsValid() || r.Max == r.Min {
		return r.Min
	}
	if r.Min.Is6() && r.Max.Is6() {
		return pickAddr6(t, r)
	}
	if !r.Min.Is4() || !r.Max.Is4() || !t.Src.Is4() || !t.Dst.Is4() {
		return r.Min
	}
	a, b := r.Min.As4(), r.Max.As4()
	lo, hi := binary.BigEndian.Uint32(a[:]), binary.BigEndian.Uint32(b[:])
	if hi < lo {
		lo, hi = hi, lo
	}
	s, d := t.Src.As4(), t.Dst.As4()
	h := mix32(binary.BigEndian.Uint32(s[:]), binary.BigEndian.Uint32(d[:]))
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], lo+h%(hi-lo+1))
	return netip.AddrFrom4(out)
}

func portHash(t Tuple) uint32 {
	return mix32(foldAddr(t.Src)^uint32(t.SrcPort), foldAddr(t.Dst)^uint32(t.DstPort)<<16)
}

// foldAddr is an address's words XORed together, for either family.
func foldAddr(a netip.Addr) uint32 {
	if a.Is4() {
		b := a.As4()
		return binary.BigEndian.Uint32(b[:])
	}
	b := a.As16()
	return binary.BigEndian.Uint32(b[0:]) ^ binary.BigEndian.Uint32(b[4:]) ^ binary.BigEndian.Uint32(b[8:]) ^ binary.BigEndian.Uint32(b[12:])
}

// pickAddr6 picks within an IPv6 range whose ends share their top 64
// bits (a range wider than a /64 takes its first address), by the same
// hash as IPv4.
func pickAddr6(t Tuple, r Range) netip.Addr {
	a, b := r.Min.As16(), r.Max.As16()
	if [8]byte(a[:8]) != [8]byte(b[:8]) {
		return r.Min
	}
	lo, hi := binary.BigEndian.Uint64(a[8:]), binary.BigEndian.Uint64(b[8:])
	if hi < lo {
		lo, hi = hi, lo
	}
	h := uint64(mix32(foldAddr(t.Src), foldAddr(t.Dst)))
	v := lo
	if hi-lo < ^uint64(0) {
		v = lo + h%(hi-lo+1)
	}
	binary.BigEndian.PutUint64(a[8:], v)
	return netip.AddrFrom16(a)
}

func mix32(a, b uint32) uint32 {
	h := a*0x9e3779b1 ^ b
	h ^= h >> 15
	h *= 0x85ebca6b
	h ^= h >> 13
	return h
}
