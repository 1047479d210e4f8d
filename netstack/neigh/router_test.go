package neigh

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

func raCfg() *RouterAdvertConfig {
	return &RouterAdvertConfig{
		LinkMTU: 1500,
		Prefixes: []header.NDPPrefixInfo{{Prefix: netip.MustParsePrefix("fd00::/64"), OnLink: true, Autonomous: false,
			ValidLifetime: 86400, PreferredLifetime: 14400}},
		RDNSS: []netip.Addr{our6},
	}
}

// ras returns the Router Advertisements sent since the last call,
// checking RFC 4861 §4.2's addressing on each.
func (e *env) ras() []header.NDPRouterAdvert {
	e.t.Helper()
	var out []header.NDPRouterAdvert
	for _, f := range e.sent6() {
		if f.icmp == nil || f.icmp.Type() != header.ICMPv6RouterAdvert {
			e.t.Fatalf("sent something else: % x", []byte(f.ip))
		}
		if f.ip.Src() != ourLL || f.ip.Dst() != header.IPv6AllNodes || f.eth.Dst() != header.IPv6MulticastMAC(header.IPv6AllNodes) {
			e.t.Fatalf("RA %v → %v (%v)", f.ip.Src(), f.ip.Dst(), f.eth.Dst())
		}
		ra, err := header.CheckNDPRouterAdvert(f.icmp)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, ra)
	}
	return out
}

// RFC 4861 §6.2.4: an advertising interface sends at once, then at most
// MAX_INITIAL_RTR_ADVERT_INTERVAL apart for the first three, carrying the
// configured options.
func TestRouterAdvertisements(t *testing.T) {
	e := setup6(t, Config{})
	if err := e.tbl.SetRouterAdvert(e.nic.ID(), raCfg()); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(0)
	ras := e.ras()
	if len(ras) != 1 {
		t.Fatalf("want one RA at once, got %d", len(ras))
	}
	f := ras[0].Fields()
	if f.CurHopLimit != 64 || f.RouterLifetime != 1800 || f.Options.MTU != 1500 || f.Options.SourceLinkAddr != ourMAC ||
		len(f.Options.Prefixes) != 1 || f.Options.Prefixes[0].Prefix != netip.MustParsePrefix("fd00::/64") ||
		len(f.Options.RDNSS) != 1 || f.Options.RDNSS[0] != our6 || f.Options.RDNSSLifetime != 1800 {
		t.Fatalf("RA fields %+v", f)
	}
	for i := 0; i < 2; i++ {
		e.clk.Advance(maxInitialRtrAdvertInterval)
		if n := len(e.ras()); n != 1 {
			t.Fatalf("initial RA %d: %d sent", i+2, n)
		}
	}
	// After the initial ones: [MinInterval, MaxInterval] = [198 s, 600 s].
	e.clk.Advance(197 * time.Second)
	if n := len(e.ras()); n != 0 {
		t.Fatalf("RA sooner than MinRtrAdvInterval: %d", n)
	}
	// By MaxRtrAdvInterval after the third, at least one more (two if
	// both intervals drew below 300 s).
	e.clk.Advance(403 * time.Second)
	n := len(e.ras())
	if n < 1 || n > 2 {
		t.Fatalf("%d RAs within MaxRtrAdvInterval", n)
	}
	if st := e.tbl.Stats(); st.NDPOutRouterAdverts != uint64(3+n) {
		t.Fatalf("stats %+v", st)
	}
	// §6.2.5: ceasing sends a final advertisement with lifetime 0.
	if err := e.tbl.SetRouterAdvert(e.nic.ID(), nil); err != nil {
		t.Fatal(err)
	}
	ras = e.ras()
	if len(ras) != 1 || ras[0].RouterLifetime() != 0 {
		t.Fatalf("final RA: %d", len(ras))
	}
	e.clk.Advance(time.Hour)
	if n := len(e.ras()); n != 0 {
		t.Fatalf("RAs after stopping: %d", n)
	}
}

