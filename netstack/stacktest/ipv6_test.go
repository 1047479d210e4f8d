package stacktest_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// IPv6 between whole stacks over pipes, on the manual clock: every
// protocol timer (NUD, reassembly, PMTU aging, rate limits) moves only
// when the test advances it; stacktest.WaitFor only waits for the NIC
// goroutines to carry frames.

func neighState6(n *stacktest.Node, addr netip.Addr) neigh.State {
	e, ok := n.Neigh().Lookup(n.NIC().ID(), addr)
	if !ok {
		return 255
	}
	return e.State
}

// inject writes a whole Ethernet frame out of n's first NIC, as if n's
// stack had built it: for packets no stack would send.
func inject(n *stacktest.Node, frame []byte) {
	n.NIC().Xmit(buf.FromBytes(buf.MaxHeadroom, frame))
}

// RFC 4861 §7.2 both ways: A resolves B with a multicast solicitation
// and a solicited advertisement (REACHABLE); B learnt A from the
// solicitation (STALE), sent its reply through DELAY, and after
// DELAY_FIRST_PROBE_TIME probes A with a unicast solicitation whose
// answer makes A REACHABLE at B too. RFC 4443 §4: the echo carries 56 and
// 3000 bytes (fragmented both ways, RFC 8200 §4.5).
func TestIPv6PingResolvesBothWays(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	for seq, n := range []int{56, 3000} {
		if _, err := a.Ping(pingCtx(t), b.Addr6(), uint16(seq), bytes.Repeat([]byte{7}, n)); err != nil {
			t.Fatalf("ping %d bytes: %v\n%s", n, err, a.Stats())
		}
	}
	if st := neighState6(a, b.Addr6()); st != neigh.Reachable {
		t.Fatalf("A's entry for B: %v", st)
	}
	if e, _ := a.Neigh().Lookup(a.NIC().ID(), b.Addr6()); e.MAC != b.NIC().MAC() {
		t.Fatalf("A resolved B to %v", e.MAC)
	}
	if st := neighState6(b, a.Addr6()); st != neigh.Delay && st != neigh.Stale {
		t.Fatalf("B's entry for A: %v", st)
	}
	clk.Advance(5 * time.Second)
	stacktest.WaitFor(t, "B's entry for A to become Reachable", func() bool { return neighState6(b, a.Addr6()) == neigh.Reachable })
	sa, sb := a.Stats(), b.Stats()
	if sa.Neigh.NDPOutSolicits < 1 || sb.Neigh.NDPInSolicits < 1 || sb.Neigh.NDPOutAdverts < 1 || sa.Neigh.NDPInAdverts < 1 {
		t.Fatalf("NDP counters A %+v B %+v", sa.Neigh, sb.Neigh)
	}
	if sb.IP6.ReasmOKs != 1 || sb.IP6.FragCreates != 3 || sa.IP6.ReasmOKs != 1 {
		t.Fatalf("fragmentation: A %+v B %+v", sa.IP6, sb.IP6)
	}
	// The other way, and over link-local addresses (the zone names A's
	// NIC, RFC 4291 §2.5.6).
	if _, err := b.Ping(pingCtx(t), a.Addr6(), 9, bytes.Repeat([]byte{1}, 3000)); err != nil {
		t.Fatalf("B→A: %v", err)
	}
	ll := netstack.LinkLocal(b.NIC()).WithZone(a.NIC().Name())
	if _, err := a.Ping(pingCtx(t), ll, 10, []byte("ll")); err != nil {
		t.Fatalf("link-local ping: %v", err)
	}
	if _, err := a.Ping(pingCtx(t), ll.WithZone(""), 11, nil); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("link-local without zone: %v", err)
	}
}

