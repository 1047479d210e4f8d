package dev

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// fakeEP is an in-memory link.Endpoint: frames pushed on rx are read,
// written frames are recorded (or discarded when discard is set).
type fakeEP struct {
	mtu       int
	rx        chan *buf.SKB
	closed    chan struct{}
	closeOnce sync.Once
	discard   bool

	// When gate is non-nil, WriteBatch signals entered and waits on gate.
	gate    chan struct{}
	entered chan struct{}

	mu sync.Mutex
	tx [][]byte
}

func newFakeEP() *fakeEP {
	return &fakeEP{mtu: 1500, rx: make(chan *buf.SKB, 256), closed: make(chan struct{})}
}

func (f *fakeEP) ReadBatch(pkts []*buf.SKB) (int, error) {
	select {
	case s := <-f.rx:
		pkts[0] = s
	case <-f.closed:
		return 0, link.ErrClosed
	}
	n := 1
	for n < len(pkts) {
		select {
		case s := <-f.rx:
			pkts[n] = s
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (f *fakeEP) WriteBatch(pkts []*buf.SKB) (int, error) {
	if f.gate != nil {
		f.entered <- struct{}{}
		<-f.gate
	}
	select {
	case <-f.closed:
		for _, s := range pkts {
			s.Free(link.DropTxClosed)
		}
		return 0, link.ErrClosed
	default:
	}
	if !f.discard {
		f.mu.Lock()
		for _, s := range pkts {
			f.tx = append(f.tx, append([]byte(nil), s.Bytes()...))
		}
		f.mu.Unlock()
	}
	for _, s := range pkts {
		s.Consume()
	}
	return len(pkts), nil
}

func (f *fakeEP) MTU() int        { return f.mtu }
func (f *fakeEP) Caps() link.Caps { return 0 }
func (f *fakeEP) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return nil
}
func (f *fakeEP) isClosed() bool {
	select {
	case <-f.closed:
		return true
	default:
		return false
	}
}
func (f *fakeEP) sent() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.tx...)
}

var (
	ourMAC   = header.MAC{0x02, 0, 0, 0, 0, 1}
	peerMAC  = header.MAC{0x02, 0, 0, 0, 0, 2}
	otherMAC = header.MAC{0x02, 0, 0, 0, 0, 3}
)

// frame builds an Ethernet frame with a payload of n bytes.
func frame(dst header.MAC, t header.EtherType, n int) []byte {
	b := make([]byte, header.EthernetMinSize+n)
	header.Ethernet(b).Encode(header.EthernetFields{Dst: dst, Src: peerMAC, Type: t})
	for i := header.EthernetMinSize; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// loopEP is fakeEP as a link.LoopReader: ReadLoop carries each batch up
// itself, as afpacket's does; a failure stored in fail is returned once
// by the next ReadLoop, before it reads.
type loopEP struct {
	*fakeEP
	fail  atomic.Pointer[error]
	loops atomic.Int32 // ReadLoop calls
}

func (l *loopEP) ReadLoop(q int, pkts []*buf.SKB, handle func(n int) bool) error {
	l.loops.Add(1)
	if err := l.fail.Swap(nil); err != nil {
		return *err
	}
	for {
		n, err := l.ReadBatch(pkts)
		if err != nil {
			return err
		}
		if !handle(n) {
			return nil
		}
	}
}

// endpoints are the two ways dev reads a link: ReadBatch (poll) and the
// endpoint's own loop (link.LoopReader).
var endpoints = []struct {
	name string
	new  func() (*fakeEP, link.Endpoint)
}{
	{"ReadBatch", func() (*fakeEP, link.Endpoint) { f := newFakeEP(); return f, f }},
	{"ReadLoop", func() (*fakeEP, link.Endpoint) { f := newFakeEP(); return f, &loopEP{fakeEP: f} }},
}

func newNIC(t testing.TB, cfg Config) (*Devices, *NIC, *fakeEP) {
	t.Helper()
	ep := newFakeEP()
	d, n := newNICOn(t, cfg, ep)
	return d, n, ep
}

// newNICOn is newNIC on the endpoint ep.
func newNICOn(t testing.TB, cfg Config, ep link.Endpoint) (*Devices, *NIC) {
	t.Helper()
	d := NewDevices(clock.NewManual())
	if cfg.Name == "" {
		cfg.Name = "eth0"
	}
	if cfg.MAC == (header.MAC{}) {
		cfg.MAC = ourMAC
	}
	n, err := d.Add(ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Remove(n.ID()) })
	return d, n
}

