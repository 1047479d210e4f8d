package afpacket

import "github.com/cni-userstack/cni-userstack/netstack/buf"

// The layer of this endpoint's drop reasons (`cni-userstack stats`).
func init() {
	buf.SetDropLayer("link", DropAFPacketRxTruncated, DropAFPacketRxRunt, DropAFPacketTxTooBig,
		DropAFPacketTxRunt, DropAFPacketTxError, DropAFPacketBadVnetHdr)
}
