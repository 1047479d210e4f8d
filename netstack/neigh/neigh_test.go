package neigh

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// fakeEP is an in-memory link.Endpoint recording what the NIC writes;
// nothing is ever read from it.
type fakeEP struct {
	closed    chan struct{}
	closeOnce sync.Once
	discard   bool // benchmarks: consume without recording
	mu        sync.Mutex
	tx        [][]byte
}

func (f *fakeEP) ReadBatch([]*buf.SKB) (int, error) {
	<-f.closed
	return 0, link.ErrClosed
}

func (f *fakeEP) WriteBatch(pkts []*buf.SKB) (int, error) {
	f.mu.Lock()
	for _, s := range pkts {
		if !f.discard {
			f.tx = append(f.tx, append([]byte(nil), s.Bytes()...))
		}
		s.Consume()
	}
	f.mu.Unlock()
	return len(pkts), nil
}

func (f *fakeEP) MTU() int        { return 1500 }
func (f *fakeEP) Caps() link.Caps { return 0 }
func (f *fakeEP) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return nil
}

// take returns and forgets the frames written so far.
func (f *fakeEP) take() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.tx
	f.tx = nil
	return out
}

var (
	ourMAC   = header.MAC{0x02, 0, 0, 0, 0, 1}
	peerMAC  = header.MAC{0x02, 0, 0, 0, 0, 2}
	peer2MAC = header.MAC{0x02, 0, 0, 0, 0, 3}
	ourIP    = netip.MustParseAddr("10.0.0.1")
	peerIP   = netip.MustParseAddr("10.0.0.2")
	peer2IP  = netip.MustParseAddr("10.0.0.3")
)

type env struct {
	t    *testing.T
	clk  *clock.Manual
	devs *dev.Devices
	tbl  *Table
	nic  *dev.NIC
	ep   *fakeEP
}

// setup builds a table over one NIC (eth0, 10.0.0.1/24, up) on a manual
// clock.
func setup(t *testing.T, cfg Config) *env {
	t.Helper()
	clk := clock.NewManual()
	devs := dev.NewDevices(clk)
	ep := &fakeEP{closed: make(chan struct{})}
	nic, err := devs.Add(ep, dev.Config{Name: "eth0", MAC: ourMAC})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devs.Remove(nic.ID()) })
	tbl := New(clk, devs, cfg)
	if err := nic.AddAddress(netip.MustParsePrefix("10.0.0.1/24")); err != nil {
		t.Fatal(err)
	}
	nic.Up()
	return &env{t: t, clk: clk, devs: devs, tbl: tbl, nic: nic, ep: ep}
}

// ipPacket is an IPv4 packet from src to dst carrying one byte, id.
func ipPacket(src, dst netip.Addr, id byte) *buf.SKB {
	s := buf.Alloc(buf.MaxHeadroom, header.IPv4MinSize+1)
	b := s.Put(header.IPv4MinSize + 1)
	header.IPv4(b).Encode(header.IPv4Fields{TotalLen: header.IPv4MinSize + 1, TTL: 64, Protocol: header.ProtoUDP, Src: src, Dst: dst})
	b[header.IPv4MinSize] = id
	s.SetNetworkHeader()
	return s
}

// arpIn delivers an ARP packet to the table as dev's receive path would.
func (e *env) arpIn(ethDst header.MAC, f header.ARPFields) {
	b := make([]byte, header.EthernetMinSize+header.ARPSize)
	header.Ethernet(b).Encode(header.EthernetFields{Dst: ethDst, Src: f.SenderMAC, Type: header.EtherTypeARP})
	header.ARP(b[header.EthernetMinSize:]).Encode(f)
	e.rawIn(b)
}

func (e *env) rawIn(frame []byte) {
	s := buf.FromBytes(0, frame)
	s.InNIC = e.nic.ID()
	s.Drops = e.nic.Drops()
	s.SetMACHeader()
	s.Pull(min(header.EthernetMinSize, s.Len()))
	s.SetNetworkHeader()
	s.Protocol = uint16(header.EtherTypeARP)
	e.tbl.Rcv(e.nic, s)
}

func arpReq(sha header.MAC, sip, tip netip.Addr) header.ARPFields {
	return header.ARPFields{Op: header.ARPRequest, SenderMAC: sha, SenderIP: sip, TargetIP: tip}
}

