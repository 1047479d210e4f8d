package tcp

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// SYN cookies (RFC 4987 §3.6; net/ipv4/syncookies.c). When a listener's
// SYN queue is full, the SYN,ACK's sequence number encodes the
// connection instead of a child socket: an ACK that returns it
// (SEG.ACK-1) rebuilds the connection in ESTABLISHED.
//
// Layout of the cookie (ISS):
//
//	bits 31..27  t: the 64-second counter mod 32 when it was made
//	bits 26..25  the index of the peer's MSS in cookieMSS
//	bits 24..0   a keyed hash of the 4-tuple, the peer's ISN, t and the index
//
// A cookie is valid for the current and the previous counter value
// (64–128 s, Linux's MAX_SYNCOOKIE_AGE is two minutes). Options the
// cookie cannot hold travel in the low bits of our TSval, which the
// peer echoes in TSecr (as Linux's cookie_init_timestamp): 4 bits of the
// peer's window scale (15 = none) and the SACK-permitted bit. Without
// timestamps a cookie connection has neither window scaling nor SACK
// (RFC 4987 §3.6 names this loss).

// cookieMSS are the MSS values a cookie can name (Linux msstab).
var cookieMSS = [4]uint16{536, 1300, 1440, 1460}

const (
	cookiePeriodBits = 6 // 64-second periods
	cookieHashMask   = 1<<25 - 1
)

func (p *Proto) cookieCounter() uint32 {
	return uint32(p.clk.Now().Sub(p.epoch).Seconds()) >> cookiePeriodBits
}

func (p *Proto) cookieHash(t tuple, peerISN, count, mssIdx uint32) uint32 {
	var b [32 + 16 + 16 + 4 + 12]byte
	copy(b[:], p.secret[:])
	la, ra := t.laddr.As16(), t.raddr.As16()
	copy(b[32:], la[:])
	copy(b[48:], ra[:])
	binary.BigEndian.PutUint16(b[64:], t.lport)
	binary.BigEndian.PutUint16(b[66:], t.rport)
	binary.BigEndian.PutUint32(b[68:], peerISN)
	binary.BigEndian.PutUint32(b[72:], count&31)
	binary.BigEndian.PutUint32(b[76:], mssIdx)
	h := sha256.Sum256(b[:])
	return binary.BigEndian.Uint32(h[:]) & cookieHashMask
}

// makeCookie returns the ISS encoding a SYN from the peer.
func (p *Proto) makeCookie(t tuple, peerISN uint32, mss uint16) uint32 {
	idx := uint32(0)
	for i, m := range cookieMSS {
		if mss >= m {
			idx = uint32(i)
		}
	}
	c := p.cookieCounter() & 31
	return c<<27 | idx<<25 | p.cookieHash(t, peerISN, c, idx)
}

// checkCookie validates SEG.ACK-1 against the peer's ISN (SEG.SEQ-1)
// and returns the MSS it encodes.
func (p *Proto) checkCookie(t tuple, cookie, peerISN uint32) (uint16, bool) {
	c := cookie >> 27
	idx := cookie >> 25 & 3
	now := p.cookieCounter()
	if (now-c)&31 > 1 {
		return 0, false
	}
	if p.cookieHash(t, peerISN, c, idx) != cookie&cookieHashMask {
		return 0, false
	}
	return cookieMSS[idx], true
}

// sendCookieSynAck answers a SYN statelessly (tcp_v4_send_synack with
// cookie_v4_init_sequence).
func (l *Sock) sendCookieSynAck(seg *segment, t tuple) {
	p := l.p
	mss := uint16(536)
	if seg.opts.HasMSS {
		mss = seg.opts.MSS
	}
	ip, ok := p.af(t.raddr)
	if !ok {
		return
	}
	fl := route.Flow{Src: t.laddr, Dst: t.raddr, Proto: header.ProtoTCP}
	if t.raddr.IsLinkLocalUnicast() {
		fl.NIC = seg.nic
	}
	res, err := ip.RouteOutput(fl)
	if err != nil {
		return
	}
	mtu, _ := p.device(res.NIC)
	if res.MTU > 0 && res.MTU < mtu {
		mtu = res.MTU
	}
	iss := p.makeCookie(t, seg.seq, mss)
	var o header.TCPOptions
	o.HasMSS, o.MSS = true, uint16(mtu-netHeaderLen(t.raddr.Is6())-header.TCPMinSize)
	if seg.opts.HasTS && !p.cfg.NoTimestamps {
		o.HasTS, o.TSEcr = true, seg.opts.TSVal
		bits := uint32(15)
		if seg.opts.HasWScale && !p.cfg.NoWindowScaling {
			bits = uint32(seg.opts.WScale)
			o.HasWScale, o.WScale = true, wscaleFor(l.rcvMaxSpace())
		}
		if seg.opts.SACKPermitted && !p.cfg.NoSACK {
			bits |= 16
			o.SACKPermitted = true
		}
		o.TSVal = (p.tsNow()+p.tsOffset(t))&^31 | bits
	}
	var ob [header.TCPMaxOptions]byte
	n := header.EncodeTCPOptions(ob[:], &o)
	p.count(SyncookiesSent)
	p.sendControl(t.laddr, t.raddr, header.TCPFields{SrcPort: t.lport, DstPort: t.rport, Seq: iss,
		Ack: seg.seq + 1, Flags: header.SYN | header.ACK, Window: uint16(min(l.rcvBufLimit, 0xffff)), Options: ob[:n]}, fl.NIC, false)
}

