package header

import (
	"encoding/binary"
	"net/netip"
)

// ICMPv6MinSize is the ICMPv6 header every message we read carries:
// type, code, checksum and 4 octets of message body (RFC 4443 §2.1).
const ICMPv6MinSize = 8

// ICMPv6 message types (RFC 4443 §2.1, RFC 4861 §4, RFC 2710/3810).
// Types 0–127 are errors, 128–255 informational.
const (
	ICMPv6DstUnreachable   uint8 = 1
	ICMPv6PacketTooBig     uint8 = 2
	ICMPv6TimeExceeded     uint8 = 3
	ICMPv6ParamProblem     uint8 = 4
	ICMPv6EchoRequest      uint8 = 128
	ICMPv6EchoReply        uint8 = 129
	ICMPv6MLDQuery         uint8 = 130
	ICMPv6MLDReport        uint8 = 131
	ICMPv6MLDDone          uint8 = 132
	ICMPv6RouterSolicit    uint8 = 133
	ICMPv6RouterAdvert     uint8 = 134
	ICMPv6NeighborSolicit  uint8 = 135
	ICMPv6NeighborAdvert   uint8 = 136
	ICMPv6Redirect         uint8 = 137
	ICMPv6MLDv2Report      uint8 = 143
	icmpv6FirstInformation uint8 = 128
)

// Destination Unreachable codes (RFC 4443 §3.1).
const (
	ICMPv6NoRoute          uint8 = 0
	ICMPv6AdminProhibited  uint8 = 1
	ICMPv6BeyondScope      uint8 = 2
	ICMPv6AddrUnreachable  uint8 = 3
	ICMPv6PortUnreachable  uint8 = 4
	ICMPv6SrcPolicyFailed  uint8 = 5
	ICMPv6RejectRoute      uint8 = 6
	ICMPv6SrcRoutingHeader uint8 = 7 // RFC 6550
)

// Time Exceeded codes (RFC 4443 §3.3).
const (
	ICMPv6HopLimitExceeded  uint8 = 0
	ICMPv6ReassemblyTimeout uint8 = 1
)

// Parameter Problem codes (RFC 4443 §3.4, RFC 7112).
const (
	ICMPv6ErroneousHeader     uint8 = 0
	ICMPv6UnknownNextHeader   uint8 = 1
	ICMPv6UnknownOption       uint8 = 2
	ICMPv6IncompleteHdrChain  uint8 = 3 // RFC 7112 §5: first fragment lacks the header chain
	ICMPv6ParamProblemMaxCode uint8 = 3
)

// ICMPv6 is an RFC 4443 message:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Type      |     Code      |          Checksum             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|        Rest of header (identifier/sequence, MTU, pointer)     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Message body (echo data, or as much of the invoking packet
//	|     as fits in the minimum IPv6 MTU) ...
//
// The checksum covers an IPv6 pseudo-header (RFC 4443 §2.3, RFC 8200
// §8.1) and the whole message.
type ICMPv6 []byte

// CheckICMPv6 validates b as an ICMPv6 message: at least 8 bytes. The
// checksum is not verified here (ChecksumValid needs the addresses).
func CheckICMPv6(b []byte) (ICMPv6, error) {
	if len(b) < ICMPv6MinSize {
		return nil, ErrTruncated
	}
	return ICMPv6(b), nil
}

// Type is the message type.
func (h ICMPv6) Type() uint8 { return h[icmpType] }

// Code is the message code.
func (h ICMPv6) Code() uint8 { return h[icmpCode] }

// Checksum is the stored checksum.
func (h ICMPv6) Checksum() uint16 { return binary.BigEndian.Uint16(h[icmpCsum:]) }

// ID is the echo identifier (RFC 4443 §4.1).
func (h ICMPv6) ID() uint16 { return binary.BigEndian.Uint16(h[icmpRest:]) }

// Seq is the echo sequence number.
func (h ICMPv6) Seq() uint16 { return binary.BigEndian.Uint16(h[icmpRest+2:]) }

// MTU is the next-hop MTU of a Packet Too Big message (RFC 4443 §3.2).
func (h ICMPv6) MTU() uint32 { return binary.BigEndian.Uint32(h[icmpRest:]) }

// Pointer is the offset a Parameter Problem points at (RFC 4443 §3.4).
func (h ICMPv6) Pointer() uint32 { return binary.BigEndian.Uint32(h[icmpRest:]) }

// RestOfHeader is bytes 4..7 as one word.
func (h ICMPv6) RestOfHeader() uint32 { return binary.BigEndian.Uint32(h[icmpRest:]) }

// Payload is the message body after the 8-byte header.
func (h ICMPv6) Payload() []byte { return h[ICMPv6MinSize:] }

// IsError reports whether the message is an error (RFC 4443 §2.1: types
// 0 to 127).
func (h ICMPv6) IsError() bool { return ICMPv6IsError(h.Type()) }

// ICMPv6IsError reports whether typ is an error message type.
func ICMPv6IsError(typ uint8) bool { return typ < icmpv6FirstInformation }

// ChecksumValid verifies the checksum over the pseudo-header of src and
// dst and the whole view (RFC 4443 §2.3).
func (h ICMPv6) ChecksumValid(src, dst netip.Addr) bool {
	return Fold(Checksum(h, PseudoHeaderSum(ProtoICMPv6, src, dst, len(h)))) == 0xffff
}

// SetChecksum computes and stores the checksum over the pseudo-header and
// the whole view, which must end where the message ends.
func (h ICMPv6) SetChecksum(src, dst netip.Addr) {
	h[icmpCsum], h[icmpCsum+1] = 0, 0
	binary.BigEndian.PutUint16(h[icmpCsum:], ChecksumFinal(Checksum(h, PseudoHeaderSum(ProtoICMPv6, src, dst, len(h)))))
}

// ICMPv6Fields is the decoded fixed header (checksum aside).
type ICMPv6Fields struct {
	Type, Code   uint8
	RestOfHeader uint32
}

// Fields decodes the fixed header.
func (h ICMPv6) Fields() ICMPv6Fields {
	return ICMPv6Fields{Type: h.Type(), Code: h.Code(), RestOfHeader: h.RestOfHeader()}
}

// Encode writes type, code and rest of header and zeroes the checksum;
// write the body, then call SetChecksum. h must hold ICMPv6MinSize bytes.
func (h ICMPv6) Encode(f ICMPv6Fields) {
	_ = h[ICMPv6MinSize-1]
	h[icmpType] = f.Type
	h[icmpCode] = f.Code
	h[icmpCsum], h[icmpCsum+1] = 0, 0
	binary.BigEndian.PutUint32(h[icmpRest:], f.RestOfHeader)
}
