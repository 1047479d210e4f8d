package netfilter_test

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

var (
	client  = netip.MustParseAddr("10.0.1.1")
	client2 = netip.MustParseAddr("10.0.1.2")
	server  = netip.MustParseAddr("192.0.2.50")
	pub     = netip.MustParseAddr("192.0.2.1")
	outside = netip.MustParseAddr("198.51.100.7")
)

// view checks a datagram and returns its header fields and transport
// ports, failing on any bad checksum (IP, TCP, UDP, ICMP).
type view struct {
	src, dst     netip.Addr
	sport, dport uint16
	ip           header.IPv4
}

func check(t *testing.T, b []byte) view {
	t.Helper()
	ip, err := header.CheckIPv4(b)
	if err != nil {
		t.Fatalf("bad IPv4: %v", err)
	}
	if !ip.ChecksumValid() {
		t.Fatal("bad IP header checksum")
	}
	v := view{src: ip.Src(), dst: ip.Dst(), ip: ip}
	l4 := ip.Payload()
	switch ip.Protocol() {
	case header.ProtoTCP:
		th := header.TCP(l4)
		if !th.ChecksumValid(v.src, v.dst) {
			t.Fatal("bad TCP checksum")
		}
		v.sport, v.dport = th.SrcPort(), th.DstPort()
	case header.ProtoUDP:
		u := header.UDP(l4)
		if !u.ChecksumValid(v.src, v.dst) {
			t.Fatal("bad UDP checksum")
		}
		v.sport, v.dport = u.SrcPort(), u.DstPort()
	case header.ProtoICMP:
		ic := header.ICMPv4(l4)
		if !ic.ChecksumValid() {
			t.Fatal("bad ICMP checksum")
		}
		v.sport = ic.ID()
	}
	return v
}

func tcpSeg(src, dst netip.Addr, sp, dp uint16, f header.TCPFlags) []byte {
	return stacktest.Frame().IPv4Addr(src, dst).TCP(sp, dp).Flags(f).Seq(1).Ack(1).Window(1000).Payload([]byte("data")).Bytes()
}

func udpDgram(src, dst netip.Addr, sp, dp uint16) []byte {
	return stacktest.Frame().IPv4Addr(src, dst).UDP(sp, dp).Payload([]byte("hello")).Bytes()
}

// MASQUERADE rewrites the source to the output link's address, keeps the
// port when it is free, gives a second client with the same port another
// one, and translates replies back (RFC 3022 NAPT).
func TestMasquerade(t *testing.T) {
	r := newRig(t, "*nat\n-A POSTROUTING -o up0 -j MASQUERADE\n", conntrack.Config{})
	for _, tc := range []struct {
		name  string
		out   []byte
		reply func(sport uint16) []byte
		proto uint8
	}{
		{"tcp", tcpSeg(client, server, 40000, 80, header.SYN), func(p uint16) []byte { return tcpSeg(server, pub, 80, p, header.SYN|header.ACK) }, header.ProtoTCP},
		{"udp", udpDgram(client, server, 5000, 53), func(p uint16) []byte { return udpDgram(server, pub, 53, p) }, header.ProtoUDP},
		{"icmp echo", stacktest.Frame().IPv4Addr(client, server).Echo(77, 1).Bytes(), func(p uint16) []byte {
			return stacktest.Frame().IPv4Addr(server, pub).EchoReply(p, 1).Bytes()
		}, header.ProtoICMP},
	} {
		v, b := r.outb(tc.out)
		if !v.Accepted() {
			t.Fatalf("%s: %+v", tc.name, v)
		}
		o := check(t, b)
		orig := check(t, tc.out)
		if o.src != pub || o.dst != server || o.sport != orig.sport || o.dport != orig.dport {
			t.Fatalf("%s: out %+v", tc.name, o)
		}
		// A second client with the same port gets another one.
		second := append([]byte(nil), tc.out...)
		header.IPv4(second).SetSrc(client2)
		switch tc.proto {
		case header.ProtoTCP:
			header.TCP(second[20:]).SetChecksum(client2, server)
		case header.ProtoUDP:
			header.UDP(second[20:]).SetChecksum(client2, server)
		}
		v, b2 := r.outb(second)
		if !v.Accepted() {
			t.Fatal(v)
		}
		o2 := check(t, b2)
		if o2.src != pub || o2.sport == o.sport {
			t.Fatalf("%s: second client %+v collides with %+v", tc.name, o2, o)
		}
		for i, want := range []struct {
			addr netip.Addr
			port uint16
			to   uint16
		}{{client, orig.sport, o.sport}, {client2, orig.sport, o2.sport}} {
			v, back := r.backb(tc.reply(want.to))
			if !v.Accepted() {
				t.Fatal(v)
			}
			bv := check(t, back)
			if bv.dst != want.addr || (tc.proto != header.ProtoICMP && bv.dport != want.port) || (tc.proto == header.ProtoICMP && bv.sport != want.port) || bv.src != server {
				t.Fatalf("%s: reply %d translated to %+v, want %v:%d", tc.name, i, bv, want.addr, want.port)
			}
		}
	}
	// A UDP datagram without checksum keeps none (RFC 768).
	nock := stacktest.Frame().IPv4Addr(client, server).UDP(6000, 53).NoUDPChecksum().Payload([]byte("x")).Bytes()
	_, b := r.outb(nock)
	if binary.BigEndian.Uint16(b[26:]) != 0 || header.IPv4(b).Src() != pub {
		t.Fatalf("zero UDP checksum changed: %x", b[20:28])
	}
}