func reply(sha header.MAC, sip netip.Addr) header.ARPFields {
	return header.ARPFields{Op: header.ARPReply, SenderMAC: sha, SenderIP: sip, TargetMAC: ourMAC, TargetIP: ourIP}
}

// sentFrame is one transmitted frame, decoded.
type sentFrame struct {
	eth header.Ethernet
	arp header.ARP // nil unless ARP
	id  byte       // the payload byte of an IPv4 packet built by ipPacket
}

func (e *env) sent() []sentFrame {
	e.t.Helper()
	var out []sentFrame
	for _, b := range e.ep.take() {
		eth, err := header.CheckEthernet(b)
		if err != nil {
			e.t.Fatalf("sent a bad frame %x: %v", b, err)
		}
		if eth.Src() != ourMAC {
			e.t.Fatalf("frame source %v", eth.Src())
		}
		f := sentFrame{eth: eth}
		switch eth.Type() {
		case header.EtherTypeARP:
			if f.arp, err = header.CheckARP(eth.Payload()); err != nil {
				e.t.Fatalf("sent bad ARP: %v", err)
			}
		case header.EtherTypeIPv4:
			f.id = eth.Payload()[header.IPv4MinSize]
		}
		out = append(out, f)
	}
	return out
}

func (e *env) state(addr netip.Addr) State {
	e.t.Helper()
	en, ok := e.tbl.Lookup(e.nic.ID(), addr)
	if !ok {
		e.t.Fatalf("no entry for %v", addr)
	}
	return en.State
}

func (e *env) mustBeRequest(f sentFrame, dst header.MAC, tha header.MAC, sip, tip netip.Addr) {
	e.t.Helper()
	if f.arp == nil || f.arp.Op() != header.ARPRequest || f.eth.Dst() != dst || f.arp.SenderMAC() != ourMAC ||
		f.arp.SenderIP() != sip || f.arp.TargetIP() != tip || f.arp.TargetMAC() != tha {
		e.t.Fatalf("want ARP request who-has %v tell %v to %v, got eth %v arp %x", tip, sip, dst, f.eth.Dst(), []byte(f.arp))
	}
}

