package ipv4

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

func goodUDP() pkt {
	return pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoUDP, id: 7, payload: udpish(40)}
}

func TestLocalDeliverTrimsPadding(t *testing.T) {
	tn := newTestNet(t)
	p := goodUDP()
	b := append(p.bytes(), make([]byte, 10)...) // Ethernet padding
	tn.rcv(1, b)
	got := tn.rcvd[header.ProtoUDP]
	if len(got) != 1 || !bytes.Equal(got[0], p.payload) {
		t.Fatalf("delivered %x, want %x", got, p.payload)
	}
	if h := header.IPv4(tn.hdrs[0]); h.Src() != ip("10.1.0.5") || h.Dst() != ip("10.1.0.1") {
		t.Fatalf("NetworkHeader not the IPv4 header: %x", tn.hdrs[0])
	}
	if tn.counter("IpInDelivers") != 1 {
		t.Fatal("InDelivers not counted")
	}
	// Our address on another NIC is local too (weak host model, as Linux).
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "192.168.0.2", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(tn.rcvd[header.ProtoUDP]) != 2 {
		t.Fatal("datagram to our uplink address not delivered")
	}
}

// RFC 1122 §3.2.2.1: an unknown protocol gets Destination Unreachable,
// code 2, quoting the datagram.
func TestUnknownProtocol(t *testing.T) {
	tn := newTestNet(t)
	b := pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: 99, payload: udpish(30)}.bytes()
	tn.rcv(1, b)
	if tn.counter("IpInUnknownProtos") != 1 || tn.dropped(DropNoProto) != 1 {
		t.Fatalf("counters %v drops %v", tn.l.Counters(), tn.drops.Snapshot())
	}
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 || out[0].nextHop != ip("10.1.0.5") {
		t.Fatalf("sent %+v", out)
	}
	m := checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4DstUnreachable, header.ICMPv4ProtoUnreachable)
	if !bytes.Equal(m.Payload(), b) {
		t.Fatalf("quote %x, want the whole datagram %x", m.Payload(), b)
	}
	if tn.counter("IcmpOutDestUnreachs") != 1 || tn.counter("IcmpOutMsgs") != 1 {
		t.Fatal("ICMP out counters")
	}
	// Broadcast: no error (RFC 1122 §3.2.2).
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "10.1.0.255", proto: 99, payload: udpish(8)}.bytes())
	if len(tn.take()) != 0 || tn.counter("IpInUnknownProtos") != 2 {
		t.Fatal("ICMP sent about a broadcast")
	}
}

// RFC 3704 §2.2: strict reverse-path filtering, per NIC.
func TestRPFilter(t *testing.T) {
	tn := newTestNet(t)
	spoofed := pkt{src: "8.8.8.8", dst: "10.1.0.1", proto: header.ProtoUDP, payload: udpish(8)}.bytes()
	tn.rcv(1, spoofed)
	if tn.counter("TcpExtIPReversePathFilter") != 1 || tn.drops.Get(DropRPFilter) != 1 || len(tn.rcvd[header.ProtoUDP]) != 0 {
		t.Fatalf("spoofed source accepted: %v %v", tn.l.Counters(), tn.drops.Snapshot())
	}
	// The same source is fine on the uplink, where the default route points.
	tn.rcv(2, spoofed)
	if len(tn.rcvd[header.ProtoUDP]) != 1 {
		t.Fatal("legitimate source dropped")
	}
	tn.l.SetRPFilter(1, false)
	tn.rcv(1, spoofed)
	if len(tn.rcvd[header.ProtoUDP]) != 2 {
		t.Fatal("rp_filter off on NIC 1 still drops")
	}
	tn.l.SetRPFilter(1, true)
	tn.rcv(1, spoofed)
	if tn.counter("TcpExtIPReversePathFilter") != 2 {
		t.Fatal("rp_filter back on does not drop")
	}
	off := newTestNet(t, func(c *Config) { c.RPFilter = RPFilterOff })
	off.rcv(1, spoofed)
	if len(off.rcvd[header.ProtoUDP]) != 1 {
		t.Fatal("RPFilterOff default still drops")
	}
}

