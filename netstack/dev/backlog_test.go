package dev

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// The backlog holds at most max packets, delivers them in order on the
// clock's goroutine, at most budget per run (re-arming for the rest).
func TestBacklog(t *testing.T) {
	clk := clock.NewManual()
	var got []byte
	var b Backlog
	b.Init(clk, 5, 2, func(skb *buf.SKB) { got = append(got, skb.Bytes()[0]); skb.Consume() })
	for i := range 6 {
		skb := buf.FromBytes(0, []byte{byte(i)})
		if ok := b.Enqueue(skb); ok != (i < 5) {
			t.Fatalf("enqueue %d: %v", i, ok)
		} else if !ok {
			skb.Consume()
		}
	}
	if len(got) != 0 {
		t.Fatalf("delivered before the clock ran: %v", got)
	}
	clk.Advance(0)
	if string(got) != "\x00\x01\x02\x03\x04" {
		t.Fatalf("delivered %v, want 0..4 in order", got)
	}
	if !b.Enqueue(buf.FromBytes(0, []byte{9})) {
		t.Fatal("not empty after the runs")
	}
	clk.Advance(0)
	if got[len(got)-1] != 9 {
		t.Fatalf("delivered %v", got)
	}
}
