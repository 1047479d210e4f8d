package afpacket

import (
	"encoding/binary"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// The virtio-net header PACKET_VNET_HDR puts before every frame
// (include/uapi/linux/virtio_net.h, struct virtio_net_hdr), in host byte
// order (af_packet.c uses vio_le(), little-endian on every host we run on;
// NativeEndian keeps that true elsewhere):
//
//	0      1          2        4         6           8            10
//	+------+----------+--------+---------+-----------+------------+
//	|flags | gso_type | hdr_len| gso_size| csum_start| csum_offset|
//	+------+----------+--------+---------+-----------+------------+
type vnetHdr [vnetHdrLen]byte

const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID

	vnetGSONone   = 0
	vnetGSOTCPv4  = 1
	vnetGSOTCPv6  = 4
	vnetGSOUDPL4  = 5
	vnetGSOECNBit = 0x80

	// maxGSOFrame is the largest frame with vnet headers: a 64 KiB
	// datagram behind an Ethernet header.
	maxGSOFrame = 65535 + ethHdrLen
	// vnetRxBatch bounds receive slots when each holds maxGSOFrame bytes:
	// 16 × 66 KiB ≈ 1 MiB pinned per link.
	vnetRxBatch = 16
	// minVnetRxSlots is the fewest slots a queue gets when vnetRxBatch
	// is shared out among several.
	minVnetRxSlots = 4
	// copyBreak: received frames whose buffer (headroom included) fits
	// this size are copied into a buffer of their own size class.
	copyBreak = 9216
)

// toSKB records the header's offload state on s, whose data starts at the
// Ethernet header. It reports false for a header that points outside the
// frame.
func (h *vnetHdr) toSKB(s *buf.SKB) bool {
	flags, gsoType := h[0], h[1]&^vnetGSOECNBit
	gsoSize := binary.NativeEndian.Uint16(h[4:])
	start := int(binary.NativeEndian.Uint16(h[6:]))
	off := int(binary.NativeEndian.Uint16(h[8:]))
	switch {
	case flags&vnetFlagNeedsCsum != 0:
		// The sender (the peer kernel's TCP/UDP) left the pseudo-header
		// sum in the checksum field; the data itself never crossed a wire.
		if start < ethHdrLen || start+off+2 > s.Len() {
			return false
		}
		s.Csum = buf.CsumPartial
		s.SetTransportHeaderAt(start)
		s.CsumOffset = uint16(off)
	case flags&vnetFlagDataValid != 0:
		s.Csum = buf.CsumUnnecessary
	}
	var t buf.GSOType
	switch gsoType {
	case vnetGSONone:
		return true
	case vnetGSOTCPv4:
		t = buf.GSOTCPv4
	case vnetGSOTCPv6:
		t = buf.GSOTCPv6
	case vnetGSOUDPL4:
		t = buf.GSOUDPL4v4
	default:
		return false
	}
	if gsoSize == 0 || s.Csum != buf.CsumPartial {
		return false // a GSO frame always carries a partial checksum
	}
	s.GSOSize, s.GSOType = gsoSize, t
	return true
}

// fromSKB fills the header for s, whose data starts at the Ethernet header.
func (h *vnetHdr) fromSKB(s *buf.SKB) {
	*h = vnetHdr{}
	if s.Csum == buf.CsumPartial && s.TransportHeader() != nil {
		start := s.TransportOffset()
		h[0] = vnetFlagNeedsCsum
		binary.NativeEndian.PutUint16(h[6:], uint16(start))
		binary.NativeEndian.PutUint16(h[8:], s.CsumOffset)
		if s.GSOSize != 0 {
			switch s.GSOType {
			case buf.GSOTCPv4:
				h[1] = vnetGSOTCPv4
			case buf.GSOTCPv6:
				h[1] = vnetGSOTCPv6
			case buf.GSOUDPL4v4:
				h[1] = vnetGSOUDPL4
			}
			binary.NativeEndian.PutUint16(h[4:], s.GSOSize)
			// hdr_len: the headers the kernel copies into the linear
			// part; the checksum field's end is the minimum it accepts.
			binary.NativeEndian.PutUint16(h[2:], uint16(start)+s.CsumOffset+2)
		}
	}
}
