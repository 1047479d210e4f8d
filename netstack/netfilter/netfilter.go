package netfilter

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Priorities of the functions registered besides the tables.
const (
	PriConntrackDefrag = -400 // NF_IP_PRI_CONNTRACK_DEFRAG
)

// Sender is what REJECT needs of the IPv4 layer (ipv4.Layer implements it).
type Sender interface {
	// SendICMPError sends an ICMP error about skb (skb.NetworkHeader()),
	// rate-limited; it does not consume skb.
	SendICMPError(skb *buf.SKB, typ, code uint8, info uint32)
}

// Config wires a Netfilter to its stack.
type Config struct {
	Hooks *Hooks
	// Hooks6 are the IPv6 hooks (nf_hooks_ipv6), nil for none: the same
	// functions run there for IPv6 packets, with IPv6 reassembly
	// (nf_defrag_ipv6) in place of IPv4's.
	Hooks6 *Hooks
	Clock  clock.Clock
	// Devices names links for -i/-o and gives MASQUERADE and REDIRECT
	// their addresses.
	Devices *dev.Devices
	// FIB and Neigh carry the TCP resets of REJECT (nf_send_reset's
	// ip_route_me_harder + dst_output, without the output hooks).
	FIB   *route.Table
	Neigh *neigh.Table
	// Sender sends REJECT's ICMP errors; it may be set later (SetSender),
	// since the IPv4 layer is built after the hooks. Sender6 sends its
	// ICMPv6 errors (the IPv6 layer; SetSender6).
	Sender  Sender
	Sender6 Sender
	// Conntrack configures the connection table.
	Conntrack conntrack.Config
	// Logger receives LOG lines; nil = slog.Default().
	Logger *slog.Logger
	// LogRate and LogBurst limit LOG lines per second (token bucket,
	// like -m limit); 0 = 10/s and 20. Suppressed lines are counted.
	LogRate, LogBurst int
	// DefragTimeout and DefragMemLimit bound reassembly before
	// conntrack (ipfrag_time, ipfrag_high_thresh); 0 = 30 s and 4 MiB.
	DefragTimeout  time.Duration
	DefragMemLimit int
}

// Netfilter is the rule engine, connection tracking and NAT of one stack.
type Netfilter struct {
	hooks  *Hooks
	clk    clock.Clock
	devs   *dev.Devices
	fib    *route.Table
	neigh  *neigh.Table
	send   atomic.Pointer[Sender]
	send6  atomic.Pointer[Sender]
	ct     *conntrack.Table
	rules  atomic.Pointer[Ruleset]
	loadMu sync.Mutex // Load and SetReplyTo
	// replyTo lists the reply-to NICs (replyto.go), copied on write.
	// Bound: MaxReplyToNICs.
	replyTo atomic.Pointer[[]int]
	logger  *slog.Logger
	logRL   bucket
	defrag  defrag
	frag6   defrag6
	stats   counters
	drops   buf.DropStats
}

type counters struct {
	logged, logSuppressed, rejects, resets, natFailed, mangleFailed, ctDrops atomic.Uint64
}

// Stats are the engine's counters.
type Stats struct {
	Logged, LogSuppressed, Rejects, ResetsSent, NATFailed, MangleFailed, ConntrackFullDrops uint64
	DefragReqds, DefragOKs, DefragFails, DefragTimeouts                                     uint64
	Conntrack                                                                               conntrack.Stats
}

