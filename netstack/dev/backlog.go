package dev

import (
	"sync"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// Backlog is a bounded queue of packets handed back to the stack later,
// on the clock's goroutine: Linux's per-CPU backlog (netif_rx →
// enqueue_to_backlog, drained by process_backlog), which the IPv4 and
// IPv6 layers use for looped-back datagrams and for work a packet handler
// must not do on its own call stack (an ICMP error from the neighbour
// failure path). At most max packets wait (netdev_max_backlog: Enqueue
// refuses beyond it and the caller counts the drop); a run processes at
// most budget of them and re-arms itself for the rest (the NAPI weight),
// so one producer cannot hold the clock's goroutine.
//
// Lock order: Backlog's mutex > clock; process runs with no lock held.
type Backlog struct {
	mu      sync.Mutex
	q       buf.Queue // bound: max
	armed   bool
	timer   *clock.Timer
	max     int
	budget  int
	process func(*buf.SKB)
}

// Init readies b on clk; process receives every queued packet once.
func (b *Backlog) Init(clk clock.Clock, max, budget int, process func(*buf.SKB)) {
	b.max, b.budget, b.process = max, budget, process
	b.timer = clk.NewTimer(b.run)
}

// Enqueue queues skb, false (skb not taken) when the backlog is full.
func (b *Backlog) Enqueue(skb *buf.SKB) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.q.Len() >= b.max {
		return false
	}
	b.q.PushBack(skb)
	if !b.armed {
		b.armed = true
		b.timer.Reset(0)
	}
	return true
}

func (b *Backlog) run() {
	for range b.budget {
		b.mu.Lock()
		skb := b.q.PopFront()
		if skb == nil {
			b.armed = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.process(skb)
	}
	b.mu.Lock()
	if b.q.Len() > 0 {
		b.timer.Reset(0)
	} else {
		b.armed = false
	}
	b.mu.Unlock()
}
