package proxy

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// fakePing stands in for the kernel's ping socket: it answers each echo
// request with a reply carrying its own identifier, as ping.c does.
func fakePing(t *testing.T, kernelID uint16) func(netip.Addr) (net.Conn, error) {
	return func(dst netip.Addr) (net.Conn, error) {
		ours, kernel := net.Pipe()
		t.Cleanup(func() { kernel.Close() })
		go func() {
			b := make([]byte, 65536)
			for {
				n, err := kernel.Read(b)
				if err != nil {
					return
				}
				req, err := header.CheckICMPv4(b[:n])
				if err != nil || req.Type() != header.ICMPv4Echo {
					continue
				}
				rep := append([]byte(nil), b[:n]...)
				rep[0] = header.ICMPv4EchoReply
				binary.BigEndian.PutUint16(rep[4:], kernelID)
				if _, err := kernel.Write(rep); err != nil {
					return
				}
			}
		}()
		return ours, nil
	}
}

// pingAllowed reports whether net.ipv4.ping_group_range admits our group.
func pingAllowed() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ping_group_range")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 32)
	hi, err2 := strconv.ParseUint(f[1], 10, 32)
	g := uint64(os.Getegid())
	return err1 == nil && err2 == nil && lo <= g && g <= hi
}

func TestEcho(t *testing.T) {
	payload := []byte("abcdefgh-ping")
	t.Run("relayed with the pod's identifier", func(t *testing.T) {
		r := newRig(t, nil)
		r.e.echo.openPing = fakePing(t, 0xbeef)
		for seq := uint16(1); seq <= 3; seq++ {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := r.pod.Ping(ctx, server, seq, payload)
			cancel()
			if err != nil {
				t.Fatalf("ping seq %d: %v", seq, err)
			}
		}
		// Stack.Ping takes a fresh identifier each time: one flow
		// (one ping socket) per identifier.
		s := r.e.Stats()
		if s.EchoRelayed != 3 || s.ActiveEcho != 3 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("host refuses ping sockets", func(t *testing.T) {
		r := newRig(t, nil)
		r.e.echo.openPing = func(netip.Addr) (net.Conn, error) {
			return nil, os.NewSyscallError("socket", syscall.EACCES)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := r.pod.Ping(ctx, server, 1, payload); err == nil {
			t.Fatal("ping answered though the host refuses ping sockets")
		}
		// The gateway still answers (the stack itself).
		ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel2()
		if _, err := r.pod.Ping(ctx2, gwAddr, 1, payload); err != nil {
			t.Errorf("ping gateway: %v", err)
		}
		if s := r.e.Stats(); s.EchoDenied != 1 || s.ActiveEcho != 0 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("real ping socket", func(t *testing.T) {
		r := newRig(t, nil)
		r.e.echo.hostDst = func(netip.Addr) netip.Addr { return loopback }
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := r.pod.Ping(ctx, server, 7, payload)
		s := r.e.Stats()
		if pingAllowed() {
			if err != nil || s.EchoRelayed != 1 {
				t.Fatalf("ping through a ping socket: %v, stats %+v", err, s)
			}
			return
		}
		if err == nil || s.EchoDenied != 1 {
			t.Fatalf("ping_group_range refuses us: ping %v, stats %+v; want EchoDenied", err, s)
		}
	})
}
