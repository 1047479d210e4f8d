package proxy

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// RFC 792 / RFC 1122 §3.2.2 through the relay: the pod's datagram to a
// closed port of the host comes back as ICMP port unreachable from the
// address it was sent to, quoting that datagram byte for byte as the pod
// sent it (header from the copy the stack received, data from the host
// kernel's error queue) — not a synthesized header.
func TestUDPPortUnreachableQuotesThePodsDatagram(t *testing.T) {
	r := newRig(t, nil)
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))

	var mu sync.Mutex
	var sent, icmp []byte
	r.pod.Devices().AddTap(func(_ *dev.NIC, skb *buf.SKB, dir dev.Direction) {
		eth, err := header.CheckEthernet(skb.Bytes())
		if err != nil || eth.Type() != header.EtherTypeIPv4 {
			return
		}
		ip, err := header.CheckIPv4(eth.Payload())
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case dir == dev.Tx && ip.Protocol() == header.ProtoUDP && sent == nil:
			sent = append([]byte(nil), ip[:ip.TotalLen()]...)
		case dir == dev.Rx && ip.Protocol() == header.ProtoICMP && icmp == nil:
			icmp = append([]byte(nil), ip[:ip.TotalLen()]...)
		}
	})
	closed := closedPort(t, "udp")
	c, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, closed))
	must(t, err)
	defer c.Close()
	if _, err := c.Write(fill(300, 3)); err != nil {
		t.Fatal(err)
	}
	stacktest.WaitFor(t, "the port unreachable at the pod", func() bool { mu.Lock(); defer mu.Unlock(); return icmp != nil })
	mu.Lock()
	defer mu.Unlock()
	ip := header.IPv4(icmp)
	m := header.ICMPv4(ip.Payload())
	if ip.Src() != server || m.Type() != header.ICMPv4DstUnreachable || m.Code() != header.ICMPv4PortUnreachable {
		t.Fatalf("got ICMP %d/%d from %v, want port unreachable from %v", m.Type(), m.Code(), ip.Src(), server)
	}
	if !bytes.Equal(m.Payload(), sent) {
		t.Fatalf("quote\n% x\nwant the pod's datagram\n% x", m.Payload(), sent)
	}
	if s := r.e.Stats(); s.UDPPortUnreachables != 1 || s.UDPICMPErrors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A header whose UDP checksum the pod's link left to offload (the field
// holds the pseudo-header sum) is quoted with the checksum completed when
// the host's error quoted the whole payload, as the pod's NIC would have
// sent it; with part of the payload only, the field stays as received.
func TestQuoteCompletesAnOffloadedChecksum(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("203.0.113.9")
	payload := fill(40, 7)
	dg := stacktest.IPv4(src.String(), dst.String()).ID(0x4321).UDP(5000, 53).Payload(payload).Bytes()
	final := binary.BigEndian.Uint16(dg[26:])
	// As the pod's kernel hands it to a checksum-offloading link: the
	// pseudo-header sum, not complemented.
	partial := append([]byte(nil), dg...)
	pseudo := header.Fold(header.PseudoHeaderSum(header.ProtoUDP, src, dst, header.UDPSize+len(payload)))
	binary.BigEndian.PutUint16(partial[26:], pseudo)

	var h udp.Header
	h.N = copy(h.B[:], partial[:28])
	h.CsumPartial = true
	if q := quoteOf(&h, payload); !bytes.Equal(q, dg) {
		t.Fatalf("whole payload: checksum %#04x, want %#04x", binary.BigEndian.Uint16(q[26:]), final)
	}
	if q := quoteOf(&h, payload[:10]); binary.BigEndian.Uint16(q[26:]) != pseudo || !bytes.Equal(q[:26], dg[:26]) {
		t.Fatalf("part of the payload: %x", q[:28])
	}
}

// TestRelayedErrorSource6: which host ICMPv6 errors about a relayed flow
// to an IPv6 destination reach the pod, and from where (RFC 4443 §3).
func TestRelayedErrorSource6(t *testing.T) {
	dst, router := netip.MustParseAddr("2001:db8::9"), netip.MustParseAddr("2001:db8:1::1")
	for _, tc := range []struct {
		name      string
		typ, code uint8
		offender  netip.Addr
		from      netip.Addr
		ok        bool
	}{
		{"port unreachable from the destination", header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, router, dst, true},
		{"no route from a router", header.ICMPv6DstUnreachable, 0, router, router, true},
		{"address unreachable, link-local offender", header.ICMPv6DstUnreachable, 3, netip.MustParseAddr("fe80::1"), dst, true},
		{"time exceeded from a router", header.ICMPv6TimeExceeded, 0, router, router, true},
		{"packet too big is the host's path MTU", header.ICMPv6PacketTooBig, 0, router, netip.Addr{}, false},
		{"parameter problem is about the host's packet", header.ICMPv6ParamProblem, 0, router, netip.Addr{}, false},
	} {
		from, ok := relayedErrorSource(dst, tc.typ, tc.code, tc.offender)
		if from != tc.from || ok != tc.ok {
			t.Errorf("%s: %v %v, want %v %v", tc.name, from, ok, tc.from, tc.ok)
		}
	}
	if !portUnreachable(dst, header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable) ||
		portUnreachable(dst, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable) {
		t.Fatal("portUnreachable does not follow the destination's family")
	}
}