// recorder is a Handler that remembers what it was given.
type recorder struct {
	mu   sync.Mutex
	got  []recorded
	seen chan struct{}
}

type recorded struct {
	nic      int
	proto    uint16
	payload  []byte
	macDst   header.MAC
	netStart bool
}

func newRecorder() *recorder { return &recorder{seen: make(chan struct{}, 1024)} }

func (r *recorder) handle(nic *NIC, skb *buf.SKB) {
	eth, err := header.CheckEthernet(skb.MACHeader())
	rec := recorded{nic: skb.InNIC, proto: skb.Protocol, payload: append([]byte(nil), skb.Bytes()...)}
	if err == nil {
		rec.macDst = eth.Dst()
	}
	rec.netStart = len(skb.NetworkHeader()) == skb.Len()
	r.mu.Lock()
	r.got = append(r.got, rec)
	r.mu.Unlock()
	skb.Consume()
	r.seen <- struct{}{}
}

func (r *recorder) all() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.got...)
}

func TestDispatchByEtherType(t *testing.T) {
	vlan := frame(ourMAC, header.EtherTypeVLAN, 50)
	tests := []struct {
		name    string
		frame   []byte
		handler string // "ipv4", "arp" or "" for dropped
		drop    buf.DropReason
	}{
		{"IPv4 unicast to us", frame(ourMAC, header.EtherTypeIPv4, 40), "ipv4", 0},
		{"ARP broadcast", frame(header.BroadcastMAC, header.EtherTypeARP, 28), "arp", 0},
		{"IPv4 to a multicast group", frame(header.MAC{0x01, 0, 0x5e, 0, 0, 1}, header.EtherTypeIPv4, 20), "ipv4", 0},
		{"unicast to another host (PACKET_OTHERHOST)", frame(otherMAC, header.EtherTypeIPv4, 40), "", DropOtherHost},
		{"unknown EtherType (IPv6)", frame(ourMAC, header.EtherTypeIPv6, 40), "", DropUnhandledProto},
		{"802.1Q tagged", vlan, "", DropVLAN},
		{"truncated Ethernet header", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, "", DropMACHeader},
		{"empty frame", nil, "", DropMACHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, n, _ := newNIC(t, Config{})
			ip, arp := newRecorder(), newRecorder()
			d.AddPacketType(header.EtherTypeIPv4, ip.handle)
			d.AddPacketType(header.EtherTypeARP, arp.handle)
			n.up.Store(true) // dispatch without the goroutine: deterministic
			n.rxBatch(n.rxq[0], []*buf.SKB{buf.FromBytes(0, tc.frame)})

			st := n.Stats()
			if st.RxPackets != 1 || st.RxBytes != uint64(len(tc.frame)) {
				t.Errorf("rx counters %+v", st)
			}
			var got []recorded
			switch tc.handler {
			case "ipv4":
				got = ip.all()
				if len(arp.all()) != 0 {
					t.Error("ARP handler got an IPv4 frame")
				}
			case "arp":
				got = arp.all()
				if len(ip.all()) != 0 {
					t.Error("IPv4 handler got an ARP frame")
				}
			default:
				if len(ip.all())+len(arp.all()) != 0 {
					t.Fatal("dropped frame was dispatched")
				}
				if st.RxDropped != 1 || n.Drops().Get(tc.drop) != 1 {
					t.Fatalf("want one %v drop, got %+v", tc.drop, st)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("handler calls %d", len(got))
			}
			r := got[0]
			eth, _ := header.CheckEthernet(tc.frame)
			if r.nic != n.ID() || r.proto != uint16(eth.Type()) || r.macDst != eth.Dst() || !r.netStart ||
				string(r.payload) != string(tc.frame[header.EthernetMinSize:]) {
				t.Fatalf("handler saw %+v", r)
			}
			if st.RxDropped != 0 {
				t.Fatalf("unexpected drops %+v", st)
			}
		})
	}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestRxGoroutineDispatchesAndUpperDropsCountOnNIC(t *testing.T) {
	d, n, ep := newNIC(t, Config{})
	ip := newRecorder()
	d.AddPacketType(header.EtherTypeIPv4, ip.handle)
	upperDrop := buf.NewDropReason("TEST_UPPER_DROP")
	dropped := make(chan struct{}, 1)
	d.AddPacketType(header.EtherTypeARP, func(_ *NIC, skb *buf.SKB) {
		skb.Free(upperDrop)
		dropped <- struct{}{}
	})
	n.Up()
	ep.rx <- buf.FromBytes(0, frame(ourMAC, header.EtherTypeIPv4, 30))
	waitFor(t, ip.seen, "IPv4 dispatch")
	ep.rx <- buf.FromBytes(0, frame(header.BroadcastMAC, header.EtherTypeARP, 28))
	waitFor(t, dropped, "ARP dispatch")
	if got := n.Drops().Get(upperDrop); got != 1 {
		t.Fatalf("an upper layer's drop of a received frame must count on the NIC: %d", got)
	}
	if st := n.Stats(); st.RxPackets != 2 || st.Drops["TEST_UPPER_DROP"] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestTapsSeeRxAndTx(t *testing.T) {
	d, n, ep := newNIC(t, Config{})
	ip := newRecorder()
	d.AddPacketType(header.EtherTypeIPv4, ip.handle)
	type seen struct {
		dir  Direction
		nic  int
		size int
		dst  header.MAC
	}
	var mu sync.Mutex
	var taps []seen
	remove := d.AddTap(func(nic *NIC, skb *buf.SKB, dir Direction) {
		eth, err := header.CheckEthernet(skb.Bytes())
		if err != nil {
			t.Errorf("tap saw a frame not starting at Ethernet: %v", err)
			return
		}
		mu.Lock()
		taps = append(taps, seen{dir, nic.ID(), skb.Len(), eth.Dst()})
		mu.Unlock()
	})
	n.up.Store(true)
	rxFrames := [][]byte{
		frame(ourMAC, header.EtherTypeIPv4, 20),
		frame(otherMAC, header.EtherTypeIPv4, 21), // taps see it even though it is dropped
		frame(ourMAC, header.EtherTypeIPv6, 22),   // and unknown protocols
	}
	for _, f := range rxFrames {
		n.rxBatch(n.rxq[0], []*buf.SKB{buf.FromBytes(0, f)})
	}
	tx := buf.Alloc(buf.MaxHeadroom, 10)
	tx.Put(10)
	n.HardHeader(tx, peerMAC, header.EtherTypeIPv4)
	n.Xmit(tx)

	want := []seen{
		{Rx, n.ID(), 34, ourMAC}, {Rx, n.ID(), 35, otherMAC}, {Rx, n.ID(), 36, ourMAC}, {Tx, n.ID(), 24, peerMAC},
	}
	mu.Lock()
	got := append([]seen(nil), taps...)
	mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("taps saw %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("tap %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if s := ep.sent(); len(s) != 1 {
		t.Fatalf("sent %d frames", len(s))
	} else if eth, _ := header.CheckEthernet(s[0]); eth.Src() != ourMAC || eth.Dst() != peerMAC || eth.Type() != header.EtherTypeIPv4 {
		t.Fatalf("HardHeader wrote %x", s[0][:14])
	}
	remove()
	n.rxBatch(n.rxq[0], []*buf.SKB{buf.FromBytes(0, rxFrames[0])})
	mu.Lock()
	defer mu.Unlock()
	if len(taps) != len(want) {
		t.Fatal("removed tap still runs")
	}
}

func TestXmitQueueOverflowIsCounted(t *testing.T) {
	const qlen = 8
	_, n, ep := newNIC(t, Config{TxQueueLen: qlen})
	ep.gate, ep.entered = make(chan struct{}), make(chan struct{}, 1)
	n.up.Store(true)
	mk := func(i int) *buf.SKB {
		s := buf.Alloc(buf.MaxHeadroom, 1)
		s.Put(1)[0] = byte(i)
		n.HardHeader(s, peerMAC, header.EtherTypeIPv4)
		return s
	}
	// The first caller becomes the flusher and blocks in WriteBatch.
	done := make(chan struct{})
	go func() { n.Xmit(mk(0)); close(done) }()
	waitFor(t, ep.entered, "the flusher to reach WriteBatch")
	// Others only enqueue: qlen fit, 3 overflow.
	for i := 1; i <= qlen+3; i++ {
		n.Xmit(mk(i))
	}
	if got := n.TxQueueLen(); got != qlen {
		t.Fatalf("queue holds %d, want the bound %d", got, qlen)
	}
	st := n.Stats()
	if st.TxDropped != 3 || n.Drops().Get(DropQdisc) != 3 {
		t.Fatalf("overflow not counted: %+v", st)
	}
	// Release the flusher: it must pick up the queued frames, in order.
	close(ep.gate)
	waitFor(t, done, "the flusher to drain the queue")
	sent := ep.sent()
	if len(sent) != qlen+1 {
		t.Fatalf("sent %d frames, want %d", len(sent), qlen+1)
	}
	for i, f := range sent {
		if f[header.EthernetMinSize] != byte(i) {
			t.Fatalf("frame %d carries %d: queue order lost", i, f[header.EthernetMinSize])
		}
	}
	if st := n.Stats(); st.TxPackets != qlen+1 || st.TxBytes != uint64((qlen+1)*15) {
		t.Fatalf("tx counters %+v", st)
	}
}

func TestConcurrentXmitSendsEverything(t *testing.T) {
	_, n, ep := newNIC(t, Config{TxQueueLen: 100000})
	n.up.Store(true)
	const writers, each = 4, 500
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				s := buf.Alloc(buf.MaxHeadroom, 0)
				n.HardHeader(s, peerMAC, header.EtherTypeIPv4)
				n.Xmit(s)
			}
		}()
	}
	wg.Wait()
	if got := len(ep.sent()); got != writers*each {
		t.Fatalf("sent %d of %d", got, writers*each)
	}
	if n.TxQueueLen() != 0 {
		t.Fatal("frames left in the queue with no flusher")
	}
}

