package ipv4

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inet"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

func TestQueueXmitHeader(t *testing.T) {
	tn := newTestNet(t)
	payload := udpish(100)
	for _, tc := range []struct {
		name string
		fl   route.Flow
		nic  int
		nh   string
		src  string
		ttl  uint8
		df   bool
	}{
		{"connected, default TTL, source from the NIC", route.Flow{Dst: ip("10.1.0.5"), Proto: header.ProtoUDP}, 1, "10.1.0.5", "10.1.0.1", 64, false},
		{"via gateway, DF, TTL and TOS from the flow", route.Flow{Dst: ip("8.8.8.8"), Proto: header.ProtoTCP, TTL: 5, TOS: 0x20, DontFragment: true},
			2, "192.168.0.1", "192.168.0.2", 5, true},
		{"flow source kept", route.Flow{Src: ip("192.168.0.2"), Dst: ip("10.1.0.5"), Proto: header.ProtoUDP}, 1, "10.1.0.5", "192.168.0.2", 64, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, payload), tc.fl); err != nil {
				t.Fatal(err)
			}
			out := tn.take()
			if len(out) != 1 || out[0].nic != tc.nic || out[0].nextHop != ip(tc.nh) {
				t.Fatalf("sent %+v", out)
			}
			h, err := header.CheckIPv4(out[0].b)
			if err != nil || !h.ChecksumValid() {
				t.Fatalf("header: %v", err)
			}
			if h.Src() != ip(tc.src) || h.Dst() != tc.fl.Dst || h.TTL() != tc.ttl || h.DF() != tc.df ||
				h.Protocol() != tc.fl.Proto || h.TOS() != tc.fl.TOS || h.MF() || h.FragOffset() != 0 {
				t.Fatalf("header %+v", h.Fields())
			}
			if !bytes.Equal(h.Payload(), payload) {
				t.Fatal("payload changed")
			}
		})
	}
}

// IDs are sequential per destination (ip_idents) and GSO reserves one per
// segment.
func TestIPIDs(t *testing.T) {
	tn := newTestNet(t)
	id := func(dst string, gso uint16, n int) uint16 {
		skb := buf.FromBytes(buf.MaxHeadroom, udpish(n))
		skb.GSOSize = gso
		if err := tn.l.QueueXmit(skb, flowTo(dst)); err != nil {
			t.Fatal(err)
		}
		out := tn.take()
		return out[0].ip().ID()
	}
	a := id("10.1.0.5", 0, 10)
	if b := id("10.1.0.5", 0, 10); b != a+1 {
		t.Fatalf("ids %d then %d", a, b)
	}
	g := id("10.1.0.5", 1000, 4500) // 5 segments
	if next := id("10.1.0.5", 0, 10); next != g+5 {
		t.Fatalf("GSO reserved %d ids, want 5", next-g)
	}
}

func TestQueueXmitErrors(t *testing.T) {
	tn := newTestNet(t)
	_ = tn.fib.Add(route.Route{Dst: pfx("10.66.0.0/16"), Type: route.Unreachable})
	empty := newTestNet(t, func(c *Config) { c.FIB = route.NewTable() })
	for _, tc := range []struct {
		name    string
		tn      *testNet
		fl      route.Flow
		n       int
		errno   syscall.Errno
		counter string
		reason  buf.DropReason
	}{
		{"no route → ENETUNREACH", empty, flowTo("8.8.8.8"), 10, syscall.ENETUNREACH, "IpExtOutNoRoutes", DropOutNoRoutes},
		{"unreachable route → EHOSTUNREACH", tn, flowTo("10.66.1.1"), 10, syscall.EHOSTUNREACH, "IpExtOutNoRoutes", DropOutNoRoutes},
		{"foreign source → EINVAL", tn, route.Flow{Src: ip("1.2.3.4"), Dst: ip("10.1.0.5")}, 10, syscall.EINVAL, "IpExtOutNoRoutes", DropOutNoRoutes},
		{"over 65535 bytes → EMSGSIZE", tn, flowTo("10.1.0.5"), 65520, syscall.EMSGSIZE, "IpOutDiscards", DropLocalOverflow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.tn.counter(tc.counter)
			err := tc.tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(tc.n)), tc.fl)
			if !errors.Is(err, tc.errno) {
				t.Fatalf("err %v, want %v", err, tc.errno)
			}
			if tc.tn.counter(tc.counter) != before+1 || tc.tn.l.Drops().Get(tc.reason) == 0 {
				t.Fatalf("%s not counted", tc.counter)
			}
			if len(tc.tn.take()) != 0 {
				t.Fatal("sent anyway")
			}
		})
	}
}