// RFC 4861 §7.3.3 over the wire: a REACHABLE entry ages to STALE after
// ReachableTime, a packet moves it to DELAY, no confirmation within 5 s
// to PROBE; the unicast probe is answered and the entry is REACHABLE
// again. A neighbour that never answers fails, and its packets' sender
// hears ICMPv6 address unreachable (RFC 4443 §3.1 code 3).
func TestIPv6NUDOverTheWire(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	if _, err := a.Ping(pingCtx(t), b.Addr6(), 1, nil); err != nil {
		t.Fatal(err)
	}
	clk.Advance(45 * time.Second) // past any ReachableTime in [15 s, 45 s)
	if st := neighState6(a, b.Addr6()); st != neigh.Stale {
		t.Fatalf("after ReachableTime: %v", st)
	}
	if _, err := a.Ping(pingCtx(t), b.Addr6(), 2, nil); err != nil {
		t.Fatal(err)
	}
	if st := neighState6(a, b.Addr6()); st != neigh.Delay {
		t.Fatalf("after sending from STALE: %v", st)
	}
	before := a.Stats().Neigh.NDPOutSolicits
	clk.Advance(5 * time.Second)
	stacktest.WaitFor(t, "the probe to be answered", func() bool { return neighState6(a, b.Addr6()) == neigh.Reachable })
	if a.Stats().Neigh.NDPOutSolicits != before+1 {
		t.Fatal("no unicast probe")
	}

	absent := netip.MustParseAddr("fd00::77")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { _, err := a.Ping(ctx, absent, 3, nil); errc <- err }()
	stacktest.WaitFor(t, "resolution to start", func() bool { return neighState6(a, absent) == neigh.Incomplete })
	for range 3 {
		clk.Advance(time.Second)
	}
	stacktest.WaitFor(t, "resolution to fail", func() bool { return neighState6(a, absent) == neigh.Failed })
	clk.Advance(0) // the deferred ICMPv6 error, then its loopback
	clk.Advance(0)
	if err := <-errc; !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("ping to an absent neighbour: %v", err)
	}
}

// RFC 8200 §3 / RFC 4443 §3.3: R forwards with the hop limit
// decremented, and a packet arriving with hop limit 1 is dropped with
// Time Exceeded code 0 from R's address on that link. RFC 4443 §2.4(f):
// R's errors are rate-limited.
func TestIPv6ForwardAndHopLimit(t *testing.T) {
	clk := clock.NewManual()
	a, r, b := stacktest.Chain(t, stacktest.WithClock(clk), stacktest.DualStack(),
		stacktest.StackOptions(netstack.WithICMPRateLimit(10, 5)))
	if _, err := a.Ping(pingCtx(t), b.Addr6(), 1, make([]byte, 56)); err != nil {
		t.Fatalf("ping across R: %v", err)
	}
	if r.Stats().IP6.OutForwDatagrams < 2 {
		t.Fatalf("R forwarded %d", r.Stats().IP6.OutForwDatagrams)
	}
	for i := range 20 {
		fl := route.Flow{Dst: b.Addr6(), Proto: 253, TTL: 1, SrcPort: uint16(i)}
		if err := a.IPv6().QueueXmit(buf.FromBytes(buf.MaxHeadroom, make([]byte, 16)), fl); err != nil {
			t.Fatal(err)
		}
	}
	stacktest.WaitFor(t, "R's errors", func() bool {
		return a.Stats().IP6.ICMP.InTimeExcds == 5 && r.Stats().IP6.InHdrErrors == 20
	})
	sr := r.Stats()
	if sr.IP6.InHdrErrors != 20 || sr.IP6.ICMP.OutTimeExcds != 5 || sr.IP6.ICMP.OutRateLimited != 15 {
		t.Fatalf("R: %+v", sr.IP6)
	}
	clk.Advance(time.Second) // 10 tokens, capped at the burst of 5
	fl := route.Flow{Dst: b.Addr6(), Proto: 253, TTL: 1}
	for range 6 {
		if err := a.IPv6().QueueXmit(buf.FromBytes(buf.MaxHeadroom, make([]byte, 16)), fl); err != nil {
			t.Fatal(err)
		}
	}
	stacktest.WaitFor(t, "R's errors after a second", func() bool { return a.Stats().IP6.ICMP.InTimeExcds == 10 })
}