func TestARPInput(t *testing.T) {
	zero := netip.IPv4Unspecified()
	other := netip.MustParseAddr("10.0.0.9")
	tests := []struct {
		name      string
		ethDst    header.MAC
		in        header.ARPFields
		replyTo   netip.Addr // invalid: no reply
		replyFor  netip.Addr
		learnt    bool // an entry for in.SenderIP exists afterwards
		wantState State
	}{
		{"RFC 826: request for our address is answered and the sender learnt",
			header.BroadcastMAC, arpReq(peerMAC, peerIP, ourIP), peerIP, ourIP, true, Stale},
		{"request for an address that is not ours is ignored and not learnt",
			header.BroadcastMAC, arpReq(peerMAC, peerIP, other), netip.Addr{}, netip.Addr{}, false, 0},
		{"RFC 5227 §3 announcement (target == sender) is not answered",
			header.BroadcastMAC, arpReq(peerMAC, peerIP, peerIP), netip.Addr{}, netip.Addr{}, false, 0},
		{"RFC 5227 §2.1.1 probe for our address is defended",
			header.BroadcastMAC, arpReq(peerMAC, zero, ourIP), zero, ourIP, false, 0},
		{"probe for another address is ignored",
			header.BroadcastMAC, arpReq(peerMAC, zero, other), netip.Addr{}, netip.Addr{}, false, 0},
		{"unsolicited reply creates no entry",
			ourMAC, reply(peerMAC, peerIP), netip.Addr{}, netip.Addr{}, false, 0},
		{"request claiming our own address as sender is not learnt",
			header.BroadcastMAC, arpReq(peerMAC, ourIP, other), netip.Addr{}, netip.Addr{}, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, Config{})
			e.arpIn(tc.ethDst, tc.in)
			sent := e.sent()
			if !tc.replyTo.IsValid() {
				if len(sent) != 0 {
					t.Fatalf("unexpected transmission %x", []byte(sent[0].eth))
				}
			} else {
				if len(sent) != 1 || sent[0].arp == nil {
					t.Fatalf("want one ARP reply, sent %d", len(sent))
				}
				r := sent[0]
				if r.eth.Dst() != tc.in.SenderMAC || r.arp.Op() != header.ARPReply || r.arp.SenderMAC() != ourMAC ||
					r.arp.SenderIP() != tc.replyFor || r.arp.TargetMAC() != tc.in.SenderMAC || r.arp.TargetIP() != tc.replyTo {
					t.Fatalf("bad reply %x", []byte(r.arp))
				}
			}
			en, ok := e.tbl.Lookup(e.nic.ID(), tc.in.SenderIP)
			if ok != tc.learnt {
				t.Fatalf("entry for %v exists=%v", tc.in.SenderIP, ok)
			}
			if ok && (en.State != tc.wantState || en.MAC != tc.in.SenderMAC) {
				t.Fatalf("entry %+v", en)
			}
			st := e.tbl.Stats()
			if (st.OutReplies == 1) != tc.replyTo.IsValid() || st.InErrors != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestProxyARPAnswersAllButThePod(t *testing.T) {
	pod := netip.MustParseAddr("10.0.0.2")
	tests := []struct {
		name   string
		in     header.ARPFields
		answer bool
	}{
		{"the gateway (our own address)", arpReq(peerMAC, pod, ourIP), true},
		{"another address on the subnet", arpReq(peerMAC, pod, netip.MustParseAddr("10.0.0.77")), true},
		{"an off-link address", arpReq(peerMAC, pod, netip.MustParseAddr("8.8.8.8")), true},
		{"the pod's DAD probe for its own address", arpReq(peerMAC, netip.IPv4Unspecified(), pod), false},
		{"the pod's announcement", arpReq(peerMAC, pod, pod), false},
		{"someone else asking for the pod", arpReq(peer2MAC, peer2IP, pod), false},
		{"another host's announcement, though the policy covers it", arpReq(peer2MAC, peer2IP, peer2IP), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, Config{})
			e.tbl.SetProxy(e.nic.ID(), func(a netip.Addr) bool { return a != pod })
			e.arpIn(header.BroadcastMAC, tc.in)
			sent := e.sent()
			if !tc.answer {
				if len(sent) != 0 {
					t.Fatal("answered a request the policy excludes")
				}
				return
			}
			if len(sent) != 1 || sent[0].arp.Op() != header.ARPReply || sent[0].arp.SenderIP() != tc.in.TargetIP ||
				sent[0].arp.SenderMAC() != ourMAC || sent[0].eth.Dst() != tc.in.SenderMAC {
				t.Fatalf("want a proxy reply for %v, sent %d", tc.in.TargetIP, len(sent))
			}
		})
	}
	e := setup(t, Config{})
	e.tbl.SetProxy(e.nic.ID(), func(netip.Addr) bool { return true })
	e.tbl.SetProxy(e.nic.ID(), nil)
	e.arpIn(header.BroadcastMAC, arpReq(peerMAC, pod, netip.MustParseAddr("10.0.0.77")))
	if len(e.sent()) != 0 {
		t.Fatal("proxy still on after SetProxy(nil)")
	}
}

// RFC 1122 §2.3.2.2: packets wait for resolution and leave in order once
// the reply arrives.
func TestResolutionQueuesThenFlushesInOrder(t *testing.T) {
	e := setup(t, Config{})
	for id := byte(1); id <= 3; id++ {
		e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, netip.MustParseAddr("1.1.1.1"), id))
	}
	sent := e.sent()
	if len(sent) != 1 {
		t.Fatalf("want exactly one ARP request while unresolved, sent %d", len(sent))
	}
	e.mustBeRequest(sent[0], header.BroadcastMAC, header.MAC{}, ourIP, peerIP)
	if s := e.state(peerIP); s != Incomplete {
		t.Fatalf("state %v", s)
	}
	e.arpIn(ourMAC, reply(peerMAC, peerIP))
	sent = e.sent()
	if len(sent) != 3 {
		t.Fatalf("flushed %d packets, want 3", len(sent))
	}
	for i, f := range sent {
		if f.eth.Type() != header.EtherTypeIPv4 || f.eth.Dst() != peerMAC || f.id != byte(i+1) {
			t.Fatalf("packet %d: dst %v type %v id %d", i, f.eth.Dst(), f.eth.Type(), f.id)
		}
	}
	if s := e.state(peerIP); s != Reachable {
		t.Fatalf("after a solicited reply: %v", s)
	}
	e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, peerIP, 9))
	if sent := e.sent(); len(sent) != 1 || sent[0].id != 9 || sent[0].eth.Dst() != peerMAC {
		t.Fatal("resolved entry must send directly")
	}
	if st := e.tbl.Stats(); st.OutRequests != 1 || st.InReplies != 1 || st.QueueDrops != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRequestFromIncompleteNeighbourResolvesIt(t *testing.T) {
	e := setup(t, Config{})
	e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, peerIP, 1))
	e.sent()
	e.arpIn(header.BroadcastMAC, arpReq(peerMAC, peerIP, ourIP))
	sent := e.sent()
	if len(sent) != 2 || sent[0].id != 1 || sent[0].eth.Dst() != peerMAC || sent[1].arp == nil {
		t.Fatalf("want the queued packet then the reply, got %d frames", len(sent))
	}
	if s := e.state(peerIP); s != Stale {
		t.Fatalf("a request is not a reachability confirmation: %v", s)
	}
}

