package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/socket"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// Defaults for Config fields left zero, and the engine's fixed bounds.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultMaxFlowsPerPod = 4096
	DefaultMaxUDPFlows    = 16384
	DefaultResolvConf     = "/etc/resolv.conf"

	// maxPendingTCP bounds the intercepted SYNs not yet taken by Next.
	maxPendingTCP = 4096
	// relayBufSize is the buffer of one direction of a TCP relay.
	relayBufSize = 64 << 10
	// maxDatagram is the largest UDP payload or ICMP message relayed.
	maxDatagram = 65535
)

// Config configures New.
type Config struct {
	// Stack is the stack whose diverted flows the engine relays. It must
	// have netfilter enabled and a divert hook for anything to arrive.
	Stack *netstack.Stack
	// ConnectTimeout bounds an upstream TCP connect (and the pod's
	// handshake after it, and a port mapping's dial into the pod);
	// default 10 s.
	ConnectTimeout time.Duration
	// UDPIdleTimeout closes a UDP or echo flow without traffic either
	// way for that long; default 60 s.
	UDPIdleTimeout time.Duration
	// MaxFlowsPerPod bounds the TCP, UDP and ICMP flows of one pod
	// address; default 4096.
	MaxFlowsPerPod int
	// MaxUDPFlows bounds the UDP flows of the whole node; default 16384.
	MaxUDPFlows int
	// KeepAliveIdle, KeepAliveInterval and KeepAliveCount are the TCP
	// keepalive of both sockets of every relay (keepalive.go): probes
	// after Idle without traffic, every Interval, the relay closed after
	// Count unanswered. Zero values are the kernel's defaults (2 h, 75 s,
	// 9); a negative Idle turns keepalive off.
	KeepAliveIdle     time.Duration
	KeepAliveInterval time.Duration
	KeepAliveCount    int
	// ResolvConf is the resolver configuration the DNS relay reads;
	// default /etc/resolv.conf. It is re-read when its mtime changes.
	ResolvConf string
	// Logger receives debug and warning logs; nil discards them.
	Logger *slog.Logger
	// Dialer opens host connections ("tcp" and "udp" with a host:port
	// address); nil = a net.Dialer, and intercepted TCP flows connect
	// without a goroutine (tcpSYN); a Dialer is used for those too.
	// Tests inject one.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

	// udpQuiet and udpStream, for tests only, replace udpEvictQuiet
	// (udp.go) and conntrack.UDPStreamAfter.
	udpQuiet, udpStream time.Duration

	// mapDst, for tests only, makes intercepted TCP flows connect
	// without a goroutine (tcpSYN) even with a Dialer, to the
	// destination it returns (the rig's outside addresses on loopback).
	mapDst func(netip.AddrPort) netip.AddrPort
}

// PortMapping is one CNI portMappings entry.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"` // "tcp" | "udp"; "" = tcp
	HostIP        string `json:"hostIP,omitempty"`
}

// Pod is one proxy-mode pod.
type Pod struct {
	ID      string
	Addr    netip.Addr // the pod's address: its flows are counted under it
	Gateway netip.Addr // shown to the pod for loopback port-mapping clients
	// Addr6 and Gateway6 are a dual-stack pod's IPv6 address and gateway
	// (invalid for an IPv4-only pod): its IPv6 flows count under Addr
	// with the others (one MaxFlowsPerPod for both families), and its
	// port mappings on IPv6 host addresses reach it at Addr6.
	Addr6, Gateway6 netip.Addr
	PortMappings    []PortMapping
}

