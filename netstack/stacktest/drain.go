package stacktest

import (
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"time"
)

// Drained is what AcceptAndDrain saw on its connection.
type Drained struct {
	N    int64    // bytes read before EOF or the error
	Sum  [32]byte // SHA-256 of those bytes
	Peer netip.AddrPort
	Err  error
}

// AcceptAndDrain accepts one connection on ln (ours or the kernel's) on a
// new goroutine, reads it to EOF within timeout (0: no deadline), and
// sends the result on the returned channel. Bulk transfer tests compare
// Sum with the sender's.
func AcceptAndDrain(ln net.Listener, timeout time.Duration) <-chan Drained {
	out := make(chan Drained, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			out <- Drained{Err: err}
			return
		}
		defer c.Close()
		if timeout > 0 {
			_ = c.SetDeadline(time.Now().Add(timeout))
		}
		var d Drained
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			d.Peer = a.AddrPort()
			d.Peer = netip.AddrPortFrom(d.Peer.Addr().Unmap(), d.Peer.Port())
		}
		h := sha256.New()
		d.N, d.Err = io.CopyBuffer(h, c, make([]byte, 256<<10))
		copy(d.Sum[:], h.Sum(nil))
		out <- d
	}()
	return out
}