// RFC 1122 §2.3.2.1: retransmit at most MaxProbes times, RetransTime
// apart, then report failure for every queued packet.
func TestResolutionFailure(t *testing.T) {
	e := setup(t, Config{RetransTime: time.Second, MaxProbes: 3})
	var failed []byte
	e.tbl.SetFailureHandler(func(skb *buf.SKB) {
		failed = append(failed, skb.Bytes()[header.IPv4MinSize])
	})
	var drops buf.DropStats
	for id := byte(1); id <= 2; id++ {
		s := ipPacket(ourIP, peerIP, id)
		s.Drops = &drops
		e.tbl.Output(e.nic, peerIP, s)
	}
	for i := 0; i < 3; i++ {
		sent := e.sent()
		if len(sent) != 1 {
			t.Fatalf("probe %d: sent %d frames", i+1, len(sent))
		}
		e.mustBeRequest(sent[0], header.BroadcastMAC, header.MAC{}, ourIP, peerIP)
		if e.state(peerIP) != Incomplete || len(failed) != 0 {
			t.Fatalf("failed early after %d probes", i+1)
		}
		e.clk.Advance(999 * time.Millisecond)
		if len(e.sent()) != 0 {
			t.Fatal("retransmitted before RetransTime")
		}
		e.clk.Advance(time.Millisecond)
	}
	if len(e.sent()) != 0 {
		t.Fatal("more than MaxProbes requests")
	}
	if s := e.state(peerIP); s != Failed {
		t.Fatalf("state %v after MaxProbes", s)
	}
	if string(failed) != "\x01\x02" {
		t.Fatalf("failure handler saw %v", failed)
	}
	if drops.Get(DropNeighFailed) != 2 {
		t.Fatalf("NEIGH_FAILED drops %d", drops.Get(DropNeighFailed))
	}
	if st := e.tbl.Stats(); st.ResolutionFailures != 1 || st.OutRequests != 3 {
		t.Fatalf("stats %+v", st)
	}
	if e.clk.Pending() != 0 {
		t.Fatal("a Failed entry keeps a timer armed")
	}
	// A new packet restarts resolution.
	e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, peerIP, 3))
	if sent := e.sent(); len(sent) != 1 || sent[0].arp == nil || e.state(peerIP) != Incomplete {
		t.Fatal("Output on a Failed entry must restart resolution")
	}
}

// Like Linux's unres_qlen: overflow drops the oldest queued packet.
func TestPendingOverflowDropsOldest(t *testing.T) {
	e := setup(t, Config{MaxPending: 3})
	var drops buf.DropStats
	for id := byte(1); id <= 5; id++ {
		s := ipPacket(ourIP, peerIP, id)
		s.Drops = &drops
		e.tbl.Output(e.nic, peerIP, s)
	}
	if len(e.sent()) != 1 {
		t.Fatal("one request for the whole queue")
	}
	if drops.Get(DropNeighQueueFull) != 2 || e.tbl.Stats().QueueDrops != 2 {
		t.Fatalf("queue drops %d / %+v", drops.Get(DropNeighQueueFull), e.tbl.Stats())
	}
	e.arpIn(ourMAC, reply(peerMAC, peerIP))
	var ids []byte
	for _, f := range e.sent() {
		ids = append(ids, f.id)
	}
	if string(ids) != "\x03\x04\x05" {
		t.Fatalf("flushed %v, want the newest three in order", ids)
	}
}

