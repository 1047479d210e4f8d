package header

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

var (
	ip6a = netip.MustParseAddr("fd00::1")
	ip6b = netip.MustParseAddr("2001:db8::2")
)

func TestIPv6RoundTrip(t *testing.T) {
	f := IPv6Fields{TrafficClass: 0xb8, FlowLabel: 0xabcde, PayloadLen: 5, NextHeader: ProtoUDP, HopLimit: 64, Src: ip6a, Dst: ip6b}
	b := make([]byte, IPv6MinSize+5+3) // 3 bytes of link padding
	IPv6(b).Encode(f)
	h, err := CheckIPv6(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.Fields() != f {
		t.Fatalf("fields %+v, want %+v", h.Fields(), f)
	}
	if len(h.Payload()) != 5 || h.TotalLen() != 45 {
		t.Fatalf("payload %d total %d", len(h.Payload()), h.TotalLen())
	}
	// RFC 8200 §3: version 6 in the top nibble, then the traffic class.
	if b[0] != 0x6b || b[1] != 0x8a {
		t.Fatalf("first octets % x", b[:4])
	}
	h.SetHopLimit(3)
	h.SetTrafficClass(0x01)
	h.SetPayloadLen(4)
	h.SetSrc(ip6b)
	h.SetDst(ip6a)
	g := h.Fields()
	if g.HopLimit != 3 || g.TrafficClass != 1 || g.FlowLabel != 0xabcde || g.PayloadLen != 4 || g.Src != ip6b || g.Dst != ip6a {
		t.Fatalf("setters: %+v", g)
	}
}

func TestCheckIPv6Errors(t *testing.T) {
	good := make([]byte, IPv6MinSize+8)
	IPv6(good).Encode(IPv6Fields{PayloadLen: 8, NextHeader: ProtoUDP, Src: ip6a, Dst: ip6b})
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"short", good[:39], ErrTruncated},
		{"version 4", func() []byte { c := bytes.Clone(good); c[0] = 0x45; return c }(), ErrBadVersion},
		{"payload past buffer", good[:IPv6MinSize+7], ErrBadTotalLen},
	}
	for _, tt := range tests {
		if _, err := CheckIPv6(tt.b); err != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

// RFC 4291 §2.7.1 and RFC 2464 §7 examples, and Appendix A's EUI-64.
func TestIPv6AddressHelpers(t *testing.T) {
	a := netip.MustParseAddr("fe80::2aa:ff:fe28:9c5a")
	sn := SolicitedNodeAddr(a)
	if sn != netip.MustParseAddr("ff02::1:ff28:9c5a") || !IsSolicitedNodeAddr(sn) || IsSolicitedNodeAddr(a) {
		t.Fatalf("solicited-node %v", sn)
	}
	if m := IPv6MulticastMAC(sn); m != (MAC{0x33, 0x33, 0xff, 0x28, 0x9c, 0x5a}) {
		t.Fatalf("multicast MAC %v", m)
	}
	if m := IPv6MulticastMAC(IPv6AllNodes); m != (MAC{0x33, 0x33, 0, 0, 0, 1}) {
		t.Fatalf("all-nodes MAC %v", m)
	}
	// RFC 4291 Appendix A: 34-56-78-9A-BC-DE → 36-56-78-FF-FE-9A-BC-DE.
	if ll := LinkLocalFromMAC(MAC{0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde}); ll != netip.MustParseAddr("fe80::3656:78ff:fe9a:bcde") {
		t.Fatalf("link-local %v", ll)
	}
	if !IsIPv4Mapped(netip.MustParseAddr("::ffff:10.0.0.1")) || IsIPv4Mapped(ip6a) {
		t.Fatal("IPv4-mapped")
	}
}

// RFC 8200 §8.1: the pseudo-header is source, destination, the 32-bit
// upper-layer length, three zero octets and the next header. Checked
// against a plain word-by-word sum of those bytes.
func TestICMPv6ChecksumPseudoHeader(t *testing.T) {
	msg := make([]byte, ICMPv6MinSize+5)
	copy(msg[8:], "hello")
	m := ICMPv6(msg)
	m.Encode(ICMPv6Fields{Type: ICMPv6EchoRequest, RestOfHeader: EchoRest(7, 9)})
	m.SetChecksum(ip6a, ip6b)
	if !m.ChecksumValid(ip6a, ip6b) || m.ChecksumValid(ip6b, netip.MustParseAddr("fd00::3")) {
		t.Fatal("checksum does not depend on the pseudo-header")
	}
	var ph []byte
	s, d := ip6a.As16(), ip6b.As16()
	ph = append(ph, s[:]...)
	ph = append(ph, d[:]...)
	ph = binary.BigEndian.AppendUint32(ph, uint32(len(msg)))
	ph = append(ph, 0, 0, 0, ProtoICMPv6)
	all := append(ph, msg...)
	all[len(ph)+2], all[len(ph)+3] = 0, 0
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var sum uint32
	for i := 0; i < len(all); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(all[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	if want := ^uint16(sum); m.Checksum() != want {
		t.Fatalf("checksum %#04x, plain sum says %#04x", m.Checksum(), want)
	}
	if m.IsError() || m.ID() != 7 || m.Seq() != 9 || string(m.Payload()) != "hello" {
		t.Fatalf("accessors: %+v", m.Fields())
	}
	if !ICMPv6IsError(ICMPv6PacketTooBig) || ICMPv6IsError(ICMPv6NeighborSolicit) {
		t.Fatal("IsError")
	}
	if _, err := CheckICMPv6(msg[:7]); err != ErrTruncated {
		t.Fatal("short ICMPv6 accepted")
	}
}

func TestIPv6OptionsWalk(t *testing.T) {
	// Pad1, a router alert (RFC 2711), PadN with 1 byte of padding, an
	// unknown option of type 0x3e (action 00).
	opts := []byte{IPv6OptPad1, IPv6OptRouterAlert, 2, 0, 0, IPv6OptPadN, 1, 0, 0x3e, 0}
	h := make([]byte, IPv6OptionsHeaderLen(len(opts)))
	EncodeIPv6Options(h, ProtoUDP, opts)
	if len(h) != 16 || h[1] != 1 {
		t.Fatalf("length %d, hdr ext len %d", len(h), h[1])
	}
	v, err := CheckIPv6Options(append(h, 0xee)) // trailing bytes beyond the header
	if err != nil {
		t.Fatal(err)
	}
	if v.Len() != 16 || v.NextHeader() != ProtoUDP {
		t.Fatalf("len %d nh %d", v.Len(), v.NextHeader())
	}
	type seen struct {
		typ uint8
		n   int
		off int
	}
	var got []seen
	if err := WalkIPv6Options(v.Options(), func(typ uint8, data []byte, off int) bool {
		got = append(got, seen{typ, len(data), off})
		return true
	}); err != nil {
		t.Fatal(err)
	}
	want := []seen{{IPv6OptRouterAlert, 2, 1}, {0x3e, 0, 8}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("options %+v, want %+v", got, want)
	}
	if IPv6OptionAction(0x3e) != IPv6OptActionSkip || IPv6OptionAction(0x7e) != IPv6OptActionDiscard ||
		IPv6OptionAction(0xbe) != IPv6OptActionDiscardICMP || IPv6OptionAction(IPv6OptJumbo) != IPv6OptActionDiscardICMPUnicast {
		t.Fatal("action bits")
	}
	// An option running past the header, and a header longer than the buffer.
	bad := []byte{ProtoUDP, 0, 0x3e, 5, 0, 0, 0, 0}
	if _, err := CheckIPv6Options(bad); err != ErrBadOption {
		t.Fatalf("overrun option: %v", err)
	}
	if _, err := CheckIPv6Options([]byte{ProtoUDP, 1, 1, 4, 0, 0, 0, 0}); err != ErrTruncated {
		t.Fatalf("overrun header: %v", err)
	}
}

func TestIPv6FragmentAndRouting(t *testing.T) {
	b := make([]byte, IPv6FragmentSize)
	f := IPv6FragmentFields{NextHeader: ProtoUDP, FragOffset: 1448, More: true, ID: 0xdeadbeef}
	IPv6Fragment(b).Encode(f)
	v, err := CheckIPv6Fragment(b)
	if err != nil || v.Fields() != f || v.IsAtomic() {
		t.Fatalf("%v %+v", err, v.Fields())
	}
	IPv6Fragment(b).Encode(IPv6FragmentFields{NextHeader: ProtoTCP, ID: 1})
	if !IPv6Fragment(b).IsAtomic() {
		t.Fatal("atomic fragment")
	}
	r := make([]byte, 24)
	n := EncodeIPv6Routing(r, ProtoTCP, IPv6RoutingType0, 1, make([]byte, 20))
	rv, err := CheckIPv6Routing(r[:n])
	if err != nil || rv.Len() != 24 || rv.RoutingType() != 0 || rv.SegmentsLeft() != 1 || rv.NextHeader() != ProtoTCP || len(rv.Data()) != 20 {
		t.Fatalf("%v %d % x", err, n, r)
	}
}

func TestIPv6SkipExtHeaders(t *testing.T) {
	pkt := func(chain ...[]byte) []byte {
		p := make([]byte, IPv6MinSize)
		for _, c := range chain {
			p = append(p, c...)
		}
		return p
	}
	hbh := make([]byte, 8)
	EncodeIPv6Options(hbh, ProtoFragment, nil)
	frag0 := make([]byte, 8)
	IPv6Fragment(frag0).Encode(IPv6FragmentFields{NextHeader: ProtoUDP, More: true, ID: 5})
	fragN := make([]byte, 8)
	IPv6Fragment(fragN).Encode(IPv6FragmentFields{NextHeader: ProtoUDP, FragOffset: 8, ID: 5})
	udp := make([]byte, 8)

	p := pkt(hbh, frag0, udp)
	p[6] = ProtoHopByHop
	u, err := IPv6SkipExtHeaders(p)
	if err != nil || u.Proto != ProtoUDP || u.Offset != 56 || !u.Fragment || u.FragOffset != 0 {
		t.Fatalf("first fragment: %+v %v", u, err)
	}
	p = pkt(fragN, udp)
	p[6] = ProtoFragment
	if u, err = IPv6SkipExtHeaders(p); err != nil || u.FragOffset != 8 || u.Offset != 48 {
		t.Fatalf("later fragment: %+v %v", u, err)
	}
	p = pkt(hbh[:4])
	p[6] = ProtoHopByHop
	if _, err = IPv6SkipExtHeaders(p); err != ErrTruncated {
		t.Fatalf("cut header: %v", err)
	}
	// A loop of Destination Options headers longer than the bound.
	var chain [][]byte
	for range MaxIPv6ExtHeaders + 1 {
		d := make([]byte, 8)
		EncodeIPv6Options(d, ProtoDestOpts, nil)
		chain = append(chain, d)
	}
	p = pkt(chain...)
	p[6] = ProtoDestOpts
	if _, err = IPv6SkipExtHeaders(p); err != ErrTooManyExtHeaders {
		t.Fatalf("long chain: %v", err)
	}
}