// Stats are the engine's counters (JSON-friendly).
type Stats struct {
	ActiveTCP  int `json:"activeTCP"`  // relays copying (outbound, port-mapping, DNS over TCP)
	ActiveUDP  int `json:"activeUDP"`  // UDP flows (outbound and port-mapping)
	ActiveEcho int `json:"activeEcho"` // ping sockets
	PendingTCP int `json:"pendingTCP"` // flows whose upstream connect or pod handshake is in progress

	TCPAccepted         uint64 `json:"tcpAccepted"`         // upstream up, pod's SYN accepted
	TCPRefused          uint64 `json:"tcpRefused"`          // upstream refused: RST to the pod
	TCPTimeouts         uint64 `json:"tcpTimeouts"`         // upstream connect timed out: RST to the pod
	TCPUnreachable      uint64 `json:"tcpUnreachable"`      // no route or other dial error: RST to the pod
	TCPNoResources      uint64 `json:"tcpNoResources"`      // no host socket: the daemon out of file descriptors or kernel memory (noResources): RST to the pod
	FlowLimitDrops      uint64 `json:"flowLimitDrops"`      // flows refused by MaxFlowsPerPod or MaxUDPFlows
	UDPFlowsOpened      uint64 `json:"udpFlowsOpened"`      // host sockets (or port-mapping flows) opened
	UDPPortUnreachables uint64 `json:"udpPortUnreachables"` // port unreachables for a relayed datagram passed to its pod
	UDPICMPErrors       uint64 `json:"udpICMPErrors"`       // ICMP errors passed to a pod about its datagram (port unreachables included)
	EchoRelayed         uint64 `json:"echoRelayed"`         // echo requests sent to the host (ping or raw socket)
	EchoRawRelayed      uint64 `json:"echoRawRelayed"`      // of those, through the raw ICMP socket (ping sockets refused)
	EchoDenied          uint64 `json:"echoDenied"`          // both ping and raw ICMP sockets refused
	EchoICMPErrors      uint64 `json:"echoICMPErrors"`      // ICMP errors about a pod's echo request passed to it
	EchoDropped         uint64 `json:"echoDropped"`         // oversized, flow not opened (not a refusal) or send failed (send buffer full)
	DNSQueries          uint64 `json:"dnsQueries"`          // UDP queries and TCP connections to the gateway's port 53
	DNSFailures         uint64 `json:"dnsFailures"`         // no nameserver answered, malformed, or over maxDNSInFlight
	PortMapConns        uint64 `json:"portMapConns"`        // port-mapping TCP connections relayed into a pod
	EchoFlowsOpened     uint64 `json:"echoFlowsOpened"`     // ping sockets opened
	UDPIdleTimeouts     uint64 `json:"udpIdleTimeouts"`     // UDP flows (outbound and port-mapping) closed after UDPIdleTimeout
	UDPEvicted          uint64 `json:"udpEvicted"`          // UDP flows that are no stream, answered or quiet, closed to make room for a new flow at a limit (udp.go)
	UDPDropped          uint64 `json:"udpDropped"`          // pods' datagrams dropped: no host socket could be opened for the flow (no route, EACCES, out of descriptors), or its send buffer was full
	UDPNoResources      uint64 `json:"udpNoResources"`      // UDP flows not opened for want of file descriptors or kernel memory (noResources); their datagrams are in UDPDropped
	EchoNoResources     uint64 `json:"echoNoResources"`     // echo flows not opened for want of file descriptors or kernel memory; their requests are in EchoDropped
	EchoIdleTimeouts    uint64 `json:"echoIdleTimeouts"`    // echo flows closed after UDPIdleTimeout

	Pods map[string]PodStats `json:"pods,omitempty"` // by pod ID
}

// PodStats are one pod's counters.
type PodStats struct {
	ActiveFlows    int    `json:"activeFlows"`
	FlowLimitDrops uint64 `json:"flowLimitDrops"`
}

