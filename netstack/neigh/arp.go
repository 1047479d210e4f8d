package neigh

import (
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Rcv is ARP input (arp_rcv → arp_process), the dev.Handler for
// header.EtherTypeARP. It consumes skb, whose Bytes() start at the ARP
// header.
func (t *Table) Rcv(nic *dev.NIC, skb *buf.SKB) {
	a, err := header.CheckARP(skb.Bytes())
	if err != nil {
		t.mu.Lock()
		t.stats.InErrors++
		t.mu.Unlock()
		skb.Free(DropARPInvalid)
		return
	}
	op := a.Op()
	sha, sip, tip := a.SenderMAC(), a.SenderIP(), a.TargetIP()
	// arp_process: no ARP about multicast targets or from group/broadcast
	// hardware or protocol addresses.
	if (op != header.ARPRequest && op != header.ARPReply) ||
		sha.IsMulticast() || sha.IsBroadcast() || sha == (header.MAC{}) ||
		tip.IsMulticast() || tip.IsLoopback() || tip == limitedBroadcast ||
		sip.IsMulticast() || sip.IsLoopback() || sip == limitedBroadcast {
		t.mu.Lock()
		t.stats.InErrors++
		t.mu.Unlock()
		skb.Free(DropARPInvalid)
		return
	}
	// Was the frame unicast to us (PACKET_HOST)? A reply that was
	// broadcast is not a solicited confirmation.
	toUs := false
	if eth, err := header.CheckEthernet(skb.MACHeader()); err == nil {
		toUs = eth.Dst() == nic.MAC()
	}
	nicID := nic.ID()

	// RFC 5227 §2.1.1 probe (sender 0.0.0.0): never learnt; answered only
	// for our own addresses, to defend them (Linux does the same).
	if sip.IsUnspecified() {
		t.countIn(op)
		if op == header.ARPRequest && nic.HasAddress(tip) {
			t.reply(nic, sha, sip, tip)
		}
		skb.Consume()
		return
	}

	// RFC 826: "?Am I the target protocol address?" — ours, or the
	// proxy policy's (arp_fwd_proxy). Never for an announcement, where
	// target == sender (RFC 5227 §3), nor for the sender's own address.
	ours := nic.HasAddress(tip)
	t.mu.Lock()
	proxy := t.proxy[nicID]
	t.mu.Unlock()
	answer := op == header.ARPRequest && tip != sip && !nic.HasAddress(sip) &&
		(ours || (proxy != nil && proxy(tip)))

	t.mu.Lock()
	if op == header.ARPRequest {
		t.stats.InRequests++
	} else {
		t.stats.InReplies++
	}
	var q buf.Queue
	if !nic.HasAddress(sip) {
		q = t.learnLocked(nic, sip, sha, op == header.ARPReply && toUs, answer)
	}
	t.mu.Unlock()
	t.flush(nic, sha, header.EtherTypeIPv4, &q)
	if answer {
		// RFC 826: swap hardware and protocol fields, put the local
		// hardware address in the sender field, set the opcode to reply
		// and send it to the old sender.
		t.reply(nic, sha, sip, tip)
	}
	skb.Consume()
}

func (t *Table) countIn(op uint16) {
	t.mu.Lock()
	if op == header.ARPRequest {
		t.stats.InRequests++
	} else {
		t.stats.InReplies++
	}
	t.mu.Unlock()
}

// learnLocked is RFC 826's merge step via neigh_update: update an
// existing entry with the sender's address; create one only when create
// is set (a request we answer). solicited marks a reply unicast to us,
// which confirms reachability; anything else leaves the entry Stale. It
// returns the packets now sendable.
func (t *Table) learnLocked(nic *dev.NIC, sip netip.Addr, sha header.MAC, solicited, create bool) buf.Queue {
	k := key{nic.ID(), sip}
	e := t.entries[k]
	if e == nil {
		if !create {
			return buf.Queue{}
		}
		if e = t.allocLocked(k, nic); e == nil {
			t.stats.TableFull++
			return buf.Queue{}
		}
	}
	switch {
	case e.state == Permanent:
		return buf.Queue{}
	case solicited:
		e.mac = sha
		t.reachableLocked(e, t.clk.Now())
	case !e.state.valid() || e.mac != sha:
		// neigh_update to NUD_STALE: a new or changed address is usable
		// but unconfirmed.
		e.mac = sha
		e.state = Stale
		e.probes = 0
		e.timer.Stop()
	default:
		// Same address, unsolicited: keep the state (neigh_update leaves
		// a valid entry alone when only STALE is offered).
	}
	return e.pending.TakeAll()
}

// reply sends an ARP reply for tip to (tha, sip) (arp_send(ARPOP_REPLY)).
func (t *Table) reply(nic *dev.NIC, tha header.MAC, sip, tip netip.Addr) {
	t.transmit(nic, tha, header.ARPFields{
		Op: header.ARPReply, SenderMAC: nic.MAC(), SenderIP: tip, TargetMAC: tha, TargetIP: sip,
	})
	t.mu.Lock()
	t.stats.OutReplies++
	t.mu.Unlock()
}

// sendRequest is arp_solicit, or ndisc_solicit for an IPv6 target. For
// ARP the source is the triggering packet's source when it is an address
// of the NIC, else one chosen by inet_select_addr; a NIC without IPv4
// addresses asks from 0.0.0.0.
func (t *Table) sendRequest(r request) {
	if r.target.Is6() {
		t.solicit6(r)
		return
	}
	src := r.srcHint
	if !src.IsValid() || !r.nic.HasAddress(src) {
		var ok bool
		if src, ok = r.nic.SourceFor(r.target); !ok {
			src = netip.IPv4Unspecified()
		}
	}
	var tha header.MAC
	if r.unicast {
		tha = r.dstMAC
	}
	t.transmit(r.nic, r.dstMAC, header.ARPFields{
		Op: header.ARPRequest, SenderMAC: r.nic.MAC(), SenderIP: src, TargetMAC: tha, TargetIP: r.target,
	})
	t.mu.Lock()
	t.stats.OutRequests++
	t.mu.Unlock()
}

// addressAdded announces a new address (RFC 5227 §3: an ARP Request with
// sender and target protocol address both the new address and a zero
// target hardware address, broadcast), as Linux's inetaddr notifier does;
// a new IPv6 address gets an unsolicited Neighbor Advertisement instead
// (announce6).
func (t *Table) addressAdded(nic *dev.NIC, p netip.Prefix) {
	if p.Addr().Is6() && nic.IsUp() {
		t.announce6(nic, p.Addr())
		return
	}
	if !p.Addr().Is4() || !nic.IsUp() {
		return
	}
	a := p.Addr()
	t.transmit(nic, header.BroadcastMAC, header.ARPFields{
		Op: header.ARPRequest, SenderMAC: nic.MAC(), SenderIP: a, TargetIP: a,
	})
	t.mu.Lock()
	t.stats.OutRequests++
	t.mu.Unlock()
}

// transmit builds an ARP frame and hands it to the NIC (arp_create +
// arp_xmit).
func (t *Table) transmit(nic *dev.NIC, dst header.MAC, f header.ARPFields) {
	skb := buf.Alloc(buf.MaxHeadroom, header.ARPSize)
	header.ARP(skb.Put(header.ARPSize)).Encode(f)
	skb.SetNetworkHeader()
	skb.Protocol = uint16(header.EtherTypeARP)
	nic.HardHeader(skb, dst, header.EtherTypeARP)
	nic.Xmit(skb)
}

// multicastMAC maps an IPv4 group to its Ethernet address (RFC 1112
// §6.4: 01-00-5E plus the low 23 bits; ip_eth_mc_map).
func multicastMAC(a netip.Addr) header.MAC {
	b := a.As4()
	return header.MAC{0x01, 0x00, 0x5e, b[1] & 0x7f, b[2], b[3]}
}
