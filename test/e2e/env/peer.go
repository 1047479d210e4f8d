// Package env builds the kernel side of end-to-end runs: network
// namespaces with real kernel hosts, veth pairs whose far end the
// userspace stack drives over AF_PACKET, and commands run inside them.
// The tests in test/e2e and the demo both use it. Not owned here: the
// stack (netstack) and the CNI plugin's own namespaces (veth, plugin).
package env

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/link/pcap"
)

// Suffix is a short random name part, so concurrent runs never collide.
func Suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Run runs a command and returns its combined output, with the command
// line in the error.
func Run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Peer is a kernel host in its own namespace, wired by a veth pair to a
// second namespace whose end the stack drives over AF_PACKET.
type Peer struct {
	NS, StackNS         string // namespace names
	NSPath, StackNSPath string
	If, StackIf         string
	KernelAddr          netip.Prefix
	StackAddr           netip.Prefix
	// KernelAddr6 and StackAddr6 are set by AddIPv6 (dual-stack peers).
	KernelAddr6 netip.Prefix
	StackAddr6  netip.Prefix
}

// NewPeer creates the two namespaces and the veth between them. On error
// it removes what it made; otherwise Close removes it.
func NewPeer(kernelAddr, stackAddr string, mtu int) (p *Peer, err error) {
	s := Suffix()
	p = &Peer{NS: "usk-" + s, StackNS: "uss-" + s, If: "k" + s, StackIf: "s" + s}
	if p.KernelAddr, err = netip.ParsePrefix(kernelAddr); err != nil {
		return nil, err
	}
	if p.StackAddr, err = netip.ParsePrefix(stackAddr); err != nil {
		return nil, err
	}
	p.NSPath, p.StackNSPath = "/var/run/netns/"+p.NS, "/var/run/netns/"+p.StackNS
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	steps := [][]string{
		{"ip", "netns", "add", p.NS},
		{"ip", "netns", "add", p.StackNS},
		{"ip", "link", "add", p.If, "mtu", fmt.Sprint(mtu), "netns", p.NS, "type", "veth",
			"peer", "name", p.StackIf, "mtu", fmt.Sprint(mtu), "netns", p.StackNS},
		{"ip", "-n", p.NS, "addr", "add", kernelAddr, "dev", p.If},
		{"ip", "-n", p.NS, "link", "set", p.If, "up"},
		{"ip", "-n", p.NS, "link", "set", "lo", "up"},
		{"ip", "-n", p.StackNS, "link", "set", p.StackIf, "up"},
	}
	for _, st := range steps {
		if _, err = Run(st[0], st[1:]...); err != nil {
			return nil, err
		}
	}
	// The stack's end has no kernel address and no IPv6, so the kernel in
	// the stack namespace never answers for it.
	_, _ = Run("ip", "netns", "exec", p.StackNS, "sysctl", "-qw", "net.ipv6.conf."+p.StackIf+".disable_ipv6=1")
	return p, nil
}

// AddIPv6 makes the peer dual-stack: the kernel end gets kernelAddr
// (without duplicate address detection, so it is usable at once: "nodad")
// and Attach gives the stack stackAddr beside the IPv4 one. The stack's
// end stays without kernel IPv6 in its namespace.
func (p *Peer) AddIPv6(kernelAddr, stackAddr string) (err error) {
	if p.KernelAddr6, err = netip.ParsePrefix(kernelAddr); err != nil {
		return err
	}
	if p.StackAddr6, err = netip.ParsePrefix(stackAddr); err != nil {
		return err
	}
	_, err = Run("ip", "-n", p.NS, "-6", "addr", "add", kernelAddr, "dev", p.If, "nodad")
	return err
}

// Close deletes both namespaces, and the veth with them. Idempotent.
func (p *Peer) Close() {
	_ = exec.Command("ip", "netns", "del", p.NS).Run()
	_ = exec.Command("ip", "netns", "del", p.StackNS).Run()
}

// Attach gives s a NIC named eth0 on the peer's stack end, with the stack
// address, the veth's own MAC, and (when capture is set) a pcap tap on
// every frame. The returned close function closes the capture file.
func (p *Peer) Attach(s *netstack.Stack, capture string) (nic *dev.NIC, closeCapture func(), err error) {
	return p.AttachAs(s, "eth0", capture)
}

// AttachAs is Attach with the NIC named name (a stack with several peers).
func (p *Peer) AttachAs(s *netstack.Stack, name, capture string) (nic *dev.NIC, closeCapture func(), err error) {
	closeCapture = func() {}
	ep, err := afpacket.Open(afpacket.Config{NetNS: p.StackNSPath, Name: p.StackIf})
	if err != nil {
		return nil, closeCapture, err
	}
	if capture != "" {
		f, err := os.Create(capture)
		if err != nil {
			ep.Close()
			return nil, closeCapture, err
		}
		w, err := pcap.NewWriter(f, 0)
		if err != nil {
			f.Close()
			ep.Close()
			return nil, closeCapture, err
		}
		remove := s.Devices().AddTap(func(_ *dev.NIC, skb *buf.SKB, _ dev.Direction) {
			_ = w.WritePacket(time.Now(), skb.Bytes())
		})
		closeCapture = func() { remove(); _ = f.Close() }
	}
	nic, err = s.AddNIC(ep, netstack.NICConfig{Name: name, MAC: header.MAC(ep.MAC())})
	if err != nil {
		closeCapture()
		ep.Close()
		return nil, func() {}, err
	}
	if err := s.AddAddress(nic.ID(), p.StackAddr); err != nil {
		closeCapture()
		return nil, func() {}, err
	}
	if p.StackAddr6.IsValid() {
		if err := s.AddAddress(nic.ID(), p.StackAddr6); err != nil {
			closeCapture()
			return nil, func() {}, err
		}
	}
	return nic, closeCapture, nil
}

// Exec runs a command inside the kernel peer's namespace.
func (p *Peer) Exec(name string, args ...string) (string, error) {
	return Run("ip", append([]string{"netns", "exec", p.NS, name}, args...)...)
}

// Do runs fn on a thread inside the kernel peer's namespace: sockets it
// opens stay in that namespace.
func (p *Peer) Do(fn func() error) error {
	return ns.WithNetNSPath(p.NSPath, func(ns.NetNS) error { return fn() })
}
