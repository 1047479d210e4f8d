package header

import (
	"encoding/binary"
	"net/netip"
)

// ICMPv4MinSize is the fixed ICMP header: type, code, checksum and the
// 4-byte rest of header.
const ICMPv4MinSize = 8

// ICMPv4 message types (RFC 792).
const (
	ICMPv4EchoReply      uint8 = 0
	ICMPv4DstUnreachable uint8 = 3
	ICMPv4SourceQuench   uint8 = 4 // deprecated by RFC 6633; never sent
	ICMPv4Redirect       uint8 = 5
	ICMPv4Echo           uint8 = 8
	ICMPv4TimeExceeded   uint8 = 11
	ICMPv4ParamProblem   uint8 = 12
	ICMPv4Timestamp      uint8 = 13
	ICMPv4TimestampReply uint8 = 14
)

// Destination-unreachable codes (RFC 792, RFC 1122 §3.2.2.1, RFC 1812
// §5.2.7.1).
const (
	ICMPv4NetUnreachable     uint8 = 0
	ICMPv4HostUnreachable    uint8 = 1
	ICMPv4ProtoUnreachable   uint8 = 2
	ICMPv4PortUnreachable    uint8 = 3
	ICMPv4FragNeeded         uint8 = 4 // RFC 1191: next-hop MTU in the header
	ICMPv4SourceRouteFailed  uint8 = 5
	ICMPv4NetUnknown         uint8 = 6
	ICMPv4HostUnknown        uint8 = 7
	ICMPv4HostIsolated       uint8 = 8
	ICMPv4NetProhibited      uint8 = 9
	ICMPv4HostProhibited     uint8 = 10
	ICMPv4NetTOSUnreachable  uint8 = 11
	ICMPv4HostTOSUnreachable uint8 = 12
	ICMPv4AdminProhibited    uint8 = 13 // RFC 1812
)

// Time-exceeded codes (RFC 792).
const (
	ICMPv4TTLExceeded       uint8 = 0
	ICMPv4ReassemblyTimeout uint8 = 1
)

// ICMPv4 is an RFC 792 message:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Type      |     Code      |          Checksum             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                     Rest of header                            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Data (echo data, or the offending IP header + 8 bytes) ...
//
// Rest of header: echo: identifier (4..5), sequence (6..7); frag needed
// (RFC 1191 §4): unused (4..5), next-hop MTU (6..7); parameter problem:
// pointer (4); redirect: gateway address (4..7).
type ICMPv4 []byte

const (
	icmpType = 0
	icmpCode = 1
	icmpCsum = 2
	icmpRest = 4
)

// CheckICMPv4 validates b as an ICMP message: at least 8 bytes. The
// checksum is not verified here (ChecksumValid), nor whether an error
// quotes enough of the offending datagram (the ipv4 layer's check).
func CheckICMPv4(b []byte) (ICMPv4, error) {
	if len(b) < ICMPv4MinSize {
		return nil, ErrTruncated
	}
	return ICMPv4(b), nil
}

// Type is the message type.
func (h ICMPv4) Type() uint8 { return h[icmpType] }

// Code is the message code.
func (h ICMPv4) Code() uint8 { return h[icmpCode] }

// Checksum is the stored checksum.
func (h ICMPv4) Checksum() uint16 { return binary.BigEndian.Uint16(h[icmpCsum:]) }

// ID is the echo identifier.
func (h ICMPv4) ID() uint16 { return binary.BigEndian.Uint16(h[icmpRest:]) }

// Seq is the echo sequence number.
func (h ICMPv4) Seq() uint16 { return binary.BigEndian.Uint16(h[icmpRest+2:]) }

// MTU is the next-hop MTU of a fragmentation-needed message (RFC 1191 §4);
// 0 from a router predating RFC 1191.
func (h ICMPv4) MTU() uint16 { return binary.BigEndian.Uint16(h[icmpRest+2:]) }

// Pointer is the octet a parameter-problem message points at.
func (h ICMPv4) Pointer() uint8 { return h[icmpRest] }

// Gateway is the address a redirect names.
func (h ICMPv4) Gateway() netip.Addr {
	return netip.AddrFrom4([4]byte(h[icmpRest : icmpRest+4]))
}

// RestOfHeader is bytes 4..7 as one word.
func (h ICMPv4) RestOfHeader() uint32 { return binary.BigEndian.Uint32(h[icmpRest:]) }

// Payload is the data after the 8-byte header.
func (h ICMPv4) Payload() []byte { return h[ICMPv4MinSize:] }

// IsError reports whether the message is an ICMP error (RFC 1122
// §3.2.2: no error is sent about one).
func (h ICMPv4) IsError() bool { return ICMPv4IsError(h.Type()) }

// ICMPv4IsError reports whether typ is an error message type
// (icmp_is_err).
func ICMPv4IsError(typ uint8) bool {
	switch typ {
	case ICMPv4DstUnreachable, ICMPv4SourceQuench, ICMPv4Redirect,
		ICMPv4TimeExceeded, ICMPv4ParamProblem:
		return true
	}
	return false
}

// ChecksumValid verifies the checksum over the whole view (RFC 792: the
// checksum covers the ICMP message, header and data).
func (h ICMPv4) ChecksumValid() bool { return Fold(Checksum(h, 0)) == 0xffff }

// SetChecksum computes and stores the checksum over the whole view, which
// must end where the message ends.
func (h ICMPv4) SetChecksum() {
	h[icmpCsum], h[icmpCsum+1] = 0, 0
	binary.BigEndian.PutUint16(h[icmpCsum:], ChecksumFinal(Checksum(h, 0)))
}

// ICMPv4Fields is the decoded fixed header (checksum aside).
type ICMPv4Fields struct {
	Type, Code   uint8
	RestOfHeader uint32
}

// Fields decodes the fixed header.
func (h ICMPv4) Fields() ICMPv4Fields {
	return ICMPv4Fields{Type: h.Type(), Code: h.Code(), RestOfHeader: h.RestOfHeader()}
}

// Encode writes type, code and rest of header and zeroes the checksum;
// write the data, then call SetChecksum. h must hold ICMPv4MinSize bytes.
func (h ICMPv4) Encode(f ICMPv4Fields) {
	_ = h[ICMPv4MinSize-1]
	h[icmpType] = f.Type
	h[icmpCode] = f.Code
	h[icmpCsum], h[icmpCsum+1] = 0, 0
	binary.BigEndian.PutUint32(h[icmpRest:], f.RestOfHeader)
}

// EchoRest is the rest of header of an echo or echo reply.
func EchoRest(id, seq uint16) uint32 { return uint32(id)<<16 | uint32(seq) }

// FragNeededRest is the rest of header of a fragmentation-needed message
// carrying the next-hop MTU (RFC 1191 §4).
func FragNeededRest(mtu uint16) uint32 { return uint32(mtu) }

// ParamProblemRest is the rest of header of a parameter problem pointing
// at octet ptr.
func ParamProblemRest(ptr uint8) uint32 { return uint32(ptr) << 24 }
