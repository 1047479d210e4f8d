package ipv4

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inet"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Protocol is an L4 handler registered by protocol number (struct
// net_protocol in inet_protos).
type Protocol struct {
	// Rcv consumes skb; skb.Bytes() starts at the transport header and
	// NetworkHeader() is the IPv4 header.
	Rcv func(skb *buf.SKB)
	// Err does not consume skb; skb.Bytes() starts at the quoted (inner)
	// IPv4 header of an ICMP error, NetworkHeader() is set to it, and at
	// least 8 bytes of the inner transport header follow it. e carries the
	// message's type and code with icmp_err_convert's errno and fatal
	// flag (header.ICMPError, the same for ICMPv6).
	Err func(skb *buf.SKB, e header.ICMPError)
}

// RPFilterMode is the reverse-path filter policy (rp_filter).
type RPFilterMode uint8

const (
	// RPFilterStrict: RFC 3704 §2.2 strict mode (rp_filter=1), the default.
	RPFilterStrict RPFilterMode = iota
	// RPFilterOff: no reverse-path check (rp_filter=0).
	RPFilterOff
)

// Defaults for Config fields left zero.
const (
	DefaultTTL           = 64
	DefaultReasmTimeout  = 30 * time.Second          // RFC 1122 §3.3.2 suggests 60–120 s; Linux ipfrag_time is 30 s
	DefaultReasmMemLimit = 4 << 20                   // ipfrag_high_thresh
	DefaultICMPRateLimit = inet.DefaultICMPRateLimit // icmp_msgs_per_sec
	DefaultICMPRateBurst = inet.DefaultICMPRateBurst // icmp_msgs_burst
)

// Config wires a Layer to the rest of the stack.
type Config struct {
	// Clock runs the reassembly timers and the loopback backlog; nil = a
	// new real clock.
	Clock clock.Clock
	// Devices and Neigh carry output to the link: NIC MTUs and
	// neigh.Output. Without them every packet for a NIC is dropped
	// (IP_NO_DEVICE); local delivery and loopback still work.
	Devices *dev.Devices
	Neigh   *neigh.Table
	// FIB is the routing table; nil = a new empty one (see Layer.FIB).
	FIB   *route.Table
	Hooks *netfilter.Hooks // nil: no hooks
	// DefaultTTL of locally originated packets (ip_default_ttl), 0 = 64.
	DefaultTTL uint8
	// Forwarding enables ip_forward (net.ipv4.ip_forward).
	Forwarding bool
	// RPFilter is the default reverse-path policy of every NIC; SetRPFilter
	// overrides it per NIC. The zero value is strict.
	RPFilter RPFilterMode
	// ReasmTimeout is how long an incomplete datagram waits (ipfrag_time), 0 = 30 s.
	ReasmTimeout time.Duration
	// ReasmMemLimit bounds the memory held by reassembly queues, 0 = 4 MiB.
	ReasmMemLimit int
	// ICMPRateLimit is the sustained rate of ICMP errors per second and
	// ICMPRateBurst the bucket depth (icmp_msgs_per_sec, icmp_msgs_burst).
	// 0 = 1000/s and 50; a negative rate disables the limit.
	ICMPRateLimit int
	ICMPRateBurst int
}

// Layer is the IPv4 layer of one stack.
type Layer struct {
	clk        clock.Clock
	devs       *dev.Devices
	neigh      *neigh.Table
	fib        *route.Table
	hooks      *netfilter.Hooks
	defaultTTL uint8
	forwarding atomic.Bool

	// xmit is the output tail IPv6 shares (LOCAL_OUT, re-route,
	// POSTROUTING, neigh output): netstack/inet.
	xmit inet.Output

	// out and nicMTU reach the link: xmit.NeighOutput and the NIC's MTU.
	// They are fields so that the tests of this package can watch
	// transmitted packets without a link.
	out    func(nicID int, nextHop netip.Addr, skb *buf.SKB)
	nicMTU func(nicID int) (int, bool)

	// protos is inet_protos: one slot per protocol number, lock-free reads.
	protos [256]atomic.Pointer[Protocol]

	// rp is each NIC's rp_filter (SetRPFilter; copy on write).
	rp inet.RPFilter

	// idents is ip_idents: IP ID counters in idBuckets buckets chosen by
	// a keyed hash of (src, dst, proto).
	idSecret [4]uint32
	idents   [idBuckets]atomic.Uint32

	// echo receives diverted echo requests (SetEchoInterceptor).
	echo inet.EchoInterceptor

	reasm  reassembler
	icmpRL inet.TokenBucket // icmp_global

	mib   [numCounters]atomic.Uint64
	drops buf.DropStats
}

