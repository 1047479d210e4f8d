package header

import (
	"encoding/binary"
	"net/netip"
)

// ARPSize is the length of an Ethernet/IPv4 ARP packet.
const ARPSize = 28

// ARP operations (RFC 826 ar$op).
const (
	ARPRequest uint16 = 1
	ARPReply   uint16 = 2
)

// ARP hardware and protocol types accepted by CheckARP.
const (
	ARPHardwareEthernet uint16 = 1 // ARPHRD_ETHER
	arpHLen                    = 6
	arpPLen                    = 4
)

// ARP is an RFC 826 packet for Ethernet and IPv4 only:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|    Hardware type (ar$hrd)     |    Protocol type (ar$pro)     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| HLen (ar$hln) | PLen (ar$pln) |       Operation (ar$op)       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|            Sender hardware address (8..13)                    |
//	+                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                               |  Sender protocol addr (14..17)|
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                               |  Target hardware addr (18..23)|
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|              Target protocol address (24..27)                 |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
type ARP []byte

const (
	arpHrd = 0
	arpPro = 2
	arpHln = 4
	arpPln = 5
	arpOp  = 6
	arpSha = 8
	arpSpa = 14
	arpTha = 18
	arpTpa = 24
)

// CheckARP validates b as an Ethernet/IPv4 ARP packet (RFC 826: a receiver
// checks ar$hrd and ar$pro and the lengths before anything else). Other
// formats return ErrBadARPFormat. The operation is not checked here: an
// unknown op is the neighbour layer's drop.
func CheckARP(b []byte) (ARP, error) {
	if len(b) < ARPSize {
		return nil, ErrTruncated
	}
	if binary.BigEndian.Uint16(b[arpHrd:]) != ARPHardwareEthernet ||
		EtherType(binary.BigEndian.Uint16(b[arpPro:])) != EtherTypeIPv4 ||
		b[arpHln] != arpHLen || b[arpPln] != arpPLen {
		return nil, ErrBadARPFormat
	}
	return ARP(b), nil
}

// Op is ar$op.
func (a ARP) Op() uint16 { return binary.BigEndian.Uint16(a[arpOp:]) }

// SenderMAC is ar$sha.
func (a ARP) SenderMAC() MAC { return MAC(a[arpSha : arpSha+6]) }

// SenderIP is ar$spa.
func (a ARP) SenderIP() netip.Addr { return netip.AddrFrom4([4]byte(a[arpSpa : arpSpa+4])) }

// TargetMAC is ar$tha.
func (a ARP) TargetMAC() MAC { return MAC(a[arpTha : arpTha+6]) }

// TargetIP is ar$tpa.
func (a ARP) TargetIP() netip.Addr { return netip.AddrFrom4([4]byte(a[arpTpa : arpTpa+4])) }

// ARPFields is the decoded Ethernet/IPv4 ARP packet.
type ARPFields struct {
	Op        uint16
	SenderMAC MAC
	SenderIP  netip.Addr
	TargetMAC MAC
	TargetIP  netip.Addr
}

// Fields decodes the packet.
func (a ARP) Fields() ARPFields {
	return ARPFields{Op: a.Op(), SenderMAC: a.SenderMAC(), SenderIP: a.SenderIP(),
		TargetMAC: a.TargetMAC(), TargetIP: a.TargetIP()}
}

// Encode writes all 28 bytes, including the fixed Ethernet/IPv4 format
// fields; a must be at least ARPSize long. A non-IPv4 address encodes as
// 0.0.0.0.
func (a ARP) Encode(f ARPFields) {
	_ = a[ARPSize-1]
	binary.BigEndian.PutUint16(a[arpHrd:], ARPHardwareEthernet)
	binary.BigEndian.PutUint16(a[arpPro:], uint16(EtherTypeIPv4))
	a[arpHln] = arpHLen
	a[arpPln] = arpPLen
	binary.BigEndian.PutUint16(a[arpOp:], f.Op)
	copy(a[arpSha:], f.SenderMAC[:])
	spa := addr4(f.SenderIP)
	copy(a[arpSpa:], spa[:])
	copy(a[arpTha:], f.TargetMAC[:])
	tpa := addr4(f.TargetIP)
	copy(a[arpTpa:], tpa[:])
}

// addr4 returns the four bytes of an IPv4 (or IPv4-mapped) address, zero
// for anything else, so encoders never panic on a zero netip.Addr.
func addr4(a netip.Addr) [4]byte {
	if a.Is4() || a.Is4In6() {
		return a.As4()
	}
	return [4]byte{}
}
