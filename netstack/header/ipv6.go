package header

import (
	"encoding/binary"
	"net/netip"
)

// IPv6 sizes (RFC 8200 §3, §5).
const (
	// IPv6MinSize is the fixed IPv6 header.
	IPv6MinSize = 40
	// IPv6MinMTU is the minimum link MTU: "every link in the Internet
	// have an MTU of 1280 octets or greater" (RFC 8200 §5).
	IPv6MinMTU = 1280
	// IPv6MaxPayload is the largest payload length without a jumbogram.
	IPv6MaxPayload = 0xffff
)

// IPv6 next-header values (IANA protocol numbers; include/net/ipv6.h
// NEXTHDR_*). The transports (ProtoTCP, ProtoUDP) share IPv4's numbers.
const (
	ProtoHopByHop     uint8 = 0
	ProtoRouting      uint8 = 43
	ProtoFragment     uint8 = 44
	ProtoESP          uint8 = 50
	ProtoAH           uint8 = 51
	ProtoICMPv6       uint8 = 58
	ProtoNoNextHeader uint8 = 59
	ProtoDestOpts     uint8 = 60
	ProtoMobility     uint8 = 135
	ProtoHIP          uint8 = 139
	ProtoShim6        uint8 = 140
)

// IPv6 is an RFC 8200 packet, header then payload:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version| Traffic Class |           Flow Label                  |  0
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Payload Length        |  Next Header  |   Hop Limit   |  4
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |  8
//	+                         Source Address                        +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               | 24
//	+                      Destination Address                      +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The payload length counts everything after the 40-byte header,
// extension headers included. There is no header checksum.
type IPv6 []byte

const (
	ip6VerTCFL  = 0
	ip6PayLen   = 4
	ip6NextHdr  = 6
	ip6HopLimit = 7
	ip6Src      = 8
	ip6Dst      = 24
	ip6FlowMask = 0x000fffff
	ip6TCShift  = 20
	ip6VerShift = 28
)

// IPv6NextHeaderOffset is the offset of the Next Header field in the
// fixed header: the pointer of a Parameter Problem about it.
const IPv6NextHeaderOffset = ip6NextHdr

// IPv6PayloadLenOffset is the offset of the Payload Length field (RFC
// 8200 §4.5 points Parameter Problems about fragment lengths at it).
const IPv6PayloadLenOffset = ip6PayLen

// CheckIPv6 validates the fixed header of b (ip6_rcv_core's checks):
// version 6, 40 bytes, 40 + payload length <= len(b). b may be longer
// (Ethernet padding): Payload stops at the payload length. Jumbograms
// (RFC 2675: payload length 0 with a Jumbo option) are not supported: a
// zero payload length is an empty payload. Extension headers are not
// looked at here (CheckIPv6ExtHeader and friends).
func CheckIPv6(b []byte) (IPv6, error) {
	if len(b) < IPv6MinSize {
		return nil, ErrTruncated
	}
	if b[ip6VerTCFL]>>4 != 6 {
		return nil, ErrBadVersion
	}
	if IPv6MinSize+int(binary.BigEndian.Uint16(b[ip6PayLen:])) > len(b) {
		return nil, ErrBadTotalLen
	}
	return IPv6(b), nil
}

// TrafficClass is the 8-bit traffic class (DSCP and ECN, RFC 2474/3168).
func (h IPv6) TrafficClass() uint8 {
	return uint8(binary.BigEndian.Uint32(h[ip6VerTCFL:]) >> ip6TCShift)
}

// FlowLabel is the 20-bit flow label (RFC 6437).
func (h IPv6) FlowLabel() uint32 { return binary.BigEndian.Uint32(h[ip6VerTCFL:]) & ip6FlowMask }

// PayloadLen is the payload length field.
func (h IPv6) PayloadLen() int { return int(binary.BigEndian.Uint16(h[ip6PayLen:])) }

// TotalLen is 40 plus the payload length.
func (h IPv6) TotalLen() int { return IPv6MinSize + h.PayloadLen() }

// NextHeader is the type of the header after this one.
func (h IPv6) NextHeader() uint8 { return h[ip6NextHdr] }

// HopLimit is the hop limit.
func (h IPv6) HopLimit() uint8 { return h[ip6HopLimit] }

// Src is the source address (no allocation).
func (h IPv6) Src() netip.Addr { return netip.AddrFrom16([16]byte(h[ip6Src : ip6Src+16])) }

// Dst is the destination address (no allocation).
func (h IPv6) Dst() netip.Addr { return netip.AddrFrom16([16]byte(h[ip6Dst : ip6Dst+16])) }

// Payload is the bytes after the fixed header up to the payload length,
// clamped to the view.
func (h IPv6) Payload() []byte {
	end := min(h.TotalLen(), len(h))
	return h[IPv6MinSize:end]
}

