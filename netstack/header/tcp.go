package header

import (
	"encoding/binary"
	"net/netip"
	"strings"
)

// TCP header sizes (RFC 9293 §3.1: data offset counts 32-bit words, 5..15).
const (
	TCPMinSize    = 20
	TCPMaxSize    = 60
	TCPMaxOptions = 40
)

// TCPFlags is the flags octet (byte 13).
type TCPFlags uint8

// TCP flags (RFC 9293 §3.1; ECE and CWR from RFC 3168).
const (
	FIN TCPFlags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
	ECE
	CWR
)

var flagNames = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// String lists the set flags, "SYN|ACK"; "none" when empty.
func (f TCPFlags) String() string {
	if f == 0 {
		return "none"
	}
	var sb strings.Builder
	for i, n := range flagNames {
		if f&(1<<i) != 0 {
			if sb.Len() > 0 {
				sb.WriteByte('|')
			}
			sb.WriteString(n)
		}
	}
	return sb.String()
}

// TCP option kinds (IANA "TCP Option Kind Numbers").
const (
	TCPOptEOL       uint8 = 0
	TCPOptNOP       uint8 = 1
	TCPOptMSS       uint8 = 2 // RFC 9293 §3.2, length 4
	TCPOptWScale    uint8 = 3 // RFC 7323 §2.2, length 3
	TCPOptSACKPerm  uint8 = 4 // RFC 2018 §2, length 2
	TCPOptSACK      uint8 = 5 // RFC 2018 §3, length 2+8n
	TCPOptTimestamp uint8 = 8 // RFC 7323 §3.2, length 10
)

// TCPMaxWScale is the largest shift count (RFC 7323 §2.3).
const TCPMaxWScale = 14

// TCPMaxSACKBlocks is the most SACK blocks 40 bytes of options hold.
const TCPMaxSACKBlocks = 4

// TCP is an RFC 9293 segment:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          Source Port          |       Destination Port        |  0
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                        Sequence Number                        |  4
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Acknowledgment Number                      |  8
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Data |       |C|E|U|A|P|R|S|F|                               |
//	| Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             | 12
//	|       |       |R|E|G|K|H|T|N|N|                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|           Checksum            |         Urgent Pointer        | 16
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                           [Options]                           | 20
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                             data ...
type TCP []byte

const (
	tcpSrc    = 0
	tcpDst    = 2
	tcpSeq    = 4
	tcpAck    = 8
	tcpOff    = 12
	tcpFlags  = 13
	tcpWindow = 14
	tcpCsum   = 16
	tcpUrg    = 18
)

// CheckTCP validates b as a TCP segment (the whole segment: the view's
// length is the segment length the checksum covers): data offset >= 5
// (ErrBadHeaderLen), data offset*4 <= len(b) (ErrTruncated), options
// well-formed (ErrBadOption, see ParseTCPOptions). The checksum is not
// verified (ChecksumValid).
func CheckTCP(b []byte) (TCP, error) {
	if len(b) < TCPMinSize {
		return nil, ErrTruncated
	}
	off := int(b[tcpOff]>>4) * 4
	if off < TCPMinSize {
		return nil, ErrBadHeaderLen
	}
	if off > len(b) {
		return nil, ErrTruncated
	}
	if off > TCPMinSize {
		if _, err := ParseTCPOptions(b[TCPMinSize:off]); err != nil {
			return nil, err
		}
	}
	return TCP(b), nil
}

// SrcPort is the source port.
func (h TCP) SrcPort() uint16 { return binary.BigEndian.Uint16(h[tcpSrc:]) }

// DstPort is the destination port.
func (h TCP) DstPort() uint16 { return binary.BigEndian.Uint16(h[tcpDst:]) }

// Seq is the sequence number.
func (h TCP) Seq() uint32 { return binary.BigEndian.Uint32(h[tcpSeq:]) }

// Ack is the acknowledgment number.
func (h TCP) Ack() uint32 { return binary.BigEndian.Uint32(h[tcpAck:]) }

// DataOffset is the header length in bytes (the field times 4).
func (h TCP) DataOffset() int { return int(h[tcpOff]>>4) * 4 }

// Flags is the flags octet.
func (h TCP) Flags() TCPFlags { return TCPFlags(h[tcpFlags]) }

// Window is the raw (unscaled) window field.
func (h TCP) Window() uint16 { return binary.BigEndian.Uint16(h[tcpWindow:]) }

// Checksum is the stored checksum.
func (h TCP) Checksum() uint16 { return binary.BigEndian.Uint16(h[tcpCsum:]) }

// Urgent is the urgent pointer.
func (h TCP) Urgent() uint16 { return binary.BigEndian.Uint16(h[tcpUrg:]) }

// Options is the option bytes (20..data offset).
func (h TCP) Options() []byte { return h[TCPMinSize:h.DataOffset()] }

// Payload is the data after the header.
func (h TCP) Payload() []byte { return h[h.DataOffset():] }

