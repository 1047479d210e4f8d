package header_test

import (
	"bytes"
	"net/netip"
	"reflect"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// IPv6 fuzz targets, one per parser (STYLE §5), seeded from the
// stacktest builders. The property: once Check succeeds no accessor
// panics, and Encode of the decoded fields reproduces what it models.

func seedPackets6() [][]byte {
	ll := netip.MustParseAddr("fe80::1")
	target := netip.MustParseAddr("fd00::2")
	return [][]byte{
		stacktest.UDPv6().Bytes(),
		stacktest.TCPv6SYN().Bytes(),
		stacktest.Echo6(1, 2).Bytes(),
		stacktest.UDPv6().HopByHop([]byte{header.IPv6OptRouterAlert, 2, 0, 0}).Bytes(),
		stacktest.UDPv6().DestOpts([]byte{0x3e, 1, 0}).RoutingHeader(header.IPv6RoutingType0, 0, make([]byte, 20)).Bytes(),
		stacktest.UDPv6().FragmentHeader(7, 0, true).Bytes(),
		stacktest.IPv6("fd00::1", "fd00::2").FragmentHeader(7, 8, false).Proto(header.ProtoUDP).Payload([]byte("tail")).Bytes(),
		stacktest.IPv6("fd00::9", "fd00::1").ICMPv6(header.ICMPv6PacketTooBig, 0, 1280).Payload(stacktest.UDPv6().Bytes()).Bytes(),
		stacktest.IPv6("fe80::1", "ff02::1:ff00:2").NS(target, macA).Bytes(),
		stacktest.IPv6("fd00::2", "fe80::1").NA(true, true, true, target, macB).Bytes(),
		stacktest.IPv6("::", "ff02::2").RS(header.MAC{}).Bytes(),
		stacktest.IPv6("fe80::1", "ff02::1").RA(header.NDPRouterAdvertFields{CurHopLimit: 64, RouterLifetime: 1800,
			Options: header.NDPOptionFields{SourceLinkAddr: macA, MTU: 1500, Prefixes: []header.NDPPrefixInfo{
				{Prefix: netip.MustParsePrefix("fd00::/64"), OnLink: true, Autonomous: true, ValidLifetime: 1, PreferredLifetime: 1}}}}).Bytes(),
		stacktest.IPv6("fe80::1", "fd00::2").Redirect(ll, target, nil).Bytes(),
	}
}

func FuzzIPv6(f *testing.F) {
	for _, p := range seedPackets6() {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := header.CheckIPv6(b)
		if err != nil {
			return
		}
		_, _, _ = h.Payload(), h.FlowLabel(), h.TotalLen()
		out := make([]byte, header.IPv6MinSize)
		header.IPv6(out).Encode(h.Fields())
		want := b[:header.IPv6MinSize]
		if !bytes.Equal(out[:8], want[:8]) {
			t.Fatalf("re-encode\n% x\n% x", out[:8], want[:8])
		}
		// Addresses round-trip unless they were IPv4-mapped, which
		// Encode keeps as they are too (As16).
		if !bytes.Equal(out[8:], want[8:]) {
			t.Fatalf("addresses\n% x\n% x", out[8:], want[8:])
		}
		u, err := header.IPv6SkipExtHeaders(h[:h.TotalLen()])
		if err == nil && (u.Offset < header.IPv6MinSize || u.Offset > h.TotalLen()) {
			t.Fatalf("upper layer at %d of %d", u.Offset, h.TotalLen())
		}
	})
}

// FuzzIPv6ExtHeaders walks the extension headers the way the ipv6 layer
// does: each kind's Check, then its accessors.
func FuzzIPv6ExtHeaders(f *testing.F) {
	for _, p := range seedPackets6() {
		f.Add(p[header.IPv6MinSize:], p[6])
	}
	f.Fuzz(func(t *testing.T, b []byte, nh uint8) {
		for i := 0; i < header.MaxIPv6ExtHeaders && header.IPv6IsExtHeader(nh); i++ {
			n, err := header.IPv6ExtHeaderLen(nh, b)
			if err != nil {
				return
			}
			switch nh {
			case header.ProtoHopByHop, header.ProtoDestOpts:
				o, err := header.CheckIPv6Options(b)
				if err != nil {
					return
				}
				if o.Len() != n {
					t.Fatalf("options header %d bytes, length says %d", o.Len(), n)
				}
				_ = header.WalkIPv6Options(o.Options(), func(typ uint8, data []byte, off int) bool {
					if off < 0 || off+2+len(data) > len(o.Options()) {
						t.Fatalf("option at %d+%d outside %d", off, len(data), len(o.Options()))
					}
					return true
				})
			case header.ProtoRouting:
				r, err := header.CheckIPv6Routing(b)
				if err != nil {
					t.Fatalf("length passed but routing check failed: %v", err)
				}
				_, _, _ = r.RoutingType(), r.SegmentsLeft(), r.Data()
			case header.ProtoFragment:
				fr, err := header.CheckIPv6Fragment(b)
				if err != nil {
					t.Fatal(err)
				}
				out := make([]byte, header.IPv6FragmentSize)
				header.IPv6Fragment(out).Encode(fr.Fields())
				want := bytes.Clone(b[:header.IPv6FragmentSize])
				want[1] = 0     // reserved
				want[3] &^= 0x6 // reserved bits
				if !bytes.Equal(out, want) {
					t.Fatalf("fragment re-encode\n% x\n% x", out, want)
				}
			}
			nh = b[0]
			b = b[n:]
		}
	})
}

