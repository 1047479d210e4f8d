package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// fakePing stands in for the kernel's ping socket: it answers each echo
// request with a reply carrying its own identifier, as ping.c does. The
// engine's end is a datagram socketpair's (an fd for its poller), the
// kernel's the other end, served by a goroutine of the test.
func fakePing(t *testing.T, kernelID uint16) func(netip.Addr) (*hostFD, error) {
	return func(dst netip.Addr) (*hostFD, error) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(fds[1]), "fake-ping")
		kernel, err := net.FileConn(f) // dups the descriptor
		f.Close()
		if err != nil {
			unix.Close(fds[0])
			return nil, err
		}
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
		return &hostFD{fd: fds[0]}, nil
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
	t.Run("host refuses ping and raw sockets", func(t *testing.T) {
		r := newRig(t, nil)
		r.e.echo.openPing = func(netip.Addr) (*hostFD, error) {
			return nil, os.NewSyscallError("socket", syscall.EACCES)
		}
		r.e.echo.openRaw = func() (*hostFD, error) {
			return nil, os.NewSyscallError("socket", syscall.EPERM)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := r.pod.Ping(ctx, server, 1, payload); err == nil {
			t.Fatal("ping answered though the host refuses ping and raw sockets")
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
	t.Run("real sockets: ping socket where allowed, else the raw socket", func(t *testing.T) {
		r := newRig(t, nil)
		r.e.echo.hostDst = func(netip.Addr) netip.Addr { return loopback }
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := r.pod.Ping(ctx, server, 7, payload)
		s := r.e.Stats()
		if pingAllowed() {
			if err != nil || s.EchoRelayed != 1 || s.EchoRawRelayed != 0 {
				t.Fatalf("ping through a ping socket: %v, stats %+v", err, s)
			}
			return
		}
		pc, rerr := openRawICMP()
		if rerr != nil {
			if err == nil || s.EchoDenied != 1 {
				t.Fatalf("ping and raw sockets refused: ping %v, stats %+v; want EchoDenied", err, s)
			}
			return
		}
		pc.Close()
		if err != nil || s.EchoRawRelayed != 1 {
			t.Fatalf("ping_group_range refuses us: ping %v, stats %+v; want it through the raw socket", err, s)
		}
	})
}

// openRawOrSkip is openRawICMP, or a skip where the test may not open
// raw sockets (no CAP_NET_RAW).
func openRawOrSkip(t testing.TB) {
	t.Helper()
	pc, err := openRawICMP()
	if err != nil {
		t.Skipf("raw ICMP socket: %v (needs CAP_NET_RAW)", err)
	}
	pc.Close()
}

// Where the host refuses ping sockets (net.ipv4.ping_group_range "1 0",
// its default), echo goes through the engine's one raw ICMP socket: each
// pod identifier gets an identifier of ours, replies are matched by it
// and their source and go back with the pod's; large echoes too (the pod
// fragments, the stack reassembles, the reply is fragmented back). The
// flows count per pod, respect MaxFlowsPerPod and idle out.
func TestEchoRawSocket(t *testing.T) {
	openRawOrSkip(t)
	r := newRig(t, func(c *Config) { c.UDPIdleTimeout = 300 * time.Millisecond; c.MaxFlowsPerPod = 3 })
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	r.e.echo.openPing = func(netip.Addr) (*hostFD, error) {
		return nil, os.NewSyscallError("socket", syscall.EACCES)
	}
	r.e.echo.hostDst = func(netip.Addr) netip.Addr { return loopback }
	for i, size := range []int{56, 3000, 56} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := r.pod.Ping(ctx, server, uint16(i+1), fill(size, byte(i)))
		cancel()
		if err != nil {
			t.Fatalf("ping %d bytes through the raw socket: %v (stats %+v)", size, err, r.e.Stats())
		}
	}
	// Stack.Ping takes a fresh identifier each time: three flows, the
	// pod's limit; a fourth is refused.
	s := r.e.Stats()
	if s.EchoRawRelayed != 3 || s.EchoRelayed != 3 || s.ActiveEcho != 3 || s.Pods["p"].ActiveFlows != 3 || s.EchoFlowsOpened != 3 {
		t.Fatalf("stats %+v", s)
	}
	// ss -p's view: each flow with its identifier on the raw socket.
	raw := 0
	for _, rl := range r.e.Relays() {
		if rl.Proto == "icmp" && rl.PodRemote.Addr() == podAddr && rl.PodLocal.Addr() == server && rl.HostRemote.Addr() == loopback &&
			rl.HostLocal.Port() == rl.HostRemote.Port() && rl.PodID == "p" {
			raw++
		}
	}
	if raw != 3 {
		t.Fatalf("relays of the raw echo flows: %+v", r.e.Relays())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := r.pod.Ping(ctx, server, 9, nil); err == nil {
		t.Fatal("a fourth flow passed MaxFlowsPerPod 3")
	}
	if s := r.e.Stats(); s.FlowLimitDrops != 1 {
		t.Fatalf("flow limit not counted: %+v", s)
	}
	s = r.waitStats("raw echo flows idle out", func(s Stats) bool { return s.ActiveEcho == 0 && s.Pods["p"].ActiveFlows == 0 })
	if s.EchoIdleTimeouts != 3 {
		t.Fatalf("idle timeouts of the raw echo flows: %+v", s)
	}
}

// RemovePod and Close end raw-mode flows and the raw socket's goroutines.
func TestEchoRawSocketClose(t *testing.T) {
	openRawOrSkip(t)
	r := newRig(t, nil)
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	r.e.echo.openPing = func(netip.Addr) (*hostFD, error) { return nil, syscall.EPERM }
	r.e.echo.hostDst = func(netip.Addr) netip.Addr { return loopback }
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := r.pod.Ping(ctx, server, 1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	r.e.RemovePod("p")
	r.waitStats("the flow ended with its pod", func(s Stats) bool { return s.ActiveEcho == 0 })
	r.e.Close()
	waitNoEngineGoroutines(t)
}

// RFC 792 / RFC 1122 §3.2.2 for echo: a router on the host's path answers
// the relayed request with host unreachable; the pod gets host unreachable
// from that router about its own request, quoting the request's headers
// as the pod sent them (its identifier, sequence number and checksum, not
// the relay's), and its ping fails with EHOSTUNREACH. Through the raw
// socket (ping sockets refused): TestEchoPingSocketErrorRelayed does the
// same through a ping socket.
func TestEchoErrorQuotesThePodsRequest(t *testing.T) {
	router := netip.MustParseAddr("192.0.2.1")
	r := newRig(t, nil)
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	r.e.echo.openPing = func(netip.Addr) (*hostFD, error) { return nil, syscall.EACCES }
	// The raw socket in a private netns whose router answers every
	// request with host unreachable (pingNetns.router), to its loopback.
	ns := newPingNetns(t)
	ns.router(t, router)
	r.e.echo.hostDst = func(netip.Addr) netip.Addr { return loopback }
	r.e.echo.openRaw = func() (h *hostFD, err error) {
		ns.do(func() { h, err = openRawICMP() })
		return h, err
	}

	var mu sync.Mutex
	var sent, got []byte
	r.pod.Devices().AddTap(func(_ *dev.NIC, skb *buf.SKB, dir dev.Direction) {
		ip, ok := icmpFrame(skb)
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if m := header.ICMPv4(ip.Payload()); dir == dev.Tx && m.Type() == header.ICMPv4Echo {
			sent = append([]byte(nil), ip[:ip.TotalLen()]...)
		} else if dir == dev.Rx && m.Type() == header.ICMPv4DstUnreachable {
			got = append([]byte(nil), ip[:ip.TotalLen()]...)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := r.pod.Ping(ctx, server, 5, []byte("are you there?")); !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("ping: %v, want EHOSTUNREACH", err)
	}
	mu.Lock()
	defer mu.Unlock()
	ip := header.IPv4(got)
	m := header.ICMPv4(ip.Payload())
	if ip.Src() != router || m.Code() != header.ICMPv4HostUnreachable {
		t.Fatalf("host unreachable code %d from %v, want from the router %v", m.Code(), ip.Src(), router)
	}
	if !bytes.Equal(m.Payload(), sent) {
		t.Fatalf("quote\n% x\nwant the pod's request\n% x", m.Payload(), sent)
	}
	if s := r.e.Stats(); s.EchoICMPErrors != 1 || s.EchoRawRelayed != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// icmpFrame is the IPv4 packet of an Ethernet frame a tap saw, when it
// carries ICMP.
func icmpFrame(skb *buf.SKB) (header.IPv4, bool) {
	eth, err := header.CheckEthernet(skb.Bytes())
	if err != nil || eth.Type() != header.EtherTypeIPv4 {
		return nil, false
	}
	ip, err := header.CheckIPv4(eth.Payload())
	if err != nil || ip.Protocol() != header.ProtoICMP {
		return nil, false
	}
	return ip, true
}
