package header

import (
	"encoding/binary"
	"net/netip"
)

// Neighbor Discovery messages (RFC 4861 §4). Each is an ICMPv6 message;
// the views below span the whole message, ICMPv6 header included, so the
// ICMPv6 view's checksum methods apply to them unchanged. Options follow
// the fixed part (§4.6):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Type      |    Length     |              ...              |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Length counts 8-octet units, type and length included; 0 is invalid.

// Fixed sizes of the NDP messages (ICMPv6 header included).
const (
	NDPRouterSolicitSize   = 8  // type, code, checksum, reserved
	NDPRouterAdvertSize    = 16 // + hop limit, flags, lifetime, reachable, retrans
	NDPNeighborSolicitSize = 24 // + target
	NDPNeighborAdvertSize  = 24 // flags + target
	NDPRedirectSize        = 40 // + target, destination
)

// NDP option types (RFC 4861 §4.6, RFC 8106 §5.1).
const (
	NDPOptSourceLinkAddr uint8 = 1
	NDPOptTargetLinkAddr uint8 = 2
	NDPOptPrefixInfo     uint8 = 3
	NDPOptRedirectedHdr  uint8 = 4
	NDPOptMTU            uint8 = 5
	NDPOptRDNSS          uint8 = 25
)

// Option sizes.
const (
	ndpLinkAddrOptSize = 8  // Ethernet: type, length, 6-byte MAC
	ndpPrefixOptSize   = 32 // RFC 4861 §4.6.2
	ndpMTUOptSize      = 8  // RFC 4861 §4.6.4
)

// NDPOptions is the option area of an NDP message.
type NDPOptions []byte

// CheckNDPOptions validates b as NDP options (RFC 4861 §4.6: "Nodes MUST
// silently discard an ND packet that contains an option with length
// zero"; an option past the end of the message is malformed too).
func CheckNDPOptions(b []byte) (NDPOptions, error) {
	if err := NDPOptions(b).Walk(nil); err != nil {
		return nil, err
	}
	return NDPOptions(b), nil
}

// Walk checks the options and, when fn is not nil, calls it with each
// option's type and body (the bytes after type and length) until fn
// returns false. It does not allocate.
func (o NDPOptions) Walk(fn func(typ uint8, body []byte) bool) error {
	for i := 0; i < len(o); {
		if i+2 > len(o) {
			return ErrBadOption
		}
		l := int(o[i+1]) * 8
		if l == 0 || i+l > len(o) {
			return ErrBadOption
		}
		if fn != nil && !fn(o[i], o[i+2:i+l]) {
			fn = nil
		}
		i += l
	}
	return nil
}

// find returns the body of the first option of type typ.
func (o NDPOptions) find(typ uint8) ([]byte, bool) {
	var body []byte
	found := false
	_ = o.Walk(func(t uint8, b []byte) bool {
		if t == typ {
			body, found = b, true
			return false
		}
		return true
	})
	return body, found
}

// linkAddr reads an Ethernet link-layer address option (RFC 4861 §4.6.1,
// RFC 2464 §6): the first 6 bytes of the body.
func (o NDPOptions) linkAddr(typ uint8) (MAC, bool) {
	b, ok := o.find(typ)
	if !ok || len(b) < 6 {
		return MAC{}, false
	}
	return MAC(b[:6]), true
}

// SourceLinkAddr is the Source Link-Layer Address option, if any.
func (o NDPOptions) SourceLinkAddr() (MAC, bool) { return o.linkAddr(NDPOptSourceLinkAddr) }

// TargetLinkAddr is the Target Link-Layer Address option, if any.
func (o NDPOptions) TargetLinkAddr() (MAC, bool) { return o.linkAddr(NDPOptTargetLinkAddr) }

// MTU is the MTU option's value (RFC 4861 §4.6.4), if any.
func (o NDPOptions) MTU() (uint32, bool) {
	b, ok := o.find(NDPOptMTU)
	if !ok || len(b) < 6 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b[2:]), true
}

