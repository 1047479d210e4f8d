package netstack

import (
	"context"
	"net/netip"

	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// TCP wiring (tcp_v4_init, tcpv6_init + inet_register_protosw for
// SOCK_STREAM): New creates the protocol with newTCP, registers it on the
// IPv4 and IPv6 protocol tables and in the socket switch.

var _ interface {
	Bind(netip.AddrPort) error
	Connect(netip.AddrPort) error
	LocalAddr() netip.AddrPort
	RemoteAddr() netip.AddrPort
	Close() error
} = (*tcp.Sock)(nil)

// WithTCPConfig sets the net.ipv4.tcp_* knobs (zero fields keep the
// defaults); the stack's clock and devices are filled in by New.
func WithTCPConfig(c tcp.Config) Option { return func(cf *config) { cf.tcp = c } }

// newTCP creates TCP over the stack's IPv4 and IPv6 layers; the output
// NIC's MTU and offloads come from the device list (for MSS and GSO),
// and IPv6 zones resolve to its NICs.
func (s *Stack) newTCP(c tcp.Config) *tcp.Proto {
	c.Clock, c.Zone = s.clk, s.zoneNIC
	c.Device = func(id int) (int, link.Caps, bool) {
		nic := s.devs.ByID(id)
		if nic == nil {
			return 0, 0, false
		}
		return nic.MTU(), nic.Endpoint().Caps(), true
	}
	return tcp.New(s.ip, s.ip6, c)
}

// TCP is the TCP protocol.
func (s *Stack) TCP() *tcp.Proto { return s.tcp }

// ListenTCP is net.ListenTCP on the stack: a listener on laddr (:: or an
// invalid address listens on every address of both families, 0.0.0.0 on
// every IPv4 address; port 0 picks one) with the default backlog.
func (s *Stack) ListenTCP(laddr netip.AddrPort) (*tcp.Listener, error) {
	return s.tcp.Listen(laddr, 0)
}

// DialTCP is net.Dialer.DialContext for "tcp" on the stack: from laddr
// when it is valid (chosen by routing otherwise) to raddr, bounded by ctx.
// raddr may be IPv4, IPv6 (a link-local one with its NIC as the zone) or
// IPv4-mapped (an IPv4 connection).
func (s *Stack) DialTCP(ctx context.Context, laddr, raddr netip.AddrPort) (*tcp.Conn, error) {
	return s.tcp.Dial(ctx, laddr, raddr)
}
