package neigh

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Router Advertisements (RFC 4861 §6.2; the part of radvd a CNI gateway
// needs). Off by default: pods get their routes from CNI. SetRouterAdvert
// turns them on for one NIC, which then sends unsolicited advertisements
// (§6.2.4) and answers Router Solicitations (§6.2.6). Redirects are never
// sent.

// RFC 4861 §10 router constants.
const (
	maxInitialRtrAdvertInterval = 16 * time.Second
	maxInitialRtrAdvertisements = 3
	maxFinalRtrAdvertisements   = 1 // §6.2.5 allows up to 3; one says it
	minDelayBetweenRAs          = 3 * time.Second
	maxRADelayTime              = 500 * time.Millisecond
)

// RouterAdvertConfig is what a NIC advertises (RFC 4861 §6.2.1's AdvXxx
// variables; zero fields take its defaults).
type RouterAdvertConfig struct {
	// MaxInterval is MaxRtrAdvInterval: 4 s .. 1800 s, default 600 s.
	MaxInterval time.Duration
	// MinInterval is MinRtrAdvInterval: 3 s .. 0.75 × MaxInterval,
	// default 0.33 × MaxInterval.
	MinInterval time.Duration
	// Managed and Other are the M and O flags (DHCPv6).
	Managed, Other bool
	// LinkMTU is advertised in an MTU option (§4.6.4) when not 0.
	LinkMTU uint32
	// ReachableTime and RetransTimer are advertised when not 0.
	ReachableTime, RetransTimer time.Duration
	// CurHopLimit is the hop limit hosts should use; default 64.
	CurHopLimit uint8
	// DefaultLifetime is AdvDefaultLifetime: how long hosts keep us as a
	// default router; default 3 × MaxInterval, at most 9000 s. Set
	// NotDefaultRouter to advertise 0 (prefixes and options only).
	DefaultLifetime  time.Duration
	NotDefaultRouter bool
	// Prefixes are advertised in Prefix Information options (§4.6.2).
	Prefixes []header.NDPPrefixInfo
	// RDNSS lists recursive DNS servers (RFC 8106 §5.1) with their
	// lifetime (default 3 × MaxInterval).
	RDNSS         []netip.Addr
	RDNSSLifetime time.Duration
}

// ErrBadRouterAdvert is SetRouterAdvert's answer to an out-of-range config.
var ErrBadRouterAdvert = errors.New("neigh: bad router advertisement config")

func (c *RouterAdvertConfig) setDefaults() error {
	if c.MaxInterval == 0 {
		c.MaxInterval = 600 * time.Second
	}
	if c.MaxInterval < 4*time.Second || c.MaxInterval > 1800*time.Second {
		return fmt.Errorf("%w: MaxInterval %v not in [4s, 1800s]", ErrBadRouterAdvert, c.MaxInterval)
	}
	if c.MinInterval == 0 {
		c.MinInterval = max(3*time.Second, c.MaxInterval*33/100)
	}
	if c.MinInterval < 3*time.Second || c.MinInterval > c.MaxInterval*3/4 {
		return fmt.Errorf("%w: MinInterval %v not in [3s, 0.75×MaxInterval]", ErrBadRouterAdvert, c.MinInterval)
	}
	if c.CurHopLimit == 0 {
		c.CurHopLimit = 64
	}
	if c.DefaultLifetime == 0 {
		c.DefaultLifetime = 3 * c.MaxInterval
	}
	if c.DefaultLifetime > 9000*time.Second || c.DefaultLifetime < c.MaxInterval {
		return fmt.Errorf("%w: DefaultLifetime %v not in [MaxInterval, 9000s]", ErrBadRouterAdvert, c.DefaultLifetime)
	}
	if c.RDNSSLifetime == 0 {
		c.RDNSSLifetime = 3 * c.MaxInterval
	}
	if len(c.Prefixes) > maxRAPrefixes || len(c.RDNSS) > maxRARDNSS {
		return fmt.Errorf("%w: at most %d prefixes and %d DNS servers", ErrBadRouterAdvert, maxRAPrefixes, maxRARDNSS)
	}
	for _, p := range c.Prefixes {
		if !p.Prefix.IsValid() || !p.Prefix.Addr().Is6() || p.Prefix.Addr().Is4In6() {
			return fmt.Errorf("%w: prefix %v", ErrBadRouterAdvert, p.Prefix)
		}
	}
	for _, a := range c.RDNSS {
		if !a.Is6() || a.IsMulticast() || a.Is4In6() {
			return fmt.Errorf("%w: DNS server %v", ErrBadRouterAdvert, a)
		}
	}
	return nil
}

// Bounds of one advertisement: what fits in the minimum MTU with room.
const (
	maxRAPrefixes = 16
	maxRARDNSS    = 8
)

// raState is one advertising NIC: its config and its one timer.
type raState struct {
	nic     *dev.NIC
	cfg     RouterAdvertConfig
	timer   *clock.Timer
	next    time.Time // when the timer fires
	last    time.Time // last multicast advertisement
	initial int       // initial advertisements still to send (§6.2.4)
	dead    bool
}

// SetRouterAdvert makes nicID an advertising interface with cfg, or
// stops advertising with nil (RFC 4861 §6.2.5: a final advertisement
// with a zero Router Lifetime is sent). The first advertisement goes out
// at once, the next ones per §6.2.4. Errors: ErrBadRouterAdvert for a
// config out of RFC 4861 §6.2.1's ranges, and a NIC that does not exist.
func (t *Table) SetRouterAdvert(nicID int, cfg *RouterAdvertConfig) error {
	nic := t.devs.ByID(nicID)
	if nic == nil {
		return fmt.Errorf("neigh: no NIC %d", nicID)
	}
	if cfg == nil {
		t.mu.Lock()
		old := t.ra[nicID]
		t.stopRALocked(nicID)
		t.mu.Unlock()
		if old != nil {
			final := old.cfg
			final.NotDefaultRouter = true
			for range maxFinalRtrAdvertisements {
				t.sendRA(nic, &final, header.IPv6AllNodes)
			}
		}
		return nil
	}
	c := *cfg
	c.Prefixes = append([]header.NDPPrefixInfo(nil), cfg.Prefixes...)
	c.RDNSS = append([]netip.Addr(nil), cfg.RDNSS...)
	if err := c.setDefaults(); err != nil {
		return err
	}
	t.mu.Lock()
	t.stopRALocked(nicID)
	st := &raState{nic: nic, cfg: c, initial: maxInitialRtrAdvertisements}
	st.timer = t.clk.NewTimer(func() { t.raTimer(st) })
	t.ra[nicID] = st
	st.next = t.clk.Now()
	st.timer.Reset(0)
	t.mu.Unlock()
	return nil
}

// stopRALocked stops nicID's advertisements; t.mu is held.
func (t *Table) stopRALocked(nicID int) {
	if st := t.ra[nicID]; st != nil {
		st.dead = true
		st.timer.Stop()
		delete(t.ra, nicID)
	}
}

// raTimer sends a multicast advertisement and schedules the next one:
// RFC 4861 §6.2.4, a uniformly distributed interval in [MinInterval,
// MaxInterval], no more than MAX_INITIAL_RTR_ADVERT_INTERVAL for the
// first MAX_INITIAL_RTR_ADVERTISEMENTS.
func (t *Table) raTimer(st *raState) {
	t.mu.Lock()
	if st.dead {
		t.mu.Unlock()
		return
	}
	now := t.clk.Now()
	c := st.cfg
	st.last = now
	d := c.MinInterval + rand.N(c.MaxInterval-c.MinInterval+1)
	if st.initial > 0 {
		st.initial--
	}
	if st.initial > 0 {
		// More initial advertisements to come: the interval to the next
		// one is capped.
		d = min(d, maxInitialRtrAdvertInterval)
	}
	st.next = now.Add(d)
	st.timer.Reset(d)
	t.mu.Unlock()
	t.sendRA(st.nic, &c, header.IPv6AllNodes)
}

// solicitedRA answers a Router Solicitation on nic (RFC 4861 §6.2.6): the
// next multicast advertisement is moved to a random time within
// MAX_RA_DELAY_TIME, but no sooner than MIN_DELAY_BETWEEN_RAS after the
// last one; an advertisement already due sooner is kept.
func (t *Table) solicitedRA(nic *dev.NIC) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.ra[nic.ID()]
	if st == nil {
		return
	}
	now := t.clk.Now()
	at := now.Add(rand.N(maxRADelayTime + 1))
	if earliest := st.last.Add(minDelayBetweenRAs); !st.last.IsZero() && at.Before(earliest) {
		at = earliest
	}
	if at.Before(st.next) {
		st.next = at
		st.timer.Reset(at.Sub(now))
	}
}

