package tcp

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math/bits"
	mrand "math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/tcp/cc"
)

// family is what TCP needs from the network layer (icsk_af_ops):
// ipv4.Layer and ipv6.Layer satisfy it. A Proto holds one of each; a
// socket takes the one of its addresses' family (Proto.af) when it is
// routed, and everything family-specific past that point (the network
// header's size in the MSS, the GSO type, the ICMP error's minimum MTU)
// follows Sock.v6.
type family interface {
	// QueueXmit consumes skb; skb.Bytes() starts at the TCP header, whose
	// checksum is complete or CsumPartial.
	QueueXmit(skb *buf.SKB, fl route.Flow) error
	// RouteOutput is ip_route_output_key: it picks the source address
	// and the output NIC.
	RouteOutput(fl route.Flow) (route.Result, error)
}

// Defaults for Config fields left zero (Linux sysctl defaults unless said).
const (
	DefaultSndBuf        = 1 << 20   // bytes; tcp_wmem's default is 16 KiB, autotuned to 4 MiB
	DefaultRcvBuf        = 256 << 10 // bytes at the start; autotuned up to MaxRcvBuf
	DefaultMaxRcvBuf     = 6 << 20   // tcp_rmem[2]
	MinBuf               = 4096
	MaxBuf               = 32 << 20
	DefaultTimeWait      = 60 * time.Second // TCP_TIMEWAIT_LEN (2 MSL)
	DefaultFinTimeout    = 60 * time.Second // tcp_fin_timeout
	DefaultSynRetries    = 6                // tcp_syn_retries
	DefaultSynAckRetries = 5                // tcp_synack_retries
	DefaultRetries2      = 15               // tcp_retries2
	DefaultBacklog       = 128              // SOMAXCONN was 128 for decades
	MaxBacklog           = 4096             // somaxconn
	DefaultMaxSynBacklog = 1024             // tcp_max_syn_backlog per listener
	DefaultMaxSockets    = 1 << 17          // bound of the connection table
	// DefaultMaxTimeWait is half the connection table: sockets waiting
	// out TIME-WAIT never take the room of more than half of it.
	DefaultMaxTimeWait   = DefaultMaxSockets / 2
	DefaultKeepIdle      = 2 * time.Hour    // tcp_keepalive_time
	DefaultKeepIntvl     = 75 * time.Second // tcp_keepalive_intvl
	DefaultKeepCount     = 9                // tcp_keepalive_probes
	DefaultEphemeralLow  = 32768
	DefaultEphemeralHigh = 60999
	// ChallengeACKLimit is RFC 5961 §7's rate limit, per second, per
	// Proto (tcp_challenge_ack_limit).
	ChallengeACKLimit = 1000
)

// RTO bounds. RFC 6298 §2.4: "if it is less than 1 second, then the RTO
// SHOULD be rounded up to 1 second." We follow Linux (TCP_RTO_MIN) instead.
const (
	MinRTO     = 200 * time.Millisecond
	MaxRTO     = 120 * time.Second // TCP_RTO_MAX; RFC 6298 §2.5 allows a maximum of at least 60 s
	InitialRTO = time.Second       // RFC 6298 §2.1
	// delAckMax is the delayed ACK timeout: RFC 9293 §3.8.6.3 (MUST-40)
	// wants less than 0.5 s; Linux uses TCP_DELACK_MIN (40 ms) at first.
	delAckTimeout = 40 * time.Millisecond
	// quickAcks is how many segments are ACKed at once at the start of
	// a connection (Linux quickack mode, TCP_MAX_QUICKBUFS spirit).
	quickAcks = 16
)

