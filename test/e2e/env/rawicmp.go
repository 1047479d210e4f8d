package env

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// maxRawReads bounds the ICMP messages RawICMPExchange reads while it
// looks for the one it waits for.
const maxRawReads = 1000

// RawICMPExchange sends pkt, a whole IPv4 datagram built by the caller
// (IP_HDRINCL: the kernel fills in only a zero identification and, as
// always, the total length and the header checksum), from the calling
// thread's network namespace, and returns the first ICMP message (with its
// IPv4 header) a raw ICMP socket of that namespace receives for which
// match is true, within timeout. Run it inside a pod's namespace (ns.Do)
// to see exactly what the pod sends and what comes back to it.
func RawICMPExchange(pkt []byte, match func(ip header.IPv4, m header.ICMPv4) bool, timeout time.Duration) ([]byte, error) {
	h, err := header.CheckIPv4(pkt)
	if err != nil {
		return nil, fmt.Errorf("env: raw exchange: %w", err)
	}
	rx, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("env: raw ICMP socket: %w", err)
	}
	defer unix.Close(rx)
	tx, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("env: raw IP socket: %w", err)
	}
	defer unix.Close(tx)
	if err := unix.Sendto(tx, pkt, 0, &unix.SockaddrInet4{Addr: h.Dst().As4()}); err != nil {
		return nil, fmt.Errorf("env: send to %v: %w", h.Dst(), err)
	}
	deadline := time.Now().Add(timeout)
	b := make([]byte, 65536)
	for i := 0; i < maxRawReads; i++ {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, err
		}
		n, _, err := unix.Recvfrom(rx, b, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("env: receive ICMP: %w", err)
		}
		ip, err := header.CheckIPv4(b[:n])
		if err != nil {
			continue
		}
		m, err := header.CheckICMPv4(ip.Payload())
		if err != nil {
			continue
		}
		if match(ip, m) {
			return append([]byte(nil), b[:n]...), nil
		}
	}
	return nil, fmt.Errorf("env: no matching ICMP message for the datagram to %v within %v", h.Dst(), timeout)
}

// IPv4Datagram builds an IPv4 datagram of protocol proto carrying l4 (its
// transport header and data, checksum already set), with the given
// identification, TTL, DF flag and options (a multiple of 4 bytes), and
// the header checksum set.
func IPv4Datagram(src, dst netip.Addr, proto uint8, id uint16, ttl uint8, df bool, opts, l4 []byte) []byte {
	hl := header.IPv4HeaderLen(len(opts))
	b := make([]byte, hl+len(l4))
	header.IPv4(b).Encode(header.IPv4Fields{TotalLen: uint16(len(b)), ID: id, DF: df, TTL: ttl, Protocol: proto,
		Src: src, Dst: dst, Options: opts})
	copy(b[hl:], l4)
	return b
}