// ChecksumValid verifies the checksum over the pseudo-header and the whole
// view (RFC 9293 §3.1).
func (h TCP) ChecksumValid(src, dst netip.Addr) bool {
	return Fold(Checksum(h, PseudoHeaderSum(ProtoTCP, src, dst, len(h)))) == 0xffff
}

// SetChecksum computes and stores the checksum over the pseudo-header and
// the whole view, which must end where the segment ends.
func (h TCP) SetChecksum(src, dst netip.Addr) {
	h[tcpCsum], h[tcpCsum+1] = 0, 0
	binary.BigEndian.PutUint16(h[tcpCsum:], ChecksumFinal(Checksum(h, PseudoHeaderSum(ProtoTCP, src, dst, len(h)))))
}

// SetSrcPort stores p, updating the checksum incrementally (NAT).
func (h TCP) SetSrcPort(p uint16) { h.set16(tcpSrc, p) }

// SetDstPort stores p, updating the checksum incrementally (NAT).
func (h TCP) SetDstPort(p uint16) { h.set16(tcpDst, p) }

// SetChecksumField stores c as is (a CsumPartial pseudo-header sum, or a
// NAT update computed elsewhere).
func (h TCP) SetChecksumField(c uint16) { binary.BigEndian.PutUint16(h[tcpCsum:], c) }

func (h TCP) set16(off int, v uint16) {
	old := binary.BigEndian.Uint16(h[off:])
	binary.BigEndian.PutUint16(h[off:], v)
	binary.BigEndian.PutUint16(h[tcpCsum:], ChecksumUpdate16(h.Checksum(), old, v))
}

// TCPFields is the decoded header (checksum aside).
type TCPFields struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            TCPFlags
	Window           uint16
	Urgent           uint16
	Options          []byte // at most 40 bytes; padded with EOL to 4
}

// Fields decodes the header; Options aliases the view.
func (h TCP) Fields() TCPFields {
	return TCPFields{SrcPort: h.SrcPort(), DstPort: h.DstPort(), Seq: h.Seq(), Ack: h.Ack(),
		Flags: h.Flags(), Window: h.Window(), Urgent: h.Urgent(), Options: h.Options()}
}

// TCPHeaderLen is the header length Encode writes for options of n bytes.
func TCPHeaderLen(n int) int { return TCPMinSize + (n+3)&^3 }

// Encode writes the header and options (padded with EOL to a multiple of
// 4); the checksum is left 0 for SetChecksum or offload. h must hold
// TCPHeaderLen(len(f.Options)) bytes. Options longer than 40 bytes are a
// programming error and panic.
func (h TCP) Encode(f TCPFields) {
	if len(f.Options) > TCPMaxOptions {
		panic("header: TCP options longer than 40 bytes")
	}
	hl := TCPHeaderLen(len(f.Options))
	_ = h[hl-1]
	binary.BigEndian.PutUint16(h[tcpSrc:], f.SrcPort)
	binary.BigEndian.PutUint16(h[tcpDst:], f.DstPort)
	binary.BigEndian.PutUint32(h[tcpSeq:], f.Seq)
	binary.BigEndian.PutUint32(h[tcpAck:], f.Ack)
	h[tcpOff] = uint8(hl/4) << 4
	h[tcpFlags] = uint8(f.Flags)
	binary.BigEndian.PutUint16(h[tcpWindow:], f.Window)
	h[tcpCsum], h[tcpCsum+1] = 0, 0
	binary.BigEndian.PutUint16(h[tcpUrg:], f.Urgent)
	n := copy(h[TCPMinSize:hl], f.Options)
	clear(h[TCPMinSize+n : hl])
}

// SACKBlock is one RFC 2018 block: [Start, End).
type SACKBlock struct{ Start, End uint32 }

// TCPOptions is the decoded option set of a segment.
type TCPOptions struct {
	MSS           uint16
	HasMSS        bool
	WScale        uint8 // clamped to 14 on parse (RFC 7323 §2.3)
	HasWScale     bool
	SACKPermitted bool
	HasTS         bool
	TSVal, TSEcr  uint32
	SACKBlocks    [TCPMaxSACKBlocks]SACKBlock
	NumSACK       int
}

