package inet

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

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
	rcvd   atomic.Uint64
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
		MIB:          MIB{OutNoRoutes: &r.noRt, OutDiscards: &r.disc, InReceives: &r.rcvd},
		LocalDeliver: func(skb *buf.SKB) { r.looped = append(r.looped, skb) },
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
	fl := route.Flow{Dst: dst}
	res, err := r.fib.Output(fl)
	if err != nil {
		r.t.Fatal(err)
	}
	skb := buf.FromBytes(buf.MaxHeadroom, r.f.packet(r.f.src, dst))
	skb.Drops = &r.drops
	skb.OutNIC = res.NIC
	ok, err := r.o.LocalOut(skb, &res, &fl)
	return skb, res, ok, err
}

func (r *rig) hook(h netfilter.Hook, fn netfilter.Func) {
	r.hooks.Register(netfilter.Ops{Hook: h, Name: "test", Fn: fn})
}

// ip_route_me_harder: a LOCAL_OUT hook that rewrites the destination
// (DNAT of a local flow) sends the packet where the new destination
// routes, for both families; a destination without a route fails the
// send with the route's error, counted OutNoRoutes
// (IPSTATS_MIB_OUTNOROUTES); without a rewrite the route stands.
func TestLocalOutRoutesAgainAfterDNAT(t *testing.T) {
	for _, f := range families {
		for _, tc := range []struct {
			name    string
			dnat    netip.Addr // invalid: no rewrite
			wantNIC int        // 0: no route
		}{{"to NIC 2", f.dst2, 2}, {"nowhere", f.nowhere, 0}, {"none", netip.Addr{}, 1}} {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				r := newRig(t, f)
				r.hook(netfilter.LocalOut, func(skb *buf.SKB, _ netfilter.State) netfilter.Verdict {
					if tc.dnat.IsValid() {
						f.setDst(skb.Bytes(), tc.dnat)
					}
					return netfilter.Accept()
				})
				skb, res, ok, err := r.send(f.dst1)
				if tc.wantNIC == 0 {
					if ok || !errors.Is(err, syscall.ENETUNREACH) || r.noRt.Load() != 1 || r.drops.Get(DropOutNoRoutes) != 1 {
						t.Fatalf("ok %v err %v, OutNoRoutes %d, IP_OUTNOROUTES %d: want ENETUNREACH, 1, 1",
							ok, err, r.noRt.Load(), r.drops.Get(DropOutNoRoutes))
					}
					return
				}
				want := map[int]netip.Addr{1: f.dst1, 2: f.dst2}[tc.wantNIC]
				if !ok || err != nil || res.NIC != tc.wantNIC || skb.OutNIC != tc.wantNIC || res.NextHop != want {
					t.Fatalf("ok %v err %v: NIC %d (skb %d) next hop %v, want NIC %d via %v",
						ok, err, res.NIC, skb.OutNIC, res.NextHop, tc.wantNIC, want)
				}
				skb.Consume()
			})
		}
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
					return r.o.PostRouting(skb, &res)
				}
				r.hook(h, func(*buf.SKB, netfilter.State) netfilter.Verdict { return netfilter.Drop(dropped) })
				if ok, err := run(); ok || err != syscall.EPERM || r.drops.Get(dropped) != 1 {
					t.Fatalf("drop: ok %v err %v, %d drops", ok, err, r.drops.Get(dropped))
				}
				r.hooks.Unregister(h, "test")
				var stolen *buf.SKB
				r.hook(h, func(skb *buf.SKB, _ netfilter.State) netfilter.Verdict { stolen = skb; return netfilter.Stolen() })
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