// Config tunes a Proto (the net.ipv4.tcp_* sysctls).
type Config struct {
	// Clock runs every timer; nil = clock.NewReal().
	Clock clock.Clock
	// SndBuf and RcvBuf are the per-connection buffer bounds in bytes;
	// RcvBuf grows up to MaxRcvBuf with the reader's pace (receive
	// buffer auto-tuning) unless SetBuffers fixed it.
	SndBuf, RcvBuf, MaxRcvBuf int
	// CongestionControl names the default algorithm ("cubic", "reno").
	CongestionControl string
	// TimeWait is the TIME-WAIT duration (2 MSL); FinTimeout bounds
	// FIN-WAIT-2 of a closed socket.
	TimeWait, FinTimeout time.Duration
	// SynRetries, SynAckRetries and Retries2 bound retransmissions.
	SynRetries, SynAckRetries, Retries2 int
	// MaxSynBacklog bounds each listener's SYN queue.
	MaxSynBacklog int
	// MaxSockets bounds the connection table (ENOBUFS/drop past it).
	MaxSockets int
	// MaxTimeWait bounds the sockets in TIME-WAIT (tcp_max_tw_buckets);
	// a socket that would enter it past the bound closes at once
	// (TcpExtTCPTimeWaitOverflow).
	MaxTimeWait int
	// NoTimestamps, NoWindowScaling and NoSACK turn off RFC 7323 and
	// RFC 2018 options (tcp_timestamps=0 ...).
	NoTimestamps, NoWindowScaling, NoSACK bool
	// NoSynCookies turns RFC 4987 SYN cookies off (tcp_syncookies=0);
	// by default they answer SYNs that find the SYN queue full.
	NoSynCookies bool
	// ECN requests Explicit Congestion Notification (RFC 3168) on
	// active opens (tcp_ecn=1); NoECN also refuses it on passive ones.
	// By default ECN is accepted when the peer asks (tcp_ecn=2).
	ECN, NoECN bool
	// Device reports an output NIC's MTU and offloads; nil = 1500 and
	// no offloads. The root package wires it to dev.
	Device func(nicID int) (mtu int, caps link.Caps, ok bool)
	// EphemeralLow..EphemeralHigh is ip_local_port_range.
	EphemeralLow, EphemeralHigh uint16
	// Zone resolves an IPv6 zone (RFC 4007 §11: "fe80::1%eth0") to a
	// NIC ID; nil: zones are decimal NIC IDs (Linux's sin6_scope_id).
	// The root package wires it to its devices.
	Zone func(zone string) (nicID int, ok bool)
}

// tuple is a connection's 4-tuple from our side.
type tuple struct {
	laddr, raddr netip.Addr
	lport, rport uint16
}

// Proto is TCP for one stack (struct proto tcp_prot plus the
// inet_hashinfo tables).
type Proto struct {
	ip  family // IPv4
	ip6 family // IPv6; nil: IPv6 addresses are EAFNOSUPPORT
	clk clock.Clock
	cfg Config

	// mu guards conns, listeners and ports. It is a leaf: nothing is
	// called with it held but map operations. Bounds: cfg.MaxSockets
	// entries in conns (children and active opens past it are refused).
	mu        sync.RWMutex
	conns     map[tuple]*Sock
	listeners map[uint16][]*Sock
	ports     map[uint16]int // local ports held by connections we opened

	secret [32]byte // RFC 6528 F() key and timestamp offsets
	epoch  time.Time

	// challenge is the RFC 5961 §7 token bucket.
	challengeMu     sync.Mutex
	challengeSecond int64
	challengeLeft   int

	// icpt is the transparent proxy's Interceptor (intercept.go), nil
	// when none: diverted SYNs matching no connection go there.
	icpt atomic.Pointer[Interceptor]

	mib [numCounters]atomic.Uint64
	// timeWait counts the sockets in TIME-WAIT (enterTimeWait adds one
	// if under MaxTimeWait, done takes it back).
	timeWait atomic.Int64
	drops    buf.DropStats
}

