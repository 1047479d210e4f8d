package netfilter_test

import (
	"bytes"
	"log/slog"
	"net/netip"
	"sync"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// rig is a Netfilter on its own Hooks with two links, eth0 (10.0.1.254/24,
// towards clients) and up0 (192.0.2.1/24, the uplink), driven by calling
// the hooks as ipv4 does: no stack, no goroutines.
type rig struct {
	t      testing.TB
	clk    *clock.Manual
	hooks  *netfilter.Hooks
	nf     *netfilter.Netfilter
	devs   *dev.Devices
	in     *dev.NIC
	out    *dev.NIC
	sender *fakeSender
	logs   *bytes.Buffer
}

type icmpSent struct{ typ, code uint8 }

type fakeSender struct {
	mu   sync.Mutex
	sent []icmpSent
}

func (f *fakeSender) SendICMPError(skb *buf.SKB, typ, code uint8, info uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, icmpSent{typ, code})
}

func newRig(t testing.TB, rules string, ct conntrack.Config) *rig {
	t.Helper()
	r := &rig{t: t, clk: clock.NewManual(), hooks: &netfilter.Hooks{}, sender: &fakeSender{}, logs: &bytes.Buffer{}}
	r.devs = dev.NewDevices(r.clk)
	add := func(name, addr string) *dev.NIC {
		a, _ := pipe.New(1500)
		t.Cleanup(func() { a.Close() })
		n, err := r.devs.Add(a, dev.Config{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.AddAddress(netip.MustParsePrefix(addr)); err != nil {
			t.Fatal(err)
		}
		return n
	}
	r.in = add("eth0", "10.0.1.254/24")
	r.out = add("up0", "192.0.2.1/24")
	r.nf = netfilter.New(netfilter.Config{Hooks: r.hooks, Clock: r.clk, Devices: r.devs, Sender: r.sender,
		Conntrack: ct, Logger: slog.New(slog.NewTextHandler(r.logs, nil))})
	if rules != "" {
		if err := r.nf.LoadText(rules); err != nil {
			t.Fatalf("LoadText: %v", err)
		}
	}
	return r
}

// forward runs a packet arriving on from and leaving on to through
// PREROUTING, FORWARD and POSTROUTING; it returns the first verdict that
// was not Accept (or Accept) and the packet bytes after the hooks.
func (r *rig) forward(b []byte, from, to *dev.NIC) (netfilter.Verdict, []byte) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	defer skb.Consume()
	skb.SetNetworkHeader()
	skb.InNIC = from.ID()
	if v := r.hooks.Run(netfilter.PreRouting, skb, from.ID(), 0); !v.Accepted() {
		return v, nil
	}
	if v := r.hooks.Run(netfilter.Forward, skb, from.ID(), to.ID()); !v.Accepted() {
		return v, nil
	}
	if v := r.hooks.Run(netfilter.PostRouting, skb, from.ID(), to.ID()); !v.Accepted() {
		return v, nil
	}
	return netfilter.Accept(), append([]byte(nil), skb.Bytes()...)
}

// out sends a packet from the client side to the uplink; back the reverse.
func (r *rig) outb(b []byte) (netfilter.Verdict, []byte)  { return r.forward(b, r.in, r.out) }
func (r *rig) backb(b []byte) (netfilter.Verdict, []byte) { return r.forward(b, r.out, r.in) }

// local runs a packet from from through PREROUTING and INPUT (local delivery).
func (r *rig) local(b []byte, from *dev.NIC) (netfilter.Verdict, []byte) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	defer skb.Consume()
	skb.SetNetworkHeader()
	skb.InNIC = from.ID()
	if v := r.hooks.Run(netfilter.PreRouting, skb, from.ID(), 0); !v.Accepted() {
		return v, nil
	}
	if v := r.hooks.Run(netfilter.LocalIn, skb, from.ID(), 0); !v.Accepted() {
		return v, nil
	}
	return netfilter.Accept(), append([]byte(nil), skb.Bytes()...)
}

func (r *rig) counters(table, chain string, i int) (uint64, uint64) {
	r.t.Helper()
	c := r.nf.Ruleset().Chain(table, chain)
	if c == nil || i >= len(c.Rules) {
		r.t.Fatalf("no rule %s %s %d", table, chain, i)
	}
	return c.Rules[i].Counters()
}
