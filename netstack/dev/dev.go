package dev

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// Bounds and defaults.
const (
	// MaxNICs bounds the device list; Add past it fails.
	MaxNICs = 4096
	// MaxRxQueues bounds the receive queues (and goroutines) of a NIC.
	MaxRxQueues = 16
	// MaxAddresses bounds the addresses of one NIC.
	MaxAddresses = 64
	// DefaultTxQueueLen is txqueuelen's default.
	DefaultTxQueueLen = 1000
	// DefaultRxBatch is the NAPI budget: frames per ReadBatch.
	DefaultRxBatch = 64
	// txBatch is how many frames one WriteBatch carries (dev_tx_weight).
	txBatch = 64
	// MinMTU and MaxMTU bound SetMTU (RFC 791: every host must accept
	// 68-byte datagrams; the IPv4 total length field tops out at 65535).
	MinMTU = 68
	MaxMTU = 65535
)

// Drop reasons of this layer (SKB_DROP_REASON_*).
var (
	// DropOtherHost: unicast to another MAC (PACKET_OTHERHOST).
	DropOtherHost = buf.NewDropReason("OTHERHOST")
	// DropUnhandledProto: no handler for the EtherType.
	DropUnhandledProto = buf.NewDropReason("UNHANDLED_PROTO")
	// DropMACHeader: truncated or otherwise malformed Ethernet header.
	DropMACHeader = buf.NewDropReason("MAC_HEADER_INVALID")
	// DropVLAN: an 802.1Q-tagged frame; we run no VLAN devices.
	DropVLAN = buf.NewDropReason("VLAN_TAGGED")
	// DropQdisc: the transmit queue was full (SKB_DROP_REASON_QDISC_DROP).
	DropQdisc = buf.NewDropReason("QDISC_DROP")
)

// Errors.
var (
	ErrExists     = errors.New("dev: name or address already in use")
	ErrNotFound   = errors.New("dev: no such device or address")
	ErrBadMTU     = errors.New("dev: MTU out of range")
	ErrBadAddress = errors.New("dev: invalid address")
	ErrFull       = errors.New("dev: limit reached")
)

// Direction says which way a tapped frame travels.
type Direction uint8

const (
	// Rx: received, seen before dispatch.
	Rx Direction = iota
	// Tx: transmitted, seen just before the endpoint.
	Tx
)

func (d Direction) String() string {
	if d == Rx {
		return "rx"
	}
	return "tx"
}

// Handler receives the frames of one EtherType (packet_type.func). It
// consumes skb; skb.Bytes() starts at the network header, skb.MACHeader()
// is the Ethernet header, skb.Protocol is the EtherType and skb.InNIC is
// nic.ID().
type Handler func(nic *NIC, skb *buf.SKB)

// Tap sees every frame: received ones before dispatch, transmitted ones
// just before the endpoint; skb.Bytes() starts at the Ethernet header. It
// must not keep or modify skb (Clone it to keep it).
type Tap func(nic *NIC, skb *buf.SKB, dir Direction)

// Config configures a NIC.
type Config struct {
	Name string
	MAC  header.MAC
	// MTU is the largest L3 packet; 0 means the endpoint's MTU.
	MTU int
	// TxQueueLen bounds the transmit queue; 0 means DefaultTxQueueLen.
	TxQueueLen int
	// RxBatch is the frames per ReadBatch; 0 means DefaultRxBatch.
	RxBatch int
}

type ptype struct {
	t header.EtherType
	h Handler
}

type tapEntry struct{ fn Tap }

// Devices is the per-stack device list (struct net's dev_base_head) with
// the protocol handlers and taps shared by its NICs.
type Devices struct {
	clk clock.Clock

	ptypes atomic.Pointer[[]ptype]     // ptype_base, copy on write
	taps   atomic.Pointer[[]*tapEntry] // ptype_all, copy on write

	mu       sync.Mutex // guards the fields below and the copy-on-write writers
	nics     map[int]*NIC
	byName   map[string]*NIC
	nextID   int
	addrFns  []func(*NIC, netip.Prefix)
	regTypes []ptype
	regTaps  []*tapEntry
}

// NewDevices returns an empty device list using clk for receive
// timestamps.
func NewDevices(clk clock.Clock) *Devices {
	d := &Devices{clk: clk, nics: map[int]*NIC{}, byName: map[string]*NIC{}, nextID: 1}
	d.ptypes.Store(&[]ptype{})
	d.taps.Store(&[]*tapEntry{})
	return d
}