// New returns TCP sending IPv4 through ip and IPv6 through ip6 (nil: no
// IPv6). Register it with
// ipv4.Layer.AddProtocol(header.ProtoTCP, ipv4.Protocol{Rcv: p.V4Rcv, Err: p.V4Err})
// and ipv6.Layer.AddProtocol(header.ProtoTCP, ipv6.Protocol{Rcv: p.V6Rcv, Err: p.V6Err}).
func New(ip, ip6 family, cfg Config) *Proto {
	if cfg.Clock == nil {
		cfg.Clock = clock.NewReal()
	}
	def := func(v *int, d, lo, hi int) {
		if *v <= 0 {
			*v = d
		}
		*v = min(max(*v, lo), hi)
	}
	def(&cfg.SndBuf, DefaultSndBuf, MinBuf, MaxBuf)
	def(&cfg.RcvBuf, DefaultRcvBuf, MinBuf, MaxBuf)
	def(&cfg.MaxRcvBuf, DefaultMaxRcvBuf, cfg.RcvBuf, MaxBuf)
	def(&cfg.SynRetries, DefaultSynRetries, 1, 127)
	def(&cfg.SynAckRetries, DefaultSynAckRetries, 1, 127)
	def(&cfg.Retries2, DefaultRetries2, 1, 127)
	def(&cfg.MaxSynBacklog, DefaultMaxSynBacklog, 1, 1<<20)
	def(&cfg.MaxSockets, DefaultMaxSockets, 1, 1<<24)
	def(&cfg.MaxTimeWait, DefaultMaxTimeWait, 1, 1<<24)
	if cfg.TimeWait <= 0 {
		cfg.TimeWait = DefaultTimeWait
	}
	if cfg.FinTimeout <= 0 {
		cfg.FinTimeout = DefaultFinTimeout
	}
	if cfg.CongestionControl == "" {
		cfg.CongestionControl = cc.Default
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
	p := &Proto{ip: ip, ip6: ip6, clk: cfg.Clock, cfg: cfg, conns: map[tuple]*Sock{},
		listeners: map[uint16][]*Sock{}, ports: map[uint16]int{}, epoch: cfg.Clock.Now()}
	_, _ = rand.Read(p.secret[:])
	return p
}

// af is the network layer of a's family: IPv4 for an IPv4 address, IPv6
// for any other valid one when the Proto has IPv6. IPv4-mapped addresses
// (::ffff:a.b.c.d) never reach it: the socket API unmaps them first
// (sockAddr), so none goes on the wire (RFC 4038 §4.2).
func (p *Proto) af(a netip.Addr) (family, bool) {
	switch {
	case a.Is4():
		return p.ip, true
	case a.Is6() && !a.Is4In6() && p.ip6 != nil:
		return p.ip6, true
	}
	return nil, false
}

// sockAddr is the socket API's treatment of an address. An IPv4-mapped
// one (RFC 4291 §2.5.5.2) names the IPv4 node, so ::ffff:a.b.c.d is
// a.b.c.d (what a dual-stack AF_INET6 socket sends to, RFC 3493 §3.7),
// and never goes on the wire as an IPv6 address. A zone (RFC 4007 §11)
// names the NIC of a link-local address: it is resolved to the NIC ID
// returned (ENODEV when it names none) and taken off the address, which
// the wire carries without it.
func (p *Proto) sockAddr(a netip.Addr) (netip.Addr, int, error) {
	if a.Is4In6() {
		return a.Unmap(), 0, nil
	}
	z := a.Zone()
	if z == "" {
		return a, 0, nil
	}
	a = a.WithZone("")
	if p.cfg.Zone != nil {
		if id, ok := p.cfg.Zone(z); ok {
			return a, id, nil
		}
	} else if id, err := strconv.Atoi(z); err == nil && id > 0 {
		return a, id, nil
	}
	return a, 0, syscall.ENODEV
}

// Config returns the effective configuration.
func (p *Proto) Config() Config { return p.cfg }

// Drops counts drops of segments this package originated.
func (p *Proto) Drops() *buf.DropStats { return &p.drops }

// isn is RFC 6528 §3: ISN = M + F(localip, localport, remoteip,
// remoteport, secretkey), M a 4 µs timer and F a keyed hash (SHA-256
// here, as RFC 6528 suggests a cryptographic hash).
func (p *Proto) isn(t tuple) uint32 {
	m := uint32(p.clk.Now().Sub(p.epoch).Microseconds() / 4)
	return m + p.hash(t, 0)
}

// tsOffset is the per-connection timestamp offset (RFC 7323 §5.4
// recommends randomizing the initial TSval; Linux secure_tcp_ts_off).
func (p *Proto) tsOffset(t tuple) uint32 { return p.hash(t, 1) }

func (p *Proto) hash(t tuple, salt byte) uint32 {
	var b [32 + 1 + 16 + 16 + 4]byte
	copy(b[:], p.secret[:])
	b[32] = salt
	la, ra := t.laddr.As16(), t.raddr.As16()
	copy(b[33:], la[:])
	copy(b[49:], ra[:])
	binary.BigEndian.PutUint16(b[65:], t.lport)
	binary.BigEndian.PutUint16(b[67:], t.rport)
	h := sha256.Sum256(b[:])
	return binary.BigEndian.Uint32(h[:])
}

// tsNow is the timestamp clock: milliseconds (RFC 7323 §5.4: between
// 1 ms and 1 s per tick; Linux uses 1 ms).
func (p *Proto) tsNow() uint32 { return uint32(p.clk.Now().Sub(p.epoch).Milliseconds()) }

// allowChallenge is RFC 5961 §7: "limit the number of challenge ACKs
// sent per time frame" — ChallengeACKLimit per second.
func (p *Proto) allowChallenge() bool {
	now := p.clk.Now().Unix()
	p.challengeMu.Lock()
	defer p.challengeMu.Unlock()
	if now != p.challengeSecond {
		p.challengeSecond, p.challengeLeft = now, ChallengeACKLimit
	}
	if p.challengeLeft == 0 {
		p.count(TCPChallengeACKLimited)
		return false
	}
	p.challengeLeft--
	return true
}

// device returns the output NIC's MTU and offloads.
func (p *Proto) device(nic int) (int, link.Caps) {
	if p.cfg.Device != nil {
		if mtu, caps, ok := p.cfg.Device(nic); ok && mtu >= 68 {
			return mtu, caps
		}
	}
	return 1500, 0
}

// lookupListener finds the listener for daddr:dport, a specific address
// before the wildcard (__inet_lookup_listener). Called with p.mu held.
// The IPv4 wildcard 0.0.0.0 takes IPv4 only; the IPv6 wildcard :: and an
// unbound listener take both families (an AF_INET6 socket without
// IPV6_V6ONLY, Linux's bindv6only=0 default, RFC 3493 §5.3).
func (p *Proto) lookupListener(daddr netip.Addr, dport uint16) *Sock {
	var wild *Sock
	for _, l := range p.listeners[dport] {
		if l.id.laddr == daddr {
			return l
		}
		if wildcardFor(l.id.laddr, daddr) {
			wild = l
		}
	}
	return wild
}

// wildcardFor reports whether a socket bound to the wildcard laddr takes
// a segment to daddr (see lookupListener).
func wildcardFor(laddr, daddr netip.Addr) bool {
	return !laddr.IsValid() || laddr == netip.IPv6Unspecified() || laddr == netip.IPv4Unspecified() && daddr.Is4()
}

// lookupListenerRLocked is lookupListener taking Proto.mu.
func (p *Proto) lookupListenerRLocked(t tuple) *Sock {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.lookupListener(t.laddr, t.lport)
}

// lookup is __inet_lookup: the established table, then listeners.
func (p *Proto) lookup(t tuple) (*Sock, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if s := p.conns[t]; s != nil {
		return s, false
	}
	return p.lookupListener(t.laddr, t.lport), true
}

// hashConn inserts s under its tuple (inet_ehash_insert); false when the
// tuple is taken or the table is full.
func (p *Proto) hashConn(s *Sock, holdsPort bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.conns[s.id]; ok {
		return syscall.EADDRINUSE
	}
	if len(p.conns) >= p.cfg.MaxSockets {
		return syscall.ENOBUFS
	}
	p.conns[s.id] = s
	if holdsPort {
		p.ports[s.id.lport]++
		s.holdsPort = true
	}
	s.hashed = true
	return nil
}

// unhash removes s from the tables (inet_unhash, inet_put_port).
func (p *Proto) unhash(s *Sock) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.hashed {
		if p.conns[s.id] == s {
			delete(p.conns, s.id)
		}
		s.hashed = false
	}
	if s.holdsPort {
		if p.ports[s.id.lport]--; p.ports[s.id.lport] <= 0 {
			delete(p.ports, s.id.lport)
		}
		s.holdsPort = false
	}
	if s.listening {
		list := p.listeners[s.id.lport]
		for i, o := range list {
			if o == s {
				list = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(p.listeners, s.id.lport)
		} else {
			p.listeners[s.id.lport] = list
		}
		s.listening = false
	}
}

// listenConflict reports whether a listener on addr:port would clash
// with another listener (inet_csk_bind_conflict with SO_REUSEADDR, which
// Go's net.Listen sets: established and TIME-WAIT users do not clash):
// when the addresses they take overlap (addrsOverlap).
func listenConflict(list []*Sock, addr netip.Addr) bool {
	for _, o := range list {
		if addrsOverlap(o.id.laddr, addr) {
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

// hashListener puts s in the listener table, picking an ephemeral port
// for port 0 (inet_csk_get_port).
func (p *Proto) hashListener(s *Sock, addr netip.Addr, port uint16) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if port == 0 {
		var ok bool
		if port, ok = p.pickPortLocked(func(c uint16) bool {
			return p.ports[c] == 0 && !listenConflict(p.listeners[c], addr)
		}); !ok {
			return syscall.EADDRINUSE
		}
	} else if listenConflict(p.listeners[port], addr) {
		return syscall.EADDRINUSE
	}
	s.id.laddr, s.id.lport = addr, port
	p.listeners[port] = append(p.listeners[port], s)
	s.listening = true
	return nil
}

// pickPortLocked walks the ephemeral range from a random offset
// (RFC 6056 §3.3.1, Algorithm 1).
func (p *Proto) pickPortLocked(free func(uint16) bool) (uint16, bool) {
	lo, hi := uint32(p.cfg.EphemeralLow), uint32(p.cfg.EphemeralHigh)
	n := hi - lo + 1
	start := mrand.Uint32N(n)
	for i := uint32(0); i < n; i++ {
		c := uint16(lo + (start+i)%n)
		if free(c) {
			return c, true
		}
	}
	return 0, false
}

// hashConnect binds an ephemeral port for an active open and inserts s
// (inet_hash_connect): a port no listener holds whose 4-tuple is free.
func (p *Proto) hashConnect(s *Sock) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) >= p.cfg.MaxSockets {
		return syscall.ENOBUFS
	}
	if s.id.lport == 0 {
		// Like __inet_hash_connect, a port may serve several
		// connections as long as their 4-tuples differ, so TIME-WAIT
		// does not exhaust the range towards many destinations.
		port, ok := p.pickPortLocked(func(c uint16) bool {
			if len(p.listeners[c]) != 0 {
				return false
			}
			t := s.id
			t.lport = c
			_, used := p.conns[t]
			return !used
		})
		if !ok {
			return syscall.EADDRNOTAVAIL // Linux: connect() with no free port
		}
		s.id.lport = port
	} else if _, used := p.conns[s.id]; used {
		return syscall.EADDRINUSE
	}
	p.conns[s.id] = s
	p.ports[s.id.lport]++
	s.holdsPort, s.hashed = true, true
	return nil
}

// wscaleFor is tcp_select_initial_window's shift: the smallest shift
// that lets a 16-bit field describe space (RFC 7323 §2.3, at most 14).
func wscaleFor(space int) uint8 {
	if space <= 0xffff {
		return 0
	}
	s := bits.Len32(uint32(space)) - 16
	return uint8(min(s, 14))
}
