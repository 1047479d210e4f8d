package tcp

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// fakeIP is the family for tests: it records or forwards what TCP sends.
type fakeIP struct {
	mu     sync.Mutex
	local  netip.Addr
	local6 netip.Addr         // the source for IPv6 destinations
	out    func(skb *buf.SKB) // nil: record in sent
	sent   []*buf.SKB
	noNet  netip.Prefix // destinations without a route
	mtu    int
	// transparent counts segments sent with route.Flow.Transparent
	// (intercept_test.go), marked those carrying a Mark.
	transparent, marked int
	// v4 and v6 count the segments sent by family.
	v4, v6 int
	// tooBig counts DF packets longer than the route MTU, dropped as
	// ipv4 drops them (IpFragFails): a wire segment (the IPv4 header, the
	// TCP header with its options, GSOSize or all the payload) must fit.
	tooBig int
}

func (f *fakeIP) QueueXmit(skb *buf.SKB, fl route.Flow) error {
	// Push the IPv4 or IPv6 header as ipv4.QueueXmit and ipv6.QueueXmit
	// do, so the receiver sees a NetworkHeader.
	n := skb.Len()
	skb.SetTransportHeader()
	f.mu.Lock()
	if fl.Dst.Is6() {
		f.v6++
	} else {
		f.v4++
	}
	f.mu.Unlock()
	if fl.Dst.Is6() {
		ip := header.IPv6(skb.Push(header.IPv6MinSize))
		ip.Encode(header.IPv6Fields{PayloadLen: uint16(n), NextHeader: header.ProtoTCP, HopLimit: 64,
			TrafficClass: fl.TOS, Src: fl.Src, Dst: fl.Dst})
	} else {
		ip := header.IPv4(skb.Push(header.IPv4MinSize))
		ip.Encode(header.IPv4Fields{TotalLen: uint16(header.IPv4MinSize + n), TTL: 64, Protocol: header.ProtoTCP,
			Src: fl.Src, Dst: fl.Dst, DF: fl.DontFragment, TOS: fl.TOS})
	}
	skb.SetNetworkHeader()
	if mtu := cmp.Or(f.mtu, 1500); fl.DontFragment && wireLen(skb) > mtu {
		f.mu.Lock()
		f.tooBig++
		f.mu.Unlock()
		skb.Consume()
		return syscall.EMSGSIZE
	}
	if fl.Transparent || fl.Mark != 0 {
		f.mu.Lock()
		f.transparent += b2i(fl.Transparent)
		f.marked += b2i(fl.Mark != 0)
		f.mu.Unlock()
	}
	if f.out != nil {
		f.out(skb)
		return nil
	}
	f.mu.Lock()
	f.sent = append(f.sent, skb)
	f.mu.Unlock()
	return nil
}

func (f *fakeIP) RouteOutput(fl route.Flow) (route.Result, error) {
	if f.noNet.IsValid() && f.noNet.Contains(fl.Dst) {
		return route.Result{}, syscall.ENETUNREACH
	}
	src := f.local
	if fl.Dst.Is6() && f.local6.IsValid() {
		src = f.local6
	}
	return route.Result{Type: route.Unicast, NIC: 1, NextHop: fl.Dst, Src: src, MTU: f.mtu}, nil
}

// netLen is the network header's length of skb, whose data starts at it.
func netLen(skb *buf.SKB) int {
	if b := skb.Bytes(); len(b) > 0 && b[0]>>4 == 6 {
		return header.IPv6MinSize
	}
	return header.IPv4MinSize
}

// wireLen is the longest IP packet skb (IP header pushed) puts on the
// wire: the whole of it, or headers plus GSOSize for a GSO packet.
func wireLen(skb *buf.SKB) int {
	if skb.GSOSize == 0 {
		return skb.Len()
	}
	th := header.TCP(skb.TransportHeader())
	return netLen(skb) + th.DataOffset() + int(skb.GSOSize)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// take returns and forgets the recorded segments.
func (f *fakeIP) take() []*buf.SKB {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sent
	f.sent = nil
	return s
}

// finishCsum completes a CsumPartial checksum as a NIC would.
func finishCsum(skb *buf.SKB) {
	if skb.Csum != buf.CsumPartial {
		return
	}
	th := skb.TransportHeader()
	sum := header.ChecksumFinal(header.Checksum(th, 0))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(th[16:], sum)
	skb.Csum = buf.CsumNone
}

// toRcv turns an SKB that QueueXmit produced into one V4Rcv takes.
func toRcv(skb *buf.SKB) *buf.SKB {
	finishCsum(skb)
	skb.GSOSize, skb.GSOType = 0, 0
	skb.Pull(netLen(skb))
	skb.SetTransportHeader()
	return skb
}

// seg is a parsed segment for assertions.
type seg struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    header.TCPFlags
	wnd      uint16
	opts     header.TCPOptions
	data     []byte
	tos      uint8
}

