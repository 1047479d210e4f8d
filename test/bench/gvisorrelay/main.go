// Command gvisorrelay is the gVisor netstack peer of `make bench`: a
// userspace relay built the way runsc's netstack and gvisor-tap-vsock build
// theirs, so that proxy mode can be measured beside it. It is benchmark-only:
// its own Go module (never imported by the product, whose go.mod does not
// change for it), built by the harness with `go build` (GOFLAGS=-mod=mod).
//
// What it does:
//   - Link: an AF_PACKET socket bound to -link, the stack end of the pod's
//     veth, which the harness keeps in a netns of its own (-netns) whose
//     kernel has no address, so only this program answers the pod. As
//     runsc's sandbox/network.go createSocket: protocol 0 then bind with
//     ETH_P_ALL, PACKET_VNET_HDR when the link has GSO on (ethtool
//     ETHTOOL_GGSO), GSO up to the link's gso_max_size, 4 MiB socket
//     buffers (SO_RCVBUFFORCE/SO_SNDBUFFORCE); gVisor's software GSO when the
//     host's is off. As runsc's boot/network.go: fdbased with recvmmsg
//     dispatch, RX checksum offload on, TX off, a FIFO qdisc of GOMAXPROCS
//     queues of 1000 packets.
//   - Stack: IPv4, ARP, TCP, UDP, ICMPv4; SACK and receive-buffer
//     auto-tuning on (runsc's loader.go); the NIC holds -addr (the pod's
//     gateway, so it answers the pod's ARP) and is promiscuous and spoofing,
//     so it accepts a flow to any destination and answers from it
//     (gvisor-tap-vsock, tun2socks).
//   - Flows: tcp.Forwarder and udp.Forwarder take every new flow. TCP is
//     upstream first, as gvisor-tap-vsock's forwarder: net.Dial to the
//     original destination from this process's netns (the harness runs it
//     in the test host netns), then CreateEndpoint (SYN,ACK) on success or
//     an RST on failure; then io.Copy both ways (half-close kept: EOF on one
//     side is CloseWrite on the other). UDP: a connected host socket per
//     flow, copied both ways until idle for -udp-idle.
//
// Protocol to the harness: one line "ready mac=<mac> gso=<bytes> gvisor-gso=<bool>"
// on stdout once the link is up; on SIGUSR1 a runtime.GC and one line
// "memstats heap_inuse=<B> heap_alloc=<B> stack_inuse=<B> sys=<B> goroutines=<n> tcp_flows=<n> udp_flows=<n>";
// SIGTERM or SIGINT exits. Errors go to stderr and exit 1.
//
// Limits: connection attempts being dialled at once, -max-in-flight (the
// forwarder drops SYNs past it; the pod retransmits); relayed TCP flows,
// -max-tcp-flows (past it the pod gets an RST); UDP flows, -max-udp-flows
// (past it the datagram is dropped). Each relayed TCP flow holds two
// goroutines and io.Copy's buffers, as gvisor-tap-vsock's does.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

type config struct {
	netns, link    string
	addr           netip.Prefix
	gso, swGSO     bool
	qdisc          string
	connectTimeout time.Duration
	udpIdle        time.Duration
	maxInFlight    int
	maxTCPFlows    int64
	maxUDPFlows    int64
}

// relay counts the flows it holds (bounded by the config).
type relay struct {
	cfg      config
	tcpFlows atomic.Int64
	udpFlows atomic.Int64
}

