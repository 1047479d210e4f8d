package header

import (
	"encoding/binary"
	"errors"
)

// MAC is an IEEE 802 48-bit address.
type MAC [6]byte

// BroadcastMAC is ff:ff:ff:ff:ff:ff.
var BroadcastMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

const hexDigits = "0123456789abcdef"

// String formats m as "aa:bb:cc:dd:ee:ff", as `ip link` does.
func (m MAC) String() string {
	var b [17]byte
	for i, v := range m {
		if i > 0 {
			b[i*3-1] = ':'
		}
		b[i*3] = hexDigits[v>>4]
		b[i*3+1] = hexDigits[v&0xf]
	}
	return string(b[:])
}

// IsBroadcast reports whether m is ff:ff:ff:ff:ff:ff.
func (m MAC) IsBroadcast() bool { return m == BroadcastMAC }

// IsMulticast reports whether the group bit (I/G, the least significant
// bit of the first octet) is set; broadcast is a multicast address.
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

var errBadMAC = errors.New("header: bad MAC address")

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// ParseMAC parses "aa:bb:cc:dd:ee:ff" (or with '-' separators), either case.
func ParseMAC(s string) (MAC, error) {
	var m MAC
	if len(s) != 17 {
		return m, errBadMAC
	}
	sep := s[2]
	if sep != ':' && sep != '-' {
		return m, errBadMAC
	}
	for i := range m {
		if i > 0 && s[i*3-1] != sep {
			return MAC{}, errBadMAC
		}
		hi, ok1 := unhex(s[i*3])
		lo, ok2 := unhex(s[i*3+1])
		if !ok1 || !ok2 {
			return MAC{}, errBadMAC
		}
		m[i] = hi<<4 | lo
	}
	return m, nil
}

// EtherType is the Ethernet II type field (if_ether.h ETH_P_*).
type EtherType uint16

const (
	EtherTypeIPv4 EtherType = 0x0800
	EtherTypeARP  EtherType = 0x0806
	EtherTypeVLAN EtherType = 0x8100 // 802.1Q
	EtherTypeQinQ EtherType = 0x88a8 // 802.1ad service tag
	EtherTypeIPv6 EtherType = 0x86dd
)

// EthernetMinSize is the Ethernet II header length (ETH_HLEN).
const EthernetMinSize = 14

// Ethernet is an Ethernet II frame, header then payload:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                  Destination MAC (0..5)                       |
//	+                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                               |     Source MAC (6..11)        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|      EtherType (12..13)       |  payload ...
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
type Ethernet []byte

const (
	ethDst  = 0
	ethSrc  = 6
	ethType = 12
)

// CheckEthernet validates b as an untagged Ethernet II frame. 802.1Q and
// 802.1ad tagged frames return ErrVLANTagged: the pod veth never carries
// tags, so a tagged frame is foreign and is dropped by dev, not parsed.
// The trailing FCS is not present on AF_PACKET and is not expected.
func CheckEthernet(b []byte) (Ethernet, error) {
	if len(b) < EthernetMinSize {
		return nil, ErrTruncated
	}
	switch EtherType(binary.BigEndian.Uint16(b[ethType:])) {
	case EtherTypeVLAN, EtherTypeQinQ:
		return nil, ErrVLANTagged
	}
	return Ethernet(b), nil
}

// Dst is the destination address.
func (e Ethernet) Dst() MAC { return MAC(e[ethDst : ethDst+6]) }

// Src is the source address.
func (e Ethernet) Src() MAC { return MAC(e[ethSrc : ethSrc+6]) }

// Type is the EtherType.
func (e Ethernet) Type() EtherType { return EtherType(binary.BigEndian.Uint16(e[ethType:])) }

// Payload is everything after the 14-byte header.
func (e Ethernet) Payload() []byte { return e[EthernetMinSize:] }

// EthernetFields is the decoded Ethernet II header.
type EthernetFields struct {
	Dst, Src MAC
	Type     EtherType
}

// Fields decodes the header.
func (e Ethernet) Fields() EthernetFields {
	return EthernetFields{Dst: e.Dst(), Src: e.Src(), Type: e.Type()}
}

// Encode writes the first 14 bytes; e must be at least EthernetMinSize long.
func (e Ethernet) Encode(f EthernetFields) {
	_ = e[EthernetMinSize-1]
	copy(e[ethDst:], f.Dst[:])
	copy(e[ethSrc:], f.Src[:])
	binary.BigEndian.PutUint16(e[ethType:], uint16(f.Type))
}