func (s seg) String() string {
	return fmt.Sprintf("%v>%v %v seq=%d ack=%d wnd=%d len=%d", s.src, s.dst, s.flags, s.seq, s.ack, s.wnd, len(s.data))
}

func parseSeg(t testing.TB, skb *buf.SKB) seg {
	t.Helper()
	th, err := header.CheckTCP(skb.TransportHeader())
	if err != nil {
		t.Fatalf("bad segment from TCP: %v", err)
	}
	var src, dst netip.Addr
	var tos uint8
	if nh := skb.NetworkHeader(); nh[0]>>4 == 6 {
		ip := header.IPv6(nh)
		src, dst, tos = ip.Src(), ip.Dst(), ip.TrafficClass()
	} else {
		ip := header.IPv4(nh)
		src, dst, tos = ip.Src(), ip.Dst(), ip.TOS()
	}
	o, _ := header.ParseTCPOptions(th.Options())
	return seg{src: netip.AddrPortFrom(src, th.SrcPort()), dst: netip.AddrPortFrom(dst, th.DstPort()),
		seq: th.Seq(), ack: th.Ack(), flags: th.Flags(), wnd: th.Window(), opts: o,
		data: append([]byte(nil), th.Payload()...), tos: tos}
}

var (
	localAddr   = netip.MustParseAddr("10.0.0.1")
	remoteAddr  = netip.MustParseAddr("10.0.0.2")
	localAddr6  = netip.MustParseAddr("fd00::1")
	remoteAddr6 = netip.MustParseAddr("fd00::2")
)

// peer is the test's side of an RFC scenario (STYLE §9): it injects
// segments into a Proto on a manual clock and checks what comes out.
type peer struct {
	t   testing.TB
	clk *clock.Manual
	ip  *fakeIP
	p   *Proto
	// The remote endpoint the test plays.
	raddr netip.AddrPort
	laddr netip.AddrPort
	// ISS/IRS of the scenario: the test's own ISS and the stack's.
	ISS, IRS uint32
	TSVal    uint32
}

func newPeer(t testing.TB, cfg Config) *peer {
	clk := clock.NewManual()
	ip := &fakeIP{local: localAddr}
	cfg.Clock = clk
	p := New(ip, nil, cfg)
	return &peer{t: t, clk: clk, ip: ip, p: p, raddr: netip.AddrPortFrom(remoteAddr, 40000),
		laddr: netip.AddrPortFrom(localAddr, 80), ISS: 1000, TSVal: 5000}
}

// newPeer6 is newPeer over IPv6: the Proto has both families and the
// scenario runs between fd00::2 (the test) and fd00::1 (the stack).
func newPeer6(t testing.TB, cfg Config) *peer {
	clk := clock.NewManual()
	ip := &fakeIP{local: localAddr, local6: localAddr6}
	cfg.Clock = clk
	p := New(ip, ip, cfg)
	return &peer{t: t, clk: clk, ip: ip, p: p, raddr: netip.AddrPortFrom(remoteAddr6, 40000),
		laddr: netip.AddrPortFrom(localAddr6, 80), ISS: 1000, TSVal: 5000}
}

// tmpl is a segment template: the fields a test sets.
type tmpl struct {
	flags    header.TCPFlags
	seq, ack uint32
	wnd      uint16
	opts     header.TCPOptions
	data     []byte
	badCsum  bool
	tos      uint8
	mark     uint32     // skb.Mark on delivery (netfilter.MarkDivert: a diverted flow)
	batch    *buf.Batch // skb.Batch on delivery: the receive batch carrying it
}

func (c *peer) Seg() tmpl { return tmpl{wnd: 65535} }

func (m tmpl) Flags(f header.TCPFlags) tmpl  { m.flags = f; return m }
func (m tmpl) Seq(n uint32) tmpl             { m.seq = n; return m }
func (m tmpl) Ack(n uint32) tmpl             { m.ack = n; return m }
func (m tmpl) Wnd(n uint16) tmpl             { m.wnd = n; return m }
func (m tmpl) Data(b []byte) tmpl            { m.data = b; return m }
func (m tmpl) Opts(o header.TCPOptions) tmpl { m.opts = o; return m }
func (m tmpl) TOS(t uint8) tmpl              { m.tos = t; return m }
func (m tmpl) Mark(v uint32) tmpl            { m.mark = v; return m }
func (m tmpl) Batch(b *buf.Batch) tmpl       { m.batch = b; return m }

