package tcp

import (
	"context"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// The user side of a socket (tcp.c: tcp_sendmsg, tcp_recvmsg,
// tcp_shutdown, tcp_close; af_inet.c: inet_stream_connect,
// inet_accept). Sock methods return errno values (syscall.Errno),
// os.ErrDeadlineExceeded, io.EOF and net.ErrClosed; Conn and Listener
// (conn.go) wrap them in *net.OpError as the net package does.

// wait blocks on s.cond until a broadcast, arming the deadline timer;
// it returns os.ErrDeadlineExceeded once deadline passed. s.mu is held.
func (s *Sock) wait(deadline time.Time) error {
	if !deadline.IsZero() {
		if !s.now().Before(deadline) {
			return os.ErrDeadlineExceeded
		}
		if d := s.dlTimer.Deadline(); d.IsZero() || deadline.Before(d) {
			s.dlTimer.ResetAt(deadline)
		}
	}
	s.cond.Wait()
	return nil
}

// Bind sets the local address; port 0 picks one at Listen or Connect.
func (s *Sock) Bind(addr netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bound || s.state != Closed || s.hashed {
		return syscall.EINVAL
	}
	a, _, err := s.p.sockAddr(addr.Addr())
	if err != nil {
		return err
	}
	if a.IsValid() {
		if _, ok := s.p.af(a); !ok {
			return syscall.EAFNOSUPPORT
		}
	}
	s.id.laddr, s.id.lport, s.bound = a, addr.Port(), true
	return nil
}

// Listen turns s into a listener (inet_listen) with an accept queue of
// backlog connections (0 = DefaultBacklog, at most MaxBacklog).
func (s *Sock) Listen(backlog int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == Listen {
		s.backlog = clampBacklog(backlog)
		return nil
	}
	if s.state != Closed || s.hashed {
		return syscall.EINVAL
	}
	s.backlog = clampBacklog(backlog)
	if err := s.p.hashListener(s, s.id.laddr, s.id.lport); err != nil {
		return err
	}
	s.bound = true
	s.setState(Listen)
	return nil
}

func clampBacklog(n int) int {
	if n <= 0 {
		return DefaultBacklog
	}
	return min(n, MaxBacklog)
}

// Accept waits for an established connection (inet_csk_accept).
func (s *Sock) Accept(deadline time.Time) (*Sock, error) {
	s.mu.Lock()
	for len(s.acceptQ) == 0 {
		if s.state != Listen {
			s.mu.Unlock()
			return nil, net.ErrClosed
		}
		if s.nonblock {
			s.mu.Unlock()
			return nil, syscall.EAGAIN
		}
		if err := s.wait(deadline); err != nil {
			s.mu.Unlock()
			return nil, err
		}
	}
	c := s.acceptQ[0]
	copy(s.acceptQ, s.acceptQ[1:])
	s.acceptQ[len(s.acceptQ)-1] = nil
	s.acceptQ = s.acceptQ[:len(s.acceptQ)-1]
	s.mu.Unlock()
	c.mu.Lock()
	c.parent, c.accepted = nil, true
	c.mu.Unlock()
	return c, nil
}

// Connect is a blocking connect without a deadline (socket.Socket).
func (s *Sock) Connect(addr netip.AddrPort) error {
	return s.ConnectContext(context.Background(), addr)
}

// ConnectContext is tcp_v4_connect + inet_wait_for_connect: it sends the
// SYN and waits until the handshake completes, fails, or ctx ends
// (which aborts the attempt).
func (s *Sock) ConnectContext(ctx context.Context, raddr netip.AddrPort) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startConnect(raddr); err != nil {
		return err
	}
	if s.nonblock {
		return syscall.EINPROGRESS
	}
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	deadline, _ := ctx.Deadline()
	for s.state == SynSent || s.state == SynReceived {
		err := ctx.Err()
		if err == nil {
			err = s.wait(deadline)
		}
		if err != nil {
			if errorsIsDeadline(err) {
				err = errDialTimeout
			}
			s.p.count(AttemptFails)
			s.done(err)
			return err
		}
	}
	if s.state == Closed {
		if s.err != nil {
			return s.err
		}
		return syscall.ECONNREFUSED
	}
	return nil
}

