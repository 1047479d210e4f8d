package inet

import (
	"errors"
	"math/bits"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// fam4 and fam6 are the families as ipv4 and ipv6 define them.
type fam4 struct{}

func (fam4) Src(ip []byte) netip.Addr { return header.IPv4(ip).Src() }
func (fam4) Dst(ip []byte) netip.Addr { return header.IPv4(ip).Dst() }

type fam6 struct{}

func (fam6) Src(ip []byte) netip.Addr { return header.IPv6(ip).Src() }
func (fam6) Dst(ip []byte) netip.Addr { return header.IPv6(ip).Dst() }

// family is one IP family as the tests drive it: its Family, its header
// builder and two prefixes, one on NIC 1 and one on NIC 2.
type family struct {
	name       string
	fam        Family
	src        netip.Addr
	dst1, dst2 netip.Addr // routed out of NIC 1 and NIC 2
	nowhere    netip.Addr // no route
	net1, net2 netip.Prefix
	packet     func(src, dst netip.Addr) []byte
	setDst     func(ip []byte, dst netip.Addr)
}

var families = []family{{
	name: "IPv4", fam: fam4{},
	src: netip.MustParseAddr("10.0.1.1"), dst1: netip.MustParseAddr("10.0.1.5"),
	dst2: netip.MustParseAddr("10.0.2.5"), nowhere: netip.MustParseAddr("192.0.2.9"),
	net1: netip.MustParsePrefix("10.0.1.0/24"), net2: netip.MustParsePrefix("10.0.2.0/24"),
	packet: func(src, dst netip.Addr) []byte {
		b := make([]byte, header.IPv4MinSize+8)
		header.IPv4(b).Encode(header.IPv4Fields{TotalLen: uint16(len(b)), TTL: 64, Protocol: header.ProtoUDP, Src: src, Dst: dst})
		return b
	},
	setDst: func(ip []byte, dst netip.Addr) { header.IPv4(ip).SetDst(dst) },
}, {
	name: "IPv6", fam: fam6{},
	src: netip.MustParseAddr("2001:db8:1::1"), dst1: netip.MustParseAddr("2001:db8:1::5"),
	dst2: netip.MustParseAddr("2001:db8:2::5"), nowhere: netip.MustParseAddr("2001:db8:9::9"),
	net1: netip.MustParsePrefix("2001:db8:1::/64"), net2: netip.MustParsePrefix("2001:db8:2::/64"),
	packet: func(src, dst netip.Addr) []byte {
		b := make([]byte, header.IPv6MinSize+8)
		header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: 8, NextHeader: header.ProtoUDP, HopLimit: 64, Src: src, Dst: dst})
		return b
	},
	setDst: func(ip []byte, dst netip.Addr) { a := dst.As16(); copy(ip[24:40], a[:]) },
}}

// rig is an Output over a FIB with the family's two prefixes.
type rig struct {
	t      *testing.T
	f      family
	clk    *clock.Manual
	fib    *route.Table
	hooks  *netfilter.Hooks
	o      Output
	noRt   atomic.Uint64
	disc   atomic.Uint64
	drops  buf.DropStats
	looped []*buf.SKB
	errs   [][3]uint32 // type, code, info of each SendICMPError
}