// New returns a Layer. Register it with Devices.AddPacketType(EtherTypeIPv4,
// l.Rcv); it registers itself as the neighbour table's failure handler.
func New(cfg Config) *Layer {
	if cfg.Clock == nil {
		cfg.Clock = clock.NewReal()
	}
	if cfg.FIB == nil {
		cfg.FIB = route.NewTable()
	}
	l := &Layer{
		clk:        cfg.Clock,
		devs:       cfg.Devices,
		neigh:      cfg.Neigh,
		fib:        cfg.FIB,
		hooks:      cfg.Hooks,
		defaultTTL: cfg.DefaultTTL,
	}
	if l.defaultTTL == 0 {
		l.defaultTTL = DefaultTTL
	}
	l.forwarding.Store(cfg.Forwarding)
	l.rp.Init(cfg.RPFilter == RPFilterStrict)
	var seed [16]byte
	_, _ = rand.Read(seed[:])
	for i := range l.idSecret {
		l.idSecret[i] = binary.LittleEndian.Uint32(seed[4*i:])
	}
	l.xmit.Init(inet.OutputConfig{
		Family: family{}, Clock: l.clk, FIB: l.fib, Hooks: l.hooks, Devices: l.devs, Neigh: l.neigh,
		LocalDeliver: l.localDeliver, SendICMPError: l.SendICMPError,
		MIB: inet.MIB{OutNoRoutes: &l.mib[OutNoRoutes], OutDiscards: &l.mib[OutDiscards], InReceives: &l.mib[InReceives]},
	})
	l.out, l.nicMTU = l.xmit.NeighOutput, l.xmit.NICMTU
	timeout := cfg.ReasmTimeout
	if timeout <= 0 {
		timeout = DefaultReasmTimeout
	}
	memLimit := cfg.ReasmMemLimit
	if memLimit <= 0 {
		memLimit = DefaultReasmMemLimit
	}
	l.reasm.init(l, timeout, memLimit)
	l.icmpRL.Init(l.clk, cfg.ICMPRateLimit, cfg.ICMPRateBurst)
	if l.neigh != nil {
		l.neigh.SetFailureHandler(l.neighFailure)
	}
	return l
}

// AddProtocol registers p for protocol number proto (inet_add_protocol),
// replacing any earlier registration. ICMP (1) is answered inside this
// package; a Protocol registered for it (ping sockets) receives echo
// replies and the ICMP errors quoting ICMP.
func (l *Layer) AddProtocol(proto uint8, p Protocol) {
	l.protos[proto].Store(&p)
}

// RemoveProtocol unregisters proto (inet_del_protocol).
func (l *Layer) RemoveProtocol(proto uint8) { l.protos[proto].Store(nil) }

// SetForwarding turns forwarding on or off (net.ipv4.ip_forward).
func (l *Layer) SetForwarding(on bool) { l.forwarding.Store(on) }

// Forwarding reports whether forwarding is on.
func (l *Layer) Forwarding() bool { return l.forwarding.Load() }

// SetRPFilter sets the reverse-path policy of one NIC: strict (RFC 3704
// §2.2) or off (conf/<nic>/rp_filter).
func (l *Layer) SetRPFilter(nicID int, strict bool) { l.rp.Set(nicID, strict) }

// Drops are the drop counts of locally originated packets (the receive
// path counts on the input NIC's DropStats).
func (l *Layer) Drops() *buf.DropStats { return &l.drops }

// FIB is the routing table the layer uses.
func (l *Layer) FIB() *route.Table { return l.fib }

// family is IPv4 as the shared output path sees it (inet.Family).
type family struct{}

func (family) Src(ip []byte) netip.Addr { return header.IPv4(ip).Src() }
func (family) Dst(ip []byte) netip.Addr { return header.IPv4(ip).Dst() }

// RouteOutput is ip_route_output_key for the transports: the route of a
// locally originated flow (route.Table.Output).
func (l *Layer) RouteOutput(fl route.Flow) (route.Result, error) {
	return l.fib.Output(fl)
}

// idBuckets is the number of IP ID counters (IP_IDENTS_SZ is 2048).
const idBuckets = 2048

// selectID reserves segs consecutive IP IDs for a datagram from src to dst
// and returns the first (ip_select_ident / ip_idents_reserve). Each
// (src, dst, proto) hashes, with a boot-time secret, to one of idBuckets
// counters, so IDs are sequential per destination (what reassembly needs)
// but reveal nothing about traffic to other destinations. Unlike Linux we
// add no time-based random increment (RFC 7739 §5.3 suggests one against
// idle-rate inference); RFC 6864 §4.1 lets atomic datagrams use any value.
func (l *Layer) selectID(src, dst netip.Addr, proto uint8, segs int) uint16 {
	s4, d4 := src.As4(), dst.As4()
	h := inet.Mix(binary.BigEndian.Uint32(s4[:])^l.idSecret[0], binary.BigEndian.Uint32(d4[:])^l.idSecret[1],
		uint32(proto)^l.idSecret[2], l.idSecret[3])
	return uint16(l.idents[h%idBuckets].Add(uint32(segs)) - uint32(segs))
}
