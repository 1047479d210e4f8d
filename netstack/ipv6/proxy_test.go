package ipv6

import (
	"bytes"
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// divertAll marks every packet at PREROUTING as a DIVERT rule would.
func divertAll(tn *testNet) {
	tn.hooks.Register(netfilter.Ops{Hook: netfilter.PreRouting, Name: "divert", Fn: func(skb *buf.SKB, _ netfilter.State) netfilter.Verdict {
		skb.Mark |= netfilter.MarkDivert
		return netfilter.Accept()
	}})
}

// Proxy mode: a diverted echo request to a foreign address goes to the
// interceptor (or is dropped and counted without one), and the proxy
// answers as that address.
func TestEchoDiverted(t *testing.T) {
	tn := newTestNet(t)
	divertAll(tn)
	req := pkt{src: pod, dst: remote, proto: header.ProtoICMPv6,
		payload: icmp6(pod, remote, header.ICMPv6EchoRequest, 0, header.EchoRest(5, 6), []byte("data"))}.bytes()
	tn.rcv(1, req)
	if tn.counter("Icmp6InEchoDivertDrops") != 1 || tn.dropped(DropEchoNoInterceptor) != 1 {
		t.Fatal("no interceptor: not counted")
	}
	type call struct {
		src, dst netip.Addr
		id, seq  uint16
		data     string
		header   string
	}
	var got []call
	tn.l.SetEchoInterceptor(func(r EchoRequest) {
		got = append(got, call{r.Src, r.Dst, r.ID, r.Seq, string(r.Payload), string(r.Header)})
	})
	tn.rcv(1, req)
	// The header is what an ICMPv6 error quotes first: the IPv6 header
	// and the ICMPv6 header, up to the data.
	wantHdr := string(req[:header.IPv6MinSize+header.ICMPv6MinSize])
	if len(got) != 1 || got[0] != (call{ip(pod), ip(remote), 5, 6, "data", wantHdr}) || len(tn.take()) != 0 {
		t.Fatalf("intercepted %+v", got)
	}
	// Requests to our own addresses are answered as always.
	tn.rcv(1, pkt{src: pod, dst: gw, proto: header.ProtoICMPv6,
		payload: icmp6(pod, gw, header.ICMPv6EchoRequest, 0, header.EchoRest(5, 7), nil)}.bytes())
	if out := tn.take(); len(out) != 1 {
		t.Fatal("own address not answered")
	}
	if err := tn.l.SendEchoReply(ip(remote), ip(pod), 5, 6, []byte("data")); err != nil {
		t.Fatal(err)
	}
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 {
		t.Fatalf("sent %d", len(out))
	}
	m := checkICMP(t, out[0], remote, pod, header.ICMPv6EchoReply, 0)
	if m.ID() != 5 || m.Seq() != 6 || string(m.Payload()) != "data" {
		t.Fatal("reply")
	}
	if err := tn.l.SendEchoReply(ip("::ffff:10.0.0.1"), ip(pod), 1, 1, nil); err != syscall.EINVAL {
		t.Fatalf("IPv4-mapped source: %v", err)
	}
}

// SendICMPErrorQuote: RFC 4443 §2.4's rules for a synthesized quote.
func TestSendICMPErrorQuote(t *testing.T) {
	tn := newTestNet(t, func(c *Config) { c.ICMPRateLimit, c.ICMPRateBurst = 1, 1 })
	quote := pkt{src: pod, dst: remote, proto: header.ProtoUDP, payload: udpish(8)}.bytes()
	if err := tn.l.SendICMPErrorQuote(ip(remote), ip(pod), header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, 0, quote); err != nil {
		t.Fatal(err)
	}
	out := tn.take()
	if len(out) != 1 {
		t.Fatalf("sent %d", len(out))
	}
	m := checkICMP(t, out[0], remote, pod, header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable)
	if !bytes.Equal(m.Payload(), quote) {
		t.Fatal("quote")
	}
	if err := tn.l.SendICMPErrorQuote(ip(remote), ip(pod), header.ICMPv6DstUnreachable, 4, 0, quote); !errors.Is(err, ErrICMPRateLimited) {
		t.Fatalf("rate limit: %v", err)
	}
	errQuote := pkt{src: pod, dst: remote, proto: header.ProtoICMPv6, payload: icmp6(pod, remote, header.ICMPv6TimeExceeded, 0, 0, nil)}.bytes()
	for name, tc := range map[string]struct {
		typ   uint8
		quote []byte
	}{
		"not an error type":  {header.ICMPv6EchoReply, quote},
		"a short quote":      {header.ICMPv6DstUnreachable, quote[:44]},
		"about an error":     {header.ICMPv6DstUnreachable, errQuote},
		"not an IPv6 packet": {header.ICMPv6DstUnreachable, append([]byte{0x45}, quote[1:]...)},
	} {
		if err := tn.l.SendICMPErrorQuote(ip(remote), ip(pod), tc.typ, 0, 0, tc.quote); err != syscall.EINVAL {
			t.Errorf("%s: %v", name, err)
		}
	}
}
