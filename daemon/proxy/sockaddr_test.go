package proxy

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"unsafe"

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

// rawSockaddr.set builds the kernel's sockaddr of the address's own
// family (an IPv4-mapped address as IPv4), the port in network byte
// order, and an IPv6 zone as the scope id (the interface by name or by
// number); a zone naming no interface is an error.
func TestRawSockaddr(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	must(t, err)
	v4 := func(a string, port uint16) []byte {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: netip.MustParseAddr(a).As4(), Port: port>>8 | port<<8}
		return (*[unsafe.Sizeof(sa)]byte)(unsafe.Pointer(&sa))[:]
	}
	v6 := func(a string, port uint16, scope uint32) []byte {
		sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: netip.MustParseAddr(a).As16(), Port: port>>8 | port<<8, Scope_id: scope}
		return (*[unsafe.Sizeof(sa)]byte)(unsafe.Pointer(&sa))[:]
	}
	for _, tc := range []struct {
		in     string
		family int
		want   []byte // nil: an error
	}{
		{"192.0.2.7:53", unix.AF_INET, v4("192.0.2.7", 53)},
		{"[::ffff:192.0.2.7]:4242", unix.AF_INET, v4("192.0.2.7", 4242)},
		{"[2001:db8::7]:53", unix.AF_INET6, v6("2001:db8::7", 53, 0)},
		{"[fe80::7%lo]:53", unix.AF_INET6, v6("fe80::7", 53, uint32(lo.Index))},
		{"[fe80::7%" + strconv.Itoa(lo.Index) + "]:53", unix.AF_INET6, v6("fe80::7", 53, uint32(lo.Index))},
		{"[fe80::7%no-such-if0]:53", 0, nil},
	} {
		var sa rawSockaddr
		family, err := sa.set(netip.MustParseAddrPort(tc.in))
		switch {
		case tc.want == nil:
			if err == nil {
				t.Errorf("%s: no error", tc.in)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case family != tc.family || sa.family() != tc.family || !bytes.Equal(sa.b[:sa.len], tc.want):
			t.Errorf("%s: family %d (%d), % x; want %d, % x", tc.in, family, sa.family(), sa.b[:sa.len], tc.family, tc.want)
		}
	}
}
