package header

import "encoding/binary"

// IPv6 extension headers (RFC 8200 §4). Each starts with the Next Header
// octet; the options headers and the routing header follow it with a
// length in 8-octet units not counting the first 8 octets:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Next Header  |  Hdr Ext Len  |                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//	|             Options / type-specific data ...                  |
//
// The Fragment header is always 8 octets; the Authentication Header
// (RFC 4302) counts 4-octet units minus 2.

// IPv6ExtMinSize is the shortest extension header (8 octets).
const IPv6ExtMinSize = 8

// IPv6FragmentSize is the Fragment header's length.
const IPv6FragmentSize = 8

// Option types of the Hop-by-Hop and Destination Options headers
// (RFC 8200 §4.2, IANA "Destination Options and Hop-by-Hop Options").
const (
	IPv6OptPad1        uint8 = 0x00
	IPv6OptPadN        uint8 = 0x01
	IPv6OptRouterAlert uint8 = 0x05 // RFC 2711
	IPv6OptJumbo       uint8 = 0xc2 // RFC 2675; not supported here
)

// IPv6 option actions: the two high-order bits of an option type say
// what a node that does not recognise the option does (RFC 8200 §4.2).
const (
	// IPv6OptActionSkip (00): skip over this option and continue.
	IPv6OptActionSkip uint8 = 0
	// IPv6OptActionDiscard (01): discard the packet.
	IPv6OptActionDiscard uint8 = 1
	// IPv6OptActionDiscardICMP (10): discard and send an ICMP Parameter
	// Problem, Code 2, whether or not the destination was multicast.
	IPv6OptActionDiscardICMP uint8 = 2
	// IPv6OptActionDiscardICMPUnicast (11): discard and send the
	// Parameter Problem only if the destination was not multicast.
	IPv6OptActionDiscardICMPUnicast uint8 = 3
)

// IPv6OptionAction is the action bits of option type typ.
func IPv6OptionAction(typ uint8) uint8 { return typ >> 6 }

// IPv6IsExtHeader reports whether nh is an extension header that a node
// can skip over to find the upper-layer header (ipv6_ext_hdr: Hop-by-Hop,
// Routing, Fragment, Authentication, Destination Options). ESP hides what
// follows it and is an upper layer for this purpose.
func IPv6IsExtHeader(nh uint8) bool {
	switch nh {
	case ProtoHopByHop, ProtoRouting, ProtoFragment, ProtoAH, ProtoDestOpts:
		return true
	}
	return false
}

// IPv6ExtHeaderLen is the length in bytes of the extension header nh at
// the start of b, checked against len(b): 8 for a Fragment header,
// (HdrExtLen+2)*4 for AH, (HdrExtLen+1)*8 for the others.
func IPv6ExtHeaderLen(nh uint8, b []byte) (int, error) {
	if len(b) < IPv6ExtMinSize {
		return 0, ErrTruncated
	}
	var n int
	switch nh {
	case ProtoFragment:
		n = IPv6FragmentSize
	case ProtoAH:
		n = (int(b[1]) + 2) * 4
	default:
		n = (int(b[1]) + 1) * 8
	}
	if n > len(b) {
		return 0, ErrTruncated
	}
	return n, nil
}

// IPv6Options is a Hop-by-Hop or Destination Options header (RFC 8200
// §4.3, §4.6): Next Header, Hdr Ext Len, then options in TLV form
//
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+- - - - - - - - -
//	|  Option Type  |  Opt Data Len |  Option Data
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+- - - - - - - - -
//
// except Pad1, a single zero octet. The view spans exactly the header.
type IPv6Options []byte

// CheckIPv6Options validates b as an options header: its announced
// length fits in b and every option's length stays inside the header. The
// returned view is cut to the header's length.
func CheckIPv6Options(b []byte) (IPv6Options, error) {
	n, err := IPv6ExtHeaderLen(ProtoDestOpts, b)
	if err != nil {
		return nil, err
	}
	if err := WalkIPv6Options(b[2:n], nil); err != nil {
		return nil, err
	}
	return IPv6Options(b[:n]), nil
}

// NextHeader is the type of the header after this one.
func (h IPv6Options) NextHeader() uint8 { return h[0] }

// Len is the header's length in bytes.
func (h IPv6Options) Len() int { return len(h) }

// Options is the option area (after Next Header and Hdr Ext Len).
func (h IPv6Options) Options() []byte { return h[2:] }

