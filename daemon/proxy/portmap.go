package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	to  netip.Addr // the pod address of the listener's family

	mu sync.Mutex
	// flows by client. Bound: MaxUDPFlows and MaxFlowsPerPod, through
	// Engine.acquire.
	flows map[netip.AddrPort]*pmFlow
}

// pmFlow is one UDP client of a mapping: a transparent stack socket from
// the client's address to the pod.
type pmFlow struct {
	client netip.AddrPort
	sock   *udp.Socket
	last   atomic.Int64 // wall-clock nanoseconds
	f      *flowHandle
}

func (p *pmFlow) touch() { p.last.Store(time.Now().UnixNano()) }

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
	}
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
	for {
		err := recvFrom(u.ln, u.raw, func(b []byte, from netip.AddrPort) {
			pf := p.udpFlow(u, from)
			if pf == nil {
				return
			}
			pf.touch()
			if _, err := pf.sock.Send(b); err != nil {
				e.log.Debug("proxy: port mapping send into pod failed", "pod", p.ID, "err", err)
			}
		})
		if err != nil && !isErrno(err) {
			return // closed
		}
	}
}

// udpFlow finds or opens the flow of client.
func (p *pod) udpFlow(u *udpMapping, client netip.AddrPort) *pmFlow {
	e := p.e
	u.mu.Lock()
	defer u.mu.Unlock()
	if pf := u.flows[client]; pf != nil {
		return pf
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
	pf := &pmFlow{client: client, sock: sock, f: f}
	pf.touch()
	f.add(abortFunc(func() { sock.Close() }))
	if !e.spawn(func() { p.udpFlowReader(u, pf) }) {
		sock.Close()
		e.release(f)
		f.done()
		return nil
	}
	u.flows[client] = pf
	e.c.udpFlowsOpened.Add(1)
	e.c.activeUDP.Add(1)
	return pf
}

// udpFlowReader relays the pod's replies to the client until the flow
// idles out or is aborted. It peeks for the length first, so an idle flow
// holds no buffer.
func (p *pod) udpFlowReader(u *udpMapping, pf *pmFlow) {
	e := p.e
	defer func() {
		u.mu.Lock()
		if u.flows[pf.client] == pf {
			delete(u.flows, pf.client)
		}
		u.mu.Unlock()
		pf.sock.Close()
		e.release(pf.f)
		pf.f.done()
		e.c.activeUDP.Add(-1)
	}()
	idle := e.cfg.UDPIdleTimeout
	for {
		last := time.Unix(0, pf.last.Load())
		left := idle - time.Since(last)
		if left <= 0 {
			e.c.udpIdleTimeouts.Add(1)
			return
		}
		// The stack socket's deadline is on the stack's clock.
		_ = pf.sock.SetReadDeadline(e.st.Clock().Now().Add(left))
		_, meta, err := pf.sock.RecvMsg(nil, udp.MsgPeek)
		if err == nil {
			bp := dgramBufs.Get().(*[]byte)
			buf := (*bp)[:min(meta.Len, len(*bp))]
			n, err := pf.sock.Recv(buf)
			if err == nil {
				pf.touch()
				if _, err := u.ln.WriteToUDPAddrPort(buf[:n], pf.client); err != nil {
					e.log.Debug("proxy: port mapping reply failed", "client", pf.client, "err", err)
				}
			}
			dgramBufs.Put(bp)
			continue
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded), isErrno(err) && !isClosed(err):
		default:
			return
		}
	}
}
