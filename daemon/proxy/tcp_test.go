package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// echoServe echoes until EOF, then closes.
func echoServe(c *net.TCPConn) { io.Copy(c, c) }

func TestTCPEchoBothWays(t *testing.T) {
	r := newRig(t, nil)
	port := kernelListener(t, echoServe)
	const n = 512 << 10
	c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
	if err != nil {
		t.Fatalf("pod dial: %v", err)
	}
	if got := c.RemoteAddr().String(); got != "203.0.113.9:"+itoa(port) {
		t.Errorf("pod sees peer %s, want the original destination", got)
	}
	want := fill(n, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		if err == nil {
			err = c.(*tcp.Conn).CloseWrite()
		}
		errc <- err
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("pod read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("pod write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo: got %d bytes, want %d intact", len(got), len(want))
	}
	c.Close()
	s := r.waitStats("relay closed", func(s Stats) bool { return s.ActiveTCP == 0 && s.PendingTCP == 0 })
	if s.TCPAccepted != 1 {
		t.Errorf("TCPAccepted = %d, want 1", s.TCPAccepted)
	}
}

// Many concurrent flows, each echoing 64 KiB intact.
func TestTCPConcurrentFlows(t *testing.T) {
	r := newRig(t, nil)
	port := kernelListener(t, echoServe)
	const flows, size = 100, 64 << 10
	errc := make(chan error, flows)
	for i := range flows {
		go func() {
			c, err := r.dialPod(ctxT(t, 10*time.Second), server, port)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			want := fill(size, byte(i))
			go func() {
				c.Write(want)
				c.(*tcp.Conn).CloseWrite()
			}()
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, want) {
				err = errors.New("echo corrupted")
			}
			if err != nil {
				err = fmt.Errorf("flow %d: read %d bytes: %w; pod conn %+v", i, len(got), err, c.(*tcp.Conn).Info())
			}
			errc <- err
		}()
	}
	for range flows {
		if err := <-errc; err != nil {
			for _, st := range []*netstack.Stack{r.pod, r.node} {
				for _, n := range st.Devices().List() {
					t.Logf("%s: %+v", n.Name(), n.Stats())
				}
			}
			t.Logf("engine %+v", r.e.Stats())
			t.Fatal(err)
		}
	}
	s := r.waitStats("all closed", func(s Stats) bool { return s.ActiveTCP == 0 })
	if s.TCPAccepted != flows {
		t.Errorf("TCPAccepted = %d", s.TCPAccepted)
	}
}

// The upstream-first failures: each answers the pod's SYN with an RST,
// within the pod's connect timeout, and leaves nothing behind.
func TestTCPUpstreamFailures(t *testing.T) {
	tests := []struct {
		name    string
		dst     func(t *testing.T) (dstAddr string, port uint16)
		counter func(Stats) uint64
	}{
		{"closed port is refused", func(t *testing.T) (string, uint16) { return "203.0.113.9", closedPort(t, "tcp") },
			func(s Stats) uint64 { return s.TCPRefused }},
		{"no route is unreachable", func(t *testing.T) (string, uint16) { return "203.0.113.251", 80 },
			func(s Stats) uint64 { return s.TCPUnreachable }},
		{"silent upstream times out", func(t *testing.T) (string, uint16) { return "203.0.113.250", 80 },
			func(s Stats) uint64 { return s.TCPTimeouts }},
	}
	for _, dialer := range []bool{false, true} {
		for _, tt := range tests {
			name := tt.name
			if dialer {
				name += " (Dialer)"
			}
			t.Run(name, func(t *testing.T) {
				testUpstreamFailure(t, dialer, tt.dst, tt.counter)
			})
		}
	}
}

// testUpstreamFailure is one case of TestTCPUpstreamFailures, through
// the engine's own connects or (dialer) a Config.Dialer's.
func testUpstreamFailure(t *testing.T, dialer bool, dst func(t *testing.T) (string, uint16), counter func(Stats) uint64) {
	tt := struct {
		dst     func(t *testing.T) (string, uint16)
		counter func(Stats) uint64
	}{dst, counter}
	{
		{
			r := newRig(t, func(c *Config) {
				c.ConnectTimeout = 300 * time.Millisecond
				if dialer {
					c.mapDst = nil // through testDialer and a goroutine per connect
				}
			})
			must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
			a, port := tt.dst(t)
			start := time.Now()
			_, err := r.dialPod(ctxT(t, 3*time.Second), mustAddr(a), port)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("pod dial: %v, want ECONNREFUSED (an RST)", err)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("refused after %v, want well within the pod's 3 s", el)
			}
			s := r.waitStats("no state", func(s Stats) bool {
				return s.PendingTCP == 0 && s.ActiveTCP == 0 && s.Pods["p"].ActiveFlows == 0
			})
			if tt.counter(s) != 1 {
				t.Errorf("counter = %d, want 1 (stats %+v)", tt.counter(s), s)
			}
			if s.TCPAccepted != 0 {
				t.Errorf("TCPAccepted = %d", s.TCPAccepted)
			}
		}
	}
}