// AddPacketType registers h for frames of EtherType t (dev_add_pack),
// replacing an earlier handler for t. It may be called at any time; a
// frame being dispatched sees the old or the new table.
func (d *Devices) AddPacketType(t header.EtherType, h Handler) {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := make([]ptype, 0, len(d.regTypes)+1)
	for _, p := range d.regTypes {
		if p.t != t {
			next = append(next, p)
		}
	}
	if h != nil {
		next = append(next, ptype{t, h})
	}
	d.regTypes = next
	cp := append([]ptype(nil), next...)
	d.ptypes.Store(&cp)
}

// AddTap registers t for every frame of every NIC (ptype_all) and returns
// the function that removes it.
func (d *Devices) AddTap(t Tap) (remove func()) {
	e := &tapEntry{fn: t}
	d.mu.Lock()
	d.regTaps = append(d.regTaps, e)
	d.publishTapsLocked()
	d.mu.Unlock()
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for i, x := range d.regTaps {
			if x == e {
				d.regTaps = append(d.regTaps[:i:i], d.regTaps[i+1:]...)
				d.publishTapsLocked()
				return
			}
		}
	}
}

func (d *Devices) publishTapsLocked() {
	cp := append([]*tapEntry(nil), d.regTaps...)
	d.taps.Store(&cp)
}

// OnAddressAdded registers fn to run after an address is added to any NIC
// of this list (the inetaddr notifier chain; neigh sends gratuitous ARP
// from it). fn runs on the caller of AddAddress with no lock held.
func (d *Devices) OnAddressAdded(fn func(n *NIC, p netip.Prefix)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrFns = append(d.addrFns, fn)
}

// Add creates a NIC on ep (register_netdevice). IDs start at 1 and are
// never reused; names are unique. The NIC starts down.
func (d *Devices) Add(ep link.Endpoint, cfg Config) (*NIC, error) {
	if ep == nil {
		return nil, fmt.Errorf("dev: nil endpoint")
	}
	if cfg.Name == "" {
		return nil, fmt.Errorf("dev: empty name")
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = ep.MTU()
	}
	if mtu < MinMTU || mtu > MaxMTU || mtu > ep.MTU() {
		return nil, fmt.Errorf("%w: %d (endpoint %d)", ErrBadMTU, mtu, ep.MTU())
	}
	if cfg.TxQueueLen <= 0 {
		cfg.TxQueueLen = DefaultTxQueueLen
	}
	if cfg.RxBatch <= 0 {
		cfg.RxBatch = DefaultRxBatch
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.byName[cfg.Name]; ok {
		return nil, fmt.Errorf("%w: %q", ErrExists, cfg.Name)
	}
	if len(d.nics) >= MaxNICs {
		return nil, fmt.Errorf("%w: %d NICs", ErrFull, MaxNICs)
	}
	n := &NIC{
		devs:       d,
		id:         d.nextID,
		name:       cfg.Name,
		mac:        cfg.MAC,
		ep:         ep,
		txQueueLen: cfg.TxQueueLen,
		rxBatchLen: cfg.RxBatch,
		txPkts:     make([]*buf.SKB, txBatch),
		txLens:     make([]int, txBatch),
	}
	queues := 1
	if mq, ok := ep.(link.MultiQueue); ok {
		queues = min(max(mq.RxQueues(), 1), MaxRxQueues)
	}
	for q := range queues {
		n.rxq = append(n.rxq, &rxQueue{q: q, pkts: make([]*buf.SKB, cfg.RxBatch)})
	}
	n.mtu.Store(int32(mtu))
	d.nextID++
	d.nics[n.id] = n
	d.byName[n.name] = n
	return n, nil
}

// Remove unregisters a NIC (unregister_netdevice): it goes down, its
// endpoint is closed, its receive goroutine has exited when Remove returns
// and its transmit queue is freed with NIC_DOWN. It is Unlink, then the
// returned NIC's Release.
func (d *Devices) Remove(id int) error {
	n, err := d.Unlink(id)
	if err != nil {
		return err
	}
	return n.Release()
}

// Unlink is the first half of Remove: the NIC leaves the table (ByID and
// ByName no longer find it) and goes down, so nothing new is sent or
// delivered through it. Its endpoint stays open until Release, which the
// caller may run outside its own locks: closing a kernel socket can wait
// for an RCU grace period (AF_PACKET's packet_release runs
// synchronize_net), and unrelated NICs need not wait for it.
func (d *Devices) Unlink(id int) (*NIC, error) {
	d.mu.Lock()
	n, ok := d.nics[id]
	if ok {
		delete(d.nics, id)
		delete(d.byName, n.name)
	}
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: NIC %d", ErrNotFound, id)
	}
	n.removed.Store(true)
	n.Down()
	return n, nil
}

