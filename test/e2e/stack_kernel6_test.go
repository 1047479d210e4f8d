package e2e

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

// newKernelPeer6 is a dual-stack kernel peer: IPv4 as newKernelPeer, and
// kernel6/stack6 on the same veth.
func newKernelPeer6(t testing.TB, kernel4, stack4, kernel6, stack6 string, mtu int) *env.Peer {
	t.Helper()
	p := newKernelPeer(t, kernel4, stack4, mtu)
	if err := p.AddIPv6(kernel6, stack6); err != nil {
		t.Fatal(err)
	}
	return p
}

// kernelMAC is the MAC of the kernel end of the peer's veth.
func kernelMAC(t testing.TB, p *env.Peer) header.MAC {
	t.Helper()
	var mac header.MAC
	if err := p.Do(func() error {
		ifc, err := net.InterfaceByName(p.If)
		if err != nil {
			return err
		}
		mac = header.MAC(ifc.HardwareAddr)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// The kernel and the stack ping each other over IPv6 (RFC 4443 §4) with
// 56- and 3000-byte payloads: the large ones are fragmented by each
// sender and reassembled by each receiver (RFC 8200 §4.5). Each side
// resolves the other by Neighbor Discovery (RFC 4861 §7.2): the kernel's
// neighbour table holds the stack's MAC, the stack's holds the kernel's.
// The link-local addresses answer too. A capture shows the solicitations
// and advertisements.
func TestKernelPing6BothWays(t *testing.T) {
	requireRoot(t)
	requireCmd(t, "ping")
	p := newKernelPeer6(t, "10.215.0.1/24", "10.215.0.2/24", "fd00:215::1/64", "fd00:215::2/64", 1500)
	capture := filepath.Join(t.TempDir(), "ping6.pcap")
	s, nicID := attachStack(t, p, capture)
	stack6 := p.StackAddr6.Addr().String()
	kernel6 := p.KernelAddr6.Addr()

	// Kernel → stack.
	for _, size := range []string{"56", "3000"} {
		out, err := p.Exec("ping", "-6", "-c", "20", "-i", "0.01", "-W", "2", "-q", "-s", size, stack6)
		if err != nil || !strings.Contains(out, " 0% packet loss") {
			t.Fatalf("kernel ping -6 -s %s: %v\n%s\nstack stats:\n%s", size, err, out, s.Stats())
		}
	}
	// Stack → kernel.
	for i, size := range []int{56, 3000} {
		for seq := range 10 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := s.Ping(ctx, kernel6, uint16(100*i+seq), bytes.Repeat([]byte{byte(seq)}, size))
			cancel()
			if err != nil {
				t.Fatalf("stack ping %d bytes, seq %d: %v\n%s", size, seq, err, s.Stats())
			}
		}
	}
	st := s.IPv6().Stats()
	if st.ReasmOKs < 20 || st.FragCreates < 40 {
		t.Fatalf("3000-byte echoes should be reassembled and fragmented by the stack: ReasmOKs %d FragCreates %d", st.ReasmOKs, st.FragCreates)
	}

	// NDP both ways.
	nic := s.Devices().ByID(nicID)
	out, err := p.Exec("ip", "-6", "neigh", "show", stack6, "dev", p.If)
	if err != nil || !strings.Contains(out, nic.MAC().String()) {
		t.Fatalf("kernel neighbour table lacks the stack MAC %s: %v\n%s", nic.MAC(), err, out)
	}
	e, ok := s.Neigh().Lookup(nicID, kernel6)
	if km := kernelMAC(t, p); !ok || e.MAC != km || e.State == neigh.Incomplete || e.State == neigh.Failed {
		t.Fatalf("stack neighbour entry for %v: %+v (kernel MAC %v)", kernel6, e, km)
	}
	if n := s.Stats().Neigh; n.NDPInSolicits == 0 || n.NDPOutAdverts == 0 {
		t.Fatalf("the stack answered no solicitation: %+v", n)
	}

	// Link-local, both ways (RFC 4291 §2.5.6).
	ll := netstack.LinkLocal(nic).String() + "%" + p.If
	if out, err := p.Exec("ping", "-6", "-c", "3", "-i", "0.05", "-W", "2", "-q", ll); err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("kernel ping to the stack's link-local %s: %v\n%s", ll, err, out)
	}
	out, err = p.Exec("ip", "-6", "-o", "addr", "show", "dev", p.If, "scope", "link")
	m := regexp.MustCompile(`inet6 (fe80::[0-9a-f:]+)/64`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("kernel link-local address: %v\n%s", err, out)
	}
	kll := netip.MustParseAddr(m[1]).WithZone(nic.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.Ping(ctx, kll, 1, []byte("link-local")); err != nil {
		t.Fatalf("stack ping to the kernel's link-local %v: %v", kll, err)
	}

	requireCmd(t, "tcpdump")
	out2, err := exec.Command("tcpdump", "-r", capture, "-nn", "icmp6").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out2)
	}
	dump := string(out2)
	for _, want := range []string{"neighbor solicitation", "neighbor advertisement", "echo request", "echo reply"} {
		if !strings.Contains(dump, want) {
			t.Fatalf("capture lacks %q:\n%.3000s", want, dump)
		}
	}
}

