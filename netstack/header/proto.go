package header

import "strconv"

// ProtoName is the name iptables and conntrack give an IP protocol
// number (tcp, udp, icmp, icmpv6), else the number itself.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}