// Release is the second half of Remove for an unlinked NIC: its endpoint
// is closed, its receive goroutines have exited when Release returns and
// its transmit queue is freed with NIC_DOWN. Not callable from the NIC's
// own receive goroutine.
func (n *NIC) Release() error {
	err := n.ep.Close()
	n.rxWG.Wait()
	n.txMu.Lock()
	q := n.txq.TakeAll()
	n.txMu.Unlock()
	n.txDropped.Add(uint64(q.Len()))
	q.Purge(buf.DropNICDown)
	return err
}

// ByID returns the NIC with id, or nil.
func (d *Devices) ByID(id int) *NIC {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nics[id]
}

// ByName returns the NIC called name, or nil.
func (d *Devices) ByName(name string) *NIC {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.byName[name]
}

// List returns the NICs ordered by ID.
func (d *Devices) List() []*NIC {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*NIC, 0, len(d.nics))
	for id := 1; id < d.nextID; id++ {
		if n, ok := d.nics[id]; ok {
			out = append(out, n)
		}
	}
	return out
}

// NIC is a network device (struct net_device) on one link.Endpoint.
type NIC struct {
	devs *Devices
	id   int
	name string
	mac  header.MAC
	ep   link.Endpoint

	mtu     atomic.Int32
	up      atomic.Bool
	removed atomic.Bool

	// Receive: one queue per endpoint receive queue (link.MultiQueue),
	// each read by its own goroutine (rxQueue.running under rxMu; rxWG
	// counts the goroutines). rxTimeNs is the latest batch's time.
	rxMu       sync.Mutex
	rxq        []*rxQueue // bound: MaxRxQueues
	rxWG       sync.WaitGroup
	rxBatchLen int // Config.RxBatch
	rxTimeNs   atomic.Int64

	// Transmit: txq and txRunning under txMu; txPkts/txLens are owned by
	// the flusher (whoever set txRunning).
	txMu       sync.Mutex
	txq        buf.Queue // bound: txQueueLen, overflow frees with QDISC_DROP
	txQueueLen int
	txRunning  bool
	txPkts     []*buf.SKB // bound: txBatch
	txLens     []int

	addrMu  sync.RWMutex
	addrs   []netip.Prefix // bound: MaxAddresses
	addrFns []func(*NIC, netip.Prefix)

	rxPackets, rxBytes, rxDropped, rxErrors atomic.Uint64
	txPackets, txBytes, txDropped, txErrors atomic.Uint64
	drops                                   buf.DropStats
}

// ID is the interface index, starting at 1.
func (n *NIC) ID() int { return n.id }

// Name is the interface name.
func (n *NIC) Name() string { return n.name }

// MAC is the NIC's hardware address.
func (n *NIC) MAC() header.MAC { return n.mac }

// MTU is the largest L3 packet the NIC sends.
func (n *NIC) MTU() int { return int(n.mtu.Load()) }

// Endpoint is the link the NIC drives.
func (n *NIC) Endpoint() link.Endpoint { return n.ep }

// Drops counts frames freed by reason; the receive loop sets skb.Drops to
// it, so drops by upper layers of a received frame count here too.
func (n *NIC) Drops() *buf.DropStats { return &n.drops }

// SetMTU changes the MTU (dev_set_mtu): MinMTU..MaxMTU and at most the
// endpoint's MTU.
func (n *NIC) SetMTU(mtu int) error {
	if mtu < MinMTU || mtu > MaxMTU || mtu > n.ep.MTU() {
		return fmt.Errorf("%w: %d (endpoint %d)", ErrBadMTU, mtu, n.ep.MTU())
	}
	n.mtu.Store(int32(mtu))
	return nil
}

// IsUp reports the administrative state.
func (n *NIC) IsUp() bool { return n.up.Load() }

// RxTime is the clock reading taken once for the batch being dispatched
// (the NAPI poll's timestamp; with several receive queues the latest
// one's, within a batch's time of the frame's). Meant for Handlers and Rx
// Taps; a frame's own batch time is skb.Batch.Now.
func (n *NIC) RxTime() time.Time { return time.Unix(0, n.rxTimeNs.Load()) }