// counters are the engine's MIB.
type counters struct {
	activeTCP, activeUDP, activeEcho, pendingTCP atomic.Int64

	tcpAccepted, tcpRefused, tcpTimeouts, tcpUnreachable, flowLimitDrops atomic.Uint64
	udpFlowsOpened, udpPortUnreachables, udpICMPErrors                   atomic.Uint64
	echoRelayed, echoRawRelayed, echoDenied, echoDropped, echoICMPErrors atomic.Uint64
	dnsQueries, dnsFailures, portMapConns                                atomic.Uint64
	// Per flow, not per packet: echo flows opened, UDP and echo flows
	// closed for idling past UDPIdleTimeout.
	echoFlowsOpened, udpIdleTimeouts, echoIdleTimeouts atomic.Uint64
	udpEvicted                                         atomic.Uint64
	// Per datagram, on drop paths only.
	udpDropped atomic.Uint64
	// Flows whose host socket could not be opened for want of file
	// descriptors or kernel memory (noResources), and when that was last
	// logged (Unix nanoseconds).
	tcpNoResources, udpNoResources, echoNoResources atomic.Uint64
	noResourcesLogged                               atomic.Int64
}

// Engine is the proxy-mode relay engine of one stack.
type Engine struct {
	cfg  Config
	st   *netstack.Stack
	log  *slog.Logger
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// keepAlive is what both sockets of a TCP relay get (keepalive.go).
	keepAlive net.KeepAliveConfig
	// hostKeepAlive is keepAlive for a host socket of dialAsync: the
	// fields the netns's sysctls give already are left out.
	hostKeepAlive net.KeepAliveConfig

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the engine started

	poll   *poller // host sockets of the TCP relays
	tcpIC  *tcp.Interceptor
	udpIC  interceptSocket
	dnsUDP *socket.PacketConn
	dnsTCP *tcp.Listener
	resolv *resolvConf
	dnsSem chan struct{} // bound: maxDNSInFlight

	c counters

	// mu guards the fields below. Lock order: the flow tables' locks >
	// mu > flowHandle.mu; flows are aborted after mu is released.
	mu     sync.Mutex
	closed bool
	pods   map[string]*pod
	// addrs: flow accounting per pod address. Bound: one entry per
	// registered pod plus one per address with a live flow.
	addrs map[netip.Addr]*addrState
	// alias maps a registered dual-stack pod's IPv6 address to its IPv4
	// one, the key of its flows in addrs. Bound: one per registered pod.
	alias    map[netip.Addr]netip.Addr
	udpFlows int // outbound and port-mapping UDP flows; bound MaxUDPFlows

	udp udpTable
	// udpDrains runs one udpDrainQueue at a time (the intercept socket
	// read in order), with udpBuf and udpHdr.
	udpDrains serial[*Engine]
	udpBuf    []byte // maxDatagram
	udpHdr    udp.Header
	echo      echoTable
}

// addrState is one pod address's flows.
type addrState struct {
	registered bool // AddPod named it: kept while idle
	active     int  // bound: MaxFlowsPerPod
	drops      uint64
	flows      map[*flowHandle]struct{}
}

// interceptSocket is what the engine needs of the stack's UDP intercept
// socket.
type interceptSocket interface {
	RecvMsgHeader(p []byte, h *udp.Header, flags udp.Flags) (int, udp.Meta, error)
	SetNotify(fn func())
	SendFromTo(p []byte, from, to netip.AddrPort) (int, error)
	Close() error
}

