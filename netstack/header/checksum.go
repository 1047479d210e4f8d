package header

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// The Internet checksum (RFC 1071) is the 16-bit one's complement of the
// one's complement sum of the data taken as big-endian 16-bit words, an odd
// trailing byte padded with a zero on the right.
//
// RFC 1071 §2(B): the sum is independent of byte order: summing the words
// in the machine's own (little-endian) order and swapping the two bytes of
// the folded result gives the big-endian sum. Checksum uses this to add
// eight bytes at a time into a 64-bit accumulator with add-with-carry
// (RFC 1071 §2(C) "parallel summation"); the carries out of bit 63 are
// added back in (end-around carry), so nothing is lost.

// Checksum adds b to initial and returns the partial sum, not folded and
// not complemented. initial is a partial sum in network order (0, or the
// result of PseudoHeaderSum or of a previous Checksum). Chaining
// Checksum(b2, Checksum(b1, 0)) equals Checksum(b1||b2, 0) only when
// len(b1) is even. Alignment of b in memory does not matter.
func Checksum(b []byte, initial uint32) uint32 {
	var s, c uint64
	for len(b) >= 64 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[0:8]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[8:16]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[16:24]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[24:32]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[32:40]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[40:48]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[48:56]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[56:64]), c)
		b = b[64:]
	}
	for len(b) >= 8 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) > 0 {
		// Up to 7 bytes, zero-padded on the right: a trailing odd byte lands
		// in the low half of its little-endian word, the high half in
		// network order, as RFC 1071 pads it.
		var t uint64
		for i := len(b) - 1; i >= 0; i-- {
			t = t<<8 | uint64(b[i])
		}
		s, c = bits.Add64(s, t, c)
	}
	s, c = bits.Add64(s, 0, c)
	s += c // cannot overflow: s is 0 when c is 1
	// Fold 64 -> 16 bits with end-around carries.
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	r := uint64(initial) + uint64(bits.ReverseBytes16(uint16(s)))
	return uint32(r>>32) + uint32(r) // r>>32 is 0 or 1; uint32(r) <= 0xfffe then
}

// Fold folds a partial sum to 16 bits with end-around carries. It is not
// complemented: a correct packet folds to 0xffff over its checksummed bytes.
func Fold(sum uint32) uint16 {
	sum = (sum >> 16) + (sum & 0xffff)
	sum = (sum >> 16) + (sum & 0xffff)
	return uint16(sum)
}

// ChecksumFinal is the value stored in a checksum field: ^Fold(sum).
func ChecksumFinal(sum uint32) uint16 { return ^Fold(sum) }

// PseudoHeaderSum is the partial sum of the TCP/UDP pseudo-header
// (RFC 9293 §3.1, RFC 768): source, destination, zero, protocol, and the
// transport length. IPv6 addresses sum all 16 bytes (RFC 8200 §8.1).
func PseudoHeaderSum(proto uint8, src, dst netip.Addr, length int) uint32 {
	s := uint64(proto) + uint64(uint32(length)>>16) + uint64(uint32(length)&0xffff)
	s += addrSum(src) + addrSum(dst)
	s = (s >> 32) + (s & 0xffffffff)
	return uint32(s)
}

// addrSum is the sum of an address's big-endian 16-bit words.
func addrSum(a netip.Addr) uint64 {
	switch {
	case a.Is4():
		b := a.As4()
		return uint64(binary.BigEndian.Uint16(b[0:])) + uint64(binary.BigEndian.Uint16(b[2:]))
	case a.Is6():
		b := a.As16()
		var s uint64
		for i := 0; i < 16; i += 2 {
			s += uint64(binary.BigEndian.Uint16(b[i:]))
		}
		return s
	}
	return 0
}

// ChecksumUpdate16 returns the stored checksum csum updated for a 16-bit
// word of the covered data changing from old to new, by RFC 1624 eqn. 3:
//
//	HC' = ~(~HC + ~m + m')
//
// Unlike RFC 1141's HC + m + ~m', this never turns a result whose full
// recomputation is 0x0000 into 0xffff (-0), the corner RFC 1624 §3 works
// through.
func ChecksumUpdate16(csum, old, new uint16) uint16 {
	return ^Fold(uint32(^csum) + uint32(^old) + uint32(new))
}

// ChecksumUpdate32 is ChecksumUpdate16 for a 32-bit field (two words).
func ChecksumUpdate32(csum uint16, old, new uint32) uint16 {
	s := uint32(^csum) +
		uint32(^uint16(old>>16)) + uint32(^uint16(old)) +
		uint32(uint16(new>>16)) + uint32(uint16(new))
	return ^Fold(s)
}

// ChecksumUpdateAddr updates csum for an address in the covered data (an
// IP header, or a TCP/UDP pseudo-header: NAT) changing from old to new.
func ChecksumUpdateAddr(csum uint16, old, new netip.Addr) uint16 {
	// ~m for a multi-word field is the one's complement of its word sum:
	// 0xffff*n - sum, added as (n*0xffff - sum) stays positive in uint64.
	s := uint64(^csum)
	s += addrWords(old)*0xffff - addrSum(old)
	s += addrSum(new)
	s = (s >> 32) + (s & 0xffffffff)
	return ^Fold(uint32(s>>32) + uint32(s))
}

func addrWords(a netip.Addr) uint64 {
	switch {
	case a.Is4():
		return 2
	case a.Is6():
		return 8
	}
	return 0
}
