package inet

import (
	"sync"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// TokenBucket is the ICMP and ICMPv6 error rate limit, one per layer as
// the kernel's icmp_global: rate tokens per second up to burst, one token
// per error. Both families' RFCs ask for it and leave the parameters to
// the implementation: RFC 1812 §4.3.2.8 ("the rate limiting parameters
// SHOULD be settable"), RFC 4443 §2.4(f) ("an IPv6 node MUST limit the
// rate of ICMPv6 error messages it originates ... A recommended method
// for implementing the rate-limiting function is a token bucket").
type TokenBucket struct {
	mu     sync.Mutex // leaf
	clk    clock.Clock
	rate   int // tokens per second; < 0 = unlimited
	burst  int
	tokens float64
	last   time.Time
}

// Defaults of Init's zero arguments: icmp_msgs_per_sec and
// icmp_msgs_burst, which Linux shares between ICMP and ICMPv6.
const (
	DefaultICMPRateLimit = 1000
	DefaultICMPRateBurst = 50
)

// Init sets the rate in tokens per second (0 = DefaultICMPRateLimit, < 0
// = no limit) and the burst (<= 0 = DefaultICMPRateBurst), and fills the
// bucket.
func (b *TokenBucket) Init(clk clock.Clock, rate, burst int) {
	if rate == 0 {
		rate = DefaultICMPRateLimit
	}
	if burst <= 0 {
		burst = DefaultICMPRateBurst
	}
	b.clk, b.rate, b.burst = clk, rate, burst
	b.tokens = float64(burst)
	b.last = clk.Now()
}

// Allow takes a token, reporting whether there was one.
func (b *TokenBucket) Allow() bool {
	if b.rate < 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clk.Now()
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.tokens+d.Seconds()*float64(b.rate), float64(b.burst))
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
