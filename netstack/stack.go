package netstack

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/socket"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// Stack is one network namespace's worth of stack (struct net): its
// devices, neighbours, routes, hooks, protocols and sockets.
type Stack struct {
	clk     clock.Clock
	ownClk  *clock.Real // started by New, stopped by Close
	devs    *dev.Devices
	neigh   *neigh.Table
	fib     *route.Table
	hooks   *netfilter.Hooks
	hooks6  *netfilter.Hooks // IPv6's own hooks (nf_hooks_ipv6)
	ip      *ipv4.Layer
	ip6     *ipv6.Layer
	udp     *udp.Proto
	tcp     *tcp.Proto
	nf      *netfilter.Netfilter // nil until EnableNetfilter
	sockets *socket.Registry
	ping    pinger

	// mu serialises configuration (addresses, NICs, Close); the packet
	// paths never take it. Lock order: mu > every lower layer's locks.
	mu       sync.Mutex
	closed   bool
	nextName int
}

var _ socket.Datagram = (*udp.Socket)(nil)

// ErrNoNIC is returned for a NIC ID the stack does not have (ENODEV).
var ErrNoNIC = fmt.Errorf("netstack: no such NIC: %w", syscall.ENODEV)

// ErrClosed is returned by configuration calls after Close.
var ErrClosed = errors.New("netstack: stack closed")

// New builds a stack and wires its layers bottom-up, as inet_init and
// inet6_init do: the ARP, IPv4 and IPv6 packet types on the device list
// (dev_add_pack), UDP and the ICMP echo client on the IPv4 protocol table
// (inet_add_protocol), the ICMPv6 echo client on the IPv6 one, and UDP in
// the socket switch (inet_register_protosw). It has no NICs yet. IPv6 is
// always on; a NIC speaks it once it has an IPv6 address (AddAddress).
func New(opts ...Option) *Stack {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	s := &Stack{clk: cfg.clk, hooks: cfg.hooks}
	if s.clk == nil {
		s.ownClk = clock.NewReal()
		s.clk = s.ownClk
	}
	if s.hooks == nil {
		s.hooks = &netfilter.Hooks{}
	}
	s.hooks6 = cfg.hooks6
	if s.hooks6 == nil {
		s.hooks6 = &netfilter.Hooks{}
	}
	s.devs = dev.NewDevices(s.clk)
	s.neigh = neigh.New(s.clk, s.devs, cfg.neigh)
	s.fib = route.NewTable()

	ipc := cfg.ip
	ipc.Clock, ipc.Devices, ipc.Neigh, ipc.FIB, ipc.Hooks = s.clk, s.devs, s.neigh, s.fib, s.hooks
	s.ip = ipv4.New(ipc)
	s.ip6 = s.newIPv6(cfg.ip6)

	uc := cfg.udp
	uc.Clock, uc.Zone, uc.ZoneName = s.clk, s.zoneNIC, s.zoneName
	s.udp = udp.New(s.ip, s.ip6, uc)
	s.ping.init(s)
	s.tcp = s.newTCP(cfg.tcp)

	// inet_init: dev_add_pack(&arp_packet_type) via arp_init, then
	// ip_packet_type; inet_add_protocol for each transport.
	s.devs.AddPacketType(header.EtherTypeARP, s.neigh.Rcv)
	s.devs.AddPacketType(header.EtherTypeIPv4, s.ip.Rcv)
	s.devs.AddPacketType(header.EtherTypeIPv6, s.ip6.Rcv) // inet6_init: ipv6_packet_init
	s.ip.AddProtocol(header.ProtoUDP, ipv4.Protocol{Rcv: s.udp.V4Rcv, Err: s.udp.V4Err})
	s.ip.AddProtocol(header.ProtoTCP, ipv4.Protocol{Rcv: s.tcp.V4Rcv, Err: s.tcp.V4Err})
	s.ip6.AddProtocol(header.ProtoUDP, ipv6.Protocol{Rcv: s.udp.V6Rcv, Err: s.udp.V6Err})
	s.ip6.AddProtocol(header.ProtoTCP, ipv6.Protocol{Rcv: s.tcp.V6Rcv, Err: s.tcp.V6Err})
	s.ip.AddProtocol(header.ProtoICMP, ipv4.Protocol{Rcv: s.ping.rcv, Err: s.ping.err})
	s.ip6.AddProtocol(header.ProtoICMPv6, ipv6.Protocol{Rcv: s.ping.rcv6, Err: s.ping.err6})

	s.sockets = socket.NewRegistry()
	// Registration of a fresh registry cannot fail.
	_ = s.sockets.Register(socket.Protosw{
		Family: socket.AFInet, Type: socket.SockDgram, Protocol: header.ProtoUDP,
		Create: func() (socket.Socket, error) { return s.udp.NewSocket(), nil },
	})
	_ = s.sockets.Register(socket.Protosw{Family: socket.AFInet, Type: socket.SockStream, Protocol: header.ProtoTCP,
		Create: func() (socket.Socket, error) { return s.tcp.NewSock(), nil }})
	return s
}

