package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// relayBufs holds splice's buffers (relayBufSize each); a spliced flow
// holds two while it lives.
var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// tcpLoop takes intercepted SYNs until the engine closes.
func (e *Engine) tcpLoop() {
	for {
		r, err := e.tcpIC.Next(e.ctx)
		if err != nil {
			if e.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				e.log.Warn("proxy: tcp intercept stopped", "err", err)
			}
			return
		}
		f := e.newFlow()
		if !e.acquire(r.Src().Addr(), f, kindTCP) {
			r.Refuse()
			f.done()
			continue
		}
		e.c.pendingTCP.Add(1)
		if !e.spawn(func() { e.tcpFlow(r, f) }) {
			e.c.pendingTCP.Add(-1)
			r.Refuse()
			e.release(f)
			f.done()
		}
	}
}

// tcpFlow is one intercepted connection, upstream first: the host
// connection is opened before the pod gets its SYN,ACK, and a failure of
// any kind (refused, no route, timeout) refuses the pod's SYN with an RST.
// Once both sides are up the relay takes the flow over (startRelay) and
// this goroutine ends.
func (e *Engine) tcpFlow(r *tcp.Request, f *flowHandle) {
	relaying := false
	defer func() {
		if !relaying {
			e.c.pendingTCP.Add(-1)
			e.release(f)
			f.done()
		}
	}()
	f.pod, f.dst = r.Src(), r.Dst()

	ctx, cancel := context.WithTimeout(f.ctx, e.cfg.ConnectTimeout)
	up, err := e.dial(ctx, "tcp", r.Dst().String())
	cancel()
	if err != nil {
		e.countDialErr(err)
		e.log.Debug("proxy: upstream connect failed", "pod", r.Src(), "dst", r.Dst(), "err", err)
		r.Refuse()
		return
	}
	if !f.add(abortFunc(func() { abortConn(up) })) {
		r.Refuse()
		return
	}
	ctx, cancel = context.WithTimeout(f.ctx, e.cfg.ConnectTimeout)
	down, err := r.Accept(ctx)
	cancel()
	if err != nil {
		// The pod went away before completing its handshake: reset
		// the upstream connection it asked for.
		e.log.Debug("proxy: pod handshake failed", "pod", r.Src(), "dst", r.Dst(), "err", err)
		abortConn(up)
		return
	}
	if !f.add(abortFunc(func() { abortConn(down) })) {
		abortConn(up)
		return
	}
	// Writes go out as the relay makes them (TCP_NODELAY) on both sides,
	// as any proxy does: Nagle with the peer's delayed ACKs would hold a
	// small write behind an unacknowledged one. Go's net.Dialer sets it
	// on kernel sockets already; a configured Dialer's conns may not.
	down.SetNoDelay(true)
	setNoDelay(up)
	e.setKeepAlive(down)
	e.setKeepAlive(up)
	relaying = true
	e.c.pendingTCP.Add(-1)
	e.c.tcpAccepted.Add(1)
	f.setRelay(RelayOutbound, down, up)
	e.relayTCP(f, down, up)
}

// relayTCP relays an established pair and counts it active until it ends,
// then counts the flow out.
func (e *Engine) relayTCP(f *flowHandle, down *tcp.Conn, up net.Conn) {
	e.c.activeTCP.Add(1)
	e.startRelay(f, down, up, func() {
		e.c.activeTCP.Add(-1)
		e.release(f)
		f.done()
	})
}

// splice is the relay for a host conn without a kernel socket behind it
// (a test Dialer's in-memory conn): a goroutine per direction (this one
// and one more) until both directions ended, then it closes both.
func splice(a, b net.Conn) {
	var s spliceState
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.copyHalf(b, a)
	}()
	s.copyHalf(a, b)
	wg.Wait()
	// Both directions saw EOF (or one aborted both): a graceful close
	// here sends nothing new after the FINs already exchanged.
	a.Close()
	b.Close()
}

// spliceState is shared by the two directions of one relay.
type spliceState struct {
	aborted atomic.Bool
}

// abort closes both sides abortively, once.
func (s *spliceState) abort(a, b net.Conn) {
	if s.aborted.CompareAndSwap(false, true) {
		abortConn(a)
		abortConn(b)
	}
}

// copyHalf copies src to dst with one pooled buffer: a blocked Write on
// dst stops the reads, which closes src's receive window (backpressure).
// EOF from src is passed on as a half-close (RFC 9293 §3.6: FIN, the other
// direction keeps flowing); a reset or any other error on either side
// resets both.
func (s *spliceState) copyHalf(dst, src net.Conn) {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				s.abort(src, dst)
				return
			}
		}
		if err == io.EOF {
			closeWrite(dst)
			return
		}
		if err != nil {
			s.abort(dst, src)
			return
		}
	}
}

// abortConn closes c with linger 0 where it can (an RST on TCP).
func abortConn(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = c.Close()
}

// setNoDelay turns Nagle off on c where it can.
func setNoDelay(c net.Conn) {
	if nd, ok := c.(interface{ SetNoDelay(bool) error }); ok {
		_ = nd.SetNoDelay(true)
	}
}

// closeWrite half-closes c (shutdown(SHUT_WR)); a conn that cannot is left
// open until the relay ends.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