// errDialTimeout is a connect that ran out of time, as net's: "i/o
// timeout", a net.Error with Timeout(), and errors.Is both
// os.ErrDeadlineExceeded and context.DeadlineExceeded.
var errDialTimeout error = dialTimeout{}

type dialTimeout struct{}

func (dialTimeout) Error() string   { return "i/o timeout" }
func (dialTimeout) Timeout() bool   { return true }
func (dialTimeout) Temporary() bool { return true }
func (dialTimeout) Is(target error) bool {
	return target == os.ErrDeadlineExceeded || target == context.DeadlineExceeded
}

func errorsIsDeadline(err error) bool {
	return err == context.DeadlineExceeded || err == os.ErrDeadlineExceeded
}

// startConnect is tcp_v4_connect + tcp_connect: route, pick the port,
// the ISN (RFC 6528) and send the SYN (RFC 9293 §3.5, §3.10.1).
func (s *Sock) startConnect(raddr netip.AddrPort) error {
	switch {
	case s.state == Listen:
		return syscall.EINVAL
	case s.state == SynSent || s.state == SynReceived:
		return syscall.EALREADY
	case s.state != Closed || s.hashed:
		return syscall.EISCONN
	case s.err != nil:
		return syscall.EBADF
	}
	dst, znic, err := s.p.sockAddr(raddr.Addr())
	if err != nil {
		return err
	}
	if _, ok := s.p.af(dst); !ok || raddr.Port() == 0 {
		return syscall.EAFNOSUPPORT
	}
	if la := s.id.laddr; la.IsValid() && la != netip.IPv6Unspecified() && la.Is4() != dst.Is4() {
		// Bound to an address of the other family (the IPv6 wildcard
		// takes both, as an AF_INET6 socket without IPV6_V6ONLY).
		return syscall.EAFNOSUPPORT
	}
	raddr = netip.AddrPortFrom(dst, raddr.Port())
	p := s.p
	s.flow = route.Flow{Src: s.id.laddr, Dst: dst, Proto: header.ProtoTCP, DontFragment: true,
		Transparent: s.transparent, Mark: s.mark, NIC: znic}
	if s.flow.Src.IsValid() && s.flow.Src.IsUnspecified() {
		s.flow.Src = netip.Addr{}
	}
	fl := s.flow
	res, err := s.routeFlow()
	if err != nil {
		return err
	}
	if !fl.Src.IsValid() {
		s.id.laddr = res.Src
	}
	s.id.raddr, s.id.rport = raddr.Addr(), raddr.Port()
	if err := p.hashConnect(s); err != nil {
		return err
	}
	s.flow = route.Flow{Src: s.id.laddr, Dst: s.id.raddr, Proto: header.ProtoTCP, DontFragment: true,
		SrcPort: s.id.lport, DstPort: s.id.rport, Transparent: s.transparent, Mark: s.mark, NIC: znic}
	s.setRoute(res)
	s.wsOK, s.tsOK, s.sackOK = !p.cfg.NoWindowScaling, !p.cfg.NoTimestamps, !p.cfg.NoSACK
	if s.wsOK {
		s.rcvWscale = wscaleFor(s.rcvMaxSpace())
	}
	s.tsOff = p.tsOffset(s.id)
	s.ecnOK = p.cfg.ECN && !p.cfg.NoECN
	s.peerMSS = 536
	s.syncMSS()
	s.iss = p.isn(s.id)
	s.sndUna, s.sndNxt, s.sndMax = s.iss, s.iss+1, s.iss+1
	s.bufSeq, s.recover = s.iss+1, s.iss
	s.initCC()
	s.setState(SynSent)
	p.count(ActiveOpens)
	s.rttTime = p.clk.Now()
	if err := s.transmit(s.iss, 0, header.SYN); err != nil {
		s.done(err)
		return err
	}
	s.armRTO()
	return nil
}