// Like Linux's unres_qlen_bytes: the byte bound drops the oldest too, and
// by default every fragment of a 64 KiB datagram (45 of 1500 bytes) waits
// for resolution instead of all but the last three being lost.
func TestPendingByteBound(t *testing.T) {
	e := setup(t, Config{MaxPendingBytes: 50})
	var drops buf.DropStats
	for id := byte(1); id <= 4; id++ {
		s := ipPacket(ourIP, peerIP, id) // 21 bytes each: the third overflows
		s.Drops = &drops
		e.tbl.Output(e.nic, peerIP, s)
	}
	if drops.Get(DropNeighQueueFull) == 0 {
		t.Fatal("the byte bound must drop the oldest")
	}

	d := setup(t, Config{})
	for id := byte(1); id <= 45; id++ {
		s := ipPacket(ourIP, peerIP, id)
		s.Put(1400)
		d.tbl.Output(d.nic, peerIP, s)
	}
	d.sent()
	d.arpIn(ourMAC, reply(peerMAC, peerIP))
	if n := len(d.sent()); n != 45 || d.tbl.Stats().QueueDrops != 0 {
		t.Fatalf("flushed %d of 45 fragments, %d queue drops", n, d.tbl.Stats().QueueDrops)
	}
}

// resolve makes peerIP Reachable at peerMAC.
func (e *env) resolve() {
	e.t.Helper()
	e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, peerIP, 0))
	e.arpIn(ourMAC, reply(peerMAC, peerIP))
	e.sent()
	if s := e.state(peerIP); s != Reachable {
		e.t.Fatalf("resolve: %v", s)
	}
}

func TestNUDTransitions(t *testing.T) {
	cfg := Config{BaseReachable: 30 * time.Second, DelayProbe: 5 * time.Second, RetransTime: time.Second, MaxProbes: 3}
	toStale := func(e *env) {
		e.clk.Advance(cfg.BaseReachable / 2)
		if s := e.state(peerIP); s != Reachable {
			e.t.Fatalf("ReachableTime is at least BaseReachable/2: %v", s)
		}
		e.clk.Advance(cfg.BaseReachable)
		if s := e.state(peerIP); s != Stale {
			e.t.Fatalf("ReachableTime is below 1.5 x BaseReachable: %v", s)
		}
		if len(e.sent()) != 0 {
			e.t.Fatal("aging to Stale sends nothing")
		}
	}
	toDelay := func(e *env) {
		e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, peerIP, 7))
		if sent := e.sent(); len(sent) != 1 || sent[0].id != 7 || sent[0].eth.Dst() != peerMAC {
			e.t.Fatal("Stale must send with the cached address")
		}
		if s := e.state(peerIP); s != Delay {
			e.t.Fatalf("use of a Stale entry: %v", s)
		}
	}
	toProbe := func(e *env) {
		e.clk.Advance(cfg.DelayProbe)
		if s := e.state(peerIP); s != Probe {
			e.t.Fatalf("after DelayProbe: %v", s)
		}
		sent := e.sent()
		if len(sent) != 1 {
			e.t.Fatalf("Probe sent %d frames", len(sent))
		}
		// RFC 1122 §2.3.2.1: probe with a unicast request.
		e.mustBeRequest(sent[0], peerMAC, peerMAC, ourIP, peerIP)
	}
	tests := []struct {
		name string
		run  func(e *env)
	}{
		{"Reachable -> Stale -> Delay -> Probe -> Reachable on reply", func(e *env) {
			toStale(e)
			toDelay(e)
			toProbe(e)
			e.arpIn(ourMAC, reply(peerMAC, peerIP))
			if s := e.state(peerIP); s != Reachable {
				e.t.Fatalf("reply in Probe: %v", s)
			}
		}},
		{"Probe -> Failed after MaxProbes unicast probes", func(e *env) {
			toStale(e)
			toDelay(e)
			toProbe(e)
			for i := 2; i <= cfg.MaxProbes; i++ {
				e.clk.Advance(cfg.RetransTime)
				sent := e.sent()
				if len(sent) != 1 {
					e.t.Fatalf("probe %d: %d frames", i, len(sent))
				}
				e.mustBeRequest(sent[0], peerMAC, peerMAC, ourIP, peerIP)
			}
			e.clk.Advance(cfg.RetransTime)
			if s := e.state(peerIP); s != Failed || len(e.sent()) != 0 {
				e.t.Fatalf("after %d probes: %v", cfg.MaxProbes, s)
			}
		}},
		{"Delay -> Reachable on upper-layer confirmation, no probe", func(e *env) {
			toStale(e)
			toDelay(e)
			e.tbl.Confirm(e.nic.ID(), peerIP)
			if s := e.state(peerIP); s != Reachable {
				e.t.Fatalf("Confirm in Delay: %v", s)
			}
			e.clk.Advance(cfg.DelayProbe)
			if len(e.sent()) != 0 || e.state(peerIP) != Reachable {
				e.t.Fatal("confirmed entry probed")
			}
		}},
		{"Confirm keeps a Reachable entry Reachable", func(e *env) {
			e.clk.Advance(cfg.BaseReachable / 4)
			e.tbl.Confirm(e.nic.ID(), peerIP)
			e.clk.Advance(cfg.BaseReachable * 3 / 8)
			e.tbl.Confirm(e.nic.ID(), peerIP)
			e.clk.Advance(cfg.BaseReachable * 3 / 8)
			if s := e.state(peerIP); s != Reachable {
				e.t.Fatalf("confirmed entry aged: %v", s)
			}
		}},
		{"a changed MAC from a request makes the entry Stale with the new address", func(e *env) {
			e.arpIn(header.BroadcastMAC, arpReq(peer2MAC, peerIP, ourIP))
			en, _ := e.tbl.Lookup(e.nic.ID(), peerIP)
			if en.State != Stale || en.MAC != peer2MAC {
				e.t.Fatalf("entry %+v", en)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, cfg)
			e.resolve()
			tc.run(e)
		})
	}
}