// A hook that drops at each of the five points stops the packet there:
// this pins where the hooks sit on each path.
func TestHookPlacement(t *testing.T) {
	local := func(tn *testNet) { tn.rcv(1, goodUDP().bytes()) }
	fwd := func(tn *testNet) {
		tn.rcv(1, pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	}
	xmit := func(tn *testNet) {
		_ = tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(16)), flowTo("10.1.0.5"))
	}
	for _, tc := range []struct {
		hook    netfilter.Hook
		inject  func(*testNet)
		allSeen []netfilter.Hook // hooks an accepting run passes, in order
	}{
		{netfilter.PreRouting, local, []netfilter.Hook{netfilter.PreRouting, netfilter.LocalIn}},
		{netfilter.LocalIn, local, []netfilter.Hook{netfilter.PreRouting, netfilter.LocalIn}},
		{netfilter.PreRouting, fwd, []netfilter.Hook{netfilter.PreRouting, netfilter.Forward, netfilter.PostRouting}},
		{netfilter.Forward, fwd, []netfilter.Hook{netfilter.PreRouting, netfilter.Forward, netfilter.PostRouting}},
		{netfilter.PostRouting, fwd, []netfilter.Hook{netfilter.PreRouting, netfilter.Forward, netfilter.PostRouting}},
		{netfilter.LocalOut, xmit, []netfilter.Hook{netfilter.LocalOut, netfilter.PostRouting}},
		{netfilter.PostRouting, xmit, []netfilter.Hook{netfilter.LocalOut, netfilter.PostRouting}},
	} {
		t.Run(tc.hook.String(), func(t *testing.T) {
			// Accepting run: every hook on the path is passed, in order.
			tn := newTestNet(t)
			var seen []netfilter.Hook
			for h := netfilter.Hook(0); h < netfilter.NumHooks; h++ {
				tn.hooks.Register(netfilter.Ops{Hook: h, Name: "watch", Fn: func(skb *buf.SKB, st netfilter.State) netfilter.Verdict {
					seen = append(seen, st.Hook)
					return netfilter.Accept()
				}})
			}
			tc.inject(tn)
			if !equalHooks(seen, tc.allSeen) {
				t.Fatalf("accepting run passed %v, want %v", seen, tc.allSeen)
			}
			// Dropping run: nothing after the hook runs, nothing leaves.
			tn = newTestNet(t)
			reason := buf.NewDropReason("TEST_HOOK_" + tc.hook.String())
			seen = nil
			for h := netfilter.Hook(0); h < netfilter.NumHooks; h++ {
				h := h
				tn.hooks.Register(netfilter.Ops{Hook: h, Name: "watch", Fn: func(skb *buf.SKB, st netfilter.State) netfilter.Verdict {
					seen = append(seen, st.Hook)
					if h == tc.hook {
						return netfilter.Drop(reason)
					}
					return netfilter.Accept()
				}})
			}
			tc.inject(tn)
			if len(seen) == 0 || seen[len(seen)-1] != tc.hook {
				t.Fatalf("hooks run %v, want the last to be %v", seen, tc.hook)
			}
			if tn.dropped(reason) != 1 {
				t.Fatalf("drop reason not counted: %v / %v", tn.drops.Snapshot(), tn.l.Drops().Snapshot())
			}
			if len(tn.out) != 0 || len(tn.rcvd[header.ProtoUDP]) != 0 {
				t.Fatalf("packet went on after a drop at %v: out %d rcvd %d", tc.hook, len(tn.out), len(tn.rcvd[header.ProtoUDP]))
			}
		})
	}
}

func equalHooks(a, b []netfilter.Hook) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A stolen packet is the hook's: the layer neither frees nor delivers it.
func TestHookStolen(t *testing.T) {
	tn := newTestNet(t)
	var kept *buf.SKB
	tn.hooks.Register(netfilter.Ops{Hook: netfilter.PreRouting, Name: "divert", Fn: func(skb *buf.SKB, st netfilter.State) netfilter.Verdict {
		kept = skb
		return netfilter.Stolen()
	}})
	tn.rcv(1, goodUDP().bytes())
	if kept == nil || len(tn.rcvd[header.ProtoUDP]) != 0 || tn.drops.Total() != 0 {
		t.Fatal("stolen packet was processed further")
	}
	if h := header.IPv4(kept.Bytes()); h.Dst() != ip("10.1.0.1") {
		t.Fatal("stolen packet mangled")
	}
	kept.Consume()
}

// Stats and Counters report the same MIB: every Stats field matches its
// nstat-named counter.
func TestStatsMatchCounters(t *testing.T) {
	tn := newTestNet(t)
	for c := counter(0); c < numCounters; c++ {
		tn.l.mib[c].Add(uint64(c) + 1)
	}
	m := tn.l.Counters()
	if len(m) != int(numCounters) {
		t.Fatalf("%d counters named, want %d", len(m), numCounters)
	}
	alias := map[string]string{"RPFilterDrops": "TcpExtIPReversePathFilter", "ICMP.OutRateLimited": "IcmpOutRateLimitGlobal"}
	seen := 0
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		for i := 0; i < v.NumField(); i++ {
			f, name := v.Field(i), v.Type().Field(i).Name
			if f.Kind() == reflect.Struct {
				walk(f, name+".")
				continue
			}
			key, ok := alias[prefix+name]
			if !ok {
				cands := []string{"Ip" + name, "IpExt" + name}
				if prefix == "ICMP." {
					cands = []string{"Icmp" + name}
				}
				for _, c := range cands {
					if _, ok := m[c]; ok {
						key = c
					}
				}
			}
			if key == "" || m[key] != f.Uint() {
				t.Errorf("Stats.%s%s = %d, counter %q = %d", prefix, name, f.Uint(), key, m[key])
			}
			seen++
		}
	}
	walk(reflect.ValueOf(tn.l.Stats()), "")
	if seen != int(numCounters) {
		t.Fatalf("Stats has %d fields, %d counters", seen, numCounters)
	}
}
