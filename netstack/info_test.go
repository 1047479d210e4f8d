package netstack_test

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	// Every package that registers drop reasons in a stack the daemon
	// runs, so the check below sees them all.
	_ "github.com/cni-userstack/cni-userstack/netstack"
	_ "github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	_ "github.com/cni-userstack/cni-userstack/netstack/link/fault"
	_ "github.com/cni-userstack/cni-userstack/netstack/link/pipe"
)

// Every drop reason is claimed by a layer: a reason added without
// buf.SetDropLayer beside it would show as layer "unknown" in `stats` and
// in cni_userstack_drops_total.
func TestEveryDropReasonHasALayer(t *testing.T) {
	for _, r := range buf.DropReasons() {
		if l := r.Layer(); l == buf.LayerUnknown {
			t.Errorf("drop reason %s has no layer: add it to its package's buf.SetDropLayer call (info.go)", r)
		}
	}
	for name, want := range map[string]string{
		"IP_CSUM": "ipv4", "OTHERHOST": "dev", "NEIGH_FAILED": "neigh", "TCP_CSUM": "tcp", "UDP_CSUM": "udp",
		"NETFILTER_DROP": "netfilter", "NIC_DOWN": "core", "NO_SOCKET": "ipv4+tcp+udp", "LINK_TX_CLOSED": "link",
	} {
		if got := buf.DropLayerOf(name); got != want {
			t.Errorf("layer of %s = %q, want %q", name, got, want)
		}
	}
}
