package main

import (
	"io"
	"net"
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

// pair is a connected loopback TCP pair.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	return c, s
}

// TestCopyBothKeepsHalfClose: the client's FIN reaches the server as EOF
// and the server's answer still flows back afterwards (RFC 9293 §3.6).
func TestCopyBothKeepsHalfClose(t *testing.T) {
	client, relayIn := pair(t)
	relayOut, server := pair(t)
	done := make(chan struct{})
	go func() { copyBoth(relayIn, relayOut); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
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
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("copyBoth did not return after both directions ended")
	}
	client.Close()
}