// ParseTCPOptions decodes the option bytes b (the header from byte 20 to
// the data offset). It does not allocate.
//
// RFC 9293 §3.1: an option is a single octet (EOL, NOP) or kind, length
// (counting kind and length) and data; EOL ends the list. §3.2 (MUST-7):
// an implementation must handle an illegal option length without
// crashing. A length below 2 or past the end of the options, and a known
// option with the wrong length (MSS 4, window scale 3, SACK-permitted 2,
// timestamps 10, SACK 2+8n with 1 <= n <= 4), return ErrBadOption and the
// segment is dropped. Unknown kinds are skipped by their length. A
// repeated option overwrites the earlier one; SACK blocks past four are
// ignored.
func ParseTCPOptions(b []byte) (TCPOptions, error) {
	var o TCPOptions
	if len(b) > TCPMaxOptions {
		return o, ErrBadOption
	}
	for i := 0; i < len(b); {
		kind := b[i]
		switch kind {
		case TCPOptEOL:
			return o, nil
		case TCPOptNOP:
			i++
			continue
		}
		if i+1 >= len(b) {
			return o, ErrBadOption
		}
		l := int(b[i+1])
		if l < 2 || i+l > len(b) {
			return o, ErrBadOption
		}
		d := b[i+2 : i+l]
		switch kind {
		case TCPOptMSS:
			if l != 4 {
				return o, ErrBadOption
			}
			o.MSS, o.HasMSS = binary.BigEndian.Uint16(d), true
		case TCPOptWScale:
			if l != 3 {
				return o, ErrBadOption
			}
			// RFC 7323 §2.3: "If a Window Scale option is received with a
			// shift.cnt value larger than 14, the TCP SHOULD log the error
			// but MUST use 14 instead of the specified value."
			o.WScale, o.HasWScale = min(d[0], TCPMaxWScale), true
		case TCPOptSACKPerm:
			if l != 2 {
				return o, ErrBadOption
			}
			o.SACKPermitted = true
		case TCPOptTimestamp:
			if l != 10 {
				return o, ErrBadOption
			}
			o.HasTS = true
			o.TSVal = binary.BigEndian.Uint32(d)
			o.TSEcr = binary.BigEndian.Uint32(d[4:])
		case TCPOptSACK:
			if l < 10 || (l-2)%8 != 0 {
				return o, ErrBadOption
			}
			for ; len(d) >= 8 && o.NumSACK < TCPMaxSACKBlocks; d = d[8:] {
				o.SACKBlocks[o.NumSACK] = SACKBlock{
					Start: binary.BigEndian.Uint32(d),
					End:   binary.BigEndian.Uint32(d[4:]),
				}
				o.NumSACK++
			}
		}
		i += l
	}
	return o, nil
}

// TCPOptionsLen is the number of bytes EncodeTCPOptions writes for o.
func TCPOptionsLen(o *TCPOptions) int {
	n, _ := tcpOptionsLayout(o)
	return n
}

// tcpOptionsLayout returns the encoded length and the number of SACK
// blocks that fit in 40 bytes beside the other options.
func tcpOptionsLayout(o *TCPOptions) (n, sacks int) {
	if o.HasMSS {
		n += 4
	}
	if o.HasTS {
		n += 12
	} else if o.SACKPermitted {
		n += 4
	}
	if o.HasWScale {
		n += 4
	}
	sacks = min(max(o.NumSACK, 0), TCPMaxSACKBlocks)
	if sacks > 0 {
		sacks = min(sacks, (TCPMaxOptions-n-4)/8)
		if sacks > 0 {
			n += 4 + 8*sacks
		}
	}
	return n, max(sacks, 0)
}

// EncodeTCPOptions writes o into dst in the layout of RFC 7323 Appendix A
// and Linux tcp_options_write, each option NOP-aligned so the result is a
// multiple of 4: MSS; SACK-permitted + timestamps (or NOP, NOP,
// timestamps; or NOP, NOP, SACK-permitted); NOP + window scale; NOP, NOP,
// SACK blocks, as many as fit in 40 bytes (three beside timestamps, as
// RFC 2018 §3 notes). It returns the length written; dst must hold
// TCPOptionsLen(o) bytes (at most 40). It does not allocate.
func EncodeTCPOptions(dst []byte, o *TCPOptions) int {
	total, sacks := tcpOptionsLayout(o)
	if total == 0 {
		return 0
	}
	_ = dst[total-1]
	n := 0
	if o.HasMSS {
		dst[n], dst[n+1] = TCPOptMSS, 4
		binary.BigEndian.PutUint16(dst[n+2:], o.MSS)
		n += 4
	}
	switch {
	case o.HasTS:
		if o.SACKPermitted {
			dst[n], dst[n+1] = TCPOptSACKPerm, 2
		} else {
			dst[n], dst[n+1] = TCPOptNOP, TCPOptNOP
		}
		dst[n+2], dst[n+3] = TCPOptTimestamp, 10
		binary.BigEndian.PutUint32(dst[n+4:], o.TSVal)
		binary.BigEndian.PutUint32(dst[n+8:], o.TSEcr)
		n += 12
	case o.SACKPermitted:
		dst[n], dst[n+1], dst[n+2], dst[n+3] = TCPOptNOP, TCPOptNOP, TCPOptSACKPerm, 2
		n += 4
	}
	if o.HasWScale {
		dst[n], dst[n+1], dst[n+2], dst[n+3] = TCPOptNOP, TCPOptWScale, 3, o.WScale
		n += 4
	}
	if sacks > 0 {
		dst[n], dst[n+1], dst[n+2], dst[n+3] = TCPOptNOP, TCPOptNOP, TCPOptSACK, uint8(2+8*sacks)
		n += 4
		for i := 0; i < sacks; i++ {
			binary.BigEndian.PutUint32(dst[n:], o.SACKBlocks[i].Start)
			binary.BigEndian.PutUint32(dst[n+4:], o.SACKBlocks[i].End)
			n += 8
		}
	}
	return n
}
