package e2e

import (
	"context"
	"crypto/sha256"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/link/fault"
)

// RFC 9293 §3.8.6.1 against the kernel: a slow kernel reader behind a
// small receive buffer closes its window over and over while 1% of its
// ACKs (window updates included) are lost on the stack's side. Each lost
// update must be repaired by the stack's persist timer; a stack that
// leaves no timer armed once the window closes (the loss probe timer
// standing in for the persist timer) stops for good, which the stall
// watch reports with the sender's state. This is TestKernelTCPUnderLoss's
// stall under CPU load (a starved kernel reader), made to happen on
// every run.
func TestKernelTCPZeroWindowUnderLoss(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer(t, "10.236.0.1/24", "10.236.0.2/24", 1500)
	s, _, fe := attachFaulty(t, p, fault.Loss(0.01), fault.OnReceive(), fault.Seed(12))
	tp := &tcpPair{p: p, s: s, kernel: p.KernelAddr.Addr(), stack: p.StackAddr.Addr(), fault: fe}
	size := 16 << 20
	if testing.Short() {
		size = 4 << 20
	}

	// The kernel listener's receive buffer is small (the accepted socket
	// inherits it), so the window closes between reads.
	var kl net.Listener
	if err := p.Do(func() (err error) {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10)
			}); err != nil {
				return err
			}
			return serr
		}}
		kl, err = lc.Listen(context.Background(), "tcp4", netip.AddrPortFrom(tp.kernel, 5012).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kl.Close()
	type result struct {
		n   int
		sum [32]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := kl.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
		h := sha256.New()
		b := make([]byte, 16<<10)
		var r result
		for {
			n, err := c.Read(b)
			h.Write(b[:n])
			r.n += n
			if err != nil {
				if r.n != size {
					r.err = err
				}
				break
			}
			// A slow consumer: the window fills before the next read.
			time.Sleep(time.Millisecond)
		}
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sc, err := s.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(tp.kernel, 5012))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sc.SetDeadline(time.Now().Add(5 * time.Minute))
	stop := watchStall(t, tp, sc)
	start := time.Now()
	sum, err := sendPattern(sc, size)
	if err != nil {
		stop()
		t.Fatalf("%v\n%s", err, stackSenderState(tp, sc))
	}
	sc.CloseWrite()
	r := <-got
	stop()
	if r.err != nil || r.n != size || r.sum != sum {
		t.Fatalf("stack→slow kernel reader under 1%% loss: %d of %d bytes, checksum %v, %v\n%s", r.n, size, r.sum == sum, r.err,
			stackSenderState(tp, sc))
	}
	ctr := s.TCP().Counters()
	t.Logf("%d MiB to a slow kernel reader under 1%% loss: %v; window probes %d, fault link %+v", size>>20,
		time.Since(start).Round(time.Millisecond), ctr["TcpExtTCPWinProbe"], fe.Stats())
}