// Read is tcp_recvmsg: it copies queued in-order bytes; io.EOF after the
// peer's FIN; the connection's error after a reset or timeout.
func (s *Sock) Read(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.rcvq.len() > 0 && !s.reading {
			if len(b) == 0 {
				return 0, nil
			}
			n := s.rcvq.read(b)
			s.nowScope(s.p.clk.Now())
			s.rcvAutotune(n)
			s.rcvSpaceFreed()
			s.nowEnd()
			return n, nil
		}
		switch {
		case s.err != nil:
			return 0, s.err
		case s.rdShut && s.orphan:
			return 0, net.ErrClosed
		case s.finRcvd || s.rdShut:
			return 0, io.EOF
		case s.state == Closed:
			return 0, syscall.ENOTCONN
		case len(b) == 0:
			return 0, nil
		case s.nonblock:
			return 0, syscall.EAGAIN
		}
		if err := s.wait(s.rdDeadline); err != nil {
			return 0, err
		}
	}
}

// readErr is what a read of an empty receive queue returns (tcp_recvmsg
// without data): the connection's error, EOF after the peer's FIN or our
// shutdown, ENOTCONN when closed, else nil (the read would wait).
func (s *Sock) readErr() error {
	switch {
	case s.err != nil:
		return s.err
	case s.rdShut && s.orphan:
		return net.ErrClosed
	case s.finRcvd || s.rdShut:
		return io.EOF
	case s.state == Closed:
		return syscall.ENOTCONN
	}
	return nil
}

// VecWriter takes the bytes ReadTo hands over: WriteVec writes the
// slices in order (a relay's sendmsg to its host socket) and says how
// many bytes it took.
type VecWriter interface {
	WriteVec(v [][]byte) (int, error)
}

// VecReader fills the space WriteFrom offers: ReadVec fills the slices in
// order (a relay's readv from its host socket) and says how many bytes it
// put there.
type VecReader interface {
	ReadVec(v [][]byte) (int, error)
}

// VecFunc makes a function a VecWriter and a VecReader. A relay
// implements the interfaces on itself instead, so a pump allocates no
// closure per connection.
type VecFunc func(v [][]byte) (int, error)

// WriteVec calls f.
func (f VecFunc) WriteVec(v [][]byte) (int, error) { return f(v) }

// ReadVec calls f.
func (f VecFunc) ReadVec(v [][]byte) (int, error) { return f(v) }

// ReadTo hands the queued in-order bytes to w as they lie in the received
// SKBs, without copying them (a relay writev(2)s them to its host socket),
// and consumes the n bytes w reports; at most len(v) slices, which ReadTo
// fills and clears again. It never blocks: with nothing queued it returns
// the connection's error, io.EOF after the peer's FIN, or EAGAIN. w runs
// without the socket lock, so receive goes on meanwhile; its slices stay
// valid until it returns (a Close in the meantime frees them afterwards).
// One reader at a time: Read waits while a ReadTo's w runs.
func (s *Sock) ReadTo(v [][]byte, w VecWriter) (int, error) {
	s.mu.Lock()
	if s.rcvq.len() == 0 || len(v) == 0 {
		err := s.readErr()
		if err == nil {
			err = syscall.EAGAIN
		}
		s.mu.Unlock()
		return 0, err
	}
	if s.reading {
		s.mu.Unlock()
		return 0, syscall.EALREADY
	}
	k, total := s.rcvq.peek(v, math.MaxInt)
	s.reading = true
	s.mu.Unlock()

	n, err := w.WriteVec(v[:k])
	clear(v[:k])
	n = min(max(n, 0), total)

	s.mu.Lock()
	s.reading = false
	if s.rcvqDeferRelease {
		s.rcvqDeferRelease = false
		s.rcvq.release()
	} else if n > 0 {
		s.nowScope(s.p.clk.Now())
		s.rcvq.discard(n)
		s.rcvAutotune(n)
		s.rcvSpaceFreed()
		s.nowEnd()
	}
	s.cond.Broadcast() // a Read waiting for the queue
	s.mu.Unlock()
	return n, err
}

// releaseRcvq frees the receive queue now, or when a ReadTo's callback
// stops using its bytes.
func (s *Sock) releaseRcvq() {
	if s.reading {
		s.rcvqDeferRelease = true
		return
	}
	s.rcvq.release()
}