// RFC 4861 §6.2.6: a solicitation is answered within MAX_RA_DELAY_TIME,
// but no sooner than MIN_DELAY_BETWEEN_RAS after the last advertisement;
// its source link-layer address is learnt. Without a config (the
// default) nothing answers.
func TestRouterSolicitation(t *testing.T) {
	e := setup6(t, Config{})
	e.ndpIn(peerMAC, header.IPv6MulticastMAC(header.IPv6AllRouters), peerLL, header.IPv6AllRouters, 255, rsMsg(peerMAC))
	e.clk.Advance(time.Second)
	if n := len(e.sent6()); n != 0 {
		t.Fatalf("RA sent without SetRouterAdvert: %d", n)
	}
	if err := e.tbl.SetRouterAdvert(e.nic.ID(), raCfg()); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(0)
	e.ras() // the first unsolicited one, at T
	e.clk.Advance(time.Second)
	e.ndpIn(peer2MAC, header.IPv6MulticastMAC(header.IPv6AllRouters), netip.MustParseAddr("fe80::3"), header.IPv6AllRouters, 255, rsMsg(peer2MAC))
	e.clk.Advance(1999 * time.Millisecond)
	if n := len(e.ras()); n != 0 {
		t.Fatalf("RA within MIN_DELAY_BETWEEN_RAS: %d", n)
	}
	e.clk.Advance(time.Millisecond)
	if n := len(e.ras()); n != 1 {
		t.Fatalf("solicited RA at T+3s: %d", n)
	}
	// Long after: answered within MAX_RA_DELAY_TIME.
	e.clk.Advance(10 * time.Second)
	e.ras()
	e.ndpIn(peer2MAC, header.IPv6MulticastMAC(header.IPv6AllRouters), netip.MustParseAddr("fe80::3"), header.IPv6AllRouters, 255, rsMsg(header.MAC{}))
	e.clk.Advance(maxRADelayTime)
	if n := len(e.ras()); n != 1 {
		t.Fatalf("solicited RA within 500 ms: %d", n)
	}
	if en, ok := e.tbl.Lookup(e.nic.ID(), netip.MustParseAddr("fe80::3")); !ok || en.MAC != peer2MAC || en.State != Stale {
		t.Fatalf("solicitor not learnt: %+v %v", en, ok)
	}
	// §6.1.1: from :: with a source link-layer option is invalid.
	e.ndpIn(peer2MAC, header.IPv6MulticastMAC(header.IPv6AllRouters), netip.IPv6Unspecified(), header.IPv6AllRouters, 255, rsMsg(peer2MAC))
	if st := e.tbl.Stats(); st.NDPInRouterSolicits != 3 || st.NDPInErrors != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A router ignores others' advertisements and redirects (RFC 4861
// §6.2.7, §8.2) but counts them.
func TestRouterIgnoresRAAndRedirect(t *testing.T) {
	e := setup6(t, Config{})
	ra := make([]byte, header.NDPRouterAdvertSize)
	header.NDPRouterAdvert(ra).Encode(&header.NDPRouterAdvertFields{CurHopLimit: 1, RouterLifetime: 9000})
	e.ndpIn(peerMAC, header.IPv6MulticastMAC(header.IPv6AllNodes), peerLL, header.IPv6AllNodes, 255, ra)
	rd := make([]byte, header.NDPRedirectSize)
	header.ICMPv6(rd).Encode(header.ICMPv6Fields{Type: header.ICMPv6Redirect})
	e.ndpIn(peerMAC, ourMAC, peerLL, ourLL, 255, rd)
	// RFC 4861 §6.1.2: an RA from a global address is invalid.
	e.ndpIn(peerMAC, header.IPv6MulticastMAC(header.IPv6AllNodes), peer6, header.IPv6AllNodes, 255, ra)
	st := e.tbl.Stats()
	if st.NDPInRouterAdverts != 1 || st.NDPInRedirects != 1 || st.NDPInErrors != 1 || e.nic.Drops().Get(DropNDPIgnored) != 2 {
		t.Fatalf("stats %+v", st)
	}
	if len(e.sent6()) != 0 {
		t.Fatal("a router answered an RA or a redirect")
	}
}

func TestRouterAdvertConfigRanges(t *testing.T) {
	e := setup6(t, Config{})
	for _, c := range []RouterAdvertConfig{
		{MaxInterval: time.Second},
		{MaxInterval: time.Hour},
		{MaxInterval: 100 * time.Second, MinInterval: 90 * time.Second},
		{DefaultLifetime: 3 * time.Hour},
		{Prefixes: []header.NDPPrefixInfo{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}},
		{RDNSS: []netip.Addr{header.IPv6AllNodes}},
	} {
		if err := e.tbl.SetRouterAdvert(e.nic.ID(), &c); !errors.Is(err, ErrBadRouterAdvert) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	if err := e.tbl.SetRouterAdvert(99, raCfg()); err == nil {
		t.Fatal("unknown NIC accepted")
	}
}

func rsMsg(sll header.MAC) []byte {
	m := make([]byte, header.NDPRouterSolicitSize)
	header.ICMPv6(m).Encode(header.ICMPv6Fields{Type: header.ICMPv6RouterSolicit})
	if !sll.IsZero() {
		m = append(m, header.NDPOptSourceLinkAddr, 1)
		m = append(m, sll[:]...)
	}
	return m
}
