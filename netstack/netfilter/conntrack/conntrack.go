package conntrack

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Info is how a packet relates to its Conn (enum ip_conntrack_info, plus
// the invalid and untracked cases of the ctstate match).
type Info uint8

const (
	InfoInvalid Info = iota
	InfoNew
	InfoEstablished
	InfoRelated
	InfoUntracked
)

var infoNames = [...]string{"INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED"}

func (i Info) String() string {
	if int(i) < len(infoNames) {
		return infoNames[i]
	}
	return "Info?"
}

// Status bits of a Conn (enum ip_conntrack_status).
const (
	StatusSeenReply uint32 = 1 << iota
	StatusAssured
	StatusConfirmed
	StatusSrcNAT
	StatusDstNAT
	StatusSrcNATDone // a source binding (or the null binding) is set up
	StatusDstNATDone
	StatusDying
)

// Defaults (the kernel's sysctl defaults, nf_conntrack_*_timeout_*).
const (
	DefaultMax = 65536

	// UDPStreamAfter is how long a replied UDP flow must stay active to
	// become a stream (the kernel's stream_ts: 2 s). The proxy's UDP
	// flows use the same line (daemon/proxy, udp.go).
	UDPStreamAfter = 2 * time.Second

	// earlyDropScan bounds the slots examined for an unreplied Conn when
	// the table is full (NF_CT_EVICTION_RANGE is 8 hash buckets).
	earlyDropScan = 256
	// maxPortTries bounds the candidates BindNAT examines (nf_nat_l4proto_unique_tuple
	// gives up after 128 random attempts; we walk the range deterministically).
	maxPortTries = 65536
)

// Timeouts are per-state idle timeouts.
type Timeouts struct {
	TCPSynSent, TCPSynRecv, TCPEstablished, TCPFinWait, TCPCloseWait,
	TCPLastAck, TCPTimeWait, TCPClose, TCPUnacknowledged time.Duration
	UDP, UDPStream, ICMP, Generic time.Duration
	// Unconfirmed is the lifetime of a Conn whose first packet never left
	// the stack (the kernel frees such an entry with the packet).
	Unconfirmed time.Duration
}

// DefaultTimeouts are Linux's.
var DefaultTimeouts = Timeouts{
	TCPSynSent: 120 * time.Second, TCPSynRecv: 60 * time.Second, TCPEstablished: 5 * 24 * time.Hour,
	TCPFinWait: 120 * time.Second, TCPCloseWait: 60 * time.Second, TCPLastAck: 30 * time.Second,
	TCPTimeWait: 120 * time.Second, TCPClose: 10 * time.Second, TCPUnacknowledged: 300 * time.Second,
	UDP: 30 * time.Second, UDPStream: 120 * time.Second, ICMP: 30 * time.Second, Generic: 600 * time.Second,
	Unconfirmed: 10 * time.Second,
}

// Config sets the table's limits and policies.
type Config struct {
	// Max bounds the number of Conns (nf_conntrack_max); 0 = DefaultMax.
	Max int
	// Liberal skips the TCP window check: only RST outside the window is
	// invalid (nf_conntrack_tcp_be_liberal).
	Liberal bool
	// NoPickup refuses to track TCP flows seen mid-stream; by default an
	// ACK without a Conn opens one in ESTABLISHED (nf_conntrack_tcp_loose=1).
	NoPickup bool
	// Timeouts; zero fields take DefaultTimeouts.
	Timeouts Timeouts
}

// Stats are the counters of `conntrack -S`.
type Stats struct {
	Found, New, Invalid, Insert, InsertFailed, Drop, EarlyDrop, Expired, Deleted uint64
	Entries                                                                      int
}

// Errors.
var (
	// ErrTableFull: no room for a new flow and none to evict (drop it).
	ErrTableFull = errors.New("conntrack: table full")
	// ErrNoTuple: NAT found no free tuple in the range.
	ErrNoTuple = errors.New("conntrack: no free tuple for NAT")
)

// Conn is one tracked flow (struct nf_conn).
type Conn struct {
	t      *Table
	id     uint32 // slot
	gen    uint32
	orig   Tuple                 // immutable
	reply  atomic.Pointer[Tuple] // replaced (under Table.mu) by a NAT binding; read lock-free
	status atomic.Uint32
	Mark   atomic.Uint32

	expires atomic.Int64 // clock ns of the idle deadline: dead from then on
	created time.Time

	mu  sync.Mutex // guards tcp
	tcp tcpConn

	packets, bytes [2]atomic.Uint64
	// replyNIC is the NIC the reply direction is routed out of, 0 for
	// the FIB's choice (SetReplyNIC). Last, so the fields every packet
	// touches keep their offsets.
	replyNIC atomic.Int32
}

// Tuple returns the tuple of direction d; it takes no lock.
func (c *Conn) Tuple(d Dir) Tuple {
	if d == Original {
		return c.orig
	}
	return *c.reply.Load()
}

// Status returns the status bits.
func (c *Conn) Status() uint32 { return c.status.Load() }

// ID and Gen identify the Conn for Get: a reference that outlives the Conn
// finds nothing, never another flow.
func (c *Conn) ID() uint32  { return c.id }
func (c *Conn) Gen() uint32 { return c.gen }

// SetReplyNIC records nic, the NIC the flow's first packet arrived on, as
// the NIC its replies leave through (netfilter's reply-to). Only the
// first call sets it; it reports whether this one did.
func (c *Conn) SetReplyNIC(nic int) bool {
	return nic > 0 && nic <= math.MaxInt32 && c.replyNIC.CompareAndSwap(0, int32(nic))
}

// ReplyNIC is the NIC SetReplyNIC recorded, 0 when none: one atomic load,
// read for every reply-direction packet of the flow.
func (c *Conn) ReplyNIC() int { return int(c.replyNIC.Load()) }

// TCPState is the TCP tracking state (nf_conntrack_proto_tcp's tcp_conntrack).
func (c *Conn) TCPState() TCPState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tcp.state
}