// New starts an engine on cfg.Stack: the TCP, UDP and echo interceptors
// and the DNS listeners on 0.0.0.0:53 (UDP and TCP) in the stack. On error
// nothing stays open.
func New(cfg Config) (_ *Engine, err error) {
	if cfg.Stack == nil {
		return nil, errors.New("proxy: Config.Stack is nil")
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.MaxFlowsPerPod <= 0 {
		cfg.MaxFlowsPerPod = DefaultMaxFlowsPerPod
	}
	if cfg.MaxUDPFlows <= 0 {
		cfg.MaxUDPFlows = DefaultMaxUDPFlows
	}
	if cfg.udpQuiet <= 0 {
		cfg.udpQuiet = udpEvictQuiet
	}
	if cfg.udpStream <= 0 {
		cfg.udpStream = conntrack.UDPStreamAfter
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	if cfg.KeepAliveIdle == 0 {
		cfg.KeepAliveIdle = DefaultKeepAliveIdle
	}
	if cfg.KeepAliveInterval <= 0 {
		cfg.KeepAliveInterval = DefaultKeepAliveInterval
	}
	if cfg.KeepAliveCount <= 0 {
		cfg.KeepAliveCount = DefaultKeepAliveCount
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{
		cfg:       cfg,
		st:        cfg.Stack,
		log:       log,
		dial:      cfg.Dialer,
		pods:      map[string]*pod{},
		addrs:     map[netip.Addr]*addrState{},
		alias:     map[netip.Addr]netip.Addr{},
		resolv:    &resolvConf{path: cfg.ResolvConf},
		keepAlive: cfg.keepAliveConfig(),
		// The kernel's own defaults (sysctls) need no setsockopt.
		hostKeepAlive: cfg.hostKeepAliveConfig(ipv4Sysctl),
		dnsSem:        make(chan struct{}, maxDNSInFlight),
	}
	if e.dial == nil {
		d := &net.Dialer{}
		e.dial = d.DialContext
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.udp.init()
	e.echo.init(e)
	defer func() {
		if err != nil {
			e.Close()
		}
	}()

	if e.poll, err = newPoller(); err != nil {
		return nil, err
	}
	e.spawn(e.poll.run)
	if e.tcpIC, err = e.st.InterceptTCP(maxPendingTCP); err != nil {
		return nil, fmt.Errorf("proxy: intercept TCP: %w", err)
	}
	ic, err := e.st.InterceptUDP()
	if err != nil {
		return nil, fmt.Errorf("proxy: intercept UDP: %w", err)
	}
	e.udpIC = ic
	// The IPv6 wildcard takes both families (an AF_INET6 socket without
	// IPV6_V6ONLY): DNS to an IPv4 or an IPv6 gateway.
	any53 := netip.AddrPortFrom(netip.IPv6Unspecified(), 53)
	if e.dnsUDP, err = e.st.ListenUDP(any53); err != nil {
		return nil, fmt.Errorf("proxy: DNS listener udp %v: %w", any53, err)
	}
	if e.dnsTCP, err = e.st.ListenTCP(any53); err != nil {
		return nil, fmt.Errorf("proxy: DNS listener tcp %v: %w", any53, err)
	}
	e.st.InterceptEcho(e.echo.intercept)
	e.st.InterceptEcho6(e.echo.intercept6)
	if cfg.Dialer == nil || cfg.mapDst != nil {
		e.tcpIC.SetHandler(e.tcpSYN)
	} else {
		e.spawn(e.tcpLoop)
	}
	// The pods' datagrams are read where the stack queued them, at the
	// end of the receive batch (udpDrain), not by a goroutine of ours
	// that each datagram would wake; a first drain takes what came
	// before the callback was set.
	e.udpBuf = make([]byte, maxDatagram)
	e.udpIC.SetNotify(e.udpDrain)
	e.udpDrain()
	e.spawn(e.dnsUDPLoop)
	e.spawn(e.dnsTCPLoop)
	return e, nil
}

// PollHost dispatches the events of the engine's host sockets that are
// ready now, on the caller's goroutine and without waiting, and returns
// how many it dispatched: for a link's busy poll
// (afpacket.Config.BusyPollAlso), so that a goroutine polling the pod's
// side for its next frame also catches the host's answer, with no
// wake-up of the engine's poller goroutine. It returns 0 at once while
// another goroutine polls, and after Close. The handlers it runs (a
// relay's pumps) never block.
func (e *Engine) PollHost() int { return e.poll.poll() }

// Close stops the interceptors and the DNS listeners, closes every pod's
// port-mapping listeners, aborts every flow and returns when no goroutine
// of the engine is left. Flows intercepted afterwards are not taken: the
// stack refuses them. Close is idempotent.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	pods := e.pods
	e.pods = map[string]*pod{}
	var flows []*flowHandle
	for _, st := range e.addrs {
		for f := range st.flows {
			flows = append(flows, f)
		}
	}
	e.mu.Unlock()

	e.cancel()
	e.st.InterceptEcho(nil)
	e.st.InterceptEcho6(nil)
	var errs []error
	if e.tcpIC != nil {
		errs = append(errs, ignoreClosed(e.tcpIC.Close()))
	}
	if e.udpIC != nil {
		errs = append(errs, ignoreClosed(e.udpIC.Close()))
	}
	if e.dnsUDP != nil {
		errs = append(errs, ignoreClosed(e.dnsUDP.Close()))
	}
	if e.dnsTCP != nil {
		errs = append(errs, ignoreClosed(e.dnsTCP.Close()))
	}
	for _, p := range pods {
		p.closeListeners()
	}
	for _, f := range flows {
		f.abort()
	}
	if e.poll != nil {
		errs = append(errs, ignoreClosed(e.poll.close()))
	}
	// The raw ICMP sockets' readers end when the sockets close.
	e.echo.close()
	e.wg.Wait()
	for _, p := range pods {
		p.wg.Wait()
	}
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// spawn runs fn on a goroutine counted in e.wg, unless the engine is
// closed.
func (e *Engine) spawn(fn func()) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		fn()
	}()
	return true
}

// adopt ties a flow's host socket to f (closed with the flow) and starts
// its reader; false, with the socket closed and the flow released, when
// the engine is closing.
func (e *Engine) adopt(f *flowHandle, c net.Conn, reader func()) bool {
	f.add(abortFunc(func() { c.Close() }))
	if !e.spawn(reader) {
		c.Close()
		e.release(f)
		f.done()
		return false
	}
	return true
}

// rawConn is c's syscall.RawConn, nil when c is not a kernel socket
// (tests inject in-memory conns).
func rawConn(c any) syscall.RawConn {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}

// flowKind says which global bound a flow counts against besides the
// per-pod one.
type flowKind uint8

const (
	kindTCP flowKind = iota
	kindUDP
	kindEcho
)

// acquire counts a new flow of pod address a, within MaxFlowsPerPod (and
// MaxUDPFlows for UDP); false means over a limit (counted) or closed.
func (e *Engine) acquire(a netip.Addr, f *flowHandle, kind flowKind) bool {
	ok, _, _ := e.tryAcquire(a, f, kind, true)
	return ok
}

// tryAcquire is acquire; with count false a refusal is not counted (the
// caller makes room and tries again). It returns the address the flow
// counts under (a dual-stack pod's IPv4 one) and whether the pod's own
// limit refused it (else the node's UDP table, or the engine closed).
func (e *Engine) tryAcquire(a netip.Addr, f *flowHandle, kind flowKind, count bool) (ok bool, pod netip.Addr, podFull bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false, a, false
	}
	if k, ok := e.alias[a]; ok {
		a = k
	}
	st := e.addrs[a]
	if st == nil {
		st = &addrState{flows: map[*flowHandle]struct{}{}}
		e.addrs[a] = st
	}
	if podFull = st.active >= e.cfg.MaxFlowsPerPod; podFull || (kind == kindUDP && e.udpFlows >= e.cfg.MaxUDPFlows) {
		if count {
			st.drops++
			e.c.flowLimitDrops.Add(1)
		}
		if st.active == 0 && !st.registered {
			delete(e.addrs, a)
		}
		return false, a, podFull
	}
	st.active++
	st.flows[f] = struct{}{}
	f.addr, f.kind = a, kind
	if kind == kindUDP {
		e.udpFlows++
	}
	return true, a, false
}

// release counts a flow out; it does not close anything.
func (e *Engine) release(f *flowHandle) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.addrs[f.addr]
	if st == nil {
		return
	}
	if _, ok := st.flows[f]; !ok {
		return
	}
	delete(st.flows, f)
	st.active--
	if f.kind == kindUDP {
		e.udpFlows--
	}
	if st.active == 0 && !st.registered {
		delete(e.addrs, f.addr)
	}
}