// rcvSpaceFreed is tcp_cleanup_rbuf: after a read, send a window update
// when the window grew enough to matter — RFC 9293 §3.8.6.2.2 receiver
// SWS avoidance: by min(RCV.BUFF/2, Eff.snd.MSS) at least, and (as
// Linux) when the new window at least doubles the advertised one.
func (s *Sock) rcvSpaceFreed() {
	if !s.state.synchronized() || s.finRcvd || s.ackDeferred {
		return // the batch's deferred ACK carries the window
	}
	adv := int(int32(s.rcvAdv - s.rcvNxt))
	if adv < 0 {
		adv = 0
	}
	free := s.rcvBufLimit - s.rcvq.len()
	if free-adv >= min(s.rcvBufLimit/2, s.mss) && free >= 2*adv {
		s.sendAck()
	}
}

// Write is tcp_sendmsg: copy into the send buffer, blocking while it is
// full (sk_stream_wait_memory) until the write deadline, and push.
func (s *Sock) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	for len(b) > 0 {
		switch {
		case s.err != nil:
			return total, s.err
		case s.wrShut:
			if s.orphan {
				return total, net.ErrClosed
			}
			return total, syscall.EPIPE
		case s.state == SynSent || s.state == SynReceived:
			if err := s.wait(s.wrDeadline); err != nil {
				return total, err
			}
			continue
		case s.state != Established && s.state != CloseWait:
			if s.state == Closed && !s.hashed && s.sndMax == 0 {
				return total, syscall.ENOTCONN
			}
			return total, syscall.EPIPE
		case s.writing:
			if err := s.wait(s.wrDeadline); err != nil {
				return total, err
			}
			continue
		}
		space := s.sndBufLimit - s.sndBuf.len()
		if space <= 0 {
			if s.nonblock {
				if total > 0 {
					return total, nil
				}
				return 0, syscall.EAGAIN
			}
			if err := s.wait(s.wrDeadline); err != nil {
				return total, err
			}
			continue
		}
		n := min(space, len(b))
		s.sndBuf.write(b[:n], s.chunkGoal())
		b = b[n:]
		total += n
		s.nowScope(s.p.clk.Now())
		s.writeXmit()
		s.nowEnd()
	}
	return total, nil
}

// writeErr is what a write finds when the connection cannot take data
// (Write's checks), nil when it can.
func (s *Sock) writeErr() error {
	switch {
	case s.err != nil:
		return s.err
	case s.wrShut:
		if s.orphan {
			return net.ErrClosed
		}
		return syscall.EPIPE
	case s.state == SynSent || s.state == SynReceived:
		return syscall.EAGAIN
	case s.state != Established && s.state != CloseWait:
		if s.state == Closed && !s.hashed && s.sndMax == 0 {
			return syscall.ENOTCONN
		}
		return syscall.EPIPE
	}
	return nil
}

// WriteFrom lets r fill the send buffer's free space directly (a relay
// readv(2)s its host socket into it: no copy through a buffer of its
// own), then queues the n bytes r reports and pushes them out as Write
// does. r gets the free space as up to len(v) slices in v — the tail
// chunk's room, then fresh chunks' — at most the free send buffer space
// in all, to fill in that order; the bytes land in the chunks that
// become the segments, so they are not copied again on our side. r runs
// without the socket lock, so ACKs are processed meanwhile. WriteFrom
// never blocks: with no space it returns EAGAIN, on a connection that
// cannot send Write's error. A connection that ends while r runs drops
// what r read. One writer at a time: Write waits while a WriteFrom's r
// runs.
func (s *Sock) WriteFrom(v [][]byte, r VecReader) (int, error) {
	s.mu.Lock()
	if err := s.writeErr(); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	if s.writing {
		s.mu.Unlock()
		return 0, syscall.EALREADY
	}
	space := s.sndBufLimit - s.sndBuf.len()
	if space <= 0 || len(v) == 0 {
		s.mu.Unlock()
		return 0, syscall.EAGAIN
	}
	v = s.sndBuf.reserve(space, s.chunkGoal(), v)
	s.writing = true
	s.mu.Unlock()

	total := 0
	for _, b := range v {
		total += len(b)
	}
	n, rerr := r.ReadVec(v)
	clear(v) // the chunks are the queue's again
	n = min(max(n, 0), total)

	s.mu.Lock()
	s.writing = false
	if err := s.writeErr(); err != nil && n > 0 {
		s.sndBuf.commit(0)
		s.cond.Broadcast()
		s.mu.Unlock()
		return 0, err
	}
	s.sndBuf.commit(n)
	if n > 0 {
		s.nowScope(s.p.clk.Now())
		s.writeXmit()
		s.nowEnd()
	}
	s.cond.Broadcast() // a Write waiting for the ring
	s.mu.Unlock()
	return n, rerr
}