func main() {
	var c config
	var addr string
	flag.StringVar(&c.netns, "netns", "", "path of the netns holding -link (e.g. /var/run/netns/NAME); empty: this process's")
	flag.StringVar(&c.link, "link", "", "the stack end of the pod's veth")
	flag.StringVar(&addr, "addr", "", "the stack's address on the link with its prefix: the pod's gateway, e.g. 10.252.1.1/24")
	flag.BoolVar(&c.gso, "gso", true, "host GSO (PACKET_VNET_HDR) when the link has it, as runsc --gso")
	flag.BoolVar(&c.swGSO, "software-gso", true, "gVisor GSO when host GSO is off, as runsc --software-gso")
	flag.StringVar(&c.qdisc, "qdisc", "fifo", "queueing discipline: fifo (runsc's default) or none")
	flag.DurationVar(&c.connectTimeout, "connect-timeout", 10*time.Second, "bound of one upstream TCP connect")
	flag.DurationVar(&c.udpIdle, "udp-idle", 60*time.Second, "a UDP flow with no datagram either way for this long is closed")
	flag.IntVar(&c.maxInFlight, "max-in-flight", 1024, "TCP connection attempts being dialled at once (tcp.NewForwarder's maxInFlight)")
	flag.Int64Var(&c.maxTCPFlows, "max-tcp-flows", 65536, "relayed TCP flows at once; past it a new flow gets an RST")
	flag.Int64Var(&c.maxUDPFlows, "max-udp-flows", 4096, "UDP flows at once; past it a new flow's datagrams are dropped")
	flag.Parse()
	p, err := netip.ParsePrefix(addr)
	if c.link == "" || err != nil || !p.Addr().Is4() || (c.qdisc != "fifo" && c.qdisc != "none") ||
		c.maxInFlight < 1 || c.maxTCPFlows < 1 || c.maxUDPFlows < 1 || c.connectTimeout <= 0 || c.udpIdle <= 0 {
		fmt.Fprintln(os.Stderr, "gvisorrelay: need -link, -addr as an IPv4 prefix, -qdisc fifo|none and positive limits")
		flag.Usage()
		os.Exit(2)
	}
	c.addr = p
	r := &relay{cfg: c}
	if err := r.run(); err != nil {
		fmt.Fprintln(os.Stderr, "gvisorrelay:", err)
		os.Exit(1)
	}
}

func (r *relay) run() error {
	l, err := openLink(r.cfg.netns, r.cfg.link, r.cfg.gso)
	if err != nil {
		return err
	}
	opts := &fdbased.Options{
		FDs:                []int{l.fd},
		MTU:                uint32(l.mtu),
		EthernetHeader:     true,
		Address:            tcpip.LinkAddress(l.mac),
		PacketDispatchMode: fdbased.RecvMMsg,
		GSOMaxSize:         l.gsoMaxSize,
		TXChecksumOffload:  false,
		RXChecksumOffload:  true,
	}
	if opts.GSOMaxSize == 0 && r.cfg.swGSO {
		opts.GSOMaxSize = stack.GVisorGSOMaxSize
		opts.GVisorGSOEnabled = true
	}
	ep, err := fdbased.New(opts)
	if err != nil {
		return fmt.Errorf("fdbased: %w", err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	sack := tcpip.TCPSACKEnabled(true)
	if e := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); e != nil {
		return fmt.Errorf("SACK: %v", e)
	}
	mod := tcpip.TCPModerateReceiveBufferOption(true)
	if e := s.SetTransportProtocolOption(tcp.ProtocolNumber, &mod); e != nil {
		return fmt.Errorf("receive buffer auto-tuning: %v", e)
	}
	nicOpts := stack.NICOptions{Name: r.cfg.link}
	if r.cfg.qdisc == "fifo" {
		nicOpts.QDisc = fifo.New(ep, runtime.GOMAXPROCS(0), 1000)
	}
	const nic = 1
	if e := s.CreateNICWithOptions(nic, ep, nicOpts); e != nil {
		return fmt.Errorf("create NIC: %v", e)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(r.cfg.addr.Addr().As4()).WithPrefix(),
	}
	pa.AddressWithPrefix.PrefixLen = r.cfg.addr.Bits()
	if e := s.AddProtocolAddress(nic, pa, stack.AddressProperties{}); e != nil {
		return fmt.Errorf("address %v: %v", r.cfg.addr, e)
	}
	if e := s.SetPromiscuousMode(nic, true); e != nil {
		return fmt.Errorf("promiscuous: %v", e)
	}
	if e := s.SetSpoofing(nic, true); e != nil {
		return fmt.Errorf("spoofing: %v", e)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nic}})

	tf := tcp.NewForwarder(s, 0, r.cfg.maxInFlight, r.tcpFlow)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(s, r.udpFlow)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)

	fmt.Printf("ready mac=%s gso=%d gvisor-gso=%t\n", l.mac, opts.GSOMaxSize, opts.GVisorGSOEnabled)
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	for v := range sig {
		if v != syscall.SIGUSR1 {
			return nil
		}
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Printf("memstats heap_inuse=%d heap_alloc=%d stack_inuse=%d sys=%d goroutines=%d tcp_flows=%d udp_flows=%d\n",
			m.HeapInuse, m.HeapAlloc, m.StackInuse, m.Sys, runtime.NumGoroutine(), r.tcpFlows.Load(), r.udpFlows.Load())
	}
	return nil
}

