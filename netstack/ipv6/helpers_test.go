package ipv6

import (
	"net/netip"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// The in-package tests watch the link through the Layer's out/nicMTU
// seam. As in package ipv4 the packet builder is local: stacktest's
// topologies import the root package, which imports this one. Tests
// through a whole stack live in the root package and in stacktest.

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

// Addresses of the test node: a pod link (NIC 1, fd00:1::1/64 and
// fe80::1) and an uplink (NIC 2, 2001:db8:ff::2/64 and fe80::2, default
// via fe80::ff, MTU 1280). NIC 3 exists but has no IPv6.
const (
	gw     = "fd00:1::1"
	pod    = "fd00:1::5"
	podLL  = "fe80::5"
	upAddr = "2001:db8:ff::2"
	remote = "2606:4700::1"
)

func flowTo(dst string) route.Flow {
	return route.Flow{Dst: ip(dst), Proto: header.ProtoUDP}
}

// ext6 is an extension header to build: its number and bytes (the first
// octet is overwritten with the next header's number).
type ext6 struct {
	nh  uint8
	raw []byte
}

func optsHdr(nh uint8, opts ...byte) ext6 {
	raw := make([]byte, header.IPv6OptionsHeaderLen(len(opts)))
	header.EncodeIPv6Options(raw, 0, opts)
	return ext6{nh, raw}
}

func fragHdr(id uint32, off int, more bool) ext6 {
	raw := make([]byte, header.IPv6FragmentSize)
	header.IPv6Fragment(raw).Encode(header.IPv6FragmentFields{FragOffset: uint16(off), More: more, ID: id})
	return ext6{header.ProtoFragment, raw}
}

func routingHdr(typ, segLeft uint8) ext6 {
	raw := make([]byte, 24)
	header.EncodeIPv6Routing(raw, 0, typ, segLeft, make([]byte, 20))
	return ext6{header.ProtoRouting, raw}
}

// pkt describes an IPv6 packet to build.
type pkt struct {
	src, dst string
	proto    uint8 // the upper layer (after the extension headers)
	hop      uint8 // 0 = 64
	tc       uint8
	ext      []ext6
	payload  []byte
	plen     int // if not 0, written as the payload length
}

func (p pkt) bytes() []byte {
	hop := p.hop
	if hop == 0 {
		hop = 64
	}
	n := header.IPv6MinSize
	for _, e := range p.ext {
		n += len(e.raw)
	}
	b := make([]byte, n+len(p.payload))
	next := make([]uint8, len(p.ext)+1)
	for i, e := range p.ext {
		next[i] = e.nh
	}
	next[len(p.ext)] = p.proto
	plen := uint16(len(b) - header.IPv6MinSize)
	if p.plen != 0 {
		plen = uint16(p.plen)
	}
	header.IPv6(b).Encode(header.IPv6Fields{TrafficClass: p.tc, PayloadLen: plen, NextHeader: next[0], HopLimit: hop,
		Src: ip(p.src), Dst: ip(p.dst)})
	off := header.IPv6MinSize
	for i, e := range p.ext {
		copy(b[off:], e.raw)
		b[off] = next[i+1]
		off += len(e.raw)
	}
	copy(b[off:], p.payload)
	return b
}

// udpish is an upper-layer payload: an 8-byte header-like prefix then data.
func udpish(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// icmp6 builds an ICMPv6 message from src to dst with its checksum.
func icmp6(src, dst string, typ, code uint8, rest uint32, data []byte) []byte {
	b := make([]byte, header.ICMPv6MinSize+len(data))
	m := header.ICMPv6(b)
	m.Encode(header.ICMPv6Fields{Type: typ, Code: code, RestOfHeader: rest})
	copy(b[header.ICMPv6MinSize:], data)
	m.SetChecksum(ip(src), ip(dst))
	return b
}

// sent is a packet the layer handed to the link.
type sent struct {
	nic     int
	nextHop netip.Addr
	b       []byte
}

func (s sent) ip() header.IPv6 { return header.IPv6(s.b) }

type errRec struct {
	typ, code uint8
	info      uint32
	inner     []byte
	l4off     int
}

// testNet is one Layer on a node with a pod link and an uplink (see the
// constants above).
type testNet struct {
	t      testing.TB
	clk    *clock.Manual
	fib    *route.Table
	hooks  *netfilter.Hooks
	l      *Layer
	mtu    map[int]int
	out    []sent
	drops  buf.DropStats // receive-side drops (the NIC's, in a stack)
	rcvd   map[uint8][][]byte
	errs   []errRec
	hdrs   [][]byte // network headers seen by Rcv
	noCopy bool
}

type option func(*Config)

func newTestNet(t testing.TB, opts ...option) *testNet {
	tn := &testNet{t: t, clk: clock.NewManual(), fib: route.NewTable(), hooks: &netfilter.Hooks{},
		mtu: map[int]int{1: 1500, 2: 1280, 3: 1500}, rcvd: map[uint8][][]byte{}}
	for _, r := range []route.Route{
		{Dst: pfx("fd00:1::/64"), NIC: 1},
		{Dst: pfx("fe80::/64"), NIC: 1},
		{Dst: pfx("2001:db8:ff::/64"), NIC: 2},
		{Dst: pfx("fe80::/64"), NIC: 2},
		{Dst: pfx("::/0"), Gateway: ip("fe80::ff"), NIC: 2},
	} {
		if err := tn.fib.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	tn.fib.AddLocal(ip(gw), 1)
	tn.fib.AddLocal(ip("fe80::1"), 1)
	tn.fib.AddLocal(ip(upAddr), 2)
	tn.fib.AddLocal(ip("fe80::2"), 2)
	cfg := Config{Clock: tn.clk, FIB: tn.fib, Hooks: tn.hooks, Forwarding: true}
	for _, o := range opts {
		o(&cfg)
	}
	tn.l = New(cfg)
	tn.fib = tn.l.fib
	tn.l.out = func(nic int, nh netip.Addr, skb *buf.SKB) {
		if !tn.noCopy {
			tn.out = append(tn.out, sent{nic, nh, append([]byte(nil), skb.Bytes()...)})
		}
		skb.Consume()
	}
	tn.l.nicMTU = func(nic int) (int, bool) { m, ok := tn.mtu[nic]; return m, ok }
	for _, proto := range []uint8{header.ProtoUDP, header.ProtoTCP, 253} {
		proto := proto
		tn.l.AddProtocol(proto, Protocol{
			Rcv: func(skb *buf.SKB) {
				if !tn.noCopy {
					tn.rcvd[proto] = append(tn.rcvd[proto], append([]byte(nil), skb.Bytes()...))
					tn.hdrs = append(tn.hdrs, append([]byte(nil), skb.NetworkHeader()[:header.IPv6MinSize]...))
				}
				skb.Consume()
			},
			Err: func(skb *buf.SKB, e header.ICMPError) {
				if !e.V6 {
					t.Errorf("an ICMPv6 error without V6: %+v", e)
				}
				tn.errs = append(tn.errs, errRec{e.Type, e.Code, e.Info, append([]byte(nil), skb.Bytes()...),
					len(skb.Bytes()) - len(skb.TransportHeader())})
			},
		})
	}
	return tn
}

// withPeer makes the layer the pod fd00:1::5 (and fe80::5) on NIC 1, the
// far end of the default testNet's pod link.
func withPeer(c *Config) {
	fib := route.NewTable()
	_ = fib.Add(route.Route{Dst: pfx("fd00:1::/64"), NIC: 1})
	_ = fib.Add(route.Route{Dst: pfx("fe80::/64"), NIC: 1})
	_ = fib.Add(route.Route{Dst: pfx("::/0"), Gateway: ip("fe80::1"), NIC: 1})
	fib.AddLocal(ip(pod), 1)
	fib.AddLocal(ip(podLL), 1)
	c.FIB = fib
}

// rcv hands b to the layer as received on nic (unicast to our MAC).
func (tn *testNet) rcv(nic int, b []byte) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.InNIC = nic
	skb.Drops = &tn.drops
	tn.l.Rcv(nil, skb)
}

// rcvFrame hands b to the layer in an Ethernet frame to dst.
func (tn *testNet) rcvFrame(nic int, dst header.MAC, b []byte) {
	f := make([]byte, header.EthernetMinSize+len(b))
	header.Ethernet(f).Encode(header.EthernetFields{Dst: dst, Src: header.MAC{2, 0, 0, 0, 0, 5}, Type: header.EtherTypeIPv6})
	copy(f[header.EthernetMinSize:], b)
	skb := buf.FromBytes(buf.MaxHeadroom, f)
	skb.SetMACHeader()
	skb.Pull(header.EthernetMinSize)
	skb.InNIC = nic
	skb.Drops = &tn.drops
	tn.l.Rcv(nil, skb)
}

// take returns and clears the packets sent so far.
func (tn *testNet) take() []sent {
	o := tn.out
	tn.out = nil
	return o
}

// counter returns a counter by nstat name.
func (tn *testNet) counter(name string) uint64 {
	tn.t.Helper()
	v, ok := tn.l.Counters()[name]
	if !ok {
		tn.t.Fatalf("no counter %q", name)
	}
	return v
}

// dropped returns the count of a drop reason over receive and local drops.
func (tn *testNet) dropped(r buf.DropReason) uint64 { return tn.drops.Get(r) + tn.l.Drops().Get(r) }

// checkICMP verifies an ICMPv6 packet the layer sent and returns it.
func checkICMP(t *testing.T, s sent, src, dst string, typ, code uint8) header.ICMPv6 {
	t.Helper()
	h, err := header.CheckIPv6(s.b)
	if err != nil {
		t.Fatalf("bad IPv6 header in ICMPv6: %v", err)
	}
	if h.NextHeader() != header.ProtoICMPv6 || h.Src() != ip(src) || h.Dst() != ip(dst) {
		t.Fatalf("ICMPv6 %v → %v nh %d, want %s → %s", h.Src(), h.Dst(), h.NextHeader(), src, dst)
	}
	m, err := header.CheckICMPv6(h.Payload())
	if err != nil || !m.ChecksumValid(h.Src(), h.Dst()) {
		t.Fatalf("bad ICMPv6: %v", err)
	}
	if m.Type() != typ || m.Code() != code {
		t.Fatalf("ICMPv6 type %d code %d, want %d/%d", m.Type(), m.Code(), typ, code)
	}
	return m
}
