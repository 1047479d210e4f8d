package header

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 header sizes (RFC 791 §3.1): IHL counts 32-bit words, 5..15.
const (
	IPv4MinSize    = 20
	IPv4MaxSize    = 60
	IPv4MaxOptions = 40
)

// IP protocol numbers (IANA; include/uapi/linux/in.h IPPROTO_*).
const (
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
)

// IPv4 option types (RFC 791 §3.1; the copied flag is the top bit).
const (
	IPv4OptEOL         uint8 = 0
	IPv4OptNOP         uint8 = 1
	IPv4OptRR          uint8 = 7   // record route
	IPv4OptTimestamp   uint8 = 68  // RFC 791 internet timestamp
	IPv4OptLSRR        uint8 = 131 // loose source and record route
	IPv4OptSSRR        uint8 = 137 // strict source and record route
	IPv4OptRouterAlert uint8 = 148 // RFC 2113
)

// IPv4 flag bits as returned by Flags (RFC 791 §3.1 "Flags: 3 bits").
const (
	IPv4FlagMF uint8 = 1 << 0
	IPv4FlagDF uint8 = 1 << 1
)

// IPv4 is an RFC 791 datagram, header then payload:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version|  IHL  |Type of Service|          Total Length         |  0
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Identification        |Flags|      Fragment Offset    |  4
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Time to Live |    Protocol   |         Header Checksum       |  8
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       Source Address                          | 12
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Destination Address                        | 16
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Options                    |    Padding    | 20
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Flags: bit 0 reserved, bit 1 DF, bit 2 MF. The fragment offset counts
// 8-byte units; the accessors here speak bytes.
type IPv4 []byte

const (
	ipVerIHL   = 0
	ipTOS      = 1
	ipTotalLen = 2
	ipID       = 4
	ipFlagsOff = 6
	ipTTL      = 8
	ipProto    = 9
	ipCsum     = 10
	ipSrc      = 12
	ipDst      = 16

	ipDFBit   = 0x4000
	ipMFBit   = 0x2000
	ipOffMask = 0x1fff
)

// CheckIPv4 validates the header lengths of b (ip_rcv_core's checks, RFC
// 1122 §3.2.1.1-3.2.1.2): version 4, IHL >= 5, IHL*4 <= len(b),
// IHL*4 <= total length <= len(b), options well-formed. b may be longer
// than the total length (Ethernet padding): Payload stops at the total
// length. The header checksum is NOT verified: a packet whose checksum a
// peer vouches for (CsumUnnecessary) skips it; callers use ChecksumValid.
func CheckIPv4(b []byte) (IPv4, error) {
	if len(b) < IPv4MinSize {
		return nil, ErrTruncated
	}
	if b[ipVerIHL]>>4 != 4 {
		return nil, ErrBadVersion
	}
	hl := int(b[ipVerIHL]&0xf) * 4
	if hl < IPv4MinSize {
		return nil, ErrBadHeaderLen
	}
	if hl > len(b) {
		return nil, ErrTruncated
	}
	tl := int(binary.BigEndian.Uint16(b[ipTotalLen:]))
	if tl < hl || tl > len(b) {
		return nil, ErrBadTotalLen
	}
	if hl > IPv4MinSize {
		if err := WalkIPv4Options(b[IPv4MinSize:hl], nil); err != nil {
			return nil, err
		}
	}
	return IPv4(b), nil
}

// HeaderLen is IHL*4, in bytes.
func (h IPv4) HeaderLen() int { return int(h[ipVerIHL]&0xf) * 4 }

// TOS is the type-of-service octet (DSCP and ECN).
func (h IPv4) TOS() uint8 { return h[ipTOS] }

// TotalLen is the datagram length, header included.
func (h IPv4) TotalLen() int { return int(binary.BigEndian.Uint16(h[ipTotalLen:])) }

// ID is the identification field.
func (h IPv4) ID() uint16 { return binary.BigEndian.Uint16(h[ipID:]) }

// Flags is the 3-bit flags field: IPv4FlagDF, IPv4FlagMF, and 4 for the
// reserved bit (RFC 791: must be zero; not checked here).
func (h IPv4) Flags() uint8 { return h[ipFlagsOff] >> 5 }

// DF reports the Don't Fragment flag.
func (h IPv4) DF() bool { return binary.BigEndian.Uint16(h[ipFlagsOff:])&ipDFBit != 0 }

// MF reports the More Fragments flag.
func (h IPv4) MF() bool { return binary.BigEndian.Uint16(h[ipFlagsOff:])&ipMFBit != 0 }

// FragOffset is the fragment offset in bytes (the field times 8).
func (h IPv4) FragOffset() int {
	return int(binary.BigEndian.Uint16(h[ipFlagsOff:])&ipOffMask) * 8
}

