package stacktest

import (
	"encoding/binary"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// IPv6 builders (RFC 8200, RFC 4443, RFC 4861). An IPv6 packet reuses the
// Builder's transports (UDP, TCP: their pseudo-header follows the
// addresses' family) and adds extension headers, ICMPv6 and the NDP
// messages:
//
//	stacktest.IPv6("fd00::1", "fd00::2").HopLimit(1).FragmentHeader(7, 0, true).UDP(1000, 53).Bytes()

// Default IPv6 addresses of the builders.
var (
	DefaultSrcIP6 = netip.MustParseAddr("fd00::1")
	DefaultDstIP6 = netip.MustParseAddr("fd00::2")
)

// ipv6Parts are the IPv6-only parts of a Builder.
type ipv6Parts struct {
	f          header.IPv6Fields
	payloadLen int // -1: computed
	ext        []extHdr
	icmp       header.ICMPv6Fields
	ndp        []byte // a whole NDP message (checksum computed by Bytes), or nil
}

// extHdr is one extension header: its next-header number and its bytes,
// whose first octet Bytes overwrites with the following header's number.
type extHdr struct {
	nh  uint8
	raw []byte
}

func (p *ipv6Parts) extLen() int {
	n := 0
	for _, e := range p.ext {
		n += len(e.raw)
	}
	return n
}

// IPv6 starts a packet at its IPv6 header (no Ethernet): Frame().IPv6.
func IPv6(src, dst string) *Builder { return Frame().IPv6(src, dst) }

// UDPv6 is a seed datagram, fd00::1:1000 -> fd00::2:53 carrying "hello".
func UDPv6() *Builder {
	return Frame().IPv6Addr(DefaultSrcIP6, DefaultDstIP6).UDP(1000, 53).Payload([]byte("hello"))
}

// TCPv6SYN is a seed SYN, fd00::1:40000 -> fd00::2:80, with Linux's
// options (MSS 1440 for a 1500-byte link, RFC 8200 §8.3).
func TCPv6SYN() *Builder {
	return Frame().IPv6Addr(DefaultSrcIP6, DefaultDstIP6).TCP(40000, 80).Flags(header.SYN).Seq(1000).
		Window(64800).MSS(1440).SACKPermitted().Timestamps(1, 0).WScale(7)
}

// Echo6 is an ICMPv6 echo request fd00::1 -> fd00::2 with id, seq and 8
// bytes of data.
func Echo6(id, seq uint16) *Builder {
	return Frame().IPv6Addr(DefaultSrcIP6, DefaultDstIP6).EchoRequest6(id, seq).Payload([]byte("pingdata"))
}

// IPv6 adds an IPv6 header; addresses are literals (a bad one panics: it
// is a bug in the test). Hop limit 64 unless set.
func (b *Builder) IPv6(src, dst string) *Builder {
	return b.IPv6Addr(netip.MustParseAddr(src), netip.MustParseAddr(dst))
}

// IPv6Addr is IPv6 with netip addresses.
func (b *Builder) IPv6Addr(src, dst netip.Addr) *Builder {
	b.l3 = l3IPv6
	b.v6.f.Src, b.v6.f.Dst = src, dst
	// The transports' pseudo-header reads b.ip's addresses.
	b.ip.Src, b.ip.Dst = src, dst
	if b.v6.f.HopLimit == 0 {
		b.v6.f.HopLimit = 64
	}
	return b
}

// HopLimit sets the IPv6 hop limit.
func (b *Builder) HopLimit(h uint8) *Builder { b.v6.f.HopLimit = h; return b }

// TrafficClass sets the IPv6 traffic class.
func (b *Builder) TrafficClass(tc uint8) *Builder { b.v6.f.TrafficClass = tc; return b }

// FlowLabel sets the IPv6 flow label.
func (b *Builder) FlowLabel(l uint32) *Builder { b.v6.f.FlowLabel = l; return b }

// PayloadLen writes n as the IPv6 payload length instead of the real one.
func (b *Builder) PayloadLen(n int) *Builder { b.v6.payloadLen = n; return b }

// HopByHop adds a Hop-by-Hop Options header carrying the option bytes
// opts (padded to 8 octets with Pad1/PadN).
func (b *Builder) HopByHop(opts []byte) *Builder {
	return b.optionsHeader(header.ProtoHopByHop, opts)
}

// DestOpts adds a Destination Options header carrying opts.
func (b *Builder) DestOpts(opts []byte) *Builder {
	return b.optionsHeader(header.ProtoDestOpts, opts)
}

func (b *Builder) optionsHeader(nh uint8, opts []byte) *Builder {
	raw := make([]byte, header.IPv6OptionsHeaderLen(len(opts)))
	header.EncodeIPv6Options(raw, 0, opts)
	b.v6.ext = append(b.v6.ext, extHdr{nh: nh, raw: raw})
	return b
}

// RoutingHeader adds a Routing header of type typ with segLeft segments
// left and type-specific data (padded to 8 octets).
func (b *Builder) RoutingHeader(typ, segLeft uint8, data []byte) *Builder {
	raw := make([]byte, (4+len(data)+7)&^7)
	header.EncodeIPv6Routing(raw, 0, typ, segLeft, data)
	b.v6.ext = append(b.v6.ext, extHdr{nh: header.ProtoRouting, raw: raw})
	return b
}

// FragmentHeader adds a Fragment header: identification id, offset off
// bytes (a multiple of 8), M flag more. With Proto and Payload it carries
// a slice of a larger packet (the upper-layer header only in the first).
func (b *Builder) FragmentHeader(id uint32, off int, more bool) *Builder {
	raw := make([]byte, header.IPv6FragmentSize)
	header.IPv6Fragment(raw).Encode(header.IPv6FragmentFields{FragOffset: uint16(off), More: more, ID: id})
	b.v6.ext = append(b.v6.ext, extHdr{nh: header.ProtoFragment, raw: raw})
	return b
}

// ExtHeader adds raw as an extension header numbered nh; its first octet
// is overwritten with the next header's number (for malformed headers).
func (b *Builder) ExtHeader(nh uint8, raw []byte) *Builder {
	b.v6.ext = append(b.v6.ext, extHdr{nh: nh, raw: append([]byte(nil), raw...)})
	return b
}

// ICMPv6 adds an ICMPv6 header; the checksum covers the IPv6
// pseudo-header (RFC 4443 §2.3).
func (b *Builder) ICMPv6(typ, code uint8, rest uint32) *Builder {
	b.l4 = l4ICMPv6
	b.v6.icmp = header.ICMPv6Fields{Type: typ, Code: code, RestOfHeader: rest}
	b.v6.ndp = nil
	return b
}

// EchoRequest6 adds an ICMPv6 echo request header (RFC 4443 §4.1).
func (b *Builder) EchoRequest6(id, seq uint16) *Builder {
	return b.ICMPv6(header.ICMPv6EchoRequest, 0, header.EchoRest(id, seq))
}

// EchoReply6 adds an ICMPv6 echo reply header (RFC 4443 §4.2).
func (b *Builder) EchoReply6(id, seq uint16) *Builder {
	return b.ICMPv6(header.ICMPv6EchoReply, 0, header.EchoRest(id, seq))
}

// NS makes the packet a Neighbor Solicitation for target (RFC 4861
// §4.3) with a Source Link-Layer Address option unless sll is zero. Hop
// limit 255 (§7.1.1), set it lower to test the check.
func (b *Builder) NS(target netip.Addr, sll header.MAC) *Builder {
	f := header.NDPNeighborSolicitFields{Target: target, Options: header.NDPOptionFields{SourceLinkAddr: sll}}
	m := make([]byte, f.Len())
	header.NDPNeighborSolicit(m).Encode(&f)
	return b.ndpMessage(m)
}

// NA makes the packet a Neighbor Advertisement (RFC 4861 §4.4) with a
// Target Link-Layer Address option unless tll is zero.
func (b *Builder) NA(router, solicited, override bool, target netip.Addr, tll header.MAC) *Builder {
	f := header.NDPNeighborAdvertFields{Router: router, Solicited: solicited, Override: override, Target: target,
		Options: header.NDPOptionFields{TargetLinkAddr: tll}}
	m := make([]byte, f.Len())
	header.NDPNeighborAdvert(m).Encode(&f)
	return b.ndpMessage(m)
}

// RS makes the packet a Router Solicitation (RFC 4861 §4.1).
func (b *Builder) RS(sll header.MAC) *Builder {
	m := make([]byte, header.NDPRouterSolicitSize, header.NDPRouterSolicitSize+8)
	header.ICMPv6(m).Encode(header.ICMPv6Fields{Type: header.ICMPv6RouterSolicit})
	if !sll.IsZero() {
		m = append(m, header.NDPOptSourceLinkAddr, 1)
		m = append(m, sll[:]...)
	}
	return b.ndpMessage(m)
}

// RA makes the packet a Router Advertisement (RFC 4861 §4.2).
func (b *Builder) RA(f header.NDPRouterAdvertFields) *Builder {
	m := make([]byte, f.Len())
	header.NDPRouterAdvert(m).Encode(&f)
	return b.ndpMessage(m)
}

// Redirect makes the packet a Redirect (RFC 4861 §4.5) with options opts.
func (b *Builder) Redirect(target, dst netip.Addr, opts []byte) *Builder {
	m := make([]byte, header.NDPRedirectSize+len(opts))
	header.ICMPv6(m).Encode(header.ICMPv6Fields{Type: header.ICMPv6Redirect})
	t, d := target.As16(), dst.As16()
	copy(m[8:], t[:])
	copy(m[24:], d[:])
	copy(m[header.NDPRedirectSize:], opts)
	return b.ndpMessage(m)
}

// NDPMessage makes the packet the given ICMPv6 message bytes (type first;
// the checksum is computed), for malformed NDP tests.
func (b *Builder) NDPMessage(m []byte) *Builder { return b.ndpMessage(append([]byte(nil), m...)) }

func (b *Builder) ndpMessage(m []byte) *Builder {
	b.l4 = l4ICMPv6
	b.v6.ndp = m
	if b.v6.f.HopLimit == 64 || b.v6.f.HopLimit == 0 {
		b.v6.f.HopLimit = 255
	}
	return b
}

// icmpv6Bytes builds the ICMPv6 message with its checksum.
func (b *Builder) icmpv6Bytes() []byte {
	var p []byte
	if b.v6.ndp != nil {
		p = append([]byte(nil), b.v6.ndp...)
		p = append(p, b.payload...)
	} else {
		p = make([]byte, header.ICMPv6MinSize+len(b.payload))
		copy(p[header.ICMPv6MinSize:], b.payload)
		header.ICMPv6(p).Encode(b.v6.icmp)
	}
	h := header.ICMPv6(p)
	h.SetChecksum(b.v6.f.Src, b.v6.f.Dst)
	if b.badL4Csum {
		binary.BigEndian.PutUint16(p[2:], corrupt(h.Checksum()))
	}
	return p
}

// ipv6Bytes builds the IPv6 header, extension headers and payload.
func (b *Builder) ipv6Bytes() []byte {
	l4 := b.transport()
	ext := b.v6.extLen()
	p := make([]byte, header.IPv6MinSize+ext+len(l4))
	f := b.v6.f
	nexts := make([]uint8, len(b.v6.ext)+1)
	for i, e := range b.v6.ext {
		nexts[i] = e.nh
	}
	nexts[len(b.v6.ext)] = b.proto()
	f.NextHeader = nexts[0]
	f.PayloadLen = uint16(len(p) - header.IPv6MinSize)
	if b.v6.payloadLen >= 0 {
		f.PayloadLen = uint16(b.v6.payloadLen)
	}
	header.IPv6(p).Encode(f)
	off := header.IPv6MinSize
	for i, e := range b.v6.ext {
		copy(p[off:], e.raw)
		if len(e.raw) > 0 {
			p[off] = nexts[i+1]
		}
		off += len(e.raw)
	}
	copy(p[off:], l4)
	return p
}
