package ipv6

import (
	"bytes"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// RFC 4443 §4.2: an Echo Reply carries the request's identifier,
// sequence number and data, from the address the request was sent to.
func TestEchoReply(t *testing.T) {
	tn := newTestNet(t)
	data := []byte("0123456789abcdef")
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6, tc: 0x20,
		payload: icmp6(pod, gw, header.ICMPv6EchoRequest, 0, header.EchoRest(7, 9), data)}.bytes())
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 {
		t.Fatalf("%d sent", len(out))
	}
	m := checkICMP(t, out[0], gw, pod, header.ICMPv6EchoReply, 0)
	if m.ID() != 7 || m.Seq() != 9 || !bytes.Equal(m.Payload(), data) || out[0].ip().TrafficClass() != 0x20 {
		t.Fatalf("reply %+v", m.Fields())
	}
	if tn.counter("Icmp6InEchos") != 1 || tn.counter("Icmp6OutEchoReplies") != 1 {
		t.Fatal("counters")
	}
	// A corrupted checksum is dropped and counted (RFC 4443 §2.4).
	bad := icmp6(pod, gw, header.ICMPv6EchoRequest, 0, header.EchoRest(7, 10), data)
	bad[2] ^= 1
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6, payload: bad}.bytes())
	if len(tn.take()) != 0 || tn.counter("Icmp6InCsumErrors") != 1 || tn.dropped(DropICMPCsum) != 1 {
		t.Fatal("bad checksum")
	}
}

// RFC 4443 §4.2: "An Echo Reply SHOULD be sent in response to an Echo
// Request message sent to an IPv6 multicast ... address. In this case,
// the Source Address of the reply MUST be a unicast address belonging to
// the interface on which the Echo Request message was received."
func TestEchoToMulticast(t *testing.T) {
	tn := newTestNet(t)
	tn.rcvFrame(1, header.IPv6MulticastMAC(header.IPv6AllNodes), pkt{src: podLL, dst: "ff02::1", proto: header.ProtoICMPv6,
		payload: icmp6(podLL, "ff02::1", header.ICMPv6EchoRequest, 0, header.EchoRest(1, 1), nil)}.bytes())
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 || out[0].nextHop != ip(podLL) {
		t.Fatalf("sent %+v", out)
	}
	checkICMP(t, out[0], "fe80::1", podLL, header.ICMPv6EchoReply, 0)
	if tn.counter("Ip6InMcastPkts") != 1 {
		t.Fatal("Ip6InMcastPkts")
	}
}

// RFC 4443 §2.4(d): an error goes to the upper layer of the quoted
// packet, found past its extension headers, with its type and code.
func TestErrorsToUpperLayer(t *testing.T) {
	tn := newTestNet(t)
	orig := pkt{src: gw, dst: pod, proto: header.ProtoUDP, ext: []ext6{optsHdr(header.ProtoDestOpts)}, payload: udpish(20)}.bytes()
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6,
		payload: icmp6(pod, gw, header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, 0, orig)}.bytes())
	if len(tn.errs) != 1 {
		t.Fatalf("%d errors delivered", len(tn.errs))
	}
	e := tn.errs[0]
	if e.typ != header.ICMPv6DstUnreachable || e.code != header.ICMPv6PortUnreachable || !bytes.Equal(e.inner, orig) || e.l4off != 48 {
		t.Fatalf("error %+v", e)
	}
	if errno, fatal := ErrnoOf(e.typ, e.code); errno != syscall.ECONNREFUSED || !fatal {
		t.Fatalf("errno %v", errno)
	}
	// §2.4(a): an unknown error type goes up too; §2.4(b): an unknown
	// informational type is dropped silently.
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6, payload: icmp6(pod, gw, 99, 0, 0, orig)}.bytes())
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6, payload: icmp6(pod, gw, 199, 0, 0, nil)}.bytes())
	if len(tn.errs) != 2 || tn.errs[1].typ != 99 || tn.dropped(DropICMPIgnored) != 1 {
		t.Fatal("unknown types")
	}
	// A quote too short to hold 8 bytes of the upper layer is invalid.
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6,
		payload: icmp6(pod, gw, header.ICMPv6DstUnreachable, 0, 0, orig[:52])}.bytes())
	if len(tn.errs) != 2 || tn.counter("Icmp6InErrors") != 1 {
		t.Fatal("short quote")
	}
}

