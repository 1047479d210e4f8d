package ipv6

import (
	"bytes"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// ip6_rcv_core's checks, each with its counter and drop reason.
func TestRcvValidation(t *testing.T) {
	good := pkt{src: pod, dst: gw, proto: header.ProtoUDP, payload: udpish(20)}.bytes()
	for _, tc := range []struct {
		name    string
		nic     int
		b       []byte
		counter string
		reason  buf.DropReason
	}{
		{"short", 1, good[:39], "Ip6InHdrErrors", DropHdrError},
		{"version 4", 1, func() []byte { c := bytes.Clone(good); c[0] = 0x45; return c }(), "Ip6InHdrErrors", DropHdrError},
		{"payload length past the buffer", 1, good[:50], "Ip6InTruncatedPkts", DropTooSmall},
		{"RFC 4291 §2.7: multicast source", 1, pkt{src: "ff02::1", dst: gw, proto: header.ProtoUDP}.bytes(), "Ip6InHdrErrors", DropInvalidSource},
		{"RFC 4291 §2.5.3: loopback source on a link", 1, pkt{src: "::1", dst: gw, proto: header.ProtoUDP}.bytes(), "Ip6InHdrErrors", DropInvalidSource},
		{"RFC 4291 §2.5.3: loopback destination on a link", 1, pkt{src: pod, dst: "::1", proto: header.ProtoUDP}.bytes(), "Ip6InHdrErrors", DropInvalidDest},
		{"RFC 4291 §2.5.5.2: IPv4-mapped destination", 1, pkt{src: pod, dst: "::ffff:10.0.0.1", proto: header.ProtoUDP}.bytes(), "Ip6InHdrErrors", DropInvalidDest},
		{"RFC 4291 §2.7: interface-local multicast on a link", 1, pkt{src: pod, dst: "ff01::1", proto: header.ProtoUDP}.bytes(), "Ip6InHdrErrors", DropInvalidDest},
		{"unspecified destination", 1, pkt{src: pod, dst: "::", proto: header.ProtoUDP}.bytes(), "Ip6InHdrErrors", DropInvalidDest},
		{"a NIC without IPv6", 3, good, "Ip6InDiscards", DropDisabled},
		{"a group we do not listen to", 1, pkt{src: pod, dst: "ff02::fb", proto: header.ProtoUDP}.bytes(), "Ip6InAddrErrors", DropMcastNotJoined},
		{"our own address as source (spoof)", 1, pkt{src: gw, dst: gw, proto: header.ProtoUDP}.bytes(), "Ip6InAddrErrors", DropInvalidSource},
		{"RFC 3704 §2.2: a pod source on the uplink", 2, pkt{src: pod, dst: upAddr, proto: header.ProtoUDP}.bytes(), "Ip6ReversePathFilter", DropRPFilter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			tn.rcv(tc.nic, tc.b)
			if tn.counter(tc.counter) != 1 || tn.dropped(tc.reason) != 1 {
				t.Fatalf("%s %d, %v %d", tc.counter, tn.counter(tc.counter), tc.reason, tn.dropped(tc.reason))
			}
			if len(tn.rcvd[header.ProtoUDP]) != 0 || len(tn.take()) != 0 {
				t.Fatal("delivered or answered")
			}
		})
	}
}

// Local delivery: link padding trimmed, the upper layer sees its header
// first and the IPv6 header as NetworkHeader.
func TestLocalDeliver(t *testing.T) {
	tn := newTestNet(t)
	data := udpish(30)
	b := append(pkt{src: pod, dst: gw, proto: header.ProtoUDP, payload: data}.bytes(), 0, 0, 0, 0)
	tn.rcv(1, b)
	got := tn.rcvd[header.ProtoUDP]
	if len(got) != 1 || !bytes.Equal(got[0], data) {
		t.Fatalf("delivered %x", got)
	}
	if h := header.IPv6(tn.hdrs[0]); h.Src() != ip(pod) || h.Dst() != ip(gw) {
		t.Fatal("network header")
	}
	if tn.counter("Ip6InDelivers") != 1 || tn.counter("Ip6InReceives") != 1 {
		t.Fatal("counters")
	}
	// Our link-local address on its link, too.
	tn.rcv(1, pkt{src: podLL, dst: "fe80::1", proto: header.ProtoUDP, payload: data}.bytes())
	if len(tn.rcvd[header.ProtoUDP]) != 2 {
		t.Fatal("link-local not delivered")
	}
}

