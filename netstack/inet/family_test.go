package inet

import (
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// fam4 and fam6 are the families as ipv4 and ipv6 define them.
type fam4 struct{}

func (fam4) Src(ip []byte) netip.Addr { return header.IPv4(ip).Src() }
func (fam4) Dst(ip []byte) netip.Addr { return header.IPv4(ip).Dst() }

type fam6 struct{}

func (fam6) Src(ip []byte) netip.Addr { return header.IPv6(ip).Src() }
func (fam6) Dst(ip []byte) netip.Addr { return header.IPv6(ip).Dst() }

// family is one IP family as the tests drive it: its Family, its header
// builder and two prefixes, one on NIC 1 and one on NIC 2.
type family struct {
	name       string
	fam        Family
	src        netip.Addr
	dst1, dst2 netip.Addr // routed out of NIC 1 and NIC 2
	nowhere    netip.Addr // no route
	net1, net2 netip.Prefix
	packet     func(src, dst netip.Addr) []byte
	setDst     func(ip []byte, dst netip.Addr)
}

var families = []family{
	newFamily("IPv4", fam4{}, 24, "10.0.1.1", "10.0.1.5", "10.0.2.5", "192.0.2.9", packet4,
		func(ip []byte, dst netip.Addr) { header.IPv4(ip).SetDst(dst) }),
	newFamily("IPv6", fam6{}, 64, "2001:db8:1::1", "2001:db8:1::5", "2001:db8:2::5", "2001:db8:9::9", packet6,
		func(ip []byte, dst netip.Addr) { a := dst.As16(); copy(ip[24:40], a[:]) }),
}

// newFamily derives the prefixes of dst1 and dst2 from their length.
func newFamily(name string, fam Family, bits int, src, dst1, dst2, nowhere string,
	packet func(src, dst netip.Addr) []byte, setDst func(ip []byte, dst netip.Addr)) family {
	f := family{name: name, fam: fam, src: netip.MustParseAddr(src), dst1: netip.MustParseAddr(dst1),
		dst2: netip.MustParseAddr(dst2), nowhere: netip.MustParseAddr(nowhere), packet: packet, setDst: setDst}
	f.net1, f.net2 = netip.PrefixFrom(f.dst1, bits).Masked(), netip.PrefixFrom(f.dst2, bits).Masked()
	return f
}

// packet4 and packet6 build a UDP packet's IP header and 8 bytes after it.
func packet4(src, dst netip.Addr) []byte {
	b := make([]byte, header.IPv4MinSize+8)
	header.IPv4(b).Encode(header.IPv4Fields{TotalLen: uint16(len(b)), TTL: 64, Protocol: header.ProtoUDP, Src: src, Dst: dst})
	return b
}

func packet6(src, dst netip.Addr) []byte {
	b := make([]byte, header.IPv6MinSize+8)
	header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: 8, NextHeader: header.ProtoUDP, HopLimit: 64, Src: src, Dst: dst})
	return b
}
