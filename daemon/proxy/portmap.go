package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// pod is a registered pod with its port-mapping listeners.
type pod struct {
	Pod
	e  *Engine
	wg sync.WaitGroup // the listeners' goroutines

	tcp []tcpMapping
	udp []*udpMapping
}

type tcpMapping struct {
	m  PortMapping
	ln net.Listener
	to netip.Addr // the pod address of the listener's family
}

// udpMapping is one UDP host port with its client flows.
type udpMapping struct {
	m   PortMapping
	ln  *net.UDPConn
	raw syscall.RawConn
	// out is a duplicate of ln's descriptor (the same socket) that the
	// flows' replies are sent on (sendTo): with no closure per datagram
	// and never waiting, and closed safely under a reply being sent
	// (hostFD's references).
	out *hostFD
	to  netip.Addr // the pod address of the listener's family

	mu sync.Mutex
	// flows by client. Bound: MaxUDPFlows and MaxFlowsPerPod, through
	// Engine.acquire.
	flows map[netip.AddrPort]*pmFlow
}

// pmFlow is one UDP client of a mapping: a transparent stack socket from
// the client's address to the pod, whose replies are relayed where the
// stack queued them (drain, its Notify callback: no goroutine per flow),
// ended after UDPIdleTimeout without a datagram either way (idle).
type pmFlow struct {
	p      *pod
	u      *udpMapping
	client netip.AddrPort
	sa     rawSockaddr // the client's, for sendto
	sock   *udp.Socket
	idle   idle
	ended  atomic.Bool // end ran: a flow ends once
	drains serial[*pmFlow]
	f      *flowHandle
}

// hostBind is one host socket of a mapping: where it listens and the pod
// address its clients reach.
type hostBind struct {
	addr netip.AddrPort
	to   netip.Addr
}

// hostBinds are the host sockets of mapping m: its host IP's family
// reaching the pod's address of that family; a wildcard mapping listens
// on 0.0.0.0 for the pod's IPv4 address and, for a dual-stack pod, on
// [::] (IPV6_V6ONLY, as Go's "tcp6"/"udp6" sockets are) for its IPv6
// one. A client keeps its own family end to end: no IPv4-mapped
// addresses reach the pod (RFC 4038 §4.2).
func (p *pod) hostBinds(m PortMapping) []hostBind {
	port := uint16(m.HostPort)
	if m.HostIP != "" {
		a := netip.MustParseAddr(m.HostIP) // normalizeMappings checked it
		if a.Is6() {
			return []hostBind{{netip.AddrPortFrom(a, port), p.Addr6}}
		}
		return []hostBind{{netip.AddrPortFrom(a, port), p.Addr}}
	}
	b := []hostBind{{netip.AddrPortFrom(netip.IPv4Unspecified(), port), p.Addr}}
	if p.Addr6.IsValid() {
		b = append(b, hostBind{netip.AddrPortFrom(netip.IPv6Unspecified(), port), p.Addr6})
	}
	return b
}

// listen binds every mapping's host ports; on error the caller closes
// what was opened.
func (p *pod) listen() error {
	for _, m := range p.PortMappings {
		for _, hb := range p.hostBinds(m) {
			fam := "4"
			if hb.addr.Addr().Is6() {
				fam = "6"
			}
			switch m.Protocol {
			case "tcp":
				ln, err := net.Listen("tcp"+fam, hb.addr.String())
				if err != nil {
					return fmt.Errorf("port mapping %s/%d on %v: %w", m.Protocol, m.HostPort, hb.addr.Addr(), err)
				}
				p.tcp = append(p.tcp, tcpMapping{m: m, ln: ln, to: hb.to})
			case "udp":
				ln, err := net.ListenUDP("udp"+fam, net.UDPAddrFromAddrPort(hb.addr))
				if err != nil {
					return fmt.Errorf("port mapping %s/%d on %v: %w", m.Protocol, m.HostPort, hb.addr.Addr(), err)
				}
				um := &udpMapping{m: m, ln: ln, flows: map[netip.AddrPort]*pmFlow{}, raw: rawConn(ln), to: hb.to}
				if um.out, err = dupHostFD(um.raw); err != nil {
					ln.Close()
					return fmt.Errorf("port mapping %s/%d on %v: %w", m.Protocol, m.HostPort, hb.addr.Addr(), err)
				}
				p.udp = append(p.udp, um)
			}
		}
	}
	return nil
}

// serve starts the listeners' goroutines.
func (p *pod) serve() {
	for _, t := range p.tcp {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.acceptTCP(t)
		}()
	}
	for _, u := range p.udp {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serveUDP(u)
		}()
	}
}

func (p *pod) closeListeners() {
	for _, t := range p.tcp {
		t.ln.Close()
	}
	for _, u := range p.udp {
		u.ln.Close()
		u.out.Close()
	}
}

