package proxy

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

	"golang.org/x/sys/unix"
)

// A daemon out of file descriptors refuses the pods' new flows — an RST
// for TCP, the datagram or echo request dropped — counts them apart from
// the destinations' failures (TCPNoResources, UDPNoResources,
// EchoNoResources), and relays again once descriptors are free.
func TestFlowsRefusedWithoutFileDescriptors(t *testing.T) {
	r := newRig(t, nil)
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr}))
	echoMode(t, r, "raw") // the raw ICMP socket, not opened yet
	// A listener nobody accepts on while descriptors are short (a Go
	// listener's goroutine would fail its accept with EMFILE and stop):
	// the handshake completes in its backlog, the test accepts after.
	ln, tcpPort := backlogListener(t)
	udpPort := udpEchoServer(t)

	restore := limitFDs(t)
	_, err := r.dialPod(ctxT(t, 3*time.Second), server, tcpPort)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		restore()
		t.Fatalf("pod dial without descriptors: %v, want ECONNREFUSED (an RST)", err)
	}
	uc, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, udpPort))
	if err != nil {
		restore()
		t.Fatal(err)
	}
	defer uc.Close()
	uc.Write([]byte("q"))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, perr := r.pod.Ping(ctx, server, 1, []byte("x"))
	cancel()
	if perr == nil {
		restore()
		t.Fatal("a ping was answered without descriptors")
	}
	s := r.waitStats("the flows refused", func(s Stats) bool { return s.UDPNoResources == 1 && s.EchoNoResources == 1 })
	restore()
	if s.TCPNoResources != 1 || s.TCPUnreachable != 0 || s.UDPDropped != 1 || s.UDPFlowsOpened != 0 ||
		s.EchoDropped != 1 || s.EchoFlowsOpened != 0 || s.EchoDenied != 0 {
		t.Fatalf("stats %+v, want one TCP, one UDP and one echo flow refused for want of descriptors, nothing else", s)
	}

	// Descriptors free again: both relay.
	c, err := r.dialPod(ctxT(t, 3*time.Second), server, tcpPort)
	must(t, err)
	defer c.Close()
	up := acceptOne(t, ln)
	go io.Copy(up, up)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("TCP after the limit was raised: %v", err)
	}
	uc.Write([]byte("q"))
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := uc.Read(make([]byte, 16)); err != nil {
		t.Fatalf("UDP after the limit was raised: %v", err)
	}
	if err := r.ping(2); err != nil {
		t.Fatalf("echo after the limit was raised: %v", err)
	}
}

// backlogListener listens on a loopback port without accepting: the
// listening socket's fd (closed at cleanup) and the port.
func backlogListener(t *testing.T) (fd int, port uint16) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	must(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	must(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	must(t, unix.Listen(fd, 8))
	sa, err := unix.Getsockname(fd)
	must(t, err)
	return fd, uint16(sa.(*unix.SockaddrInet4).Port)
}

// acceptOne takes the connection waiting in ln's backlog, as a net.Conn
// closed at cleanup.
func acceptOne(t *testing.T, ln int) net.Conn {
	t.Helper()
	nfd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
	must(t, err)
	f := os.NewFile(uintptr(nfd), "accepted")
	c, err := net.FileConn(f)
	f.Close()
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// limitFDs lowers the process's open-file limit to its lowest free
// descriptor, so that the next socket(2) fails with EMFILE, and returns
// the function that restores it (also run at cleanup).
func limitFDs(t *testing.T) (restore func()) {
	t.Helper()
	var old unix.Rlimit
	must(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &old))
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	unix.Close(fd)
	lim := old
	lim.Cur = uint64(fd)
	must(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &lim))
	done := false
	restore = func() {
		if !done {
			done = true
			must(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &old))
		}
	}
	t.Cleanup(restore)
	return restore
}