// RFC 9293 §3.6: each side's FIN closes one direction; the other keeps
// flowing until its own FIN.
func TestTCPHalfClose(t *testing.T) {
	t.Run("pod closes first", func(t *testing.T) {
		r := newRig(t, nil)
		port := kernelListener(t, func(c *net.TCPConn) {
			got, err := io.ReadAll(c) // to the pod's FIN
			if err != nil {
				return
			}
			c.Write(append([]byte("reply:"), got...))
			c.CloseWrite()
		})
		c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
		must(t, err)
		defer c.Close()
		c.Write([]byte("question"))
		must(t, c.(*tcp.Conn).CloseWrite())
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "reply:question" {
			t.Fatalf("pod read %q, %v; want the reply sent after the host saw EOF, then EOF", got, err)
		}
	})
	t.Run("host closes first", func(t *testing.T) {
		r := newRig(t, nil)
		res := make(chan string, 1)
		port := kernelListener(t, func(c *net.TCPConn) {
			c.Write([]byte("banner"))
			c.CloseWrite()
			got, _ := io.ReadAll(c)
			res <- string(got)
		})
		c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
		must(t, err)
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "banner" {
			t.Fatalf("pod read %q, %v", got, err)
		}
		// The host's FIN arrived; the pod can still send.
		if _, err := c.Write([]byte("after-eof")); err != nil {
			t.Fatalf("pod write after EOF: %v", err)
		}
		must(t, c.(*tcp.Conn).CloseWrite())
		select {
		case s := <-res:
			if s != "after-eof" {
				t.Fatalf("host read %q", s)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("host never saw the pod's data and FIN")
		}
	})
}

func TestTCPResetPropagation(t *testing.T) {
	t.Run("host resets", func(t *testing.T) {
		r := newRig(t, nil)
		port := kernelListener(t, func(c *net.TCPConn) {
			buf := make([]byte, 5)
			io.ReadFull(c, buf)
			c.SetLinger(0)
			c.Close()
		})
		c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
		must(t, err)
		defer c.Close()
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("pod read: %v, want ECONNRESET", err)
		}
	})
	t.Run("pod resets", func(t *testing.T) {
		r := newRig(t, nil)
		res := make(chan error, 1)
		port := kernelListener(t, func(c *net.TCPConn) {
			c.Write([]byte("x"))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadAll(c)
			res <- err
		})
		c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
		must(t, err)
		b := make([]byte, 1)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		c.(*tcp.Conn).SetLinger(0)
		c.Close()
		if err := <-res; !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("host read: %v, want ECONNRESET", err)
		}
		r.waitStats("relay gone", func(s Stats) bool { return s.ActiveTCP == 0 })
	})
}

// A slow reader on the host applies backpressure: the relay holds at most
// its buffers, so the pod's writes stall instead of memory growing.
func TestTCPBackpressure(t *testing.T) {
	r := newRig(t, nil)
	release := make(chan struct{})
	got := make(chan int, 1)
	port := kernelListener(t, func(c *net.TCPConn) {
		c.SetReadBuffer(64 << 10)
		<-release
		n, _ := io.Copy(io.Discard, c)
		got <- int(n)
	})
	c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
	must(t, err)
	defer c.Close()
	// Write until a write stalls for 300 ms.
	chunk := fill(64<<10, 3)
	total := 0
	for {
		c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Write(chunk)
		total += n
		if err != nil {
			break
		}
		if total > 256<<20 {
			t.Fatalf("wrote %d bytes without stalling: no backpressure", total)
		}
	}
	// Bounded by the pod's send buffer, the engine stack's receive
	// window, the relay's buffer and the kernel's socket buffers.
	if total > 32<<20 {
		t.Errorf("%d bytes in flight before the writer stalled", total)
	}
	close(release)
	c.SetWriteDeadline(time.Time{})
	must(t, c.(*tcp.Conn).CloseWrite())
	select {
	case n := <-got:
		if n != total {
			t.Errorf("host read %d bytes, pod wrote %d", n, total)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("host did not drain")
	}
}

// RemovePod aborts the pod's outbound flows: the pod and the host both see
// a reset.
func TestRemovePodAbortsFlows(t *testing.T) {
	r := newRig(t, nil)
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	hostErr := make(chan error, 1)
	port := kernelListener(t, func(c *net.TCPConn) {
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c)
		hostErr <- err
	})
	c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
	must(t, err)
	defer c.Close()
	b := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	r.e.RemovePod("p")
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("pod read after RemovePod: %v, want ECONNRESET", err)
	}
	if err := <-hostErr; !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("host read after RemovePod: %v, want ECONNRESET", err)
	}
	s := r.waitStats("flow gone", func(s Stats) bool { return s.ActiveTCP == 0 })
	if len(s.Pods) != 0 {
		t.Errorf("pods after RemovePod: %v", s.Pods)
	}
}

// The other way: a pod that stops reading closes its window, the relay's
// send buffer fills and the host's bytes wait in the kernel; when the pod
// reads again every byte arrives, in order. The relay resumes on the
// pod's ACKs (moved to the poller's goroutine), not on the host socket,
// which had the bytes all along.
func TestTCPBackpressureToPod(t *testing.T) {
	for _, gso := range []bool{false, true} {
		t.Run(map[bool]string{false: "mtu1500", true: "gso"}[gso], func(t *testing.T) {
			var linkOpts []pipe.Option
			if gso {
				linkOpts = gsoPipe
			}
			r := newRigLink(t, nil, linkOpts)
			const total = 24 << 20
			want := fill(total, 9)
			port := kernelListener(t, func(c *net.TCPConn) {
				c.Write(want)
				c.CloseWrite()
				io.Copy(io.Discard, c)
			})
			c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
			must(t, err)
			defer c.Close()
			// Stall: let the window close and the relay block.
			time.Sleep(300 * time.Millisecond)
			got := make([]byte, 0, total)
			buf := make([]byte, 256<<10)
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			for len(got) < total {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					if err == io.EOF {
						break
					}
					t.Fatalf("read after %d bytes: %v\n%s", len(got), err, r.dump())
				}
				if len(got) < 4<<20 {
					time.Sleep(time.Millisecond) // a slow reader first
				}
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("received %d of %d bytes, equal %v", len(got), total, len(got) == total && bytes.Equal(got, want))
			}
		})
	}
}