func toNetip(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip, port)
}

// tcpFlow is the forwarder's handler (run on a goroutine of its own per
// SYN): upstream first, then relay until both directions end.
func (r *relay) tcpFlow(req *tcp.ForwarderRequest) {
	id := req.ID()
	if r.tcpFlows.Add(1) > r.cfg.maxTCPFlows {
		r.tcpFlows.Add(-1)
		req.Complete(true)
		return
	}
	defer r.tcpFlows.Add(-1)
	d := net.Dialer{Timeout: r.cfg.connectTimeout}
	up, err := d.Dial("tcp", toNetip(id.LocalAddress, id.LocalPort).String())
	if err != nil {
		req.Complete(true) // RST
		return
	}
	var wq waiter.Queue
	ep, e := req.CreateEndpoint(&wq)
	if e != nil {
		req.Complete(true)
		up.Close()
		return
	}
	req.Complete(false)
	pod := gonet.NewTCPConn(&wq, ep)
	copyBoth(pod, up.(*net.TCPConn))
}

// halfCloser is a stream whose write side closes on its own (a FIN).
type halfCloser interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// copyBoth copies a→b and b→a. EOF on one side becomes CloseWrite on the
// other and the other direction goes on; an error on either closes both.
// It returns when both directions have ended, with both closed.
func copyBoth(a, b halfCloser) {
	done := make(chan error, 1)
	one := func(dst, src halfCloser) error {
		_, err := io.Copy(dst, src)
		if err == nil {
			err = dst.CloseWrite()
		}
		if err != nil {
			a.Close()
			b.Close()
		}
		return err
	}
	go func() { done <- one(b, a) }()
	one(a, b)
	<-done
	a.Close()
	b.Close()
}

// udpFlow is the UDP forwarder's handler: a connected host socket for the
// flow and a copy each way until it is idle for cfg.udpIdle.
func (r *relay) udpFlow(req *udp.ForwarderRequest) bool {
	if r.udpFlows.Add(1) > r.cfg.maxUDPFlows {
		r.udpFlows.Add(-1)
		return true // dropped: handled, no port unreachable
	}
	id := req.ID()
	up, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(toNetip(id.LocalAddress, id.LocalPort)))
	if err != nil {
		r.udpFlows.Add(-1)
		return true
	}
	var wq waiter.Queue
	ep, e := req.CreateEndpoint(&wq)
	if e != nil {
		r.udpFlows.Add(-1)
		up.Close()
		return true
	}
	pod := gonet.NewUDPConn(&wq, ep)
	go func() {
		defer r.udpFlows.Add(-1)
		done := make(chan struct{}, 1)
		var last atomic.Int64
		last.Store(time.Now().UnixNano())
		copyIdle := func(dst, src net.Conn) {
			defer func() { done <- struct{}{} }()
			buf := make([]byte, 65535)
			for {
				src.SetReadDeadline(time.Now().Add(r.cfg.udpIdle))
				n, err := src.Read(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < r.cfg.udpIdle {
						continue // the other direction was busy
					}
					return
				}
				last.Store(time.Now().UnixNano())
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
		go copyIdle(up, pod)
		copyIdle(pod, up)
		pod.Close()
		up.Close()
		<-done
	}()
	return true
}
