package ipv4

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// udpSeg is a UDP header for ports sp → dp (no checksum, RFC 768) and n
// bytes of data.
func udpSeg(sp, dp uint16, n int) []byte {
	b := make([]byte, header.UDPSize+n)
	header.UDP(b).Encode(header.UDPFields{SrcPort: sp, DstPort: dp, Length: uint16(len(b))})
	return b
}

// Netfilter's reply-to at the routing decision, on the test node: NIC 2
// (the uplink, default via 192.168.0.1, MTU 1000) is the reply-to NIC, so
// the replies of a flow the host sent in are routed back to it, with the
// TTL, MTU and ICMP errors of that path; a flow opened on the pod link is
// routed by the FIB.
func TestForwardReplyTo(t *testing.T) {
	tn := newTestNet(t)
	nf := netfilter.New(netfilter.Config{Hooks: tn.hooks, Clock: tn.clk})
	if err := nf.SetReplyTo(2, true); err != nil {
		t.Fatal(err)
	}
	tn.l.SetRPFilter(2, false) // as the daemon's uplink
	one := func(what string, nic int, p pkt) sent {
		t.Helper()
		tn.rcv(nic, p.bytes())
		out := tn.take()
		if len(out) != 1 {
			t.Fatalf("%s: sent %d packets", what, len(out))
		}
		return out[0]
	}

	// The host DNATed pod A's packet to pod B and sent it back in.
	s := one("A → B from the uplink", 2, pkt{src: "10.1.0.5", dst: "10.1.0.6", proto: header.ProtoUDP, payload: udpSeg(40000, 8080, 100)})
	if s.nic != 1 || s.nextHop != ip("10.1.0.6") {
		t.Fatalf("A → B went out NIC %d via %v", s.nic, s.nextHop)
	}
	// RFC 1812 §5.3.1: B's answer is forwarded once (TTL-1) to the host.
	s = one("B's answer", 1, pkt{src: "10.1.0.6", dst: "10.1.0.5", proto: header.ProtoUDP, ttl: 17, payload: udpSeg(8080, 40000, 100)})
	if s.nic != 2 || s.nextHop != ip("192.168.0.1") || s.ip().TTL() != 16 || !s.ip().ChecksumValid() {
		t.Fatalf("B's answer: NIC %d via %v TTL %d", s.nic, s.nextHop, s.ip().TTL())
	}
	// RFC 1191 §4: the next hop is the uplink, so its MTU (1000) is the
	// one a DF answer must fit; the error goes to B, its sender.
	s = one("B's big answer", 1, pkt{src: "10.1.0.6", dst: "10.1.0.5", proto: header.ProtoUDP, df: true, payload: udpSeg(8080, 40000, 1200)})
	if m := checkICMP(t, s, "10.1.0.1", "10.1.0.6", header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded); m.MTU() != 1000 {
		t.Fatalf("frag needed with MTU %d, want the uplink's 1000", m.MTU())
	}
	// The stack's own error about a hairpinned packet (TTL 1 on its way
	// to B) goes back through the host too, so its conntrack translates
	// the quote: from the uplink's address, to the gateway.
	s = one("time exceeded about A → B", 2, pkt{src: "10.1.0.5", dst: "10.1.0.6", proto: header.ProtoUDP, ttl: 1, payload: udpSeg(40000, 8080, 10)})
	checkICMP(t, s, "192.168.0.2", "10.1.0.5", header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded)
	if s.nic != 2 || s.nextHop != ip("192.168.0.1") {
		t.Fatalf("time exceeded went out NIC %d via %v, want the uplink", s.nic, s.nextHop)
	}

	// Pod → pod on the pod link: untouched.
	one("A → B on the pod link", 1, pkt{src: "10.1.0.5", dst: "10.1.0.6", proto: header.ProtoUDP, payload: udpSeg(40001, 8080, 10)})
	s = one("B's answer on the pod link", 1, pkt{src: "10.1.0.6", dst: "10.1.0.5", proto: header.ProtoUDP, payload: udpSeg(8080, 40001, 10)})
	if s.nic != 1 || s.nextHop != ip("10.1.0.5") {
		t.Fatalf("pod-to-pod answer went out NIC %d via %v", s.nic, s.nextHop)
	}

	// The uplink has no route to A any more: the FIB's choice stands.
	if err := tn.fib.Remove(pfx("0.0.0.0/0"), 2); err != nil {
		t.Fatal(err)
	}
	s = one("B's answer without a route through the uplink", 1, pkt{src: "10.1.0.6", dst: "10.1.0.5", proto: header.ProtoUDP, payload: udpSeg(8080, 40000, 10)})
	if s.nic != 1 || s.nextHop != ip("10.1.0.5") {
		t.Fatalf("fallback: NIC %d via %v", s.nic, s.nextHop)
	}
}