// flowHandle aborts one flow in whatever phase it is: it cancels the
// flow's context (a dial or an Accept in progress; an event-driven TCP
// flow has none) and closes every
// resource added so far abortively. A resource added after the abort is
// closed at once.
type flowHandle struct {
	ctx    context.Context
	cancel context.CancelFunc
	addr   netip.Addr
	kind   flowKind

	// A TCP flow's ends, for logs: pod is the pod's address and port,
	// dst the other end (the original destination, a port mapping's
	// client, a nameserver). The relay list reads relay (info.go).
	pod, dst netip.AddrPort

	mu      sync.Mutex
	aborted bool
	closers []aborter // bound: the few sockets of one flow
	// closersBuf holds the first closers: a flow registers one or two,
	// so add allocates none.
	closersBuf [2]aborter

	// relay is a TCP relay's two sockets once both are up (info.go),
	// ends where setRelay records them.
	relay atomic.Pointer[relayEnds]
	ends  relayEnds
}

func (e *Engine) newFlow() *flowHandle {
	ctx, cancel := context.WithCancel(e.ctx)
	return &flowHandle{ctx: ctx, cancel: cancel}
}

// aborter is what a flow aborts: a relay itself (no closure per flow),
// or an abortFunc.
type aborter interface{ abort() }

