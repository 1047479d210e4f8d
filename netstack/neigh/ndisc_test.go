package neigh

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

var (
	our6   = netip.MustParseAddr("fd00::1")
	peer6  = netip.MustParseAddr("fd00::2")
	ourLL  = netip.MustParseAddr("fe80::1")
	peerLL = netip.MustParseAddr("fe80::2")
	off6   = netip.MustParseAddr("2001:db8::77") // an off-link address, proxied
)

// setup6 is setup with IPv6 too: fd00::1/64 and fe80::1/64 on eth0.
func setup6(t *testing.T, cfg Config) *env {
	t.Helper()
	e := setup(t, cfg)
	for _, p := range []string{"fd00::1/64", "fe80::1/64"} {
		if err := e.nic.AddAddress(netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	e.ep.take() // the gratuitous ARP and the unsolicited NAs
	return e
}

// ip6Packet is an IPv6 packet from src to dst carrying one byte, id.
func ip6Packet(src, dst netip.Addr, id byte) *buf.SKB {
	s := buf.Alloc(buf.MaxHeadroom, header.IPv6MinSize+1)
	b := s.Put(header.IPv6MinSize + 1)
	header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: 1, NextHeader: header.ProtoUDP, HopLimit: 64, Src: src, Dst: dst})
	b[header.IPv6MinSize] = id
	s.SetNetworkHeader()
	s.Protocol = uint16(header.EtherTypeIPv6)
	return s
}

// ndpIn delivers an NDP message from (srcMAC, src) to (ethDst, dst) as
// the ipv6 layer would: MAC and network headers set, bytes at ICMPv6.
func (e *env) ndpIn(srcMAC, ethDst header.MAC, src, dst netip.Addr, hop uint8, msg []byte) {
	e.t.Helper()
	b := make([]byte, header.EthernetMinSize+header.IPv6MinSize+len(msg))
	header.Ethernet(b).Encode(header.EthernetFields{Dst: ethDst, Src: srcMAC, Type: header.EtherTypeIPv6})
	ip := b[header.EthernetMinSize:]
	header.IPv6(ip).Encode(header.IPv6Fields{PayloadLen: uint16(len(msg)), NextHeader: header.ProtoICMPv6, HopLimit: hop, Src: src, Dst: dst})
	copy(ip[header.IPv6MinSize:], msg)
	header.ICMPv6(ip[header.IPv6MinSize:]).SetChecksum(src, dst)
	s := buf.FromBytes(0, b)
	s.InNIC = e.nic.ID()
	s.Drops = e.nic.Drops()
	s.SetMACHeader()
	s.Pull(header.EthernetMinSize)
	s.SetNetworkHeader()
	s.Protocol = uint16(header.EtherTypeIPv6)
	s.Pull(header.IPv6MinSize)
	s.SetTransportHeader()
	e.tbl.RcvNDP(e.nic, s)
}

func nsMsg(target netip.Addr, sll header.MAC) []byte {
	f := header.NDPNeighborSolicitFields{Target: target, Options: header.NDPOptionFields{SourceLinkAddr: sll}}
	m := make([]byte, f.Len())
	header.NDPNeighborSolicit(m).Encode(&f)
	return m
}

func naMsg(solicited, override bool, target netip.Addr, tll header.MAC) []byte {
	f := header.NDPNeighborAdvertFields{Solicited: solicited, Override: override, Target: target,
		Options: header.NDPOptionFields{TargetLinkAddr: tll}}
	m := make([]byte, f.Len())
	header.NDPNeighborAdvert(m).Encode(&f)
	return m
}

// sent6 is one transmitted IPv6 frame, decoded.
type sent6 struct {
	eth  header.Ethernet
	ip   header.IPv6
	icmp header.ICMPv6 // nil unless ICMPv6
	id   byte          // the payload byte of an ip6Packet
}

func (e *env) sent6() []sent6 {
	e.t.Helper()
	var out []sent6
	for _, b := range e.ep.take() {
		eth, err := header.CheckEthernet(b)
		if err != nil || eth.Type() != header.EtherTypeIPv6 {
			e.t.Fatalf("sent a non-IPv6 frame %x", b)
		}
		ip, err := header.CheckIPv6(eth.Payload())
		if err != nil {
			e.t.Fatalf("sent bad IPv6: %v", err)
		}
		f := sent6{eth: eth, ip: ip}
		if ip.NextHeader() == header.ProtoICMPv6 {
			f.icmp = header.ICMPv6(ip.Payload())
			if !f.icmp.ChecksumValid(ip.Src(), ip.Dst()) {
				e.t.Fatalf("sent ICMPv6 with a bad checksum")
			}
			if ip.HopLimit() != 255 {
				e.t.Fatalf("RFC 4861: NDP hop limit %d", ip.HopLimit())
			}
		} else {
			f.id = ip.Payload()[0]
		}
		out = append(out, f)
	}
	return out
}