// WalkIPv6Options checks the option area b and, when fn is not nil, calls
// fn for every option other than Pad1 and PadN with its type, data and
// the offset of its type octet within b, until fn returns false. It does
// not allocate. An option whose data runs past b is ErrBadOption.
func WalkIPv6Options(b []byte, fn func(typ uint8, data []byte, off int) bool) error {
	for i := 0; i < len(b); {
		t := b[i]
		if t == IPv6OptPad1 {
			i++
			continue
		}
		if i+2 > len(b) {
			return ErrBadOption
		}
		l := int(b[i+1])
		if i+2+l > len(b) {
			return ErrBadOption
		}
		if t != IPv6OptPadN && fn != nil && !fn(t, b[i+2:i+2+l], i) {
			fn = nil // keep validating, stop reporting
		}
		i += 2 + l
	}
	return nil
}

// IPv6OptionsHeaderLen is the length of an options header carrying
// option bytes of length n, padded to a multiple of 8.
func IPv6OptionsHeaderLen(n int) int { return (2 + n + 7) &^ 7 }

// EncodeIPv6Options writes an options header with next header nh and the
// option bytes opts, padded with Pad1/PadN (RFC 8200 §4.2) to
// IPv6OptionsHeaderLen(len(opts)); h must hold that many bytes. Options
// longer than 2046 bytes are a programming error and panic.
func EncodeIPv6Options(h []byte, nh uint8, opts []byte) {
	n := IPv6OptionsHeaderLen(len(opts))
	if n > 2048 {
		panic("header: IPv6 options header longer than 2048 bytes")
	}
	_ = h[n-1]
	h[0] = nh
	h[1] = uint8(n/8 - 1)
	copy(h[2:], opts)
	pad := h[2+len(opts) : n]
	switch len(pad) {
	case 0:
	case 1:
		pad[0] = IPv6OptPad1
	default:
		pad[0] = IPv6OptPadN
		pad[1] = uint8(len(pad) - 2)
		clear(pad[2:])
	}
}

// IPv6Routing is a Routing header (RFC 8200 §4.4):
//
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Next Header  |  Hdr Ext Len  |  Routing Type | Segments Left |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       type-specific data ...                  |
type IPv6Routing []byte

// IPv6 routing types we name (IANA "Routing Types").
const (
	// IPv6RoutingType0 is the deprecated source route (RFC 5095).
	IPv6RoutingType0 uint8 = 0
	// IPv6RoutingType2 is Mobile IPv6's (RFC 6275).
	IPv6RoutingType2 uint8 = 2
	// IPv6RoutingSRH is the Segment Routing Header (RFC 8754).
	IPv6RoutingSRH uint8 = 4
)

// IPv6RoutingTypeOffset is the offset of Routing Type in the header: a
// Parameter Problem about an unrecognised type points at it.
const IPv6RoutingTypeOffset = 2

// CheckIPv6Routing validates b as a Routing header and cuts it to its length.
func CheckIPv6Routing(b []byte) (IPv6Routing, error) {
	n, err := IPv6ExtHeaderLen(ProtoRouting, b)
	if err != nil {
		return nil, err
	}
	return IPv6Routing(b[:n]), nil
}

// NextHeader is the type of the header after this one.
func (h IPv6Routing) NextHeader() uint8 { return h[0] }

// Len is the header's length in bytes.
func (h IPv6Routing) Len() int { return len(h) }

// RoutingType is the routing variant.
func (h IPv6Routing) RoutingType() uint8 { return h[2] }

// SegmentsLeft is the number of route segments remaining.
func (h IPv6Routing) SegmentsLeft() uint8 { return h[3] }

// Data is the type-specific data.
func (h IPv6Routing) Data() []byte { return h[4:] }

// EncodeIPv6Routing writes a Routing header with the given type,
// segments left and data (padded with zeros to a multiple of 8 with the
// first 4 octets); h must hold (4+len(data)+7)&^7 bytes.
func EncodeIPv6Routing(h []byte, nh, typ, segLeft uint8, data []byte) int {
	n := (4 + len(data) + 7) &^ 7
	_ = h[n-1]
	h[0], h[1], h[2], h[3] = nh, uint8(n/8-1), typ, segLeft
	copy(h[4:], data)
	clear(h[4+len(data) : n])
	return n
}

// IPv6Fragment is a Fragment header (RFC 8200 §4.5):
//
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Next Header  |   Reserved    |      Fragment Offset    |Res|M|
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                         Identification                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The offset counts 8-octet units; the accessors speak bytes.
type IPv6Fragment []byte

// IPv6FragOffsetOffset is the offset of the Fragment Offset field in
// the Fragment header (RFC 8200 §4.5 points a Parameter Problem about a
// datagram over 65535 bytes at it).
const IPv6FragOffsetOffset = 2