func TestTableFull(t *testing.T) {
	e := setup(t, Config{MaxEntries: 2, RetransTime: time.Second, MaxProbes: 1, GCStale: time.Minute})
	a, b, c := peerIP, peer2IP, netip.MustParseAddr("10.0.0.4")
	e.tbl.Output(e.nic, a, ipPacket(ourIP, a, 1))
	e.tbl.Output(e.nic, b, ipPacket(ourIP, b, 2))
	e.sent()
	// Both entries are busy resolving: a third resolution fails.
	var drops buf.DropStats
	s := ipPacket(ourIP, c, 3)
	s.Drops = &drops
	e.tbl.Output(e.nic, c, s)
	if drops.Get(DropNeighCreateFail) != 1 || e.tbl.Stats().TableFull != 1 || len(e.sent()) != 0 {
		t.Fatalf("table full: %+v", e.tbl.Stats())
	}
	if _, ok := e.tbl.Lookup(e.nic.ID(), c); ok {
		t.Fatal("entry created past MaxEntries")
	}
	// a fails; forced GC reclaims it for c.
	e.arpIn(ourMAC, reply(peer2MAC, b))
	e.clk.Advance(time.Second)
	if e.state(a) != Failed {
		t.Fatal("a should have failed")
	}
	e.sent()
	e.tbl.Output(e.nic, c, ipPacket(ourIP, c, 4))
	if _, ok := e.tbl.Lookup(e.nic.ID(), a); ok {
		t.Fatal("Failed entry not collected")
	}
	if e.state(c) != Incomplete || e.tbl.Stats().Entries != 2 {
		t.Fatalf("after GC: %+v", e.tbl.Entries())
	}
	// b goes Stale (recently used); c resolves. A new destination evicts
	// the least recently used Stale entry.
	e.arpIn(ourMAC, reply(peerMAC, c))
	e.clk.Advance(46 * time.Second)
	if e.state(b) != Stale || e.state(c) != Stale {
		t.Fatal("entries should be Stale")
	}
	e.tbl.Output(e.nic, c, ipPacket(ourIP, c, 5)) // c used: Delay, busy
	d := netip.MustParseAddr("10.0.0.5")
	e.tbl.Output(e.nic, d, ipPacket(ourIP, d, 6))
	if _, ok := e.tbl.Lookup(e.nic.ID(), b); ok {
		t.Fatal("LRU Stale entry not collected")
	}
	if e.state(d) != Incomplete || e.state(c) != Delay {
		t.Fatalf("entries %+v", e.tbl.Entries())
	}
}