// Send delivers m to the stack now.
func (c *peer) Send(m tmpl) {
	c.t.Helper()
	var ob [40]byte
	ol := header.EncodeTCPOptions(ob[:], &m.opts)
	hl := header.TCPHeaderLen(ol)
	skb := buf.Alloc(buf.MaxHeadroom, hl+len(m.data))
	b := skb.Put(hl + len(m.data))
	th := header.TCP(b)
	th.Encode(header.TCPFields{SrcPort: c.raddr.Port(), DstPort: c.laddr.Port(), Seq: m.seq, Ack: m.ack,
		Flags: m.flags, Window: m.wnd, Options: ob[:ol]})
	copy(b[hl:], m.data)
	th.SetChecksum(c.raddr.Addr(), c.laddr.Addr())
	if m.badCsum {
		b[16] ^= 0xff
	}
	skb.Mark = m.mark
	skb.Batch = m.batch
	if c.raddr.Addr().Is6() {
		ip := header.IPv6(skb.Push(header.IPv6MinSize))
		ip.Encode(header.IPv6Fields{PayloadLen: uint16(hl + len(m.data)), NextHeader: header.ProtoTCP, HopLimit: 64,
			TrafficClass: m.tos, Src: c.raddr.Addr(), Dst: c.laddr.Addr()})
		skb.SetNetworkHeader()
		skb.Pull(header.IPv6MinSize)
		skb.SetTransportHeader()
		c.p.V6Rcv(skb)
		return
	}
	ip := header.IPv4(skb.Push(header.IPv4MinSize))
	ip.Encode(header.IPv4Fields{TotalLen: uint16(header.IPv4MinSize + hl + len(m.data)), TTL: 64,
		Protocol: header.ProtoTCP, Src: c.raddr.Addr(), Dst: c.laddr.Addr(), TOS: m.tos})
	skb.SetNetworkHeader()
	skb.Pull(header.IPv4MinSize)
	skb.SetTransportHeader()
	c.p.V4Rcv(skb)
}

// SendAt advances the clock to at (from the manual clock's epoch) and sends.
func (c *peer) SendAt(at time.Duration, m tmpl) {
	c.t.Helper()
	c.clk.AdvanceTo(clock.Epoch.Add(at))
	c.Send(m)
}

// Out returns what the stack sent since the last call.
func (c *peer) Out() []seg {
	c.t.Helper()
	var out []seg
	for _, skb := range c.ip.take() {
		out = append(out, parseSeg(c.t, skb))
		skb.Consume()
	}
	return out
}

// Expect checks that exactly one segment went out and returns it.
func (c *peer) Expect(what string) seg {
	c.t.Helper()
	out := c.Out()
	if len(out) != 1 {
		c.t.Fatalf("%s: want 1 segment, got %d: %v", what, len(out), out)
	}
	return out[0]
}

// ExpectAt advances to at, expecting nothing before it and one segment at it.
func (c *peer) ExpectAt(at time.Duration, what string) seg {
	c.t.Helper()
	c.clk.AdvanceTo(clock.Epoch.Add(at - time.Millisecond))
	if out := c.Out(); len(out) != 0 {
		c.t.Fatalf("%s: nothing expected before %v, got %v", what, at, out)
	}
	c.clk.AdvanceTo(clock.Epoch.Add(at))
	return c.Expect(what)
}

// ExpectNone checks that nothing went out.
func (c *peer) ExpectNone(what string) {
	c.t.Helper()
	if out := c.Out(); len(out) != 0 {
		c.t.Fatalf("%s: want no segment, got %v", what, out)
	}
}

// now is the simulated time since the epoch.
func (c *peer) now() time.Duration { return c.clk.Now().Sub(clock.Epoch) }

// --- Two stacks over a simulated wire ---