// NDPPrefixInfo is a Prefix Information option (RFC 4861 §4.6.2).
type NDPPrefixInfo struct {
	Prefix            netip.Prefix // the length is the option's; host bits are kept as sent
	OnLink            bool         // L
	Autonomous        bool         // A (RFC 4862 SLAAC)
	ValidLifetime     uint32       // seconds, 0xffffffff = infinity
	PreferredLifetime uint32
}

// Prefixes returns the Prefix Information options; malformed ones (a
// body shorter than 30 bytes, a prefix length over 128) are skipped.
func (o NDPOptions) Prefixes() []NDPPrefixInfo {
	var out []NDPPrefixInfo
	_ = o.Walk(func(t uint8, b []byte) bool {
		if t != NDPOptPrefixInfo || len(b) < ndpPrefixOptSize-2 || b[0] > 128 {
			return true
		}
		a := netip.AddrFrom16([16]byte(b[14:30]))
		out = append(out, NDPPrefixInfo{
			Prefix: netip.PrefixFrom(a, int(b[0])), OnLink: b[1]&0x80 != 0, Autonomous: b[1]&0x40 != 0,
			ValidLifetime: binary.BigEndian.Uint32(b[2:]), PreferredLifetime: binary.BigEndian.Uint32(b[6:]),
		})
		return true
	})
	return out
}

// RDNSS returns the addresses and lifetime of the first Recursive DNS
// Server option (RFC 8106 §5.1), if any.
func (o NDPOptions) RDNSS() (addrs []netip.Addr, lifetime uint32, ok bool) {
	b, found := o.find(NDPOptRDNSS)
	if !found || len(b) < 6+16 {
		return nil, 0, false
	}
	lifetime = binary.BigEndian.Uint32(b[2:])
	for p := b[6:]; len(p) >= 16; p = p[16:] {
		addrs = append(addrs, netip.AddrFrom16([16]byte(p[:16])))
	}
	return addrs, lifetime, true
}

// NDPOptionFields are the options an encoder writes, in this order. A
// zero MAC or MTU, or an empty list, omits the option.
type NDPOptionFields struct {
	SourceLinkAddr MAC
	TargetLinkAddr MAC
	MTU            uint32
	Prefixes       []NDPPrefixInfo
	RDNSS          []netip.Addr
	RDNSSLifetime  uint32
}

// Len is the encoded length of the options.
func (f *NDPOptionFields) Len() int {
	n := 0
	if !f.SourceLinkAddr.IsZero() {
		n += ndpLinkAddrOptSize
	}
	if !f.TargetLinkAddr.IsZero() {
		n += ndpLinkAddrOptSize
	}
	if f.MTU != 0 {
		n += ndpMTUOptSize
	}
	n += len(f.Prefixes) * ndpPrefixOptSize
	if len(f.RDNSS) > 0 {
		n += 8 + 16*len(f.RDNSS)
	}
	return n
}

