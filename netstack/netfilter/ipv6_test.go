package netfilter_test

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// natChain6 is a dual-stack stacktest.Chain on a manual clock whose R
// runs a Netfilter on both families' hooks, loaded with rules; A and B
// have resolved R over IPv6.
func natChain6(t *testing.T, rules string) (a, r, b *stacktest.Node, nf *netfilter.Netfilter, clk *clock.Manual) {
	t.Helper()
	clk = clock.NewManual()
	a, r, b = stacktest.Chain(t, stacktest.WithClock(clk), stacktest.DualStack())
	nf = r.EnableNetfilter(netfilter.Config{})
	if err := nf.LoadText(rules); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Ping(ctx, stacktest.ChainRA6.Addr(), 0, nil); err != nil {
		t.Fatalf("ping R: %v", err)
	}
	if _, err := b.Ping(ctx, stacktest.ChainRB6.Addr(), 0, nil); err != nil {
		t.Fatalf("ping R: %v", err)
	}
	return a, r, b, nf, clk
}

func ping6(n *stacktest.Node, to *stacktest.Node, seq uint16, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := n.Ping(ctx, to.Addr6(), seq, bytes.Repeat([]byte{1}, size))
	return err
}

// The filter table sees IPv6 packets at FORWARD: an IPv6 rule drops,
// IPv4 rules (even negated) leave IPv6 alone, and --icmpv6-type matches.
func TestIPv6Filter(t *testing.T) {
	a, _, b, nf, _ := natChain6(t, `*filter
-A FORWARD -s 10.0.1.0/24 -j DROP
-A FORWARD ! -s 10.0.0.0/8 -j DROP
-A FORWARD -s fd00:1::/64 -p icmpv6 --icmpv6-type echo-request -d fd00:2::1 -j ACCEPT
`)
	if err := ping6(a, b, 1, 56); err != nil {
		t.Fatalf("ping through IPv4 rules: %v", err)
	}
	if err := nf.LoadText("*filter\n-A FORWARD -s fd00:1::/64 -p icmpv6 --icmpv6-type echo-request -j DROP\n"); err != nil {
		t.Fatal(err)
	}
	if err := ping6(a, b, 2, 56); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping past a DROP rule: %v", err)
	}
	if pk, _ := nf.Ruleset().Chain("filter", "FORWARD").Rules[0].Counters(); pk != 1 {
		t.Fatalf("rule counter %d", pk)
	}
}

// REJECT answers an IPv6 packet in ICMPv6 (ip6t_REJECT): the sender's
// ping fails with the errno of the code (RFC 4443 §3.1 code 1 → EACCES).
func TestIPv6Reject(t *testing.T) {
	a, _, b, _, _ := natChain6(t, "*filter\n-A FORWARD -d fd00:2::1 -j REJECT --reject-with icmp6-adm-prohibited\n")
	if err := ping6(a, b, 1, 56); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("ping rejected: %v", err)
	}
}

// Conntrack follows IPv6 flows: a stateful firewall on R lets replies
// to A's echo requests in and nothing that B starts.
func TestIPv6StatefulFirewall(t *testing.T) {
	a, r, b, nf, _ := natChain6(t, `*filter
:FORWARD DROP
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i r-ar -j ACCEPT
`)
	if err := ping6(a, b, 1, 56); err != nil {
		t.Fatalf("A→B: %v", err)
	}
	if err := ping6(b, a, 2, 56); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("B→A should be dropped: %v", err)
	}
	// A 3000-byte echo: reassembled at R's PREROUTING for tracking, and
	// forwarded as fragments again.
	if err := ping6(a, b, 3, 3000); err != nil {
		t.Fatalf("fragmented A→B: %v\n%s", err, r.Stats())
	}
	if st := nf.Stats(); st.DefragOKs < 2 {
		t.Fatalf("R reassembled %d packets", st.DefragOKs)
	}
	if st := b.Stats().IP6; st.ReasmOKs != 1 {
		t.Fatalf("B reassembled %d packets (R must forward fragments)", st.ReasmOKs)
	}
	found := false
	for _, e := range nf.Conntrack().List() {
		if e.Original.Proto == header.ProtoICMPv6 && e.Original.Src == a.Addr6() && e.Status&conntrack.StatusSeenReply != 0 {
			found = true
		}
	}
	if !found {
		t.Fatalf("no replied ICMPv6 flow in %v", nf.Conntrack().List())
	}
}

// NAT66: MASQUERADE on R's B side rewrites A's source to R's address on
// that link (RFC 6724's choice), and the replies are translated back.
func TestIPv6Masquerade(t *testing.T) {
	a, _, b, nf, _ := natChain6(t, "*nat\n-A POSTROUTING -o r-rb -s fd00:1::/64 -j MASQUERADE\n")
	if err := ping6(a, b, 1, 56); err != nil {
		t.Fatalf("ping through MASQUERADE: %v", err)
	}
	var e conntrack.Entry
	for _, x := range nf.Conntrack().List() {
		if x.Original.Proto == header.ProtoICMPv6 && x.Original.Src == a.Addr6() {
			e = x
		}
	}
	if e.Reply.Dst != stacktest.ChainRB6.Addr() || e.Reply.Src != b.Addr6() {
		t.Fatalf("flow %v → reply %v", e.Original, e.Reply)
	}
	if n := b.Neigh().Entries(); len(n) == 0 {
		t.Fatal("B saw nobody")
	}
	// B's neighbour for the translated source is R, not A.
	if _, ok := b.Neigh().Lookup(b.NIC().ID(), a.Addr6()); ok {
		t.Fatal("B learnt A's address: not translated")
	}
}
