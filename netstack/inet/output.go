package inet

import (
	"net/netip"
	"sync/atomic"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Family is what the shared output path needs to know of a family's
// header: its addresses (ip_hdr(skb)->saddr and daddr, or ipv6_hdr's),
// read from the header the family built or checked at the start of ip.
type Family interface {
	Src(ip []byte) netip.Addr
	Dst(ip []byte) netip.Addr
}

// MIB are the family's counters the shared path bumps.
type MIB struct {
	OutNoRoutes *atomic.Uint64 // IPSTATS_MIB_OUTNOROUTES: no route after a hook's DNAT
	OutDiscards *atomic.Uint64 // IPSTATS_MIB_OUTDISCARDS: no device for the route
	InReceives  *atomic.Uint64 // IPSTATS_MIB_INRECEIVES: a looped-back packet received
}

// Drop reasons of the shared path; the families register the same names,
// so the values are theirs (buf.NewDropReason).
var (
	DropOutNoRoutes = buf.NewDropReason("IP_OUTNOROUTES")
	DropNoDevice    = buf.NewDropReason("IP_NO_DEVICE")
)

// OutputConfig wires an Output; Devices, Neigh and Hooks may be nil.
type OutputConfig struct {
	Family  Family
	Clock   clock.Clock // runs the backlog
	FIB     *route.Table
	Hooks   *netfilter.Hooks // the family's own hooks
	Devices *dev.Devices
	Neigh   *neigh.Table
	MIB     MIB
	// LocalDeliver is the family's local delivery (ip_local_deliver,
	// ip6_input), where a looped-back packet goes after PREROUTING; it
	// consumes skb, whose bytes start at the IP header.
	LocalDeliver func(skb *buf.SKB)
	// SendICMPError is the family's icmp_send / icmp6_send, which the
	// backlog calls for DeferICMPError; it does not consume skb.
	SendICMPError func(skb *buf.SKB, typ, code uint8, info uint32)
}

// Output is the local-output tail one IP layer shares with the other. The
// zero value is not usable: Init it once, in the layer's New.
type Output struct {
	fam   Family
	fib   *route.Table
	hooks *netfilter.Hooks
	devs  *dev.Devices
	neigh *neigh.Table
	mib   MIB

	backlog   dev.Backlog // bound: BacklogMax (loopback.go)
	deliver   func(skb *buf.SKB)
	sendError func(skb *buf.SKB, typ, code uint8, info uint32)
}

// Init wires o.
func (o *Output) Init(cfg OutputConfig) {
	o.fam, o.fib, o.hooks, o.devs, o.neigh, o.mib = cfg.Family, cfg.FIB, cfg.Hooks, cfg.Devices, cfg.Neigh, cfg.MIB
	o.deliver, o.sendError = cfg.LocalDeliver, cfg.SendICMPError
	o.backlog.Init(cfg.Clock, BacklogMax, BacklogBudget, o.backlogProcess)
}

// LocalOut is the body __ip_local_out and __ip6_local_out share: the
// LOCAL_OUT hook, then, as ip_route_me_harder and ip6_route_me_harder do,
// a new route when a hook rewrote the destination (DNAT of a local flow),
// and netfilter's reply-to: the stack's own reply-direction packets of a
// flow that entered through a reply-to NIC (an ICMP error about a packet
// that came in there, RELATED) leave through that NIC, as
// ip_route_me_harder re-routes after mangle OUTPUT changed the mark; the
// source stays the one the family chose. skb's bytes start at the IP
// header, *res is its route, which LocalOut replaces when it routes again
// (as the kernel replaces skb's dst), and fl the flow it was routed by.
// Pointers, not values: a route.Result is 184 bytes, and this runs for
// every packet sent.
//
// ok (the kernel's return of 1) means the packet goes on to dst_output
// with *res. Otherwise skb is consumed: stolen by a hook (err nil) or
// freed, err EPERM (a hook dropped it) or the route's error (counted
// OutNoRoutes).
func (o *Output) LocalOut(skb *buf.SKB, res *route.Result, fl *route.Flow) (bool, error) {
	if ok, err := o.hook(netfilter.LocalOut, skb, 0, res.NIC); !ok {
		return false, err
	}
	// The header carries no zone; a link-local fl.Dst may.
	if dst := o.fam.Dst(skb.Bytes()); dst != fl.Dst.WithZone("") {
		f := *fl
		f.Dst, f.Src = dst, o.fam.Src(skb.Bytes())
		r, err := o.fib.Output(f)
		if err != nil {
			o.mib.OutNoRoutes.Add(1)
			skb.Free(DropOutNoRoutes)
			return false, err
		}
		*res = r
		skb.OutNIC = res.NIC
	}
	if n := netfilter.ReplyNIC(skb); n != 0 && n != res.NIC && res.Type == route.Unicast {
		if r, ok := o.fib.Via(o.fam.Dst(skb.Bytes()), n); ok {
			*res = r
			skb.OutNIC = res.NIC
		}
	}
	return true, nil
}

// PostRouting is the hook ip_output and ip6_output run before their
// finish_output, on every packet that leaves, forwarded or local. ok means
// the packet goes on; otherwise skb is consumed as LocalOut says.
func (o *Output) PostRouting(skb *buf.SKB, res *route.Result) (bool, error) {
	return o.hook(netfilter.PostRouting, skb, skb.InNIC, res.NIC)
}

// hook is nf_hook: Accept goes on; Stolen leaves skb to the hook; Drop
// frees it with the hook's reason and, on an output path, fails the send
// with EPERM, as the kernel reports a netfilter drop to a local sender.
func (o *Output) hook(h netfilter.Hook, skb *buf.SKB, in, out int) (bool, error) {
	switch v := o.hooks.Run(h, skb, in, out); {
	case v.Stolen():
		return false, nil
	case v.Dropped():
		skb.Free(v.Reason())
		return false, syscall.EPERM
	}
	return true, nil
}

// NeighOutput is ip_finish_output2's and ip6_finish_output2's hand-off,
// neigh_output: skb, its IP header first, goes to the neighbour layer for
// nextHop on NIC nicID. It consumes skb; without that NIC (or without a
// neighbour table) it is counted OutDiscards and freed (IP_NO_DEVICE).
func (o *Output) NeighOutput(nicID int, nextHop netip.Addr, skb *buf.SKB) {
	var nic *dev.NIC
	if o.devs != nil {
		nic = o.devs.ByID(nicID)
	}
	if nic == nil || o.neigh == nil {
		o.mib.OutDiscards.Add(1)
		skb.Free(DropNoDevice)
		return
	}
	o.neigh.Output(nic, nextHop, skb)
}

// NICMTU is the MTU of NIC nicID (dev->mtu); ok is false when there is no
// such NIC.
func (o *Output) NICMTU(nicID int) (mtu int, ok bool) {
	if o.devs == nil {
		return 0, false
	}
	nic := o.devs.ByID(nicID)
	if nic == nil {
		return 0, false
	}
	return nic.MTU(), true
}
