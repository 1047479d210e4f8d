package ipv6

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"syscall"
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

// Protocol is an upper-layer handler registered by next-header number
// (struct inet6_protocol in inet6_protos).
type Protocol struct {
	// Rcv consumes skb; skb.Bytes() starts at the upper-layer header and
	// NetworkHeader() is the IPv6 header (extension headers follow it).
	Rcv func(skb *buf.SKB)
	// Err does not consume skb; skb.Bytes() starts at the quoted (inner)
	// IPv6 header of an ICMPv6 error, NetworkHeader() is set to it and
	// TransportHeader() to the quoted upper-layer header, of which at
	// least 8 bytes are present. e is the seam IPv4's errors take too
	// (header.ICMPError, V6 set): the ICMPv6 type and code with
	// icmpv6_err_convert's errno and fatal flag (ErrorOf); Info is the MTU
	// of a Packet Too Big (already clamped to at least 1280, RFC 8201 §4)
	// and the pointer of a Parameter Problem.
	Err func(skb *buf.SKB, e header.ICMPError)
}

// RPFilterMode is the reverse-path filter policy.
type RPFilterMode uint8

const (
	// RPFilterStrict: RFC 3704 §2.2 strict mode, the default (Linux
	// leaves IPv6 to the rpfilter netfilter match; we apply the same rule
	// to both families).
	RPFilterStrict RPFilterMode = iota
	// RPFilterOff: no reverse-path check.
	RPFilterOff
)

// Defaults for Config fields left zero.
const (
	DefaultHopLimit = 64 // net.ipv6.conf.all.hop_limit
	// DefaultReasmTimeout: RFC 8200 §4.5: "If insufficient fragments are
	// received to complete reassembly of a packet within 60 seconds of
	// the reception of the first-arriving fragment of that packet,
	// reassembly of that packet must be abandoned".
	DefaultReasmTimeout  = 60 * time.Second
	DefaultReasmMemLimit = 4 << 20                   // ip6frag_high_thresh
	DefaultICMPRateLimit = inet.DefaultICMPRateLimit // icmp_msgs_per_sec (shared with IPv4 on Linux)
	DefaultICMPRateBurst = inet.DefaultICMPRateBurst // icmp_msgs_burst
	// DefaultPMTUExpires: RFC 8201 §4: an increase "MUST NOT be done less
	// than 5 minutes after a Packet Too Big message has been received for
	// the given path. The recommended setting for this timer is twice its
	// minimum value (10 minutes)" (ip6_rt_mtu_expires).
	DefaultPMTUExpires = 10 * time.Minute
)

// Config wires a Layer to the rest of the stack.
type Config struct {
	// Clock runs reassembly timers, PMTU aging, the ICMPv6 rate limit and
	// the loopback backlog; nil = a new real clock.
	Clock clock.Clock
	// Devices and Neigh carry output to the link and NDP input to the
	// neighbour table; without them packets for a NIC are dropped.
	Devices *dev.Devices
	Neigh   *neigh.Table
	// FIB is the routing table (shared with IPv4); nil = a new one.
	FIB *route.Table
	// Hooks are the IPv6 hooks (nil: none). They are not IPv4's: as the
	// kernel keeps nf_hooks_ipv6 apart from nf_hooks_ipv4, hook functions
	// written for IPv4 packets never see an IPv6 one.
	Hooks *netfilter.Hooks
	// DefaultHopLimit of locally originated packets, 0 = 64.
	DefaultHopLimit uint8
	// Forwarding enables forwarding (net.ipv6.conf.all.forwarding).
	Forwarding bool
	// RPFilter is every NIC's default reverse-path policy; the zero value
	// is strict.
	RPFilter RPFilterMode
	// ReasmTimeout is how long an incomplete packet waits, 0 = 60 s.
	ReasmTimeout time.Duration
	// ReasmMemLimit bounds reassembly memory, 0 = 4 MiB.
	ReasmMemLimit int
	// ICMPRateLimit is the sustained rate of ICMPv6 errors per second
	// and ICMPRateBurst the bucket depth (RFC 4443 §2.4(f)); 0 = 1000/s
	// and 50; a negative rate disables the limit.
	ICMPRateLimit int
	ICMPRateBurst int
	// PMTUExpires is how long a path MTU learnt from a Packet Too Big
	// holds (RFC 8201 §4), 0 = 10 minutes.
	PMTUExpires time.Duration
}