// IsFragment reports whether the datagram is a fragment (MF set or a
// non-zero offset), ip_is_fragment.
func (h IPv4) IsFragment() bool {
	return binary.BigEndian.Uint16(h[ipFlagsOff:])&(ipMFBit|ipOffMask) != 0
}

// TTL is the time to live.
func (h IPv4) TTL() uint8 { return h[ipTTL] }

// Protocol is the payload's protocol number.
func (h IPv4) Protocol() uint8 { return h[ipProto] }

// Checksum is the stored header checksum.
func (h IPv4) Checksum() uint16 { return binary.BigEndian.Uint16(h[ipCsum:]) }

// Src is the source address (no allocation).
func (h IPv4) Src() netip.Addr { return netip.AddrFrom4([4]byte(h[ipSrc : ipSrc+4])) }

// Dst is the destination address (no allocation).
func (h IPv4) Dst() netip.Addr { return netip.AddrFrom4([4]byte(h[ipDst : ipDst+4])) }

// Options is the option bytes, padding included (bytes 20..IHL*4).
func (h IPv4) Options() []byte { return h[IPv4MinSize:h.HeaderLen()] }

// Payload is the bytes after the header up to the total length. If a
// setter made the total length exceed the view, it stops at the view's end.
func (h IPv4) Payload() []byte {
	hl, tl := h.HeaderLen(), h.TotalLen()
	if tl > len(h) {
		tl = len(h)
	}
	if tl < hl {
		return h[hl:hl]
	}
	return h[hl:tl]
}

// ChecksumValid verifies the header checksum (RFC 791 §3.1: the sum over
// the header, checksum included, is all ones).
func (h IPv4) ChecksumValid() bool {
	return Fold(Checksum(h[:h.HeaderLen()], 0)) == 0xffff
}

// SetChecksum computes and stores the header checksum.
func (h IPv4) SetChecksum() {
	h[ipCsum], h[ipCsum+1] = 0, 0
	binary.BigEndian.PutUint16(h[ipCsum:], ChecksumFinal(Checksum(h[:h.HeaderLen()], 0)))
}

// set16 stores v at off and updates the header checksum incrementally
// (RFC 1624 eqn. 3), so a valid checksum stays valid.
func (h IPv4) set16(off int, v uint16) {
	old := binary.BigEndian.Uint16(h[off:])
	binary.BigEndian.PutUint16(h[off:], v)
	binary.BigEndian.PutUint16(h[ipCsum:], ChecksumUpdate16(h.Checksum(), old, v))
}

// SetTTL stores ttl, updating the checksum incrementally (RFC 1624, as
// ip_decrease_ttl does on forward).
func (h IPv4) SetTTL(ttl uint8) {
	h.set16(ipTTL, uint16(ttl)<<8|uint16(h[ipProto]))
}

// SetTOS stores tos, updating the checksum incrementally.
func (h IPv4) SetTOS(tos uint8) {
	h.set16(ipVerIHL, uint16(h[ipVerIHL])<<8|uint16(tos))
}

// SetTotalLen stores n (0..65535), updating the checksum incrementally.
func (h IPv4) SetTotalLen(n int) { h.set16(ipTotalLen, uint16(n)) }

// SetID stores id, updating the checksum incrementally.
func (h IPv4) SetID(id uint16) { h.set16(ipID, id) }

// SetFragOffset stores the offset off (bytes, a multiple of 8) and the MF
// flag, keeping DF, updating the checksum incrementally.
func (h IPv4) SetFragOffset(off int, mf bool) {
	v := binary.BigEndian.Uint16(h[ipFlagsOff:]) &^ (ipMFBit | ipOffMask)
	v |= uint16(off/8) & ipOffMask
	if mf {
		v |= ipMFBit
	}
	h.set16(ipFlagsOff, v)
}

// SetDF sets or clears Don't Fragment, updating the checksum incrementally.
func (h IPv4) SetDF(df bool) {
	v := binary.BigEndian.Uint16(h[ipFlagsOff:]) &^ ipDFBit
	if df {
		v |= ipDFBit
	}
	h.set16(ipFlagsOff, v)
}

// SetSrc stores an IPv4 address, updating the checksum incrementally
// (SNAT). The transport checksum covers the address too: NAT updates it
// with ChecksumUpdateAddr.
func (h IPv4) SetSrc(a netip.Addr) { h.setAddr(ipSrc, a) }

// SetDst stores an IPv4 address, updating the checksum incrementally (DNAT).
func (h IPv4) SetDst(a netip.Addr) { h.setAddr(ipDst, a) }

