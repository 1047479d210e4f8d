// Package header owns the wire formats of the stack (include/uapi/linux/if_ether.h,
// if_arp.h, ip.h, icmp.h, udp.h, tcp.h, ipv6.h, icmpv6.h, net/ndisc.h;
// net/core/utils.c and lib/checksum.c for checksums): checked views over
// []byte, a Fields struct per header that Encode writes, TCP and IPv4
// option parsing, IPv6 extension headers and their option TLVs, ICMPv6 and
// the Neighbor Discovery messages and options, the RFC 1071 Internet
// checksum with the RFC 1624 incremental update, and TCP sequence-number
// arithmetic (RFC 9293 §3.4).
//
// Not owned here: what a header means for the stack. Whether a TTL of 1 is
// forwarded, whether a checksum is verified (offload may make it
// unnecessary), which options a SYN carries: that is policy of the layer
// above (ipv4, tcp, udp, neigh, dev).
//
// # Checked views
//
// A view (Ethernet, ARP, IPv4, ICMPv4, UDP, TCP, IPv6, IPv6Options,
// IPv6Routing, IPv6Fragment, ICMPv6, the NDP messages) is a []byte. Its Check
// function validates every length the accessors rely on, so once CheckX
// returned a nil error no accessor of the returned view can panic, whatever
// the bytes are. A view built by hand (header.TCP(skb.Push(n))) is written
// with Encode and the setters; the caller sizes it. Check functions never
// allocate and return the package's sentinel errors (ErrTruncated,
// ErrBadVersion, ...), so callers can map them to drop reasons with
// errors.Is or ==.
//
// Each file carries the RFC diagram beside the offsets it reads.
package header

import "errors"

// Sentinel errors of the Check and Parse functions. They are returned as is
// (never wrapped) so that the receive path neither allocates nor formats.
var (
	// ErrTruncated: the buffer is shorter than the header (or than a length
	// the header itself announces, such as IHL or the TCP data offset).
	ErrTruncated = errors.New("header: truncated")
	// ErrBadVersion: the IP version field is not 4 (6 for CheckIPv6).
	ErrBadVersion = errors.New("header: bad IP version")
	// ErrBadHeaderLen: IPv4 IHL < 5 or TCP data offset < 5.
	ErrBadHeaderLen = errors.New("header: bad header length")
	// ErrBadTotalLen: IPv4 total length shorter than the header or longer
	// than the buffer; IPv6 payload length past the buffer.
	ErrBadTotalLen = errors.New("header: bad total length")
	// ErrBadLength: UDP length field shorter than 8 or longer than the buffer.
	ErrBadLength = errors.New("header: bad length field")
	// ErrBadOption: an IPv4, IPv6, TCP or NDP option with a bad length,
	// or IPv4/TCP options longer than 40 bytes.
	ErrBadOption = errors.New("header: malformed option")
	// ErrVLANTagged: an 802.1Q/802.1ad tagged frame; the veth never
	// carries tags, so they are rejected rather than parsed.
	ErrVLANTagged = errors.New("header: VLAN-tagged frame")
	// ErrBadARPFormat: an ARP packet that is not Ethernet/IPv4 (htype 1,
	// ptype 0x0800, hlen 6, plen 4).
	ErrBadARPFormat = errors.New("header: ARP not Ethernet/IPv4")
	// ErrTooManyExtHeaders: an IPv6 header chain longer than
	// MaxIPv6ExtHeaders extension headers.
	ErrTooManyExtHeaders = errors.New("header: too many IPv6 extension headers")
)
