package dev

import (
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// HardHeader pushes an Ethernet header onto skb (dev_hard_header,
// eth_header): destination dst, source the NIC's MAC, EtherType t. The
// MAC header offset is recorded.
func (n *NIC) HardHeader(skb *buf.SKB, dst header.MAC, t header.EtherType) {
	eth := header.Ethernet(skb.Push(header.EthernetMinSize))
	eth.Encode(header.EthernetFields{Dst: dst, Src: n.mac, Type: t})
	skb.SetMACHeader()
}

// Xmit transmits a frame (dev_queue_xmit). It consumes skb, which starts
// at the Ethernet header: the frame is queued and written to the endpoint,
// or freed with a reason counted on this NIC (NIC_DOWN when the NIC is
// down, QDISC_DROP when the queue holds TxQueueLen frames). The caller
// that finds no flusher running writes the queue out itself (qdisc_run).
func (n *NIC) Xmit(skb *buf.SKB) {
	skb.Drops = &n.drops
	skb.Batch = nil // a forwarded frame leaves its receive batch here
	if !n.up.Load() {
		n.txDropped.Add(1)
		skb.Free(buf.DropNICDown)
		return
	}
	if r, ok := n.validateXmit(skb); !ok {
		n.txDropped.Add(1)
		skb.Free(r)
		return
	}
	n.txMu.Lock()
	if n.txq.Len() >= n.txQueueLen {
		n.txMu.Unlock()
		n.txDropped.Add(1)
		skb.Free(DropQdisc)
		return
	}
	n.txq.PushBack(skb)
	if n.txRunning {
		// The running flusher takes it (__QDISC_STATE_RUNNING is set).
		n.txMu.Unlock()
		return
	}
	n.txRunning = true
	n.txMu.Unlock()
	n.qdiscRun()
}

// TxQueueLen is the number of frames waiting in the transmit queue.
func (n *NIC) TxQueueLen() int {
	n.txMu.Lock()
	defer n.txMu.Unlock()
	return n.txq.Len()
}

// qdiscRun is qdisc_run/__qdisc_run + sch_direct_xmit: the caller owns
// txRunning and writes batches until the queue is empty.
func (n *NIC) qdiscRun() {
	for {
		n.txMu.Lock()
		k := 0
		for k < len(n.txPkts) {
			s := n.txq.PopFront()
			if s == nil {
				break
			}
			n.txPkts[k] = s
			k++
		}
		if k == 0 {
			n.txRunning = false
			n.txMu.Unlock()
			return
		}
		n.txMu.Unlock()
		n.xmitBatch(n.txPkts[:k])
	}
}

// xmitBatch runs the taps and hands pkts to the endpoint, which consumes
// them all (dev_hard_start_xmit).
func (n *NIC) xmitBatch(pkts []*buf.SKB) {
	if !n.up.Load() {
		// Went down while these were queued: dev_deactivate purges the qdisc.
		for _, s := range pkts {
			s.Free(buf.DropNICDown)
		}
		n.txDropped.Add(uint64(len(pkts)))
		clear(pkts)
		return
	}
	taps := *n.devs.taps.Load()
	for i, s := range pkts {
		n.txLens[i] = s.Len()
		for _, t := range taps {
			t.fn(n, s, Tx)
		}
	}
	sent, err := n.ep.WriteBatch(pkts)
	sent = min(max(sent, 0), len(pkts))
	// The endpoint reports how many it sent, not which: TxBytes counts the
	// first sent frames, exact whenever a batch is sent whole.
	var bytes uint64
	for _, l := range n.txLens[:sent] {
		bytes += uint64(l)
	}
	n.txPackets.Add(uint64(sent))
	n.txBytes.Add(bytes)
	if sent < len(pkts) {
		n.txDropped.Add(uint64(len(pkts) - sent))
	}
	if err != nil {
		n.txErrors.Add(1)
	}
	clear(pkts)
}

// Drop reasons of validateXmit.
var (
	DropGSOUnsupported = buf.NewDropReason("GSO_UNSUPPORTED")
	DropCsumHelp       = buf.NewDropReason("SKB_CSUM_HELP")
)

// validateXmit is validate_xmit_skb: it finishes what the endpoint cannot
// offload. A CsumPartial packet on a link without CapTxChecksumPartial
// gets its checksum in software (skb_checksum_help). A GSO super-packet on
// a link without CapGSO is dropped: software segmentation arrives with
// netstack/offload; until then every link that receives GSO packets
// (afpacket with vnet headers) also sends them.
func (n *NIC) validateXmit(skb *buf.SKB) (buf.DropReason, bool) {
	caps := n.ep.Caps()
	if skb.GSOSize != 0 && !caps.Has(link.CapGSO) {
		return DropGSOUnsupported, false
	}
	if skb.Csum == buf.CsumPartial && !caps.Has(link.CapTxChecksumPartial) {
		if !checksumHelp(skb) {
			return DropCsumHelp, false
		}
	}
	return 0, true
}

// checksumHelp completes a partial checksum: the one's complement sum from
// the transport header to the end, over the pseudo-header sum the sender
// left in the checksum field, stored folded (0 becomes 0xFFFF, which the
// receiver reads the same, RFC 768/RFC 1071).
func checksumHelp(skb *buf.SKB) bool {
	th := skb.TransportHeader()
	off := int(skb.CsumOffset)
	if th == nil || skb.TransportOffset() < 0 || off+2 > len(th) {
		return false
	}
	// Only the checksum field is written: a TCP segment sent as a clone
	// of its send buffer (buf.CloneHeadroom) owns its headers.
	skb.WritableHead(skb.TransportOffset() + off + 2)
	th = skb.TransportHeader()
	th = th[:len(th):len(th)]
	sum := header.ChecksumFinal(header.Checksum(th, 0))
	if sum == 0 {
		sum = 0xffff
	}
	th[off], th[off+1] = byte(sum>>8), byte(sum)
	skb.Csum = buf.CsumNone
	return true
}