// New builds a Netfilter with an empty ruleset (every policy ACCEPT) and
// registers its functions at cfg.Hooks in the kernel's priority order:
// defrag, conntrack, mangle, DNAT, filter, SNAT, confirm.
func New(cfg Config) *Netfilter {
	if cfg.Clock == nil {
		cfg.Clock = clock.NewReal()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	nf := &Netfilter{hooks: cfg.Hooks, clk: cfg.Clock, devs: cfg.Devices, fib: cfg.FIB, neigh: cfg.Neigh, logger: cfg.Logger}
	if cfg.Sender != nil {
		nf.SetSender(cfg.Sender)
	}
	if cfg.Sender6 != nil {
		nf.SetSender6(cfg.Sender6)
	}
	nf.ct = conntrack.New(cfg.Clock, cfg.Conntrack)
	rate, burst := cfg.LogRate, cfg.LogBurst
	if rate <= 0 {
		rate = 10
	}
	if burst <= 0 {
		burst = 20
	}
	nf.logRL.init(cfg.Clock, rate, burst)
	nf.defrag.init(nf, cfg.DefragTimeout, cfg.DefragMemLimit)
	nf.frag6.init(nf, cfg.DefragTimeout, cfg.DefragMemLimit)
	rs := NewRuleset()
	_ = rs.compile()
	nf.rules.Store(rs)
	nf.replyTo.Store(&[]int{})
	if cfg.Hooks != nil {
		nf.register(cfg.Hooks, nf.defragHook)
	}
	if cfg.Hooks6 != nil {
		nf.register(cfg.Hooks6, nf.defrag6Hook)
	}
	return nf
}

// register puts the engine's functions on h; defrag is the family's
// reassembly before conntrack. The other functions read the packet's
// version and serve both families.
func (nf *Netfilter) register(h *Hooks, defrag Func) {
	reg := func(hook Hook, pri int, name string, fn Func) {
		h.Register(Ops{Hook: hook, Priority: pri, Name: name, Fn: fn})
	}
	reg(PreRouting, PriConntrackDefrag, "defrag", defrag)
	for _, hk := range []Hook{PreRouting, LocalOut} {
		reg(hk, PriConntrack, "conntrack", nf.conntrackIn)
		reg(hk, PriNATDst, "nat-dst", nf.natDst)
	}
	for hk := Hook(0); hk < NumHooks; hk++ {
		reg(hk, PriMangle, "mangle", nf.mangleHook)
	}
	for _, hk := range []Hook{LocalIn, Forward, LocalOut} {
		reg(hk, PriFilter, "filter", nf.filterHook)
	}
	for _, hk := range []Hook{PostRouting, LocalIn} {
		reg(hk, PriNATSrc, "nat-src", nf.natSrc)
		reg(hk, PriConfirm, "confirm", nf.confirm)
	}
}

// SetSender sets the ICMP sender of REJECT.
func (nf *Netfilter) SetSender(s Sender) { nf.send.Store(&s) }

// SetSender6 sets the ICMPv6 sender of REJECT.
func (nf *Netfilter) SetSender6(s Sender) { nf.send6.Store(&s) }

func (nf *Netfilter) sender() Sender {
	if p := nf.send.Load(); p != nil {
		return *p
	}
	return nil
}

func (nf *Netfilter) sender6() Sender {
	if p := nf.send6.Load(); p != nil {
		return *p
	}
	return nil
}

// Conntrack is the connection table.
func (nf *Netfilter) Conntrack() *conntrack.Table { return nf.ct }

// Ruleset is the loaded ruleset, with live counters.
func (nf *Netfilter) Ruleset() *Ruleset { return nf.rules.Load() }

// Load checks rs (jumps resolve, no loops, targets in their tables and
// hooks) and replaces the running ruleset atomically: a packet sees the
// old rules or the new ones, never a mix.
func (nf *Netfilter) Load(rs *Ruleset) error {
	nf.loadMu.Lock()
	defer nf.loadMu.Unlock()
	if err := rs.compile(); err != nil {
		return err
	}
	nf.rules.Store(rs)
	return nil
}

// LoadText parses rules in the rule-file syntax and loads them.
func (nf *Netfilter) LoadText(text string) error {
	rs, err := ParseRules(text)
	if err != nil {
		return err
	}
	return nf.Load(rs)
}

// Drops counts the packets this package freed itself (TCP resets it could
// not route); packets dropped by a verdict are counted by their caller.
func (nf *Netfilter) Drops() *buf.DropStats { return &nf.drops }

// Stats returns the engine's, defrag's and conntrack's counters.
func (nf *Netfilter) Stats() Stats {
	s := Stats{Logged: nf.stats.logged.Load(), LogSuppressed: nf.stats.logSuppressed.Load(), Rejects: nf.stats.rejects.Load(),
		ResetsSent: nf.stats.resets.Load(), NATFailed: nf.stats.natFailed.Load(), MangleFailed: nf.stats.mangleFailed.Load(),
		ConntrackFullDrops: nf.stats.ctDrops.Load(), Conntrack: nf.ct.Stats()}
	s.DefragReqds, s.DefragOKs, s.DefragFails, s.DefragTimeouts = nf.defrag.stats()
	r6, o6, f6, t6 := nf.frag6.stats()
	s.DefragReqds, s.DefragOKs, s.DefragFails, s.DefragTimeouts = s.DefragReqds+r6, s.DefragOKs+o6, s.DefragFails+f6, s.DefragTimeouts+t6
	return s
}

// skb.CB[cbCT:] holds the packet's conntrack reference from the conntrack
// hook (PREROUTING, OUTPUT) until the packet leaves IP: the kernel's
// skb->_nfct, and after it the reply-to NIC (cbReplyNIC, replyto.go).
// ipv4 uses CB[0:8]; CB[16:32] are netfilter's.
const (
	cbCT      = 16
	cbCTValid = 0x5a // marks a reference written by conntrackIn
)

func setRef(skb *buf.SKB, c *conntrack.Conn, dir conntrack.Dir, info conntrack.Info) {
	binary.LittleEndian.PutUint32(skb.CB[cbReplyNIC:], 0)
	cb := skb.CB[cbCT : cbCT+12]
	if c == nil {
		cb[0] = cbCTValid
		cb[1] = byte(info)
		cb[2] = 0
		return
	}
	cb[0] = cbCTValid
	cb[1] = byte(info)
	cb[2] = 1 + byte(dir)
	binary.LittleEndian.PutUint32(cb[4:], c.ID())
	binary.LittleEndian.PutUint32(cb[8:], c.Gen())
}

// ref reads the reference; ok is false when conntrack never saw skb.
func (nf *Netfilter) ref(skb *buf.SKB) (c *conntrack.Conn, dir conntrack.Dir, info conntrack.Info, ok bool) {
	cb := skb.CB[cbCT : cbCT+12]
	if cb[0] != cbCTValid {
		return nil, 0, 0, false
	}
	info = conntrack.Info(cb[1])
	if cb[2] == 0 {
		return nil, 0, info, true
	}
	c = nf.ct.Get(binary.LittleEndian.Uint32(cb[4:]), binary.LittleEndian.Uint32(cb[8:]))
	if c == nil {
		return nil, 0, conntrack.InfoInvalid, true
	}
	return c, conntrack.Dir(cb[2] - 1), info, true
}

// pkt is the evaluation context of one packet at one hook (struct
// xt_action_param plus the parsed headers). Pooled: the rule engine calls
// matches through interfaces, so a stack value would escape.
type pkt struct {
	nf  *Netfilter
	skb *buf.SKB
	st  State
	ct  conntrack.Packet
	ok  bool // parsed

	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	ports        bool
	length       int

	conn   *conntrack.Conn
	dir    conntrack.Dir
	info   conntrack.Info
	hasRef bool

	names [2]string
	named [2]bool
}

var pktPool = sync.Pool{New: func() any { return new(pkt) }}

func (nf *Netfilter) getPkt(skb *buf.SKB, st State) *pkt {
	p := pktPool.Get().(*pkt)
	*p = pkt{nf: nf, skb: skb, st: st}
	err := conntrack.Parse(skb.Bytes(), &p.ct)
	if p.ct.IP != nil || p.ct.IP6 != nil {
		p.ok = true
		p.src, p.dst, p.proto, p.length = p.ct.Tuple.Src, p.ct.Tuple.Dst, p.ct.Tuple.Proto, p.ct.Length
		if err == nil && (p.proto == header.ProtoTCP || p.proto == header.ProtoUDP) {
			p.ports = true
			p.sport, p.dport = p.ct.Tuple.SrcPort, p.ct.Tuple.DstPort
		}
	}
	p.conn, p.dir, p.info, p.hasRef = nf.ref(skb)
	return p
}

func putPkt(p *pkt) {
	*p = pkt{}
	pktPool.Put(p)
}

func (p *pkt) linkName(out bool) string {
	i := 0
	id := p.st.In
	if out {
		i, id = 1, p.st.Out
	}
	if !p.named[i] {
		p.named[i] = true
		if id != 0 && p.nf.devs != nil {
			if n := p.nf.devs.ByID(id); n != nil {
				p.names[i] = n.Name()
			}
		}
	}
	return p.names[i]
}

func (p *pkt) ctState() CtState {
	if !p.hasRef {
		return CtUntracked
	}
	return ctInfoState(p.info)
}

// maxDepth bounds nested jumps (the kernel's per-cpu jumpstack is sized
// by the number of chains; Load refuses loops, so this is only a guard).
const maxDepth = 32

// run evaluates chain c for p (ipt_do_table) and returns the verdict.
func (p *pkt) run(c *Chain) verdict {
	type frame struct {
		c *Chain
		i int
	}
	var stack [maxDepth]frame
	depth := 0
	base := c
	i := 0
	for {
		if i >= len(c.Rules) {
			if depth == 0 {
				break
			}
			depth--
			c, i = stack[depth].c, stack[depth].i
			continue
		}
		r := c.Rules[i]
		matched := true
		for _, m := range r.Matches {
			if !m.match(p) {
				matched = false
				break
			}
		}
		if !matched {
			i++
			continue
		}
		r.packets.Add(1)
		r.bytes.Add(uint64(p.length))
		v := r.Target.target(p)
		switch v.kind {
		case vContinue:
			i++
		case vReturn:
			if depth == 0 {
				i = len(c.Rules) // to the policy
				continue
			}
			depth--
			c, i = stack[depth].c, stack[depth].i
		case vJump:
			if depth == maxDepth {
				return dropV(DropJumpDepth)
			}
			stack[depth] = frame{c, i + 1}
			depth++
			c, i = c.jumps[i], 0
		default:
			return v
		}
	}
	base.packets.Add(1)
	base.bytes.Add(uint64(p.length))
	if base.Policy == PolicyDrop {
		return dropV(DropPolicy)
	}
	return acceptV
}

func toVerdict(v verdict) Verdict {
	switch v.kind {
	case vDrop:
		return Drop(v.reason)
	case vStolen:
		return Stolen()
	}
	return Accept()
}

// runTable evaluates the built-in chain of table ti at st.Hook.
func (nf *Netfilter) runTable(ti int, skb *buf.SKB, st State) Verdict {
	c := nf.rules.Load().byHook[ti][st.Hook]
	if c == nil {
		return Accept()
	}
	if len(c.Rules) == 0 {
		c.packets.Add(1)
		c.bytes.Add(uint64(skb.Len()))
		if c.Policy == PolicyDrop {
			nf.killUnconfirmed(skb)
			return Drop(DropPolicy)
		}
		return Accept()
	}
	p := nf.getPkt(skb, st)
	v := p.run(c)
	if v.kind == vDrop && p.conn != nil && p.info == conntrack.InfoNew && p.conn.Status()&conntrack.StatusConfirmed == 0 {
		nf.ct.Kill(p.conn) // the kernel frees an unconfirmed conntrack with its packet
	}
	putPkt(p)
	return toVerdict(v)
}

func (nf *Netfilter) killUnconfirmed(skb *buf.SKB) {
	if c, _, info, ok := nf.ref(skb); ok && c != nil && info == conntrack.InfoNew && c.Status()&conntrack.StatusConfirmed == 0 {
		nf.ct.Kill(c)
	}
}

const (
	tiFilter = 0
	tiNAT    = 1
	tiMangle = 2
)

func (nf *Netfilter) filterHook(skb *buf.SKB, st State) Verdict {
	return nf.runTable(tiFilter, skb, st)
}
func (nf *Netfilter) mangleHook(skb *buf.SKB, st State) Verdict {
	return nf.runTable(tiMangle, skb, st)
}

// conntrackIn is the conntrack hook at PREROUTING and OUTPUT
// (ipv4_conntrack_in / ipv4_conntrack_local → nf_conntrack_in).
func (nf *Netfilter) conntrackIn(skb *buf.SKB, st State) Verdict {
	if st.Hook == PreRouting && st.In == 0 {
		// Looped back: tracked already on the way out (the kernel's
		// skb->_nfct survives the loopback device).
		if _, _, _, ok := nf.ref(skb); ok {
			return Accept()
		}
	}
	var p conntrack.Packet
	if err := conntrack.Parse(skb.Bytes(), &p); err != nil {
		// Malformed or an unreassembled fragment: INVALID, no flow.
		setRef(skb, nil, 0, conntrack.InfoInvalid)
		return Accept()
	}
	c, dir, info, err := nf.ct.In(&p)
	if err != nil {
		nf.stats.ctDrops.Add(1)
		if err == conntrack.ErrTableFull {
			return Drop(DropConntrackFull)
		}
		return Drop(DropNATNoTuple)
	}
	setRef(skb, c, dir, info)
	if c != nil {
		switch {
		case st.Hook == PreRouting && c.Mark.Load()&MarkDivert != 0:
			// A diverted flow: every later packet, both ways, is local.
			skb.Mark |= MarkDivert
		case st.Hook == LocalOut && skb.Mark&MarkDivert != 0:
			// A transparent socket's packet (IP_TRANSPARENT with a
			// foreign source): the flow is diverted from now on, so
			// the peer's replies to that foreign address are
			// delivered locally (the TPROXY "-m socket" rule's job).
			c.Mark.Or(MarkDivert)
		}
		// Reply-to (replyto.go): a reply-direction packet pays one
		// atomic load; only new flows look at the reply-to NICs.
		if dir == conntrack.Reply {
			if n := c.ReplyNIC(); n != 0 && n != st.In {
				setReplyNIC(skb, n)
			}
		} else if info == conntrack.InfoNew && st.In != 0 {
			nf.replyToNew(c, st.In)
		}
	}
	return Accept()
}

// CtState is the packet's conntrack state as the conntrack hook left it,
// for hook functions registered after PriConntrack (the ctstate match).
// ok is false when conntrack never saw skb (before the hook, or a looped
// packet untracked on the way out); a packet conntrack could not parse is
// CtInvalid with ok true.
func (nf *Netfilter) CtState(skb *buf.SKB) (CtState, bool) {
	_, _, info, ok := nf.ref(skb)
	if !ok {
		return 0, false
	}
	return ctInfoState(info), true
}

// Divert is what the DIVERT target does, for hook functions that decide
// in Go (the daemon's proxy hook in PREROUTING after PriConntrack): it
// sets MarkDivert on skb and on its conntrack entry, so this packet and
// every later packet of the flow, both ways, are delivered locally.
func (nf *Netfilter) Divert(skb *buf.SKB) {
	skb.Mark |= MarkDivert
	if c, _, _, ok := nf.ref(skb); ok && c != nil {
		c.Mark.Or(MarkDivert)
	}
}

// confirm is the last function at POSTROUTING and INPUT
// (ipv4_confirm → nf_conntrack_confirm).
func (nf *Netfilter) confirm(skb *buf.SKB, st State) Verdict {
	if c, _, _, ok := nf.ref(skb); ok && c != nil {
		nf.ct.Confirm(c)
	}
	return Accept()
}

// linkAddr is the address MASQUERADE and REDIRECT use on a link: the
// first address whose prefix holds peer, else the first address
// (inet_select_addr); for an IPv6 peer, RFC 6724's choice among the
// link's addresses (ipv6_dev_get_saddr, as nf_nat_masquerade_ipv6).
func (nf *Netfilter) linkAddr(nicID int, peer netip.Addr) (netip.Addr, bool) {
	if peer.Is6() {
		if nf.fib == nil {
			return netip.Addr{}, false
		}
		return nf.fib.SelectSource6(nicID, peer)
	}
	if nf.devs == nil {
		return netip.Addr{}, false
	}
	n := nf.devs.ByID(nicID)
	if n == nil {
		return netip.Addr{}, false
	}
	addrs := n.Addresses()
	for _, a := range addrs {
		if a.Addr().Is4() && a.Contains(peer) {
			return a.Addr(), true
		}
	}
	for _, a := range addrs {
		if a.Addr().Is4() {
			return a.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// log writes one LOG line if the rate limit allows (ipt_LOG's
// nf_log_packet, limited like -m limit).
func (nf *Netfilter) log(p *pkt, prefix string) {
	nf.stats.logged.Add(1)
	if !nf.logRL.allow() {
		nf.stats.logSuppressed.Add(1)
		return
	}
	nf.logger.Info("netfilter", slog.String("prefix", prefix), slog.String("hook", p.st.Hook.String()),
		slog.String("in", p.linkName(false)), slog.String("out", p.linkName(true)),
		slog.String("src", p.src.String()), slog.String("dst", p.dst.String()),
		slog.Int("len", p.length), slog.String("proto", header.ProtoName(p.proto)),
		slog.Int("sport", int(p.sport)), slog.Int("dport", int(p.dport)),
		slog.Uint64("mark", uint64(p.skb.Mark)), slog.String("ctstate", p.ctState().String()))
}

// bucket is a token bucket on the stack's clock.
type bucket struct {
	mu     sync.Mutex
	clk    clock.Clock
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *bucket) init(clk clock.Clock, rate, burst int) {
	b.clk, b.rate, b.burst, b.tokens, b.last = clk, float64(rate), float64(burst), float64(burst), clk.Now()
}

func (b *bucket) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clk.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