// sendRA builds and sends one advertisement to dst from nic's link-local
// address (RFC 4861 §4.2: "MUST be the link-local address assigned to
// the interface"); a NIC without one sends none.
func (t *Table) sendRA(nic *dev.NIC, c *RouterAdvertConfig, dst netip.Addr) {
	src, ok := linkLocal6(nic)
	if !ok || !nic.IsUp() {
		return
	}
	f := header.NDPRouterAdvertFields{
		CurHopLimit: c.CurHopLimit, Managed: c.Managed, Other: c.Other,
		ReachableTime: uint32(c.ReachableTime / time.Millisecond), RetransTimer: uint32(c.RetransTimer / time.Millisecond),
		Options: header.NDPOptionFields{SourceLinkAddr: nic.MAC(), MTU: c.LinkMTU, Prefixes: c.Prefixes},
	}
	if !c.NotDefaultRouter {
		f.RouterLifetime = uint16(c.DefaultLifetime / time.Second)
	}
	if len(c.RDNSS) > 0 {
		f.Options.RDNSS, f.Options.RDNSSLifetime = c.RDNSS, uint32(c.RDNSSLifetime/time.Second)
	}
	skb, msg := ndpSKB(f.Len(), src, dst)
	header.NDPRouterAdvert(msg).Encode(&f)
	t.xmitNDP(nic, header.IPv6MulticastMAC(dst), skb, src, dst)
	t.count(func(s *Stats) { s.NDPOutRouterAdverts++ })
}
