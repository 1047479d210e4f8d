package header

import "syscall"

// ICMPError is an ICMP or ICMPv6 error message as the network layer hands
// it to the transport whose datagram it quotes (the err_handler of struct
// net_protocol and inet6_protocol): the message's type and code in its
// own family's numbering, and what the network layer says they mean to a
// socket. It is the one seam between ipv4 (and ipv6) and the transports
// for errors, so that TCP and UDP decide on the message itself, not on an
// errno several messages share.
//
// The meaning is the network layer's policy, carried here: Errno is
// icmp_err_convert's (icmpv6_err_convert's) errno and Hard its fatal flag
// (RFC 1122 §3.2.2.1, §4.1.3.3, §4.2.3.9: port and protocol unreachable,
// parameter problem, the administratively prohibited and "unknown" codes
// are hard; net and host unreachable, source route failed and time
// exceeded are soft). Fragmentation needed (Packet Too Big) is neither:
// it is path MTU news, Errno EMSGSIZE with the next-hop MTU in Info, and
// each transport decides what it does with it.
type ICMPError struct {
	// V6 says Type and Code are ICMPv6's (RFC 4443), not ICMPv4's (RFC 792).
	V6         bool
	Type, Code uint8
	// Errno is what a socket reports (sk_err).
	Errno syscall.Errno
	// Hard: a connected socket hears of it (UDP), a connection being
	// opened is aborted (TCP).
	Hard bool
	// Info is the rest of the header that matters: the next-hop MTU of
	// fragmentation needed / packet too big, the parameter-problem
	// pointer; 0 otherwise.
	Info uint32
}

// PortUnreachable reports ICMPv4 destination unreachable code 3 or ICMPv6
// destination unreachable code 4: nothing listens on the quoted port (RFC
// 1122 §4.1.3.1).
func (e ICMPError) PortUnreachable() bool {
	if e.V6 {
		return e.Type == ICMPv6DstUnreachable && e.Code == ICMPv6PortUnreachable
	}
	return e.Type == ICMPv4DstUnreachable && e.Code == ICMPv4PortUnreachable
}

// PathMTU reports ICMPv4 fragmentation needed (RFC 1191) or ICMPv6 packet
// too big (RFC 8201): Info is the next-hop MTU.
func (e ICMPError) PathMTU() bool {
	if e.V6 {
		return e.Type == ICMPv6PacketTooBig
	}
	return e.Type == ICMPv4DstUnreachable && e.Code == ICMPv4FragNeeded
}
