package netstack_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
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

// The read-only views the daemon's inspect endpoints serve, on two stacks
// over a pipe: sockets with their TCP_INFO and queues, TCP states, UDP
// sockets, neighbours with NUD states, the local and broadcast tables,
// NIC info.
func TestInfoViews(t *testing.T) {
	a, b := stacktest.Pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Ping(ctx, b.Addr(), 1, nil); err != nil {
		t.Fatal(err)
	}
	ln, err := b.ListenTCP(netip.AddrPortFrom(b.Addr(), 80))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := a.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(b.Addr(), 80))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	stacktest.WaitFor(t, "a connection queued at the listener", func() bool {
		for _, s := range b.TCP().Sockets() {
			if s.State == tcp.Established && s.RecvQ == 6 {
				return true
			}
		}
		return false
	})
	var listen, est bool
	for _, s := range b.TCP().Sockets() {
		switch s.State {
		case tcp.Listen:
			listen = s.Local == netip.AddrPortFrom(b.Addr(), 80) && s.RecvQ == 1 && s.SendQ == tcp.DefaultBacklog && !s.Remote.IsValid()
		case tcp.Established:
			est = s.Local.Port() == 80 && s.Remote.Addr() == a.Addr() && s.Info.BytesReceived == 6 && s.Info.MSS > 0
		}
	}
	if !listen || !est {
		t.Fatalf("b's sockets (listener ok %v, connection ok %v): %+v", listen, est, b.TCP().Sockets())
	}
	if n := b.TCP().StateCounts(); n[tcp.Listen] != 1 || n[tcp.Established] != 1 {
		t.Fatalf("b's TCP states: %v", n)
	}
	u, err := a.ListenUDP(netip.AddrPortFrom(netip.Addr{}, 5353))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if us := a.UDP().Sockets(); len(us) != 1 || us[0].Local != netip.MustParseAddrPort("0.0.0.0:5353") || us[0].Connected {
		t.Fatalf("a's UDP sockets: %+v", us)
	}
	var peer bool
	for _, e := range a.Neigh().Dump() {
		if e.Addr == b.Addr() && e.MAC == b.NIC().MAC() && e.State == neigh.Reachable && !e.Confirmed.IsZero() {
			peer = true
		}
	}
	if !peer || a.Neigh().StateCounts()[neigh.Reachable] != 1 {
		t.Fatalf("a's neighbours: %+v", a.Neigh().Dump())
	}
	if ls := a.FIB().Locals(); len(ls) != 1 || ls[0].Addr != a.Addr() || !ls[0].Primary {
		t.Fatalf("a's local table: %+v", ls)
	}
	if bc := a.FIB().Broadcasts(); len(bc) != 1 || bc[0].Addr != netip.MustParseAddr("10.0.0.255") {
		t.Fatalf("a's broadcasts: %+v", bc)
	}
	in := a.NIC().Info()
	if in.Name != a.NIC().Name() || !in.Up || in.TxQueueLen != 1000 || len(in.Addresses) != 1 || in.Stats.TxPackets == 0 {
		t.Fatalf("a's NIC: %+v", in)
	}
}