// Counters returns the packets and bytes seen in direction d.
func (c *Conn) Counters(d Dir) (packets, bytes uint64) {
	return c.packets[d].Load(), c.bytes[d].Load()
}

// Table is the connection table of one stack.
type Table struct {
	clk  clock.Clock
	cfg  Config
	to   Timeouts
	mu   sync.RWMutex
	hash map[Tuple]tupleRef // both tuples of every Conn
	// slots is the Conn of each ID; free lists unused IDs. Bound: cfg.Max.
	slots  []*Conn
	gens   []uint32
	free   []uint32
	count  int
	cursor int // early drop scan position
	hi     int // highest slot ever used + 1: the collector looks below it

	// gc runs collect every gcInterval while the table holds Conns
	// (gcArmed, under mu).
	gc      *clock.Timer
	gcArmed bool
	// gcCrowded is set (under mu) when a new flow was refused for a
	// full table: the collector's next sweep also evicts what
	// canEarlyDrop while the table is over 95% full, then clears it
	// (gc_worker's early_drop).
	gcCrowded bool
	gcDead    []*Conn // collect's scratch (the timer's goroutine only); at most gcChunk

	found, new_, invalid, insert, insertFailed, drop, earlyDrop, expired, deleted atomic.Uint64
}

type tupleRef struct {
	c   *Conn
	dir Dir
}

// New returns an empty table driven by clk.
func New(clk clock.Clock, cfg Config) *Table {
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	t := &Table{clk: clk, cfg: cfg, hash: map[Tuple]tupleRef{}}
	t.gc = clk.NewTimer(t.collect)
	t.to = fillTimeouts(cfg.Timeouts)
	t.slots = make([]*Conn, cfg.Max)
	t.gens = make([]uint32, cfg.Max)
	t.free = make([]uint32, cfg.Max)
	for i := range t.free {
		t.free[i] = uint32(cfg.Max - 1 - i)
	}
	return t
}

