package buf

import "testing"

// A reason several layers claim is labelled with every claimant, sorted
// and joined with "+", each name once however often it is claimed.
func TestSetDropLayerJoinsClaimants(t *testing.T) {
	r := NewDropReason("TEST_LAYER_SHARED")
	if got := r.Layer(); got != LayerUnknown {
		t.Fatalf("unclaimed: layer %q, want %q", got, LayerUnknown)
	}
	SetDropLayer("udp", r)
	SetDropLayer("ipv4", r)
	SetDropLayer("tcp", r)
	SetDropLayer("udp", r)
	if got, want := r.Layer(), "ipv4+tcp+udp"; got != want {
		t.Fatalf("layer %q, want %q", got, want)
	}
	if got := DropLayerOf("TEST_LAYER_SHARED"); got != "ipv4+tcp+udp" {
		t.Fatalf("DropLayerOf = %q", got)
	}
}