// wireCfg shapes the simulated path between two Protos: one-way delay,
// a bottleneck rate with a drop-tail queue, and seeded faults.
type wireCfg struct {
	delay     time.Duration
	rate      float64 // bytes per second; 0 = unlimited
	queue     int     // packets in the bottleneck queue; 0 = unlimited
	loss, dup float64
	reorder   float64 // probability a packet is held back by reorderBy
	reorderBy time.Duration
	corrupt   float64
	seed      uint64
	bothWays  bool // faults in both directions (else only a→b)
	ackOnly   bool // faults only b→a: the receiver's ACKs (and window updates)
	// readEvery makes the receiving application read at most this
	// often (transferWith), as a reader starved of CPU: the receive
	// window fills and closes between reads, and reopens with a window
	// update when it reads.
	readEvery time.Duration
	rcvBuf    int // both ends' RcvBuf and MaxRcvBuf (no autotuning past it); 0: defaults
	mtu       int
	gso       bool
	v6        bool // the connection is over IPv6 (fd00::1 → fd00::2)
}

type wireStats struct{ sent, lost, dup, reordered, corrupted, queueDrops int }

// wire connects two Protos with deliveries scheduled on the manual clock.
type wire struct {
	t      testing.TB
	clk    *clock.Manual
	cfg    wireCfg
	rng    *rand.Rand
	a, b   *Proto
	ipA    *fakeIP
	ipB    *fakeIP
	busy   [2]time.Time // when each direction's bottleneck frees up
	fifo   [2][]delivery
	head   [2]int
	timers [2]*clock.Timer
	inQ    [2]int
	stats  [2]wireStats
	// filter, when set, may drop a segment (return false) a→b (dir 0)
	// or b→a (dir 1), for tests that lose chosen segments.
	filter func(dir int, s seg) bool
}

func newWire(t testing.TB, cfg wireCfg, pcfg Config) *wire {
	clk := clock.NewManual()
	w := &wire{t: t, clk: clk, cfg: cfg, rng: rand.New(rand.NewPCG(cfg.seed, 7))}
	w.ipA = &fakeIP{local: localAddr, local6: localAddr6, mtu: cfg.mtu}
	w.ipB = &fakeIP{local: remoteAddr, local6: remoteAddr6, mtu: cfg.mtu}
	pcfg.Clock = clk
	if cfg.rcvBuf > 0 {
		pcfg.RcvBuf, pcfg.MaxRcvBuf = cfg.rcvBuf, cfg.rcvBuf
	}
	if cfg.gso {
		pcfg.Device = func(int) (int, link.Caps, bool) { return max(cfg.mtu, 1500), linkGSO, true }
	}
	w.a = New(w.ipA, w.ipA, pcfg)
	w.b = New(w.ipB, w.ipB, pcfg)
	w.ipA.out = func(skb *buf.SKB) { w.send(0, skb) }
	w.ipB.out = func(skb *buf.SKB) { w.send(1, skb) }
	return w
}

func (w *wire) hit(p float64) bool { return p > 0 && w.rng.Float64() < p }

func (w *wire) send(dir int, skb *buf.SKB) {
	st := &w.stats[dir]
	st.sent++
	if w.filter != nil && !w.filter(dir, parseSeg(w.t, skb)) {
		st.lost++
		skb.Consume()
		return
	}
	faulty := dir == 0 && !w.cfg.ackOnly || dir == 1 && (w.cfg.bothWays || w.cfg.ackOnly)
	if faulty && w.hit(w.cfg.loss) {
		st.lost++
		skb.Consume()
		return
	}
	if w.cfg.queue > 0 && w.inQ[dir] >= w.cfg.queue {
		st.queueDrops++
		skb.Consume()
		return
	}
	now := w.clk.Now()
	at := now
	if w.cfg.rate > 0 {
		start := now
		if w.busy[dir].After(start) {
			start = w.busy[dir]
		}
		w.busy[dir] = start.Add(time.Duration(float64(skb.Len()+14) / w.cfg.rate * float64(time.Second)))
		at = w.busy[dir]
	}
	at = at.Add(w.cfg.delay)
	finishCsum(skb)
	var dupCopy *buf.SKB
	if faulty && w.hit(w.cfg.dup) {
		st.dup++
		dupCopy = toRcv(skb.Copy()) // before the pull: Copy keeps only the valid bytes
	}
	skb = toRcv(skb)
	if faulty && w.hit(w.cfg.corrupt) {
		st.corrupted++
		// A wire corrupts its copy: the sender's send queue may share
		// the storage (a zero-copy segment), as link/fault knows.
		skb.Writable()
		b := skb.Bytes()
		i := w.rng.IntN(len(b))
		b[i] ^= 1 << w.rng.IntN(8)
	}
	held := faulty && w.hit(w.cfg.reorder)
	if held {
		st.reordered++
	}
	w.inQ[dir]++
	w.enqueue(dir, now, delivery{at: at, skb: skb, counted: true}, held)
	if dupCopy != nil {
		w.enqueue(dir, now, delivery{at: at, skb: dupCopy}, held)
	}
}