// RFC 4861 §7.2.3: with no proxy policy the stack does not answer a
// solicitation for an address that is not its own, so the kernel's
// resolution of it fails. With the pod-link policy (every address but the
// peer's own, as SetProxyARP is used on pod links) it answers with its
// MAC (§7.2.8), and the kernel sends the packet to the stack.
func TestKernelNDPProxy(t *testing.T) {
	requireRoot(t)
	requireCmd(t, "ping")
	p := newKernelPeer6(t, "10.216.0.1/24", "10.216.0.2/24", "fd00:216::1/64", "fd00:216::2/64", 1500)
	s, nicID := attachStack(t, p, "")
	adverts := func() uint64 { return s.Stats().Neigh.NDPOutAdverts }
	before := adverts()
	out, err := p.Exec("ping", "-6", "-c", "1", "-W", "2", "fd00:216::77")
	if err == nil || strings.Contains(out, " 0% packet loss") {
		t.Fatalf("a ping to an absent address succeeded:\n%s", out)
	}
	if s.Stats().Neigh.NDPInSolicits == 0 || adverts() != before {
		t.Fatalf("the stack answered for an address not its own: %+v", s.Stats().Neigh)
	}
	out, _ = p.Exec("ip", "-6", "neigh", "show", "fd00:216::77", "dev", p.If)
	if strings.Contains(out, "lladdr") {
		t.Fatalf("the kernel resolved an absent address: %s", out)
	}

	kernel6 := p.KernelAddr6.Addr()
	s.SetProxyARP(nicID, func(target netip.Addr) bool { return target != kernel6 })
	_, _ = p.Exec("ping", "-6", "-c", "1", "-W", "1", "fd00:216::78")
	mac := s.Devices().ByID(nicID).MAC().String()
	out, err = p.Exec("ip", "-6", "neigh", "show", "fd00:216::78", "dev", p.If)
	if err != nil || !strings.Contains(out, mac) {
		t.Fatalf("the kernel did not learn the stack's MAC %s for a proxied address: %v\n%s", mac, err, out)
	}
	if adverts() == before {
		t.Fatal("no proxy advertisement")
	}

	// RFC 4862 §5.4: the kernel's duplicate address detection. A probe
	// for an address the proxy policy covers is not answered (the stack
	// never claims what it does not own), so the kernel's new address
	// becomes valid; a probe for the stack's own address is answered
	// (§5.4.3), so the kernel marks that address failed.
	for _, addr := range []string{"fd00:216::55/64", p.StackAddr6.String()} {
		if _, err := env.Run("ip", "-n", p.NS, "-6", "addr", "add", addr, "dev", p.If); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ = p.Exec("ip", "-6", "addr", "show", "dev", p.If)
		proxied := regexp.MustCompile(`inet6 fd00:216::55/64 scope global( noprefixroute)?\s`).MatchString(out) &&
			!regexp.MustCompile(`fd00:216::55/64 .*(tentative|dadfailed)`).MatchString(out)
		own := regexp.MustCompile(`inet6 ` + regexp.QuoteMeta(p.StackAddr6.String()) + ` .*dadfailed`).MatchString(out)
		if proxied && own {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("DAD outcome: want fd00:216::55 valid and %v dadfailed:\n%s\n%+v", p.StackAddr6, out, s.Stats().Neigh)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := s.Stats().Neigh; n.DADReplies != 1 {
		t.Fatalf("DAD replies %d", n.DADReplies)
	}
}