func newRig(t *testing.T, f family) *rig {
	r := &rig{t: t, f: f, clk: clock.NewManual(), fib: route.NewTable(), hooks: &netfilter.Hooks{}}
	for i, p := range []netip.Prefix{f.net1, f.net2} {
		if err := r.fib.Add(route.Route{Dst: p, NIC: i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	r.fib.AddLocal(f.src, 1)
	r.o.Init(OutputConfig{
		Family: f.fam, Clock: r.clk, FIB: r.fib, Hooks: r.hooks,
		MIB:     MIB{OutNoRoutes: &r.noRt, OutDiscards: &r.disc},
		LoopRcv: func(skb *buf.SKB) { r.looped = append(r.looped, skb) },
		SendICMPError: func(skb *buf.SKB, typ, code uint8, info uint32) {
			if got := r.f.fam.Dst(skb.NetworkHeader()); got != r.f.dst1 {
				t.Errorf("ICMP error about a packet to %v, want %v", got, r.f.dst1)
			}
			r.errs = append(r.errs, [3]uint32{uint32(typ), uint32(code), info})
		},
	})
	return r
}

// send builds a packet to dst, routes it and runs LocalOut.
func (r *rig) send(dst netip.Addr) (*buf.SKB, route.Result, bool, error) {
	fl := route.Flow{Dst: dst, Proto: header.ProtoUDP}
	res, err := r.fib.Output(fl)
	if err != nil {
		r.t.Fatal(err)
	}
	skb := buf.FromBytes(buf.MaxHeadroom, r.f.packet(r.f.src, dst))
	skb.Drops = &r.drops
	skb.OutNIC = res.NIC
	res, ok, err := r.o.LocalOut(skb, res, fl)
	return skb, res, ok, err
}

func (r *rig) hook(h netfilter.Hook, fn netfilter.Func) {
	r.hooks.Register(netfilter.Ops{Hook: h, Name: "test", Fn: fn})
}

// ip_route_me_harder: a LOCAL_OUT hook that rewrites the destination
// (DNAT of a local flow) sends the packet where the new destination
// routes, for both families.
func TestLocalOutReroutesAfterDNAT(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			r := newRig(t, f)
			r.hook(netfilter.LocalOut, func(skb *buf.SKB, _ *netfilter.State) netfilter.Verdict {
				f.setDst(skb.Bytes(), f.dst2)
				return netfilter.Accept()
			})
			skb, res, ok, err := r.send(f.dst1)
			if !ok || err != nil || res.NIC != 2 || skb.OutNIC != 2 || res.NextHop != f.dst2 {
				t.Fatalf("ok %v err %v: NIC %d (skb %d) next hop %v, want NIC 2 via %v", ok, err, res.NIC, skb.OutNIC, res.NextHop, f.dst2)
			}
			skb.Consume()
			// Without a rewrite the route stands.
			r.hooks.Unregister(netfilter.LocalOut, "test")
			skb, res, ok, _ = r.send(f.dst1)
			if !ok || res.NIC != 1 {
				t.Fatalf("no DNAT: ok %v NIC %d, want 1", ok, res.NIC)
			}
			skb.Consume()
		})
	}
}

// A DNAT to a destination without a route fails the send with the route's
// error, counted OutNoRoutes (IPSTATS_MIB_OUTNOROUTES).
func TestLocalOutNoRouteAfterDNAT(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			r := newRig(t, f)
			r.hook(netfilter.LocalOut, func(skb *buf.SKB, _ *netfilter.State) netfilter.Verdict {
				f.setDst(skb.Bytes(), f.nowhere)
				return netfilter.Accept()
			})
			_, _, ok, err := r.send(f.dst1)
			if ok || !errors.Is(err, syscall.ENETUNREACH) {
				t.Fatalf("ok %v err %v, want ENETUNREACH", ok, err)
			}
			if r.noRt.Load() != 1 || r.drops.Get(DropOutNoRoutes) != 1 {
				t.Fatalf("OutNoRoutes %d, IP_OUTNOROUTES drops %d", r.noRt.Load(), r.drops.Get(DropOutNoRoutes))
			}
		})
	}
}

// A hook's verdict at LOCAL_OUT and POSTROUTING: Drop frees the packet
// with the hook's reason and fails the send with EPERM; Stolen ends the
// path with no error and leaves the packet to the hook.
func TestOutputHookVerdicts(t *testing.T) {
	dropped := buf.NewDropReason("TEST_HOOK_DROP")
	for _, f := range families {
		for _, h := range []netfilter.Hook{netfilter.LocalOut, netfilter.PostRouting} {
			t.Run(f.name+"/"+h.String(), func(t *testing.T) {
				r := newRig(t, f)
				run := func() (bool, error) {
					skb, res, ok, err := r.send(f.dst1)
					if !ok {
						return ok, err
					}
					return r.o.PostRouting(skb, res)
				}
				r.hook(h, func(*buf.SKB, *netfilter.State) netfilter.Verdict { return netfilter.Drop(dropped) })
				if ok, err := run(); ok || err != syscall.EPERM || r.drops.Get(dropped) != 1 {
					t.Fatalf("drop: ok %v err %v, %d drops", ok, err, r.drops.Get(dropped))
				}
				r.hooks.Unregister(h, "test")
				var stolen *buf.SKB
				r.hook(h, func(skb *buf.SKB, _ *netfilter.State) netfilter.Verdict { stolen = skb; return netfilter.Stolen() })
				if ok, err := run(); ok || err != nil || stolen == nil {
					t.Fatalf("stolen: ok %v err %v, hook has %v", ok, err, stolen)
				}
				stolen.Consume()
				r.hooks.Unregister(h, "test")
				if ok, err := run(); !ok || err != nil {
					t.Fatalf("accept: ok %v err %v", ok, err)
				}
			})
		}
	}
}

// Without the NIC (or without a neighbour table) output is OutDiscards
// and IP_NO_DEVICE.
func TestNeighOutputNoDevice(t *testing.T) {
	r := newRig(t, families[0])
	skb := buf.FromBytes(buf.MaxHeadroom, r.f.packet(r.f.src, r.f.dst1))
	skb.Drops = &r.drops
	r.o.NeighOutput(1, r.f.dst1, skb)
	if r.disc.Load() != 1 || r.drops.Get(DropNoDevice) != 1 {
		t.Fatalf("OutDiscards %d, IP_NO_DEVICE %d", r.disc.Load(), r.drops.Get(DropNoDevice))
	}
	if _, ok := r.o.NICMTU(1); ok {
		t.Fatal("an MTU without devices")
	}
}