// Layer is the IPv6 layer of one stack.
type Layer struct {
	clk        clock.Clock
	devs       *dev.Devices
	neigh      *neigh.Table
	fib        *route.Table
	hooks      *netfilter.Hooks
	defaultHop uint8
	forwarding atomic.Bool

	// xmit is the output tail IPv4 shares (LOCAL_OUT, re-route,
	// POSTROUTING, neigh output): netstack/inet.
	xmit inet.Output

	// out and nicMTU reach the link: xmit.NeighOutput and the NIC's MTU
	// (fields, so tests watch output).
	out    func(nicID int, nextHop netip.Addr, skb *buf.SKB)
	nicMTU func(nicID int) (int, bool)

	protos [256]atomic.Pointer[Protocol]

	// rp is each NIC's reverse-path policy (SetRPFilter; copy on write).
	rp inet.RPFilter

	// secret keys the fragment identification and flow label hashes.
	secret [4]uint32
	idents [identBuckets]atomic.Uint32

	// echo receives diverted echo requests (SetEchoInterceptor).
	echo inet.EchoInterceptor

	reasm  reassembler
	pmtu   pmtuCache
	icmpRL inet.TokenBucket // RFC 4443 §2.4(f)

	mib   [numCounters]atomic.Uint64
	drops buf.DropStats
}

