package header

import (
	"encoding/binary"
	"net/netip"
)

// UDPSize is the UDP header length.
const UDPSize = 8

// UDP is an RFC 768 datagram:
//
//	 0      7 8     15 16    23 24    31
//	+--------+--------+--------+--------+
//	|     Source      |   Destination   |
//	|      Port       |      Port       |
//	+--------+--------+--------+--------+
//	|     Length      |    Checksum     |
//	+--------+--------+--------+--------+
//	|          data octets ...
type UDP []byte

const (
	udpSrc    = 0
	udpDst    = 2
	udpLength = 4
	udpCsum   = 6
)

// CheckUDP validates b as a UDP datagram: 8 <= length field <= len(b)
// (__udp4_lib_rcv: a length past the IP payload is a header error; a
// shorter one trims the datagram).
func CheckUDP(b []byte) (UDP, error) {
	if len(b) < UDPSize {
		return nil, ErrTruncated
	}
	l := int(binary.BigEndian.Uint16(b[udpLength:]))
	if l < UDPSize || l > len(b) {
		return nil, ErrBadLength
	}
	return UDP(b), nil
}

// SrcPort is the source port.
func (h UDP) SrcPort() uint16 { return binary.BigEndian.Uint16(h[udpSrc:]) }

// DstPort is the destination port.
func (h UDP) DstPort() uint16 { return binary.BigEndian.Uint16(h[udpDst:]) }

// Length is the length field: header plus data.
func (h UDP) Length() int { return int(binary.BigEndian.Uint16(h[udpLength:])) }

// Checksum is the stored checksum; 0 means none was computed (RFC 768).
func (h UDP) Checksum() uint16 { return binary.BigEndian.Uint16(h[udpCsum:]) }

// Payload is the data up to the length field, clamped to the view.
func (h UDP) Payload() []byte {
	l := h.Length()
	if l > len(h) {
		l = len(h)
	}
	if l < UDPSize {
		return h[UDPSize:UDPSize]
	}
	return h[UDPSize:l]
}

// ChecksumValid verifies the checksum over the pseudo-header and the
// datagram up to Length. RFC 768: a zero checksum means the sender
// computed none, which IPv4 accepts.
func (h UDP) ChecksumValid(src, dst netip.Addr) bool {
	if h.Checksum() == 0 {
		return true
	}
	l := min(h.Length(), len(h))
	return Fold(Checksum(h[:l], PseudoHeaderSum(ProtoUDP, src, dst, l))) == 0xffff
}

// SetChecksum computes and stores the checksum over the pseudo-header and
// the datagram up to Length. RFC 768: "If the computed checksum is zero,
// it is transmitted as all ones."
func (h UDP) SetChecksum(src, dst netip.Addr) {
	l := min(h.Length(), len(h))
	h[udpCsum], h[udpCsum+1] = 0, 0
	c := ChecksumFinal(Checksum(h[:l], PseudoHeaderSum(ProtoUDP, src, dst, l)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(h[udpCsum:], c)
}

// SetSrcPort stores p, updating a non-zero checksum incrementally (NAT).
func (h UDP) SetSrcPort(p uint16) { h.setPort(udpSrc, p) }

// SetDstPort stores p, updating a non-zero checksum incrementally (NAT).
func (h UDP) SetDstPort(p uint16) { h.setPort(udpDst, p) }

func (h UDP) setPort(off int, p uint16) {
	old := binary.BigEndian.Uint16(h[off:])
	binary.BigEndian.PutUint16(h[off:], p)
	if c := h.Checksum(); c != 0 {
		c = ChecksumUpdate16(c, old, p)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(h[udpCsum:], c)
	}
}

// UDPFields is the decoded header.
type UDPFields struct {
	SrcPort, DstPort uint16
	Length           uint16
	Checksum         uint16
}

// Fields decodes the header.
func (h UDP) Fields() UDPFields {
	return UDPFields{SrcPort: h.SrcPort(), DstPort: h.DstPort(), Length: uint16(h.Length()), Checksum: h.Checksum()}
}

// Encode writes the 8-byte header as given; h must hold UDPSize bytes.
func (h UDP) Encode(f UDPFields) {
	_ = h[UDPSize-1]
	binary.BigEndian.PutUint16(h[udpSrc:], f.SrcPort)
	binary.BigEndian.PutUint16(h[udpDst:], f.DstPort)
	binary.BigEndian.PutUint16(h[udpLength:], f.Length)
	binary.BigEndian.PutUint16(h[udpCsum:], f.Checksum)
}
