package dev

import (
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
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
	if !n.up.Load() {
		n.txDropped.Add(1)
		skb.Free(buf.DropNICDown)
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
