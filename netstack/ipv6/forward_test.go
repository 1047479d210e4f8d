package ipv6

import (
	"bytes"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// RFC 8200 §3: a forwarded packet leaves with its hop limit decremented,
// through the route's NIC to its next hop, bytes otherwise untouched.
func TestForward(t *testing.T) {
	tn := newTestNet(t)
	b := pkt{src: pod, dst: remote, proto: header.ProtoUDP, hop: 9, tc: 0xb8, payload: udpish(100)}.bytes()
	tn.rcv(1, b)
	out := tn.take()
	if len(out) != 1 || out[0].nic != 2 || out[0].nextHop != ip("fe80::ff") {
		t.Fatalf("sent %+v", out)
	}
	got := out[0].b
	if header.IPv6(got).HopLimit() != 8 {
		t.Fatalf("hop limit %d", header.IPv6(got).HopLimit())
	}
	want := bytes.Clone(b)
	want[7] = 8
	if !bytes.Equal(got, want) {
		t.Fatal("forwarded bytes changed beyond the hop limit")
	}
	if tn.counter("Ip6OutForwDatagrams") != 1 {
		t.Fatal("counter")
	}
}

// RFC 4443 §3.3: "If a router receives a packet with a Hop Limit of zero,
// or if a router decrements a packet's Hop Limit to zero, it MUST discard
// the packet and originate an ICMPv6 Time Exceeded message with Code 0";
// the error's source is the receiving NIC's address (§2.2).
func TestForwardHopLimitExpiry(t *testing.T) {
	for _, hop := range []uint8{1, 0} {
		tn := newTestNet(t)
		b := pkt{src: pod, dst: remote, proto: header.ProtoUDP, hop: hop, payload: udpish(20)}.bytes()
		if hop == 0 {
			b[7] = 0
		}
		tn.rcv(1, b)
		out := tn.take()
		if len(out) != 1 || out[0].nic != 1 {
			t.Fatalf("hop %d: sent %+v", hop, out)
		}
		m := checkICMP(t, out[0], gw, pod, header.ICMPv6TimeExceeded, header.ICMPv6HopLimitExceeded)
		if !bytes.Equal(m.Payload(), b) {
			t.Fatal("quote")
		}
		if tn.counter("Ip6InHdrErrors") != 1 || tn.dropped(DropHopLimit) != 1 || tn.counter("Icmp6OutTimeExcds") != 1 {
			t.Fatal("counters")
		}
	}
}

// RFC 4443 §3.2: a packet larger than the next link's MTU is dropped
// with Packet Too Big carrying that MTU; routers never fragment (RFC 8200
// §5).
func TestForwardPacketTooBig(t *testing.T) {
	tn := newTestNet(t)
	b := pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(1300)}.bytes()
	tn.rcv(1, b)
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 {
		t.Fatalf("sent %+v", out)
	}
	m := checkICMP(t, out[0], gw, pod, header.ICMPv6PacketTooBig, 0)
	if m.MTU() != 1280 {
		t.Fatalf("MTU %d", m.MTU())
	}
	// RFC 4443 §2.4(c): the quote stops where the error reaches 1280 bytes.
	if len(out[0].b) != 1280 || !bytes.Equal(m.Payload(), b[:1280-48]) {
		t.Fatalf("error is %d bytes", len(out[0].b))
	}
	if tn.counter("Ip6InTooBigErrors") != 1 || tn.counter("Icmp6OutPktTooBigs") != 1 {
		t.Fatal("counters")
	}
	// A packet that fits goes through.
	tn.rcv(1, pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(1240)}.bytes())
	if out := tn.take(); len(out) != 1 || out[0].nic != 2 || len(out[0].b) != 1280 {
		t.Fatalf("1280-byte packet: %d sent", len(out))
	}
}

// RFC 4291 §2.5.6: "Routers must not forward any packets with Link-Local
// source or destination addresses to other links"; RFC 4443 §3.1 code 2,
// "beyond scope of source address", to the link-local sender, on its
// link, from our link-local address (RFC 6724 rule 2).
func TestForwardLinkLocalScope(t *testing.T) {
	tn := newTestNet(t)
	tn.rcv(1, pkt{src: podLL, dst: remote, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 || out[0].nextHop != ip(podLL) {
		t.Fatalf("sent %+v", out)
	}
	checkICMP(t, out[0], "fe80::1", podLL, header.ICMPv6DstUnreachable, header.ICMPv6BeyondScope)
	if tn.dropped(DropBeyondScope) != 1 {
		t.Fatal("drop reason")
	}
	// A link-local destination that is not ours goes nowhere, silently.
	tn.rcv(1, pkt{src: pod, dst: "fe80::99", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(tn.take()) != 0 || tn.dropped(DropInvalidDest) != 1 {
		t.Fatal("foreign link-local destination")
	}
}

// No route: RFC 4443 §3.1 code 0; a prohibit route: code 1; forwarding
// off: dropped and counted, no ICMPv6; a link-layer multicast frame is
// never forwarded.
func TestForwardRefusals(t *testing.T) {
	tn := newTestNet(t)
	if err := tn.fib.Remove(pfx("::/0"), 0); err != nil {
		t.Fatal(err)
	}
	if err := tn.fib.Add(route.Route{Dst: pfx("2001:db8:98::/48"), Type: route.Prohibit}); err != nil {
		t.Fatal(err)
	}
	tn.rcv(1, pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	tn.rcv(1, pkt{src: pod, dst: "2001:db8:98::1", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	out := tn.take()
	if len(out) != 2 {
		t.Fatalf("%d sent", len(out))
	}
	checkICMP(t, out[0], gw, pod, header.ICMPv6DstUnreachable, header.ICMPv6NoRoute)
	checkICMP(t, out[1], gw, pod, header.ICMPv6DstUnreachable, header.ICMPv6AdminProhibited)
	if tn.counter("Ip6InNoRoutes") != 1 {
		t.Fatal("Ip6InNoRoutes")
	}

	off := newTestNet(t, func(c *Config) { c.Forwarding = false })
	off.rcv(1, pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(off.take()) != 0 || off.counter("Ip6InAddrErrors") != 1 {
		t.Fatal("forwarding off")
	}

	mc := newTestNet(t)
	mc.rcvFrame(1, header.MAC{0x33, 0x33, 0, 0, 0, 1}, pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(mc.take()) != 0 || mc.dropped(DropFwdLinkMcast) != 1 {
		t.Fatal("link-layer multicast forwarded")
	}
}
