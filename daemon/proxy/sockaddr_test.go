package proxy

import (
	"net"
	"net/netip"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// recvfromNonblock names the sender of each family as the kernel gave it
// (the port in host order), and says EAGAIN on an empty socket.
func TestRecvfromNonblockSender(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			lo := netip.MustParseAddr("127.0.0.1")
			if network == "udp6" {
				lo = netip.IPv6Loopback()
			}
			ln, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
			if err != nil {
				t.Skipf("%s loopback: %v", network, err)
			}
			defer ln.Close()
			c, err := net.DialUDP(network, nil, ln.LocalAddr().(*net.UDPAddr))
			must(t, err)
			defer c.Close()
			raw, err := ln.SyscallConn()
			must(t, err)
			b := make([]byte, 64)
			var n int
			var from netip.AddrPort
			var errno unix.Errno
			must(t, raw.Control(func(fd uintptr) {
				if _, _, errno = recvfromNonblock(int(fd), b); errno != unix.EAGAIN {
					return
				}
				if _, err := c.Write([]byte("hello")); err != nil {
					t.Error(err)
					return
				}
				for try := 0; try < 1000; try++ {
					if n, from, errno = recvfromNonblock(int(fd), b); errno != unix.EAGAIN {
						return
					}
					unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
				}
			}))
			if errno != 0 || string(b[:n]) != "hello" {
				t.Fatalf("read %q, errno %v", b[:n], errno)
			}
			if want := c.LocalAddr().(*net.UDPAddr).AddrPort(); from != want {
				t.Fatalf("sender %v, want %v", from, want)
			}
		})
	}
}

// clientSockaddr keeps a client's family, and gives an IPv6 link-local
// client its zone as the interface index (by name or by number).
func TestClientSockaddr(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	must(t, err)
	for _, tc := range []struct {
		in   string
		want unix.Sockaddr
		err  bool
	}{
		{in: "192.0.2.7:53", want: &unix.SockaddrInet4{Addr: [4]byte{192, 0, 2, 7}, Port: 53}},
		{in: "[2001:db8::7]:53", want: &unix.SockaddrInet6{Addr: netip.MustParseAddr("2001:db8::7").As16(), Port: 53}},
		{in: "[fe80::7%lo]:53", want: &unix.SockaddrInet6{Addr: netip.MustParseAddr("fe80::7").As16(), Port: 53, ZoneId: uint32(lo.Index)}},
		{in: "[fe80::7%" + strconv.Itoa(lo.Index) + "]:53", want: &unix.SockaddrInet6{Addr: netip.MustParseAddr("fe80::7").As16(), Port: 53, ZoneId: uint32(lo.Index)}},
		{in: "[fe80::7%no-such-if0]:53", err: true},
	} {
		got, _, err := clientSockaddr(netip.MustParseAddrPort(tc.in))
		switch {
		case tc.err && err == nil:
			t.Errorf("%s: %+v, want an error", tc.in, got)
		case !tc.err && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case !tc.err:
			switch w := tc.want.(type) {
			case *unix.SockaddrInet4:
				if g, ok := got.(*unix.SockaddrInet4); !ok || *g != *w {
					t.Errorf("%s: %+v, want %+v", tc.in, got, w)
				}
			case *unix.SockaddrInet6:
				if g, ok := got.(*unix.SockaddrInet6); !ok || g.Addr != w.Addr || g.Port != w.Port || g.ZoneId != w.ZoneId {
					t.Errorf("%s: %+v, want %+v", tc.in, got, w)
				}
			}
		}
	}
}
