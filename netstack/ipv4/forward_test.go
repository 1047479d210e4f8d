package ipv4

import (
	"bytes"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

func TestForward(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       pkt
		nic     int
		check   func(t *testing.T, tn *testNet, in []byte, out []sent)
		forward bool
	}{
		{"RFC 1812 §5.3.1: TTL decremented, checksum still valid (RFC 1624)",
			pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, ttl: 17, payload: udpish(100)}, 1,
			func(t *testing.T, tn *testNet, in []byte, out []sent) {
				if len(out) != 1 || out[0].nic != 2 || out[0].nextHop != ip("192.168.0.1") {
					t.Fatalf("sent %+v", out)
				}
				h := out[0].ip()
				if h.TTL() != 16 || !h.ChecksumValid() {
					t.Fatalf("TTL %d checksum valid %v", h.TTL(), h.ChecksumValid())
				}
				// Only TTL and checksum changed.
				want := append([]byte(nil), in...)
				header.IPv4(want).SetTTL(16)
				if !bytes.Equal(out[0].b, want) {
					t.Fatalf("forwarded %x\nwant      %x", out[0].b, want)
				}
				if tn.counter("IpForwDatagrams") != 1 {
					t.Fatal("ForwDatagrams")
				}
			}, true},
		{"RFC 1812 §5.3.1: TTL 1 → time exceeded from the inbound interface",
			pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, ttl: 1, payload: udpish(100)}, 1,
			func(t *testing.T, tn *testNet, in []byte, out []sent) {
				if len(out) != 1 || out[0].nic != 1 {
					t.Fatalf("sent %+v", out)
				}
				m := checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded)
				if !bytes.Equal(m.Payload(), in) {
					t.Fatal("quote is not the datagram")
				}
				if tn.counter("IpInHdrErrors") != 1 || tn.counter("IcmpOutTimeExcds") != 1 || tn.drops.Get(DropTTLExceeded) != 1 {
					t.Fatalf("counters %v", tn.l.Counters())
				}
				if out[0].ip().TOS() != icmpTOS {
					t.Fatal("RFC 1812 §4.3.2.5: ICMP error precedence")
				}
			}, false},
		{"RFC 1191 §4: DF and too big → frag needed with the next-hop MTU",
			pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, df: true, payload: udpish(1200)}, 1,
			func(t *testing.T, tn *testNet, in []byte, out []sent) {
				if len(out) != 1 {
					t.Fatalf("sent %d", len(out))
				}
				m := checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded)
				if m.MTU() != 1000 {
					t.Fatalf("MTU %d, want 1000", m.MTU())
				}
				// RFC 1812 §4.3.2.3: as much as fits in 576 bytes.
				if len(out[0].b) != 576 || !bytes.Equal(m.Payload(), in[:576-28]) {
					t.Fatalf("ICMP error of %d bytes", len(out[0].b))
				}
				if tn.counter("IpFragFails") != 1 || tn.drops.Get(DropPktTooBig) != 1 {
					t.Fatal("FragFails")
				}
			}, false},
		{"too big without DF → fragmented",
			pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, id: 99, payload: udpish(2500)}, 1,
			func(t *testing.T, tn *testNet, in []byte, out []sent) {
				if len(out) != 3 {
					t.Fatalf("%d fragments, want 3", len(out))
				}
				var data []byte
				for i, s := range out {
					h := s.ip()
					if len(s.b) > 1000 || !h.ChecksumValid() || h.ID() != 99 || h.TTL() != 63 || s.nic != 2 {
						t.Fatalf("fragment %d: len %d id %d ttl %d", i, len(s.b), h.ID(), h.TTL())
					}
					if h.FragOffset() != len(data) || h.MF() != (i < 2) || h.FragOffset()%8 != 0 {
						t.Fatalf("fragment %d: off %d mf %v", i, h.FragOffset(), h.MF())
					}
					data = append(data, h.Payload()...)
				}
				if !bytes.Equal(data, in[20:]) {
					t.Fatal("fragments do not add up to the datagram")
				}
				if tn.counter("IpFragOKs") != 1 || tn.counter("IpFragCreates") != 3 {
					t.Fatal("frag counters")
				}
			}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			in := tc.p.bytes()
			tn.rcv(tc.nic, in)
			out := tn.take()
			tc.check(t, tn, in, out)
		})
	}
}