func TestXmitWhenDownDrops(t *testing.T) {
	_, n, ep := newNIC(t, Config{})
	s := buf.Alloc(buf.MaxHeadroom, 0)
	n.HardHeader(s, peerMAC, header.EtherTypeIPv4)
	n.Xmit(s)
	if len(ep.sent()) != 0 || n.Drops().Get(buf.DropNICDown) != 1 || n.Stats().TxDropped != 1 {
		t.Fatalf("down NIC must drop with NIC_DOWN: %+v", n.Stats())
	}
}

// onEachEndpoint runs test on a NIC over each kind of endpoint.
func onEachEndpoint(t *testing.T, test func(t *testing.T, d *Devices, n *NIC, ep *fakeEP)) {
	for _, kind := range endpoints {
		t.Run(kind.name, func(t *testing.T) {
			ep, lep := kind.new()
			d, n := newNICOn(t, Config{}, lep)
			test(t, d, n, ep)
		})
	}
}

func TestRemoveStopsRxGoroutineAndClosesEndpoint(t *testing.T) {
	onEachEndpoint(t, testRemoveStopsRxGoroutine)
}

func testRemoveStopsRxGoroutine(t *testing.T, d *Devices, n *NIC, ep *fakeEP) {
	n.Up()
	if err := d.Remove(n.ID()); err != nil {
		t.Fatal(err)
	}
	n.rxMu.Lock()
	running := n.rxq[0].running
	n.rxMu.Unlock()
	if running {
		t.Fatal("receive goroutine still running after Remove")
	}
	if !ep.isClosed() {
		t.Fatal("endpoint not closed")
	}
	if d.ByID(n.ID()) != nil || d.ByName("eth0") != nil || len(d.List()) != 0 {
		t.Fatal("NIC still listed")
	}
	if err := d.Remove(n.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove: %v", err)
	}
	n.Up()
	if n.IsUp() {
		t.Fatal("a removed NIC came back up")
	}
}