// SendSpace is the free send buffer space a WriteFrom would offer now (0
// when the connection cannot take data).
func (s *Sock) SendSpace() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writeErr() != nil {
		return 0
	}
	return max(s.sndBufLimit-s.sndBuf.len(), 0)
}

// Shutdown is tcp_shutdown: read closes the receive side (further reads
// see EOF), write queues the FIN after the data (RFC 9293 §3.10.4 CLOSE).
func (s *Sock) Shutdown(read, write bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.state.synchronized() && s.state != SynReceived && s.state != SynSent {
		return syscall.ENOTCONN
	}
	if read {
		s.rdShut = true
		s.cond.Broadcast()
	}
	if write {
		s.shutdownWrite()
	}
	return nil
}

func (s *Sock) shutdownWrite() {
	if s.wrShut {
		return
	}
	s.wrShut = true
	switch s.state {
	case SynSent:
		s.done(nil)
		return
	case SynReceived, Established:
		s.finQueued = true
		if s.state == Established {
			s.setState(FinWait1)
		}
	case CloseWait:
		s.finQueued = true
		s.setState(LastAck)
	default:
		return
	}
	s.writeXmit()
	s.cond.Broadcast()
}

// Close is tcp_close: a listener stops; a connection with unread data,
// or with linger 0, is reset (RFC 9293 §3.10.4 ABORT; RFC 2525 §2.17);
// otherwise the FIN is queued and the protocol finishes on its own.
func (s *Sock) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.orphan {
		return net.ErrClosed
	}
	s.orphan, s.rdShut = true, true
	s.dlTimer.Stop()
	s.cond.Broadcast()
	switch s.state {
	case Listen:
		s.closeListener()
		return nil
	case Closed:
		s.p.unhash(s)
		s.releaseRcvq()
		return nil
	case SynSent:
		s.wrShut = true
		s.done(nil)
		return nil
	}
	if s.rcvq.len() > 0 || s.lingerZero {
		if s.rcvq.len() > 0 {
			s.p.count(TCPAbortOnClose)
		}
		if s.state != TimeWait {
			s.sendReset()
		}
		s.wrShut = true
		s.done(nil)
		return nil
	}
	s.releaseRcvq()
	s.shutdownWrite()
	if s.state == FinWait2 {
		s.kaReset(s.p.cfg.FinTimeout)
	}
	return nil
}

// SetReadDeadline sets the instant (on the stack's clock) after which
// blocked and future reads fail with os.ErrDeadlineExceeded.
func (s *Sock) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdDeadline = t
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// SetWriteDeadline is SetReadDeadline for writes.
func (s *Sock) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.wrDeadline = t
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// SetNoDelay turns Nagle's algorithm off (TCP_NODELAY, RFC 9293 §3.7.4
// MUST-17 lets the application disable it) and pushes what waits.
func (s *Sock) SetNoDelay(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodelay = on
	if on {
		s.writeXmit()
	}
}

// SetCork holds partial segments back until uncorked (TCP_CORK).
func (s *Sock) SetCork(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cork = on
	if !on {
		s.writeXmit()
	}
}

// SetNonblock makes Read, Write, Accept and Connect return EAGAIN (or
// EINPROGRESS) instead of blocking (O_NONBLOCK).
func (s *Sock) SetNonblock(on bool) {
	s.mu.Lock()
	s.nonblock = on
	s.mu.Unlock()
}

