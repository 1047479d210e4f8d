package tcp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// The net.Conn and net.Listener adapters return the standard errors, as
// *net.OpError: ECONNRESET after a reset, EPIPE writing after
// CloseWrite, net.ErrClosed after Close, io.EOF bare, deadlines as
// os.ErrDeadlineExceeded (a net.Error with Timeout()).
func TestConnErrors(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.SetNonblock(false)
	conn := NewConn(s)
	if conn.LocalAddr().String() != "10.0.0.1:80" || conn.RemoteAddr().String() != "10.0.0.2:40000" {
		t.Fatalf("addresses %v %v", conn.LocalAddr(), conn.RemoteAddr())
	}
	conn.SetReadDeadline(c.clk.Now())
	_, err := conn.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" || oe.Net != "tcp" {
		t.Fatalf("not a *net.OpError: %#v", err)
	}
	conn.SetReadDeadline(time.Time{})
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write after CloseWrite: %v", err)
	}
	c.Out()
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2))
	if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after FIN: %v, want bare io.EOF", err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	if err := conn.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}

	c2 := newPeer(t, Config{NoTimestamps: true})
	s2 := c2.establishPassive(header.TCPOptions{})
	conn2 := NewConn(s2)
	c2.Send(c2.Seg().Flags(RST).Seq(c2.ISS + 1))
	if _, err := conn2.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after RST: %v", err)
	}
	if _, err := conn2.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after RST: %v", err)
	}
}

// Listener: Accept honours its deadline and fails with net.ErrClosed
// after Close; Dial refused is ECONNREFUSED inside a dial *net.OpError.
func TestListenerAndDialErrors(t *testing.T) {
	c := newPeer(t, Config{})
	ln, err := c.p.Listen(netip.AddrPortFrom(localAddr, 0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if p := ln.Addr().(*net.TCPAddr).Port; p < DefaultEphemeralLow {
		t.Fatalf("port 0 picked %d", p)
	}
	if _, err := c.p.Listen(netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(ln.Addr().(*net.TCPAddr).Port)), 0); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second listener on the port: %v", err)
	}
	ln.SetDeadline(c.clk.Now())
	if _, err := ln.Accept(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("accept deadline: %v", err)
	}
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := c.p.Dial(context.Background(), netip.AddrPort{}, c.raddr)
		done <- err
	}()
	var syn seg
	deadline := time.Now().Add(5 * time.Second)
	for {
		if out := c.Out(); len(out) > 0 {
			syn = out[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no SYN")
		}
		time.Sleep(time.Millisecond)
	}
	c.laddr = syn.src
	c.Send(c.Seg().Flags(RST | ACK).Ack(syn.seq + 1))
	err = <-done
	var oe *net.OpError
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &oe) || oe.Op != "dial" {
		t.Fatalf("dial: %v", err)
	}
}

// Abortive close (SO_LINGER 0) sends RST instead of FIN; shutdown of the
// read side makes reads return EOF at once.
func TestLingerZeroAndShutdownRead(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.Shutdown(true, false)
	if _, err := s.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after SHUT_RD: %v", err)
	}
	s.SetLingerZero(true)
	s.Close()
	if r := c.Expect("RST"); r.flags&RST == 0 {
		t.Fatalf("got %v", r)
	}
	if s.State() != Closed || len(c.p.conns) != 0 {
		t.Fatalf("state %v", s.State())
	}
}