// AddAddress assigns p (its address with its prefix length) to the NIC,
// then runs the address-added notifiers.
func (n *NIC) AddAddress(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().IsValid() || p.Addr().IsUnspecified() {
		return fmt.Errorf("%w: %v", ErrBadAddress, p)
	}
	n.addrMu.Lock()
	for _, a := range n.addrs {
		if a.Addr() == p.Addr() {
			n.addrMu.Unlock()
			return fmt.Errorf("%w: %v on %s", ErrExists, p.Addr(), n.name)
		}
	}
	if len(n.addrs) >= MaxAddresses {
		n.addrMu.Unlock()
		return fmt.Errorf("%w: %d addresses on %s", ErrFull, MaxAddresses, n.name)
	}
	n.addrs = append(n.addrs, p)
	fns := slices.Clone(n.addrFns)
	n.addrMu.Unlock()

	n.devs.mu.Lock()
	fns = append(fns, n.devs.addrFns...)
	n.devs.mu.Unlock()
	for _, fn := range fns {
		fn(n, p)
	}
	return nil
}

// RemoveAddress removes the address p.Addr() from the NIC.
func (n *NIC) RemoveAddress(p netip.Prefix) error {
	n.addrMu.Lock()
	defer n.addrMu.Unlock()
	for i, a := range n.addrs {
		if a.Addr() == p.Addr() {
			n.addrs = append(n.addrs[:i:i], n.addrs[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("%w: %v on %s", ErrNotFound, p.Addr(), n.name)
}

// Addresses returns a copy of the NIC's addresses in the order added.
func (n *NIC) Addresses() []netip.Prefix {
	n.addrMu.RLock()
	defer n.addrMu.RUnlock()
	return append([]netip.Prefix(nil), n.addrs...)
}

// HasAddress reports whether a is one of the NIC's addresses.
func (n *NIC) HasAddress(a netip.Addr) bool {
	n.addrMu.RLock()
	defer n.addrMu.RUnlock()
	for _, p := range n.addrs {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

// IsBroadcast reports whether a is the limited broadcast address or the
// directed broadcast address of one of the NIC's IPv4 prefixes (shorter
// than /31: RFC 3021 point-to-point links have none). It allocates
// nothing.
func (n *NIC) IsBroadcast(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	if a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return true
	}
	n.addrMu.RLock()
	defer n.addrMu.RUnlock()
	for _, p := range n.addrs {
		if p.Addr().Is4() && p.Bits() < 31 && p.Contains(a) && directedBroadcast(p) == a {
			return true
		}
	}
	return false
}

func directedBroadcast(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := ^uint32(0) >> uint(p.Bits())
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// SourceFor picks the NIC's IPv4 address to speak from towards dst
// (inet_select_addr): one whose prefix contains dst, else the first IPv4
// address; ok is false when the NIC has none.
func (n *NIC) SourceFor(dst netip.Addr) (netip.Addr, bool) {
	n.addrMu.RLock()
	defer n.addrMu.RUnlock()
	var first netip.Addr
	for _, p := range n.addrs {
		if !p.Addr().Is4() {
			continue
		}
		if p.Contains(dst) {
			return p.Addr(), true
		}
		if !first.IsValid() {
			first = p.Addr()
		}
	}
	return first, first.IsValid()
}

// OnAddressAdded registers fn to run after an address is added to this
// NIC, on the caller of AddAddress with no lock held.
func (n *NIC) OnAddressAdded(fn func(n *NIC, p netip.Prefix)) {
	n.addrMu.Lock()
	defer n.addrMu.Unlock()
	n.addrFns = append(n.addrFns, fn)
}

// Stats is a snapshot of a NIC's counters (rtnl_link_stats64).
type Stats struct {
	RxPackets, RxBytes, RxDropped, RxErrors uint64
	TxPackets, TxBytes, TxDropped, TxErrors uint64
	// Drops counts frames freed on this NIC by reason name.
	Drops map[string]uint64
}

// Stats returns a snapshot of the counters.
func (n *NIC) Stats() Stats {
	return Stats{
		RxPackets: n.rxPackets.Load(), RxBytes: n.rxBytes.Load(),
		RxDropped: n.rxDropped.Load(), RxErrors: n.rxErrors.Load(),
		TxPackets: n.txPackets.Load(), TxBytes: n.txBytes.Load(),
		TxDropped: n.txDropped.Load(), TxErrors: n.txErrors.Load(),
		Drops: n.drops.Snapshot(),
	}
}