// abortFunc is a function as an aborter.
type abortFunc func()

func (f abortFunc) abort() { f() }

// add registers close; false (and close aborted) when already aborted.
func (f *flowHandle) add(close aborter) bool {
	f.mu.Lock()
	if f.aborted {
		f.mu.Unlock()
		close.abort()
		return false
	}
	if f.closers == nil {
		f.closers = f.closersBuf[:0]
	}
	f.closers = append(f.closers, close)
	f.mu.Unlock()
	return true
}

func (f *flowHandle) abort() {
	f.mu.Lock()
	if f.aborted {
		f.mu.Unlock()
		return
	}
	f.aborted = true
	cs := f.closers
	f.closers = nil
	f.mu.Unlock()
	if f.cancel != nil {
		f.cancel()
	}
	for _, c := range cs {
		c.abort()
	}
}

// done releases the flow's context once the flow ended on its own.
func (f *flowHandle) done() {
	if f.cancel != nil {
		f.cancel()
	}
}

// Stats returns the counters and, per registered pod, its flows.
func (e *Engine) Stats() Stats {
	s := Stats{
		ActiveTCP:           int(e.c.activeTCP.Load()),
		ActiveUDP:           int(e.c.activeUDP.Load()),
		ActiveEcho:          int(e.c.activeEcho.Load()),
		PendingTCP:          int(e.c.pendingTCP.Load()),
		TCPAccepted:         e.c.tcpAccepted.Load(),
		TCPRefused:          e.c.tcpRefused.Load(),
		TCPTimeouts:         e.c.tcpTimeouts.Load(),
		TCPUnreachable:      e.c.tcpUnreachable.Load(),
		TCPNoResources:      e.c.tcpNoResources.Load(),
		FlowLimitDrops:      e.c.flowLimitDrops.Load(),
		UDPFlowsOpened:      e.c.udpFlowsOpened.Load(),
		UDPPortUnreachables: e.c.udpPortUnreachables.Load(),
		UDPICMPErrors:       e.c.udpICMPErrors.Load(),
		EchoRelayed:         e.c.echoRelayed.Load(),
		EchoRawRelayed:      e.c.echoRawRelayed.Load(),
		EchoDenied:          e.c.echoDenied.Load(),
		EchoICMPErrors:      e.c.echoICMPErrors.Load(),
		EchoDropped:         e.c.echoDropped.Load(),
		DNSQueries:          e.c.dnsQueries.Load(),
		DNSFailures:         e.c.dnsFailures.Load(),
		PortMapConns:        e.c.portMapConns.Load(),
		EchoFlowsOpened:     e.c.echoFlowsOpened.Load(),
		UDPIdleTimeouts:     e.c.udpIdleTimeouts.Load(),
		UDPEvicted:          e.c.udpEvicted.Load(),
		UDPDropped:          e.c.udpDropped.Load(),
		UDPNoResources:      e.c.udpNoResources.Load(),
		EchoNoResources:     e.c.echoNoResources.Load(),
		EchoIdleTimeouts:    e.c.echoIdleTimeouts.Load(),
		Pods:                map[string]PodStats{},
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, p := range e.pods {
		var ps PodStats
		if st := e.addrs[p.Addr]; st != nil {
			ps = PodStats{ActiveFlows: st.active, FlowLimitDrops: st.drops}
		}
		s.Pods[id] = ps
	}
	return s
}

// AddPod registers a pod: its address's flows are listed under its ID and
// its port mappings get their host listeners. A mapping whose port cannot
// be bound fails AddPod, which then closes what it opened. Adding an ID
// again replaces that pod's port mappings (the old listeners are closed
// first; flows of an address that changed are aborted).
func (e *Engine) AddPod(p Pod) error {
	if p.ID == "" {
		return errors.New("proxy: pod without ID")
	}
	if !p.Addr.Is4() || !p.Gateway.Is4() {
		return fmt.Errorf("proxy: pod %s: address %v, gateway %v: %w", p.ID, p.Addr, p.Gateway, syscall.EAFNOSUPPORT)
	}
	if (p.Addr6.IsValid() || p.Gateway6.IsValid()) && (!p.Addr6.Is6() || p.Addr6.Is4In6() || !p.Gateway6.Is6() || p.Gateway6.Is4In6()) {
		return fmt.Errorf("proxy: pod %s: IPv6 address %v, gateway %v: %w", p.ID, p.Addr6, p.Gateway6, syscall.EAFNOSUPPORT)
	}
	maps, err := normalizeMappings(p.PortMappings, p.Addr6.IsValid())
	if err != nil {
		return fmt.Errorf("proxy: pod %s: %w", p.ID, err)
	}
	p.PortMappings = maps
	if old := e.removePod(p.ID, p.Addr); old != nil {
		old.wg.Wait()
	}
	np := &pod{Pod: p, e: e}
	if err := np.listen(); err != nil {
		np.closeListeners()
		np.wg.Wait()
		return fmt.Errorf("proxy: pod %s: %w", p.ID, err)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		np.closeListeners()
		np.wg.Wait()
		return net.ErrClosed
	}
	e.pods[p.ID] = np
	if p.Addr6.IsValid() {
		e.alias[p.Addr6] = p.Addr
	}
	st := e.addrs[p.Addr]
	if st == nil {
		st = &addrState{flows: map[*flowHandle]struct{}{}}
		e.addrs[p.Addr] = st
	}
	st.registered = true
	e.mu.Unlock()
	np.serve()
	return nil
}

// RemovePod closes the pod's port-mapping listeners and aborts its flows
// (every flow of its address). Unknown IDs are ignored.
func (e *Engine) RemovePod(id string) {
	if p := e.removePod(id, netip.Addr{}); p != nil {
		p.wg.Wait()
	}
}

// removePod takes pod id out of the table, closes its listeners and
// aborts its address's flows unless keep is that same address.
func (e *Engine) removePod(id string, keep netip.Addr) *pod {
	e.mu.Lock()
	p := e.pods[id]
	if p == nil {
		e.mu.Unlock()
		return nil
	}
	delete(e.pods, id)
	if p.Addr6.IsValid() && e.alias[p.Addr6] == p.Addr {
		delete(e.alias, p.Addr6)
	}
	var flows []*flowHandle
	if st := e.addrs[p.Addr]; st != nil && p.Addr != keep {
		st.registered = false
		for f := range st.flows {
			flows = append(flows, f)
		}
		if st.active == 0 {
			delete(e.addrs, p.Addr)
		}
	}
	e.mu.Unlock()
	p.closeListeners()
	for _, f := range flows {
		f.abort()
	}
	return p
}

// normalizeMappings checks mappings and fills defaults. A mapping on an
// IPv6 host address is kept for a dual-stack pod (dual) and skipped for
// an IPv4-only one, which has no IPv6 address to reach (the portmap
// plugin skips mappings of a family the container lacks too).
func normalizeMappings(in []PortMapping, dual bool) ([]PortMapping, error) {
	out := make([]PortMapping, 0, len(in))
	for _, m := range in {
		m.Protocol = strings.ToLower(m.Protocol)
		if m.Protocol == "" {
			m.Protocol = "tcp"
		}
		if m.Protocol != "tcp" && m.Protocol != "udp" {
			return nil, fmt.Errorf("port mapping %d: protocol %q: %w", m.HostPort, m.Protocol, syscall.EPROTONOSUPPORT)
		}
		if m.HostPort < 1 || m.HostPort > 65535 || m.ContainerPort < 1 || m.ContainerPort > 65535 {
			return nil, fmt.Errorf("port mapping %d→%d: port out of range: %w", m.HostPort, m.ContainerPort, syscall.EINVAL)
		}
		if m.HostIP != "" {
			a, err := netip.ParseAddr(m.HostIP)
			if err != nil {
				return nil, fmt.Errorf("port mapping %d: host IP: %w", m.HostPort, err)
			}
			if a = a.Unmap(); a.Is6() && !dual {
				continue
			}
			m.HostIP = a.String()
		}
		out = append(out, m)
	}
	return out, nil
}

// Dial errors, sorted for the counters.
func (e *Engine) countDialErr(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		// Aborted by RemovePod or Close: not the upstream's doing.
	case errors.Is(err, syscall.ECONNREFUSED):
		e.c.tcpRefused.Add(1)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT),
		errors.As(err, &ne) && ne.Timeout():
		e.c.tcpTimeouts.Add(1)
	case e.noResources(err):
		e.c.tcpNoResources.Add(1)
	default:
		e.c.tcpUnreachable.Add(1)
	}
}

