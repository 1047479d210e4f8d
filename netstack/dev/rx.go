package dev

import (
	"errors"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// Up brings the NIC up (dev_open, napi_enable): transmit is allowed and
// the receive goroutine runs. If the goroutine of an earlier Up is still
// parked in ReadBatch after a Down, it is reused.
func (n *NIC) Up() {
	if n.removed.Load() {
		return
	}
	n.rxMu.Lock()
	defer n.rxMu.Unlock()
	n.up.Store(true)
	if !n.rxRunning {
		n.rxRunning = true
		n.rxDone = make(chan struct{})
		go n.poll(n.rxDone)
	}
}

// Down takes the NIC down (dev_close): Xmit drops with NIC_DOWN from now
// on and received frames are no longer dispatched. The receive goroutine
// exits when its pending ReadBatch returns (see the package doc).
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

// poll is the NAPI poll loop: one ReadBatch per round, then each frame is
// carried up to completion.
func (n *NIC) poll(done chan struct{}) {
	defer close(done)
	backoff := minReadBackoff
	for {
		k, err := n.ep.ReadBatch(n.rxPkts)
		k = min(max(k, 0), len(n.rxPkts)) // a misbehaving endpoint must not panic us
		if k > 0 {
			n.rxTime = n.devs.clk.Now()
			n.rxDefer.Now = n.rxTime
			n.rxBatch(n.rxPkts[:k])
			clear(n.rxPkts[:k])
		}
		if err != nil {
			if errors.Is(err, link.ErrClosed) {
				n.exitPoll()
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
		if !n.up.Load() {
			n.rxMu.Lock()
			if !n.up.Load() {
				n.rxRunning = false
				n.rxMu.Unlock()
				return
			}
			n.rxMu.Unlock()
		}
	}
}

func (n *NIC) exitPoll() {
	n.rxMu.Lock()
	n.rxRunning = false
	n.rxMu.Unlock()
}

// rxBatch dispatches the frames of one batch. It consumes every SKB.
func (n *NIC) rxBatch(pkts []*buf.SKB) {
	taps := *n.devs.taps.Load()
	ptypes := *n.devs.ptypes.Load()
	up := n.up.Load()
	for _, skb := range pkts {
		if skb == nil {
			continue
		}
		skb.InNIC = n.id
		skb.Drops = &n.drops
		skb.Batch = &n.rxDefer
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
	n.rxDefer.Flush()
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