func TestStaticEntries(t *testing.T) {
	e := setup(t, Config{})
	if err := e.tbl.AddStatic(e.nic.ID(), peerIP, peerMAC); err != nil {
		t.Fatal(err)
	}
	if err := e.tbl.AddStatic(e.nic.ID(), peer2IP, header.BroadcastMAC); err == nil {
		t.Fatal("static broadcast MAC accepted")
	}
	if err := e.tbl.AddStatic(99, peer2IP, peer2MAC); err == nil {
		t.Fatal("static entry on a missing NIC accepted")
	}
	e.clk.Advance(24 * time.Hour)
	e.arpIn(ourMAC, reply(peer2MAC, peerIP)) // must not override
	e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, peerIP, 1))
	sent := e.sent()
	if len(sent) != 1 || sent[0].id != 1 || sent[0].eth.Dst() != peerMAC {
		t.Fatal("static entry not used as configured")
	}
	en, _ := e.tbl.Lookup(e.nic.ID(), peerIP)
	if en.State != Permanent || !en.Static || en.State.String() != "PERMANENT" {
		t.Fatalf("entry %+v", en)
	}
	if e.clk.Pending() != 0 {
		t.Fatal("static entry armed a timer")
	}
	e.tbl.Remove(e.nic.ID(), peerIP)
	if _, ok := e.tbl.Lookup(e.nic.ID(), peerIP); ok || len(e.tbl.Entries()) != 0 {
		t.Fatal("Remove left the entry")
	}
}

func TestStaticReplacesIncompleteAndFlushes(t *testing.T) {
	e := setup(t, Config{})
	e.tbl.Output(e.nic, peerIP, ipPacket(ourIP, peerIP, 1))
	e.sent()
	if err := e.tbl.AddStatic(e.nic.ID(), peerIP, peerMAC); err != nil {
		t.Fatal(err)
	}
	if sent := e.sent(); len(sent) != 1 || sent[0].id != 1 || sent[0].eth.Dst() != peerMAC {
		t.Fatal("queued packet not sent on static replacement")
	}
}

func TestMalformedARPIsCounted(t *testing.T) {
	valid := func() []byte {
		b := make([]byte, header.EthernetMinSize+header.ARPSize)
		header.Ethernet(b).Encode(header.EthernetFields{Dst: header.BroadcastMAC, Src: peerMAC, Type: header.EtherTypeARP})
		header.ARP(b[header.EthernetMinSize:]).Encode(arpReq(peerMAC, peerIP, ourIP))
		return b
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(valid()) }
	tests := []struct {
		name  string
		frame []byte
	}{
		{"truncated", mutate(func(b []byte) []byte { return b[:header.EthernetMinSize+20] })},
		{"empty", mutate(func(b []byte) []byte { return b[:header.EthernetMinSize] })},
		{"hardware type 6", mutate(func(b []byte) []byte { b[header.EthernetMinSize+1] = 6; return b })},
		{"protocol type IPv6", mutate(func(b []byte) []byte { b[header.EthernetMinSize+2], b[header.EthernetMinSize+3] = 0x86, 0xdd; return b })},
		{"opcode 3 (RARP)", mutate(func(b []byte) []byte { b[header.EthernetMinSize+7] = 3; return b })},
		{"broadcast sender MAC", mutate(func(b []byte) []byte { copy(b[header.EthernetMinSize+8:], header.BroadcastMAC[:]); return b })},
		{"multicast target", mutate(func(b []byte) []byte { b[header.EthernetMinSize+24] = 224; return b })},
		{"loopback sender", mutate(func(b []byte) []byte { b[header.EthernetMinSize+14] = 127; return b })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, Config{})
			e.rawIn(tc.frame)
			if st := e.tbl.Stats(); st.InErrors != 1 || st.InRequests != 0 || st.Entries != 0 {
				t.Fatalf("stats %+v", st)
			}
			if e.nic.Drops().Get(DropARPInvalid) != 1 || len(e.sent()) != 0 {
				t.Fatal("malformed ARP not dropped with ARP_INVALID")
			}
		})
	}
}

// RFC 5227 §3: announce a new address with a broadcast ARP request whose
// sender and target protocol addresses are both the new address.
func TestGratuitousARPOnAddressAdd(t *testing.T) {
	e := setup(t, Config{})
	a := netip.MustParseAddr("10.0.0.7")
	if err := e.nic.AddAddress(netip.PrefixFrom(a, 24)); err != nil {
		t.Fatal(err)
	}
	sent := e.sent()
	if len(sent) != 1 {
		t.Fatalf("sent %d frames", len(sent))
	}
	e.mustBeRequest(sent[0], header.BroadcastMAC, header.MAC{}, a, a)
	if e.tbl.Stats().OutRequests != 1 {
		t.Fatal("announcement not counted")
	}
}