// noResources reports whether err says the host ran out of what a socket
// needs — the daemon's open-file limit (EMFILE), the system's (ENFILE),
// kernel memory (ENOBUFS, ENOMEM) — rather than the destination's doing.
// Flows are then refused until something closes, so the first such
// error in noResourcesLogEvery is logged as a warning with the limit:
// an operator sees the cause, not only a counter.
func (e *Engine) noResources(err error) bool {
	if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) &&
		!errors.Is(err, syscall.ENOBUFS) && !errors.Is(err, syscall.ENOMEM) {
		return false
	}
	now := time.Now().UnixNano()
	last := e.c.noResourcesLogged.Load()
	if (last == 0 || now-last >= int64(noResourcesLogEvery)) && e.c.noResourcesLogged.CompareAndSwap(last, now) {
		var l syscall.Rlimit
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
		e.log.Warn("proxy: no host socket for a pod's flow, flows are refused: the daemon is out of file descriptors or kernel memory",
			"err", err, "openFileLimit", l.Cur,
			"fix", "raise the daemon's open-file limit (systemd LimitNOFILE=, ulimit -n) or lower --proxy-max-flows-per-pod")
	}
	return true
}

// noResourcesLogEvery spaces noResources' warnings.
const noResourcesLogEvery = time.Minute

// isClosed reports an error that means the socket was closed under us.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}
