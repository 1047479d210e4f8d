package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStackListenerReopensTimeWait: a listener in the stack (the
// gateway's DNS relay on port 53) accepts a new connection on a 4-tuple
// still in TIME-WAIT (RFC 1122 §4.2.2.13, RFC 6191). The test resolver
// answers and closes first, so the relay closes the stack's side first
// and that side holds the tuple in TIME-WAIT (60 s); the pod, which
// closed second, reuses its port at once. Its SYN must reopen the tuple
// (TcpExtTWReopened), not draw a challenge ACK and a 1 s retransmission.
func TestStackListenerReopensTimeWait(t *testing.T) {
	r := randBytes(3)
	resolver := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 20 + r[0]%200, r[1], 2 + r[2]%250}), 53)
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(resolver))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() { // answers one read, then closes first
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			b := make([]byte, 64)
			if n, err := c.Read(b); err == nil {
				c.Write(append([]byte("answer to "), b[:n]...))
			}
			c.Close()
		}
	}()
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+resolver.Addr().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newProxyEnv(t, []string{"--resolv-conf", resolv}, nil)
	p := e.addPod()
	gw := netip.AddrPortFrom(p.gateway(), 53)
	local := netip.AddrPortFrom(p.ip, uint16(40000+int(r[0])<<4|int(r[1]&0xf)))

	reopened := func() uint64 {
		st, err := e.client().Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return st.Stack.Counters["TcpExtTWReopened"]
	}
	before := reopened()
	for i := 0; i < 2; i++ {
		c, err := dialFrom(p, local, gw)
		if err != nil {
			t.Fatalf("connection %d from %v to %v: %v", i+1, local, gw, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		q := fmt.Sprintf("query %d", i+1)
		if _, err := c.Write([]byte(q)); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c) // until the relay's FIN
		c.Close()
		if err != nil || string(b) != "answer to "+q {
			t.Fatalf("connection %d: %q %v", i+1, b, err)
		}
	}
	if n := reopened() - before; n != 1 {
		st, _ := e.client().Status(t.Context())
		diff := map[string]uint64{}
		for k, v := range st.Stack.Counters {
			if strings.HasPrefix(k, "Tcp") && v != 0 {
				diff[k] = v
			}
		}
		t.Fatalf("TcpExtTWReopened rose by %d, want 1: the second SYN did not reopen the tuple in TIME-WAIT\nTCP counters %v", n, diff)
	}
}

// dialFrom connects from the pod's local address and port to dst (with
// SO_REUSEADDR), retrying while the kernel still holds the previous
// connection on that 4-tuple (EADDRNOTAVAIL, for a few ms after the close).
func dialFrom(p *pod, local, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 3 * time.Second,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return errors.Join(err, serr)
		}}
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ {
		err = do(p.ns, func() error {
			var err error
			c, err = d.Dial("tcp4", dst.String())
			return err
		})
		if !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c, err
}
