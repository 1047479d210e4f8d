package neigh

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
)

// host is one end of a back-to-back pair: a device list with one NIC, a
// neighbour table answering ARP through dev's dispatch, and an IPv4
// handler that reports what arrives.
type host struct {
	nic *dev.NIC
	tbl *Table
	ip  chan byte
}

func newHost(t *testing.T, clk clock.Clock, ep *pipe.Endpoint, mac header.MAC, addr string) *host {
	t.Helper()
	devs := dev.NewDevices(clk)
	nic, err := devs.Add(ep, dev.Config{Name: "eth0", MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	h := &host{nic: nic, tbl: New(clk, devs, Config{}), ip: make(chan byte, 16)}
	devs.AddPacketType(header.EtherTypeARP, h.tbl.Rcv)
	devs.AddPacketType(header.EtherTypeIPv4, func(_ *dev.NIC, skb *buf.SKB) {
		h.ip <- skb.Bytes()[header.IPv4MinSize]
		skb.Consume()
	})
	if err := nic.AddAddress(netip.MustParsePrefix(addr)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devs.Remove(nic.ID()) })
	nic.Up()
	return h
}

// End to end through dev's receive goroutines: A resolves B over the
// pipe and the queued packets arrive at B in order.
func TestResolutionOverPipe(t *testing.T) {
	clk := clock.NewManual()
	ea, eb := pipe.New(1500)
	a := newHost(t, clk, ea, ourMAC, "10.0.0.1/24")
	b := newHost(t, clk, eb, peerMAC, "10.0.0.2/24")
	for id := byte(1); id <= 3; id++ {
		a.tbl.Output(a.nic, peerIP, ipPacket(ourIP, peerIP, id))
	}
	for want := byte(1); want <= 3; want++ {
		select {
		case got := <-b.ip:
			if got != want {
				t.Fatalf("B received packet %d, want %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d never arrived; A: %+v B: %+v", want, a.tbl.Stats(), b.tbl.Stats())
		}
	}
	if en, ok := a.tbl.Lookup(a.nic.ID(), peerIP); !ok || en.State != Reachable || en.MAC != peerMAC {
		t.Fatalf("A's entry %+v", en)
	}
	// B learnt A from the request it answered (RFC 826 merge).
	if en, ok := b.tbl.Lookup(b.nic.ID(), ourIP); !ok || en.State != Stale || en.MAC != ourMAC {
		t.Fatalf("B's entry %+v", en)
	}
	if sa, sb := a.tbl.Stats(), b.tbl.Stats(); sa.OutRequests != 1 || sa.InReplies != 1 || sb.InRequests != 1 || sb.OutReplies != 1 {
		t.Fatalf("A %+v B %+v", sa, sb)
	}
}
