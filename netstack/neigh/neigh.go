package neigh

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Config holds the NUD parameters (neigh_parms); zero fields take the
// Linux defaults.
type Config struct {
	// BaseReachable is base_reachable_time (30s); an entry stays Reachable
	// for a random time in [0.5, 1.5) x BaseReachable (RFC 4861 §6.3.2).
	BaseReachable time.Duration
	// RetransTime is the interval between requests (1s).
	RetransTime time.Duration
	// MaxProbes is the number of requests sent before giving up, both
	// broadcast ones in Incomplete (mcast_solicit) and unicast ones in
	// Probe (ucast_solicit): 3.
	MaxProbes int
	// DelayProbe is delay_first_probe_time (5s).
	DelayProbe time.Duration
	// MaxPending bounds each entry's queue of unresolved packets in
	// packets (101) and MaxPendingBytes in bytes (212992, Linux's
	// unres_qlen_bytes): enough for every fragment of a 64 KiB datagram.
	MaxPending      int
	MaxPendingBytes int
	// MaxEntries bounds the table (1024, gc_thresh3).
	MaxEntries int
	// GCStale is gc_stale_time (60s): a Stale entry unused this long is
	// collected first when the table is full.
	GCStale time.Duration
}

func (c *Config) setDefaults() {
	if c.BaseReachable <= 0 {
		c.BaseReachable = 30 * time.Second
	}
	if c.RetransTime <= 0 {
		c.RetransTime = time.Second
	}
	if c.MaxProbes <= 0 {
		c.MaxProbes = 3
	}
	if c.DelayProbe <= 0 {
		c.DelayProbe = 5 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 101
	}
	if c.MaxPendingBytes <= 0 {
		c.MaxPendingBytes = 212992
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 1024
	}
	if c.GCStale <= 0 {
		c.GCStale = 60 * time.Second
	}
}

// State is a NUD state (NUD_*).
type State uint8

const (
	Incomplete State = iota
	Reachable
	Stale
	Delay
	Probe
	Failed
	Permanent
)

var stateNames = [...]string{"INCOMPLETE", "REACHABLE", "STALE", "DELAY", "PROBE", "FAILED", "PERMANENT"}

// String is the name `ip neigh` prints.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// valid reports whether the entry holds a usable link address (NUD_VALID).
func (s State) valid() bool {
	switch s {
	case Reachable, Stale, Delay, Probe, Permanent:
		return true
	}
	return false
}

// Entry is a snapshot of one neighbour.
type Entry struct {
	NIC    int
	Addr   netip.Addr
	MAC    header.MAC
	State  State
	Static bool
}

// Drop reasons (SKB_DROP_REASON_NEIGH_*, and NDP's).
var (
	DropNeighFailed     = buf.NewDropReason("NEIGH_FAILED")
	DropNeighQueueFull  = buf.NewDropReason("NEIGH_QUEUEFULL")
	DropNeighCreateFail = buf.NewDropReason("NEIGH_CREATEFAIL")
	DropNeighDead       = buf.NewDropReason("NEIGH_DEAD")
	DropARPInvalid      = buf.NewDropReason("ARP_INVALID")
	DropARPNotOurs      = buf.NewDropReason("ARP_NOT_FOR_US")
	// DropNDPInvalid: an NDP message failing RFC 4861's validity checks
	// (hop limit 255, code 0, lengths, options; §6.1, §7.1).
	DropNDPInvalid = buf.NewDropReason("IPV6_NDISC_BAD_OPTIONS")
	// DropNDPHopLimit: an NDP message whose hop limit is not 255 (it
	// crossed a router, RFC 4861 §7.1.1).
	DropNDPHopLimit = buf.NewDropReason("IPV6_NDISC_HOP_LIMIT")
	// DropNDPBadCode: an NDP message with a code other than 0.
	DropNDPBadCode = buf.NewDropReason("IPV6_NDISC_BAD_CODE")
	// DropNDPIgnored: a valid NDP message a router does not act on
	// (Router Advertisements and Redirects from others, solicitations for
	// addresses we do not answer for).
	DropNDPIgnored = buf.NewDropReason("IPV6_NDISC_IGNORED")
)

// Errors.
var (
	ErrBadAddress = errors.New("neigh: invalid address")
	ErrFull       = errors.New("neigh: table full")
)