// RFC 8201: a Packet Too Big about a packet we sent lowers the path MTU
// towards its destination (never below 1280, §4), the upper layer hears
// of it, and the entry ages out after PMTUExpires.
func TestPathMTUDiscovery(t *testing.T) {
	tn := newTestNet(t)
	ptb := func(mtu uint32, from string) {
		orig := pkt{src: from, dst: pod, proto: header.ProtoUDP, payload: udpish(1452)}.bytes()
		tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6,
			payload: icmp6(pod, gw, header.ICMPv6PacketTooBig, 0, mtu, orig[:1232])}.bytes())
	}
	send := func() []sent {
		if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(1452)), flowTo(pod)); err != nil {
			t.Fatal(err)
		}
		return tn.take()
	}
	if out := send(); len(out) != 1 {
		t.Fatalf("%d packets before PTB", len(out))
	}
	ptb(1400, gw)
	if len(tn.errs) != 1 || tn.errs[0].info != 1400 || tn.counter("Ip6PMTUUpdates") != 1 {
		t.Fatalf("errors %+v", tn.errs)
	}
	if mtu, _ := tn.l.PathMTU(flowTo(pod)); mtu != 1400 {
		t.Fatalf("PathMTU %d", mtu)
	}
	out := send()
	if len(out) != 2 || len(out[0].b) > 1400 {
		t.Fatalf("after PTB 1400: %d packets, first %d bytes", len(out), len(out[0].b))
	}
	// §4: "A node MUST NOT increase its estimate of the Path MTU in
	// response to the contents of a Packet Too Big message."
	ptb(1450, gw)
	if mtu, _ := tn.l.PathMTU(flowTo(pod)); mtu != 1400 {
		t.Fatalf("PMTU raised to %d", mtu)
	}
	// "A node MUST NOT reduce its estimate of the Path MTU below the IPv6
	// minimum link MTU."
	ptb(600, gw)
	if mtu, _ := tn.l.PathMTU(flowTo(pod)); mtu != 1280 || tn.errs[len(tn.errs)-1].info != 1280 {
		t.Fatalf("PMTU %d", mtu)
	}
	// About a packet that is not ours: no update.
	ptb(1300, "fd00:1::77")
	if tn.counter("Ip6PMTUUpdates") != 2 {
		t.Fatal("foreign PTB updated the cache")
	}
	tn.clk.Advance(DefaultPMTUExpires)
	if mtu, _ := tn.l.PathMTU(flowTo(pod)); mtu != 1500 {
		t.Fatalf("PMTU after expiry %d", mtu)
	}
}

// RFC 4443 §2.4(f): errors pass a token bucket; errors to our own
// addresses are exempt.
func TestICMPRateLimit(t *testing.T) {
	tn := newTestNet(t, func(c *Config) { c.ICMPRateLimit, c.ICMPRateBurst = 10, 5 })
	expire := pkt{src: pod, dst: remote, proto: header.ProtoUDP, hop: 1, payload: udpish(8)}.bytes()
	for range 20 {
		tn.rcv(1, expire)
	}
	if n := len(tn.take()); n != 5 || tn.counter("Icmp6OutRateLimitGlobal") != 15 {
		t.Fatalf("%d errors, %d limited", n, tn.counter("Icmp6OutRateLimitGlobal"))
	}
	tn.clk.Advance(200 * time.Millisecond) // 2 tokens
	for range 5 {
		tn.rcv(1, expire)
	}
	if n := len(tn.take()); n != 2 {
		t.Fatalf("after 200 ms: %d errors", n)
	}
}