// RFC 8200 §4.2: unrecognised options by their two high-order bits, in
// the Hop-by-Hop and Destination Options headers, to unicast and
// multicast destinations.
func TestOptionActionBits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hbh     bool
		typ     uint8
		dst     string
		deliver bool
		icmp    bool
	}{
		{"00 skip (HbH)", true, 0x1e, gw, true, false},
		{"00 skip (DestOpts)", false, 0x1e, gw, true, false},
		{"01 discard", false, 0x5e, gw, false, false},
		{"10 discard + Parameter Problem", false, 0x9e, gw, false, true},
		{"10 to multicast: Parameter Problem all the same (RFC 4443 §2.4(e.3))", true, 0x9e, "ff02::1", false, true},
		{"11 discard + Parameter Problem to unicast", true, 0xde, gw, false, true},
		{"11 to multicast: silently", false, 0xde, "ff02::1", false, false},
		{"Router Alert is known in HbH", true, header.IPv6OptRouterAlert, gw, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			nh := header.ProtoDestOpts
			if tc.hbh {
				nh = header.ProtoHopByHop
			}
			// A PadN first, so the option sits at offset 4 of the option
			// area: the pointer is 40 + 2 + 4 = 46.
			e := optsHdr(nh, header.IPv6OptPadN, 2, 0, 0, tc.typ, 2, 0, 0)
			b := pkt{src: pod, dst: tc.dst, proto: header.ProtoUDP, ext: []ext6{e}, payload: udpish(8)}.bytes()
			tn.rcv(1, b)
			if got := len(tn.rcvd[header.ProtoUDP]) == 1; got != tc.deliver {
				t.Fatalf("delivered %v", got)
			}
			out := tn.take()
			if (len(out) == 1) != tc.icmp {
				t.Fatalf("%d ICMPv6 sent", len(out))
			}
			if tc.icmp {
				m := checkICMP(t, out[0], gw, pod, header.ICMPv6ParamProblem, header.ICMPv6UnknownOption)
				if m.Pointer() != 46 || !bytes.Equal(m.Payload(), b) {
					t.Fatalf("pointer %d", m.Pointer())
				}
			}
			if !tc.deliver && (tn.dropped(DropUnknownOption) != 1 || tn.counter("Ip6InHdrErrors") != 1) {
				t.Fatal("not counted")
			}
		})
	}
}

// RFC 8200 §4.1: Hop-by-Hop anywhere but first is an unrecognised Next
// Header (code 1, pointing at the Next Header field that names it).
func TestHopByHopNotFirst(t *testing.T) {
	tn := newTestNet(t)
	b := pkt{src: pod, dst: gw, proto: header.ProtoUDP,
		ext: []ext6{optsHdr(header.ProtoDestOpts), optsHdr(header.ProtoHopByHop)}, payload: udpish(8)}.bytes()
	tn.rcv(1, b)
	out := tn.take()
	if len(out) != 1 {
		t.Fatalf("%d sent", len(out))
	}
	if m := checkICMP(t, out[0], gw, pod, header.ICMPv6ParamProblem, header.ICMPv6UnknownNextHeader); m.Pointer() != 40 {
		t.Fatalf("pointer %d", m.Pointer())
	}
	if tn.counter("Ip6InUnknownProtos") != 1 || len(tn.rcvd[header.ProtoUDP]) != 0 {
		t.Fatal("counters")
	}
}

// RFC 8200 §4.4 and RFC 5095 §3: a Routing header with Segments Left 0 is
// ignored; with segments left, type 0 (deprecated) and any other type
// this node does not process are refused with Parameter Problem code 0 at
// the Routing Type.
func TestRoutingHeader(t *testing.T) {
	for _, tc := range []struct {
		name    string
		typ     uint8
		segLeft uint8
		deliver bool
	}{
		{"type 0, segments left 0: ignored", header.IPv6RoutingType0, 0, true},
		{"RFC 5095: type 0 with segments left", header.IPv6RoutingType0, 2, false},
		{"SRH with segments left: not processed", header.IPv6RoutingSRH, 1, false},
		{"type 2 with segments left 0", header.IPv6RoutingType2, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			b := pkt{src: pod, dst: gw, proto: header.ProtoUDP, ext: []ext6{routingHdr(tc.typ, tc.segLeft)}, payload: udpish(8)}.bytes()
			tn.rcv(1, b)
			if got := len(tn.rcvd[header.ProtoUDP]) == 1; got != tc.deliver {
				t.Fatalf("delivered %v", got)
			}
			out := tn.take()
			if tc.deliver {
				if len(out) != 0 {
					t.Fatal("answered")
				}
				return
			}
			if len(out) != 1 {
				t.Fatalf("%d sent", len(out))
			}
			if m := checkICMP(t, out[0], gw, pod, header.ICMPv6ParamProblem, header.ICMPv6ErroneousHeader); m.Pointer() != 42 {
				t.Fatalf("pointer %d", m.Pointer())
			}
			if tn.dropped(DropRoutingHeader) != 1 {
				t.Fatal("drop reason")
			}
		})
	}
}