// Stats are the ARP, NDP and neighbour-table counters (ndt_stats plus
// the ARP request/reply counts `nstat` lacks, and the Neighbor Discovery
// counts of Icmp6In/OutNeighborSolicits and friends).
type Stats struct {
	InRequests, InReplies   uint64 // valid ARP packets received
	OutRequests, OutReplies uint64 // ARP packets sent (requests include gratuitous)
	InErrors                uint64 // malformed ARP packets
	ResolutionFailures      uint64 // entries that went to Failed (res_failed)
	QueueDrops              uint64 // unresolved packets dropped (unres_discards)
	TableFull               uint64 // resolutions refused: no room (table_fulls)
	ForcedGC                uint64 // forced GC runs (forced_gc_runs)
	Entries                 int

	// Neighbor Discovery (RFC 4861), counted by neigh rather than by
	// the ICMPv6 MIB so that NDP's own decisions show.
	NDPInSolicits, NDPInAdverts         uint64 // valid NS / NA received
	NDPOutSolicits, NDPOutAdverts       uint64 // NS / NA sent (adverts include unsolicited ones)
	NDPInRouterSolicits, NDPInRedirects uint64 // valid RS / Redirects received
	NDPInRouterAdverts                  uint64 // valid RAs received (ignored: we route)
	NDPOutRouterAdverts                 uint64 // RAs sent (SetRouterAdvert)
	NDPInErrors                         uint64 // NDP messages failing RFC 4861 §6.1/§7.1 validation
	// DADReplies counts duplicate address detection probes answered for
	// our own addresses (RFC 4862 §5.4.3); DADConflicts counts
	// advertisements from another node claiming one of them (§5.4.4).
	DADReplies, DADConflicts uint64
}

type key struct {
	nic  int
	addr netip.Addr
}

type entry struct {
	key       key
	nic       *dev.NIC
	mac       header.MAC
	state     State
	probes    int // requests sent in the current Incomplete/Probe phase
	confirmed time.Time
	used      time.Time
	reachable time.Duration // this entry's randomized ReachableTime
	pending   buf.Queue     // bound: Config.MaxPending, overflow frees the oldest
	timer     *clock.Timer
	dead      bool
}

// Table is the ARP neighbour table of one stack.
type Table struct {
	clk  clock.Clock
	devs *dev.Devices
	cfg  Config

	mu         sync.Mutex
	entries    map[key]*entry // bound: cfg.MaxEntries
	proxy      map[int]func(netip.Addr) bool
	onFailure  func(skb *buf.SKB) // IPv4 packets (arp_error_report)
	onFailure6 func(skb *buf.SKB) // IPv6 packets (ndisc_error_report)
	ra         map[int]*raState   // NICs sending Router Advertisements (router.go)
	stats      Stats

	// router is the NA Router flag (RFC 4861 §4.4): IPv6 forwarding is on.
	router atomic.Bool
}

// New returns a table resolving for the NICs of devs. It registers for
// address-added notifications to send gratuitous ARP; the caller registers
// Rcv for header.EtherTypeARP.
func New(clk clock.Clock, devs *dev.Devices, cfg Config) *Table {
	cfg.setDefaults()
	t := &Table{
		clk:     clk,
		devs:    devs,
		cfg:     cfg,
		entries: map[key]*entry{},
		proxy:   map[int]func(netip.Addr) bool{},
		ra:      map[int]*raState{},
	}
	if devs != nil {
		devs.OnAddressAdded(t.addressAdded)
	}
	return t
}

// SetProxy sets the proxy ARP and proxy NDP policy of a NIC: ARP
// requests and Neighbor Solicitations for a target answer accepts are
// replied to with the NIC's MAC (for IPv6 only on a NIC with an IPv6
// address, only for a non-link-local target, and never to a duplicate
// address detection probe). nil turns it off.
func (t *Table) SetProxy(nicID int, answer func(target netip.Addr) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if answer == nil {
		delete(t.proxy, nicID)
	} else {
		t.proxy[nicID] = answer
	}
}

// SetFailureHandler sets fn, called for each queued IPv4 packet when its
// resolution fails, before the packet is freed; fn must not keep skb.
func (t *Table) SetFailureHandler(fn func(skb *buf.SKB)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.onFailure = fn
}

// SetFailureHandler6 is SetFailureHandler for IPv6 packets (the ipv6
// layer answers them with ICMPv6 address unreachable).
func (t *Table) SetFailureHandler6(fn func(skb *buf.SKB)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.onFailure6 = fn
}