// Loopback and deferred ICMP errors run from the backlog on the clock,
// never on the caller's stack; the backlog holds BacklogMax entries and
// drops the rest (CPU_BACKLOG; OutDiscards for looped packets).
func TestBacklog(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			r := newRig(t, f)
			p := f.packet(f.src, f.dst1)
			orig := buf.FromBytes(buf.MaxHeadroom, p)
			r.o.DeferICMPError(orig, 3, 1)
			orig.Consume() // not the backlog's: it queued a clone
			for range BacklogMax + 2 {
				skb := buf.FromBytes(buf.MaxHeadroom, p)
				skb.Drops = &r.drops
				r.o.Loopback(skb)
			}
			if len(r.looped) != 0 || len(r.errs) != 0 {
				t.Fatal("processed on the caller's stack")
			}
			if r.disc.Load() != 3 || r.drops.Get(DropBacklogFull) != 3 {
				t.Fatalf("overflow: OutDiscards %d, CPU_BACKLOG %d, want 3", r.disc.Load(), r.drops.Get(DropBacklogFull))
			}
			r.clk.Advance(0) // runs every budget-sized batch
			if len(r.errs) != 1 || r.errs[0] != [3]uint32{3, 1, 0} {
				t.Fatalf("ICMP errors %v", r.errs)
			}
			if len(r.looped) != BacklogMax-1 {
				t.Fatalf("looped %d, want %d", len(r.looped), BacklogMax-1)
			}
			for _, skb := range r.looped {
				skb.Consume()
			}
		})
	}
}

// RFC 1812 §4.3.2.8 / RFC 4443 §2.4(f): burst errors at once, then rate
// per second; a negative rate is no limit; zeros are the defaults.
func TestTokenBucket(t *testing.T) {
	clk := clock.NewManual()
	var b TokenBucket
	b.Init(clk, 10, 3)
	for i := range 3 {
		if !b.Allow() {
			t.Fatalf("burst: refused token %d", i)
		}
	}
	if b.Allow() {
		t.Fatal("allowed past the burst")
	}
	clk.Advance(100 * time.Millisecond) // one token at 10/s
	if !b.Allow() || b.Allow() {
		t.Fatal("refill: want exactly one token after 100 ms")
	}
	clk.Advance(time.Hour) // capped at the burst
	for range 3 {
		b.Allow()
	}
	if b.Allow() {
		t.Fatal("refill beyond the burst")
	}
	b.Init(clk, -1, 0)
	for range 1000 {
		if !b.Allow() {
			t.Fatal("unlimited bucket refused")
		}
	}
	b.Init(clk, 0, 0)
	if b.rate != DefaultICMPRateLimit || b.burst != DefaultICMPRateBurst {
		t.Fatalf("defaults %d/%d", b.rate, b.burst)
	}
}

// rp_filter: the default for every NIC, a NIC's own setting over it.
func TestRPFilter(t *testing.T) {
	var f RPFilter
	f.Init(true)
	f.Set(2, false)
	if !f.Strict(1) || f.Strict(2) {
		t.Fatalf("strict default, NIC 2 off: got %v %v", f.Strict(1), f.Strict(2))
	}
	f.Set(2, true)
	f.Set(3, false)
	if !f.Strict(2) || f.Strict(3) || !f.Strict(4) {
		t.Fatalf("NIC 2 strict again, NIC 3 off: got %v %v %v", f.Strict(2), f.Strict(3), f.Strict(4))
	}
	var off RPFilter
	off.Init(false)
	if off.Strict(1) {
		t.Fatal("loose default reads strict")
	}
}

// Mix is jhash_3words' final mix (__jhash_final, rol32) after a += key.
func TestMixIsJhashFinal(t *testing.T) {
	rol := bits.RotateLeft32
	for _, v := range [][4]uint32{{0, 0, 0, 0}, {1, 2, 3, 4}, {0xdeadbeef, 0x0a000001, 17, 0x9e3779b9}} {
		a, b, c := v[0]+v[3], v[1], v[2]
		c ^= b
		c -= rol(b, 14)
		a ^= c
		a -= rol(c, 11)
		b ^= a
		b -= rol(a, 25)
		c ^= b
		c -= rol(b, 16)
		a ^= c
		a -= rol(c, 4)
		b ^= a
		b -= rol(a, 14)
		c ^= b
		c -= rol(b, 24)
		if got := Mix(v[0], v[1], v[2], v[3]); got != c {
			t.Fatalf("Mix%v = %#x, want %#x", v, got, c)
		}
	}
}
