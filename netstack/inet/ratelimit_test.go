package inet

import (
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
)

// RFC 1812 §4.3.2.8 / RFC 4443 §2.4(f): burst errors at once, then rate
// per second; a negative rate is no limit; zeros are the defaults.
func TestTokenBucket(t *testing.T) {
	clk := clock.NewManual()
	var b TokenBucket
	b.Init(clk, 10, 3)
	for i := range 3 {
		if !b.Allow() {
			t.Fatalf("burst: refused token %d", i)
		}
	}
	if b.Allow() {
		t.Fatal("allowed past the burst")
	}
	clk.Advance(100 * time.Millisecond) // one token at 10/s
	if !b.Allow() || b.Allow() {
		t.Fatal("refill: want exactly one token after 100 ms")
	}
	clk.Advance(time.Hour) // capped at the burst
	for range 3 {
		b.Allow()
	}
	if b.Allow() {
		t.Fatal("refill beyond the burst")
	}
	b.Init(clk, -1, 0)
	for range 1000 {
		if !b.Allow() {
			t.Fatal("unlimited bucket refused")
		}
	}
	b.Init(clk, 0, 0)
	if b.rate != DefaultICMPRateLimit || b.burst != DefaultICMPRateBurst {
		t.Fatalf("defaults %d/%d", b.rate, b.burst)
	}
}