// DNAT forwards a port to an inside host; its replies leave with the
// public address and port (port forwarding).
func TestDNATPortForward(t *testing.T) {
	r := newRig(t, "*nat\n-A PREROUTING -i up0 -p tcp --dport 8080 -j DNAT --to-destination 10.0.1.1:80\n", conntrack.Config{})
	v, b := r.backb(tcpSeg(outside, pub, 5555, 8080, header.SYN))
	if !v.Accepted() {
		t.Fatal(v)
	}
	if o := check(t, b); o.dst != client || o.dport != 80 || o.src != outside || o.sport != 5555 {
		t.Fatalf("in: %+v", o)
	}
	v, b = r.outb(tcpSeg(client, outside, 80, 5555, header.SYN|header.ACK))
	if !v.Accepted() {
		t.Fatal(v)
	}
	if o := check(t, b); o.src != pub || o.sport != 8080 || o.dst != outside || o.dport != 5555 {
		t.Fatalf("reply: %+v", o)
	}
	// Another port is not forwarded.
	if _, b := r.backb(tcpSeg(outside, pub, 5556, 8081, header.SYN)); check(t, b).dst != pub {
		t.Fatal("port 8081 forwarded")
	}
	e := r.nf.Conntrack().List()
	if len(e) != 2 || e[0].Reply.Src != client || e[0].Reply.SrcPort != 80 {
		t.Fatalf("conntrack: %v", e)
	}
}

// REDIRECT sends a flow to the stack itself: the input link's address.
func TestRedirect(t *testing.T) {
	r := newRig(t, "*nat\n-A PREROUTING -i eth0 -p udp --dport 53 -j REDIRECT --to-ports 5353\n", conntrack.Config{})
	v, b := r.local(udpDgram(client, netip.MustParseAddr("8.8.8.8"), 4000, 53), r.in)
	if !v.Accepted() {
		t.Fatal(v)
	}
	if o := check(t, b); o.dst != netip.MustParseAddr("10.0.1.254") || o.dport != 5353 {
		t.Fatalf("redirected to %+v", o)
	}
}

