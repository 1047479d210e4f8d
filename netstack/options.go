package netstack

import (
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// Option configures New (the sysctls of a fresh network namespace).
type Option func(*config)

type config struct {
	clk    clock.Clock
	hooks  *netfilter.Hooks
	hooks6 *netfilter.Hooks
	neigh  neigh.Config
	ip     ipv4.Config
	ip6    ipv6.Config
	udp    udp.Config
	tcp    tcp.Config
}

// WithClock runs the stack on clk: every timer, deadline and timestamp.
// Tests pass a clock.Manual. Without it New starts a clock.NewReal that
// Close stops.
func WithClock(clk clock.Clock) Option { return func(c *config) { c.clk = clk } }

// WithHooks uses h as the netfilter hooks (to share a ruleset built
// before the stack); without it the stack has empty hooks of its own.
func WithHooks(h *netfilter.Hooks) Option { return func(c *config) { c.hooks = h } }

// WithNeighConfig sets the NUD parameters (neigh_parms; zero fields keep
// the Linux defaults).
func WithNeighConfig(nc neigh.Config) Option { return func(c *config) { c.neigh = nc } }

// WithForwarding sets net.ipv4.ip_forward at start (default off, as Linux).
func WithForwarding(on bool) Option { return func(c *config) { c.ip.Forwarding = on } }

// WithDefaultTTL sets net.ipv4.ip_default_ttl (default 64).
func WithDefaultTTL(ttl uint8) Option { return func(c *config) { c.ip.DefaultTTL = ttl } }

// WithRPFilter sets the default reverse-path filter of every NIC, for
// both families: strict (RFC 3704 §2.2, the default here) or off;
// SetRPFilter overrides per NIC.
func WithRPFilter(strict bool) Option {
	return func(c *config) {
		if strict {
			c.ip.RPFilter, c.ip6.RPFilter = ipv4.RPFilterStrict, ipv6.RPFilterStrict
		} else {
			c.ip.RPFilter, c.ip6.RPFilter = ipv4.RPFilterOff, ipv6.RPFilterOff
		}
	}
}

// WithReassembly bounds IPv4 reassembly: how long an incomplete datagram
// waits (ipfrag_time, default 30 s) and the memory all queues may hold
// (ipfrag_high_thresh, default 4 MiB). Zero keeps a default. IPv6 has its
// own: WithIPv6Reassembly.
func WithReassembly(timeout time.Duration, memLimit int) Option {
	return func(c *config) { c.ip.ReasmTimeout, c.ip.ReasmMemLimit = timeout, memLimit }
}

// WithICMPRateLimit sets the ICMP error token buckets of both families
// (icmp_msgs_per_sec, icmp_msgs_burst, which Linux shares between ICMP
// and ICMPv6; here each family has a bucket of this size; default
// 1000/s, burst 50); a negative rate disables them.
func WithICMPRateLimit(perSecond, burst int) Option {
	return func(c *config) {
		c.ip.ICMPRateLimit, c.ip.ICMPRateBurst = perSecond, burst
		c.ip6.ICMPRateLimit, c.ip6.ICMPRateBurst = perSecond, burst
	}
}

// WithEphemeralPorts sets ip_local_port_range for UDP autobind (default
// 32768–60999).
func WithEphemeralPorts(low, high uint16) Option {
	return func(c *config) { c.udp.EphemeralLow, c.udp.EphemeralHigh = low, high }
}

// WithUDPReceiveBuffer sets the default UDP receive queue bound in bytes
// (net.core.rmem_default, 212992).
func WithUDPReceiveBuffer(bytes int) Option { return func(c *config) { c.udp.RcvBuf = bytes } }

// NICConfig configures AddNIC.
type NICConfig struct {
	// Name must be unique in the stack; "" names it "ethN" after its ID.
	Name string
	// MAC is the NIC's address; the zero MAC picks a random locally
	// administered unicast address.
	MAC header.MAC
	// MTU is the largest L3 packet; 0 = the endpoint's MTU.
	MTU int
	// TxQueueLen bounds the transmit queue (txqueuelen); 0 = 1000.
	TxQueueLen int
	// RxBatch is the frames read per poll (the NAPI budget); 0 = 64.
	RxBatch int
}

// WithHooks6 uses h as the IPv6 netfilter hooks (nf_hooks_ipv6); without
// it the stack has empty ones of its own. They are apart from the IPv4
// hooks, so a hook function written for IPv4 never sees an IPv6 packet.
func WithHooks6(h *netfilter.Hooks) Option { return func(c *config) { c.hooks6 = h } }

// WithForwarding6 sets net.ipv6.conf.all.forwarding at start (default
// off); the stack's Neighbor Advertisements carry the Router flag while
// it is on.
func WithForwarding6(on bool) Option { return func(c *config) { c.ip6.Forwarding = on } }

// WithDefaultHopLimit sets net.ipv6.conf.all.hop_limit (default 64).
func WithDefaultHopLimit(h uint8) Option { return func(c *config) { c.ip6.DefaultHopLimit = h } }

// WithIPv6Reassembly bounds IPv6 reassembly: how long an incomplete
// packet waits (default 60 s, RFC 8200 §4.5) and the memory all queues
// may hold (ip6frag_high_thresh, default 4 MiB). Zero keeps a default.
func WithIPv6Reassembly(timeout time.Duration, memLimit int) Option {
	return func(c *config) { c.ip6.ReasmTimeout, c.ip6.ReasmMemLimit = timeout, memLimit }
}

// WithPMTUExpires sets how long a path MTU learnt from an ICMPv6 Packet
// Too Big holds (ip6_rt_mtu_expires, default 10 minutes, RFC 8201 §4).
func WithPMTUExpires(d time.Duration) Option { return func(c *config) { c.ip6.PMTUExpires = d } }