// mustBeNS checks an NS for target, to dst at MAC l2, from src, with our
// link-layer address.
func (e *env) mustBeNS(f sent6, l2 header.MAC, src, dst, target netip.Addr) {
	e.t.Helper()
	ns, err := header.CheckNDPNeighborSolicit(f.icmp)
	if err != nil || f.icmp.Type() != header.ICMPv6NeighborSolicit || f.eth.Dst() != l2 || f.ip.Src() != src ||
		f.ip.Dst() != dst || ns.Target() != target {
		e.t.Fatalf("want NS for %v from %v to %v (%v), got %v → %v (%v) % x", target, src, dst, l2,
			f.ip.Src(), f.ip.Dst(), f.eth.Dst(), []byte(f.icmp))
	}
	if sll, ok := ns.Options().SourceLinkAddr(); !ok || sll != ourMAC {
		e.t.Fatalf("NS without our SLLAO")
	}
}

// mustBeNA checks an NA for target to dst at l2 from src with the flags.
func (e *env) mustBeNA(f sent6, l2 header.MAC, src, dst, target netip.Addr, solicited, override bool) {
	e.t.Helper()
	na, err := header.CheckNDPNeighborAdvert(f.icmp)
	if err != nil || f.icmp.Type() != header.ICMPv6NeighborAdvert || f.eth.Dst() != l2 || f.ip.Src() != src ||
		f.ip.Dst() != dst || na.Target() != target || na.Solicited() != solicited || na.Override() != override {
		e.t.Fatalf("want NA for %v from %v to %v (%v) S=%v O=%v, got %v → %v (%v) target %v S=%v O=%v",
			target, src, dst, l2, solicited, override, f.ip.Src(), f.ip.Dst(), f.eth.Dst(), na.Target(), na.Solicited(), na.Override())
	}
	if tll, ok := na.Options().TargetLinkAddr(); !ok || tll != ourMAC {
		e.t.Fatal("NA without our TLLAO")
	}
}

// RFC 4861 §7.2.2: resolution multicasts an NS to the target's
// solicited-node group (RFC 4291 §2.7.1) at its mapped MAC (RFC 2464 §7);
// §7.2.5: a solicited NA makes the entry REACHABLE and the queue flows.
func TestNDPResolution(t *testing.T) {
	e := setup6(t, Config{})
	for id := byte(1); id <= 2; id++ {
		e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, id))
	}
	sent := e.sent6()
	if len(sent) != 1 {
		t.Fatalf("want one NS, sent %d", len(sent))
	}
	sn := header.SolicitedNodeAddr(peer6)
	e.mustBeNS(sent[0], header.MAC{0x33, 0x33, 0xff, 0, 0, 2}, our6, sn, peer6)
	if e.state(peer6) != Incomplete {
		t.Fatal("not INCOMPLETE")
	}
	e.ndpIn(peerMAC, ourMAC, peer6, our6, 255, naMsg(true, true, peer6, peerMAC))
	if e.state(peer6) != Reachable {
		t.Fatalf("state %v", e.state(peer6))
	}
	sent = e.sent6()
	if len(sent) != 2 || sent[0].id != 1 || sent[1].id != 2 || sent[0].eth.Dst() != peerMAC {
		t.Fatalf("queued packets: %+v", sent)
	}
	if st := e.tbl.Stats(); st.NDPOutSolicits != 1 || st.NDPInAdverts != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// RFC 4861 §7.3.3 for IPv6: REACHABLE ages to STALE, a packet moves it