// An ICMP error from the server about a masqueraded flow reaches the
// client with the outer destination and the quoted datagram translated
// back (nf_nat_icmp_reply_translation) and every checksum right.
func TestICMPErrorTranslatedBack(t *testing.T) {
	r := newRig(t, "*nat\n-A POSTROUTING -o up0 -j MASQUERADE\n", conntrack.Config{})
	// Occupy port 5000 so the flow under test is remapped.
	r.outb(udpDgram(client2, server, 5000, 53))
	_, out := r.outb(udpDgram(client, server, 5000, 53))
	o := check(t, out)
	if o.sport == 5000 {
		t.Fatal("expected a remapped port")
	}
	errPkt := stacktest.Frame().IPv4Addr(server, pub).ICMP(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0).Payload(out).Bytes()
	v, b := r.backb(errPkt)
	if !v.Accepted() {
		t.Fatal(v)
	}
	e := check(t, b)
	if e.dst != client || e.src != server {
		t.Fatalf("outer %+v", e)
	}
	inner, ok := conntrack.CheckQuoted(header.ICMPv4(e.ip.Payload()).Payload())
	if !ok {
		t.Fatal("quote")
	}
	if !header.IPv4(inner[:inner.HeaderLen()]).ChecksumValid() {
		t.Fatal("inner IP checksum")
	}
	iu := header.UDP(inner[inner.HeaderLen():])
	if inner.Src() != client || iu.SrcPort() != 5000 || inner.Dst() != server || iu.DstPort() != 53 {
		t.Fatalf("inner %v:%d > %v:%d", inner.Src(), iu.SrcPort(), inner.Dst(), iu.DstPort())
	}
	if !iu.ChecksumValid(client, server) {
		t.Fatal("inner UDP checksum not updated")
	}
	// The same for a DNATed flow: the error's source becomes the public
	// address and the quote's destination the forwarded port.
	r = newRig(t, "*nat\n-A PREROUTING -i up0 -p udp --dport 5353 -j DNAT --to-destination 10.0.1.1:53\n", conntrack.Config{})
	_, in := r.backb(udpDgram(outside, pub, 7000, 5353))
	errPkt = stacktest.Frame().IPv4Addr(client, outside).ICMP(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0).Payload(in[:28]).Bytes()
	_, b = r.outb(errPkt)
	e = check(t, b)
	inner, _ = conntrack.CheckQuoted(header.ICMPv4(e.ip.Payload()).Payload())
	iu = header.UDP(inner[inner.HeaderLen():])
	if e.src != pub || e.dst != outside || inner.Dst() != pub || iu.DstPort() != 5353 || inner.Src() != outside {
		t.Fatalf("DNAT error: outer %v > %v, inner dst %v:%d", e.src, e.dst, inner.Dst(), iu.DstPort())
	}
}

// A CHECKSUM_PARTIAL packet holds the uncomplemented pseudo-header sum in
// its checksum field: SNAT must leave it equal to the sum for the new
// addresses (so the device's completion is right) and must not fold the
// port in (the port is in the summed data).
func TestNATPartialChecksum(t *testing.T) {
	r := newRig(t, "*nat\n-A POSTROUTING -o up0 -j MASQUERADE --to-ports 30000-30000\n", conntrack.Config{})
	for _, proto := range []uint8{header.ProtoTCP, header.ProtoUDP} {
		var b []byte
		if proto == header.ProtoTCP {
			b = tcpSeg(client, server, 40000+uint16(proto), 80, header.SYN)
		} else {
			b = udpDgram(client, server, 40000+uint16(proto), 53)
		}
		l4len := len(b) - 20
		off := 16
		if proto == header.ProtoUDP {
			off = 6
		}
		binary.BigEndian.PutUint16(b[20+off:], header.Fold(header.PseudoHeaderSum(proto, client, server, l4len)))
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		skb.SetNetworkHeader()
		skb.SetTransportHeaderAt(20)
		skb.Csum = buf.CsumPartial
		skb.CsumOffset = uint16(off)
		for _, h := range []struct {
			hook    netfilter.Hook
			in, out int
		}{{netfilter.PreRouting, r.in.ID(), 0}, {netfilter.Forward, r.in.ID(), r.out.ID()}, {netfilter.PostRouting, r.in.ID(), r.out.ID()}} {
			if v := r.hooks.Run(h.hook, skb, h.in, h.out); !v.Accepted() {
				t.Fatal(v)
			}
		}
		got := skb.Bytes()
		if header.IPv4(got).Src() != pub || binary.BigEndian.Uint16(got[20:]) != 30000 {
			t.Fatalf("not translated: %x", got[:24])
		}
		if want := header.Fold(header.PseudoHeaderSum(proto, pub, server, l4len)); binary.BigEndian.Uint16(got[20+off:]) != want {
			t.Fatalf("proto %d: partial field %#x, want %#x", proto, binary.BigEndian.Uint16(got[20+off:]), want)
		}
		// Completing it as the device would gives a valid checksum.
		l4 := got[20:]
		c := header.ChecksumFinal(header.Checksum(l4, 0))
		binary.BigEndian.PutUint16(l4[off:], c)
		check(t, got)
		skb.Consume()
	}
}