func (h IPv4) setAddr(off int, a netip.Addr) {
	old := binary.BigEndian.Uint32(h[off:])
	b := addr4(a)
	v := binary.BigEndian.Uint32(b[:])
	binary.BigEndian.PutUint32(h[off:], v)
	binary.BigEndian.PutUint16(h[ipCsum:], ChecksumUpdate32(h.Checksum(), old, v))
}

// IPv4Fields is the decoded header.
type IPv4Fields struct {
	TOS        uint8
	TotalLen   uint16
	ID         uint16
	DF, MF     bool
	FragOffset uint16 // bytes, a multiple of 8
	TTL        uint8
	Protocol   uint8
	Src, Dst   netip.Addr
	Options    []byte // at most 40 bytes; padded with EOL to 4
}

// Fields decodes the header; Options aliases the view.
func (h IPv4) Fields() IPv4Fields {
	return IPv4Fields{
		TOS: h.TOS(), TotalLen: uint16(h.TotalLen()), ID: h.ID(), DF: h.DF(), MF: h.MF(),
		FragOffset: uint16(h.FragOffset()), TTL: h.TTL(), Protocol: h.Protocol(),
		Src: h.Src(), Dst: h.Dst(), Options: h.Options(),
	}
}

// IPv4HeaderLen is the header length Encode writes for options of n bytes.
func IPv4HeaderLen(n int) int { return IPv4MinSize + (n+3)&^3 }

// Encode writes the header, options (padded with EOL to a multiple of 4)
// and checksum. h must hold IPv4HeaderLen(len(f.Options)) bytes. Options
// longer than 40 bytes are a programming error and panic.
func (h IPv4) Encode(f IPv4Fields) {
	if len(f.Options) > IPv4MaxOptions {
		panic("header: IPv4 options longer than 40 bytes")
	}
	hl := IPv4HeaderLen(len(f.Options))
	_ = h[hl-1]
	h[ipVerIHL] = 4<<4 | uint8(hl/4)
	h[ipTOS] = f.TOS
	binary.BigEndian.PutUint16(h[ipTotalLen:], f.TotalLen)
	binary.BigEndian.PutUint16(h[ipID:], f.ID)
	v := (f.FragOffset / 8) & ipOffMask
	if f.DF {
		v |= ipDFBit
	}
	if f.MF {
		v |= ipMFBit
	}
	binary.BigEndian.PutUint16(h[ipFlagsOff:], v)
	h[ipTTL] = f.TTL
	h[ipProto] = f.Protocol
	src, dst := addr4(f.Src), addr4(f.Dst)
	copy(h[ipSrc:], src[:])
	copy(h[ipDst:], dst[:])
	n := copy(h[IPv4MinSize:hl], f.Options)
	clear(h[IPv4MinSize+n : hl])
	h.SetChecksum()
}

// IPv4Option is one option as ParseIPv4Options returns it; Data excludes
// the type and length octets and aliases the packet.
type IPv4Option struct {
	Type uint8
	Data []byte
}

// WalkIPv4Options checks the option bytes b (the header from byte 20 to
// IHL*4) and, when fn is not nil, calls it for every option other than
// EOL and NOP until fn returns false. It does not allocate.
//
// RFC 791 §3.1: an option is either a single octet (EOL, NOP) or type,
// length (counting type and length, so >= 2) and data. EOL ends the list;
// what follows is padding. A length below 2 or past the end of the
// options is ErrBadOption (RFC 1122 §3.2.1.8: an implementation MUST
// handle an illegal option length; Linux ip_options_compile drops the
// datagram with a parameter problem).
func WalkIPv4Options(b []byte, fn func(typ uint8, data []byte) bool) error {
	if len(b) > IPv4MaxOptions {
		return ErrBadOption
	}
	for i := 0; i < len(b); {
		switch t := b[i]; t {
		case IPv4OptEOL:
			return nil
		case IPv4OptNOP:
			i++
		default:
			if i+1 >= len(b) {
				return ErrBadOption
			}
			l := int(b[i+1])
			if l < 2 || i+l > len(b) {
				return ErrBadOption
			}
			if fn != nil && !fn(t, b[i+2:i+l]) {
				fn = nil // keep validating, stop reporting
			}
			i += l
		}
	}
	return nil
}

// ParseIPv4Options returns the options other than EOL and NOP. The result
// is bounded: 40 bytes hold at most 20 options.
func ParseIPv4Options(b []byte) ([]IPv4Option, error) {
	if err := WalkIPv4Options(b, nil); err != nil {
		return nil, err
	}
	var out []IPv4Option
	_ = WalkIPv4Options(b, func(t uint8, d []byte) bool {
		out = append(out, IPv4Option{Type: t, Data: d})
		return true
	})
	return out, nil
}
