package ipv4

import (
	"net/netip"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// The in-package tests watch the link through the Layer's out/nicMTU seam.
// Their packet builder is local: package stacktest will also hold whole
// topologies, which import this package, so importing it here would be an
// import cycle. Tests of the exported API (external_test.go) use the
// stacktest builders.

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

func flowTo(dst string) route.Flow {
	return route.Flow{Dst: ip(dst), Proto: header.ProtoUDP}
}

// pkt describes an IPv4 datagram to build.
type pkt struct {
	src, dst string
	proto    uint8
	ttl      uint8 // 0 = 64
	tos      uint8
	id       uint16
	df, mf   bool
	off      int
	opts     []byte
	payload  []byte
}

func (p pkt) bytes() []byte {
	ttl := p.ttl
	if ttl == 0 {
		ttl = 64
	}
	hl := header.IPv4HeaderLen(len(p.opts))
	b := make([]byte, hl+len(p.payload))
	copy(b[hl:], p.payload)
	header.IPv4(b).Encode(header.IPv4Fields{
		TOS: p.tos, TotalLen: uint16(len(b)), ID: p.id, DF: p.df, MF: p.mf, FragOffset: uint16(p.off),
		TTL: ttl, Protocol: p.proto, Src: ip(p.src), Dst: ip(p.dst), Options: p.opts,
	})
	return b
}

// udpish is a transport payload: an 8-byte header-like prefix then data.
func udpish(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func icmpMsg(typ, code uint8, rest uint32, data []byte) []byte {
	b := make([]byte, header.ICMPv4MinSize+len(data))
	m := header.ICMPv4(b)
	m.Encode(header.ICMPv4Fields{Type: typ, Code: code, RestOfHeader: rest})
	copy(b[header.ICMPv4MinSize:], data)
	m.SetChecksum()
	return b
}

// sent is a packet the layer handed to the link.
type sent struct {
	nic     int
	nextHop netip.Addr
	b       []byte
}

func (s sent) ip() header.IPv4 { return header.IPv4(s.b) }

func (s sent) icmp() header.ICMPv4 { return header.ICMPv4(header.IPv4(s.b).Payload()) }

type errRec struct {
	header.ICMPError
	inner []byte
}

// testNet is one Layer on a node with a pod link (NIC 1, 10.1.0.1/24,
// MTU 1500) and an uplink (NIC 2, 192.168.0.2/30, default via
// 192.168.0.1, MTU 1000).
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
	noCopy bool     // benchmarks: consume without recording
}

type option func(*Config)

func newTestNet(t testing.TB, opts ...option) *testNet {
	tn := &testNet{t: t, clk: clock.NewManual(), fib: route.NewTable(), hooks: &netfilter.Hooks{},
		mtu: map[int]int{1: 1500, 2: 1000}, rcvd: map[uint8][][]byte{}}
	for _, r := range []route.Route{
		{Dst: netip.MustParsePrefix("10.1.0.0/24"), NIC: 1},
		{Dst: netip.MustParsePrefix("192.168.0.0/30"), NIC: 2},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: ip("192.168.0.1"), NIC: 2},
	} {
		if err := tn.fib.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	tn.fib.AddLocal(ip("10.1.0.1"), 1)
	tn.fib.AddLocal(ip("192.168.0.2"), 2)
	cfg := Config{Clock: tn.clk, FIB: tn.fib, Hooks: tn.hooks, Forwarding: true}
	for _, o := range opts {
		o(&cfg)
	}
	tn.l = New(cfg)
	tn.l.out = func(nic int, nh netip.Addr, skb *buf.SKB) {
		if !tn.noCopy {
			tn.out = append(tn.out, sent{nic, nh, append([]byte(nil), skb.Bytes()...)})
		}
		skb.Consume()
	}
	tn.l.nicMTU = func(nic int) (int, bool) { m, ok := tn.mtu[nic]; return m, ok }
	for _, proto := range []uint8{header.ProtoUDP, header.ProtoTCP} {
		proto := proto
		tn.l.AddProtocol(proto, Protocol{
			Rcv: func(skb *buf.SKB) {
				if !tn.noCopy {
					tn.rcvd[proto] = append(tn.rcvd[proto], append([]byte(nil), skb.Bytes()...))
					tn.hdrs = append(tn.hdrs, append([]byte(nil), skb.NetworkHeader()[:header.IPv4MinSize]...))
				}
				skb.Consume()
			},
			Err: func(skb *buf.SKB, e header.ICMPError) {
				tn.errs = append(tn.errs, errRec{e, append([]byte(nil), skb.Bytes()...)})
			},
		})
	}
	return tn
}

// rcv hands b to the layer as received on nic.
func (tn *testNet) rcv(nic int, b []byte) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.InNIC = nic
	skb.Drops = &tn.drops
	tn.l.Rcv(nil, skb)
}

// rcvFrame hands b to the layer as received in an Ethernet frame to dst.
func (tn *testNet) rcvFrame(nic int, dst header.MAC, b []byte) {
	f := make([]byte, header.EthernetMinSize+len(b))
	header.Ethernet(f).Encode(header.EthernetFields{Dst: dst, Src: header.MAC{2, 0, 0, 0, 0, 5}, Type: header.EtherTypeIPv4})
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

// checkICMP verifies an ICMP packet the layer sent.
func checkICMP(t *testing.T, s sent, src, dst string, typ, code uint8) header.ICMPv4 {
	t.Helper()
	h, err := header.CheckIPv4(s.b)
	if err != nil || !h.ChecksumValid() {
		t.Fatalf("bad IPv4 header in ICMP: %v", err)
	}
	if h.Protocol() != header.ProtoICMP || h.Src() != ip(src) || h.Dst() != ip(dst) {
		t.Fatalf("ICMP %v → %v proto %d, want %s → %s", h.Src(), h.Dst(), h.Protocol(), src, dst)
	}
	m, err := header.CheckICMPv4(h.Payload())
	if err != nil || !m.ChecksumValid() {
		t.Fatalf("bad ICMP: %v", err)
	}
	if m.Type() != typ || m.Code() != code {
		t.Fatalf("ICMP type %d code %d, want %d/%d", m.Type(), m.Code(), typ, code)
	}
	return m
}
