package ipv6

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Netfilter's reply-to for IPv6, as ipv4's: a flow that entered through
// the uplink (a reply-to NIC) from an address the FIB would reach
// elsewhere has its replies, and the stack's own ICMPv6 errors about it,
// leave through the uplink (route.Via), not the FIB's choice.
func TestReplyTo(t *testing.T) {
	tn := newTestNet(t)
	if err := tn.fib.Add(route.Route{Dst: pfx("fd00:3::/64"), NIC: 3}); err != nil {
		t.Fatal(err)
	}
	tn.fib.AddLocal(ip("fd00:3::1"), 3)
	tn.l.SetRPFilter(2, false) // the uplink's, as the daemon sets it
	nf := netfilter.New(netfilter.Config{Hooks6: tn.hooks, Clock: tn.clk, FIB: tn.fib, Sender6: tn.l})
	if err := nf.SetReplyTo(2, true); err != nil {
		t.Fatal(err)
	}
	const client = "fd00:3::7" // a pod on NIC 3, hairpinned through the host
	// udpish's first four bytes are the ports: the reply swaps them.
	req, rep := udpish(16), udpish(16)
	copy(rep[0:2], req[2:4])
	copy(rep[2:4], req[0:2])
	tn.rcv(2, pkt{src: client, dst: pod, proto: header.ProtoUDP, payload: req}.bytes())
	if out := tn.take(); len(out) != 1 || out[0].nic != 1 {
		t.Fatalf("request: %+v", out)
	}
	tn.rcv(1, pkt{src: pod, dst: client, proto: header.ProtoUDP, payload: rep}.bytes())
	out := tn.take()
	if len(out) != 1 || out[0].nic != 2 || out[0].nextHop != ip("fe80::ff") {
		t.Fatalf("reply left on NIC %d via %v, want the uplink", out[0].nic, out[0].nextHop)
	}
	// A reply that expires at the stack: its Time Exceeded goes to the
	// pod it came from, on the pod's link.
	tn.rcv(1, pkt{src: pod, dst: client, proto: header.ProtoUDP, hop: 1, payload: rep}.bytes())
	if out := tn.take(); len(out) != 1 || out[0].nic != 1 {
		t.Fatalf("Time Exceeded to the pod: %+v", out)
	}
	// The other way: a request that expires at the stack. Its Time
	// Exceeded is the stack's own packet, RELATED to the flow in the
	// reply direction: it leaves through the uplink (localOut), where the
	// FIB would choose NIC 3.
	tn.rcv(2, pkt{src: client, dst: pod, proto: header.ProtoUDP, hop: 1, payload: req}.bytes())
	if out := tn.take(); len(out) != 1 || out[0].nic != 2 {
		t.Fatalf("Time Exceeded to the client left on NIC %d, want the uplink", out[0].nic)
	}
	// Without reply-to, the FIB's choice.
	if err := nf.SetReplyTo(2, false); err != nil {
		t.Fatal(err)
	}
	tn.rcv(2, pkt{src: "fd00:3::8", dst: pod, proto: header.ProtoUDP, payload: req}.bytes())
	tn.take()
	tn.rcv(1, pkt{src: pod, dst: "fd00:3::8", proto: header.ProtoUDP, payload: rep}.bytes())
	if out := tn.take(); len(out) != 1 || out[0].nic != 3 {
		t.Fatalf("without reply-to: %+v", out)
	}
}
