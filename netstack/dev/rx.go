package dev

import (
	"errors"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// rxQueue is one receive queue's NAPI context: the frames of a batch and
// the work deferred to its end. Owned by the queue's goroutine.
type rxQueue struct {
	q       int
	running bool // a goroutine reads this queue (under NIC.rxMu)
	pkts    []*buf.SKB
	batch   buf.Batch
}

// Up brings the NIC up (dev_open, napi_enable): transmit is allowed and
// a receive goroutine runs per receive queue. A goroutine of an earlier
// Up still parked in its read after a Down is reused.
func (n *NIC) Up() {
	if n.removed.Load() {
		return
	}
	n.rxMu.Lock()
	defer n.rxMu.Unlock()
	n.up.Store(true)
	for _, rq := range n.rxq {
		if !rq.running {
			rq.running = true
			n.rxWG.Add(1)
			go n.poll(rq)
		}
	}
}

// Down takes the NIC down (dev_close): Xmit drops with NIC_DOWN from now
// on and received frames are no longer dispatched. The receive goroutines
// exit when their pending reads return (see the package doc).
func (n *NIC) Down() {
	n.rxMu.Lock()
	n.up.Store(false)
	n.rxMu.Unlock()
}

// Backoff after an endpoint read error other than ErrClosed, so a broken
// endpoint cannot spin the receive goroutine. Wall-clock, not protocol
// timing.
const (
	minReadBackoff = time.Millisecond
	maxReadBackoff = 100 * time.Millisecond
)

// read is one ReadBatch of queue rq.
func (n *NIC) read(rq *rxQueue) (int, error) {
	if rq.q > 0 {
		return n.ep.(link.MultiQueue).ReadQueue(rq.q, rq.pkts)
	}
	return n.ep.ReadBatch(rq.pkts)
}

// poll is the NAPI poll loop of one receive queue: one read per round,
// then each frame is carried up to completion. An endpoint that runs the
// loop itself (link.LoopReader) hands each batch up from inside its
// read (loop).
func (n *NIC) poll(rq *rxQueue) {
	defer n.rxWG.Done()
	if lr, ok := n.ep.(link.LoopReader); ok {
		n.loop(rq, lr)
		return
	}
	backoff := minReadBackoff
	for {
		k, err := n.read(rq)
		n.carry(rq, k)
		if err != nil {
			if errors.Is(err, link.ErrClosed) {
				n.exitPoll(rq)
				return
			}
			n.rxErrors.Add(1)
			if k == 0 {
				time.Sleep(backoff)
				backoff = min(2*backoff, maxReadBackoff)
			}
		} else {
			backoff = minReadBackoff
		}
		if n.stopIfDown(rq) {
			return
		}
	}
}

// carry takes a batch of k frames read into rq.pkts up the stack.
func (n *NIC) carry(rq *rxQueue, k int) {
	k = min(max(k, 0), len(rq.pkts)) // a misbehaving endpoint must not panic us
	if k == 0 {
		return
	}
	now := n.devs.clk.Now()
	n.rxTimeNs.Store(now.UnixNano())
	rq.batch.Now = now
	n.rxBatch(rq, rq.pkts[:k])
	clear(rq.pkts[:k])
}

// stopIfDown marks rq's goroutine stopped when the NIC is down (Down
// came) and reports whether it was: the goroutine then returns.
func (n *NIC) stopIfDown(rq *rxQueue) bool {
	if n.up.Load() {
		return false
	}
	n.rxMu.Lock()
	defer n.rxMu.Unlock()
	if n.up.Load() {
		return false
	}
	rq.running = false
	return true
}

// loop is poll's loop on a link.LoopReader: each batch is carried up
// inside the endpoint's read; the loop ends as poll's does, when the
// endpoint is closed or the NIC is down once a batch is done. Other read
// errors are counted and backed off as in poll.
func (n *NIC) loop(rq *rxQueue, lr link.LoopReader) {
	stopped := false
	handle := func(k int) bool {
		n.carry(rq, k)
		stopped = n.stopIfDown(rq)
		return !stopped
	}
	backoff := minReadBackoff
	for {
		err := lr.ReadLoop(rq.q, rq.pkts, handle)
		switch {
		case stopped:
			return
		case errors.Is(err, link.ErrClosed):
			n.exitPoll(rq)
			return
		case err != nil:
			n.rxErrors.Add(1)
			time.Sleep(backoff)
			backoff = min(2*backoff, maxReadBackoff)
		default:
			// nil without a stop: the endpoint has no such queue.
			n.exitPoll(rq)
			return
		}
	}
}

func (n *NIC) exitPoll(rq *rxQueue) {
	n.rxMu.Lock()
	rq.running = false
	n.rxMu.Unlock()
}

// rxBatch dispatches the frames of one batch. It consumes every SKB.
func (n *NIC) rxBatch(rq *rxQueue, pkts []*buf.SKB) {
	taps := *n.devs.taps.Load()
	ptypes := *n.devs.ptypes.Load()
	up := n.up.Load()
	for _, skb := range pkts {
		if skb == nil {
			continue
		}
		skb.InNIC = n.id
		skb.Drops = &n.drops
		skb.Batch = &rq.batch
		n.rxPackets.Add(1)
		n.rxBytes.Add(uint64(skb.Len()))
		if !up {
			n.rxDrop(skb, buf.DropNICDown)
			continue
		}
		for _, t := range taps {
			t.fn(n, skb, Rx)
		}
		n.receive(skb, ptypes)
	}
	// The batch's deferred work: one ACK and one data-ready upcall per
	// socket instead of one per segment.
	rq.batch.Flush()
}

// receive is __netif_receive_skb_core after eth_type_trans: classify by
// destination MAC, strip the Ethernet header, deliver by EtherType.
func (n *NIC) receive(skb *buf.SKB, ptypes []ptype) {
	eth, err := header.CheckEthernet(skb.Bytes())
	if err != nil {
		if errors.Is(err, header.ErrVLANTagged) {
			n.rxDrop(skb, DropVLAN)
		} else {
			n.rxDrop(skb, DropMACHeader)
		}
		return
	}
	// eth_type_trans: frames unicast to another station are
	// PACKET_OTHERHOST, which no protocol handler takes.
	if dst := eth.Dst(); dst != n.mac && !dst.IsBroadcast() && !dst.IsMulticast() {
		n.rxDrop(skb, DropOtherHost)
		return
	}
	typ := eth.Type()
	skb.SetMACHeader()
	skb.Pull(header.EthernetMinSize)
	skb.SetNetworkHeader()
	skb.Protocol = uint16(typ)
	for i := range ptypes {
		if ptypes[i].t == typ {
			ptypes[i].h(n, skb)
			return
		}
	}
	n.rxDrop(skb, DropUnhandledProto)
}

func (n *NIC) rxDrop(skb *buf.SKB, r buf.DropReason) {
	n.rxDropped.Add(1)
	skb.Free(r)
}