// SetHopLimit stores the hop limit (no checksum to update).
func (h IPv6) SetHopLimit(v uint8) { h[ip6HopLimit] = v }

// SetNextHeader stores the next header value.
func (h IPv6) SetNextHeader(v uint8) { h[ip6NextHdr] = v }

// SetPayloadLen stores n (0..65535).
func (h IPv6) SetPayloadLen(n int) { binary.BigEndian.PutUint16(h[ip6PayLen:], uint16(n)) }

// SetTrafficClass stores tc, keeping version and flow label.
func (h IPv6) SetTrafficClass(tc uint8) {
	v := binary.BigEndian.Uint32(h[ip6VerTCFL:])
	v = v&^(0xff<<ip6TCShift) | uint32(tc)<<ip6TCShift
	binary.BigEndian.PutUint32(h[ip6VerTCFL:], v)
}

// SetSrc stores a; the transport checksum covers it (NAT updates it with
// ChecksumUpdateAddr).
func (h IPv6) SetSrc(a netip.Addr) { b := a.As16(); copy(h[ip6Src:], b[:]) }

// SetDst stores a.
func (h IPv6) SetDst(a netip.Addr) { b := a.As16(); copy(h[ip6Dst:], b[:]) }

// IPv6Fields is the decoded fixed header.
type IPv6Fields struct {
	TrafficClass uint8
	FlowLabel    uint32 // 20 bits; higher bits are dropped by Encode
	PayloadLen   uint16
	NextHeader   uint8
	HopLimit     uint8
	Src, Dst     netip.Addr
}

// Fields decodes the fixed header.
func (h IPv6) Fields() IPv6Fields {
	return IPv6Fields{TrafficClass: h.TrafficClass(), FlowLabel: h.FlowLabel(), PayloadLen: uint16(h.PayloadLen()),
		NextHeader: h.NextHeader(), HopLimit: h.HopLimit(), Src: h.Src(), Dst: h.Dst()}
}

// Encode writes the 40-byte fixed header; h must hold IPv6MinSize bytes.
// An address that is not IPv6 (or IPv4-mapped, which As16 keeps) encodes
// as :: so encoders never panic on a zero netip.Addr.
func (h IPv6) Encode(f IPv6Fields) {
	_ = h[IPv6MinSize-1]
	binary.BigEndian.PutUint32(h[ip6VerTCFL:], 6<<ip6VerShift|uint32(f.TrafficClass)<<ip6TCShift|f.FlowLabel&ip6FlowMask)
	binary.BigEndian.PutUint16(h[ip6PayLen:], f.PayloadLen)
	h[ip6NextHdr] = f.NextHeader
	h[ip6HopLimit] = f.HopLimit
	src, dst := addr16(f.Src), addr16(f.Dst)
	copy(h[ip6Src:], src[:])
	copy(h[ip6Dst:], dst[:])
}

// addr16 is a's 16 bytes, zero for an invalid or IPv4 address.
func addr16(a netip.Addr) [16]byte {
	if a.Is6() {
		return a.As16()
	}
	return [16]byte{}
}

// Address helpers (RFC 4291).

// IPv6AllNodes is ff02::1, the link-local all-nodes group (RFC 4291 §2.7.1).
var IPv6AllNodes = netip.MustParseAddr("ff02::1")

// IPv6AllRouters is ff02::2, the link-local all-routers group.
var IPv6AllRouters = netip.MustParseAddr("ff02::2")

// SolicitedNodeAddr is the solicited-node multicast address of a (RFC
// 4291 §2.7.1): ff02::1:ff00:0/104 with the low 24 bits of a.
func SolicitedNodeAddr(a netip.Addr) netip.Addr {
	b := addr16(a)
	return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// IsSolicitedNodeAddr reports whether a is in ff02::1:ff00:0/104.
func IsSolicitedNodeAddr(a netip.Addr) bool {
	if !a.Is6() {
		return false
	}
	b := a.As16()
	return b == [16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]}
}

// IPv6MulticastMAC maps an IPv6 multicast address to its Ethernet group
// address (RFC 2464 §7): 33:33 followed by the last four octets.
func IPv6MulticastMAC(a netip.Addr) MAC {
	b := addr16(a)
	return MAC{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// LinkLocalFromMAC is the link-local address fe80::/64 whose interface
// identifier is the modified EUI-64 of mac (RFC 4291 §2.5.6, Appendix A;
// RFC 2464 §4, §5): the MAC split by ff:fe with the universal/local bit
// inverted.
func LinkLocalFromMAC(mac MAC) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfe, 0x80,
		8: mac[0] ^ 0x02, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]})
}

// IsIPv4Mapped reports whether a is an IPv4-mapped IPv6 address
// (::ffff:0:0/96, RFC 4291 §2.5.5.2), which must never appear on the
// wire in an IPv6 header.
func IsIPv4Mapped(a netip.Addr) bool { return a.Is4In6() }