// Fragments are reassembled before conntrack so NAT sees ports; an
// overlapping fragment discards the datagram (defrag.go).
func TestDefragBeforeNAT(t *testing.T) {
	r := newRig(t, "*nat\n-A POSTROUTING -o up0 -j MASQUERADE\n", conntrack.Config{})
	payload := make([]byte, 2000)
	for i := range payload {
		payload[i] = byte(i)
	}
	whole := stacktest.Frame().IPv4Addr(client, server).ID(99).UDP(5000, 53).Payload(payload).Bytes()
	l4 := whole[20:]
	frag := func(off, n int, mf bool) []byte {
		return stacktest.Frame().IPv4Addr(client, server).Proto(header.ProtoUDP).Fragment(99, off, mf).Payload(l4[off : off+n]).Bytes()
	}
	run := func(b []byte) (netfilter.Verdict, *buf.SKB) {
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		skb.SetNetworkHeader()
		v := r.hooks.Run(netfilter.PreRouting, skb, r.in.ID(), 0)
		return v, skb
	}
	// Out of order: the last piece first.
	v, _ := run(frag(1480, len(l4)-1480, false))
	if !v.Stolen() {
		t.Fatalf("first fragment: %+v", v)
	}
	v, skb := run(frag(0, 1480, true))
	if !v.Accepted() {
		t.Fatalf("completing fragment: %+v", v)
	}
	if v := r.hooks.Run(netfilter.PostRouting, skb, r.in.ID(), r.out.ID()); !v.Accepted() {
		t.Fatal(v)
	}
	o := check(t, skb.Bytes())
	if o.src != pub || o.ip.TotalLen() != len(whole) || o.ip.MF() || o.ip.FragOffset() != 0 {
		t.Fatalf("reassembled: %+v len %d", o, o.ip.TotalLen())
	}
	skb.Consume()
	if st := r.nf.Stats(); st.DefragOKs != 1 || st.DefragReqds != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Overlap: the queue goes.
	run(frag(0, 1480, true))
	if v, _ := run(frag(1472, 16, true)); !v.Dropped() || v.Reason() != netfilter.DropDefragOverlap {
		t.Fatalf("overlap: %+v", v)
	}
	// A fragment past the end a last fragment set (RFC 791: the last
	// fragment fixes the datagram's length): the queue goes, and
	// nothing is reassembled without the fragment at offset zero.
	if v, _ := run(frag(8, 8, false)); !v.Stolen() {
		t.Fatalf("last fragment [8,16): %+v", v)
	}
	if v, _ := run(frag(16, 8, true)); !v.Dropped() || v.Reason() != netfilter.DropDefragOverlap {
		t.Fatalf("fragment [16,24) past the end 16: %+v, want dropped as an overlap", v)
	}
	// A lone fragment times out on the stack clock.
	run(frag(0, 1480, true))
	r.clk.Advance(31 * time.Second)
	if st := r.nf.Stats(); st.DefragTimeouts != 1 {
		t.Fatalf("timeouts %d", st.DefragTimeouts)
	}
}

