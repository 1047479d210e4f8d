package netfilter_test

import (
	"bytes"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

var (
	client6 = netip.MustParseAddr("fd00:1::5")
	server6 = netip.MustParseAddr("2001:db8:9::9")
	pub6    = netip.MustParseAddr("2001:db8::1")
)

// newRig6 is newRig for IPv6: the Netfilter's IPv6 hooks are r.hooks;
// eth0 is fd00:1::fe/64 (clients), up0 2001:db8::1/64 (the uplink).
func newRig6(t testing.TB, rules string, ct conntrack.Config) *rig {
	t.Helper()
	r := &rig{t: t, clk: clock.NewManual(), hooks: &netfilter.Hooks{}, sender: &fakeSender{}, logs: &bytes.Buffer{}}
	r.devs = dev.NewDevices(r.clk)
	fib := route.NewTable()
	add := func(name, addr string) *dev.NIC {
		a, _ := pipe.New(1500)
		t.Cleanup(func() { a.Close() })
		n, err := r.devs.Add(a, dev.Config{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		p := netip.MustParsePrefix(addr)
		if err := n.AddAddress(p); err != nil {
			t.Fatal(err)
		}
		fib.AddLocal(p.Addr(), n.ID())
		_ = fib.Add(route.Route{Dst: p.Masked(), NIC: n.ID()})
		return n
	}
	r.in = add("eth0", "fd00:1::fe/64")
	r.out = add("up0", "2001:db8::1/64")
	r.nf = netfilter.New(netfilter.Config{Hooks6: r.hooks, Clock: r.clk, Devices: r.devs, FIB: fib, Sender6: r.sender,
		Conntrack: ct, Logger: slog.New(slog.NewTextHandler(r.logs, nil))})
	if rules != "" {
		if err := r.nf.LoadText(rules); err != nil {
			t.Fatalf("LoadText: %v", err)
		}
	}
	return r
}

// seen6 is a translated IPv6 packet, decoded and checksum-checked.
type seen6 struct {
	src, dst     netip.Addr
	sport, dport uint16
	id           uint16
	icmp         header.ICMPv6
}

func check6(t *testing.T, b []byte) seen6 {
	t.Helper()
	ip, err := header.CheckIPv6(b)
	if err != nil {
		t.Fatalf("not IPv6: %v", err)
	}
	u, err := header.IPv6SkipExtHeaders(b)
	if err != nil {
		t.Fatal(err)
	}
	l4 := b[u.Offset:ip.TotalLen()]
	s := seen6{src: ip.Src(), dst: ip.Dst()}
	switch u.Proto {
	case header.ProtoUDP:
		h := header.UDP(l4)
		if !h.ChecksumValid(s.src, s.dst) || h.Checksum() == 0 {
			t.Fatal("UDP checksum invalid after NAT66")
		}
		s.sport, s.dport = h.SrcPort(), h.DstPort()
	case header.ProtoTCP:
		h := header.TCP(l4)
		if !h.ChecksumValid(s.src, s.dst) {
			t.Fatal("TCP checksum invalid after NAT66")
		}
		s.sport, s.dport = h.SrcPort(), h.DstPort()
	case header.ProtoICMPv6:
		h := header.ICMPv6(l4)
		if !h.ChecksumValid(s.src, s.dst) {
			t.Fatal("ICMPv6 checksum invalid after NAT66 (RFC 4443 §2.3: it covers the addresses)")
		}
		s.icmp, s.id = h, h.ID()
	}
	return s
}

// NAT66 (MASQUERADE) of UDP, TCP and ICMPv6 echo: every packet leaves
// with the uplink's address and pseudo-header checksums still valid, and
// replies map back.
func TestMasquerade6(t *testing.T) {
	r := newRig6(t, "*nat\n-A POSTROUTING -o up0 -s fd00:1::/64 -j MASQUERADE\n", conntrack.Config{})
	for _, tc := range []struct {
		name      string
		out, back func(src, dst netip.Addr) []byte
	}{
		{"udp",
			func(s, d netip.Addr) []byte {
				return stacktest.Frame().IPv6Addr(s, d).UDP(5000, 53).Payload([]byte("q")).Bytes()
			},
			func(s, d netip.Addr) []byte {
				return stacktest.Frame().IPv6Addr(s, d).UDP(53, 5000).Payload([]byte("a")).Bytes()
			}},
		{"tcp",
			func(s, d netip.Addr) []byte {
				return stacktest.Frame().IPv6Addr(s, d).TCP(40000, 80).Flags(header.SYN).Seq(1).Window(100).Bytes()
			},
			func(s, d netip.Addr) []byte {
				return stacktest.Frame().IPv6Addr(s, d).TCP(80, 40000).Flags(header.SYN | header.ACK).Seq(9).Ack(2).Window(100).Bytes()
			}},
		{"icmpv6 echo",
			func(s, d netip.Addr) []byte { return stacktest.Frame().IPv6Addr(s, d).EchoRequest6(77, 1).Bytes() },
			func(s, d netip.Addr) []byte { return stacktest.Frame().IPv6Addr(s, d).EchoReply6(77, 1).Bytes() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, b := r.outb(tc.out(client6, server6))
			if !v.Accepted() {
				t.Fatal(v)
			}
			o := check6(t, b)
			if o.src != pub6 || o.dst != server6 {
				t.Fatalf("out: %v → %v", o.src, o.dst)
			}
			v, b = r.backb(tc.back(server6, pub6))
			if !v.Accepted() {
				t.Fatal(v)
			}
			if bk := check6(t, b); bk.dst != client6 || bk.src != server6 {
				t.Fatalf("back: %v → %v", bk.src, bk.dst)
			}
		})
	}
}

// An ICMPv6 error about a translated flow (RELATED) is translated back:
// outer destination and the quoted packet's source become the client's,
// and the ICMPv6 checksum is right for the final addresses.
func TestICMPv6ErrorTranslation(t *testing.T) {
	r := newRig6(t, "*nat\n-A POSTROUTING -o up0 -j MASQUERADE\n", conntrack.Config{})
	_, b := r.outb(stacktest.Frame().IPv6Addr(client6, server6).UDP(5000, 53).Payload([]byte("q")).Bytes())
	translated := append([]byte(nil), b...)
	errPkt := stacktest.Frame().IPv6Addr(server6, pub6).ICMPv6(header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, 0).
		Payload(translated).Bytes()
	v, b := r.backb(errPkt)
	if !v.Accepted() {
		t.Fatal(v)
	}
	o := check6(t, b)
	if o.dst != client6 {
		t.Fatalf("outer destination %v", o.dst)
	}
	inner := header.IPv6(o.icmp.Payload())
	if inner.Src() != client6 || inner.Dst() != server6 {
		t.Fatalf("quoted %v → %v", inner.Src(), inner.Dst())
	}
	if u := header.UDP(inner.Payload()); !u.ChecksumValid(client6, server6) || u.SrcPort() != 5000 {
		t.Fatal("quoted UDP header not translated back")
	}
}

// DNAT66 with a port: ip6tables' [addr]:port form.
func TestDNAT6(t *testing.T) {
	r := newRig6(t, "*nat\n-A PREROUTING -i up0 -p tcp --dport 8080 -j DNAT --to-destination [fd00:1::5]:80\n", conntrack.Config{})
	syn := stacktest.Frame().IPv6Addr(server6, pub6).TCP(40000, 8080).Flags(header.SYN).Seq(1).Window(100).Bytes()
	v, b := r.backb(syn)
	if !v.Accepted() {
		t.Fatal(v)
	}
	if o := check6(t, b); o.dst != client6 || o.dport != 80 {
		t.Fatalf("DNAT66: %+v", o)
	}
	rs := r.nf.Ruleset().Chain("nat", "PREROUTING").Rules[0].String()
	if rs != "-i up0 -p tcp --dport 8080 -j DNAT --to-destination [fd00:1::5]:80" {
		t.Fatalf("rule prints as %q", rs)
	}
}

// nf_defrag_ipv6 at PREROUTING: fragments are held until the packet is
// whole, which then continues with its largest fragment recorded.
func TestDefrag6(t *testing.T) {
	r := newRig6(t, "", conntrack.Config{})
	icmp := stacktest.Frame().IPv6Addr(client6, server6).EchoRequest6(1, 1).Payload(make([]byte, 2000)).Bytes()[header.IPv6MinSize:]
	frag := func(off, end int, more bool) []byte {
		return stacktest.Frame().IPv6Addr(client6, server6).FragmentHeader(9, off, more).Proto(header.ProtoICMPv6).Payload(icmp[off:end]).Bytes()
	}
	run := func(b []byte) (netfilter.Verdict, *buf.SKB) {
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		skb.SetNetworkHeader()
		skb.InNIC = r.in.ID()
		return r.hooks.Run(netfilter.PreRouting, skb, r.in.ID(), 0), skb
	}
	if v, _ := run(frag(1000, len(icmp), false)); !v.Stolen() {
		t.Fatalf("second fragment: %v", v)
	}
	v, skb := run(frag(0, 1000, true))
	if !v.Accepted() {
		t.Fatalf("last fragment: %v", v)
	}
	defer skb.Consume()
	o := check6(t, skb.Bytes())
	if o.icmp.Type() != header.ICMPv6EchoRequest || len(o.icmp) != len(icmp) {
		t.Fatalf("reassembled %d bytes", len(o.icmp))
	}
	if fms := netfilter.FragMaxSize(skb); fms != header.IPv6MinSize+header.IPv6FragmentSize+len(icmp)-1000 {
		t.Fatalf("FragMaxSize %d", fms)
	}
	if st := r.nf.Stats(); st.DefragOKs != 1 || st.Conntrack.Entries != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A fragment past the end the last one set (RFC 8200 §4.5): the
	// queue goes, nothing is reassembled without offset zero.
	if v, _ := run(frag(8, 16, false)); !v.Stolen() {
		t.Fatalf("last fragment [8,16): %v", v)
	}
	if v, _ := run(frag(16, 24, true)); !v.Dropped() || v.Reason() != netfilter.DropDefragOverlap {
		t.Fatalf("fragment [16,24) past the end 16: %v, want dropped as an overlap", v)
	}
}

// REJECT answers IPv6 in ICMPv6 with the mapped code.
func TestReject6(t *testing.T) {
	r := newRig6(t, "*filter\n-A FORWARD -p udp --dport 9 -j REJECT\n-A FORWARD -p udp --dport 10 -j REJECT --reject-with icmp6-no-route\n", conntrack.Config{})
	for _, port := range []uint16{9, 10} {
		if v, _ := r.outb(stacktest.Frame().IPv6Addr(client6, server6).UDP(1, port).Bytes()); !v.Dropped() {
			t.Fatal(v)
		}
	}
	want := []icmpSent{{header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable}, {header.ICMPv6DstUnreachable, header.ICMPv6NoRoute}}
	if len(r.sender.sent) != 2 || r.sender.sent[0] != want[0] || r.sender.sent[1] != want[1] {
		t.Fatalf("sent %+v", r.sender.sent)
	}
}

// Any bytes through the IPv6 hooks with NAT66, defrag and REJECT rules:
// dropped, kept or passed, never a panic.
func FuzzHooks6(f *testing.F) {
	f.Add(stacktest.Frame().IPv6Addr(client6, server6).TCP(40000, 80).Flags(header.SYN).Bytes(), false)
	f.Add(stacktest.Frame().IPv6Addr(server6, pub6).UDP(53, 5000).Bytes(), true)
	f.Add(stacktest.Frame().IPv6Addr(client6, server6).EchoRequest6(1, 1).Bytes(), false)
	q := stacktest.Frame().IPv6Addr(pub6, server6).UDP(5000, 53).Bytes()
	f.Add(stacktest.Frame().IPv6Addr(server6, pub6).ICMPv6(1, 4, 0).Payload(q).Bytes(), true)
	f.Add(stacktest.Frame().IPv6Addr(client6, server6).FragmentHeader(7, 0, true).Proto(header.ProtoUDP).Payload(make([]byte, 16)).Bytes(), false)
	f.Add(stacktest.Frame().IPv6Addr(client6, server6).HopByHop([]byte{5, 2, 0, 0}).UDP(1, 9).Bytes(), false)
	r := newRig6(f, `*nat
-A POSTROUTING -o up0 -j MASQUERADE
-A PREROUTING -i up0 -p tcp --dport 8080 -j DNAT --to-destination [fd00:1::5]:80
*filter
-A FORWARD -p tcp --dport 23 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp --dport 9 -j REJECT
-A FORWARD --ctstate INVALID -j LOG
`, conntrack.Config{Max: 128})
	f.Fuzz(func(t *testing.T, b []byte, back bool) {
		if back {
			r.backb(b)
		} else {
			r.outb(b)
		}
	})
}