// dupHostFD duplicates the socket of raw (F_DUPFD_CLOEXEC) as a hostFD.
func dupHostFD(raw syscall.RawConn) (*hostFD, error) {
	nfd := -1
	var derr error
	if err := raw.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup: %w", derr)
	}
	return &hostFD{fd: nfd}, nil
}

// peerAddr is the address the pod is shown for client c when reaching
// the pod's address to: c itself, or that family's gateway for a loopback
// client, whose packets the pod's kernel would drop as martians (RFC 1122
// §3.2.1.3: 127/8 must not appear outside a host; RFC 4291 §2.5.3: nor
// ::1), and for an IPv6 link-local client, whose address means nothing on
// the pod's link (RFC 4291 §2.5.6).
func (p *pod) peerAddr(c, to netip.Addr) netip.Addr {
	c = c.Unmap()
	if to.Is6() {
		if c.IsLoopback() || !c.Is6() || c.IsLinkLocalUnicast() {
			return p.Gateway6
		}
		return c.WithZone("")
	}
	if c.IsLoopback() || !c.Is4() {
		return p.Gateway
	}
	return c
}

func (p *pod) acceptTCP(t tcpMapping) {
	e := p.e
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if !isClosed(err) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					time.Sleep(10 * time.Millisecond) // out of descriptors: back off, as net/http does
					continue
				}
				e.log.Warn("proxy: port mapping listener stopped", "pod", p.ID, "port", t.m.HostPort, "err", err)
			}
			return
		}
		var client netip.AddrPort
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			client = a.AddrPort()
		}
		f := e.newFlow()
		if !e.acquire(p.Addr, f, kindTCP) {
			abortConn(c)
			f.done()
			continue
		}
		f.add(abortFunc(func() { abortConn(c) }))
		src := netip.AddrPortFrom(p.peerAddr(client.Addr(), t.to), 0)
		dst := netip.AddrPortFrom(t.to, uint16(t.m.ContainerPort))
		if !e.spawn(func() { e.portMapTCP(c, src, dst, f) }) {
			abortConn(c)
			e.release(f)
			f.done()
			return
		}
	}
}

// portMapTCP dials into the pod from src and relays; a pod that refuses
// gets the client reset.
func (e *Engine) portMapTCP(c net.Conn, src, dst netip.AddrPort, f *flowHandle) {
	f.pod = dst
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		f.dst = a.AddrPort()
	}
	ctx, cancel := context.WithTimeout(f.ctx, e.cfg.ConnectTimeout)
	down, err := e.st.DialTCPTransparent(ctx, src, dst)
	cancel()
	if err != nil {
		e.log.Debug("proxy: port mapping dial into pod failed", "src", src, "dst", dst, "err", err)
		abortConn(c)
		e.release(f)
		f.done()
		return
	}
	if !f.add(abortFunc(func() { abortConn(down) })) {
		e.release(f)
		f.done()
		return
	}
	down.SetNoDelay(true)
	e.setKeepAlive(down)
	e.setKeepAlive(c)
	e.c.portMapConns.Add(1)
	f.setRelay(RelayPortMap, down, c)
	e.relayTCP(f, down, c)
}

// serveUDP reads the host port and relays each client's datagrams
// through its flow.
func (p *pod) serveUDP(u *udpMapping) {
	e := p.e
	defer func() {
		u.mu.Lock()
		flows := make([]*pmFlow, 0, len(u.flows))
		for _, pf := range u.flows {
			flows = append(flows, pf)
		}
		u.mu.Unlock()
		for _, pf := range flows {
			pf.f.abort()
		}
	}()
	// One Read for the listener's life: its callback reads the socket
	// until it is empty and asks to wait for more (false), so nothing is
	// allocated per datagram; it returns only when the socket is closed.
	_ = u.raw.Read(func(fd uintptr) bool {
		readDgrams(int(fd), true, func(b []byte, from netip.AddrPort) { p.udpIn(u, b, from) }, func(errno unix.Errno) {
			e.log.Debug("proxy: port mapping socket error", "pod", p.ID, "err", errno)
		})
		return false
	})
}

// udpIn relays client's datagram b into the pod through its flow.
func (p *pod) udpIn(u *udpMapping, b []byte, client netip.AddrPort) {
	pf := p.udpFlow(u, client)
	if pf == nil {
		return
	}
	pf.idle.touch()
	if _, err := pf.sock.Send(b); err != nil {
		p.e.log.Debug("proxy: port mapping send into pod failed", "pod", p.ID, "err", err)
	}
}

