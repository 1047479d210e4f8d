package daemon

import (
	"net/netip"
	"sync/atomic"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// Proxy mode's divert rule (ARCHITECTURE.md "Egress modes"): the
// "proxy-divert" function at PREROUTING, priority PriMangle (after
// conntrack, so the packet's conntrack state is known, and after the
// mangle table of --rules), decides for every packet that arrives on a
// proxy-mode pod's NIC:
//
//   - a packet already marked (a later packet of a diverted flow: the
//     conntrack hook copied MarkDivert from its flow), or one whose
//     destination is a local address of the stack (the gateway: DNS,
//     ping), another pod of the stack, inside the attachment's routed
//     ranges, a broadcast or multicast address, or that came in an
//     Ethernet broadcast/multicast frame: left alone, routed as in route
//     mode (pod-to-pod traffic stays in the stack, routed ranges go
//     through the uplink with the pod's own source address);
//   - conntrack NEW, TCP, UDP or ICMP echo request: Divert (TPROXY):
//     local delivery with the original destination kept, where the proxy
//     engine's interceptors take it;
//   - conntrack NEW, any other protocol (or another ICMP query): dropped
//     with DropProxyProto, counted in ProxyProtoDrops: the proxy relays
//     nothing else and must not leak it to the host kernel;
//   - ESTABLISHED or RELATED and not diverted: a flow the pod did not
//     open (the host or a routed peer reaching the pod through the
//     uplink, kubelet probes) or an ICMP error about one: forwarded;
//   - INVALID or untracked (a TCP segment or an ICMP answer belonging to
//     no flow, an ICMP redirect): dropped with DropProxyInvalid, counted
//     in ProxyInvalidDrops, as `-m conntrack --ctstate INVALID -j DROP`
//     would: in proxy mode nothing of the pod's own reaches the host
//     kernel except through the routed ranges.
//
// Route-mode NICs are not in the hook's table: their packets are left
// alone, as before proxy mode existed.
//
// The hook runs at both families' PREROUTING with one rule: for IPv6 the
// protocol is the upper layer past the extension headers
// (IPv6SkipExtHeaders), "ICMP echo request" is ICMPv6 Echo Request (RFC
// 4443 §4.1), and the IPv6 all-ones broadcast has no counterpart (RFC
// 4291 §2: multicast only). Neighbour Discovery never reaches the rule's
// drops: it goes to the gateway's addresses or to multicast, both
// passed.

// Drop reasons of the divert hook.
var (
	// DropProxyProto: a new flow from a proxy-mode pod whose protocol the
	// proxy does not relay (not TCP, UDP or ICMP echo).
	DropProxyProto = buf.NewDropReason("PROXY_PROTO_UNSUPPORTED")
	// DropProxyInvalid: a packet from a proxy-mode pod to a proxied
	// destination that belongs to no flow (conntrack INVALID/untracked).
	DropProxyInvalid = buf.NewDropReason("PROXY_CT_INVALID")
)

// divertAction is the hook's decision for one packet.
type divertAction uint8

const (
	divertPass        divertAction = iota // routed as usual
	divertDivert                          // nf.Divert: local delivery, destination kept
	divertDropProto                       // DropProxyProto
	divertDropInvalid                     // DropProxyInvalid
)

func (a divertAction) String() string {
	switch a {
	case divertPass:
		return "pass"
	case divertDivert:
		return "divert"
	case divertDropProto:
		return "drop-proto"
	case divertDropInvalid:
		return "drop-invalid"
	}
	return "?"
}

// divertFacts is what the hook knows about one packet from a proxy-mode
// pod; planDivert decides from these values alone.
type divertFacts struct {
	marked   bool  // skb.Mark has MarkDivert (a diverted flow's later packet)
	proto    uint8 // IP protocol
	icmpType uint8 // for ICMP: the message type (0 when the header is short)
	tracked  bool  // conntrack saw the packet
	state    netfilter.CtState
	dst      netip.Addr
	l2Group  bool // the Ethernet destination was broadcast or multicast
	local    bool // dst is an address of the stack (FIB IsLocal)
	bcast    bool // dst is a broadcast address (FIB IsBroadcast)
	pod      bool // dst is a pod of the stack
	routed   []netip.Prefix
}

// planDivert is the divert rule (see above) as a pure function.
func planDivert(f divertFacts) divertAction {
	switch {
	case f.marked, f.l2Group, f.local, f.bcast, f.pod:
		return divertPass
	case !f.dst.IsValid() || f.dst.IsMulticast() || f.dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return divertPass
	}
	for _, p := range f.routed {
		if p.Contains(f.dst) {
			return divertPass
		}
	}
	if !f.tracked {
		return divertDropInvalid
	}
	switch {
	case f.state&netfilter.CtNew != 0:
		switch f.proto {
		case header.ProtoTCP, header.ProtoUDP:
			return divertDivert
		case header.ProtoICMP:
			if f.icmpType == header.ICMPv4Echo && f.dst.Is4() {
				return divertDivert
			}
		case header.ProtoICMPv6:
			if f.icmpType == header.ICMPv6EchoRequest && f.dst.Is6() {
				return divertDivert
			}
		}
		return divertDropProto
	case f.state&(netfilter.CtEstablished|netfilter.CtRelated) != 0:
		return divertPass
	}
	return divertDropInvalid
}

// proxyPod is a proxy-mode pod NIC in the hook's table.
type proxyPod struct {
	routed []netip.Prefix
}

// proxyDivert is the "proxy-divert" hook function. It reads the NIC and
// pod-address tables without a lock (copy-on-write maps).
func (a *StackAttacher) proxyDivert(skb *buf.SKB, st netfilter.State) netfilter.Verdict {
	pp, ok := (*a.proxyNICs.Load())[st.In]
	if !ok {
		return netfilter.Accept()
	}
	f := divertFacts{marked: skb.Mark&netfilter.MarkDivert != 0, routed: pp.routed}
	if f.marked {
		return netfilter.Accept()
	}
	var l4 []byte // the upper-layer header, for the ICMP type
	if b := skb.Bytes(); len(b) > 0 && b[0]>>4 == 6 {
		ip6, err := header.CheckIPv6(b)
		if err != nil {
			return netfilter.Accept() // ip6_rcv validated it; nothing to decide on
		}
		f.dst, f.proto = ip6.Dst(), header.ProtoNoNextHeader
		if u, err := header.IPv6SkipExtHeaders(b); err == nil && u.FragOffset == 0 {
			f.proto, l4 = u.Proto, b[u.Offset:]
		}
	} else {
		ip, err := header.CheckIPv4(b)
		if err != nil {
			return netfilter.Accept() // ip_rcv validated it; nothing to decide on
		}
		f.dst, f.proto, l4 = ip.Dst(), ip.Protocol(), ip.Payload()
	}
	dst := f.dst
	// Most packets belong to a flow already decided: ESTABLISHED and
	// RELATED pass whatever their destination (planDivert agrees), so
	// they skip the FIB and table lookups.
	f.state, f.tracked = a.nf.CtState(skb)
	if f.tracked && f.state&(netfilter.CtEstablished|netfilter.CtRelated) != 0 {
		return netfilter.Accept()
	}
	if eth := skb.MACHeader(); len(eth) >= header.EthernetMinSize {
		d := header.Ethernet(eth).Dst()
		f.l2Group = d.IsMulticast() // the broadcast MAC has the group bit too
	}
	fib := a.s.FIB()
	f.local, f.bcast = fib.IsLocal(dst), fib.IsBroadcast(dst)
	_, f.pod = (*a.podAddrs.Load())[dst]
	if (f.proto == header.ProtoICMP || f.proto == header.ProtoICMPv6) && len(l4) > 0 {
		f.icmpType = l4[0]
	}
	switch planDivert(f) {
	case divertDivert:
		a.nf.Divert(skb)
		a.diverted.Add(1)
	case divertDropProto:
		a.protoDrops.Add(1)
		return netfilter.Drop(DropProxyProto)
	case divertDropInvalid:
		a.invalidDrops.Add(1)
		return netfilter.Drop(DropProxyInvalid)
	}
	return netfilter.Accept()
}

// setProxyPod adds (on) or removes a proxy-mode pod NIC from the hook's
// table, copying the map.
func (a *StackAttacher) setProxyPod(nic int, pp proxyPod, on bool) {
	cowSet(&a.proxyNICs, nic, pp, on)
}

// setPodAddr adds or removes a pod address from the hook's set of pod
// destinations, copying the set.
func (a *StackAttacher) setPodAddr(addr netip.Addr, on bool) {
	cowSet(&a.podAddrs, addr, struct{}{}, on)
}

// cowSet sets (on) or deletes k in the map behind p by copying it, so
// packet-path readers load it without a lock; callers serialise writers
// (a.mu).
func cowSet[K comparable, V any](p *atomic.Pointer[map[K]V], k K, v V, on bool) {
	old := *p.Load()
	next := make(map[K]V, len(old)+1)
	for key, val := range old {
		next[key] = val
	}
	if on {
		next[k] = v
	} else {
		delete(next, k)
	}
	p.Store(&next)
}