// DIVERT marks the first packet and, through its flow, every later one.
func TestDivertMarksFlow(t *testing.T) {
	r := newRig(t, "*mangle\n-A PREROUTING -i eth0 -p tcp --syn -j DIVERT\n", conntrack.Config{})
	for i, f := range []header.TCPFlags{header.SYN, header.ACK, header.ACK | header.PSH} {
		skb := buf.FromBytes(buf.MaxHeadroom, tcpSeg(client, server, 40000, 80, f))
		skb.SetNetworkHeader()
		if v := r.hooks.Run(netfilter.PreRouting, skb, r.in.ID(), 0); !v.Accepted() {
			t.Fatal(v)
		}
		if skb.Mark&netfilter.MarkDivert == 0 {
			t.Fatalf("packet %d of the flow not diverted", i)
		}
		skb.Consume()
		if i == 0 {
			skb := buf.FromBytes(buf.MaxHeadroom, tcpSeg(client, server, 40000, 80, header.SYN))
			skb.SetNetworkHeader()
			r.hooks.Run(netfilter.LocalIn, skb, r.in.ID(), 0) // confirm
			skb.Consume()
		}
	}
	skb := buf.FromBytes(buf.MaxHeadroom, tcpSeg(client, server, 40001, 443, header.ACK))
	skb.SetNetworkHeader()
	r.hooks.Run(netfilter.PreRouting, skb, r.in.ID(), 0)
	if skb.Mark&netfilter.MarkDivert != 0 {
		t.Fatal("another flow diverted")
	}
	skb.Consume()
}

// A full conntrack table drops new flows and counts them; established
// flows are not disturbed.
func TestFullTableDropsNewFlows(t *testing.T) {
	r := newRig(t, "", conntrack.Config{Max: 2})
	for i := uint16(0); i < 2; i++ {
		r.outb(udpDgram(client, server, 1000+i, 53))
		r.backb(udpDgram(server, client, 53, 1000+i))
	}
	r.clk.Advance(3 * time.Second) // still active after 2 s: streams
	for i := uint16(0); i < 2; i++ {
		r.outb(udpDgram(client, server, 1000+i, 53)) // assured
	}
	v, _ := r.outb(udpDgram(client, server, 2000, 53))
	if !v.Dropped() || v.Reason() != netfilter.DropConntrackFull {
		t.Fatalf("new flow into a full table: %+v", v)
	}
	if st := r.nf.Stats(); st.ConntrackFullDrops != 1 || st.Conntrack.Drop != 1 {
		t.Fatalf("not counted: %+v", st)
	}
	for i := uint16(0); i < 2; i++ {
		if v, _ := r.backb(udpDgram(server, client, 53, 1000+i)); !v.Accepted() {
			t.Fatal("established flow dropped")
		}
	}
}

// Flows expire on the stack's clock: no goroutine, no wall time.
func TestConntrackExpiresOnFakeClock(t *testing.T) {
	r := newRig(t, "*nat\n-A POSTROUTING -o up0 -j MASQUERADE\n", conntrack.Config{})
	r.outb(udpDgram(client, server, 5000, 53))
	if r.nf.Conntrack().Len() != 1 {
		t.Fatal("not tracked")
	}
	r.clk.Advance(29 * time.Second)
	if r.nf.Conntrack().Len() != 1 {
		t.Fatal("gone early")
	}
	r.clk.Advance(2 * time.Second)
	if r.nf.Conntrack().Len() != 0 {
		t.Fatal("UDP flow did not expire after 30 s")
	}
	// After expiry a reply no longer maps back.
	if _, b := r.backb(udpDgram(server, pub, 53, 5000)); check(t, b).dst != pub {
		t.Fatal("expired binding still translates")
	}
}

