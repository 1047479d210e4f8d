package conntrack_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

const (
	cli6 = "fd00:1::1"
	srv6 = "fd00:2::1"
)

// IPv6 flows: the tuple is found past the extension headers, TCP walks
// the same states, ICMPv6 echo opens a flow by identifier, an ICMPv6
// error is RELATED to the flow it quotes, NDP is untracked, and a
// non-first fragment has no tuple.
func TestIPv6Tracking(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{})
	syn := stacktest.IPv6(cli6, srv6).DestOpts([]byte{0x1e, 0}).TCP(40000, 80).Flags(header.SYN).Seq(1).Window(65535).Bytes()
	c, dir, info := in(t, tb, syn)
	if info != conntrack.InfoNew || dir != conntrack.Original {
		t.Fatal(info)
	}
	want := conntrack.Tuple{Src: netip.MustParseAddr(cli6), Dst: netip.MustParseAddr(srv6), SrcPort: 40000, DstPort: 80, Proto: header.ProtoTCP}
	if c.Tuple(conntrack.Original) != want {
		t.Fatalf("tuple %v", c.Tuple(conntrack.Original))
	}
	tb.Confirm(c)
	synack := stacktest.IPv6(srv6, cli6).TCP(80, 40000).Flags(header.SYN | header.ACK).Seq(1000).Ack(2).Window(65535).Bytes()
	if c2, dir, info := in(t, tb, synack); c2 != c || dir != conntrack.Reply || info != conntrack.InfoEstablished {
		t.Fatalf("SYN-ACK: %v %v", dir, info)
	}

	e, _, info := in(t, tb, stacktest.IPv6(cli6, srv6).EchoRequest6(9, 1).Bytes())
	if info != conntrack.InfoNew || e.Tuple(conntrack.Original).SrcPort != 9 {
		t.Fatal("echo request")
	}
	tb.Confirm(e)
	if c2, dir, info := in(t, tb, stacktest.IPv6(srv6, cli6).EchoReply6(9, 1).Bytes()); c2 != e || dir != conntrack.Reply || info != conntrack.InfoEstablished {
		t.Fatalf("echo reply: %v %v", dir, info)
	}
	// A Packet Too Big from a router on the way, quoting our SYN.
	ptb := stacktest.IPv6("fd00:9::1", cli6).ICMPv6(header.ICMPv6PacketTooBig, 0, 1280).Payload(syn).Bytes()
	if c2, dir, info := in(t, tb, ptb); c2 != c || dir != conntrack.Reply || info != conntrack.InfoRelated {
		t.Fatalf("Packet Too Big: %v %v", dir, info)
	}
	sn := header.SolicitedNodeAddr(netip.MustParseAddr(srv6))
	ns := stacktest.Frame().IPv6Addr(netip.MustParseAddr(cli6), sn).NS(netip.MustParseAddr(srv6), header.MAC{2, 0, 0, 0, 0, 1}).Bytes()
	if c2, _, info := in(t, tb, ns); c2 != nil || info != conntrack.InfoUntracked {
		t.Fatalf("NDP: %v", info)
	}
	var p conntrack.Packet
	frag := stacktest.IPv6(cli6, srv6).FragmentHeader(1, 8, false).Proto(header.ProtoUDP).Payload(make([]byte, 8)).Bytes()
	if err := conntrack.Parse(frag, &p); !errors.Is(err, conntrack.ErrFragment) {
		t.Fatalf("later fragment: %v", err)
	}
	if got := tb.List()[0].String(); got[:6] != "icmpv6" {
		t.Fatalf("List: %q", got)
	}
	clk.Advance(31 * time.Second)
	if tb.Len() != 1 {
		t.Fatalf("the echo flow should expire after 30 s, TCP stay: %d", tb.Len())
	}
}

// Source NAT of an IPv6 flow picks within an IPv6 range (NAT66).
func TestIPv6BindNAT(t *testing.T) {
	tb := conntrack.New(clock.NewManual(), conntrack.Config{})
	c, _, _ := in(t, tb, stacktest.IPv6(cli6, srv6).UDP(5000, 53).Bytes())
	r := conntrack.Range{Min: netip.MustParseAddr("2001:db8::10"), Max: netip.MustParseAddr("2001:db8::1f")}
	if err := tb.BindNAT(c, conntrack.ManipSrc, r); err != nil {
		t.Fatal(err)
	}
	rep := c.Tuple(conntrack.Reply)
	if rep.Dst.Compare(r.Min) < 0 || rep.Dst.Compare(r.Max) > 0 || rep.DstPort != 5000 || !c.Translated(conntrack.ManipSrc) {
		t.Fatalf("reply tuple %v", rep)
	}
}

// Each family's ICMP number in the other family's header is just a
// protocol without ports (found by FuzzHooks6: it used to panic).
func TestCrossFamilyICMPNumbers(t *testing.T) {
	tb := conntrack.New(clock.NewManual(), conntrack.Config{})
	for _, b := range [][]byte{
		stacktest.IPv6(cli6, srv6).Proto(header.ProtoICMP).Payload(make([]byte, 8)).Bytes(),
		stacktest.IPv4(cli, srv).Proto(header.ProtoICMPv6).Payload(make([]byte, 8)).Bytes(),
	} {
		c, _, info := in(t, tb, b)
		if c == nil || info != conntrack.InfoNew {
			t.Fatalf("info %v", info)
		}
	}
}
