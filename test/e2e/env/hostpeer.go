package env

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
)

// HostPeer is a kernel host in a network namespace of its own, reached
// from the current (host) netns over a veth pair on a /30 from
// 10.254.0.0/16: HostAddr on the host's end, Addr on the peer's. The
// daemon's host sockets reach Addr like any host on a link of the node;
// the test can then make the peer vanish (Drop: its packets dropped by
// iptables in its namespace, no FIN, no RST). Close removes the namespace
// and the pair.
type HostPeer struct {
	NS, NSPath     string
	HostIf         string
	HostAddr, Addr netip.Addr
}

// NewHostPeer creates the namespace and the pair. On error it removes
// what it made.
func NewHostPeer() (p *HostPeer, err error) {
	var prefix netip.Prefix
	for i := 0; ; i++ {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 254, b[0], b[1] &^ 3}), 30)
		if FreePrefix(prefix) {
			break
		}
		if i == 20 {
			return nil, errors.New("env: no free /30 in 10.254.0.0/16 after 20 tries")
		}
	}
	s := Suffix()
	p = &HostPeer{NS: "ushp-" + s, HostIf: "ushp" + s, HostAddr: prefix.Addr().Next()}
	p.Addr = p.HostAddr.Next()
	p.NSPath = "/var/run/netns/" + p.NS
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	for _, st := range [][]string{
		{"ip", "netns", "add", p.NS},
		{"ip", "link", "add", p.HostIf, "type", "veth", "peer", "name", "eth0", "netns", p.NS},
		{"ip", "addr", "add", p.HostAddr.String() + "/30", "dev", p.HostIf},
		{"ip", "link", "set", p.HostIf, "up"},
		{"ip", "-n", p.NS, "addr", "add", p.Addr.String() + "/30", "dev", "eth0"},
		{"ip", "-n", p.NS, "link", "set", "eth0", "up"},
		{"ip", "-n", p.NS, "link", "set", "lo", "up"},
	} {
		if _, err = Run(st[0], st[1:]...); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Drop makes the peer vanish without a word: iptables in its namespace
// drops everything it receives and sends, so no FIN, RST or ICMP leaves
// it.
func (p *HostPeer) Drop() error {
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		if _, err := Run("ip", "netns", "exec", p.NS, "iptables", "-w", "-A", chain, "-j", "DROP"); err != nil {
			return fmt.Errorf("env: drop in %s: %w", p.NS, err)
		}
	}
	return nil
}

// Close deletes the namespace (its end of the pair and the pair with it)
// and the host's end should it remain. Idempotent.
func (p *HostPeer) Close() {
	_ = exec.Command("ip", "netns", "del", p.NS).Run()
	_ = exec.Command("ip", "link", "del", p.HostIf).Run()
}