// RFC 4443 §2.4(e): no error about an ICMPv6 error or a Redirect, about
// a packet to a multicast address or received as link-layer multicast,
// or to a source that is not one node.
func TestICMPNeverList(t *testing.T) {
	orig := pkt{src: gw, dst: pod, proto: header.ProtoUDP, payload: udpish(8)}.bytes()
	for _, tc := range []struct {
		name  string
		frame bool // sent to a multicast MAC
		b     []byte
	}{
		{"(e.1) an ICMPv6 error", false, pkt{src: pod, dst: remote, hop: 1, proto: header.ProtoICMPv6,
			payload: icmp6(pod, remote, header.ICMPv6DstUnreachable, 0, 0, orig)}.bytes()},
		{"(e.2) a Redirect", false, pkt{src: pod, dst: remote, hop: 1, proto: header.ProtoICMPv6,
			payload: icmp6(pod, remote, header.ICMPv6Redirect, 0, 0, make([]byte, 32))}.bytes()},
		{"(e.3) a packet to a multicast address", false, pkt{src: pod, dst: "ff02::1", proto: 200, payload: udpish(8)}.bytes()},
		{"(e.4) a packet sent as link-layer multicast", true, pkt{src: pod, dst: gw, proto: 200, payload: udpish(8)}.bytes()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			if tc.frame {
				tn.rcvFrame(1, header.MAC{0x33, 0x33, 0, 0, 0, 1}, tc.b)
			} else {
				tn.rcv(1, tc.b)
			}
			if out := tn.take(); len(out) != 0 {
				t.Fatalf("sent an error: %x", out[0].b[:48])
			}
		})
	}
	// The rules as SendICMPError applies them, packet by packet: (e.6)
	// a source that is not one node; (e.3) exception 1: Packet Too Big
	// about a packet to a multicast address is sent.
	for _, tc := range []struct {
		name     string
		src, dst string
		typ      uint8
		want     bool
	}{
		{"(e.6) unspecified source", "::", gw, header.ICMPv6DstUnreachable, false},
		{"(e.6) IPv4-mapped source", "::ffff:10.0.0.1", gw, header.ICMPv6DstUnreachable, false},
		{"(e.3) multicast destination", pod, "ff02::1", header.ICMPv6DstUnreachable, false},
		{"(e.3) exception 1: Packet Too Big", pod, "ff02::1", header.ICMPv6PacketTooBig, true},
		{"unicast", pod, gw, header.ICMPv6DstUnreachable, true},
	} {
		tn := newTestNet(t)
		skb := buf.FromBytes(buf.MaxHeadroom, pkt{src: tc.src, dst: tc.dst, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
		skb.SetNetworkHeader()
		skb.InNIC = 1
		tn.l.SendICMPError(skb, tc.typ, 0, 1280)
		skb.Consume()
		if got := len(tn.take()) == 1; got != tc.want {
			t.Errorf("%s: sent %v", tc.name, got)
		}
	}
	// But an informational ICMPv6 message is eligible (hop limit expiry
	// of an echo request answers).
	tn := newTestNet(t)
	tn.rcv(1, pkt{src: pod, dst: remote, hop: 1, proto: header.ProtoICMPv6,
		payload: icmp6(pod, remote, header.ICMPv6EchoRequest, 0, 0, nil)}.bytes())
	if len(tn.take()) != 1 {
		t.Fatal("no Time Exceeded for an echo request")
	}
}

// MLD is counted and dropped: we keep no listener state.
func TestMLDIgnored(t *testing.T) {
	tn := newTestNet(t)
	// RFC 3810 §5.2.14: reports go to ff02::16, which a router listens to.
	tn.rcvFrame(1, header.MAC{0x33, 0x33, 0, 0, 0, 0x16}, pkt{src: podLL, dst: "ff02::16", proto: header.ProtoICMPv6,
		payload: icmp6(podLL, "ff02::16", header.ICMPv6MLDv2Report, 0, 0, nil)}.bytes())
	if tn.counter("Icmp6InMLDv2Reports") != 1 || tn.dropped(DropICMPIgnored) != 1 || len(tn.take()) != 0 {
		t.Fatal("MLD")
	}
}

// Locally: a packet to our own address loops back (after the backlog
// runs); IPV6_DONTFRAG over the path MTU fails with EMSGSIZE and the
// sender hears Packet Too Big through loopback; a neighbour that never
// answered gets the sender an address unreachable (RFC 4443 §3.1 code 3).
func TestLocalOutput(t *testing.T) {
	tn := newTestNet(t)
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(40)), flowTo(gw)); err != nil {
		t.Fatal(err)
	}
	if len(tn.rcvd[header.ProtoUDP]) != 0 {
		t.Fatal("delivered on the sender's stack")
	}
	tn.clk.Advance(0)
	if got := tn.rcvd[header.ProtoUDP]; len(got) != 1 || !bytes.Equal(got[0], udpish(40)) {
		t.Fatal("loopback")
	}
	fl := flowTo(pod)
	fl.DontFragment = true
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(2000)), fl); err != syscall.EMSGSIZE {
		t.Fatalf("DONTFRAG: %v", err)
	}
	tn.clk.Advance(0)
	if len(tn.errs) != 1 || tn.errs[0].typ != header.ICMPv6PacketTooBig || tn.errs[0].info != 1500 {
		t.Fatalf("errors %+v", tn.errs)
	}
	if len(tn.take()) != 0 {
		t.Fatal("sent on the wire")
	}
	skb := buf.FromBytes(buf.MaxHeadroom, pkt{src: gw, dst: pod, proto: header.ProtoUDP, payload: udpish(20)}.bytes())
	tn.l.neighFailure(skb)
	skb.Consume()
	tn.clk.Advance(0)
	if len(tn.errs) != 2 || tn.errs[1].typ != header.ICMPv6DstUnreachable || tn.errs[1].code != header.ICMPv6AddrUnreachable {
		t.Fatalf("errors %+v", tn.errs)
	}
	// A link-local destination needs its NIC (the scope id).
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(8)), flowTo(podLL)); err != route.ErrInvalid {
		t.Fatalf("link-local without NIC: %v", err)
	}
	fl = flowTo(podLL)
	fl.NIC = 1
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(8)), fl); err != nil {
		t.Fatal(err)
	}
	if out := tn.take(); len(out) != 1 || out[0].ip().Src() != ip("fe80::1") || out[0].ip().HopLimit() != 64 {
		t.Fatal("link-local output")
	}
	// A NIC below the IPv6 minimum MTU carries no IPv6.
	tn.mtu[1] = 1000
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(8)), flowTo(pod)); err != syscall.EMSGSIZE || tn.dropped(DropLinkMTU) != 1 {
		t.Fatalf("MTU 1000: %v", err)
	}
}
