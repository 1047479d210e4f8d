package dev

import (
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// Read-only introspection for `cni-userstack link` and `addr` (what
// `ip -s -d link` and `ip addr` print): a NIC's identity, state, offloads,
// queue and counters. Everything here reads atomics or takes a NIC's leaf
// locks for a copy; nothing runs on a packet path.

func init() {
	buf.SetDropLayer("dev", DropOtherHost, DropUnhandledProto, DropMACHeader, DropVLAN, DropQdisc,
		DropGSOUnsupported, DropCsumHelp)
}

// Info is a snapshot of one NIC.
type Info struct {
	ID         int
	Name       string
	MAC        header.MAC
	MTU        int
	Up         bool
	Caps       link.Caps // the endpoint's offloads (netdev_features_t)
	TxQueued   int       // frames waiting in the transmit queue now
	TxQueueLen int       // the queue's bound (txqueuelen)
	RxBatch    int       // frames per ReadBatch (the NAPI budget)
	Addresses  []netip.Prefix
	Stats      Stats
}

// Info returns a snapshot of the NIC.
func (n *NIC) Info() Info {
	return Info{
		ID: n.id, Name: n.name, MAC: n.mac, MTU: n.MTU(), Up: n.IsUp(), Caps: n.ep.Caps(),
		TxQueued: n.TxQueueLen(), TxQueueLen: n.txQueueLen, RxBatch: n.rxBatchLen,
		Addresses: n.Addresses(), Stats: n.Stats(),
	}
}

// CapNames are the names `ethtool -k` gives the offloads of c, in a fixed
// order.
func CapNames(c link.Caps) []string {
	var out []string
	for _, x := range []struct {
		c    link.Caps
		name string
	}{
		{link.CapTxChecksumPartial, "tx-checksum"},
		{link.CapRxChecksum, "rx-checksum"},
		{link.CapGSO, "tso"},
		{link.CapGRO, "gro"},
	} {
		if c.Has(x.c) {
			out = append(out, x.name)
		}
	}
	return out
}
