package netfilter_test

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// A Go hook after conntrack sees the flow's state with CtState and
// diverts NEW flows with Divert: the first packet and, through the
// conntrack entry, the reply direction carry MarkDivert.
func TestCtStateAndDivertFromAHook(t *testing.T) {
	r := newRig(t, "", conntrack.Config{})
	type seen struct {
		state netfilter.CtState
		ok    bool
	}
	var log []seen
	r.hooks.Register(netfilter.Ops{Hook: netfilter.PreRouting, Priority: netfilter.PriMangle, Name: "divert",
		Fn: func(skb *buf.SKB, _ netfilter.State) netfilter.Verdict {
			st, ok := r.nf.CtState(skb)
			log = append(log, seen{st, ok})
			if ok && st == netfilter.CtNew {
				r.nf.Divert(skb)
			}
			return netfilter.Accept()
		}})
	skb := stacktest.IPv4("10.0.1.1", "203.0.113.9").UDP(5000, 53).SKB()
	defer skb.Consume()
	if _, ok := r.nf.CtState(skb); ok {
		t.Fatal("CtState before the conntrack hook")
	}
	mark := func(b []byte, from int) uint32 {
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		defer skb.Consume()
		skb.SetNetworkHeader()
		skb.InNIC = from
		r.hooks.Run(netfilter.PreRouting, skb, from, 0)
		r.hooks.Run(netfilter.LocalIn, skb, from, 0) // confirm
		return skb.Mark
	}
	if m := mark(stacktest.IPv4("10.0.1.1", "203.0.113.9").UDP(5000, 53).Bytes(), r.in.ID()); m&netfilter.MarkDivert == 0 {
		t.Fatalf("first packet mark %#x", m)
	}
	if m := mark(stacktest.IPv4("203.0.113.9", "10.0.1.1").UDP(53, 5000).Bytes(), r.out.ID()); m&netfilter.MarkDivert == 0 {
		t.Fatalf("reply mark %#x", m)
	}
	if len(log) != 2 || log[0] != (seen{netfilter.CtNew, true}) || log[1] != (seen{netfilter.CtEstablished, true}) {
		t.Fatalf("states %+v", log)
	}
}

// A transparent socket's packet (MarkDivert at OUTPUT) marks its flow,
// so the peer's reply is diverted at PREROUTING; an ordinary local flow's
// reply is not.
func TestLocalOutMarkDivertsReplies(t *testing.T) {
	r := newRig(t, "", conntrack.Config{})
	send := func(b []byte, m uint32) {
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		defer skb.Consume()
		skb.SetNetworkHeader()
		skb.Mark = m
		r.hooks.Run(netfilter.LocalOut, skb, 0, r.in.ID())
		r.hooks.Run(netfilter.PostRouting, skb, 0, r.in.ID())
	}
	reply := func(b []byte) uint32 {
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		defer skb.Consume()
		skb.SetNetworkHeader()
		skb.InNIC = r.in.ID()
		r.hooks.Run(netfilter.PreRouting, skb, r.in.ID(), 0)
		return skb.Mark
	}
	send(stacktest.IPv4("198.51.100.7", "10.0.1.1").TCP(40000, 8080).Flags(header.SYN).Seq(1).Window(1000).Bytes(), netfilter.MarkDivert)
	if m := reply(stacktest.IPv4("10.0.1.1", "198.51.100.7").TCP(8080, 40000).Flags(header.SYN | header.ACK).Seq(9).Ack(2).Window(1000).Bytes()); m&netfilter.MarkDivert == 0 {
		t.Fatalf("reply to a transparent socket: mark %#x", m)
	}
	send(stacktest.IPv4("10.0.1.254", "10.0.1.1").TCP(40001, 8080).Flags(header.SYN).Seq(1).Window(1000).Bytes(), 0)
	if m := reply(stacktest.IPv4("10.0.1.1", "10.0.1.254").TCP(8080, 40001).Flags(header.SYN | header.ACK).Seq(9).Ack(2).Window(1000).Bytes()); m != 0 {
		t.Fatalf("reply to an ordinary socket: mark %#x", m)
	}
}