// SetKeepAlive configures keepalive (SO_KEEPALIVE, TCP_KEEPIDLE,
// TCP_KEEPINTVL, TCP_KEEPCNT); zero durations and count keep the
// current values.
func (s *Sock) SetKeepAlive(on bool, idle, intvl time.Duration, count int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keepalive = on
	if idle > 0 {
		s.keepIdle = idle
	}
	if intvl > 0 {
		s.keepIntvl = intvl
	}
	if count > 0 {
		s.keepCnt = count
	}
	if on {
		s.armKeepalive()
		if s.keepalive && s.state.synchronized() && s.state != TimeWait {
			s.kaReset(s.keepIdle) // a new idle time counts from now
		}
	} else if s.state != TimeWait && s.state != FinWait2 {
		s.kaStop()
	}
}

// SetLingerZero makes Close abortive (SO_LINGER with l_linger 0): RST.
func (s *Sock) SetLingerZero(on bool) {
	s.mu.Lock()
	s.lingerZero = on
	s.mu.Unlock()
}

// SetBuffers sets the send and receive buffer bounds (SO_SNDBUF,
// SO_RCVBUF) before the connection starts; 0 keeps a value.
func (s *Sock) SetBuffers(snd, rcv int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if snd > 0 {
		s.sndBufLimit = min(max(snd, MinBuf), MaxBuf)
	}
	if rcv > 0 && s.state == Closed {
		s.rcvBufLimit = min(max(rcv, MinBuf), MaxBuf)
		s.rcvAutoOff = true
	}
}

// LocalAddr is the bound or chosen local address.
func (s *Sock) LocalAddr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return netip.AddrPortFrom(s.id.laddr, s.id.lport)
}

// RemoteAddr is the peer, invalid before Connect.
func (s *Sock) RemoteAddr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.id.raddr.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(s.id.raddr, s.id.rport)
}

// Buffered reports the bytes waiting to be read and those not yet
// acknowledged (SIOCINQ, SIOCOUTQ).
func (s *Sock) Buffered() (in, out int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rcvq.len(), s.sndBuf.len()
}

// Info is a TCP_INFO-like snapshot (struct tcp_info).
type Info struct {
	State                     State
	Options                   InfoOptions
	SndWscale, RcvWscale      uint8
	RTO, RTT, RTTVar, MinRTT  time.Duration
	MSS, PeerMSS              int
	Cwnd, Ssthresh            uint32 // segments
	Backoff                   int    // tcpi_backoff: retransmissions of the current segment
	TotalRetrans              uint64
	BytesAcked, BytesReceived uint64
	SegsOut, SegsIn           uint64
	SndWnd, RcvWnd            uint32
	NotSent, Unacked          int
	CongestionControl         string
	InRecovery                bool
}

// InfoOptions are the negotiated options (tcpi_options).
type InfoOptions struct{ Timestamps, SACK, WindowScale bool }

// Info returns the connection's state and counters.
func (s *Sock) Info() Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := Info{State: s.state, Options: InfoOptions{s.tsOK, s.sackOK, s.wsOK},
		SndWscale: s.sndWscale, RcvWscale: s.rcvWscale, RTO: s.rto, RTT: s.srtt, RTTVar: s.rttvar,
		MinRTT: s.minRTT, MSS: s.mss, PeerMSS: s.peerMSS, Cwnd: s.cs.Cwnd, Ssthresh: s.cs.Ssthresh,
		Backoff: s.backoff, TotalRetrans: s.retransTotal, BytesAcked: s.bytesAcked,
		BytesReceived: s.bytesReceived, SegsOut: s.segsOut, SegsIn: s.segsIn, SndWnd: s.sndWnd,
		RcvWnd: s.rcvWnd(), InRecovery: s.inRecovery}
	if s.ca != nil {
		in.CongestionControl = s.ca.Name()
	}
	if s.state.synchronized() {
		in.Unacked = int(int32(s.sndNxt - s.sndUna))
		in.NotSent = max(int(int32(s.dataEnd()-s.sndNxt)), 0)
	}
	return in
}
