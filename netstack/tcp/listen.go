package tcp

import (
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// Passive open (inet_connection_sock.c, tcp_minisocks.c). A SYN to a
// listener creates a child socket in SYN-RECEIVED straight away (where
// Linux keeps a smaller request_sock), hashed in the connection table so
// the rest of the handshake runs through the normal state machine,
// simultaneous open included. The listener counts children in its SYN
// queue (bound: Config.MaxSynBacklog) and holds established children in
// its accept queue (bound: the listen backlog). A SYN finding either
// full is dropped (ListenDrops; ListenOverflows for the accept queue),
// except that a full SYN queue is answered with a SYN cookie
// (syncookies.go) unless Config.NoSynCookies; a final ACK finding the
// accept queue full is dropped and the SYN,ACK retransmitted later.
//
// Lock order: child.mu > listener.mu > Proto.mu. The listener's lock is
// never held while a child's lock is taken.

// listenRcv is tcp_v4_conn_request and the LISTEN state of RFC 9293
// §3.10.7.2.
func (l *Sock) listenRcv(seg *segment, t tuple) {
	switch {
	case seg.hasRst:
		// "An incoming RST segment could not be valid ... ignore it."
		seg.skb.Free(DropReset)
		return
	case seg.hasAck:
		if l.cookieAck(seg, t) {
			return
		}
		// "Any acknowledgment is bad if it arrives on a connection
		// still in the LISTEN state": <SEQ=SEG.ACK><CTL=RST>.
		l.p.sendResetFor(seg)
		seg.skb.Free(DropNoSocket)
		return
	case !seg.hasSyn:
		seg.skb.Free(DropFlags)
		return
	}
	p := l.p
	l.mu.Lock()
	if l.state != Listen {
		l.mu.Unlock()
		p.noSocket(seg)
		return
	}
	if len(l.acceptQ) >= l.backlog {
		l.mu.Unlock()
		p.count(ListenOverflows)
		p.count(ListenDrops)
		seg.skb.Free(DropListenOverflow)
		return
	}
	if l.synQ >= p.cfg.MaxSynBacklog {
		l.mu.Unlock()
		if !p.cfg.NoSynCookies {
			// RFC 4987 §3.6: answer without state.
			l.sendCookieSynAck(seg, t)
			seg.skb.Consume()
			return
		}
		p.count(ListenDrops)
		seg.skb.Free(DropListenOverflow)
		return
	}
	l.synQ++
	c := p.NewSock()
	c.parent = l
	c.nodelay, c.keepalive = l.nodelay, l.keepalive
	c.keepIdle, c.keepIntvl, c.keepCnt = l.keepIdle, l.keepIntvl, l.keepCnt
	c.sndBufLimit, c.rcvBufLimit, c.rcvAutoOff = l.sndBufLimit, l.rcvBufLimit, l.rcvAutoOff
	l.mu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.initPassive(seg, t); err != nil {
		c.leaveParent()
		p.count(ListenDrops)
		seg.skb.Free(DropListenOverflow)
		return
	}
	seg.skb.Consume()
}

// initPassive is tcp_create_openreq_child: the child's state from the
// SYN, then the SYN,ACK (RFC 9293 §3.10.7.2: "ISS should be selected and
// a SYN segment sent of the form <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>").
func (c *Sock) initPassive(seg *segment, t tuple) error {
	p := c.p
	c.id = t
	c.flow = route.Flow{Src: t.laddr, Dst: t.raddr, Proto: header.ProtoTCP, DontFragment: true,
		SrcPort: t.lport, DstPort: t.rport, Transparent: c.transparent, Mark: c.mark}
	if t.raddr.IsLinkLocalUnicast() {
		c.flow.NIC = seg.nic // RFC 4007 §6: a link-local peer is on the link the SYN came from
	}
	res, err := c.routeFlow()
	if err != nil {
		return err
	}
	c.setRoute(res)
	c.wsOK, c.tsOK, c.sackOK = !p.cfg.NoWindowScaling, !p.cfg.NoTimestamps, !p.cfg.NoSACK
	if c.wsOK {
		c.rcvWscale = wscaleFor(c.rcvMaxSpace())
	}
	c.tsOff = p.tsOffset(t)
	c.irs, c.rcvNxt = seg.seq, seg.seq+1
	c.rcvAdv = c.rcvNxt
	c.negotiate(&seg.opts)
	// RFC 3168 §6.1.1: an ECN-setup SYN has ECE and CWR.
	c.ecnOK = !p.cfg.NoECN && seg.flags&(header.ECE|header.CWR) == header.ECE|header.CWR
	c.iss = p.isn(t)
	if seg.hasTWISN {
		c.iss = seg.twISN // reopened from TIME-WAIT (timewait.go)
	}
	c.sndUna, c.sndNxt, c.sndMax = c.iss, c.iss+1, c.iss+1
	c.bufSeq = c.iss + 1
	c.recover = c.iss
	c.sndWnd, c.sndWl1 = seg.wnd, seg.seq
	c.initCC()
	c.setState(SynReceived)
	if err := p.hashConn(c, false); err != nil {
		c.setState(Closed)
		return err
	}
	c.rttTime = p.clk.Now()
	_ = c.transmit(c.iss, 0, header.SYN|header.ACK)
	c.armRTO()
	return nil
}

// routeFlow routes s.flow through the network layer of its family, which
// becomes the socket's (s.ip, s.v6).
func (s *Sock) routeFlow() (route.Result, error) {
	ip, ok := s.p.af(s.flow.Dst)
	if !ok {
		return route.Result{}, syscall.EAFNOSUPPORT
	}
	s.ip, s.v6 = ip, s.flow.Dst.Is6()
	return ip.RouteOutput(s.flow)
}

// setRoute takes the path MTU and offloads of the output NIC (sk_setup_caps).
func (s *Sock) setRoute(res route.Result) {
	mtu, caps := s.p.device(res.NIC)
	if res.MTU > 0 && res.MTU < mtu {
		mtu = res.MTU
	}
	// A path MTU the network layer learnt (RFC 8201 §4: ipv6 keeps one
	// per destination) holds for a new connection too.
	if pm, ok := s.ip.(interface{ PathMTU(route.Flow) (int, error) }); ok && res.Type != route.Local {
		if m, err := pm.PathMTU(s.flow); err == nil && m < mtu {
			mtu = m
		}
	}
	s.routeMTU = mtu
	s.gso = caps.Has(linkGSO)
}

// leaveParent takes a child that died in SYN-RECEIVED out of its
// listener's SYN queue. Called with c.mu held (child before listener).
func (c *Sock) leaveParent() {
	l := c.parent
	if l == nil {
		return
	}
	l.mu.Lock()
	l.synQ--
	l.mu.Unlock()
	c.parent = nil
}

// closeListener is inet_csk_listen_stop: the listener leaves the table
// and every child not yet accepted is reset.
func (l *Sock) closeListener() {
	l.setState(Closed)
	l.p.unhash(l)
	q := l.acceptQ
	l.acceptQ = nil
	l.cond.Broadcast()
	l.mu.Unlock()
	for _, c := range q {
		c.mu.Lock()
		c.parent = nil
		if c.state != Closed {
			c.sendReset()
			c.done(syscall.ECONNRESET)
		}
		c.mu.Unlock()
	}
	l.mu.Lock()
}