// A local DF datagram over the MTU is refused with EMSGSIZE, and the
// sender's protocol learns the MTU through ICMP over loopback (RFC 1191).
func TestQueueXmitDFTooBig(t *testing.T) {
	tn := newTestNet(t)
	fl := route.Flow{Dst: ip("8.8.8.8"), Proto: header.ProtoUDP, DontFragment: true}
	err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(1200)), fl)
	if !errors.Is(err, syscall.EMSGSIZE) || tn.counter("IpFragFails") != 1 {
		t.Fatalf("err %v", err)
	}
	if len(tn.take()) != 0 {
		t.Fatal("sent on the wire")
	}
	tn.clk.Advance(0) // the loopback backlog runs
	if len(tn.errs) != 1 || tn.errs[0].Errno != syscall.EMSGSIZE || tn.errs[0].Info != 1000 {
		t.Fatalf("Err %+v", tn.errs)
	}
	if h := header.IPv4(tn.errs[0].inner); h.Dst() != ip("8.8.8.8") || h.Src() != ip("192.168.0.2") {
		t.Fatal("Err does not quote our datagram")
	}
	// A GSO super-packet is the link's to segment: never fragmented here.
	skb := buf.FromBytes(buf.MaxHeadroom, udpish(5000))
	skb.GSOSize, skb.GSOType = 900, buf.GSOUDPL4v4
	if err := tn.l.QueueXmit(skb, flowTo("8.8.8.8")); err != nil {
		t.Fatal(err)
	}
	if out := tn.take(); len(out) != 1 || len(out[0].b) != 5020 {
		t.Fatalf("GSO packet: %d packets", len(out))
	}
}

// Datagrams to our own addresses loop back without touching a NIC, from
// the backlog (so never on the sender's call stack).
func TestLoopback(t *testing.T) {
	tn := newTestNet(t)
	payload := udpish(3000) // larger than any MTU: no fragmentation on loopback
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, payload), flowTo("192.168.0.2")); err != nil {
		t.Fatal(err)
	}
	if len(tn.rcvd[header.ProtoUDP]) != 0 {
		t.Fatal("delivered on the sender's stack")
	}
	tn.clk.Advance(0)
	got := tn.rcvd[header.ProtoUDP]
	if len(got) != 1 || !bytes.Equal(got[0], payload) || len(tn.take()) != 0 {
		t.Fatalf("loopback delivered %d, sent %d", len(got), len(tn.out))
	}
	if h := header.IPv4(tn.hdrs[0]); h.Src() != ip("192.168.0.2") || h.Dst() != ip("192.168.0.2") {
		t.Fatalf("loopback header %v → %v", h.Src(), h.Dst())
	}
	// Ping ourselves: the echo reply comes back to a registered ICMP handler.
	var replies int
	tn.l.AddProtocol(header.ProtoICMP, Protocol{Rcv: func(skb *buf.SKB) {
		if header.ICMPv4(skb.Bytes()).Type() == header.ICMPv4EchoReply {
			replies++
		}
		skb.Consume()
	}})
	echo := icmpMsg(header.ICMPv4Echo, 0, header.EchoRest(1, 1), []byte("self"))
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, echo), route.Flow{Dst: ip("10.1.0.1"), Proto: header.ProtoICMP}); err != nil {
		t.Fatal(err)
	}
	tn.clk.Advance(0)
	if replies != 1 {
		t.Fatalf("%d echo replies", replies)
	}
	// The backlog is bounded.
	for i := 0; i < inet.BacklogMax+5; i++ {
		_ = tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(8)), flowTo("10.1.0.1"))
	}
	if tn.l.Drops().Get(DropBacklogFull) != 5 {
		t.Fatalf("backlog overflow drops %d", tn.l.Drops().Get(DropBacklogFull))
	}
	tn.clk.Advance(0)
	if n := len(tn.rcvd[header.ProtoUDP]); n != 1+inet.BacklogMax {
		t.Fatalf("delivered %d", n)
	}
}

// Resolution failure: the local sender's protocol gets EHOSTUNREACH
// (arp_error_report → icmp_send → loopback → Err).
func TestNeighFailureReachesSender(t *testing.T) {
	tn := newTestNet(t)
	if err := tn.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(30)), flowTo("10.1.0.77")); err != nil {
		t.Fatal(err)
	}
	out := tn.take()
	skb := buf.FromBytes(buf.MaxHeadroom, out[0].b) // what neigh had queued
	tn.l.neighFailure(skb)
	skb.Free(buf.DropNotSpecified) // neigh frees it after the handler
	tn.clk.Advance(0)
	if len(tn.errs) != 1 || tn.errs[0].Errno != syscall.EHOSTUNREACH {
		t.Fatalf("Err %+v", tn.errs)
	}
	if h := header.IPv4(tn.errs[0].inner); h.Dst() != ip("10.1.0.77") {
		t.Fatal("wrong quoted datagram")
	}
	// A forwarded packet's remote sender gets host unreachable on the wire.
	fwd := pkt{src: "10.1.0.5", dst: "8.8.4.4", proto: header.ProtoUDP, payload: udpish(8)}.bytes()
	skb = buf.FromBytes(buf.MaxHeadroom, fwd)
	skb.InNIC = 1
	tn.l.neighFailure(skb)
	skb.Consume()
	tn.clk.Advance(0)
	out = tn.take()
	if len(out) != 1 {
		t.Fatalf("sent %d", len(out))
	}
	checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable)
}