func TestDownStopsDispatchAndUpResumes(t *testing.T) {
	onEachEndpoint(t, testDownStopsDispatch)
}

func testDownStopsDispatch(t *testing.T, d *Devices, n *NIC, ep *fakeEP) {
	ip := newRecorder()
	d.AddPacketType(header.EtherTypeIPv4, ip.handle)
	n.Up()
	n.Down()
	// The goroutine is parked in ReadBatch; the next frame is freed with
	// NIC_DOWN and the goroutine exits.
	ep.rx <- buf.FromBytes(0, frame(ourMAC, header.EtherTypeIPv4, 20))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		n.rxMu.Lock()
		running := n.rxq[0].running
		n.rxMu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("receive goroutine did not exit after Down")
		}
	}
	if len(ip.all()) != 0 || n.Drops().Get(buf.DropNICDown) != 1 {
		t.Fatalf("frame after Down was dispatched or not counted: %+v", n.Stats())
	}
	n.Up()
	ep.rx <- buf.FromBytes(0, frame(ourMAC, header.EtherTypeIPv4, 20))
	waitFor(t, ip.seen, "dispatch after Up")
}

func TestMTU(t *testing.T) {
	_, n, _ := newNIC(t, Config{})
	if n.MTU() != 1500 {
		t.Fatalf("default MTU %d, want the endpoint's", n.MTU())
	}
	tests := []struct {
		mtu int
		ok  bool
	}{{67, false}, {68, true}, {1500, true}, {1501, false}, {-1, false}, {9000, false}}
	for _, tc := range tests {
		err := n.SetMTU(tc.mtu)
		if (err == nil) != tc.ok {
			t.Errorf("SetMTU(%d): %v", tc.mtu, err)
		}
		if err != nil && !errors.Is(err, ErrBadMTU) {
			t.Errorf("SetMTU(%d) error %v", tc.mtu, err)
		}
	}
	if n.MTU() != 1500 {
		t.Fatalf("MTU %d after failed sets", n.MTU())
	}
	d := NewDevices(clock.NewManual())
	if _, err := d.Add(newFakeEP(), Config{Name: "x", MTU: 9000}); !errors.Is(err, ErrBadMTU) {
		t.Fatalf("Add with MTU above the endpoint's: %v", err)
	}
}