// Clock is the stack's clock.
func (s *Stack) Clock() clock.Clock { return s.clk }

// Devices is the device list.
func (s *Stack) Devices() *dev.Devices { return s.devs }

// Neigh is the neighbour table.
func (s *Stack) Neigh() *neigh.Table { return s.neigh }

// FIB is the routing table.
func (s *Stack) FIB() *route.Table { return s.fib }

// IPv4 is the IPv4 layer.
func (s *Stack) IPv4() *ipv4.Layer { return s.ip }

// UDP is the UDP protocol.
func (s *Stack) UDP() *udp.Proto { return s.udp }

// Sockets is the protocol switch; TCP registers itself here.
func (s *Stack) Sockets() *socket.Registry { return s.sockets }

// Hooks are the netfilter hooks; rulesets register on them.
func (s *Stack) Hooks() *netfilter.Hooks { return s.hooks }

// AddNIC attaches ep as a new NIC and brings it up, which starts its
// receive goroutine. The stack owns ep from now on: RemoveNIC and Close
// close it.
func (s *Stack) AddNIC(ep link.Endpoint, cfg NICConfig) (*dev.NIC, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if cfg.Name == "" {
		for {
			s.nextName++
			cfg.Name = fmt.Sprintf("eth%d", s.nextName-1)
			if s.devs.ByName(cfg.Name) == nil {
				break
			}
		}
	}
	if cfg.MAC == (header.MAC{}) {
		cfg.MAC = randomMAC()
	}
	nic, err := s.devs.Add(ep, dev.Config{Name: cfg.Name, MAC: cfg.MAC, MTU: cfg.MTU, TxQueueLen: cfg.TxQueueLen, RxBatch: cfg.RxBatch})
	if err != nil {
		return nil, err
	}
	nic.Up()
	return nic, nil
}

// randomMAC is eth_random_addr: random, unicast, locally administered.
func randomMAC() header.MAC {
	var m header.MAC
	_, _ = rand.Read(m[:])
	m[0] = m[0]&^0x01 | 0x02
	return m
}

// RemoveNIC takes a NIC down and away: its routes, local addresses and
// neighbours go, its endpoint is closed and its goroutine has exited
// when RemoveNIC returns (unregister_netdevice). Not callable from a
// packet handler. It is DetachNIC with its release run at once.
func (s *Stack) RemoveNIC(id int) error {
	release, err := s.DetachNIC(id)
	if err != nil {
		return err
	}
	return release()
}

// DetachNIC is RemoveNIC in two steps: the NIC leaves the stack now (its
// routes, local addresses and neighbours go, it is down and no lookup
// finds it), and release, which the caller must run once, closes its
// endpoint and waits for its goroutines. release may wait for the kernel
// (an AF_PACKET close waits for an RCU grace period): a caller holding its
// own lock across the first step can run it after letting go, so that
// removing NICs does not serialise on the kernel. Not callable from a
// packet handler.
func (s *Stack) DetachNIC(id int) (release func() error, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.devs.ByID(id) == nil {
		return nil, ErrNoNIC
	}
	s.fib.FlushNIC(id)
	s.neigh.Flush(id)
	n, err := s.devs.Unlink(id)
	if err != nil {
		return nil, err
	}
	return n.Release, nil
}

// AddAddress assigns p to a NIC (`ip addr add`, inet_insert_ifa +
// fib_add_ifaddr, or addrconf's for IPv6): the address goes into the
// local table, the prefix becomes a connected route with the address as
// its preferred source, and the NIC announces it when up: a gratuitous
// ARP (RFC 5227 §3), or for IPv6 an unsolicited Neighbor Advertisement.
// A NIC's first IPv6 address brings its link-local address with it (see
// addAddress6). Refused with EAFNOSUPPORT: IPv4-mapped, multicast and
// unspecified addresses.
func (s *Stack) AddAddress(nicID int, p netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	nic := s.devs.ByID(nicID)
	if nic == nil {
		return ErrNoNIC
	}
	if p.IsValid() && p.Addr().Is6() {
		return s.addAddress6Locked(nic, p)
	}
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("netstack: %v: %w", p, syscall.EAFNOSUPPORT)
	}
	s.fib.AddLocal(p.Addr(), nicID)
	if p.Bits() < 32 {
		err := s.fib.Add(route.Route{Dst: p.Masked(), NIC: nicID, Src: p.Addr(), Type: route.Unicast})
		// A second address in the same prefix shares the route.
		if err != nil && !errors.Is(err, route.ErrExists) {
			s.fib.RemoveLocalFrom(p.Addr(), nicID)
			return err
		}
	}
	if err := nic.AddAddress(p); err != nil {
		s.removeRoutesLocked(nic, p)
		return err
	}
	return nil
}