// encode writes the options into b (len(b) >= f.Len()) and returns the
// bytes written.
func (f *NDPOptionFields) encode(b []byte) int {
	n := 0
	lla := func(typ uint8, m MAC) {
		b[n], b[n+1] = typ, 1
		copy(b[n+2:n+8], m[:])
		n += ndpLinkAddrOptSize
	}
	if !f.SourceLinkAddr.IsZero() {
		lla(NDPOptSourceLinkAddr, f.SourceLinkAddr)
	}
	if !f.TargetLinkAddr.IsZero() {
		lla(NDPOptTargetLinkAddr, f.TargetLinkAddr)
	}
	if f.MTU != 0 {
		b[n], b[n+1], b[n+2], b[n+3] = NDPOptMTU, 1, 0, 0
		binary.BigEndian.PutUint32(b[n+4:], f.MTU)
		n += ndpMTUOptSize
	}
	for _, p := range f.Prefixes {
		o := b[n : n+ndpPrefixOptSize]
		o[0], o[1], o[2], o[3] = NDPOptPrefixInfo, 4, uint8(p.Prefix.Bits()), 0
		if p.OnLink {
			o[3] |= 0x80
		}
		if p.Autonomous {
			o[3] |= 0x40
		}
		binary.BigEndian.PutUint32(o[4:], p.ValidLifetime)
		binary.BigEndian.PutUint32(o[8:], p.PreferredLifetime)
		clear(o[12:16])
		a := addr16(p.Prefix.Addr())
		copy(o[16:], a[:])
		n += ndpPrefixOptSize
	}
	if len(f.RDNSS) > 0 {
		l := 8 + 16*len(f.RDNSS)
		b[n], b[n+1], b[n+2], b[n+3] = NDPOptRDNSS, uint8(l/8), 0, 0
		binary.BigEndian.PutUint32(b[n+4:], f.RDNSSLifetime)
		for i, a := range f.RDNSS {
			x := addr16(a)
			copy(b[n+8+16*i:], x[:])
		}
		n += l
	}
	return n
}

// optionFields decodes the options an encoder knows (the first of each
// link-layer address and MTU, every prefix, the first RDNSS).
func optionFields(o NDPOptions) NDPOptionFields {
	var f NDPOptionFields
	f.SourceLinkAddr, _ = o.SourceLinkAddr()
	f.TargetLinkAddr, _ = o.TargetLinkAddr()
	f.MTU, _ = o.MTU()
	f.Prefixes = o.Prefixes()
	f.RDNSS, f.RDNSSLifetime, _ = o.RDNSS()
	return f
}

// checkNDP validates an NDP message of fixed size min with options.
func checkNDP(b []byte, min int) error {
	if len(b) < min {
		return ErrTruncated
	}
	return NDPOptions(b[min:]).Walk(nil)
}

// NDPNeighborSolicit is a Neighbor Solicitation (RFC 4861 §4.3):
//
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Type      |     Code      |          Checksum             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                           Reserved                            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       Target Address (16)                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   Options ...
type NDPNeighborSolicit []byte

// CheckNDPNeighborSolicit validates b (an ICMPv6 message) as an NS.
func CheckNDPNeighborSolicit(b []byte) (NDPNeighborSolicit, error) {
	if err := checkNDP(b, NDPNeighborSolicitSize); err != nil {
		return nil, err
	}
	return NDPNeighborSolicit(b), nil
}

// Target is the address being solicited.
func (m NDPNeighborSolicit) Target() netip.Addr { return netip.AddrFrom16([16]byte(m[8:24])) }

// Options is the option area.
func (m NDPNeighborSolicit) Options() NDPOptions { return NDPOptions(m[NDPNeighborSolicitSize:]) }

// NDPNeighborSolicitFields is a decoded NS.
type NDPNeighborSolicitFields struct {
	Target  netip.Addr
	Options NDPOptionFields
}

// Fields decodes the message.
func (m NDPNeighborSolicit) Fields() NDPNeighborSolicitFields {
	return NDPNeighborSolicitFields{Target: m.Target(), Options: optionFields(m.Options())}
}

// Len is the encoded length.
func (f *NDPNeighborSolicitFields) Len() int { return NDPNeighborSolicitSize + f.Options.Len() }

// Encode writes the message, checksum zero (ICMPv6(m).SetChecksum next);
// m must hold f.Len() bytes.
func (m NDPNeighborSolicit) Encode(f *NDPNeighborSolicitFields) {
	ICMPv6(m).Encode(ICMPv6Fields{Type: ICMPv6NeighborSolicit})
	t := addr16(f.Target)
	copy(m[8:24], t[:])
	f.Options.encode(m[NDPNeighborSolicitSize:])
}

// NDPNeighborAdvert is a Neighbor Advertisement (RFC 4861 §4.4):
//
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Type      |     Code      |          Checksum             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|R|S|O|                     Reserved                            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       Target Address (16)                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   Options ...
type NDPNeighborAdvert []byte