func TestDevicesList(t *testing.T) {
	d := NewDevices(clock.NewManual())
	a, err := d.Add(newFakeEP(), Config{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.Add(newFakeEP(), Config{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != 1 || b.ID() != 2 {
		t.Fatalf("IDs %d %d", a.ID(), b.ID())
	}
	if _, err := d.Add(newFakeEP(), Config{Name: "a"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if d.ByName("b") != b || d.ByID(1) != a {
		t.Fatal("lookup")
	}
	if err := d.Remove(1); err != nil {
		t.Fatal(err)
	}
	c, _ := d.Add(newFakeEP(), Config{Name: "c"})
	if c.ID() != 3 {
		t.Fatalf("IDs must not be reused: %d", c.ID())
	}
	if l := d.List(); len(l) != 2 || l[0] != b || l[1] != c {
		t.Fatalf("List %v", l)
	}
}

func TestAddresses(t *testing.T) {
	d, n, _ := newNIC(t, Config{})
	var devCalls, nicCalls atomic.Int32
	d.OnAddressAdded(func(nic *NIC, p netip.Prefix) {
		if nic == n && p == netip.MustParsePrefix("10.0.0.1/24") {
			devCalls.Add(1)
		}
	})
	n.OnAddressAdded(func(*NIC, netip.Prefix) { nicCalls.Add(1) })
	p := netip.MustParsePrefix("10.0.0.1/24")
	if err := n.AddAddress(p); err != nil {
		t.Fatal(err)
	}
	if err := n.AddAddress(netip.MustParsePrefix("10.0.0.1/16")); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate address: %v", err)
	}
	if devCalls.Load() != 1 || nicCalls.Load() != 1 {
		t.Fatalf("notifiers ran %d/%d times", devCalls.Load(), nicCalls.Load())
	}
	if err := n.AddAddress(netip.MustParsePrefix("192.168.1.1/31")); err != nil {
		t.Fatal(err)
	}
	bc := []struct {
		addr string
		want bool
	}{
		{"255.255.255.255", true},
		{"10.0.0.255", true},   // directed broadcast of 10.0.0.0/24
		{"10.0.1.255", false},  // outside the prefix
		{"10.0.0.1", false},    // our address
		{"192.168.1.1", false}, // RFC 3021: a /31 has no broadcast
		{"192.168.1.0", false},
	}
	for _, tc := range bc {
		if got := n.IsBroadcast(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("IsBroadcast(%s) = %v", tc.addr, got)
		}
	}
	if src, ok := n.SourceFor(netip.MustParseAddr("192.168.1.0")); !ok || src != netip.MustParseAddr("192.168.1.1") {
		t.Errorf("SourceFor on-link: %v %v", src, ok)
	}
	if src, ok := n.SourceFor(netip.MustParseAddr("8.8.8.8")); !ok || src != p.Addr() {
		t.Errorf("SourceFor off-link: %v %v", src, ok)
	}
	if !n.HasAddress(p.Addr()) || n.HasAddress(netip.MustParseAddr("10.0.0.2")) {
		t.Error("HasAddress")
	}
	if err := n.RemoveAddress(p); err != nil {
		t.Fatal(err)
	}
	if n.HasAddress(p.Addr()) || len(n.Addresses()) != 1 {
		t.Fatalf("after remove: %v", n.Addresses())
	}
	if err := n.RemoveAddress(p); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
}

func BenchmarkRxDispatch(b *testing.B) {
	d, n, _ := newNIC(b, Config{})
	d.AddPacketType(header.EtherTypeIPv4, func(_ *NIC, skb *buf.SKB) { skb.Consume() })
	d.AddTap(func(*NIC, *buf.SKB, Direction) {})
	n.up.Store(true)
	f := frame(ourMAC, header.EtherTypeIPv4, 1486)
	batch := make([]*buf.SKB, DefaultRxBatch)
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(batch) {
		k := min(len(batch), b.N-i)
		for j := range k {
			batch[j] = buf.FromBytes(0, f)
		}
		n.rxBatch(n.rxq[0], batch[:k])
	}
}

func BenchmarkXmit(b *testing.B) {
	_, n, ep := newNIC(b, Config{})
	ep.discard = true
	d := n.devs
	d.AddTap(func(*NIC, *buf.SKB, Direction) {})
	n.up.Store(true)
	b.SetBytes(1514)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := buf.Alloc(buf.MaxHeadroom, 1500)
		s.Put(1500)
		n.HardHeader(s, peerMAC, header.EtherTypeIPv4)
		n.Xmit(s)
	}
}

func FuzzDevRx(f *testing.F) {
	f.Add(frame(ourMAC, header.EtherTypeIPv4, 20))
	f.Add(frame(header.BroadcastMAC, header.EtherTypeARP, 28))
	f.Add(frame(otherMAC, header.EtherTypeIPv4, 20))
	f.Add(frame(ourMAC, header.EtherTypeVLAN, 20))
	f.Add([]byte{})
	f.Add([]byte{0xff})
	d := NewDevices(clock.NewManual())
	n, err := d.Add(newFakeEP(), Config{Name: "fuzz0", MAC: ourMAC})
	if err != nil {
		f.Fatal(err)
	}
	d.AddPacketType(header.EtherTypeIPv4, func(nic *NIC, skb *buf.SKB) {
		if skb.InNIC != nic.ID() || len(skb.MACHeader()) != skb.Len()+header.EthernetMinSize {
			panic("handler invariants broken")
		}
		skb.Consume()
	})
	d.AddPacketType(header.EtherTypeARP, func(_ *NIC, skb *buf.SKB) { skb.Free(buf.DropNotSpecified) })
	n.up.Store(true)
	f.Fuzz(func(t *testing.T, b []byte) {
		before := n.Stats()
		n.rxBatch(n.rxq[0], []*buf.SKB{buf.FromBytes(0, b)})
		after := n.Stats()
		if after.RxPackets != before.RxPackets+1 {
			t.Fatal("frame not counted")
		}
	})
}

// A CsumPartial UDP datagram leaving through a link without checksum
// offload gets its checksum finished in software (skb_checksum_help).
func TestXmitFinishesPartialChecksum(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	payload := []byte("partial checksum payload")
	frame := make([]byte, 14+20+8+len(payload))
	header.Ethernet(frame).Encode(header.EthernetFields{Src: header.MAC{2, 0, 0, 0, 0, 1}, Dst: header.MAC{2, 0, 0, 0, 0, 2}, Type: header.EtherTypeIPv4})
	header.IPv4(frame[14:]).Encode(header.IPv4Fields{TotalLen: uint16(len(frame) - 14), TTL: 64, Protocol: header.ProtoUDP, Src: src, Dst: dst})
	header.UDP(frame[34:]).Encode(header.UDPFields{SrcPort: 1000, DstPort: 2000, Length: uint16(8 + len(payload))})
	copy(frame[42:], payload)
	skb := buf.FromBytes(buf.MaxHeadroom, frame)
	udp := header.UDP(skb.Bytes()[34:])
	// What a sending kernel leaves in the field: the folded pseudo-header sum.
	pseudo := header.Fold(header.PseudoHeaderSum(header.ProtoUDP, src, dst, len(udp)))
	udp[6], udp[7] = byte(pseudo>>8), byte(pseudo)
	skb.Csum, skb.CsumOffset = buf.CsumPartial, 6
	skb.SetTransportHeaderAt(34)
	if udp.ChecksumValid(src, dst) {
		t.Fatal("test setup: the partial checksum must not already be valid")
	}

	ep := newFakeEP()
	devs := NewDevices(clock.NewManual())
	nic, err := devs.Add(ep, Config{Name: "eth0", MAC: header.MAC{2, 0, 0, 0, 0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	nic.Up()
	defer devs.Remove(nic.ID())
	nic.Xmit(skb)
	sent := ep.sent()
	if len(sent) != 1 {
		t.Fatalf("sent %d frames", len(sent))
	}
	if !header.UDP(sent[0][34:]).ChecksumValid(src, dst) {
		t.Fatal("checksum not completed in software")
	}
}

// A LoopReader's read error is counted and the loop read again after a
// backoff; the frames after it are dispatched.
func TestLoopReaderErrorIsCountedAndRetried(t *testing.T) {
	f := newFakeEP()
	ep := &loopEP{fakeEP: f}
	fail := errors.New("injected read error")
	ep.fail.Store(&fail)
	d, n := newNICOn(t, Config{}, ep)
	ip := newRecorder()
	d.AddPacketType(header.EtherTypeIPv4, ip.handle)
	n.Up()
	f.rx <- buf.FromBytes(0, frame(ourMAC, header.EtherTypeIPv4, 20))
	waitFor(t, ip.seen, "dispatch after the read error")
	if n.Stats().RxErrors != 1 || ep.loops.Load() != 2 {
		t.Fatalf("rx errors %d, ReadLoop calls %d: want the error counted once and the loop read again", n.Stats().RxErrors, ep.loops.Load())
	}
}
