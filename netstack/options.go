package netstack

import (
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// Option configures New (the sysctls of a fresh network namespace).
type Option func(*config)

type config struct {
	clk   clock.Clock
	hooks *netfilter.Hooks
	neigh neigh.Config
	ip    ipv4.Config
	udp   udp.Config
	tcp   tcp.Config
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

// WithRPFilter sets the default reverse-path filter of every NIC: strict
// (RFC 3704 §2.2, the default here) or off; SetRPFilter overrides per NIC.
func WithRPFilter(strict bool) Option {
	return func(c *config) {
		if strict {
			c.ip.RPFilter = ipv4.RPFilterStrict
		} else {
			c.ip.RPFilter = ipv4.RPFilterOff
		}
	}
}

// WithReassembly bounds IP reassembly: how long an incomplete datagram
// waits (ipfrag_time, default 30 s) and the memory all queues may hold
// (ipfrag_high_thresh, default 4 MiB). Zero keeps a default.
func WithReassembly(timeout time.Duration, memLimit int) Option {
	return func(c *config) { c.ip.ReasmTimeout, c.ip.ReasmMemLimit = timeout, memLimit }
}

// WithICMPRateLimit sets the ICMP error token bucket (icmp_msgs_per_sec,
// icmp_msgs_burst; default 1000/s, burst 50); a negative rate disables it.
func WithICMPRateLimit(perSecond, burst int) Option {
	return func(c *config) { c.ip.ICMPRateLimit, c.ip.ICMPRateBurst = perSecond, burst }
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
