package daemon

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// Every drop reason the daemon's binary can count has a layer: the
// stack's (each layer's info.go), the links' and the daemon's own.
func TestEveryDropReasonHasALayer(t *testing.T) {
	for _, r := range buf.DropReasons() {
		if r.Layer() == buf.LayerUnknown {
			t.Errorf("drop reason %s has no layer: declare it with buf.SetDropLayer beside its definition", r)
		}
	}
	if l := DropPodSrcMAC.Layer(); l != "daemon" {
		t.Errorf("POD_SRC_MAC_MISMATCH in layer %q, want daemon", l)
	}
}