// to DELAY, no confirmation within DELAY_FIRST_PROBE_TIME moves it to
// PROBE with unicast solicitations, MAX_UNICAST_SOLICIT unanswered ones
// to FAILED, and the failure handler hears of the packets.
func TestNDPNUDTransitions(t *testing.T) {
	e := setup6(t, Config{BaseReachable: 10 * time.Second})
	var failed []byte
	e.tbl.SetFailureHandler6(func(s *buf.SKB) { failed = append(failed, s.Bytes()[header.IPv6MinSize]) })
	e.tbl.SetFailureHandler(func(*buf.SKB) { t.Fatal("the IPv4 failure handler heard of an IPv6 packet") })
	e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 1))
	e.ndpIn(peerMAC, ourMAC, peer6, our6, 255, naMsg(true, true, peer6, peerMAC))
	e.sent6()
	e.clk.Advance(15 * time.Second) // ReachableTime is in [5 s, 15 s)
	if e.state(peer6) != Stale {
		t.Fatalf("after ReachableTime: %v", e.state(peer6))
	}
	e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 2))
	if e.state(peer6) != Delay {
		t.Fatalf("after output from STALE: %v", e.state(peer6))
	}
	if s := e.sent6(); len(s) != 1 || s[0].id != 2 || s[0].eth.Dst() != peerMAC {
		t.Fatal("STALE sends with the cached address")
	}
	e.clk.Advance(5 * time.Second)
	if e.state(peer6) != Probe {
		t.Fatalf("after DELAY_FIRST_PROBE_TIME: %v", e.state(peer6))
	}
	s := e.sent6()
	if len(s) != 1 {
		t.Fatalf("want one unicast probe, got %d", len(s))
	}
	e.mustBeNS(s[0], peerMAC, ourLL, peer6, peer6) // no packet waits: the link-local source
	// A probe answered: REACHABLE again.
	e.ndpIn(peerMAC, ourMAC, peer6, our6, 255, naMsg(true, false, peer6, peerMAC))
	if e.state(peer6) != Reachable {
		t.Fatalf("after a solicited NA in PROBE: %v", e.state(peer6))
	}
	// Age out again and let the probes go unanswered.
	e.clk.Advance(15 * time.Second)
	e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 3))
	e.clk.Advance(5 * time.Second)
	for range 3 {
		e.clk.Advance(time.Second)
	}
	if e.state(peer6) != Failed {
		t.Fatalf("after MAX_UNICAST_SOLICIT probes: %v", e.state(peer6))
	}
	// FAILED restarts resolution on the next packet, which then fails too.
	e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 4))
	for range 4 {
		e.clk.Advance(time.Second)
	}
	if len(failed) != 1 || failed[0] != 4 {
		t.Fatalf("failure handler heard of %v", failed)
	}
	if st := e.tbl.Stats(); st.ResolutionFailures != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// RFC 4861 §7.2.5's table, entry by entry.
func TestNDPAdvertisementRules(t *testing.T) {
	reach := func(e *env) {
		e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 1))
		e.ndpIn(peerMAC, ourMAC, peer6, our6, 255, naMsg(true, true, peer6, peerMAC))
		e.sent6()
	}
	tests := []struct {
		name      string
		prep      func(*env)
		na        []byte
		dst       netip.Addr
		wantState State
		wantMAC   header.MAC
		exists    bool
	}{
		{"no entry: silently discarded", func(*env) {}, naMsg(false, true, peer6, peerMAC), our6, 0, header.MAC{}, false},
		{"INCOMPLETE + unsolicited → STALE", func(e *env) { e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 1)) },
			naMsg(false, true, peer6, peerMAC), our6, Stale, peerMAC, true},
		{"INCOMPLETE without TLLAO: nothing to record", func(e *env) { e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 1)) },
			naMsg(true, true, peer6, header.MAC{}), our6, Incomplete, header.MAC{}, true},
		{"REACHABLE, O clear, other address → STALE, address kept", reach,
			naMsg(true, false, peer6, peer2MAC), our6, Stale, peerMAC, true},
		{"REACHABLE, O set, other address, unsolicited → STALE with it", reach,
			naMsg(false, true, peer6, peer2MAC), header.IPv6AllNodes, Stale, peer2MAC, true},
		{"REACHABLE, same address, unsolicited: unchanged", reach,
			naMsg(false, false, peer6, peerMAC), our6, Reachable, peerMAC, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup6(t, Config{})
			tc.prep(e)
			e.sent6()
			l2 := ourMAC
			if tc.dst.IsMulticast() {
				l2 = header.IPv6MulticastMAC(tc.dst)
			}
			e.ndpIn(peerMAC, l2, peer6, tc.dst, 255, tc.na)
			en, ok := e.tbl.Lookup(e.nic.ID(), peer6)
			if ok != tc.exists {
				t.Fatalf("entry exists=%v", ok)
			}
			if ok && (en.State != tc.wantState || (tc.wantState != Incomplete && en.MAC != tc.wantMAC)) {
				t.Fatalf("entry %+v, want %v %v", en, tc.wantState, tc.wantMAC)
			}
		})
	}
}

