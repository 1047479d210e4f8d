package env

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// UDPPacketConn is the part of *net.UDPConn and the stack's UDP
// PacketConn an echo server needs.
type UDPPacketConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// ServeUDPEcho sends every datagram back to its sender until a read
// fails (the socket was closed).
func ServeUDPEcho(c UDPPacketConn) {
	b := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(b)
		if err != nil {
			return
		}
		_, _ = c.WriteToUDPAddrPort(b[:n], from)
	}
}

// CheckEcho sends one datagram per size on a connected socket and checks
// each comes back intact within timeout.
func CheckEcho(c net.Conn, sizes []int, timeout time.Duration) (string, error) {
	var done []string
	got := make([]byte, 65536)
	for i, n := range sizes {
		msg := bytes.Repeat([]byte{byte('a' + i%26)}, n)
		if _, err := c.Write(msg); err != nil {
			return strings.Join(done, ", "), fmt.Errorf("%d-byte datagram: %w", n, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		m, err := c.Read(got)
		if err != nil {
			return strings.Join(done, ", "), fmt.Errorf("%d-byte datagram: %w", n, err)
		}
		if !bytes.Equal(got[:m], msg) {
			return strings.Join(done, ", "), fmt.Errorf("%d-byte datagram came back altered (%d bytes)", n, m)
		}
		done = append(done, fmt.Sprintf("%d B", n))
	}
	return "echoed intact: " + strings.Join(done, ", "), nil
}