// NA flag bits in byte 4.
const (
	ndpNARouter    = 0x80
	ndpNASolicited = 0x40
	ndpNAOverride  = 0x20
)

// CheckNDPNeighborAdvert validates b (an ICMPv6 message) as an NA.
func CheckNDPNeighborAdvert(b []byte) (NDPNeighborAdvert, error) {
	if err := checkNDP(b, NDPNeighborAdvertSize); err != nil {
		return nil, err
	}
	return NDPNeighborAdvert(b), nil
}

// Router is the R flag: the sender is a router.
func (m NDPNeighborAdvert) Router() bool { return m[4]&ndpNARouter != 0 }

// Solicited is the S flag: sent in response to an NS.
func (m NDPNeighborAdvert) Solicited() bool { return m[4]&ndpNASolicited != 0 }

// Override is the O flag: the advertised address should replace a cached one.
func (m NDPNeighborAdvert) Override() bool { return m[4]&ndpNAOverride != 0 }

// Target is the address whose link-layer address is advertised.
func (m NDPNeighborAdvert) Target() netip.Addr { return netip.AddrFrom16([16]byte(m[8:24])) }

// Options is the option area.
func (m NDPNeighborAdvert) Options() NDPOptions { return NDPOptions(m[NDPNeighborAdvertSize:]) }

// NDPNeighborAdvertFields is a decoded NA.
type NDPNeighborAdvertFields struct {
	Router, Solicited, Override bool
	Target                      netip.Addr
	Options                     NDPOptionFields
}

// Fields decodes the message.
func (m NDPNeighborAdvert) Fields() NDPNeighborAdvertFields {
	return NDPNeighborAdvertFields{Router: m.Router(), Solicited: m.Solicited(), Override: m.Override(),
		Target: m.Target(), Options: optionFields(m.Options())}
}

// Len is the encoded length.
func (f *NDPNeighborAdvertFields) Len() int { return NDPNeighborAdvertSize + f.Options.Len() }

// Encode writes the message, checksum zero; m must hold f.Len() bytes.
func (m NDPNeighborAdvert) Encode(f *NDPNeighborAdvertFields) {
	var flags uint32
	if f.Router {
		flags |= ndpNARouter << 24
	}
	if f.Solicited {
		flags |= ndpNASolicited << 24
	}
	if f.Override {
		flags |= ndpNAOverride << 24
	}
	ICMPv6(m).Encode(ICMPv6Fields{Type: ICMPv6NeighborAdvert, RestOfHeader: flags})
	t := addr16(f.Target)
	copy(m[8:24], t[:])
	f.Options.encode(m[NDPNeighborAdvertSize:])
}

// NDPRouterSolicit is a Router Solicitation (RFC 4861 §4.1): the ICMPv6
// header, 4 reserved octets, options.
type NDPRouterSolicit []byte

// CheckNDPRouterSolicit validates b (an ICMPv6 message) as an RS.
func CheckNDPRouterSolicit(b []byte) (NDPRouterSolicit, error) {
	if err := checkNDP(b, NDPRouterSolicitSize); err != nil {
		return nil, err
	}
	return NDPRouterSolicit(b), nil
}

// Options is the option area.
func (m NDPRouterSolicit) Options() NDPOptions { return NDPOptions(m[NDPRouterSolicitSize:]) }

// NDPRouterAdvert is a Router Advertisement (RFC 4861 §4.2, RFC 4191 for
// the preference bits we leave at zero, "medium"):
//
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Type      |     Code      |          Checksum             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| Cur Hop Limit |M|O|  Reserved |       Router Lifetime         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                         Reachable Time                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                          Retrans Timer                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   Options ...
type NDPRouterAdvert []byte

