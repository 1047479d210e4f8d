package ipv6

import (
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// icmpErrorMax bounds an ICMPv6 error: RFC 4443 §2.4(c): "Every ICMPv6
// error message ... MUST include as much of the IPv6 offending (invoking)
// packet ... as possible without making the error message packet exceed
// the minimum IPv6 MTU".
const icmpErrorMax = header.IPv6MinMTU

// icmpRcv is icmpv6_rcv: verify, count and dispatch by type. It consumes
// skb, whose bytes start at the ICMPv6 header; NetworkHeader() is the IPv6
// header.
func (l *Layer) icmpRcv(skb *buf.SKB) {
	l.count(IcmpInMsgs)
	m, err := header.CheckICMPv6(skb.Bytes())
	if err != nil {
		l.count(IcmpInErrors)
		skb.Free(DropICMPInvalid)
		return
	}
	ip := header.IPv6(skb.NetworkHeader())
	// RFC 4443 §2.3: the checksum covers the pseudo-header and the whole
	// message; §2.4: a message with a bad checksum is discarded.
	if skb.Csum != buf.CsumUnnecessary && !m.ChecksumValid(ip.Src(), ip.Dst()) {
		l.count(IcmpInCsumErrors)
		l.count(IcmpInErrors)
		skb.Free(DropICMPCsum)
		return
	}
	l.count(InDelivers)
	switch t := m.Type(); t {
	case header.ICMPv6EchoRequest:
		l.count(IcmpInEchos)
		l.icmpEcho(skb, m, ip)
	case header.ICMPv6EchoReply:
		l.count(IcmpInEchoReplies)
		if p := l.protos[header.ProtoICMPv6].Load(); p != nil && p.Rcv != nil {
			p.Rcv(skb)
			return
		}
		skb.Free(DropICMPNoHandler)
	case header.ICMPv6DstUnreachable:
		l.count(IcmpInDestUnreachs)
		l.icmpNotify(skb, m)
	case header.ICMPv6PacketTooBig:
		l.count(IcmpInPktTooBigs)
		l.icmpNotify(skb, m)
	case header.ICMPv6TimeExceeded:
		l.count(IcmpInTimeExcds)
		l.icmpNotify(skb, m)
	case header.ICMPv6ParamProblem:
		l.count(IcmpInParmProblems)
		l.icmpNotify(skb, m)
	case header.ICMPv6RouterSolicit, header.ICMPv6RouterAdvert, header.ICMPv6NeighborSolicit,
		header.ICMPv6NeighborAdvert, header.ICMPv6Redirect:
		l.countNDP(t)
		l.ndisc(skb)
	case header.ICMPv6MLDQuery:
		l.count(IcmpInGroupMembQueries)
		skb.Free(DropICMPIgnored)
	case header.ICMPv6MLDReport:
		l.count(IcmpInGroupMembResponses)
		skb.Free(DropICMPIgnored)
	case header.ICMPv6MLDDone:
		l.count(IcmpInGroupMembReductions)
		skb.Free(DropICMPIgnored)
	case header.ICMPv6MLDv2Report:
		// MLD (RFC 3810): we keep no listener state and query nobody;
		// reports from pods are counted and dropped.
		l.count(IcmpInMLDv2Reports)
		skb.Free(DropICMPIgnored)
	default:
		if m.IsError() {
			// RFC 4443 §2.4(a): "If an ICMPv6 error message of unknown
			// type is received at its destination, it MUST be passed to
			// the upper-layer process that originated the packet".
			l.icmpNotify(skb, m)
			return
		}
		// §2.4(b): "If an ICMPv6 informational message of unknown type
		// is received, it MUST be silently discarded."
		skb.Free(DropICMPIgnored)
	}
}

func (l *Layer) countNDP(t uint8) {
	switch t {
	case header.ICMPv6RouterSolicit:
		l.count(IcmpInRouterSolicits)
	case header.ICMPv6RouterAdvert:
		l.count(IcmpInRouterAdvertisements)
	case header.ICMPv6NeighborSolicit:
		l.count(IcmpInNeighborSolicits)
	case header.ICMPv6NeighborAdvert:
		l.count(IcmpInNeighborAdvertisements)
	case header.ICMPv6Redirect:
		l.count(IcmpInRedirects)
	}
}

// ndisc hands an NDP message to the neighbour table (ndisc_rcv), which
// validates and answers it. NDP arrives on a NIC, never by loopback.
func (l *Layer) ndisc(skb *buf.SKB) {
	if l.neigh == nil || l.devs == nil || skb.InNIC == 0 {
		skb.Free(DropICMPIgnored)
		return
	}
	nic := l.devs.ByID(skb.InNIC)
	if nic == nil {
		skb.Free(DropNoDevice)
		return
	}
	l.neigh.RcvNDP(nic, skb)
}

// icmpEcho is icmpv6_echo_reply: RFC 4443 §4.2, "Every node MUST
// implement an ICMPv6 Echo responder function that receives Echo Requests
// and originates corresponding Echo Replies", with the request's
// identifier, sequence number and data. The request's buffer is turned
// around in place. A request to a multicast group we listen to is
// answered too ("An Echo Reply SHOULD be sent in response to an Echo
// Request message sent to an IPv6 multicast or anycast address. In this
// case, the Source Address of the reply MUST be a unicast address
// belonging to the interface on which the Echo Request message was
// received").
func (l *Layer) icmpEcho(skb *buf.SKB, m header.ICMPv6, ip header.IPv6) {
	src, dst, tc := ip.Src(), ip.Dst(), ip.TrafficClass()
	if src.IsUnspecified() {
		skb.Free(DropICMPIgnored)
		return
	}
	from := dst
	if skb.CB[cbFlags]&flagMulticast == 0 && !l.fib.IsLocal(dst) {
		// A diverted request to a foreign address: the proxy's to
		// answer (proxy.go), not ours.
		l.echoDiverted(skb, m, src, dst)
		return
	}
	if skb.CB[cbFlags]&flagMulticast != 0 {
		a, ok := l.fib.SelectSource6(skb.InNIC, src)
		if !ok {
			skb.Free(DropICMPIgnored)
			return
		}
		from = a
	}
	fl := route.Flow{Src: from, Dst: src, Proto: header.ProtoICMPv6, TOS: tc}
	if src.IsLinkLocalUnicast() {
		fl.NIC = skb.InNIC
	}
	rest := m.RestOfHeader()
	skb.Writable()
	r := header.ICMPv6(skb.Bytes())
	r.Encode(header.ICMPv6Fields{Type: header.ICMPv6EchoReply, RestOfHeader: rest})
	r.SetChecksum(from, src)
	skb.Csum = buf.CsumNone
	skb.GSOSize, skb.GSOType = 0, buf.GSONone
	skb.Mark = 0
	l.count(IcmpOutMsgs)
	l.count(IcmpOutEchoReplies)
	if err := l.QueueXmit(skb, fl); err != nil {
		l.count(IcmpOutErrors)
	}
}

// icmpNotify is icmpv6_notify: find the upper layer of the quoted packet
// and report the error to its protocol's Err handler. RFC 4443 §2.4(d):
// "the upper-layer protocol type is extracted from the original packet
// (contained in the body of the ICMPv6 error message) and used to select
// the appropriate upper-layer process"; extension headers are skipped
// (ipv6_skip_exthdr) and at least 8 bytes of the upper-layer header must
// be present to find the flow. A Packet Too Big about a packet we sent
// also lowers the path MTU (RFC 8201 §4).
func (l *Layer) icmpNotify(skb *buf.SKB, m header.ICMPv6) {
	inner := m.Payload()
	u, err := header.IPv6SkipExtHeaders(inner)
	if err != nil || inner[0]>>4 != 6 || u.FragOffset != 0 || u.Offset+8 > len(inner) {
		l.count(IcmpInErrors)
		skb.Free(DropICMPInvalid)
		return
	}
	iv := header.IPv6(inner)
	info := m.RestOfHeader()
	if m.Type() == header.ICMPv6PacketTooBig {
		// RFC 8201 §4: "A node MUST NOT reduce its estimate of the Path
		// MTU below the IPv6 minimum link MTU."
		info = max(info, header.IPv6MinMTU)
		if l.fib.IsLocal(iv.Src()) && l.pmtu.update(iv.Dst(), int(info)) {
			l.count(PMTUUpdates)
		}
	}
	p := l.protos[u.Proto].Load()
	if p == nil || p.Err == nil {
		skb.Free(DropICMPNoHandler)
		return
	}
	skb.Pull(header.ICMPv6MinSize)
	skb.SetNetworkHeader()
	skb.SetTransportHeaderAt(u.Offset)
	p.Err(skb, ErrorOf(m.Type(), m.Code(), info))
	skb.Consume()
}

// SendICMPError is icmp6_send: report a problem with the packet whose
// IPv6 header is skb.NetworkHeader() to its source. It does not consume
// skb. info is the rest of the ICMPv6 header: the MTU of a Packet Too
// Big, the pointer of a Parameter Problem, 0 otherwise. RFC 4443 §2.4(e)'s
// never-list and (f)'s rate limit apply (see sendICMPError); a Packet Too
// Big is sent about multicast too (§2.4(e.3) exception 1).
func (l *Layer) SendICMPError(skb *buf.SKB, typ, code uint8, info uint32) {
	l.sendICMPError(skb, typ, code, info, typ == header.ICMPv6PacketTooBig)
}

// sendICMPError is SendICMPError; evenMulticast is §2.4(e.3)'s exceptions
// (Packet Too Big, and a Parameter Problem code 2 for an option whose
// action bits are 10), which may answer packets to multicast or received
// as link-layer multicast.
//
// RFC 4443 §2.4(e): an error is not sent about (e.1) an ICMPv6 error,
// (e.2) a Redirect, (e.3) a packet to a multicast address, (e.4)/(e.5) a
// packet sent as link-layer multicast or broadcast, (e.6) a packet whose
// source does not uniquely identify a single node (unspecified,
// multicast, IPv4-mapped, loopback; nor, from a link, one of our own
// addresses: a spoof). §2.4(f): errors are rate-limited by
// a token bucket (ICMPRateLimit/s, burst ICMPRateBurst), except those to
// our own addresses. §2.2: the source is the offending packet's
// destination when that is a unicast address of ours, else the address
// of the receiving NIC best suited to the offender (RFC 6724).
func (l *Layer) sendICMPError(skb *buf.SKB, typ, code uint8, info uint32, evenMulticast bool) {
	pkt := skb.NetworkHeader()
	if len(pkt) < header.IPv6MinSize {
		return
	}
	ih := header.IPv6(pkt)
	src, dst := ih.Src(), ih.Dst()
	if !evenMulticast && (dst.IsMulticast() || linkMulticast(skb)) {
		return
	}
	if src.IsUnspecified() || src.IsMulticast() || src.Is4In6() || (src.IsLoopback() && skb.InNIC != 0) {
		return
	}
	if u, err := header.IPv6SkipExtHeaders(pkt); err == nil && u.Proto == header.ProtoICMPv6 && u.FragOffset == 0 {
		if u.Offset >= len(pkt) {
			return
		}
		if t := pkt[u.Offset]; header.ICMPv6IsError(t) || t == header.ICMPv6Redirect {
			return
		}
	}
	toSelf := l.fib.IsLocal(src)
	if toSelf && skb.InNIC != 0 {
		// A packet from a link claiming one of our addresses is a spoof
		// (route.Input drops it as a martian; the Hop-by-Hop options
		// are processed before that): no error is reflected to us.
		return
	}
	if !toSelf && !l.icmpRL.Allow() {
		l.count(IcmpOutRateLimited)
		return
	}
	var saddr netip.Addr
	if !dst.IsMulticast() && l.fib.IsLocal(dst) {
		saddr = dst
	} else if skb.InNIC != 0 {
		saddr, _ = l.fib.SelectSource6(skb.InNIC, src)
	}
	fl := route.Flow{Src: saddr, Dst: src, Proto: header.ProtoICMPv6}
	if src.IsLinkLocalUnicast() && !toSelf {
		fl.NIC = skb.InNIC
	}
	n := min(len(pkt), ih.TotalLen())
	_ = l.xmitICMPError(fl, typ, code, info, pkt[:n])
}

// xmitICMPError builds an ICMPv6 error of typ/code quoting quote (cut so
// the packet fits 1280 bytes), counts it and sends it on fl. The source
// is resolved first: the checksum covers it.
func (l *Layer) xmitICMPError(fl route.Flow, typ, code uint8, info uint32, quote []byte) error {
	res, err := l.fib.Output(fl)
	if err != nil {
		l.count(IcmpOutErrors)
		l.count(OutNoRoutes)
		return err
	}
	fl.Src = res.Src
	n := min(len(quote), icmpErrorMax-header.IPv6MinSize-header.ICMPv6MinSize)
	e := buf.Alloc(buf.MaxHeadroom, header.ICMPv6MinSize+n)
	msg := header.ICMPv6(e.Put(header.ICMPv6MinSize + n))
	copy(msg[header.ICMPv6MinSize:], quote[:n])
	msg.Encode(header.ICMPv6Fields{Type: typ, Code: code, RestOfHeader: info})
	msg.SetChecksum(fl.Src, fl.Dst)
	l.count(IcmpOutMsgs)
	switch typ {
	case header.ICMPv6DstUnreachable:
		l.count(IcmpOutDestUnreachs)
	case header.ICMPv6PacketTooBig:
		l.count(IcmpOutPktTooBigs)
	case header.ICMPv6TimeExceeded:
		l.count(IcmpOutTimeExcds)
	case header.ICMPv6ParamProblem:
		l.count(IcmpOutParmProblems)
	}
	if err := l.QueueXmit(e, fl); err != nil {
		l.count(IcmpOutErrors)
		return err
	}
	return nil
}