// RFC 4861 §7.2.3/§7.2.4: an NS for our address is answered with a
// solicited NA, Override set, from the target, at the solicitor's
// link-layer address, and the solicitor is learnt STALE.
func TestNDPSolicitationForOurAddress(t *testing.T) {
	e := setup6(t, Config{})
	e.ndpIn(peerMAC, header.IPv6MulticastMAC(header.SolicitedNodeAddr(our6)), peer6, header.SolicitedNodeAddr(our6), 255, nsMsg(our6, peerMAC))
	s := e.sent6()
	if len(s) != 1 {
		t.Fatalf("want one NA, sent %d", len(s))
	}
	e.mustBeNA(s[0], peerMAC, our6, peer6, our6, true, true)
	if en, ok := e.tbl.Lookup(e.nic.ID(), peer6); !ok || en.State != Stale || en.MAC != peerMAC {
		t.Fatalf("solicitor not learnt: %+v", en)
	}
	na, _ := header.CheckNDPNeighborAdvert(s[0].icmp)
	if na.Router() {
		t.Fatal("Router flag set while not routing")
	}
	e.tbl.SetRouter(true)
	// A unicast NUD probe without SLLAO is answered at the frame's source.
	e.ndpIn(peer2MAC, ourMAC, peerLL, ourLL, 255, nsMsg(ourLL, header.MAC{}))
	s = e.sent6()
	if len(s) != 1 {
		t.Fatalf("want one NA, sent %d", len(s))
	}
	e.mustBeNA(s[0], peer2MAC, ourLL, peerLL, ourLL, true, true)
	if na, _ := header.CheckNDPNeighborAdvert(s[0].icmp); !na.Router() {
		t.Fatal("Router flag clear while routing (RFC 4861 §4.4)")
	}
}

// The pod-link rule: the stack answers NS for every address but the
// pod's own (as proxy ARP does), with Override clear (RFC 4861 §7.2.8),
// never for link-local targets, never to a DAD probe.
func TestNDPProxyAnswersAllButThePod(t *testing.T) {
	pod := peer6
	tests := []struct {
		name   string
		src    netip.Addr
		target netip.Addr
		sll    header.MAC
		answer bool
		from   netip.Addr
		over   bool
	}{
		{"the gateway (ours)", pod, our6, peerMAC, true, our6, true},
		{"an off-link address", pod, off6, peerMAC, true, ourLL, false},
		{"another address on the subnet", pod, netip.MustParseAddr("fd00::77"), peerMAC, true, ourLL, false},
		{"the pod's own address", netip.MustParseAddr("fd00::99"), pod, peer2MAC, false, netip.Addr{}, false},
		{"a link-local address not ours", pod, netip.MustParseAddr("fe80::77"), peerMAC, false, netip.Addr{}, false},
		{"RFC 4862 §5.4: a DAD probe for an off-link address", netip.IPv6Unspecified(), off6, header.MAC{}, false, netip.Addr{}, false},
		{"RFC 4862 §5.4: a DAD probe for the pod's address", netip.IPv6Unspecified(), pod, header.MAC{}, false, netip.Addr{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup6(t, Config{})
			e.tbl.SetProxy(e.nic.ID(), func(a netip.Addr) bool { return a != pod })
			sn := header.SolicitedNodeAddr(tc.target)
			e.ndpIn(peerMAC, header.IPv6MulticastMAC(sn), tc.src, sn, 255, nsMsg(tc.target, tc.sll))
			s := e.sent6()
			if !tc.answer {
				if len(s) != 0 {
					t.Fatalf("answered: %v", s[0].ip.Dst())
				}
				return
			}
			if len(s) != 1 {
				t.Fatalf("want one NA, sent %d", len(s))
			}
			e.mustBeNA(s[0], tc.sll, tc.from, tc.src, tc.target, true, tc.over)
		})
	}
}

// RFC 4862 §5.4.3: a DAD probe for our own address is answered to all
// nodes with S clear; §5.4.4: an NA claiming it is a conflict. RFC 4861
// §7.1.1: a DAD probe with a source link-layer option is invalid.
func TestNDPDuplicateAddressDetection(t *testing.T) {
	e := setup6(t, Config{})
	sn := header.SolicitedNodeAddr(our6)
	e.ndpIn(peerMAC, header.IPv6MulticastMAC(sn), netip.IPv6Unspecified(), sn, 255, nsMsg(our6, header.MAC{}))
	s := e.sent6()
	if len(s) != 1 {
		t.Fatalf("want one NA, sent %d", len(s))
	}
	e.mustBeNA(s[0], header.IPv6MulticastMAC(header.IPv6AllNodes), our6, header.IPv6AllNodes, our6, false, true)
	if _, ok := e.tbl.Lookup(e.nic.ID(), netip.IPv6Unspecified()); ok {
		t.Fatal("learnt ::")
	}
	e.ndpIn(peerMAC, header.IPv6MulticastMAC(sn), netip.IPv6Unspecified(), sn, 255, nsMsg(our6, peerMAC))
	e.ndpIn(peerMAC, header.IPv6MulticastMAC(header.IPv6AllNodes), peer6, header.IPv6AllNodes, 255, naMsg(false, true, our6, peerMAC))
	if st := e.tbl.Stats(); st.DADReplies != 1 || st.DADConflicts != 1 || st.NDPInErrors != 1 {
		t.Fatalf("stats %+v", st)
	}
	if len(e.sent6()) != 0 {
		t.Fatal("answered an invalid probe")
	}
}