func fillTimeouts(to Timeouts) Timeouts {
	d := DefaultTimeouts
	for _, f := range []struct{ v, def *time.Duration }{
		{&to.TCPSynSent, &d.TCPSynSent}, {&to.TCPSynRecv, &d.TCPSynRecv}, {&to.TCPEstablished, &d.TCPEstablished},
		{&to.TCPFinWait, &d.TCPFinWait}, {&to.TCPCloseWait, &d.TCPCloseWait}, {&to.TCPLastAck, &d.TCPLastAck},
		{&to.TCPTimeWait, &d.TCPTimeWait}, {&to.TCPClose, &d.TCPClose}, {&to.TCPUnacknowledged, &d.TCPUnacknowledged},
		{&to.UDP, &d.UDP}, {&to.UDPStream, &d.UDPStream}, {&to.ICMP, &d.ICMP}, {&to.Generic, &d.Generic},
		{&to.Unconfirmed, &d.Unconfirmed},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return to
}

// Max is the table's bound.
func (t *Table) Max() int { return t.cfg.Max }

// Get returns the live Conn with id and gen, or nil.
func (t *Table) Get(id, gen uint32) *Conn {
	if int(id) >= len(t.slots) {
		return nil
	}
	t.mu.RLock()
	c := t.slots[id]
	t.mu.RUnlock()
	if c == nil || c.gen != gen {
		return nil
	}
	return c
}

// Lookup finds the live Conn a tuple belongs to and its direction.
func (t *Table) Lookup(tu Tuple) (*Conn, Dir, bool) {
	return t.lookup(tu, t.clk.Now().UnixNano())
}

// lookup is Lookup at clock time now: a Conn past its deadline is not
// found (nf_ct_is_expired; the collector or the next create of its
// tuple removes it).
func (t *Table) lookup(tu Tuple, now int64) (*Conn, Dir, bool) {
	t.mu.RLock()
	r, ok := t.hash[tu]
	t.mu.RUnlock()
	if !ok || r.c.expires.Load() <= now {
		return nil, Original, false
	}
	return r.c, r.dir, true
}

// In tracks one datagram (nf_conntrack_in): p was filled by Parse. It
// returns the Conn (nil for Untracked and most Invalid), the packet's
// direction and its Info. ErrTableFull means the packet opened a flow the
// table has no room for: drop it.
func (t *Table) In(p *Packet) (*Conn, Dir, Info, error) {
	tu := p.Tuple
	if p.Inner != nil || p.Inner6 != nil {
		return t.related(p)
	}
	if p.Tuple.Proto == header.ProtoICMP && p.ICMP != nil {
		typ := p.ICMP.Type()
		if _, q := icmpQuery(typ); !q && !icmpReply(typ) {
			return nil, Original, InfoUntracked, nil // redirects, router adverts: not flows
		}
	}
	if p.Tuple.Proto == header.ProtoICMPv6 && p.ICMP6 != nil {
		typ := p.ICMP6.Type()
		if _, q := icmp6Query(typ); !q && !icmp6Reply(typ) {
			// Neighbor Discovery, MLD, router messages: not flows
			// (nf_conntrack_proto_icmpv6 leaves them untracked).
			return nil, Original, InfoUntracked, nil
		}
	}
	now := t.clk.Now()
	if c, dir, ok := t.lookup(tu, now.UnixNano()); ok {
		t.found.Add(1)
		return t.packet(c, dir, p, now)
	}
	// A new flow: only some first packets may open one.
	switch tu.Proto {
	case header.ProtoTCP:
		if !tcpMayOpen(p.TCP, !t.cfg.NoPickup) {
			t.invalid.Add(1)
			return nil, Original, InfoInvalid, nil
		}
	case header.ProtoICMP:
		// p.ICMP is nil for an IPv6 packet whose Next Header happens to
		// be 1: a protocol without ports there, tracked generically.
		if p.ICMP != nil {
			if _, q := icmpQuery(p.ICMP.Type()); !q {
				t.invalid.Add(1) // an answer to nothing
				return nil, Original, InfoInvalid, nil
			}
		}
	case header.ProtoICMPv6:
		if p.ICMP6 != nil { // and ICMPv6's number in an IPv4 header
			if _, q := icmp6Query(p.ICMP6.Type()); !q {
				t.invalid.Add(1)
				return nil, Original, InfoInvalid, nil
			}
		}
	}
	c, err := t.create(tu, now)
	if err != nil {
		if err == errRace {
			return t.In(p)
		}
		return nil, Original, InfoInvalid, err
	}
	if tu.Proto == header.ProtoTCP {
		c.mu.Lock()
		c.tcp.open(p.TCP, p.L4)
		c.mu.Unlock()
	}
	c.account(Original, p.Length)
	t.new_.Add(1)
	return c, Original, InfoNew, nil
}

var errRace = errors.New("conntrack: lost an insert race")

// create inserts an unconfirmed Conn for tu (init_conntrack), evicting an
// unreplied Conn when the table is full.
func (t *Table) create(tu Tuple, now time.Time) (*Conn, error) {
	t.mu.Lock()
	// A dead Conn still holding either tuple goes first, as the kernel
	// drops an expired conntrack it finds on insert.
	t.reapLocked(tu, now.UnixNano())
	t.reapLocked(tu.Reverse(), now.UnixNano())
	if _, ok := t.hash[tu]; ok {
		t.mu.Unlock()
		return nil, errRace
	}
	if t.count >= t.cfg.Max && !t.earlyDropLocked(now.UnixNano()) {
		t.gcCrowded = true
		t.mu.Unlock()
		t.drop.Add(1)
		return nil, ErrTableFull
	}
	id := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	t.gens[id]++
	c := &Conn{t: t, id: id, gen: t.gens[id], created: now}
	c.orig = tu
	rev := tu.Reverse()
	c.reply.Store(&rev)
	if _, taken := t.hash[rev]; taken {
		// Our natural reply tuple is another flow's translated one: move
		// our source port, as the kernel's null binding does
		// (nf_nat_alloc_null_binding → get_unique_tuple).
		r, ok := t.uniqueLocked(c, ManipSrc, Range{Min: tu.Src, Max: tu.Src})
		if !ok {
			t.gens[id]--
			t.free = append(t.free, id)
			t.mu.Unlock()
			t.insertFailed.Add(1)
			return nil, ErrNoTuple
		}
		c.reply.Store(&r)
		c.status.Or(StatusSrcNAT | StatusSrcNATDone)
	}
	if tu.Proto == header.ProtoTCP {
		c.tcp.liberal = t.cfg.Liberal
	}
	t.slots[id] = c
	t.hash[c.orig] = tupleRef{c, Original}
	t.hash[c.Tuple(Reply)] = tupleRef{c, Reply}
	t.count++
	t.insert.Add(1)
	c.expires.Store(now.Add(t.to.Unconfirmed).UnixNano())
	t.hi = max(t.hi, int(id)+1)
	if !t.gcArmed {
		t.gcArmed = true
		t.gc.Reset(gcInterval)
	}
	t.mu.Unlock()
	return c, nil
}

// earlyDropLocked evicts one Conn that has seen no reply (early_drop), or
// one past its deadline that the collector has not swept yet, scanning
// at most earlyDropScan slots from a rotating cursor.
func (t *Table) earlyDropLocked(now int64) bool {
	n := len(t.slots)
	for i := 0; i < earlyDropScan && i < n; i++ {
		t.cursor = (t.cursor + 1) % n
		c := t.slots[t.cursor]
		switch {
		case c == nil:
		case c.expires.Load() <= now:
			// Dead, not yet collected: its room is free.
			t.removeLocked(c)
			t.expired.Add(1)
			return true
		case c.canEarlyDrop():
			t.removeLocked(c)
			t.earlyDrop.Add(1)
			return true
		}
	}
	return false
}

// canEarlyDrop is the kernel's gc_worker_can_early_drop: c may make room
// for a new flow when it was never answered (not ASSURED) or is a TCP
// flow already closing (tcp_can_early_drop: FIN_WAIT, CLOSE_WAIT,
// LAST_ACK, TIME_WAIT, CLOSE), whose endpoints have said goodbye. Those
// last hold a full table for up to 120 s after their connection ended:
// a node opening short connections faster than Max / 120 s would
// otherwise refuse every new flow. The kernel's insert path (early_drop)
// takes only the unanswered ones and leaves closing ones to its
// collector, which evicts them down to 95% once an insert has failed;
// ours takes both at once, so no new flow is refused while an ended one
// holds a slot in the scanned range. Lock order: Table.mu is held.
func (c *Conn) canEarlyDrop() bool {
	if c.status.Load()&StatusAssured == 0 {
		return true
	}
	if c.orig.Proto != header.ProtoTCP {
		return false
	}
	c.mu.Lock()
	st := c.tcp.state
	c.mu.Unlock()
	switch st {
	case TCPFinWait, TCPCloseWait, TCPLastAck, TCPTimeWait, TCPClose:
		return true
	}
	return false
}

// removeLocked unlinks c; its slot is reused with a new generation.
func (t *Table) removeLocked(c *Conn) bool {
	if t.slots[c.id] != c {
		return false
	}
	c.status.Or(StatusDying)
	delete(t.hash, c.orig)
	delete(t.hash, c.Tuple(Reply))
	t.slots[c.id] = nil
	t.free = append(t.free, c.id)
	t.count--
	return true
}

// reapLocked removes the Conn holding tu if it is past its deadline.
func (t *Table) reapLocked(tu Tuple, now int64) {
	if r, ok := t.hash[tu]; ok && r.c.expires.Load() <= now && t.removeLocked(r.c) {
		t.expired.Add(1)
	}
}

// The collector (gc_worker in nf_conntrack_core.c, which replaced the
// per-conntrack timers in Linux 4.7): no Conn has a timer of its own;
// a packet only stores its Conn's new deadline, lookups treat a Conn past
// it as gone, and collect removes the dead ones every gcInterval while
// the table is not empty, looking gcChunk slots at a time. So
// a flow costs no timer, no timer heap operation when its state changes
// its timeout, and an idle table no wake-up.
const (
	gcInterval = time.Second
	gcChunk    = 1024
)

// collect is the gc timer's callback: one sweep of the used slots. It
// looks under the read lock, so packets' lookups go on meanwhile, and
// takes the write lock only to remove what it found dead (looked at
// again there: a packet of a flow it had just found may have moved the
// deadline). After a new flow was refused for a full table (gcCrowded),
// the sweep also evicts the Conns that canEarlyDrop while the table is
// over 95% full (gc_worker's nf_conntrack_max95), counted as early
// drops: the scan of a full table's insert looks at earlyDropScan slots
// only, the sweep at all of them.
func (t *Table) collect() {
	now := t.clk.Now().UnixNano()
	max95 := t.cfg.Max / 100 * 95
	t.mu.Lock()
	crowding := t.gcCrowded
	t.gcCrowded = false
	t.mu.Unlock()
	for lo := 0; ; lo += gcChunk {
		t.mu.RLock()
		hi := t.hi
		crowded := crowding && t.count > max95
		if lo < hi {
			for _, c := range t.slots[lo:min(lo+gcChunk, hi)] {
				if c != nil && (c.expires.Load() <= now || crowded && c.canEarlyDrop()) {
					t.gcDead = append(t.gcDead, c)
				}
			}
		}
		t.mu.RUnlock()
		if len(t.gcDead) > 0 {
			t.mu.Lock()
			for _, c := range t.gcDead {
				switch {
				case c.expires.Load() <= now:
					if t.removeLocked(c) {
						t.expired.Add(1)
					}
				case crowded && t.count > max95 && c.canEarlyDrop():
					if t.removeLocked(c) {
						t.earlyDrop.Add(1)
					}
				}
			}
			t.mu.Unlock()
			clear(t.gcDead)
			t.gcDead = t.gcDead[:0]
		}
		if lo >= hi {
			break
		}
	}
	t.mu.Lock()
	if t.count > 0 {
		t.gc.Reset(gcInterval)
	} else {
		t.gcArmed = false
	}
	t.mu.Unlock()
}

// Kill removes c at once (conntrack -D, or its first packet was dropped).
func (t *Table) Kill(c *Conn) {
	t.mu.Lock()
	ok := t.removeLocked(c)
	t.mu.Unlock()
	if ok {
		t.deleted.Add(1)
	}
}

// Confirm marks c as having left the stack (__nf_conntrack_confirm) and
// gives it its state's timeout.
func (t *Table) Confirm(c *Conn) {
	if c.status.Load()&StatusConfirmed != 0 {
		return
	}
	c.status.Or(StatusConfirmed)
	c.mu.Lock()
	to := t.timeoutLocked(c)
	c.mu.Unlock()
	c.refresh(t.clk.Now(), to)
}

// packet updates an existing Conn for a packet in direction dir.
func (t *Table) packet(c *Conn, dir Dir, p *Packet, now time.Time) (*Conn, Dir, Info, error) {
	info := InfoEstablished
	if dir == Reply && c.status.Load()&StatusSeenReply == 0 {
		c.status.Or(StatusSeenReply)
	}
	c.mu.Lock()
	switch c.orig.Proto {
	case header.ProtoTCP:
		res := c.tcp.packet(dir, p.TCP, p.L4)
		switch res {
		case tcpInvalid:
			c.mu.Unlock()
			t.invalid.Add(1)
			c.account(dir, p.Length)
			return c, dir, InfoInvalid, nil
		case tcpReopen:
			c.mu.Unlock()
			// A new SYN on a closed flow (tcp_new after TIME_WAIT): the
			// old Conn goes, the packet opens a fresh one.
			t.Kill(c)
			return t.In(p)
		}
		if c.tcp.state == TCPEstablished && c.status.Load()&StatusAssured == 0 {
			c.status.Or(StatusAssured)
		}
		if dir == Original && c.status.Load()&StatusSeenReply == 0 {
			info = InfoNew // SYN retransmits are still NEW
		}
	case header.ProtoUDP:
		// nf_conntrack_udp_packet: a replied flow is a stream, ASSURED
		// and kept UDPStream (120 s), only once it is still active
		// UDPStreamAfter after it began; a query and its answer (DNS)
		// keep the UDP timeout (30 s) and may be evicted from a full
		// table, as each of a node's lookups opens a flow.
		if c.status.Load()&StatusSeenReply == 0 {
			info = InfoNew
		} else if now.Sub(c.created) > UDPStreamAfter {
			c.status.Or(StatusAssured)
		}
	case header.ProtoICMP, header.ProtoICMPv6:
		if c.status.Load()&StatusSeenReply == 0 {
			info = InfoNew
		} else if dir == Reply {
			c.status.Or(StatusAssured)
		}
	default:
		if c.status.Load()&StatusSeenReply == 0 {
			info = InfoNew
		} else {
			c.status.Or(StatusAssured)
		}
	}
	to := t.timeoutLocked(c)
	c.mu.Unlock()
	if c.status.Load()&StatusConfirmed != 0 {
		c.refresh(now, to)
	}
	c.account(dir, p.Length)
	return c, dir, info, nil
}

// related classifies an ICMP error by the flow of the datagram it quotes
// (nf_conntrack_icmp_error / icmp_error_message): the quote travelled in
// the opposite direction, so its reversed tuple finds the flow.
func (t *Table) related(p *Packet) (*Conn, Dir, Info, error) {
	var in Tuple
	var ok bool
	if p.Inner6 != nil {
		in, ok = innerTuple6(p.Inner6, p.InnerL4Off)
	} else {
		in, ok = innerTuple(p.Inner)
	}
	if !ok {
		t.invalid.Add(1)
		return nil, Original, InfoInvalid, nil
	}
	c, dir, ok := t.Lookup(in.Reverse())
	if !ok {
		t.invalid.Add(1)
		return nil, Original, InfoInvalid, nil
	}
	t.found.Add(1)
	c.account(dir, p.Length)
	return c, dir, InfoRelated, nil
}

func (c *Conn) account(dir Dir, n int) {
	c.packets[dir].Add(1)
	c.bytes[dir].Add(uint64(n))
}

// timeoutLocked is the idle timeout for c's state; c.mu held.
func (t *Table) timeoutLocked(c *Conn) time.Duration {
	st := c.status.Load()
	if st&StatusConfirmed == 0 {
		return t.to.Unconfirmed
	}
	switch c.orig.Proto {
	case header.ProtoTCP:
		return c.tcp.timeout(&t.to)
	case header.ProtoUDP:
		if st&StatusAssured != 0 {
			return t.to.UDPStream
		}
		return t.to.UDP
	case header.ProtoICMP, header.ProtoICMPv6:
		return t.to.ICMP
	}
	return t.to.Generic
}

// refresh moves the idle deadline to now+d (one atomic store; an
// earlier deadline, TCP entering TIME_WAIT, is as cheap as a later one:
// no timer to re-arm).
func (c *Conn) refresh(now time.Time, d time.Duration) {
	c.expires.Store(now.Add(d).UnixNano())
}

// Stats returns the counters.
func (t *Table) Stats() Stats {
	t.mu.RLock()
	n := t.count
	t.mu.RUnlock()
	return Stats{Found: t.found.Load(), New: t.new_.Load(), Invalid: t.invalid.Load(), Insert: t.insert.Load(),
		InsertFailed: t.insertFailed.Load(), Drop: t.drop.Load(), EarlyDrop: t.earlyDrop.Load(),
		Expired: t.expired.Load(), Deleted: t.deleted.Load(), Entries: n}
}

// Len is the number of Conns.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.count
}