// enqueue schedules one delivery: in FIFO order (the clock does not order
// equal deadlines, so each direction keeps its own queue drained by one
// timer), or held back by reorderBy on its own timer.
func (w *wire) newDrainTimer(dir int) { w.timers[dir] = w.clk.NewTimer(func() { w.drain(dir) }) }

func (w *wire) hold(dir int, now time.Time, d delivery) {
	d.at = d.at.Add(w.cfg.reorderBy)
	w.clk.AfterFunc(d.at.Sub(now), func() { w.deliver(dir, d) })
}

func (w *wire) enqueue(dir int, now time.Time, d delivery, held bool) {
	if held {
		w.hold(dir, now, d)
		return
	}
	if n := len(w.fifo[dir]); n > w.head[dir] && d.at.Before(w.fifo[dir][n-1].at) {
		d.at = w.fifo[dir][n-1].at
	}
	if w.head[dir] == len(w.fifo[dir]) {
		w.fifo[dir], w.head[dir] = w.fifo[dir][:0], 0
	}
	w.fifo[dir] = append(w.fifo[dir], d)
	if w.timers[dir] == nil {
		w.newDrainTimer(dir)
	}
	if !w.timers[dir].Armed() {
		w.timers[dir].ResetAt(w.fifo[dir][w.head[dir]].at)
	}
}

type delivery struct {
	at      time.Time
	skb     *buf.SKB
	counted bool
}

func (w *wire) deliver(dir int, d delivery) {
	if d.counted {
		w.inQ[dir]--
	}
	to := w.b
	if dir == 1 {
		to = w.a
	}
	if nh := d.skb.NetworkHeader(); len(nh) > 0 && nh[0]>>4 == 6 {
		to.V6Rcv(d.skb)
		return
	}
	to.V4Rcv(d.skb)
}

func (w *wire) drain(dir int) {
	now := w.clk.Now()
	q := &w.fifo[dir]
	for w.head[dir] < len(*q) && !(*q)[w.head[dir]].at.After(now) {
		d := (*q)[w.head[dir]]
		(*q)[w.head[dir]] = delivery{}
		w.head[dir]++
		w.deliver(dir, d)
	}
	if w.head[dir] < len(*q) {
		w.timers[dir].ResetAt((*q)[w.head[dir]].at)
	} else {
		*q, w.head[dir] = (*q)[:0], 0
	}
}

// run steps the simulation, calling app after every step, until app
// returns true or the simulated time passes limit.
func (w *wire) run(limit time.Duration, app func() bool) {
	w.t.Helper()
	end := w.clk.Now().Add(limit)
	for !app() {
		if !w.clk.Step() {
			w.t.Fatalf("simulation stalled at %v: no timer armed\n%s", w.clk.Now().Sub(clock.Epoch), w.dump())
		}
		if w.clk.Now().After(end) {
			w.t.Fatalf("simulation did not finish within %v\n%s", limit, w.dump())
		}
	}
}

// connect opens a connection a→b on port 80 inside the simulation and
// returns the client and the accepted server socket.
func (w *wire) connect() (client, server *Sock) {
	w.t.Helper()
	remote := remoteAddr
	if w.cfg.v6 {
		remote = remoteAddr6
	}
	l := w.b.NewSock()
	if err := l.Bind(netip.AddrPortFrom(remote, 80)); err != nil {
		w.t.Fatal(err)
	}
	if err := l.Listen(16); err != nil {
		w.t.Fatal(err)
	}
	l.SetNonblock(true)
	c := w.a.NewSock()
	c.SetNonblock(true)
	if err := c.ConnectContext(context.Background(), netip.AddrPortFrom(remote, 80)); err != syscall.EINPROGRESS {
		w.t.Fatalf("connect: %v", err)
	}
	w.run(time.Minute, func() bool {
		if server == nil {
			if s, err := l.Accept(time.Time{}); err == nil {
				server = s
			}
		}
		return server != nil && c.State() == Established
	})
	server.SetNonblock(true)
	_ = l.Close()
	return c, server
}

// dump describes every connection of both Protos (DebugDump).
func (w *wire) dump() string {
	return "a:\n" + w.a.DebugDump() + "b:\n" + w.b.DebugDump()
}
