package e2e

import (
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

// The stack as an IPv6 router between two kernels, the first reaching it
// by its link-local address, the second link with the minimum MTU
// (1280): the kernels ping across it and see the hop
// limit decremented (RFC 8200 §3); an echo too big for the second link
// with fragmentation forbidden draws a Packet Too Big carrying 1280 (RFC
// 4443 §3.2), which the kernel turns into its path MTU (RFC 8201), after
// which large echoes go through fragmented by the kernels and forwarded
// as fragments; a hop limit of 1 draws Time Exceeded from the stack (RFC
// 4443 §3.3).
func TestKernelIPv6RouterPMTU(t *testing.T) {
	requireRoot(t)
	requireCmd(t, "ping")
	a := newKernelPeer6(t, "10.217.0.1/24", "10.217.0.2/24", "fd00:217::1/64", "fd00:217::2/64", 1500)
	b := newKernelPeer6(t, "10.218.0.1/24", "10.218.0.2/24", "fd00:218::1/64", "fd00:218::2/64", 1280)
	s := netstack.New()
	t.Cleanup(func() { _ = s.Close() })
	var nicA *dev.NIC
	for i, p := range []*env.Peer{a, b} {
		nic, closeCapture, err := p.AttachAs(s, []string{"eth0", "eth1"}[i], "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(closeCapture)
		if i == 0 {
			nicA = nic
		}
	}
	s.SetForwarding6(true)
	// A routes through the stack's link-local address (the gateway's on
	// a pod link, RFC 4291 §2.5.6), B through its global one.
	for _, st := range [][]string{
		{a.NS, "fd00:218::/64", netstack.LinkLocal(nicA).String(), "dev", a.If},
		{b.NS, "fd00:217::/64", "fd00:218::2"},
	} {
		if _, err := env.Run("ip", append([]string{"-n", st[0], "-6", "route", "add", st[1], "via"}, st[2:]...)...); err != nil {
			t.Fatal(err)
		}
	}
	dst := b.KernelAddr6.Addr().String()
	out, err := a.Exec("ping", "-6", "-c", "3", "-i", "0.05", "-W", "2", dst)
	if err != nil || !strings.Contains(out, " 0% packet loss") || !strings.Contains(out, "ttl=63") {
		t.Fatalf("ping across the stack: %v\n%s\n%s", err, out, s.Stats())
	}

	// Packet Too Big. ping -M do sends 1448-byte packets unfragmented.
	out, _ = a.Exec("ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1400", dst)
	if s.IPv6().Stats().ICMP.OutPktTooBigs == 0 {
		t.Fatalf("the stack sent no Packet Too Big:\n%s\n%s", out, s.Stats())
	}
	out, err = a.Exec("ip", "-6", "route", "get", dst)
	if err != nil || !regexp.MustCompile(`mtu 1280\b`).MatchString(out) {
		t.Fatalf("the kernel did not learn the path MTU: %v\n%s", err, out)
	}
	out, err = a.Exec("ping", "-6", "-c", "3", "-i", "0.05", "-W", "2", "-s", "3000", dst)
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("fragmented ping across the stack: %v\n%s\n%s", err, out, s.Stats())
	}
	st := s.IPv6().Stats()
	if st.OutForwDatagrams < 12 || st.ReasmOKs != 0 {
		t.Fatalf("the stack should forward fragments, not reassemble them: %+v", st)
	}

	// Time Exceeded.
	out, _ = a.Exec("ping", "-6", "-c", "1", "-W", "2", "-t", "1", dst)
	if !strings.Contains(out, "Time exceeded") || !strings.Contains(out, a.StackAddr6.Addr().String()) {
		t.Fatalf("hop limit 1 across the stack:\n%s", out)
	}
	if s.IPv6().Stats().ICMP.OutTimeExcds == 0 {
		t.Fatal("no Time Exceeded counted")
	}
}

// NAT66 between kernels: with MASQUERADE on the stack's second link, the
// far kernel sees A's echo requests come from the stack's address on that
// link (RFC 6724's choice), and A still gets its replies (the reply
// direction translated back).
func TestKernelIPv6Masquerade(t *testing.T) {
	requireRoot(t)
	requireCmd(t, "ping")
	a := newKernelPeer6(t, "10.219.0.1/24", "10.219.0.2/24", "fd00:219::1/64", "fd00:219::2/64", 1500)
	b := newKernelPeer6(t, "10.220.0.1/24", "10.220.0.2/24", "fd00:220::1/64", "fd00:220::2/64", 1500)
	s := netstack.New()
	t.Cleanup(func() { _ = s.Close() })
	for i, p := range []*env.Peer{a, b} {
		_, closeCapture, err := p.AttachAs(s, []string{"eth0", "eth1"}[i], "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(closeCapture)
	}
	s.SetForwarding6(true)
	if err := s.EnableNetfilter(netfilter.Config{}).LoadText("*nat\n-A POSTROUTING -o eth1 -s fd00:219::/64 -j MASQUERADE\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Run("ip", "-n", a.NS, "-6", "route", "add", "fd00:220::/64", "via", "fd00:219::2"); err != nil {
		t.Fatal(err)
	}
	// B has no route back to A's prefix: only a translated source works.
	var conn net.PacketConn
	if err := b.Do(func() (err error) {
		conn, err = net.ListenPacket("ip6:ipv6-icmp", "fd00:220::1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	out, err := a.Exec("ping", "-6", "-c", "3", "-i", "0.05", "-W", "2", b.KernelAddr6.Addr().String())
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping through MASQUERADE: %v\n%s\n%s", err, out, s.Stats())
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("B saw no echo request: %v", err)
		}
		if n > 0 && buf[0] == header.ICMPv6EchoRequest {
			if got := from.(*net.IPAddr).IP.String(); got != b.StackAddr6.Addr().String() {
				t.Fatalf("B saw the echo request from %s, want the stack's %s", got, b.StackAddr6.Addr())
			}
			return
		}
	}
}