func TestBroadcastAndMulticastNeedNoResolution(t *testing.T) {
	tests := []struct {
		dst string
		mac header.MAC
	}{
		{"255.255.255.255", header.BroadcastMAC},
		{"10.0.0.255", header.BroadcastMAC},
		{"224.0.0.5", header.MAC{0x01, 0x00, 0x5e, 0, 0, 5}},
		{"239.129.2.3", header.MAC{0x01, 0x00, 0x5e, 1, 2, 3}}, // RFC 1112 §6.4: low 23 bits
	}
	for _, tc := range tests {
		t.Run(tc.dst, func(t *testing.T) {
			e := setup(t, Config{})
			dst := netip.MustParseAddr(tc.dst)
			e.tbl.Output(e.nic, dst, ipPacket(ourIP, dst, 1))
			sent := e.sent()
			if len(sent) != 1 || sent[0].eth.Dst() != tc.mac || sent[0].id != 1 {
				t.Fatalf("sent %d frames", len(sent))
			}
			if len(e.tbl.Entries()) != 0 {
				t.Fatal("entry created for a broadcast/multicast next hop")
			}
		})
	}
}

func TestFlushNIC(t *testing.T) {
	e := setup(t, Config{})
	e.resolve()
	var drops buf.DropStats
	s := ipPacket(ourIP, peer2IP, 1)
	s.Drops = &drops
	e.tbl.Output(e.nic, peer2IP, s)
	e.tbl.Flush(e.nic.ID())
	if len(e.tbl.Entries()) != 0 || drops.Get(DropNeighDead) != 1 || e.clk.Pending() != 0 {
		t.Fatalf("Flush left %v", e.tbl.Entries())
	}
}

func BenchmarkOutputResolved(b *testing.B) {
	clk := clock.NewManual()
	devs := dev.NewDevices(clk)
	ep := &fakeEP{closed: make(chan struct{}), discard: true}
	nic, _ := devs.Add(ep, dev.Config{Name: "eth0", MAC: ourMAC})
	defer devs.Remove(nic.ID())
	nic.Up()
	tbl := New(clk, devs, Config{})
	if err := tbl.AddStatic(nic.ID(), peerIP, peerMAC); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := buf.Alloc(buf.MaxHeadroom, 1500)
		s.Put(1500)
		tbl.Output(nic, peerIP, s)
	}
}

func FuzzARPRcv(f *testing.F) {
	seed := func(ethDst header.MAC, a header.ARPFields) []byte {
		b := make([]byte, header.EthernetMinSize+header.ARPSize)
		header.Ethernet(b).Encode(header.EthernetFields{Dst: ethDst, Src: a.SenderMAC, Type: header.EtherTypeARP})
		header.ARP(b[header.EthernetMinSize:]).Encode(a)
		return b
	}
	f.Add(seed(header.BroadcastMAC, arpReq(peerMAC, peerIP, ourIP)))
	f.Add(seed(ourMAC, reply(peerMAC, peerIP)))
	f.Add(seed(header.BroadcastMAC, arpReq(peerMAC, netip.IPv4Unspecified(), ourIP)))
	f.Add(seed(header.BroadcastMAC, arpReq(peerMAC, peerIP, peerIP)))
	f.Add([]byte{})
	f.Add(make([]byte, 13))
	clk := clock.NewManual()
	devs := dev.NewDevices(clk)
	ep := &fakeEP{closed: make(chan struct{})}
	nic, err := devs.Add(ep, dev.Config{Name: "eth0", MAC: ourMAC})
	if err != nil {
		f.Fatal(err)
	}
	defer devs.Remove(nic.ID())
	tbl := New(clk, devs, Config{MaxEntries: 16})
	if err := nic.AddAddress(netip.MustParsePrefix("10.0.0.1/24")); err != nil {
		f.Fatal(err)
	}
	tbl.SetProxy(nic.ID(), func(a netip.Addr) bool { return a != peerIP })
	nic.Up()
	f.Fuzz(func(t *testing.T, b []byte) {
		e := &env{clk: clk, devs: devs, tbl: tbl, nic: nic, ep: ep}
		e.rawIn(b)
		for _, fr := range ep.take() {
			if _, err := header.CheckEthernet(fr); err != nil {
				t.Fatalf("sent malformed frame %x", fr)
			}
		}
		if st := tbl.Stats(); st.Entries > 16 {
			t.Fatalf("table exceeded its bound: %d", st.Entries)
		}
		clk.Advance(time.Second)
	})
}