// RemoveAddress removes an address from a NIC (`ip addr del`): its local
// entry, and its connected route unless another address of the NIC is in
// the same prefix.
func (s *Stack) RemoveAddress(nicID int, p netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	nic := s.devs.ByID(nicID)
	if nic == nil {
		return ErrNoNIC
	}
	if err := nic.RemoveAddress(p); err != nil {
		return err
	}
	s.removeRoutesLocked(nic, p)
	return nil
}

func (s *Stack) removeRoutesLocked(nic *dev.NIC, p netip.Prefix) {
	// Only this NIC's claim: the gateway address lives on every pod link.
	s.fib.RemoveLocalFrom(p.Addr(), nic.ID())
	if p.Bits() >= p.Addr().BitLen() {
		return
	}
	for _, o := range nic.Addresses() {
		if o.Addr() != p.Addr() && o.Masked() == p.Masked() {
			return
		}
	}
	_ = s.fib.Remove(p.Masked(), nic.ID())
}

// AddRoute adds a route to the main table (`ip route add`).
func (s *Stack) AddRoute(r route.Route) error { return s.fib.Add(r) }

// RemoveRoute removes the route to dst through nic (`ip route del`).
func (s *Stack) RemoveRoute(dst netip.Prefix, nicID int) error { return s.fib.Remove(dst, nicID) }

// AddStaticNeighbor adds a permanent neighbour (`ip neigh replace ...
// nud permanent`).
func (s *Stack) AddStaticNeighbor(nicID int, addr netip.Addr, mac header.MAC) error {
	return s.neigh.AddStatic(nicID, addr, mac)
}

// SetProxyARP sets a NIC's proxy ARP and proxy NDP policy: ARP requests
// and Neighbor Solicitations for a target answer accepts are replied to
// with the NIC's MAC (for IPv6: non-link-local targets on a NIC with an
// IPv6 address, never a DAD probe; see package neigh); nil turns it off.
func (s *Stack) SetProxyARP(nicID int, answer func(target netip.Addr) bool) {
	s.neigh.SetProxy(nicID, answer)
}

// ProxyARPRouted is Linux's proxy_arp=1 policy for nicID: answer for a
// target (of either family) that is routed through a different NIC
// (arp_fwd_proxy).
func (s *Stack) ProxyARPRouted(nicID int) func(target netip.Addr) bool {
	return func(target netip.Addr) bool {
		res, ok := s.fib.Lookup(target)
		return ok && res.Type == route.Unicast && res.NIC != nicID
	}
}

// SetForwarding turns IPv4 forwarding on or off (net.ipv4.ip_forward).
func (s *Stack) SetForwarding(on bool) { s.ip.SetForwarding(on) }

// SetRPFilter sets a NIC's reverse-path filter, for both families:
// strict (RFC 3704 §2.2) or off.
func (s *Stack) SetRPFilter(nicID int, strict bool) {
	s.ip.SetRPFilter(nicID, strict)
	s.ip6.SetRPFilter(nicID, strict)
}

// ListenUDP opens a UDP socket bound to laddr (an invalid laddr binds the
// wildcard and an ephemeral port; :: and an invalid laddr take both
// families, 0.0.0.0 only IPv4).
func (s *Stack) ListenUDP(laddr netip.AddrPort) (*socket.PacketConn, error) {
	return socket.ListenUDP(s.sockets, laddr)
}

// DialUDP opens a UDP socket connected to raddr, bound to laddr when it
// is valid.
func (s *Stack) DialUDP(laddr, raddr netip.AddrPort) (*socket.Conn, error) {
	return socket.DialUDP(s.sockets, laddr, raddr)
}

// Close removes every NIC (closing its endpoint and waiting for its
// goroutine) and stops the clock if New started it. Sockets stay usable
// as objects but nothing reaches them any more. Close is idempotent.
func (s *Stack) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, nic := range s.devs.List() {
		s.fib.FlushNIC(nic.ID())
		s.neigh.Flush(nic.ID())
		if err := s.devs.Remove(nic.ID()); err != nil {
			errs = append(errs, err)
		}
	}
	s.ping.close()
	if s.ownClk != nil {
		s.ownClk.Close()
	}
	return errors.Join(errs...)
}