// SetRouter sets the Router flag of our Neighbor Advertisements (RFC
// 4861 §4.4: set when the sender is a router); the stack sets it with
// IPv6 forwarding.
func (t *Table) SetRouter(on bool) { t.router.Store(on) }

// Stats returns a snapshot of the counters.
func (t *Table) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Entries = len(t.entries)
	return s
}

// AddStatic adds or replaces a Permanent entry (ip neigh replace ...
// nud permanent) for an IPv4 or unicast IPv6 address. Packets queued on a
// replaced entry are sent.
func (t *Table) AddStatic(nicID int, addr netip.Addr, mac header.MAC) error {
	addr = addr.WithZone("")
	if !resolvable(addr) || mac.IsMulticast() || mac.IsBroadcast() {
		return fmt.Errorf("%w: %v %v", ErrBadAddress, addr, mac)
	}
	nic := t.devs.ByID(nicID)
	if nic == nil {
		return fmt.Errorf("neigh: no NIC %d", nicID)
	}
	t.mu.Lock()
	e := t.entries[key{nicID, addr}]
	if e == nil {
		if e = t.allocLocked(key{nicID, addr}, nic); e == nil {
			t.stats.TableFull++
			t.mu.Unlock()
			return fmt.Errorf("%w: %d entries", ErrFull, t.cfg.MaxEntries)
		}
	}
	e.timer.Stop()
	e.mac, e.state, e.probes = mac, Permanent, 0
	q := e.pending.TakeAll()
	t.mu.Unlock()
	t.flush(nic, mac, etherType(addr), &q)
	return nil
}

// resolvable reports whether a is an address resolution applies to: an
// IPv4 address, or a unicast IPv6 address that is not IPv4-mapped.
func resolvable(a netip.Addr) bool {
	return a.Is4() || (a.Is6() && !a.Is4In6() && !a.IsMulticast() && !a.IsUnspecified())
}

// etherType is the EtherType of packets to a neighbour of a's family.
func etherType(a netip.Addr) header.EtherType {
	if a.Is6() {
		return header.EtherTypeIPv6
	}
	return header.EtherTypeIPv4
}

// Remove deletes an entry (ip neigh del); its queued packets are freed
// with NEIGH_DEAD.
func (t *Table) Remove(nicID int, addr netip.Addr) {
	addr = addr.WithZone("")
	t.mu.Lock()
	e := t.entries[key{nicID, addr}]
	var q buf.Queue
	if e != nil {
		q = t.unlinkLocked(e)
	}
	t.mu.Unlock()
	q.Purge(DropNeighDead)
}

// Flush removes every entry of a NIC (neigh_ifdown); the stack calls it
// when the NIC is removed.
func (t *Table) Flush(nicID int) {
	t.mu.Lock()
	t.stopRALocked(nicID)
	var all buf.Queue
	for k, e := range t.entries {
		if k.nic == nicID {
			q := t.unlinkLocked(e)
			for s := q.PopFront(); s != nil; s = q.PopFront() {
				all.PushBack(s)
			}
		}
	}
	t.mu.Unlock()
	all.Purge(DropNeighDead)
}

func (t *Table) unlinkLocked(e *entry) buf.Queue {
	e.dead = true
	e.timer.Stop()
	delete(t.entries, e.key)
	return e.pending.TakeAll()
}

// Lookup returns a snapshot of the entry for (nicID, addr).
func (t *Table) Lookup(nicID int, addr netip.Addr) (Entry, bool) {
	addr = addr.WithZone("")
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[key{nicID, addr}]
	if e == nil {
		return Entry{}, false
	}
	return e.snapshot(), true
}

// Entries returns a snapshot of every entry, in no particular order.
func (t *Table) Entries() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Entry, 0, len(t.entries))
	for _, e := range t.entries {
		out = append(out, e.snapshot())
	}
	return out
}

func (e *entry) snapshot() Entry {
	return Entry{NIC: e.key.nic, Addr: e.key.addr, MAC: e.mac, State: e.state, Static: e.state == Permanent}
}

// Confirm is upper-layer reachability advice (neigh_confirm, dst_confirm;
// RFC 4861 §7.3.1: forward progress confirms reachability): a resolved
// entry becomes Reachable for a fresh ReachableTime.
func (t *Table) Confirm(nicID int, addr netip.Addr) {
	addr = addr.WithZone("")
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[key{nicID, addr}]
	if e == nil || e.state == Permanent || !e.state.valid() {
		return
	}
	t.reachableLocked(e, t.clk.Now())
}

