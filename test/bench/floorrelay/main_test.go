package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestParsePorts(t *testing.T) {
	if p, err := parsePorts("80, 443,5201"); err != nil || len(p) != 3 || p[0] != 80 || p[2] != 5201 {
		t.Fatalf("parsePorts = %v, %v", p, err)
	}
	for _, bad := range []string{"", "0", "65536", "80,x", "80,,81"} {
		if _, err := parsePorts(bad); err == nil {
			t.Errorf("parsePorts(%q): no error", bad)
		}
	}
}

// relayRig is a relay of one mode from 127.0.0.1:port to an upstream
// server on 127.0.0.2:port (loopback: no root).
type relayRig struct {
	up    *net.TCPListener // the upstream server's listener
	addr  string           // where clients dial the relay
	flows *atomic.Int64
	fatal chan error
}

var (
	relayListen   = netip.MustParseAddr("127.0.0.1")
	relayUpstream = netip.MustParseAddr("127.0.0.2")
)

func newRig(t testing.TB, mode string) *relayRig {
	t.Helper()
	return newRigAt(t, mode, relayListen, relayUpstream)
}

// newRigAt is newRig from relayListen to relayUpstream.
func newRigAt(t testing.TB, mode string, relayListen, relayUpstream netip.Addr) *relayRig {
	t.Helper()
	up, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(relayUpstream, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	port := uint16(up.Addr().(*net.TCPAddr).Port)
	r := &relayRig{up: up, flows: &atomic.Int64{}, fatal: make(chan error, 4),
		addr: netip.AddrPortFrom(relayListen, port).String()}
	if mode == "epoll" {
		err = runEpoll(relayListen, relayUpstream, []uint16{port}, 2, r.flows, 1000, r.fatal)
	} else {
		err = runGoroutines(relayListen, relayUpstream, []uint16{port}, 5*time.Second, r.flows, 1000, r.fatal)
	}
	if err != nil {
		t.Fatalf("start the %s relay: %v", mode, err)
	}
	return r
}

// dial connects a client through the relay and returns it with the
// server's end of the same flow.
func (r *relayRig) dial(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(r.addr)))
	if err != nil {
		t.Fatal(err)
	}
	r.up.SetDeadline(time.Now().Add(10 * time.Second))
	s, err := r.up.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	dl := time.Now().Add(20 * time.Second)
	c.SetDeadline(dl)
	s.SetDeadline(dl)
	return c, s
}

// waitFlows waits (bounded) until the relay holds n flows.
func (r *relayRig) waitFlows(t testing.TB, n int64) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); r.flows.Load() != n; {
		if time.Now().After(end) {
			t.Fatalf("relay holds %d flows, want %d", r.flows.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var modes = []string{"goroutines", "epoll"}

// TestRelayKeepsHalfClose: the client's FIN reaches the server as EOF and
// the server's answer still flows back afterwards (RFC 9293 §3.6); then
// the flow is gone.
func TestRelayKeepsHalfClose(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			r := newRig(t, mode)
			client, server := r.dial(t)
			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			client.CloseWrite()
			got, err := io.ReadAll(server) // up to the relayed FIN
			if err != nil || string(got) != "ping" {
				t.Fatalf("server read %q, %v", got, err)
			}
			if _, err := server.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			server.Close()
			got, err = io.ReadAll(client)
			if err != nil || string(got) != "pong" {
				t.Fatalf("client read %q, %v after its half-close", got, err)
			}
			client.Close()
			r.waitFlows(t, 0)
		})
	}
}