// udpFlow finds or opens the flow of client.
func (p *pod) udpFlow(u *udpMapping, client netip.AddrPort) *pmFlow {
	u.mu.Lock()
	pf := u.flows[client]
	if pf != nil {
		u.mu.Unlock()
		return pf
	}
	pf = p.udpOpenLocked(u, client)
	u.mu.Unlock()
	// The new flow's abort (RemovePod, Close) takes u.mu: it is added to
	// the flow only now, and runs here at once if the flow was aborted
	// meanwhile.
	if pf != nil && pf.f.add(pf) {
		return pf
	}
	return nil
}

// udpOpenLocked opens the flow of client (u.mu held); nil when a limit or
// the stack refused it.
func (p *pod) udpOpenLocked(u *udpMapping, client netip.AddrPort) *pmFlow {
	e := p.e
	var sa rawSockaddr
	if _, err := sa.set(client); err != nil {
		e.log.Debug("proxy: port mapping client address", "client", client, "err", err)
		return nil
	}
	f := e.newFlow()
	if !e.acquire(p.Addr, f, kindUDP) {
		f.done()
		return nil
	}
	src := netip.AddrPortFrom(p.peerAddr(client.Addr(), u.to), 0)
	sock, err := e.st.DialUDPTransparent(src, netip.AddrPortFrom(u.to, uint16(u.m.ContainerPort)))
	if err != nil {
		e.log.Debug("proxy: port mapping udp flow failed", "pod", p.ID, "err", err)
		e.release(f)
		f.done()
		return nil
	}
	pf := &pmFlow{p: p, u: u, client: client, sa: sa, sock: sock, f: f}
	pf.idle.init(e, pf)
	// Nothing is queued on the socket yet (the client's first datagram
	// goes to the pod after this), so no reply goes unannounced.
	sock.SetNotify(pf.notify)
	u.flows[client] = pf
	e.c.udpFlowsOpened.Add(1)
	e.c.activeUDP.Add(1)
	pf.idle.arm()
	return pf
}

// notify is the flow socket's data-ready callback (udp.Socket.SetNotify):
// on the NIC's goroutine that queued the pod's replies, at the end of its
// receive batch. One drain runs at a time, so replies leave in order.
func (pf *pmFlow) notify() { pf.drains.run((*pmFlow).drain, pf) }

// drain relays the pod's queued replies to the client until none is
// left (run by pf.drains only). The host socket is written without
// waiting: a full send buffer drops the reply (UDPDropped), as for the
// pod's datagrams to the host (udpFlow.write), rather than hold up the
// NIC's goroutine. A pending socket error is reported once; a second
// error in a row ends the drain, as hostFD.readDry does. The buffer is
// taken only while a reply is handled.
func (pf *pmFlow) drain() {
	e := pf.p.e
	bp := dgramBufs.Get().(*[]byte)
	defer dgramBufs.Put(bp)
	for errs := 0; errs < 2; {
		n, _, err := pf.sock.RecvMsg(*bp, udp.MsgDontWait)
		switch {
		case err == nil:
			errs = 0
		case errors.Is(err, syscall.EAGAIN), isClosed(err):
			return // empty, or closed (the flow ended)
		default:
			errs++
			continue
		}
		pf.idle.touch()
		switch err := pf.u.sendTo((*bp)[:n], &pf.sa); {
		case err == nil, isClosed(err): // sent, or the mapping ended
		case errors.Is(err, unix.EAGAIN):
			e.c.udpDropped.Add(1)
		default:
			e.log.Debug("proxy: port mapping reply failed", "client", pf.client, "err", err)
		}
	}
}

// sendTo writes one datagram from the mapping's host socket to sa
// without waiting for room (sendtoNonblock); net.ErrClosed once the
// mapping ended.
func (u *udpMapping) sendTo(b []byte, sa *rawSockaddr) error {
	if !u.out.acquire() {
		return net.ErrClosed
	}
	defer u.out.release()
	if e := sendtoNonblock(u.out.fd, b, sa); e != 0 {
		return e
	}
	return nil
}

// abort ends the flow (flowHandle's aborter: RemovePod, Close, the
// mapping's end).
func (pf *pmFlow) abort() { pf.end() }

// idleEnd ends the flow after UDPIdleTimeout without a datagram either
// way (idle's owner).
func (pf *pmFlow) idleEnd() {
	if pf.end() {
		pf.p.e.c.udpIdleTimeouts.Add(1)
	}
}

// end ends the flow, once, whichever way it ends (idle timeout, abort,
// its mapping's end): out of the mapping's table, its socket closed (a
// drain running then stops), counted out. It reports whether this call ended
// it.
func (pf *pmFlow) end() bool {
	if pf.ended.Swap(true) {
		return false
	}
	e := pf.p.e
	pf.u.mu.Lock()
	if pf.u.flows[pf.client] == pf {
		delete(pf.u.flows, pf.client)
	}
	pf.u.mu.Unlock()
	pf.idle.stop()
	pf.sock.Close()
	e.release(pf.f)
	pf.f.done()
	e.c.activeUDP.Add(-1)
	return true
}