// reachableLocked moves e to Reachable and arms its aging timer.
func (t *Table) reachableLocked(e *entry, now time.Time) {
	e.state = Reachable
	e.probes = 0
	e.confirmed = now
	// RFC 4861 §6.3.2: ReachableTime is a uniformly distributed random
	// value between MIN_RANDOM_FACTOR (0.5) and MAX_RANDOM_FACTOR (1.5)
	// times BaseReachableTime; Linux's neigh_rand_reach_time does the same
	// for ARP.
	e.reachable = time.Duration((0.5 + rand.Float64()) * float64(t.cfg.BaseReachable))
	e.timer.Reset(e.reachable)
}

// allocLocked creates an entry, running forced GC when the table is full
// (neigh_alloc). It returns nil when no entry could be freed.
func (t *Table) allocLocked(k key, nic *dev.NIC) *entry {
	if len(t.entries) >= t.cfg.MaxEntries && !t.forcedGCLocked() {
		return nil
	}
	e := &entry{key: k, nic: nic, state: Incomplete, used: t.clk.Now()}
	e.timer = t.clk.NewTimer(func() { t.timerFired(e) })
	t.entries[k] = e
	return e
}

// forcedGCLocked is neigh_forced_gc: drop Failed entries and Stale ones
// idle for GCStale; failing that, the least recently used Stale entry.
// Failed and Stale entries have empty queues.
func (t *Table) forcedGCLocked() bool {
	t.stats.ForcedGC++
	now := t.clk.Now()
	freed := false
	var lru *entry
	for _, e := range t.entries {
		switch e.state {
		case Failed:
		case Stale:
			if now.Sub(e.used) < t.cfg.GCStale {
				if lru == nil || e.used.Before(lru.used) {
					lru = e
				}
				continue
			}
		default:
			continue
		}
		q := t.unlinkLocked(e)
		q.Purge(DropNeighDead)
		freed = true
	}
	if !freed && lru != nil {
		q := t.unlinkLocked(lru)
		q.Purge(DropNeighDead)
		freed = true
	}
	return freed
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// Output sends an IPv4 or IPv6 packet to nextHop on nic
// (neigh_resolve_output); the next hop's family says which. It consumes
// skb, whose Bytes() start at the IP header: sent with the neighbour's
// address, queued until resolution (ARP, or Neighbor Solicitation for
// IPv6) finishes, or freed with a reason. Broadcast next hops
// (255.255.255.255 or the directed broadcast of one of nic's prefixes) go
// to the broadcast MAC, multicast ones to their mapped group MAC (RFC 1112
// §6.4, RFC 2464 §7), without resolution.
func (t *Table) Output(nic *dev.NIC, nextHop netip.Addr, skb *buf.SKB) {
	nextHop = nextHop.WithZone("")
	if nextHop.Is6() && nextHop.IsMulticast() {
		nic.HardHeader(skb, header.IPv6MulticastMAC(nextHop), header.EtherTypeIPv6)
		nic.Xmit(skb)
		return
	}
	if nextHop.Is4() {
		if nextHop == limitedBroadcast || nic.IsBroadcast(nextHop) {
			nic.HardHeader(skb, header.BroadcastMAC, header.EtherTypeIPv4)
			nic.Xmit(skb)
			return
		}
		if nextHop.IsMulticast() {
			nic.HardHeader(skb, multicastMAC(nextHop), header.EtherTypeIPv4)
			nic.Xmit(skb)
			return
		}
	}
	if !resolvable(nextHop) || nextHop.IsUnspecified() {
		// Nothing ARP or NDP can resolve (neigh_create's -EINVAL).
		skb.Free(DropNeighCreateFail)
		return
	}
	k := key{nic.ID(), nextHop}
	now := t.clk.Now()
	t.mu.Lock()
	e := t.entries[k]
	if e == nil {
		if e = t.allocLocked(k, nic); e == nil {
			t.stats.TableFull++
			t.mu.Unlock()
			skb.Free(DropNeighCreateFail)
			return
		}
	}
	e.used = now
	switch e.state {
	case Reachable, Delay, Probe, Permanent:
		mac := e.mac
		t.mu.Unlock()
		t.send(nic, mac, etherType(nextHop), skb)
		return
	case Stale:
		// RFC 4861 §7.3.3: sending from STALE moves to DELAY and arms
		// DELAY_FIRST_PROBE_TIME.
		e.state = Delay
		e.timer.Reset(t.cfg.DelayProbe)
		mac := e.mac
		t.mu.Unlock()
		t.send(nic, mac, etherType(nextHop), skb)
		return
	case Failed:
		// __neigh_event_send: a failed entry restarts resolution.
		e.state = Incomplete
		e.probes = 0
		e.pending.Purge(DropNeighFailed)
	}
	// Incomplete: queue, the oldest making room (RFC 1122 §2.3.2.2:
	// "SHOULD save (rather than discard) at least one (the latest)
	// packet"), then solicit if this is the first packet.
	var old buf.Queue
	for e.pending.Len() > 0 && (e.pending.Len() >= t.cfg.MaxPending || e.pending.Bytes()+skb.Len() > t.cfg.MaxPendingBytes) {
		old.PushBack(e.pending.PopFront())
		t.stats.QueueDrops++
	}
	e.pending.PushBack(skb)
	solicit := e.probes == 0
	var req request
	if solicit {
		req = t.solicitLocked(e, false)
	}
	t.mu.Unlock()
	if old.Len() > 0 {
		old.Purge(DropNeighQueueFull)
	}
	if solicit {
		t.sendRequest(req)
	}
}

// send prepends the Ethernet header (EtherType of the next hop's family)
// and hands skb to the NIC.
func (t *Table) send(nic *dev.NIC, mac header.MAC, et header.EtherType, skb *buf.SKB) {
	nic.HardHeader(skb, mac, et)
	nic.Xmit(skb)
}

// flush sends the packets of q to mac (neigh_update's arp_queue drain),
// in the order they were queued.
func (t *Table) flush(nic *dev.NIC, mac header.MAC, et header.EtherType, q *buf.Queue) {
	for s := q.PopFront(); s != nil; s = q.PopFront() {
		t.send(nic, mac, et, s)
	}
}

// timerFired is neigh_timer_handler.
func (t *Table) timerFired(e *entry) {
	t.mu.Lock()
	if e.dead {
		t.mu.Unlock()
		return
	}
	now := t.clk.Now()
	var req request
	var failed buf.Queue
	switch e.state {
	case Reachable:
		if d := e.confirmed.Add(e.reachable).Sub(now); d > 0 {
			e.timer.Reset(d)
			break
		}
		e.state = Stale
	case Delay:
		// Confirmed since the packet that moved us to Delay?
		if now.Sub(e.confirmed) < t.cfg.DelayProbe {
			t.reachableLocked(e, e.confirmed)
			break
		}
		e.state = Probe
		e.probes = 0
		req = t.solicitLocked(e, true)
	case Incomplete, Probe:
		if e.probes >= t.cfg.MaxProbes {
			// RFC 1122 §2.3.2.1: give up after a bounded number of
			// retransmissions; the queued packets' senders are told.
			e.state = Failed
			t.stats.ResolutionFailures++
			failed = e.pending.TakeAll()
			break
		}
		req = t.solicitLocked(e, e.state == Probe)
	}
	fail := t.onFailure
	if e.key.addr.Is6() {
		fail = t.onFailure6
	}
	t.mu.Unlock()
	if req.nic != nil {
		t.sendRequest(req)
	}
	for s := failed.PopFront(); s != nil; s = failed.PopFront() {
		if fail != nil {
			fail(s)
		}
		s.Free(DropNeighFailed)
	}
}

// request is an ARP request or a Neighbor Solicitation (the target's
// family says which) decided under the lock and sent after it.
type request struct {
	nic     *dev.NIC
	target  netip.Addr
	dstMAC  header.MAC // broadcast, or the cached address for a unicast probe
	srcHint netip.Addr // source of the packet that triggered it, if any
	unicast bool
}

// solicitLocked counts one probe, arms the retransmit timer and returns
// the request to send (neigh_probe → arp_solicit).
func (t *Table) solicitLocked(e *entry, unicast bool) request {
	e.probes++
	e.timer.Reset(t.cfg.RetransTime)
	r := request{nic: e.nic, target: e.key.addr, dstMAC: header.BroadcastMAC, unicast: unicast}
	if unicast {
		r.dstMAC = e.mac
	}
	if s := e.pending.Front(); s != nil {
		if e.key.addr.Is6() {
			if ip, err := header.CheckIPv6(s.Bytes()); err == nil {
				r.srcHint = ip.Src()
			}
		} else if ip, err := header.CheckIPv4(s.Bytes()); err == nil {
			r.srcHint = ip.Src()
		}
	}
	return r
}
