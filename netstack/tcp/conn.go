package tcp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// Conn adapts a connected Sock to net.Conn, like *net.TCPConn: errors are
// *net.OpError with Net "tcp", errnos inside *os.SyscallError, so
// errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
// errors.Is(err, os.ErrDeadlineExceeded) and errors.Is(err,
// net.ErrClosed) hold; io.EOF is returned bare, as net does.
type Conn struct{ s *Sock }

var _ net.Conn = (*Conn)(nil)

// NewConn wraps s.
func NewConn(s *Sock) *Conn { return &Conn{s: s} }

// Sock is the wrapped socket.
func (c *Conn) Sock() *Sock { return c.s }

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.s.Read(b)
	if err != nil && err != io.EOF {
		err = c.opError("read", err)
	}
	return n, err
}

func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.s.Write(b)
	if err != nil {
		err = c.opError("write", err)
	}
	return n, err
}

// Close closes the connection (see Sock.Close).
func (c *Conn) Close() error {
	if err := c.s.Close(); err != nil {
		return c.opError("close", err)
	}
	return nil
}

// CloseWrite shuts the write side: the peer reads EOF (half-close).
func (c *Conn) CloseWrite() error {
	if err := c.s.Shutdown(false, true); err != nil {
		return c.opError("close", err)
	}
	return nil
}

// CloseRead shuts the read side.
func (c *Conn) CloseRead() error {
	if err := c.s.Shutdown(true, false); err != nil {
		return c.opError("close", err)
	}
	return nil
}

func (c *Conn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.s.LocalAddr()) }
func (c *Conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.s.RemoteAddr()) }

func (c *Conn) SetDeadline(t time.Time) error {
	_ = c.s.SetReadDeadline(t)
	return c.s.SetWriteDeadline(t)
}
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.s.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.s.SetWriteDeadline(t) }

// SetNoDelay is (*net.TCPConn).SetNoDelay.
func (c *Conn) SetNoDelay(on bool) error { c.s.SetNoDelay(on); return nil }

// SetLinger with 0 makes Close send RST; other values keep the default.
func (c *Conn) SetLinger(sec int) error { c.s.SetLingerZero(sec == 0); return nil }

// SetKeepAlive turns keepalive on or off.
func (c *Conn) SetKeepAlive(on bool) error { c.s.SetKeepAlive(on, 0, 0, 0); return nil }

// SetKeepAliveConfig is (*net.TCPConn).SetKeepAliveConfig (SO_KEEPALIVE,
// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT), with its contract: a zero
// Idle or Interval is 15 s and a zero Count 9 (Go's defaults), a negative
// one leaves the socket's value (DefaultKeepIdle, DefaultKeepIntvl,
// DefaultKeepCount unless set) as it is.
func (c *Conn) SetKeepAliveConfig(cfg net.KeepAliveConfig) error {
	pick := func(v, def time.Duration) time.Duration {
		switch {
		case v == 0:
			return def
		case v < 0:
			return 0 // unchanged
		}
		return v
	}
	count := cfg.Count
	switch {
	case count == 0:
		count = goKeepCount
	case count < 0:
		count = 0 // unchanged
	}
	c.s.SetKeepAlive(cfg.Enable, pick(cfg.Idle, goKeepIdle), pick(cfg.Interval, goKeepIntvl), count)
	return nil
}

// Go's defaults for a zero KeepAliveConfig field (net.KeepAliveConfig).
const (
	goKeepIdle  = 15 * time.Second
	goKeepIntvl = 15 * time.Second
	goKeepCount = 9
)

// Info is the TCP_INFO-like snapshot.
func (c *Conn) Info() Info { return c.s.Info() }

func (c *Conn) opError(op string, err error) error {
	return opError(op, c.s.LocalAddr(), c.s.RemoteAddr(), err)
}

func opError(op string, laddr, raddr netip.AddrPort, err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = os.NewSyscallError(syscallName(op), errno)
	}
	oe := &net.OpError{Op: op, Net: "tcp", Err: err}
	if laddr.IsValid() {
		oe.Source = net.TCPAddrFromAddrPort(laddr)
	}
	if raddr.IsValid() {
		oe.Addr = net.TCPAddrFromAddrPort(raddr)
	}
	return oe
}

func syscallName(op string) string {
	switch op {
	case "dial":
		return "connect"
	case "listen":
		return "listen"
	case "accept":
		return "accept"
	}
	return op
}

// Listener adapts a listening Sock to net.Listener, like *net.TCPListener.
type Listener struct {
	s        *Sock
	deadline time.Time
}

var _ net.Listener = (*Listener)(nil)

// Listen opens a listener on laddr (an unspecified address listens on
// every address; port 0 picks one) with the default backlog.
func (p *Proto) Listen(laddr netip.AddrPort, backlog int) (*Listener, error) {
	s := p.NewSock()
	if err := s.Bind(laddr); err != nil {
		return nil, opError("listen", laddr, netip.AddrPort{}, err)
	}
	if err := s.Listen(backlog); err != nil {
		return nil, opError("listen", laddr, netip.AddrPort{}, err)
	}
	return &Listener{s: s}, nil
}

// Sock is the listening socket.
func (l *Listener) Sock() *Sock { return l.s }

// Accept waits for the next connection.
func (l *Listener) Accept() (net.Conn, error) { return l.AcceptTCP() }

// AcceptTCP is Accept returning the concrete type.
func (l *Listener) AcceptTCP() (*Conn, error) {
	c, err := l.s.Accept(l.deadline)
	if err != nil {
		return nil, opError("accept", l.s.LocalAddr(), netip.AddrPort{}, err)
	}
	return &Conn{s: c}, nil
}

// SetDeadline bounds Accept (on the stack's clock).
func (l *Listener) SetDeadline(t time.Time) error {
	l.deadline = t
	l.s.mu.Lock()
	l.s.cond.Broadcast()
	l.s.mu.Unlock()
	return nil
}

// Close stops listening and resets connections not yet accepted.
func (l *Listener) Close() error {
	if err := l.s.Close(); err != nil {
		return opError("close", l.s.LocalAddr(), netip.AddrPort{}, err)
	}
	return nil
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.s.LocalAddr()) }

// Dial opens a connection from laddr (invalid: chosen by routing, an
// ephemeral port) to raddr, bounded by ctx. Errors: ECONNREFUSED when the
// peer resets the SYN, ETIMEDOUT after the SYN retries, ENETUNREACH
// without a route, the context's error when it ends first.
func (p *Proto) Dial(ctx context.Context, laddr, raddr netip.AddrPort) (*Conn, error) {
	return p.dialSock(ctx, p.NewSock(), laddr, raddr)
}

// dialSock binds s to laddr when valid and connects it to raddr.
func (p *Proto) dialSock(ctx context.Context, s *Sock, laddr, raddr netip.AddrPort) (*Conn, error) {
	if laddr.IsValid() {
		if err := s.Bind(laddr); err != nil {
			return nil, opError("dial", laddr, raddr, err)
		}
	}
	if err := s.ConnectContext(ctx, raddr); err != nil {
		_ = s.Close()
		if err == context.Canceled || err == context.DeadlineExceeded || err == errDialTimeout {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(raddr), Err: err}
		}
		return nil, opError("dial", laddr, raddr, err)
	}
	return &Conn{s: s}, nil
}
