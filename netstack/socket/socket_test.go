package socket_test

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/socket"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// loopIP is a loopback network layer for one udp.Proto: what UDP sends
// comes back to it with an IPv4 header, and port unreachable comes back
// as ECONNREFUSED, after the receive call returns (as an ICMP error would).
type loopIP struct {
	mu      sync.Mutex
	p       *udp.Proto
	pending []*buf.SKB
}

var lo = netip.MustParseAddr("127.0.0.1")

func (l *loopIP) QueueXmit(skb *buf.SKB, fl route.Flow) error {
	ip := header.IPv4(skb.Push(header.IPv4MinSize))
	ip.Encode(header.IPv4Fields{TotalLen: uint16(skb.Len()), TTL: 64, Protocol: header.ProtoUDP, Src: fl.Src, Dst: fl.Dst})
	skb.SetNetworkHeader()
	skb.Pull(header.IPv4MinSize)
	l.p.V4Rcv(skb)
	l.mu.Lock()
	errs := l.pending
	l.pending = nil
	l.mu.Unlock()
	for _, e := range errs {
		l.p.V4Err(e, header.ICMPError{Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4PortUnreachable, Errno: syscall.ECONNREFUSED, Hard: true})
		e.Consume()
	}
	return nil
}

func (l *loopIP) RouteOutput(fl route.Flow) (route.Result, error) {
	if !fl.Dst.IsLoopback() {
		return route.Result{}, route.ErrNoRoute
	}
	return route.Result{Type: route.Local, NextHop: fl.Dst, Src: lo}, nil
}

func (l *loopIP) SendICMPError(skb *buf.SKB, typ, code uint8, info uint32) {
	q := buf.FromBytes(0, skb.NetworkHeader())
	q.SetNetworkHeader()
	l.mu.Lock()
	l.pending = append(l.pending, q)
	l.mu.Unlock()
}

// SendICMPErrorQuote is the proxy's transparent ICMP error; loopback
// sockets never divert, so nothing calls it here.
func (l *loopIP) SendICMPErrorQuote(src, dst netip.Addr, typ, code uint8, info uint32, quote []byte) error {
	return syscall.EINVAL
}

func newRegistry(t *testing.T) *socket.Registry {
	t.Helper()
	l := &loopIP{}
	l.p = udp.New(l, nil, udp.Config{Clock: clock.NewReal()})
	r := socket.NewRegistry()
	err := r.Register(socket.Protosw{Family: socket.AFInet, Type: socket.SockDgram, Protocol: header.ProtoUDP,
		Create: func() (socket.Socket, error) { return l.p.NewSocket(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRegistry(t *testing.T) {
	r := newRegistry(t)
	dup := socket.Protosw{Family: socket.AFInet, Type: socket.SockDgram, Protocol: header.ProtoUDP,
		Create: func() (socket.Socket, error) { return nil, nil }}
	if err := r.Register(dup); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := r.Register(socket.Protosw{Family: socket.AFInet, Type: socket.SockDgram}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("protocol 0: %v", err)
	}
	tests := []struct {
		name  string
		f     socket.Family
		t     socket.Type
		proto uint8
		want  error
	}{
		{"UDP", socket.AFInet, socket.SockDgram, header.ProtoUDP, nil},
		{"protocol 0 picks the type's default", socket.AFInet, socket.SockDgram, 0, nil},
		{"unknown family", socket.AFInet6, socket.SockDgram, header.ProtoUDP, syscall.EAFNOSUPPORT},
		{"unknown type", socket.AFInet, socket.SockStream, 0, syscall.ESOCKTNOSUPPORT},
		{"unknown protocol", socket.AFInet, socket.SockDgram, header.ProtoTCP, syscall.EPROTONOSUPPORT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := r.Create(tc.f, tc.t, tc.proto)
			if !errors.Is(err, tc.want) && err != tc.want {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if err == nil {
				if _, ok := s.(*udp.Socket); !ok {
					t.Fatalf("created %T", s)
				}
				s.Close()
			}
		})
	}
	r.Unregister(socket.AFInet, socket.SockDgram, header.ProtoUDP)
	if _, err := r.Create(socket.AFInet, socket.SockDgram, 0); !errors.Is(err, syscall.EAFNOSUPPORT) {
		t.Fatalf("after unregister: %v", err)
	}
}

func TestPacketConnRoundTrip(t *testing.T) {
	r := newRegistry(t)
	srv, err := socket.ListenUDP(r, netip.MustParseAddrPort("127.0.0.1:5353"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := socket.DialUDP(r, netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:5353"))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	if _, err := cli.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 100)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := srv.ReadFrom(b)
	if err != nil || string(b[:n]) != "ping" {
		t.Fatalf("server read %q %v", b[:n], err)
	}
	ua, ok := from.(*net.UDPAddr)
	if !ok || ua.AddrPort() != cli.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("from %v, client %v", from, cli.LocalAddr())
	}
	if _, err := srv.WriteTo([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := cli.Read(b); err != nil || !bytes.Equal(b[:n], []byte("pong")) {
		t.Fatalf("client read %q %v", b[:n], err)
	}
	if cli.RemoteAddr().String() != "127.0.0.1:5353" {
		t.Fatalf("remote %v", cli.RemoteAddr())
	}
	if _, err := cli.WriteTo([]byte("x"), from); !errors.Is(err, net.ErrWriteToConnected) {
		t.Fatalf("WriteTo on a connected conn: %v", err)
	}
	if _, err := srv.WriteTo([]byte("x"), &net.TCPAddr{}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("WriteTo with a TCP address: %v", err)
	}
}

func TestConnErrors(t *testing.T) {
	r := newRegistry(t)
	t.Run("ECONNREFUSED on a connected conn", func(t *testing.T) {
		c, err := socket.DialUDP(r, netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:9"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		_, err = c.Read(make([]byte, 10))
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" || oe.Net != "udp" || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("err %#v", err)
		}
		if oe.Addr == nil || oe.Addr.String() != "127.0.0.1:9" {
			t.Fatalf("error address %v", oe.Addr)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		c, err := socket.ListenUDP(r, netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, _, err = c.ReadFrom(make([]byte, 10))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		c, err := socket.ListenUDP(r, netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, _, err := c.ReadFrom(make([]byte, 10))
			done <- err
		}()
		time.Sleep(10 * time.Millisecond)
		c.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("err %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not wake the reader")
		}
		if err := c.Close(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("second close: %v", err)
		}
	})
	t.Run("listen conflict", func(t *testing.T) {
		a, err := socket.ListenUDP(r, netip.MustParseAddrPort("127.0.0.1:7777"))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		_, err = socket.ListenUDP(r, netip.MustParseAddrPort("0.0.0.0:7777"))
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "listen" || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("dial without a route", func(t *testing.T) {
		_, err := socket.DialUDP(r, netip.AddrPort{}, netip.MustParseAddrPort("192.0.2.1:53"))
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Fatalf("err %v", err)
		}
	})
}
