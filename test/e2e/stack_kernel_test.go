// Package e2e holds the end-to-end tests: the userspace stack against the
// Linux kernel over real veth pairs, and the CNI plugin driven by libcni.
// They need root (namespaces, veth, AF_PACKET) and skip, saying so,
// without it.
package e2e

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

// The kernel pings the stack: 100 echoes without loss, then 4000-byte
// echoes that are fragmented in both directions (RFC 791 reassembly on
// each side), and the kernel learns the stack's MAC by ARP (RFC 826). A
// capture written by the pcap tap is read back by tcpdump.
func TestKernelPingsStack(t *testing.T) {
	requireRoot(t)
	requireCmd(t, "ping")
	p := newKernelPeer(t, "10.211.0.1/24", "10.211.0.2/24", 1500)
	capture := filepath.Join(t.TempDir(), "ping.pcap")
	s, nicID := attachStack(t, p, capture)
	stackIP := p.StackAddr.Addr().String()

	out, err := p.Exec("ping", "-c", "100", "-i", "0.01", "-W", "2", "-q", stackIP)
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping 100: %v\n%s\nstack stats:\n%s", err, out, s.Stats())
	}
	out, err = p.Exec("ping", "-c", "5", "-i", "0.05", "-W", "2", "-s", "4000", "-q", stackIP)
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping -s 4000: %v\n%s\nstack stats:\n%s", err, out, s.Stats())
	}
	st := s.IPv4().Stats()
	if st.ReasmOKs < 5 || st.FragCreates < 10 {
		t.Fatalf("4000-byte echoes should be reassembled and fragmented by the stack: ReasmOKs %d FragCreates %d", st.ReasmOKs, st.FragCreates)
	}

	nic := s.Devices().ByID(nicID)
	out, err = p.Exec("ip", "neigh", "show", stackIP, "dev", p.If)
	if err != nil || !strings.Contains(out, nic.MAC().String()) {
		t.Fatalf("kernel ARP table lacks the stack MAC %s: %v\n%s", nic.MAC(), err, out)
	}

	requireCmd(t, "tcpdump")
	out2, err := exec.Command("tcpdump", "-r", capture, "-nn", "icmp").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out2)
	}
	dump := string(out2)
	req := regexp.MustCompile(`10\.211\.0\.1 > 10\.211\.0\.2: ICMP echo request`)
	rep := regexp.MustCompile(`10\.211\.0\.2 > 10\.211\.0\.1: ICMP echo reply`)
	if len(req.FindAllString(dump, -1)) < 100 || len(rep.FindAllString(dump, -1)) < 100 {
		t.Fatalf("capture should show >= 100 echo requests and replies:\n%.2000s", dump)
	}
}

// UDP both ways between kernel sockets and stack sockets (RFC 768).
func TestKernelUDPEchoBothWays(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer(t, "10.212.0.1/24", "10.212.0.2/24", 1500)
	s, _ := attachStack(t, p, "")
	stackAddr := netip.AddrPortFrom(p.StackAddr.Addr(), 7007)
	kernelAddr := netip.AddrPortFrom(p.KernelAddr.Addr(), 7008)

	// Stack server, kernel client.
	srv, err := s.ListenUDP(stackAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go env.ServeUDPEcho(srv)
	var kc *net.UDPConn
	if err := p.Do(func() (err error) {
		kc, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(stackAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	if _, err := env.CheckEcho(kc, []int{1, 100, 1472, 8000, 30000}, 3*time.Second); err != nil {
		t.Fatalf("kernel→stack: %v\n%s", err, s.Stats())
	}

	// Kernel server, stack client.
	var ks *net.UDPConn
	if err := p.Do(func() (err error) {
		ks, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(kernelAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	go env.ServeUDPEcho(ks)
	c, err := s.DialUDP(netip.AddrPort{}, kernelAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := env.CheckEcho(c, []int{1, 512, 1472, 4000, 60000}, 3*time.Second); err != nil {
		t.Fatalf("stack→kernel: %v\n%s", err, s.Stats())
	}
}

// RFC 1122 §4.1.3.1: a datagram to a port nobody listens on is answered
// with ICMP port unreachable, which the kernel turns into ECONNREFUSED on
// the sender's connected socket.
func TestKernelUDPToClosedStackPortIsRefused(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer(t, "10.213.0.1/24", "10.213.0.2/24", 1500)
	s, _ := attachStack(t, p, "")
	var kc *net.UDPConn
	if err := p.Do(func() (err error) {
		kc, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: p.StackAddr.Addr().AsSlice(), Port: 9})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	var lastErr error
	for i := 0; i < 5 && !errors.Is(lastErr, syscall.ECONNREFUSED); i++ {
		if _, err := kc.Write([]byte("anyone?")); err != nil {
			lastErr = err
			break
		}
		_ = kc.SetReadDeadline(time.Now().Add(time.Second))
		_, lastErr = kc.Read(make([]byte, 16))
	}
	if !errors.Is(lastErr, syscall.ECONNREFUSED) {
		t.Fatalf("want ECONNREFUSED, got %v\n%s", lastErr, s.Stats())
	}
	if s.UDP().Stats().NoPorts == 0 {
		t.Fatal("the stack should count the datagram in NoPorts")
	}
}