// CheckNDPRouterAdvert validates b (an ICMPv6 message) as an RA.
func CheckNDPRouterAdvert(b []byte) (NDPRouterAdvert, error) {
	if err := checkNDP(b, NDPRouterAdvertSize); err != nil {
		return nil, err
	}
	return NDPRouterAdvert(b), nil
}

// CurHopLimit is the hop limit hosts should use (0: unspecified).
func (m NDPRouterAdvert) CurHopLimit() uint8 { return m[4] }

// Managed is the M flag (addresses by DHCPv6).
func (m NDPRouterAdvert) Managed() bool { return m[5]&0x80 != 0 }

// Other is the O flag (other configuration by DHCPv6).
func (m NDPRouterAdvert) Other() bool { return m[5]&0x40 != 0 }

// RouterLifetime is the default-router lifetime in seconds (0: not a
// default router).
func (m NDPRouterAdvert) RouterLifetime() uint16 { return binary.BigEndian.Uint16(m[6:]) }

// ReachableTime is in milliseconds (0: unspecified).
func (m NDPRouterAdvert) ReachableTime() uint32 { return binary.BigEndian.Uint32(m[8:]) }

// RetransTimer is in milliseconds (0: unspecified).
func (m NDPRouterAdvert) RetransTimer() uint32 { return binary.BigEndian.Uint32(m[12:]) }

// Options is the option area.
func (m NDPRouterAdvert) Options() NDPOptions { return NDPOptions(m[NDPRouterAdvertSize:]) }

// NDPRouterAdvertFields is a decoded RA.
type NDPRouterAdvertFields struct {
	CurHopLimit    uint8
	Managed, Other bool
	RouterLifetime uint16
	ReachableTime  uint32
	RetransTimer   uint32
	Options        NDPOptionFields
}

// Fields decodes the message.
func (m NDPRouterAdvert) Fields() NDPRouterAdvertFields {
	return NDPRouterAdvertFields{CurHopLimit: m.CurHopLimit(), Managed: m.Managed(), Other: m.Other(),
		RouterLifetime: m.RouterLifetime(), ReachableTime: m.ReachableTime(), RetransTimer: m.RetransTimer(),
		Options: optionFields(m.Options())}
}

// Len is the encoded length.
func (f *NDPRouterAdvertFields) Len() int { return NDPRouterAdvertSize + f.Options.Len() }

// Encode writes the message, checksum zero; m must hold f.Len() bytes.
func (m NDPRouterAdvert) Encode(f *NDPRouterAdvertFields) {
	ICMPv6(m).Encode(ICMPv6Fields{Type: ICMPv6RouterAdvert})
	m[4] = f.CurHopLimit
	m[5] = 0
	if f.Managed {
		m[5] |= 0x80
	}
	if f.Other {
		m[5] |= 0x40
	}
	binary.BigEndian.PutUint16(m[6:], f.RouterLifetime)
	binary.BigEndian.PutUint32(m[8:], f.ReachableTime)
	binary.BigEndian.PutUint32(m[12:], f.RetransTimer)
	f.Options.encode(m[NDPRouterAdvertSize:])
}

// NDPRedirect is a Redirect (RFC 4861 §4.5): the ICMPv6 header, 4
// reserved octets, Target Address, Destination Address, options. We
// parse it only (a router never acts on one; we send none).
type NDPRedirect []byte

// CheckNDPRedirect validates b (an ICMPv6 message) as a Redirect.
func CheckNDPRedirect(b []byte) (NDPRedirect, error) {
	if err := checkNDP(b, NDPRedirectSize); err != nil {
		return nil, err
	}
	return NDPRedirect(b), nil
}

// Target is the better first hop.
func (m NDPRedirect) Target() netip.Addr { return netip.AddrFrom16([16]byte(m[8:24])) }

// Destination is the destination being redirected.
func (m NDPRedirect) Destination() netip.Addr { return netip.AddrFrom16([16]byte(m[24:40])) }

// Options is the option area.
func (m NDPRedirect) Options() NDPOptions { return NDPOptions(m[NDPRedirectSize:]) }
