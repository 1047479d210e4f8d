// Package stacktest is test support only (packetdrill's role): packet
// builders and, beside them, in-memory topologies and scenario harnesses.
//
// packet.go holds the packet builders every layer's tests share. It
// imports only header, buf and the standard library, so that tests of the
// lowest layers can use it.
package stacktest

import (
	"encoding/binary"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Default addresses of the builders.
var (
	DefaultSrcMAC = header.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	DefaultDstMAC = header.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
	DefaultSrcIP  = netip.MustParseAddr("10.0.0.1")
	DefaultDstIP  = netip.MustParseAddr("10.0.0.2")
)

type l3Kind uint8

const (
	l3None l3Kind = iota
	l3IPv4
	l3ARP
	l3IPv6
)

type l4Kind uint8

const (
	l4Raw l4Kind = iota
	l4UDP
	l4TCP
	l4ICMP
	l4ICMPv6
)

// Builder builds a packet layer by layer. Every method returns the builder,
// so tests read as one expression:
//
//	stacktest.Frame().Eth(src, dst).IPv4("10.0.0.1", "10.0.0.2").TTL(1).UDP(1000, 53).Payload(b).Bytes()
//
// Without Eth the bytes start at the network header. Lengths and checksums
// are computed by Bytes unless a knob (TotalLen, UDPLength, BadIPChecksum,
// BadL4Checksum) says otherwise. A Builder is not safe for concurrent use;
// Bytes may be called repeatedly and returns a fresh slice each time.
type Builder struct {
	eth      bool
	ethSrc   header.MAC
	ethDst   header.MAC
	ethType  header.EtherType
	ethTypeS bool

	l3  l3Kind
	ip  header.IPv4Fields
	arp header.ARPFields
	v6  ipv6Parts // l3IPv6: fixed-header knobs, extension headers (packet6.go)

	protoSet   bool
	totalLen   int // -1: computed
	badIPCsum  bool
	l4         l4Kind
	udp        header.UDPFields
	udpLen     int // -1: computed
	tcp        header.TCPFields
	tcpOpts    header.TCPOptions
	tcpRawOpts []byte
	tcpRawSet  bool
	icmp       header.ICMPv4Fields
	badL4Csum  bool
	noUDPCsum  bool
	payload    []byte
	trailer    []byte
}

// Frame starts an empty packet: add Eth for an Ethernet frame, then a
// network layer (IPv4, IPv6 or ARP).
func Frame() *Builder {
	return &Builder{totalLen: -1, udpLen: -1, v6: ipv6Parts{payloadLen: -1}}
}

// IPv4 starts a packet at its IPv4 header (no Ethernet): Frame().IPv4.
func IPv4(src, dst string) *Builder { return Frame().IPv4(src, dst) }

// TCPv4SYN is a seed SYN, 10.0.0.1:40000 -> 10.0.0.2:80, ISS 1000, with
// the options Linux sends (MSS 1460, SACK-permitted, timestamps, window
// scale 7). Bytes start at the IPv4 header; add Eth for a frame.
func TCPv4SYN() *Builder {
	return Frame().IPv4Addr(DefaultSrcIP, DefaultDstIP).DF().ID(1).
		TCP(40000, 80).Flags(header.SYN).Seq(1000).Window(64240).
		MSS(1460).SACKPermitted().Timestamps(1, 0).WScale(7)
}

// UDPv4 is a seed datagram, 10.0.0.1:1000 -> 10.0.0.2:53 carrying "hello".
// Bytes start at the IPv4 header.
func UDPv4() *Builder {
	return Frame().IPv4Addr(DefaultSrcIP, DefaultDstIP).ID(1).UDP(1000, 53).Payload([]byte("hello"))
}

// ICMPEcho is an echo request 10.0.0.1 -> 10.0.0.2 with id, seq and 8
// bytes of data. Bytes start at the IPv4 header.
func ICMPEcho(id, seq uint16) *Builder {
	return Frame().IPv4Addr(DefaultSrcIP, DefaultDstIP).Echo(id, seq).Payload([]byte("pingdata"))
}

// ARPRequest is a whole frame: who-has targetIP tell senderIP, broadcast
// from senderMAC (RFC 826).
func ARPRequest(senderMAC header.MAC, senderIP, targetIP string) *Builder {
	return Frame().Eth(senderMAC, header.BroadcastMAC).ARP(header.ARPFields{
		Op: header.ARPRequest, SenderMAC: senderMAC, SenderIP: netip.MustParseAddr(senderIP),
		TargetIP: netip.MustParseAddr(targetIP),
	})
}

// ARPReply is a whole frame: senderIP is-at senderMAC, unicast to
// targetMAC/targetIP.
func ARPReply(senderMAC header.MAC, senderIP string, targetMAC header.MAC, targetIP string) *Builder {
	return Frame().Eth(senderMAC, targetMAC).ARP(header.ARPFields{
		Op: header.ARPReply, SenderMAC: senderMAC, SenderIP: netip.MustParseAddr(senderIP),
		TargetMAC: targetMAC, TargetIP: netip.MustParseAddr(targetIP),
	})
}

// Eth adds an Ethernet II header; the EtherType follows the network layer.
func (b *Builder) Eth(src, dst header.MAC) *Builder {
	b.eth, b.ethSrc, b.ethDst = true, src, dst
	return b
}

// EtherType overrides the EtherType (e.g. 0x8100 for a tagged-frame test).
func (b *Builder) EtherType(t header.EtherType) *Builder {
	b.ethType, b.ethTypeS = t, true
	return b
}

// IPv4 adds an IPv4 header; addresses are literals (a bad one panics: it
// is a bug in the test). TTL 64 unless set.
func (b *Builder) IPv4(src, dst string) *Builder {
	return b.IPv4Addr(netip.MustParseAddr(src), netip.MustParseAddr(dst))
}

// IPv4Addr is IPv4 with netip addresses.
func (b *Builder) IPv4Addr(src, dst netip.Addr) *Builder {
	b.l3 = l3IPv4
	b.ip.Src, b.ip.Dst = src, dst
	if b.ip.TTL == 0 {
		b.ip.TTL = 64
	}
	return b
}

// ARP makes the network layer an Ethernet/IPv4 ARP packet.
func (b *Builder) ARP(f header.ARPFields) *Builder {
	b.l3, b.arp = l3ARP, f
	return b
}

// TTL sets the IPv4 time to live.
func (b *Builder) TTL(ttl uint8) *Builder { b.ip.TTL = ttl; return b }

// TOS sets the IPv4 type of service.
func (b *Builder) TOS(tos uint8) *Builder { b.ip.TOS = tos; return b }

// ID sets the IPv4 identification.
func (b *Builder) ID(id uint16) *Builder { b.ip.ID = id; return b }

// DF sets Don't Fragment.
func (b *Builder) DF() *Builder { b.ip.DF = true; return b }

// MF sets More Fragments.
func (b *Builder) MF() *Builder { b.ip.MF = true; return b }

// FragOffset sets the fragment offset in bytes (a multiple of 8).
func (b *Builder) FragOffset(off int) *Builder { b.ip.FragOffset = uint16(off); return b }

// Fragment makes the packet an IPv4 fragment: identification id, offset
// off bytes, MF flag mf. Combine with Proto and Payload to carry a slice
// of a larger datagram (the transport header only in the first).
func (b *Builder) Fragment(id uint16, off int, mf bool) *Builder {
	b.ip.ID, b.ip.FragOffset, b.ip.MF = id, uint16(off), mf
	return b
}

// IPOptions sets raw IPv4 option bytes (padded with EOL to 4).
func (b *Builder) IPOptions(opts []byte) *Builder { b.ip.Options = opts; return b }

// Proto overrides the IPv4 protocol number; with no transport layer the
// payload is carried raw.
func (b *Builder) Proto(p uint8) *Builder { b.ip.Protocol, b.protoSet = p, true; return b }

// TotalLen writes n as the IPv4 total length instead of the real length.
func (b *Builder) TotalLen(n int) *Builder { b.totalLen = n; return b }

// BadIPChecksum stores a wrong IPv4 header checksum.
func (b *Builder) BadIPChecksum() *Builder { b.badIPCsum = true; return b }

// UDP adds a UDP header.
func (b *Builder) UDP(src, dst uint16) *Builder {
	b.l4 = l4UDP
	b.udp.SrcPort, b.udp.DstPort = src, dst
	return b
}

// UDPLength writes n as the UDP length field instead of the real length.
func (b *Builder) UDPLength(n int) *Builder { b.udpLen = n; return b }

// NoUDPChecksum sends a zero UDP checksum (RFC 768: none computed).
func (b *Builder) NoUDPChecksum() *Builder { b.noUDPCsum = true; return b }

// TCP adds a TCP header; set flags with Flags.
func (b *Builder) TCP(src, dst uint16) *Builder {
	b.l4 = l4TCP
	b.tcp.SrcPort, b.tcp.DstPort = src, dst
	return b
}

// Flags sets the TCP flags.
func (b *Builder) Flags(f header.TCPFlags) *Builder { b.tcp.Flags = f; return b }

// Seq sets the TCP sequence number.
func (b *Builder) Seq(n uint32) *Builder { b.tcp.Seq = n; return b }

// Ack sets the TCP acknowledgment number (not the ACK flag: use Flags).
func (b *Builder) Ack(n uint32) *Builder { b.tcp.Ack = n; return b }

// Window sets the raw TCP window field.
func (b *Builder) Window(w uint16) *Builder { b.tcp.Window = w; return b }

// Urgent sets the TCP urgent pointer.
func (b *Builder) Urgent(u uint16) *Builder { b.tcp.Urgent = u; return b }

// MSS adds the MSS option.
func (b *Builder) MSS(mss uint16) *Builder { b.tcpOpts.MSS, b.tcpOpts.HasMSS = mss, true; return b }

// WScale adds the window-scale option.
func (b *Builder) WScale(s uint8) *Builder {
	b.tcpOpts.WScale, b.tcpOpts.HasWScale = s, true
	return b
}

// SACKPermitted adds the SACK-permitted option.
func (b *Builder) SACKPermitted() *Builder { b.tcpOpts.SACKPermitted = true; return b }

// Timestamps adds the timestamps option.
func (b *Builder) Timestamps(val, ecr uint32) *Builder {
	b.tcpOpts.HasTS, b.tcpOpts.TSVal, b.tcpOpts.TSEcr = true, val, ecr
	return b
}

// SACK adds SACK blocks (at most four; fewer fit beside timestamps).
func (b *Builder) SACK(blocks ...header.SACKBlock) *Builder {
	b.tcpOpts.NumSACK = copy(b.tcpOpts.SACKBlocks[:], blocks)
	return b
}

// TCPOptions sets the options from a struct, replacing earlier ones.
func (b *Builder) TCPOptions(o header.TCPOptions) *Builder { b.tcpOpts = o; return b }

// RawTCPOptions sets the option bytes verbatim (at most 40; padded with
// EOL), overriding the structured options: for malformed-option tests.
func (b *Builder) RawTCPOptions(opts []byte) *Builder {
	b.tcpRawOpts, b.tcpRawSet = opts, true
	return b
}

// ICMP adds an ICMP header.
func (b *Builder) ICMP(typ, code uint8, rest uint32) *Builder {
	b.l4 = l4ICMP
	b.icmp = header.ICMPv4Fields{Type: typ, Code: code, RestOfHeader: rest}
	return b
}

// Echo adds an ICMP echo request header.
func (b *Builder) Echo(id, seq uint16) *Builder {
	return b.ICMP(header.ICMPv4Echo, 0, header.EchoRest(id, seq))
}

// EchoReply adds an ICMP echo reply header.
func (b *Builder) EchoReply(id, seq uint16) *Builder {
	return b.ICMP(header.ICMPv4EchoReply, 0, header.EchoRest(id, seq))
}

// BadL4Checksum stores a wrong transport checksum (UDP, TCP, ICMP). The
// stored value differs from the right one by 0x100 or 0x200, so it never
// verifies, and is never 0 (no checksum) for UDP.
func (b *Builder) BadL4Checksum() *Builder { b.badL4Csum = true; return b }

// Payload sets the transport payload (or the raw IP payload).
func (b *Builder) Payload(p []byte) *Builder { b.payload = p; return b }

// Trailer appends bytes after the IP datagram (Ethernet padding), not
// counted in any length field.
func (b *Builder) Trailer(p []byte) *Builder { b.trailer = p; return b }

func (b *Builder) tcpOptionBytes() []byte {
	if b.tcpRawSet {
		return b.tcpRawOpts
	}
	var o [header.TCPMaxOptions]byte
	n := header.EncodeTCPOptions(o[:], &b.tcpOpts)
	return o[:n]
}

// transport returns the L4 bytes with checksums computed.
func (b *Builder) transport() []byte {
	switch b.l4 {
	case l4UDP:
		p := make([]byte, header.UDPSize+len(b.payload))
		copy(p[header.UDPSize:], b.payload)
		f := b.udp
		f.Length = uint16(len(p))
		if b.udpLen >= 0 {
			f.Length = uint16(b.udpLen)
		}
		u := header.UDP(p)
		u.Encode(f)
		if !b.noUDPCsum {
			// Sum over the real length even when UDPLength lies, so a
			// length test is not also a checksum test.
			c := header.ChecksumFinal(header.Checksum(p, header.PseudoHeaderSum(header.ProtoUDP, b.ip.Src, b.ip.Dst, len(p))))
			if c == 0 {
				c = 0xffff
			}
			if b.badL4Csum {
				c = corrupt(c)
			}
			binary.BigEndian.PutUint16(p[6:], c)
		}
		return p
	case l4TCP:
		opts := b.tcpOptionBytes()
		hl := header.TCPHeaderLen(len(opts))
		p := make([]byte, hl+len(b.payload))
		copy(p[hl:], b.payload)
		f := b.tcp
		f.Options = opts
		t := header.TCP(p)
		t.Encode(f)
		t.SetChecksum(b.ip.Src, b.ip.Dst)
		if b.badL4Csum {
			t.SetChecksumField(corrupt(t.Checksum()))
		}
		return p
	case l4ICMPv6:
		return b.icmpv6Bytes()
	case l4ICMP:
		p := make([]byte, header.ICMPv4MinSize+len(b.payload))
		copy(p[header.ICMPv4MinSize:], b.payload)
		h := header.ICMPv4(p)
		h.Encode(b.icmp)
		h.SetChecksum()
		if b.badL4Csum {
			binary.BigEndian.PutUint16(p[2:], corrupt(h.Checksum()))
		}
		return p
	}
	return append([]byte(nil), b.payload...)
}

// corrupt changes c so that it no longer verifies: a change of 0x100 is
// never a multiple of 0xffff, so the one's complement sum moves off -0.
func corrupt(c uint16) uint16 {
	if d := c ^ 0x100; d != 0 {
		return d
	}
	return c ^ 0x200
}

func (b *Builder) proto() uint8 {
	if b.protoSet {
		return b.ip.Protocol
	}
	switch b.l4 {
	case l4UDP:
		return header.ProtoUDP
	case l4TCP:
		return header.ProtoTCP
	case l4ICMP:
		return header.ProtoICMP
	case l4ICMPv6:
		return header.ProtoICMPv6
	}
	return 0
}

// network returns the L3 bytes (header and payload), and its EtherType.
func (b *Builder) network() ([]byte, header.EtherType) {
	switch b.l3 {
	case l3ARP:
		p := make([]byte, header.ARPSize)
		header.ARP(p).Encode(b.arp)
		return p, header.EtherTypeARP
	case l3IPv4:
		l4 := b.transport()
		hl := header.IPv4HeaderLen(len(b.ip.Options))
		p := make([]byte, hl+len(l4))
		copy(p[hl:], l4)
		f := b.ip
		f.Protocol = b.proto()
		f.TotalLen = uint16(len(p))
		if b.totalLen >= 0 {
			f.TotalLen = uint16(b.totalLen)
		}
		h := header.IPv4(p)
		h.Encode(f)
		if b.badIPCsum {
			binary.BigEndian.PutUint16(p[10:], corrupt(h.Checksum()))
		}
		return p, header.EtherTypeIPv4
	case l3IPv6:
		return b.ipv6Bytes(), header.EtherTypeIPv6
	}
	return append([]byte(nil), b.payload...), 0
}

// Bytes builds the packet: Ethernet (if Eth), network header, transport
// header, payload, trailer.
func (b *Builder) Bytes() []byte {
	l3, et := b.network()
	if b.ethTypeS {
		et = b.ethType
	}
	var out []byte
	if b.eth {
		out = make([]byte, header.EthernetMinSize, header.EthernetMinSize+len(l3)+len(b.trailer))
		header.Ethernet(out).Encode(header.EthernetFields{Dst: b.ethDst, Src: b.ethSrc, Type: et})
	}
	out = append(out, l3...)
	return append(out, b.trailer...)
}

// SKB builds the packet into a fresh SKB with buf.MaxHeadroom of
// headroom; the data starts at the first header built (Ethernet or IPv4).
// The MAC, network and transport header offsets and Protocol (the
// EtherType) are set as a driver and dev would set them. The caller owns
// the SKB.
func (b *Builder) SKB() *buf.SKB {
	p := b.Bytes()
	s := buf.FromBytes(buf.MaxHeadroom, p)
	off := 0
	if b.eth {
		s.SetMACHeader()
		off = header.EthernetMinSize
	}
	switch b.l3 {
	case l3ARP:
		s.Protocol = uint16(header.EtherTypeARP)
		s.SetNetworkHeaderAt(off)
	case l3IPv4:
		s.Protocol = uint16(header.EtherTypeIPv4)
		s.SetNetworkHeaderAt(off)
		s.SetTransportHeaderAt(off + header.IPv4HeaderLen(len(b.ip.Options)))
	case l3IPv6:
		s.Protocol = uint16(header.EtherTypeIPv6)
		s.SetNetworkHeaderAt(off)
		s.SetTransportHeaderAt(off + header.IPv6MinSize + b.v6.extLen())
	}
	if b.ethTypeS {
		s.Protocol = uint16(b.ethType)
	}
	return s
}