// RFC 8201: R's link to B has MTU 1280. A's first 1400-byte echo is too
// big for it: R answers Packet Too Big 1280 (RFC 4443 §3.2) and A's ping
// fails with EMSGSIZE; A now fragments for that path and the next echo
// goes through, B's reply fragmented at B. After PMTUExpires the
// estimate is raised again (and lowered again by the next Packet Too Big).
func TestIPv6PathMTU(t *testing.T) {
	clk := clock.NewManual()
	a, r, b := stacktest.Chain(t, stacktest.WithClock(clk), stacktest.DualStack())
	for _, nic := range []interface{ SetMTU(int) error }{r.NICs[1], b.NIC()} {
		if err := nic.SetMTU(1280); err != nil {
			t.Fatal(err)
		}
	}
	payload := bytes.Repeat([]byte{3}, 1400)
	if _, err := a.Ping(pingCtx(t), b.Addr6(), 1, payload); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("first ping: %v", err)
	}
	if mtu, _ := a.IPv6().PathMTU(route.Flow{Dst: b.Addr6()}); mtu != 1280 {
		t.Fatalf("A's path MTU %d", mtu)
	}
	if r.Stats().IP6.ICMP.OutPktTooBigs != 1 {
		t.Fatal("R sent no Packet Too Big")
	}
	if _, err := a.Ping(pingCtx(t), b.Addr6(), 2, payload); err != nil {
		t.Fatalf("second ping: %v", err)
	}
	if sa, sb := a.Stats().IP6, b.Stats().IP6; sa.FragCreates != 2 || sb.ReasmOKs != 1 || sb.FragCreates != 2 || sa.ReasmOKs != 1 {
		t.Fatalf("A %+v\nB %+v", sa, sb)
	}
	clk.Advance(10 * time.Minute)
	if mtu, _ := a.IPv6().PathMTU(route.Flow{Dst: b.Addr6()}); mtu != 1500 {
		t.Fatalf("A's path MTU after expiry %d", mtu)
	}
}

// RFC 5722 over the wire: B gets overlapping fragments of an echo
// request and answers nothing, not even for the fragments that follow
// the overlap; a clean set with a new identification is answered.
func TestIPv6FragmentOverlapOverTheWire(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	if _, err := a.Ping(pingCtx(t), b.Addr6(), 1, nil); err != nil { // resolve both ways
		t.Fatal(err)
	}
	msg := stacktest.Frame().IPv6Addr(a.Addr6(), b.Addr6()).EchoRequest6(0x77, 1).Payload(bytes.Repeat([]byte{9}, 2000)).Bytes()
	icmp := msg[header.IPv6MinSize:]
	frag := func(id uint32, off, end int, more bool) []byte {
		return stacktest.Frame().Eth(a.NIC().MAC(), b.NIC().MAC()).IPv6Addr(a.Addr6(), b.Addr6()).
			FragmentHeader(id, off, more).Proto(header.ProtoICMPv6).Payload(icmp[off:end]).Bytes()
	}
	replies := func() uint64 { return b.Stats().IP6.ICMP.OutEchoReplies }
	before := replies()
	inject(a, frag(5, 0, 1000, true))
	inject(a, frag(5, 992, 1504, true)) // overlaps [992, 1000)
	inject(a, frag(5, 1504, len(icmp), false))
	stacktest.WaitFor(t, "B to see the fragments", func() bool { return b.Stats().IP6.ReasmReqds >= 3 })
	// The first fragment, the overlapping one and the late one.
	if st := b.Stats(); st.IP6.ReasmOverlaps != 1 || replies() != before || st.Drops["FRAG_OVERLAP"] != 3 {
		t.Fatalf("B: %+v drops %v", st.IP6, st.Drops)
	}
	inject(a, frag(6, 0, 1000, true))
	inject(a, frag(6, 1000, len(icmp), false))
	stacktest.WaitFor(t, "B to answer the clean set", func() bool { return replies() == before+1 })
}

// RFC 4861 §6.2: Router Advertisements only where configured. B
// advertises on its link; A, itself a router here, counts and ignores
// them.
func TestIPv6RouterAdvertOverTheWire(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk), stacktest.DualStack())
	clk.Advance(time.Hour)
	if n := a.Stats().Neigh.NDPInRouterAdverts; n != 0 {
		t.Fatalf("RAs without config: %d", n)
	}
	err := b.SetRouterAdvert(b.NIC().ID(), &neigh.RouterAdvertConfig{
		Prefixes: []header.NDPPrefixInfo{{Prefix: stacktest.PairB6.Masked(), OnLink: true, ValidLifetime: 3600, PreferredLifetime: 1800}},
	})
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(0)
	stacktest.WaitFor(t, "A to receive an RA", func() bool { return a.Stats().Neigh.NDPInRouterAdverts == 1 })
}