// RFC 4861 §7.1: messages failing validation are dropped and counted.
func TestNDPValidation(t *testing.T) {
	e := setup6(t, Config{})
	sn := header.SolicitedNodeAddr(our6)
	badCode := nsMsg(our6, peerMAC)
	badCode[1] = 1
	multicastTarget := nsMsg(header.IPv6AllNodes, peerMAC)
	for _, tc := range []struct {
		name string
		src  netip.Addr
		dst  netip.Addr
		hop  uint8
		msg  []byte
		why  buf.DropReason
	}{
		{"hop limit 254 (crossed a router)", peer6, sn, 254, nsMsg(our6, peerMAC), DropNDPHopLimit},
		{"code 1", peer6, sn, 255, badCode, DropNDPBadCode},
		{"multicast target", peer6, sn, 255, multicastTarget, DropNDPInvalid},
		{"unspecified target", peer6, sn, 255, nsMsg(netip.IPv6Unspecified(), peerMAC), DropNDPInvalid},
		{"zero-length option", peer6, sn, 255, append(nsMsg(our6, header.MAC{}), 1, 0, 0, 0, 0, 0, 0, 0), DropNDPInvalid},
		{"solicited NA to a multicast address", peer6, header.IPv6AllNodes, 255, naMsg(true, true, peer6, peerMAC), DropNDPInvalid},
	} {
		before := e.nic.Drops().Get(tc.why)
		e.ndpIn(peerMAC, header.IPv6MulticastMAC(tc.dst), tc.src, tc.dst, tc.hop, tc.msg)
		if e.nic.Drops().Get(tc.why) != before+1 {
			t.Errorf("%s: not dropped as %v", tc.name, tc.why)
		}
	}
	if len(e.sent6()) != 0 {
		t.Fatal("answered an invalid message")
	}
	if st := e.tbl.Stats(); st.NDPInErrors != 6 {
		t.Fatalf("NDPInErrors %d", st.NDPInErrors)
	}
}

// Multicast next hops map to 33:33:xx:xx:xx:xx (RFC 2464 §7) without
// resolution; a new IPv6 address is announced with one unsolicited NA.
func TestNDPMulticastAndAnnounce(t *testing.T) {
	e := setup(t, Config{})
	e.ep.take()
	if err := e.nic.AddAddress(netip.MustParsePrefix("fd00::1/64")); err != nil {
		t.Fatal(err)
	}
	s := e.sent6()
	if len(s) != 1 {
		t.Fatalf("want one unsolicited NA, sent %d", len(s))
	}
	e.mustBeNA(s[0], header.IPv6MulticastMAC(header.IPv6AllNodes), our6, header.IPv6AllNodes, our6, false, true)
	g := netip.MustParseAddr("ff02::1:ff00:2")
	e.tbl.Output(e.nic, g, ip6Packet(our6, g, 9))
	s = e.sent6()
	if len(s) != 1 || s[0].eth.Dst() != (header.MAC{0x33, 0x33, 0xff, 0, 0, 2}) || s[0].id != 9 {
		t.Fatalf("multicast output: %+v", s)
	}
	if len(e.tbl.Entries()) != 0 {
		t.Fatal("multicast created an entry")
	}
	if err := e.tbl.AddStatic(e.nic.ID(), peer6, peerMAC); err != nil {
		t.Fatal(err)
	}
	e.tbl.Output(e.nic, peer6, ip6Packet(our6, peer6, 3))
	if s = e.sent6(); len(s) != 1 || s[0].eth.Dst() != peerMAC || s[0].eth.Type() != header.EtherTypeIPv6 {
		t.Fatal("static IPv6 neighbour")
	}
	if err := e.tbl.AddStatic(e.nic.ID(), netip.MustParseAddr("::ffff:10.0.0.2"), peerMAC); err == nil {
		t.Fatal("IPv4-mapped neighbour accepted")
	}
}
