package socket

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// ListenUDP is net.ListenUDP on the stack: a UDP socket from r bound to
// laddr (an invalid laddr binds the wildcard and an ephemeral port).
func ListenUDP(r *Registry, laddr netip.AddrPort) (*PacketConn, error) {
	s, err := newDatagram(r, header.ProtoUDP)
	if err != nil {
		return nil, opError("listen", "udp", "socket", laddr, netip.AddrPort{}, err)
	}
	if err := s.Bind(laddr); err != nil {
		s.Close()
		return nil, opError("listen", "udp", "bind", laddr, netip.AddrPort{}, err)
	}
	return &PacketConn{s: s, network: "udp"}, nil
}

// DialUDP is net.DialUDP on the stack: a UDP socket bound to laddr when it
// is valid (ephemeral otherwise) and connected to raddr.
func DialUDP(r *Registry, laddr, raddr netip.AddrPort) (*Conn, error) {
	s, err := newDatagram(r, header.ProtoUDP)
	if err != nil {
		return nil, opError("dial", "udp", "socket", laddr, raddr, err)
	}
	if laddr.IsValid() {
		if err := s.Bind(laddr); err != nil {
			s.Close()
			return nil, opError("dial", "udp", "bind", laddr, raddr, err)
		}
	}
	if err := s.Connect(raddr); err != nil {
		s.Close()
		return nil, opError("dial", "udp", "connect", laddr, raddr, err)
	}
	return &Conn{PacketConn{s: s, network: "udp", connected: true}}, nil
}

func newDatagram(r *Registry, proto uint8) (Datagram, error) {
	s, err := r.Create(AFInet, SockDgram, proto)
	if err != nil {
		return nil, err
	}
	d, ok := s.(Datagram)
	if !ok {
		s.Close()
		return nil, syscall.EPROTOTYPE
	}
	return d, nil
}

// PacketConn adapts a datagram socket to net.PacketConn, like
// *net.UDPConn from net.ListenUDP. The AddrPort methods allocate nothing.
type PacketConn struct {
	s         Datagram
	network   string
	connected bool
}

var _ net.PacketConn = (*PacketConn)(nil)

// NewPacketConn wraps s; network names it in errors ("udp").
func NewPacketConn(s Datagram, network string) *PacketConn {
	return &PacketConn{s: s, network: network, connected: s.RemoteAddr().IsValid()}
}

// Socket is the wrapped socket.
func (c *PacketConn) Socket() Datagram { return c.s }

// ReadFromUDPAddrPort receives one datagram and its source.
func (c *PacketConn) ReadFromUDPAddrPort(p []byte) (int, netip.AddrPort, error) {
	n, from, err := c.s.RecvFrom(p)
	if err != nil {
		return n, from, c.opError("read", "recvfrom", netip.AddrPort{}, err)
	}
	return n, from, nil
}

// ReadFrom implements net.PacketConn; the address is a *net.UDPAddr.
func (c *PacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, from, err := c.ReadFromUDPAddrPort(p)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(from), nil
}

// WriteToUDPAddrPort sends p to addr.
func (c *PacketConn) WriteToUDPAddrPort(p []byte, addr netip.AddrPort) (int, error) {
	if c.connected {
		return 0, c.opError("write", "sendto", addr, net.ErrWriteToConnected)
	}
	if !addr.IsValid() {
		return 0, c.opError("write", "sendto", addr, syscall.EINVAL)
	}
	n, err := c.s.SendTo(p, addr)
	if err != nil {
		return n, c.opError("write", "sendto", addr, err)
	}
	return n, nil
}

// WriteTo implements net.PacketConn; addr must be a *net.UDPAddr.
func (c *PacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	a, ok := addr.(*net.UDPAddr)
	if !ok || a == nil {
		oe := &net.OpError{Op: "write", Net: c.network, Source: c.LocalAddr(), Err: syscall.EINVAL}
		if addr != nil {
			oe.Addr = addr
		}
		return 0, oe
	}
	return c.WriteToUDPAddrPort(p, a.AddrPort())
}

// Close closes the socket; a second Close returns an error wrapping
// net.ErrClosed.
func (c *PacketConn) Close() error {
	return c.opError("close", "close", netip.AddrPort{}, c.s.Close())
}

// LocalAddr is the bound address as a *net.UDPAddr.
func (c *PacketConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(c.s.LocalAddr()) }

// SetDeadline sets both deadlines (on the stack's clock).
func (c *PacketConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.PacketConn.
func (c *PacketConn) SetReadDeadline(t time.Time) error {
	return c.opError("set", "setsockopt", netip.AddrPort{}, c.s.SetReadDeadline(t))
}

// SetWriteDeadline implements net.PacketConn.
func (c *PacketConn) SetWriteDeadline(t time.Time) error {
	return c.opError("set", "setsockopt", netip.AddrPort{}, c.s.SetWriteDeadline(t))
}

func (c *PacketConn) opError(op, sys string, raddr netip.AddrPort, err error) error {
	if err == nil {
		return nil
	}
	if !raddr.IsValid() && c.connected {
		raddr = c.s.RemoteAddr()
	}
	return opError(op, c.network, sys, c.s.LocalAddr(), raddr, err)
}

// opError wraps err as the net package does: errnos inside an
// *os.SyscallError, everything inside a *net.OpError.
func opError(op, network, sys string, laddr, raddr netip.AddrPort, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = os.NewSyscallError(sys, errno)
	}
	oe := &net.OpError{Op: op, Net: network, Err: err}
	if laddr.IsValid() {
		oe.Source = net.UDPAddrFromAddrPort(laddr)
	}
	if raddr.IsValid() {
		oe.Addr = net.UDPAddrFromAddrPort(raddr)
	}
	return oe
}

// Conn adapts a connected datagram socket to net.Conn, like *net.UDPConn
// from net.DialUDP.
type Conn struct {
	PacketConn
}

var _ net.Conn = (*Conn)(nil)

// NewConn wraps a connected socket.
func NewConn(s Datagram, network string) *Conn {
	return &Conn{PacketConn{s: s, network: network, connected: true}}
}

// Read receives one datagram from the peer.
func (c *Conn) Read(p []byte) (int, error) {
	n, _, err := c.s.RecvFrom(p)
	if err != nil {
		return n, c.opError("read", "read", netip.AddrPort{}, err)
	}
	return n, nil
}

// Write sends p as one datagram to the peer.
func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.s.SendTo(p, netip.AddrPort{})
	if err != nil {
		return n, c.opError("write", "write", netip.AddrPort{}, err)
	}
	return n, nil
}

// RemoteAddr is the peer as a *net.UDPAddr.
func (c *Conn) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(c.s.RemoteAddr()) }
