package e2e

import (
	"os"
	"os/exec"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
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

// newKernelPeer is env.NewPeer, removed in t.Cleanup even when the test fails.
func newKernelPeer(t testing.TB, kernelAddr, stackAddr string, mtu int) *env.Peer {
	t.Helper()
	p, err := env.NewPeer(kernelAddr, stackAddr, mtu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// attachStack starts a stack with a NIC on the peer's stack end,
// optionally capturing to a pcap file; everything goes in t.Cleanup.
func attachStack(t testing.TB, p *env.Peer, capture string) (*netstack.Stack, int) {
	t.Helper()
	s := netstack.New()
	t.Cleanup(func() { _ = s.Close() })
	nic, closeCapture, err := p.Attach(s, capture)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeCapture)
	return s, nic.ID()
}