func FuzzICMPv6(f *testing.F) {
	src, dst := stacktest.DefaultSrcIP6, stacktest.DefaultDstIP6
	for _, p := range seedPackets6() {
		if h, err := header.CheckIPv6(p); err == nil {
			if u, err := header.IPv6SkipExtHeaders(p); err == nil && u.Proto == header.ProtoICMPv6 {
				f.Add(p[u.Offset:h.TotalLen()])
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := header.CheckICMPv6(b)
		if err != nil {
			return
		}
		_, _, _, _, _ = h.ID(), h.Seq(), h.MTU(), h.Pointer(), h.Payload()
		valid := h.ChecksumValid(src, dst)
		out := header.ICMPv6(bytes.Clone(b))
		out.Encode(h.Fields())
		out.SetChecksum(src, dst)
		if !out.ChecksumValid(src, dst) {
			t.Fatal("SetChecksum did not produce a valid checksum")
		}
		zero := func(c uint16) bool { return c == 0 || c == 0xffff }
		if valid && out.Checksum() != h.Checksum() && !(zero(out.Checksum()) && zero(h.Checksum())) {
			t.Fatalf("valid checksum %#04x re-encoded as %#04x", h.Checksum(), out.Checksum())
		}
		if !bytes.Equal(out[:2], b[:2]) || !bytes.Equal(out[4:], b[4:]) {
			t.Fatal("re-encode changed bytes")
		}
	})
}

// FuzzNDP parses each NDP message type and checks that re-encoding the
// decoded fields decodes to the same fields.
func FuzzNDP(f *testing.F) {
	for _, p := range seedPackets6() {
		if h, err := header.CheckIPv6(p); err == nil && h.NextHeader() == header.ProtoICMPv6 {
			f.Add(p[header.IPv6MinSize:h.TotalLen()])
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		switch b[0] {
		case header.ICMPv6NeighborSolicit:
			m, err := header.CheckNDPNeighborSolicit(b)
			if err != nil {
				return
			}
			fl := m.Fields()
			out := make([]byte, fl.Len())
			header.NDPNeighborSolicit(out).Encode(&fl)
			again, err := header.CheckNDPNeighborSolicit(out)
			if err != nil || !reflect.DeepEqual(again.Fields(), fl) {
				t.Fatalf("NS round trip: %v\n%+v\n%+v", err, again.Fields(), fl)
			}
		case header.ICMPv6NeighborAdvert:
			m, err := header.CheckNDPNeighborAdvert(b)
			if err != nil {
				return
			}
			fl := m.Fields()
			out := make([]byte, fl.Len())
			header.NDPNeighborAdvert(out).Encode(&fl)
			again, err := header.CheckNDPNeighborAdvert(out)
			if err != nil || !reflect.DeepEqual(again.Fields(), fl) {
				t.Fatalf("NA round trip: %v", err)
			}
		case header.ICMPv6RouterAdvert:
			m, err := header.CheckNDPRouterAdvert(b)
			if err != nil {
				return
			}
			fl := m.Fields()
			// Prefix addresses keep their host bits; lifetimes and flags
			// round-trip. Only options an encoder writes are compared.
			out := make([]byte, fl.Len())
			header.NDPRouterAdvert(out).Encode(&fl)
			again, err := header.CheckNDPRouterAdvert(out)
			if err != nil || !reflect.DeepEqual(again.Fields(), fl) {
				t.Fatalf("RA round trip: %v\n%+v\n%+v", err, again.Fields(), fl)
			}
		case header.ICMPv6RouterSolicit:
			if m, err := header.CheckNDPRouterSolicit(b); err == nil {
				_, _ = m.Options().SourceLinkAddr()
			}
		case header.ICMPv6Redirect:
			if m, err := header.CheckNDPRedirect(b); err == nil {
				_, _, _ = m.Target(), m.Destination(), m.Options().Prefixes()
			}
		}
	})
}