// cookieAck is cookie_v4_check: an ACK to a listener may complete a
// cookie handshake. It reports whether it took the segment.
func (l *Sock) cookieAck(seg *segment, t tuple) bool {
	p := l.p
	if seg.hasSyn || seg.hasRst || p.cfg.NoSynCookies {
		return false
	}
	mss, ok := p.checkCookie(t, seg.ack-1, seg.seq-1)
	if !ok {
		p.count(SyncookiesFailed)
		return false
	}
	l.mu.Lock()
	if l.state != Listen || len(l.acceptQ) >= l.backlog {
		l.mu.Unlock()
		p.count(ListenOverflows)
		p.count(ListenDrops)
		seg.skb.Free(DropListenOverflow)
		return true
	}
	c := p.NewSock()
	c.nodelay, c.keepalive = l.nodelay, l.keepalive
	c.keepIdle, c.keepIntvl, c.keepCnt = l.keepIdle, l.keepIntvl, l.keepCnt
	c.sndBufLimit, c.rcvBufLimit, c.rcvAutoOff = l.sndBufLimit, l.rcvBufLimit, l.rcvAutoOff
	l.mu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	c.id = t
	c.flow = route.Flow{Src: t.laddr, Dst: t.raddr, Proto: header.ProtoTCP, DontFragment: true,
		SrcPort: t.lport, DstPort: t.rport}
	if t.raddr.IsLinkLocalUnicast() {
		c.flow.NIC = seg.nic
	}
	res, err := c.routeFlow()
	if err != nil {
		seg.skb.Free(DropNoSocket)
		return true
	}
	c.setRoute(res)
	c.irs = seg.seq - 1
	c.rcvNxt, c.rcvAdv = seg.seq, seg.seq
	c.iss = seg.ack - 1
	c.sndUna, c.sndNxt, c.sndMax, c.bufSeq, c.recover = c.iss+1, c.iss+1, c.iss+1, c.iss+1, c.iss
	c.tsOff = p.tsOffset(t)
	c.peerMSS = int(mss)
	if seg.opts.HasTS && !p.cfg.NoTimestamps {
		c.tsOK = true
		c.tsRecent, c.tsRecentTime = seg.opts.TSVal, p.clk.Now()
		bits := seg.opts.TSEcr & 31
		if ws := bits & 15; ws != 15 && !p.cfg.NoWindowScaling {
			c.wsOK, c.sndWscale, c.rcvWscale = true, uint8(min(ws, header.TCPMaxWScale)), wscaleFor(c.rcvMaxSpace())
		}
		c.sackOK = bits&16 != 0 && !p.cfg.NoSACK
	}
	c.syncMSS()
	c.rcvMSS = c.mss
	c.initCC()
	c.sndWnd, c.sndWl1, c.sndWl2 = seg.wnd<<c.sndWscale, seg.seq, seg.ack
	c.maxSndWnd = c.sndWnd
	if err := p.hashConn(c, false); err != nil {
		seg.skb.Free(DropListenOverflow)
		return true
	}
	c.establish()
	p.count(SyncookiesRecv)
	p.count(PassiveOpens)
	l.mu.Lock()
	if l.state != Listen {
		l.mu.Unlock()
		c.sendReset()
		c.done(nil)
		seg.skb.Free(DropNoSocket)
		return true
	}
	l.acceptQ = append(l.acceptQ, c)
	l.cond.Broadcast()
	l.mu.Unlock()
	// The ACK may carry data (and a FIN): process it as any segment.
	if len(seg.data) > 0 || seg.hasFin {
		c.dataQueue(seg)
	} else {
		seg.skb.Consume()
	}
	return true
}