// RFC 8200 §4: an unrecognised Next Header is Parameter Problem code 1 at
// its offset; §4.7: No Next Header is consumed silently; a header whose
// length runs past the packet is code 0 at the length.
func TestNextHeaderHandling(t *testing.T) {
	tn := newTestNet(t)
	b := pkt{src: pod, dst: gw, proto: 200, ext: []ext6{optsHdr(header.ProtoDestOpts)}, payload: udpish(8)}.bytes()
	tn.rcv(1, b)
	out := tn.take()
	if len(out) != 1 {
		t.Fatalf("%d sent", len(out))
	}
	if m := checkICMP(t, out[0], gw, pod, header.ICMPv6ParamProblem, header.ICMPv6UnknownNextHeader); m.Pointer() != 40 {
		t.Fatalf("pointer %d", m.Pointer())
	}
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoNoNextHeader, payload: []byte("ignored")}.bytes())
	if len(tn.take()) != 0 || tn.counter("Ip6InDelivers") != 1 {
		t.Fatal("No Next Header")
	}
	cut := pkt{src: pod, dst: gw, proto: header.ProtoUDP, ext: []ext6{{header.ProtoDestOpts, []byte{0, 4, 1, 0, 0, 0, 0, 0}}}}.bytes()
	tn.rcv(1, cut)
	out = tn.take()
	if len(out) != 1 {
		t.Fatalf("%d sent", len(out))
	}
	if m := checkICMP(t, out[0], gw, pod, header.ICMPv6ParamProblem, header.ICMPv6ErroneousHeader); m.Pointer() != 41 {
		t.Fatalf("pointer %d", m.Pointer())
	}
	if tn.dropped(DropBadExtHdr) != 1 {
		t.Fatal("drop reason")
	}
}

// The five hooks run where ipv4 runs them: PREROUTING and LOCAL_IN on
// delivery, PREROUTING, FORWARD and POSTROUTING on forwarding, LOCAL_OUT
// and POSTROUTING on output; a drop verdict frees the packet with its
// reason.
func TestHooks(t *testing.T) {
	tn := newTestNet(t)
	var seen []netfilter.Hook
	for h := netfilter.Hook(0); h < netfilter.NumHooks; h++ {
		tn.hooks.Register(netfilter.Ops{Hook: h, Name: "rec", Fn: func(skb *buf.SKB, st netfilter.State) netfilter.Verdict {
			seen = append(seen, st.Hook)
			if _, err := header.CheckIPv6(skb.Bytes()); err != nil {
				t.Errorf("hook %v saw a non-IPv6 packet", st.Hook)
			}
			return netfilter.Accept()
		}})
	}
	want := func(name string, hooks ...netfilter.Hook) {
		t.Helper()
		if len(seen) != len(hooks) {
			t.Fatalf("%s: hooks %v, want %v", name, seen, hooks)
		}
		for i := range hooks {
			if seen[i] != hooks[i] {
				t.Fatalf("%s: hooks %v, want %v", name, seen, hooks)
			}
		}
		seen = nil
	}
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	want("deliver", netfilter.PreRouting, netfilter.LocalIn)
	tn.rcv(1, pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	want("forward", netfilter.PreRouting, netfilter.Forward, netfilter.PostRouting)
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(8)), flowTo(pod)); err != nil {
		t.Fatal(err)
	}
	want("output", netfilter.LocalOut, netfilter.PostRouting)
	drop := buf.NewDropReason("TEST_HOOK_DROP")
	tn.hooks.Register(netfilter.Ops{Hook: netfilter.LocalIn, Priority: 1, Name: "drop", Fn: func(*buf.SKB, netfilter.State) netfilter.Verdict {
		return netfilter.Drop(drop)
	}})
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if tn.dropped(drop) != 1 || len(tn.rcvd[header.ProtoUDP]) != 1 {
		t.Fatal("LOCAL_IN drop verdict")
	}
}
