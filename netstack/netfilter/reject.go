package netfilter

import (
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// DropResetNoRoute counts resets REJECT could not route.
var DropResetNoRoute = buf.NewDropReason("NF_REJECT_RST_NO_ROUTE")

// sendReset answers a TCP segment with a reset (nf_send_reset, or
// nf_send_reset6 for an IPv6 segment). The reset
// carries the flow's addresses as the sender knows them (its original
// tuple, so a reset for a DNATed flow comes from the address the client
// dialled) and is routed and handed to the neighbour layer directly; it
// does not traverse the output hooks. RFC 9293 §3.10.7.1: "If the
// incoming segment has an ACK field, the reset takes its sequence number
// from the ACK field of the segment; otherwise, the reset has sequence
// number zero and the ACK field is set to the sum of the sequence number
// and segment length of the incoming segment."
func (nf *Netfilter) sendReset(p *pkt) {
	in := p.ct.TCP
	if in.Flags()&header.RST != 0 || nf.fib == nil || nf.neigh == nil || nf.devs == nil {
		return // RFC 9293 §3.10.7.1: never a reset for a reset
	}
	src, dst, sport, dport := p.dst, p.src, p.dport, p.sport
	if p.conn != nil {
		tu := p.conn.Tuple(p.dir)
		src, dst, sport, dport = tu.Dst, tu.Src, tu.DstPort, tu.SrcPort
	}
	res, ok := nf.fib.Lookup(dst)
	if !ok || res.Type != route.Unicast {
		nf.drops.Add(DropResetNoRoute)
		return
	}
	nic := nf.devs.ByID(res.NIC)
	if nic == nil {
		nf.drops.Add(DropResetNoRoute)
		return
	}
	f := header.TCPFields{SrcPort: sport, DstPort: dport, Flags: header.RST}
	if in.Flags()&header.ACK != 0 {
		f.Seq = in.Ack()
	} else {
		f.Flags |= header.ACK
		f.Ack = in.Seq() + uint32(len(in.Payload()))
		if in.Flags()&header.SYN != 0 {
			f.Ack++
		}
		if in.Flags()&header.FIN != 0 {
			f.Ack++
		}
	}
	hl, et := header.IPv4MinSize, header.EtherTypeIPv4
	if dst.Is6() {
		hl, et = header.IPv6MinSize, header.EtherTypeIPv6
	}
	skb := buf.Alloc(buf.MaxHeadroom, hl+header.TCPMinSize)
	b := skb.Put(hl + header.TCPMinSize)
	if dst.Is6() {
		// nf_send_reset6: hop limit as the stack's default.
		header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: header.TCPMinSize, NextHeader: header.ProtoTCP, HopLimit: 64, Src: src, Dst: dst})
	} else {
		header.IPv4(b).Encode(header.IPv4Fields{TotalLen: uint16(len(b)), DF: true, TTL: 64, Protocol: header.ProtoTCP, Src: src, Dst: dst})
	}
	th := header.TCP(b[hl:])
	th.Encode(f)
	th.SetChecksum(src, dst)
	skb.SetNetworkHeader()
	skb.SetTransportHeaderAt(hl)
	skb.Protocol = uint16(et)
	skb.OutNIC = res.NIC
	skb.Drops = &nf.drops
	nf.stats.resets.Add(1)
	nf.neigh.Output(nic, res.NextHop, skb)
}