// CheckIPv6Fragment validates b as a Fragment header.
func CheckIPv6Fragment(b []byte) (IPv6Fragment, error) {
	if len(b) < IPv6FragmentSize {
		return nil, ErrTruncated
	}
	return IPv6Fragment(b[:IPv6FragmentSize]), nil
}

// NextHeader is the type of the fragmentable part's first header.
func (h IPv6Fragment) NextHeader() uint8 { return h[0] }

// FragOffset is the offset of the fragment's data in bytes.
func (h IPv6Fragment) FragOffset() int { return int(binary.BigEndian.Uint16(h[2:]) &^ 7) }

// More is the M flag: more fragments follow.
func (h IPv6Fragment) More() bool { return h[3]&1 != 0 }

// ID is the identification.
func (h IPv6Fragment) ID() uint32 { return binary.BigEndian.Uint32(h[4:]) }

// IsAtomic reports an atomic fragment (offset 0, M clear; RFC 6946).
func (h IPv6Fragment) IsAtomic() bool { return h.FragOffset() == 0 && !h.More() }

// IPv6FragmentFields is the decoded Fragment header (the reserved bits
// are written as zero).
type IPv6FragmentFields struct {
	NextHeader uint8
	FragOffset uint16 // bytes, a multiple of 8
	More       bool
	ID         uint32
}

// Fields decodes the header.
func (h IPv6Fragment) Fields() IPv6FragmentFields {
	return IPv6FragmentFields{NextHeader: h.NextHeader(), FragOffset: uint16(h.FragOffset()), More: h.More(), ID: h.ID()}
}

// Encode writes the 8-byte header; h must hold IPv6FragmentSize bytes.
func (h IPv6Fragment) Encode(f IPv6FragmentFields) {
	_ = h[IPv6FragmentSize-1]
	h[0], h[1] = f.NextHeader, 0
	v := f.FragOffset &^ 7
	if f.More {
		v |= 1
	}
	binary.BigEndian.PutUint16(h[2:], v)
	binary.BigEndian.PutUint32(h[4:], f.ID)
}

// IPv6Upper is where IPv6SkipExtHeaders found the upper layer.
type IPv6Upper struct {
	// Proto is the upper-layer protocol (or ProtoNoNextHeader, or ESP).
	Proto uint8
	// Offset is the upper-layer header's offset in the packet.
	Offset int
	// FragOffset is the fragment offset of a fragment header met on the
	// way (bytes); when it is not zero, the upper-layer header is not in
	// this packet and Proto/Offset name the fragment's data.
	FragOffset int
	// Fragment reports that a Fragment header was met.
	Fragment bool
}

// IPv6SkipExtHeaders walks the extension headers of the IPv6 packet b
// (its fixed header included) and returns the upper layer
// (ipv6_skip_exthdr). It stops at the first header that is not an
// extension header, at a Fragment header with a non-zero offset (what
// follows is not a header), and after at most maxExtHeaders headers. A
// header cut short by the end of b is ErrTruncated: an ICMP error quotes
// only part of a packet, and its caller decides what is enough.
func IPv6SkipExtHeaders(b []byte) (IPv6Upper, error) {
	if len(b) < IPv6MinSize {
		return IPv6Upper{}, ErrTruncated
	}
	nh := b[ip6NextHdr]
	off := IPv6MinSize
	u := IPv6Upper{}
	for i := 0; i < maxExtHeaders && IPv6IsExtHeader(nh); i++ {
		n, err := IPv6ExtHeaderLen(nh, b[off:])
		if err != nil {
			return IPv6Upper{}, err
		}
		if nh == ProtoFragment {
			f := IPv6Fragment(b[off:])
			u.Fragment = true
			u.FragOffset = f.FragOffset()
			if u.FragOffset != 0 {
				return IPv6Upper{Proto: f.NextHeader(), Offset: off + n, FragOffset: u.FragOffset, Fragment: true}, nil
			}
		}
		nh = b[off]
		off += n
	}
	if IPv6IsExtHeader(nh) {
		return IPv6Upper{}, ErrTooManyExtHeaders
	}
	u.Proto, u.Offset = nh, off
	return u, nil
}

// maxExtHeaders bounds the extension headers one packet may carry before
// the walk gives up (RFC 8200 §4.1 expects each header at most once, the
// Destination Options header at most twice).
const maxExtHeaders = 16

// MaxIPv6ExtHeaders is that bound, for the layers that walk the chain
// themselves.
const MaxIPv6ExtHeaders = maxExtHeaders
