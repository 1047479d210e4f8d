package udp

import (
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// family is what UDP needs from the network layer (icsk_af_ops, the
// struct proto callbacks into ip_*): ipv4.Layer and ipv6.Layer satisfy
// it. A Proto holds one of each and a datagram goes through the one of
// its addresses' family (Proto.af).
type family interface {
	// QueueXmit consumes skb; skb.Bytes() starts at the UDP header, whose
	// checksum is complete.
	QueueXmit(skb *buf.SKB, fl route.Flow) error
	// RouteOutput is ip_route_output_key: it picks the source address.
	RouteOutput(fl route.Flow) (route.Result, error)
	// SendICMPError does not consume skb; skb.NetworkHeader() is the
	// offending packet.
	SendICMPError(skb *buf.SKB, typ, code uint8, info uint32)
	// SendICMPErrorQuote sends an ICMP error from src, which need not be
	// local, quoting quote (an IP header of the family and at least 8
	// more bytes).
	SendICMPErrorQuote(src, dst netip.Addr, typ, code uint8, info uint32, quote []byte) error
}

// Defaults for Config fields left zero.
const (
	// DefaultRcvBuf is the receive queue bound in bytes (net.core.rmem_default).
	DefaultRcvBuf = 212992
	// MaxRcvBuf caps SetReadBuffer (net.core.rmem_max is 212992 on Linux;
	// we allow more for relays, still bounded).
	MaxRcvBuf = 16 << 20
	// MinRcvBuf is the smallest receive buffer (SOCK_MIN_RCVBUF rounded up).
	MinRcvBuf = 2048
	// DefaultEphemeralLow and DefaultEphemeralHigh are ip_local_port_range.
	DefaultEphemeralLow  = 32768
	DefaultEphemeralHigh = 60999
	// DefaultMaxSockets bounds the port table.
	DefaultMaxSockets = 1 << 16
)

// MaxPayload is the largest UDP payload over IPv4: 65535 - 20 - 8.
const MaxPayload = 65507

// MaxPayload6 is the largest UDP payload over IPv6: the 16-bit Payload
// Length (RFC 8200 §3) less the UDP header; no jumbograms (RFC 2675).
const MaxPayload6 = 65535 - 8

// maxPayload is MaxPayload or MaxPayload6 for dst's family.
func maxPayload(dst netip.Addr) int {
	if dst.Is6() {
		return MaxPayload6
	}
	return MaxPayload
}

// Config tunes a Proto.
type Config struct {
	// Clock runs deadline timers; nil = clock.NewReal().
	Clock clock.Clock
	// EphemeralLow..EphemeralHigh is the autobind range; zero = 32768–60999.
	EphemeralLow, EphemeralHigh uint16
	// RcvBuf is the default per-socket receive queue bound in bytes; 0 = 212992.
	RcvBuf int
	// MaxSockets bounds the bound sockets; 0 = 65536.
	MaxSockets int
	// Zone resolves an IPv6 zone (RFC 4007 §11: "fe80::1%eth0") to a
	// NIC ID, and ZoneName names a NIC for the zone of a received
	// link-local address; nil: zones are decimal NIC IDs (Linux's
	// sin6_scope_id). The root package wires both to its devices.
	Zone     func(zone string) (nicID int, ok bool)
	ZoneName func(nicID int) string
}

// Proto is the UDP protocol of one stack (struct proto udp_prot plus the
// udp_table).
type Proto struct {
	ip  family // IPv4
	ip6 family // IPv6; nil: IPv6 addresses are EAFNOSUPPORT
	clk clock.Clock
	cfg Config

	// mu guards ports, nbound and icpt. Bound: cfg.MaxSockets bound sockets.
	mu     sync.RWMutex
	ports  map[uint16][]*Socket
	nbound int
	// icpt is the intercept socket (proxy.go): diverted datagrams that
	// match no connected socket go there. Not in ports, not counted.
	icpt *Socket

	mib   [numCounters]atomic.Uint64
	drops buf.DropStats // drops of locally originated datagrams
}

// New returns a UDP protocol sending IPv4 through ip and IPv6 through ip6
// (nil: no IPv6). Register it with
// ipv4.Layer.AddProtocol(header.ProtoUDP, ipv4.Protocol{Rcv: p.V4Rcv, Err: p.V4Err})
// and ipv6.Layer.AddProtocol(header.ProtoUDP, ipv6.Protocol{Rcv: p.V6Rcv, Err: p.V6Err}).
func New(ip, ip6 family, cfg Config) *Proto {
	if cfg.Clock == nil {
		cfg.Clock = clock.NewReal()
	}
	if cfg.EphemeralLow == 0 && cfg.EphemeralHigh == 0 {
		cfg.EphemeralLow, cfg.EphemeralHigh = DefaultEphemeralLow, DefaultEphemeralHigh
	}
	if cfg.EphemeralLow == 0 {
		cfg.EphemeralLow = 1
	}
	if cfg.EphemeralHigh < cfg.EphemeralLow {
		cfg.EphemeralLow, cfg.EphemeralHigh = cfg.EphemeralHigh, cfg.EphemeralLow
	}
	if cfg.RcvBuf <= 0 {
		cfg.RcvBuf = DefaultRcvBuf
	}
	cfg.RcvBuf = min(max(cfg.RcvBuf, MinRcvBuf), MaxRcvBuf)
	if cfg.MaxSockets <= 0 {
		cfg.MaxSockets = DefaultMaxSockets
	}
	return &Proto{ip: ip, ip6: ip6, clk: cfg.Clock, cfg: cfg, ports: map[uint16][]*Socket{}}
}

// af is the network layer of a's family: IPv4 for an IPv4 address, IPv6
// for any other valid one when the Proto has IPv6. The socket API unmaps
// IPv4-mapped addresses first (RFC 4291 §2.5.5.2: ::ffff:a.b.c.d names
// the IPv4 node a.b.c.d), so none reaches the wire as an IPv6 address;
// af refuses one that got this far.
func (p *Proto) af(a netip.Addr) (family, bool) {
	switch {
	case a.Is4():
		return p.ip, true
	case a.Is6() && !a.Is4In6() && p.ip6 != nil:
		return p.ip6, true
	}
	return nil, false
}

// zoneNIC is the NIC a zoned address names (RFC 4007 §6: a link-local
// address is ambiguous without its link): 0 for no zone, ENODEV for a
// zone that names no NIC. The address is returned without its zone.
func (p *Proto) zoneNIC(a netip.Addr) (netip.Addr, int, error) {
	z := a.Zone()
	if z == "" {
		return a, 0, nil
	}
	a = a.WithZone("")
	if p.cfg.Zone != nil {
		if id, ok := p.cfg.Zone(z); ok {
			return a, id, nil
		}
		return a, 0, syscall.ENODEV
	}
	if id, err := strconv.Atoi(z); err == nil && id > 0 {
		return a, id, nil
	}
	return a, 0, syscall.ENODEV
}

// withZone gives a link-local address received on nic its zone, so that
// a reply to it (SendTo, SendFromTo) leaves through that NIC.
func (p *Proto) withZone(a netip.Addr, nic int) netip.Addr {
	if nic == 0 || !a.Is6() || !(a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast()) {
		return a
	}
	if p.cfg.ZoneName != nil {
		if z := p.cfg.ZoneName(nic); z != "" {
			return a.WithZone(z)
		}
	}
	return a.WithZone(strconv.Itoa(nic))
}

// wildcardFor reports whether a socket bound to the wildcard laddr takes
// a datagram to daddr: 0.0.0.0 takes IPv4 only; :: and an unbound socket
// take both families (an AF_INET6 socket without IPV6_V6ONLY, Linux's
// bindv6only=0 default, RFC 3493 §5.3).
func wildcardFor(laddr, daddr netip.Addr) bool {
	return !laddr.IsValid() || laddr == netip.IPv6Unspecified() || laddr == netip.IPv4Unspecified() && daddr.Is4()
}

// Drops counts drops of datagrams this package originated or was handed
// by a caller (the receive path counts on the input NIC's DropStats).
func (p *Proto) Drops() *buf.DropStats { return &p.drops }

// NewSocket returns an unbound socket (udp_init_sock).
func (p *Proto) NewSocket() *Socket {
	s := &Socket{p: p, rcvbuf: p.cfg.RcvBuf}
	s.cond.L = &s.mu
	s.timer = p.clk.NewTimer(s.deadlineFired)
	return s
}

// conflicts reports whether binding addr on a port already used by list
// conflicts (udp_lib_lport_inuse without SO_REUSEADDR/SO_REUSEPORT): it
// does when the addresses they take overlap (addrsOverlap).
func conflicts(list []*Socket, addr netip.Addr) bool {
	for _, o := range list {
		if addrsOverlap(o.laddr, addr) {
			return true
		}
	}
	return false
}

// addrsOverlap reports whether sockets bound to a and b would take a
// common destination address: an unbound socket and :: take every
// address of both families, 0.0.0.0 every IPv4 address, a specific
// address itself (so 0.0.0.0 and fd00::1 share a port, as AF_INET and
// AF_INET6 sockets do on Linux).
func addrsOverlap(a, b netip.Addr) bool {
	all := func(x netip.Addr) bool { return !x.IsValid() || x == netip.IPv6Unspecified() }
	switch {
	case all(a) || all(b) || a == b:
		return true
	case a == netip.IPv4Unspecified():
		return b.Is4()
	case b == netip.IPv4Unspecified():
		return a.Is4()
	}
	return false
}

// pickEphemeral picks a port of ip_local_port_range that taken refuses
// not, scanning from a random offset (udp_lib_get_port); false when the
// range is exhausted.
func (p *Proto) pickEphemeral(taken func(uint16) bool) (uint16, bool) {
	lo, hi := uint32(p.cfg.EphemeralLow), uint32(p.cfg.EphemeralHigh)
	n := hi - lo + 1
	start := rand.Uint32N(n)
	for i := uint32(0); i < n; i++ {
		if c := uint16(lo + (start+i)%n); !taken(c) {
			return c, true
		}
	}
	return 0, false
}

// bindLocked puts s in the table at addr:port, picking an ephemeral port
// for 0 (udp_lib_get_port). Called with p.mu and s.mu held.
func (p *Proto) bindLocked(s *Socket, addr netip.Addr, port uint16) error {
	if p.nbound >= p.cfg.MaxSockets {
		return syscall.ENOBUFS
	}
	if port == 0 {
		var ok bool
		if port, ok = p.pickEphemeral(func(c uint16) bool { return conflicts(p.ports[c], addr) }); !ok {
			return syscall.EADDRINUSE // Linux returns EADDRINUSE when the range is exhausted too
		}
	} else if conflicts(p.ports[port], addr) {
		return syscall.EADDRINUSE
	}
	p.ports[port] = append(p.ports[port], s)
	p.nbound++
	s.laddr, s.lport = addr, port
	return nil
}

// unhashLocked removes s from the table (udp_lib_unhash). Called with
// p.mu held.
func (p *Proto) unhashLocked(s *Socket) {
	list := p.ports[s.lport]
	for i, o := range list {
		if o == s {
			list = append(list[:i:i], list[i+1:]...)
			p.nbound--
			break
		}
	}
	if len(list) == 0 {
		delete(p.ports, s.lport)
	} else {
		p.ports[s.lport] = list
	}
}

// lookup finds the socket for a datagram from saddr:sport to daddr:dport
// (__udp4_lib_lookup, compute_score). Called with p.mu held for reading.
// The fields read are written only under p.mu (bind, connect), so no
// socket lock is needed.
func (p *Proto) lookup(saddr netip.Addr, sport uint16, daddr netip.Addr, dport uint16) *Socket {
	var best *Socket
	bestScore := -1
	for _, s := range p.ports[dport] {
		score := 0
		if s.laddr.IsValid() && !s.laddr.IsUnspecified() {
			if s.laddr != daddr {
				continue
			}
			score += 2
		} else if !wildcardFor(s.laddr, daddr) {
			continue
		}
		if s.connected {
			if s.raddr != saddr || s.rport != sport {
				continue
			}
			score += 4
		}
		if score > bestScore {
			best, bestScore = s, score
		}
	}
	return best
}

// counter indexes the UDP MIB (UDP_MIB_*).
type counter int

const (
	InDatagrams counter = iota
	NoPorts
	InErrors
	OutDatagrams
	RcvbufErrors
	SndbufErrors
	InCsumErrors
	InDiverted
	DivertNoPorts
	// ICMPSoftErrors counts ICMP errors about our datagrams that no
	// socket hears of (RFC 1122 §4.1.3.3 soft errors: net and host
	// unreachable, time exceeded); ICMPHardErrors those stored on a
	// connected socket (V4Err).
	ICMPSoftErrors
	ICMPHardErrors
	numCounters
)

var counterNames = [numCounters]string{
	"UdpInDatagrams", "UdpNoPorts", "UdpInErrors", "UdpOutDatagrams",
	"UdpRcvbufErrors", "UdpSndbufErrors", "UdpInCsumErrors",
	"UdpExtInDiverted", "UdpExtDivertNoPorts", "UdpExtICMPSoftErrors", "UdpExtICMPHardErrors",
}

// String is the nstat name.
func (c counter) String() string {
	if c >= 0 && c < numCounters {
		return counterNames[c]
	}
	return "?"
}

func (p *Proto) count(c counter) { p.mib[c].Add(1) }

// Stats is the UDP MIB (RFC 4113 udp group, /proc/net/snmp Udp:).
type Stats struct {
	InDatagrams, NoPorts, InErrors, OutDatagrams uint64
	RcvbufErrors, SndbufErrors, InCsumErrors     uint64
	// InDiverted counts diverted datagrams delivered (to a connected
	// socket by 4-tuple or to the intercept socket); DivertNoPorts
	// those that found neither (also counted in NoPorts).
	InDiverted, DivertNoPorts uint64
	// ICMPSoftErrors counts ICMP errors no socket hears of (soft ones);
	// ICMPHardErrors those a connected socket got as its error.
	ICMPSoftErrors, ICMPHardErrors uint64
}

// Stats returns the counters.
func (p *Proto) Stats() Stats {
	g := func(c counter) uint64 { return p.mib[c].Load() }
	return Stats{
		InDatagrams: g(InDatagrams), NoPorts: g(NoPorts), InErrors: g(InErrors), OutDatagrams: g(OutDatagrams),
		RcvbufErrors: g(RcvbufErrors), SndbufErrors: g(SndbufErrors), InCsumErrors: g(InCsumErrors),
		InDiverted: g(InDiverted), DivertNoPorts: g(DivertNoPorts),
		ICMPSoftErrors: g(ICMPSoftErrors), ICMPHardErrors: g(ICMPHardErrors),
	}
}

// Counters returns every counter by its nstat name, zeros included.
func (p *Proto) Counters() map[string]uint64 {
	m := make(map[string]uint64, numCounters)
	for c := counter(0); c < numCounters; c++ {
		m[counterNames[c]] = p.mib[c].Load()
	}
	return m
}

// Drop reasons of this layer (SKB_DROP_REASON_*).
var (
	DropTooSmall   = buf.NewDropReason("PKT_TOO_SMALL")
	DropCsum       = buf.NewDropReason("UDP_CSUM")
	DropNoSocket   = buf.NewDropReason("NO_SOCKET")
	DropRcvBuf     = buf.NewDropReason("SOCKET_RCVBUFF")
	DropClose      = buf.NewDropReason("SOCKET_CLOSE")
	DropBadPort    = buf.NewDropReason("UDP_BAD_PORT")
	DropNotToLocal = buf.NewDropReason("UDP_NOT_LOCAL")
)