// Entry is one line of List.
type Entry struct {
	Original, Reply Tuple
	TCPState        TCPState
	Status          uint32
	Mark            uint32
	ReplyNIC        int           // Conn.ReplyNIC
	Timeout         time.Duration // remaining
	Packets, Bytes  [2]uint64
}

// List returns every Conn, ordered by original tuple text (conntrack -L).
func (t *Table) List() []Entry {
	now := t.clk.Now().UnixNano()
	t.mu.RLock()
	out := make([]Entry, 0, t.count)
	var cs []*Conn
	for _, c := range t.slots[:t.hi] {
		if c != nil && c.expires.Load() > now {
			cs = append(cs, c)
		}
	}
	t.mu.RUnlock()
	for _, c := range cs {
		c.mu.Lock()
		e := Entry{Original: c.orig, Reply: c.Tuple(Reply), TCPState: c.tcp.state, Status: c.status.Load(),
			Mark: c.Mark.Load(), ReplyNIC: c.ReplyNIC(), Timeout: time.Duration(c.expires.Load() - now)}
		c.mu.Unlock()
		for d := Original; d <= Reply; d++ {
			e.Packets[d], e.Bytes[d] = c.Counters(d)
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Original.String() < out[j].Original.String() })
	return out
}

// String formats e as conntrack -L does.
func (e Entry) String() string {
	var b strings.Builder
	name := map[uint8]string{header.ProtoTCP: "tcp", header.ProtoUDP: "udp", header.ProtoICMP: "icmp", header.ProtoICMPv6: "icmpv6"}[e.Original.Proto]
	if name == "" {
		name = "unknown"
	}
	secs := int64(e.Timeout / time.Second)
	if secs < 0 {
		secs = 0
	}
	fmt.Fprintf(&b, "%-8s %d %d ", name, e.Original.Proto, secs)
	if e.Original.Proto == header.ProtoTCP {
		fmt.Fprintf(&b, "%s ", e.TCPState)
	}
	fmt.Fprintf(&b, "%s packets=%d bytes=%d ", e.Original, e.Packets[Original], e.Bytes[Original])
	if e.Status&StatusSeenReply == 0 {
		b.WriteString("[UNREPLIED] ")
	}
	fmt.Fprintf(&b, "%s packets=%d bytes=%d ", e.Reply, e.Packets[Reply], e.Bytes[Reply])
	if e.Status&StatusAssured != 0 {
		b.WriteString("[ASSURED] ")
	}
	fmt.Fprintf(&b, "mark=%d use=1", e.Mark)
	return b.String()
}
