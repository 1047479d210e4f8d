package netstack_test

import (
	"context"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// A stack without EnableNetfilter pays for no hooks; once enabled, a
// loaded ruleset acts on the stack's traffic and counts it.
func TestEnableNetfilterDropsByRule(t *testing.T) {
	a, b := stacktest.Pair(t)
	if b.Netfilter() != nil || b.Hooks().Active(netfilter.LocalIn) {
		t.Fatal("netfilter must be off until enabled")
	}
	ping := func(seq uint16) error {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := a.Ping(ctx, b.Addr(), seq, []byte("x"))
		return err
	}
	if err := ping(1); err != nil {
		t.Fatalf("ping before rules: %v", err)
	}
	nf := b.EnableNetfilter(netfilter.Config{})
	if b.EnableNetfilter(netfilter.Config{}) != nf || b.Netfilter() != nf {
		t.Fatal("EnableNetfilter must return the one engine")
	}
	if err := nf.LoadText("*filter\n-A INPUT -p icmp --icmp-type echo-request -j DROP\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	for seq := uint16(2); seq <= 4; seq++ {
		if err := ping(seq); err == nil {
			t.Fatalf("ping %d passed the DROP rule", seq)
		}
	}
	rule := nf.Ruleset().Chain("filter", "INPUT").Rules[0]
	if pkts, _ := rule.Counters(); pkts != 3 {
		t.Fatalf("DROP rule counted %d packets, want 3", pkts)
	}
}