// Any bytes through the hooks with NAT, defrag and REJECT rules: dropped
// or passed, never a panic (malformed input is counted, not trusted).
func FuzzHooks(f *testing.F) {
	f.Add(tcpSeg(client, server, 40000, 80, header.SYN), false)
	f.Add(udpDgram(server, pub, 53, 5000), true)
	f.Add(stacktest.Frame().IPv4Addr(client, server).Echo(1, 1).Bytes(), false)
	q := udpDgram(client, server, 5000, 53)
	f.Add(stacktest.Frame().IPv4Addr(server, pub).ICMP(3, 3, 0).Payload(q).Bytes(), true)
	f.Add(stacktest.Frame().IPv4Addr(client, server).Proto(header.ProtoUDP).Fragment(7, 0, true).Payload(make([]byte, 16)).Bytes(), false)
	r := newRig(f, `*nat
-A POSTROUTING -o up0 -j MASQUERADE
-A PREROUTING -i up0 -p tcp --dport 8080 -j DNAT --to-destination 10.0.1.1:80
*filter
-A FORWARD -p tcp --dport 23 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp --dport 9 -j REJECT
-A FORWARD --ctstate INVALID -j LOG
`, conntrack.Config{Max: 128})
	f.Fuzz(func(t *testing.T, b []byte, back bool) {
		if back {
			r.backb(b)
		} else {
			r.outb(b)
		}
	})
}

// SNAT to an address and port range: every translation lands in the
// range, one client keeps one address, and replies map back.
func TestSNATRange(t *testing.T) {
	r := newRig(t, "*nat\n-A POSTROUTING -s 10.0.1.0/24 -j SNAT --to-source 192.0.2.1-192.0.2.9:1024-2047\n", conntrack.Config{})
	lo, hi := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.9")
	for i := 0; i < 20; i++ {
		src := netip.AddrFrom4([4]byte{10, 0, 1, byte(1 + i%4)})
		_, b := r.outb(udpDgram(src, server, uint16(30000+i), 53))
		o := check(t, b)
		if o.src.Less(lo) || hi.Less(o.src) || o.sport < 1024 || o.sport > 2047 {
			t.Fatalf("translated to %v:%d, outside the range", o.src, o.sport)
		}
		_, back := r.backb(udpDgram(server, o.src, 53, o.sport))
		if bv := check(t, back); bv.dst != src || bv.dport != uint16(30000+i) {
			t.Fatalf("reply mapped to %v:%d", bv.dst, bv.dport)
		}
	}
	// Other sources are not translated.
	if _, b := r.outb(udpDgram(netip.MustParseAddr("10.9.0.1"), server, 1, 2)); check(t, b).src != netip.MustParseAddr("10.9.0.1") {
		t.Fatal("SNAT applied outside its match")
	}
}

// DNAT at OUTPUT (locally generated flows) and the un-DNAT of the reply
// at INPUT: ipv4's localOut routes the packet again after the hook.
func TestDNATOutput(t *testing.T) {
	r := newRig(t, "*nat\n-A OUTPUT -p udp --dport 53 -j DNAT --to-destination 10.0.1.1:5353\n", conntrack.Config{})
	resolver := netip.MustParseAddr("9.9.9.9")
	skb := buf.FromBytes(buf.MaxHeadroom, udpDgram(pub, resolver, 4444, 53))
	skb.SetNetworkHeader()
	for _, h := range []netfilter.Hook{netfilter.LocalOut, netfilter.PostRouting} {
		if v := r.hooks.Run(h, skb, 0, r.in.ID()); !v.Accepted() {
			t.Fatal(v)
		}
	}
	if o := check(t, skb.Bytes()); o.dst != client || o.dport != 5353 || o.src != pub {
		t.Fatalf("OUTPUT DNAT: %+v", o)
	}
	skb.Consume()
	v, b := r.local(udpDgram(client, pub, 5353, 4444), r.in)
	if !v.Accepted() {
		t.Fatal(v)
	}
	if o := check(t, b); o.src != resolver || o.sport != 53 {
		t.Fatalf("reply not un-DNATed: %+v", o)
	}
}