// New returns a Layer. Register it with Devices.AddPacketType(EtherTypeIPv6,
// l.Rcv); it registers itself as the neighbour table's IPv6 failure
// handler.
func New(cfg Config) *Layer {
	if cfg.Clock == nil {
		cfg.Clock = clock.NewReal()
	}
	if cfg.FIB == nil {
		cfg.FIB = route.NewTable()
	}
	l := &Layer{
		clk: cfg.Clock, devs: cfg.Devices, neigh: cfg.Neigh, fib: cfg.FIB, hooks: cfg.Hooks,
		defaultHop: cfg.DefaultHopLimit,
	}
	if l.defaultHop == 0 {
		l.defaultHop = DefaultHopLimit
	}
	l.forwarding.Store(cfg.Forwarding)
	l.rp.Init(cfg.RPFilter == RPFilterStrict)
	var seed [16 + 4*identBuckets]byte
	_, _ = rand.Read(seed[:])
	for i := range l.secret {
		l.secret[i] = binary.LittleEndian.Uint32(seed[4*i:])
	}
	// RFC 7739 §5: identifications must not be predictable; each counter
	// starts at a random value.
	for i := range l.idents {
		l.idents[i].Store(binary.LittleEndian.Uint32(seed[16+4*i:]))
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
	mem := cfg.ReasmMemLimit
	if mem <= 0 {
		mem = DefaultReasmMemLimit
	}
	l.reasm.init(l, timeout, mem)
	exp := cfg.PMTUExpires
	if exp <= 0 {
		exp = DefaultPMTUExpires
	}
	l.pmtu.init(l.clk, exp)
	l.icmpRL.Init(l.clk, cfg.ICMPRateLimit, cfg.ICMPRateBurst)
	if l.neigh != nil {
		l.neigh.SetFailureHandler6(l.neighFailure)
		l.neigh.SetRouter(cfg.Forwarding)
	}
	return l
}

// AddProtocol registers p for next-header number proto
// (inet6_add_protocol), replacing any earlier one. ICMPv6 (58) is answered
// inside this package; a Protocol registered for it (ping sockets)
// receives echo replies and the errors quoting ICMPv6. Extension header
// numbers are this package's and cannot be registered.
func (l *Layer) AddProtocol(proto uint8, p Protocol) {
	if header.IPv6IsExtHeader(proto) {
		return
	}
	l.protos[proto].Store(&p)
}

// RemoveProtocol unregisters proto.
func (l *Layer) RemoveProtocol(proto uint8) { l.protos[proto].Store(nil) }

// SetForwarding turns forwarding on or off (net.ipv6.conf.all.forwarding);
// the neighbour table's Router flag follows it (RFC 4861 §4.4).
func (l *Layer) SetForwarding(on bool) {
	l.forwarding.Store(on)
	if l.neigh != nil {
		l.neigh.SetRouter(on)
	}
}

// Forwarding reports whether forwarding is on.
func (l *Layer) Forwarding() bool { return l.forwarding.Load() }

// SetRPFilter sets one NIC's reverse-path policy: strict or off.
func (l *Layer) SetRPFilter(nicID int, strict bool) { l.rp.Set(nicID, strict) }

// Drops are the drop counts of locally originated packets.
func (l *Layer) Drops() *buf.DropStats { return &l.drops }

// FIB is the routing table the layer uses.
func (l *Layer) FIB() *route.Table { return l.fib }

// RouteOutput is ip6_route_output for the transports.
func (l *Layer) RouteOutput(fl route.Flow) (route.Result, error) { return l.fib.Output(fl) }

// PathMTU is the MTU towards fl.Dst for a locally originated packet: the
// route's or the output NIC's MTU, lowered by a Packet Too Big learnt for
// the destination (RFC 8201), never below 1280 (RFC 8200 §5). The
// transports size their segments by it (MSS = PathMTU - 60, RFC 8200 §8.3).
func (l *Layer) PathMTU(fl route.Flow) (int, error) {
	res, err := l.fib.Output(fl)
	if err != nil {
		return 0, err
	}
	if res.Type == route.Local {
		return header.IPv6MaxPayload + header.IPv6MinSize, nil
	}
	return l.pathMTU(res, fl.Dst), nil
}

// family is IPv6 as the shared output path sees it (inet.Family).
type family struct{}

func (family) Src(ip []byte) netip.Addr { return header.IPv6(ip).Src() }
func (family) Dst(ip []byte) netip.Addr { return header.IPv6(ip).Dst() }

// identBuckets is the number of fragment identification counters.
const identBuckets = 2048

// selectIdent reserves a fragment identification for a packet from src to
// dst (ipv6_select_ident): a keyed hash of the pair picks one of
// identBuckets counters, each started at a random value, so identifiers
// are unpredictable across destinations (RFC 7739 §5.1) and do not repeat
// soon for one (RFC 8200 §4.5).
func (l *Layer) selectIdent(src, dst netip.Addr) uint32 {
	h := l.hash(src, dst, 0)
	return l.idents[h%identBuckets].Add(1)
}

// flowLabel is the flow label of a locally originated packet (RFC 6437
// §3: "Flow Label values SHOULD be chosen such that their bits exhibit a
// high degree of variability"): a keyed hash of the addresses, protocol
// and ports, stable for a transport flow.
func (l *Layer) flowLabel(fl route.Flow, src netip.Addr) uint32 {
	return l.hash(src, fl.Dst, uint32(fl.Proto)<<16^uint32(fl.SrcPort)<<8^uint32(fl.DstPort)) & 0xfffff
}

// hash mixes two addresses and a word with the layer's secret.
func (l *Layer) hash(a, b netip.Addr, x uint32) uint32 {
	fold := func(p netip.Addr) uint32 {
		s := p.As16()
		return binary.LittleEndian.Uint32(s[0:]) ^ binary.LittleEndian.Uint32(s[4:]) ^
			binary.LittleEndian.Uint32(s[8:]) ^ binary.LittleEndian.Uint32(s[12:])
	}
	return inet.Mix(fold(a)^l.secret[0], fold(b)^l.secret[1], x^l.secret[2], l.secret[3])
}

// ErrorOf is the header.ICMPError an ICMPv6 error of typ, code and info
// hands to the transports: ErrnoOf's errno and fatal flag.
func ErrorOf(typ, code uint8, info uint32) header.ICMPError {
	errno, hard := ErrnoOf(typ, code)
	return header.ICMPError{V6: true, Type: typ, Code: code, Errno: errno, Hard: hard, Info: info}
}

// ErrnoOf is icmpv6_err_convert: the errno a socket reports for an ICMPv6
// error of typ and code, and whether the error is fatal (hard) for a
// connection rather than a hint (RFC 4443 §3.1's routing transients).
// Packet Too Big is neither (EMSGSIZE, not fatal): path MTU news.
func ErrnoOf(typ, code uint8) (errno syscall.Errno, fatal bool) {
	switch typ {
	case header.ICMPv6DstUnreachable:
		switch code {
		case header.ICMPv6NoRoute:
			return syscall.ENETUNREACH, false
		case header.ICMPv6AdminProhibited, header.ICMPv6SrcPolicyFailed, header.ICMPv6RejectRoute:
			return syscall.EACCES, true
		case header.ICMPv6BeyondScope, header.ICMPv6AddrUnreachable:
			return syscall.EHOSTUNREACH, false
		case header.ICMPv6PortUnreachable:
			return syscall.ECONNREFUSED, true
		}
		return syscall.EPROTO, false
	case header.ICMPv6PacketTooBig:
		return syscall.EMSGSIZE, false
	case header.ICMPv6ParamProblem:
		return syscall.EPROTO, true
	case header.ICMPv6TimeExceeded:
		return syscall.EHOSTUNREACH, false
	}
	return syscall.EPROTO, false
}