// TestRelayOverIPv6: a relay listening on ::1 for a server on IPv4, and
// one listening on IPv4 for a server on ::1, each carry a request and its
// answer after a half-close (the one IPv6 loopback address cannot be both
// ends: the relay keeps the port).
func TestRelayOverIPv6(t *testing.T) {
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		l.Close()
	}
	lo6 := netip.IPv6Loopback()
	for _, mode := range modes {
		for _, ends := range [][2]netip.Addr{{lo6, relayUpstream}, {relayListen, lo6}} {
			t.Run(fmt.Sprintf("%s/%v-%v", mode, ends[0], ends[1]), func(t *testing.T) {
				r := newRigAt(t, mode, ends[0], ends[1])
				client, server := r.dial(t)
				if _, err := client.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				client.CloseWrite()
				if got, err := io.ReadAll(server); err != nil || string(got) != "ping" {
					t.Fatalf("server read %q, %v", got, err)
				}
				server.Write([]byte("pong"))
				server.Close()
				if got, err := io.ReadAll(client); err != nil || string(got) != "pong" {
					t.Fatalf("client read %q, %v", got, err)
				}
				client.Close()
				r.waitFlows(t, 0)
			})
		}
	}
}

// TestRelayMovesBulkBothWays: 8 MiB each way at once arrive whole.
func TestRelayMovesBulkBothWays(t *testing.T) {
	const size = 8 << 20
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			r := newRig(t, mode)
			client, server := r.dial(t)
			send := func(c *net.TCPConn, b []byte) chan error {
				done := make(chan error, 1)
				go func() {
					_, err := c.Write(b)
					if err == nil {
						err = c.CloseWrite()
					}
					done <- err
				}()
				return done
			}
			up, down := make([]byte, size), make([]byte, size)
			rand.Read(up)
			rand.Read(down)
			e1, e2 := send(client, up), send(server, down)
			recv := func(c *net.TCPConn) chan []byte {
				out := make(chan []byte, 1)
				go func() { b, _ := io.ReadAll(c); out <- b }()
				return out
			}
			atServer, atClient := recv(server), recv(client)
			if got := <-atServer; sha256.Sum256(got) != sha256.Sum256(up) {
				t.Errorf("server got %d bytes, not the client's %d", len(got), size)
			}
			if got := <-atClient; !bytes.Equal(got, down) {
				t.Errorf("client got %d bytes, not the server's %d", len(got), size)
			}
			if err := errors.Join(<-e1, <-e2); err != nil {
				t.Fatal(err)
			}
			client.Close()
			server.Close()
			r.waitFlows(t, 0)
		})
	}
}

// TestRelayResetsWhenUpstreamRefuses: no server → the client's connection
// is reset, and the relay holds nothing.
func TestRelayResetsWhenUpstreamRefuses(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			r := newRig(t, mode)
			r.up.Close()
			c, err := net.Dial("tcp", r.addr)
			if err == nil { // the reset may come before or after the handshake completes at the client
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err = c.Read(make([]byte, 1))
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read from a flow whose upstream refused: %v, want a reset", err)
			}
			r.waitFlows(t, 0)
		})
	}
}

// TestRelayHoldsManyFlows: 64 idle flows at once, counted, then gone.
func TestRelayHoldsManyFlows(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			r := newRig(t, mode)
			var cs []*net.TCPConn
			for i := 0; i < 64; i++ {
				c, s := r.dial(t)
				cs = append(cs, c, s)
			}
			r.waitFlows(t, 64)
			for _, c := range cs {
				c.Close()
			}
			r.waitFlows(t, 0)
			select {
			case err := <-r.fatal:
				t.Fatal(err)
			default:
			}
		})
	}
}

// BenchmarkRelayRR is a 1-byte round trip through each relay over
// loopback (the relay's own share of the bench harness's RR figure).
func BenchmarkRelayRR(b *testing.B) {
	for _, mode := range modes {
		b.Run(mode, func(b *testing.B) {
			r := newRig(b, mode)
			client, server := r.dial(b)
			defer client.Close()
			defer server.Close()
			go func() {
				var x [1]byte
				for {
					if _, err := server.Read(x[:]); err != nil {
						return
					}
					if _, err := server.Write(x[:]); err != nil {
						return
					}
				}
			}()
			client.SetDeadline(time.Time{})
			server.SetDeadline(time.Time{})
			var x [1]byte
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := client.Write(x[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(client, x[:]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
