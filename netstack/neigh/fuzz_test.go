package neigh

import (
	"net/netip"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// FuzzRcvNDP feeds arbitrary ICMPv6 bodies to NDP input, as the ipv6
// layer would hand them over (checksum computed, so every message gets
// past it), from a unicast or the unspecified source, to a unicast or a
// solicited-node destination. It must never panic and never answer from
// an address the NIC does not have.
func FuzzRcvNDP(f *testing.F) {
	f.Add(nsMsg(our6, peerMAC), uint8(255), false, true)
	f.Add(nsMsg(off6, header.MAC{}), uint8(255), true, true)
	f.Add(naMsg(true, true, peer6, peerMAC), uint8(255), false, false)
	f.Add(rsMsg(peerMAC), uint8(255), false, false)
	ra := make([]byte, header.NDPRouterAdvertSize)
	header.NDPRouterAdvert(ra).Encode(&header.NDPRouterAdvertFields{CurHopLimit: 64})
	f.Add(ra, uint8(255), false, false)
	f.Fuzz(func(t *testing.T, msg []byte, hop uint8, unspec, mcast bool) {
		if len(msg) < 4 || len(msg) > 1400 { // the test helper checksums it

			return
		}
		e := setup6(t, Config{})
		e.tbl.SetProxy(e.nic.ID(), func(a netip.Addr) bool { return a != peer6 })
		_ = e.tbl.SetRouterAdvert(e.nic.ID(), &RouterAdvertConfig{})
		e.clk.Advance(0)
		e.ep.take()
		src, dst := peer6, our6
		if unspec {
			src = netip.IPv6Unspecified()
		}
		if mcast {
			dst = header.SolicitedNodeAddr(our6)
		}
		e.ndpIn(peerMAC, ourMAC, src, dst, hop, msg)
		e.clk.Advance(maxRADelayTime + minDelayBetweenRAs)
		for _, f := range e.sent6() {
			if s := f.ip.Src(); !e.nic.HasAddress(s) {
				t.Fatalf("sent from %v, not an address of the NIC", s)
			}
		}
	})
}