func TestForwardRefusals(t *testing.T) {
	toInternet := pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, payload: udpish(8)}.bytes()

	// Forwarding off: dropped, InAddrErrors, no ICMP (ip_error).
	tn := newTestNet(t, func(c *Config) { c.Forwarding = false })
	tn.rcv(1, toInternet)
	if len(tn.take()) != 0 || tn.counter("IpInAddrErrors") != 1 || tn.drops.Get(DropInAddrErrors) != 1 {
		t.Fatal("forwarded with forwarding off")
	}
	tn.l.SetForwarding(true)
	tn.rcv(1, toInternet)
	if len(tn.take()) != 1 {
		t.Fatal("SetForwarding(true) does not forward")
	}

	// RFC 1812 §5.3.4: never forward a link-layer broadcast.
	tn = newTestNet(t)
	tn.rcvFrame(1, header.BroadcastMAC, toInternet)
	tn.rcvFrame(1, header.MAC{0x01, 0, 0x5e, 0, 0, 1}, toInternet)
	if len(tn.take()) != 0 || tn.drops.Get(DropFwdLinkBcast) != 2 {
		t.Fatal("forwarded a link-layer broadcast")
	}
	tn.rcvFrame(1, header.MAC{2, 0, 0, 0, 0, 1}, toInternet)
	if len(tn.take()) != 1 {
		t.Fatal("unicast frame not forwarded")
	}

	// Limited broadcast is delivered, never forwarded.
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "255.255.255.255", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(tn.take()) != 0 || len(tn.rcvd[header.ProtoUDP]) != 1 {
		t.Fatal("limited broadcast forwarded or not delivered")
	}

	// No route: ICMP net unreachable, InNoRoutes.
	tn = newTestNet(t)
	if err := tn.fib.Remove(pfx("0.0.0.0/0"), 0); err != nil {
		t.Fatal(err)
	}
	tn.l.SetRPFilter(1, false)
	tn.rcv(1, toInternet)
	out := tn.take()
	if len(out) != 1 || tn.counter("IpExtInNoRoutes") != 1 {
		t.Fatalf("no route: sent %d, counters %v", len(out), tn.l.Counters())
	}
	checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable)

	// Prohibit route: ICMP code 13; blackhole: silence.
	_ = tn.fib.Add(route.Route{Dst: pfx("8.8.8.0/24"), Type: route.Prohibit})
	_ = tn.fib.Add(route.Route{Dst: pfx("9.9.9.0/24"), Type: route.Blackhole})
	tn.rcv(1, toInternet)
	out = tn.take()
	if len(out) != 1 {
		t.Fatalf("prohibit: sent %d", len(out))
	}
	checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited)
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "9.9.9.9", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(tn.take()) != 0 || tn.drops.Get(DropRouteError) != 2 {
		t.Fatal("blackhole answered")
	}
}

// A forwarded packet shared with a tap is copied before its TTL changes.
func TestForwardCopiesSharedBuffer(t *testing.T) {
	tn := newTestNet(t)
	in := pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, ttl: 9, payload: udpish(8)}.bytes()
	skb := buf.FromBytes(buf.MaxHeadroom, in)
	skb.InNIC = 1
	tap := skb.Clone()
	tn.l.Rcv(nil, skb)
	if header.IPv4(tap.Bytes()).TTL() != 9 {
		t.Fatal("forward wrote into a shared buffer")
	}
	tap.Consume()
	if out := tn.take(); len(out) != 1 || out[0].ip().TTL() != 8 {
		t.Fatal("not forwarded")
	}
}
