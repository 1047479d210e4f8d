package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// packetLine is a one-line summary of a captured frame, shaped like
// tcpdump -n's. It never panics on a malformed or truncated frame: what
// cannot be decoded is printed as such.
func packetLine(r pcapRecord) string {
	ts := r.t.Format("15:04:05.000000")
	b := r.data
	if len(b) < header.EthernetMinSize {
		return fmt.Sprintf("%s [truncated frame, %d bytes]", ts, r.length)
	}
	l3 := b[header.EthernetMinSize:]
	switch header.EtherType(binary.BigEndian.Uint16(b[12:14])) {
	case header.EtherTypeARP:
		return ts + " " + arpLine(l3)
	case header.EtherTypeIPv4:
		return ts + " " + ipLine(l3)
	default:
		return fmt.Sprintf("%s ethertype 0x%04x, %s > %s, length %d", ts, binary.BigEndian.Uint16(b[12:14]),
			header.MAC(b[6:12]), header.MAC(b[0:6]), r.length)
	}
}

func arpLine(b []byte) string {
	a, err := header.CheckARP(b)
	if err != nil {
		return "ARP, malformed"
	}
	switch a.Op() {
	case 1:
		return fmt.Sprintf("ARP, Request who-has %v tell %v, length %d", a.TargetIP(), a.SenderIP(), len(b))
	case 2:
		return fmt.Sprintf("ARP, Reply %v is-at %v, length %d", a.SenderIP(), a.SenderMAC(), len(b))
	}
	return fmt.Sprintf("ARP, op %d, length %d", a.Op(), len(b))
}

var tcpFlagLetters = []struct {
	bit    uint8
	letter string
}{{0x01, "F"}, {0x02, "S"}, {0x04, "R"}, {0x08, "P"}, {0x10, "."}, {0x20, "U"}, {0x40, "E"}, {0x80, "W"}}

func ipLine(b []byte) string {
	if len(b) < header.IPv4MinSize || b[0]>>4 != 4 {
		return "IP, malformed"
	}
	hl := int(b[0]&0xf) * 4
	if hl < header.IPv4MinSize || hl > len(b) {
		return "IP, bad header length"
	}
	src := netip.AddrFrom4([4]byte(b[12:16]))
	dst := netip.AddrFrom4([4]byte(b[16:20]))
	total := int(binary.BigEndian.Uint16(b[2:4]))
	proto := b[9]
	frag := binary.BigEndian.Uint16(b[6:8])
	l4 := b[hl:]
	l4len := total - hl // what the datagram carries, even when the capture was snapped
	if frag&0x1fff != 0 {
		return fmt.Sprintf("IP %v > %v: ip-proto-%d fragment offset %d, length %d", src, dst, proto, int(frag&0x1fff)*8, l4len)
	}
	switch proto {
	case header.ProtoTCP:
		if len(l4) < header.TCPMinSize {
			return fmt.Sprintf("IP %v > %v: tcp, truncated", src, dst)
		}
		h := header.TCP(l4)
		var fl strings.Builder
		for _, f := range tcpFlagLetters {
			if uint8(h.Flags())&f.bit != 0 {
				fl.WriteString(f.letter)
			}
		}
		s := fmt.Sprintf("IP %v.%d > %v.%d: Flags [%s], seq %d", src, h.SrcPort(), dst, h.DstPort(), fl.String(), h.Seq())
		if uint8(h.Flags())&0x10 != 0 {
			s += fmt.Sprintf(", ack %d", h.Ack())
		}
		return s + fmt.Sprintf(", win %d, length %d", h.Window(), max(l4len-h.DataOffset(), 0))
	case header.ProtoUDP:
		if len(l4) < header.UDPSize {
			return fmt.Sprintf("IP %v > %v: udp, truncated", src, dst)
		}
		return fmt.Sprintf("IP %v.%d > %v.%d: UDP, length %d", src, binary.BigEndian.Uint16(l4[0:2]), dst,
			binary.BigEndian.Uint16(l4[2:4]), max(l4len-header.UDPSize, 0))
	case header.ProtoICMP:
		if len(l4) < header.ICMPv4MinSize {
			return fmt.Sprintf("IP %v > %v: ICMP, truncated", src, dst)
		}
		h := header.ICMPv4(l4)
		switch h.Type() {
		case header.ICMPv4Echo:
			return fmt.Sprintf("IP %v > %v: ICMP echo request, id %d, seq %d, length %d", src, dst, h.ID(), h.Seq(), l4len)
		case header.ICMPv4EchoReply:
			return fmt.Sprintf("IP %v > %v: ICMP echo reply, id %d, seq %d, length %d", src, dst, h.ID(), h.Seq(), l4len)
		case header.ICMPv4DstUnreachable:
			return fmt.Sprintf("IP %v > %v: ICMP unreachable, code %d, length %d", src, dst, h.Code(), l4len)
		case header.ICMPv4TimeExceeded:
			return fmt.Sprintf("IP %v > %v: ICMP time exceeded, code %d, length %d", src, dst, h.Code(), l4len)
		}
		return fmt.Sprintf("IP %v > %v: ICMP type %d, code %d, length %d", src, dst, h.Type(), h.Code(), l4len)
	}
	return fmt.Sprintf("IP %v > %v: ip-proto-%d, length %d", src, dst, proto, l4len)
}
