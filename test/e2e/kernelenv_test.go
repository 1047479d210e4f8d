package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/link/pcap"
)

// requireRoot skips a test that needs namespaces when not root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth pairs")
	}
}

// requireCmd skips when a Debian-packaged peer is missing (make test installs them).
func requireCmd(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (make deps installs it): %v", name, err)
	}
}

func suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// kernelPeer is a kernel host in its own namespace, wired by a veth pair to
// a second namespace whose end the stack drives over AF_PACKET.
type kernelPeer struct {
	NS, StackNS         string // namespace names
	NSPath, StackNSPath string
	If, StackIf         string
	KernelAddr          netip.Prefix
	StackAddr           netip.Prefix
}

// newKernelPeer creates the two namespaces and the veth between them, and
// removes everything in t.Cleanup even when the test fails.
func newKernelPeer(t testing.TB, kernelAddr, stackAddr string, mtu int) *kernelPeer {
	t.Helper()
	s := suffix()
	p := &kernelPeer{
		NS: "usk-" + s, StackNS: "uss-" + s,
		If: "k" + s, StackIf: "s" + s,
		KernelAddr: netip.MustParsePrefix(kernelAddr),
		StackAddr:  netip.MustParsePrefix(stackAddr),
	}
	p.NSPath, p.StackNSPath = "/var/run/netns/"+p.NS, "/var/run/netns/"+p.StackNS
	t.Cleanup(func() {
		// Deleting the namespaces deletes the veth with them.
		_ = exec.Command("ip", "netns", "del", p.NS).Run()
		_ = exec.Command("ip", "netns", "del", p.StackNS).Run()
	})
	run(t, "ip", "netns", "add", p.NS)
	run(t, "ip", "netns", "add", p.StackNS)
	run(t, "ip", "link", "add", p.If, "mtu", fmt.Sprint(mtu), "netns", p.NS, "type", "veth",
		"peer", "name", p.StackIf, "mtu", fmt.Sprint(mtu), "netns", p.StackNS)
	run(t, "ip", "-n", p.NS, "addr", "add", kernelAddr, "dev", p.If)
	run(t, "ip", "-n", p.NS, "link", "set", p.If, "up")
	run(t, "ip", "-n", p.NS, "link", "set", "lo", "up")
	// The stack's end has no kernel address and no IPv6, so the kernel in
	// the stack namespace never answers for it.
	_ = exec.Command("ip", "netns", "exec", p.StackNS, "sysctl", "-qw", "net.ipv6.conf."+p.StackIf+".disable_ipv6=1").Run()
	run(t, "ip", "-n", p.StackNS, "link", "set", p.StackIf, "up")
	return p
}

// attach starts a stack with a NIC on the peer's stack end, optionally
// capturing every frame to a pcap file.
func (p *kernelPeer) attach(t testing.TB, capture string) (*netstack.Stack, int) {
	t.Helper()
	ep, err := afpacket.Open(afpacket.Config{NetNS: p.StackNSPath, Name: p.StackIf})
	if err != nil {
		t.Fatalf("afpacket open: %v", err)
	}
	s := netstack.New()
	t.Cleanup(func() { _ = s.Close() })
	if capture != "" {
		f, err := os.Create(capture)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Close() })
		w, err := pcap.NewWriter(f, 0)
		if err != nil {
			t.Fatal(err)
		}
		s.Devices().AddTap(func(_ *dev.NIC, skb *buf.SKB, _ dev.Direction) {
			_ = w.WritePacket(time.Now(), skb.Bytes())
		})
	}
	nic, err := s.AddNIC(ep, netstack.NICConfig{Name: "eth0", MAC: header.MAC(ep.MAC())})
	if err != nil {
		t.Fatalf("add NIC: %v", err)
	}
	if err := s.AddAddress(nic.ID(), p.StackAddr); err != nil {
		t.Fatalf("add address: %v", err)
	}
	return s, nic.ID()
}

// exec runs a command inside the kernel peer's namespace.
func (p *kernelPeer) exec(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", p.NS, name}, args...)...).CombinedOutput()
	return string(out), err
}

// do runs fn on a thread inside the kernel peer's namespace: sockets it
// opens stay in that namespace.
func (p *kernelPeer) do(fn func() error) error {
	return ns.WithNetNSPath(p.NSPath, func(ns.NetNS) error { return fn() })
}
