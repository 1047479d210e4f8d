package ipv6

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// Bounds of the path MTU cache: pmtuShards shards of at most
// pmtuShardMax entries (4096 in all). A full shard first drops its
// expired entries, then the one closest to expiry.
const (
	pmtuShards   = 64
	pmtuShardMax = 64
)

// pmtuCache holds the path MTUs learnt from Packet Too Big messages (RFC
// 8201; the kernel keeps them as route exceptions, rt6_exception). Each
// entry lowers the MTU towards one destination until it expires (RFC 8201
// §4: an increase is tried no sooner than 5 minutes after, 10 by
// default): an expired entry is ignored, so the path MTU goes back to the
// link's and a smaller path shows itself with a new Packet Too Big.
//
// The output path reads it for every locally originated packet: while
// the cache is empty that is one atomic load; otherwise one read lock of
// the destination's shard. Updates are O(shard) under the shard's lock,
// so a flood of forged Packet Too Big messages costs little.
type pmtuCache struct {
	clk     clock.Clock
	expires time.Duration
	n       atomic.Int64 // entries over all shards
	shards  [pmtuShards]pmtuShard
}

type pmtuShard struct {
	mu sync.RWMutex
	m  map[netip.Addr]pmtuEntry // bound: pmtuShardMax
}

type pmtuEntry struct {
	mtu     int
	expires time.Time
}

func (c *pmtuCache) init(clk clock.Clock, expires time.Duration) {
	c.clk, c.expires = clk, expires
	for i := range c.shards {
		c.shards[i].m = map[netip.Addr]pmtuEntry{}
	}
}

func (c *pmtuCache) shard(dst netip.Addr) *pmtuShard {
	b := dst.As16()
	return &c.shards[binary.LittleEndian.Uint32(b[12:])%pmtuShards]
}

// get returns the live path MTU towards dst.
func (c *pmtuCache) get(dst netip.Addr) (int, bool) {
	if c.n.Load() == 0 {
		return 0, false
	}
	s := c.shard(dst)
	s.mu.RLock()
	e, ok := s.m[dst]
	s.mu.RUnlock()
	if !ok || !c.clk.Now().Before(e.expires) {
		return 0, false
	}
	return e.mtu, true
}

// update records mtu towards dst and reports whether it lowered the path
// MTU. RFC 8201 §4: "A node MUST NOT increase its estimate of the Path MTU
// in response to the contents of a Packet Too Big message"; the caller has
// clamped mtu to at least 1280.
func (c *pmtuCache) update(dst netip.Addr, mtu int) bool {
	now := c.clk.Now()
	s := c.shard(dst)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[dst]; ok && now.Before(e.expires) && e.mtu <= mtu {
		return false
	}
	if _, ok := s.m[dst]; !ok && len(s.m) >= pmtuShardMax {
		var soonest netip.Addr
		for k, e := range s.m {
			if !now.Before(e.expires) {
				delete(s.m, k)
				c.n.Add(-1)
				continue
			}
			if !soonest.IsValid() || e.expires.Before(s.m[soonest].expires) {
				soonest = k
			}
		}
		if len(s.m) >= pmtuShardMax {
			delete(s.m, soonest)
			c.n.Add(-1)
		}
	}
	if _, ok := s.m[dst]; !ok {
		c.n.Add(1)
	}
	s.m[dst] = pmtuEntry{mtu: mtu, expires: now.Add(c.expires)}
	return true
}

// len is the number of entries, expired ones included.
func (c *pmtuCache) len() int { return int(c.n.Load()) }
