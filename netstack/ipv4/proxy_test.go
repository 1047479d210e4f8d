package ipv4

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

// rcvDiverted hands b to the layer on nic as netfilter's DIVERT left it.
func (tn *testNet) rcvDiverted(nic int, b []byte) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.InNIC = nic
	skb.Drops = &tn.drops
	skb.Mark = netfilter.MarkDivert
	tn.l.Rcv(nil, skb)
}

// RFC 792 echo in proxy mode: a diverted request to a foreign address
// goes to the interceptor (not answered here); without one it is dropped
// and counted; a diverted request to our own address is answered as
// usual.
func TestEchoDivertedToInterceptor(t *testing.T) {
	tn := newTestNet(t)
	req := pkt{src: "10.1.0.5", dst: "203.0.113.9", proto: header.ProtoICMP,
		payload: icmpMsg(header.ICMPv4Echo, 0, 0x1234_0007, []byte("data"))}.bytes()
	type echo struct {
		src, dst netip.Addr
		id, seq  uint16
		data     string
	}
	var got []echo
	var hdr []byte
	tn.l.SetEchoInterceptor(func(r EchoRequest) {
		src, dst, id, seq, payload := r.Src, r.Dst, r.ID, r.Seq, r.Payload
		got = append(got, echo{src, dst, id, seq, string(payload)})
		hdr = append([]byte(nil), r.Header...)
	})
	tn.rcvDiverted(1, req)
	if len(got) != 1 || got[0] != (echo{ip("10.1.0.5"), ip("203.0.113.9"), 0x1234, 7, "data"}) {
		t.Fatalf("intercepted %+v", got)
	}
	// The headers as they arrived: what an error about the request quotes.
	if !bytes.Equal(hdr, req[:header.IPv4MinSize+header.ICMPv4MinSize]) {
		t.Fatalf("header %x, want %x", hdr, req[:28])
	}
	if out := tn.take(); len(out) != 0 || tn.counter("IcmpInEchoDiverted") != 1 {
		t.Fatalf("sent %d packets", len(out))
	}
	tn.l.SetEchoInterceptor(nil)
	tn.rcvDiverted(1, req)
	if tn.counter("IcmpInEchoDivertDrops") != 1 || tn.dropped(DropEchoNoInterceptor) != 1 || len(tn.take()) != 0 {
		t.Fatal("diverted echo without interceptor not dropped and counted")
	}
	tn.rcvDiverted(1, pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoICMP,
		payload: icmpMsg(header.ICMPv4Echo, 0, 1, nil)}.bytes())
	out := tn.take()
	if len(out) != 1 {
		t.Fatalf("echo to our own address: %d replies", len(out))
	}
	checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4EchoReply, 0)
}

// SendEchoReply answers from a foreign source (route.Flow.Transparent).
func TestSendEchoReplyFromForeignSource(t *testing.T) {
	tn := newTestNet(t)
	if err := tn.l.SendEchoReply(ip("203.0.113.9"), ip("10.1.0.5"), 0x1234, 7, []byte("data")); err != nil {
		t.Fatal(err)
	}
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 {
		t.Fatalf("sent %v", out)
	}
	m := checkICMP(t, out[0], "203.0.113.9", "10.1.0.5", header.ICMPv4EchoReply, 0)
	if m.ID() != 0x1234 || m.Seq() != 7 || string(m.Payload()) != "data" {
		t.Fatalf("reply %x", m)
	}
	if err := tn.l.SendEchoReply(ip("0.0.0.1"), ip("10.1.0.5"), 1, 1, nil); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("0/8 source: %v", err)
	}
	if err := tn.l.SendEchoReply(ip("203.0.113.9"), ip("10.1.0.5"), 1, 1, make([]byte, 70000)); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("oversized: %v", err)
	}
}

// SendICMPErrorQuote follows SendICMPError's rules (RFC 1122 §3.2.2,
// RFC 1812 §4.3.2.3 size, §4.3.2.8 rate) for a caller-built quote.
func TestSendICMPErrorQuote(t *testing.T) {
	udpQuote := pkt{src: "10.1.0.5", dst: "203.0.113.9", proto: header.ProtoUDP, payload: udpish(8)}.bytes()
	big := pkt{src: "10.1.0.5", dst: "203.0.113.9", proto: header.ProtoUDP, payload: udpish(1000)}.bytes()
	errQuote := pkt{src: "10.1.0.5", dst: "203.0.113.9", proto: header.ProtoICMP,
		payload: icmpMsg(header.ICMPv4DstUnreachable, 3, 0, udpQuote)}.bytes()
	frag := pkt{src: "10.1.0.5", dst: "203.0.113.9", proto: header.ProtoUDP, off: 8, payload: udpish(8)}.bytes()
	for _, tc := range []struct {
		name     string
		src, dst string
		typ      uint8
		quote    []byte
		err      error
		quoteLen int
	}{
		{"port unreachable from the foreign address", "203.0.113.9", "10.1.0.5", header.ICMPv4DstUnreachable, udpQuote, nil, len(udpQuote)},
		{"quote trimmed to 576 bytes", "203.0.113.9", "10.1.0.5", header.ICMPv4DstUnreachable, big, nil, 576 - 28},
		{"short quote", "203.0.113.9", "10.1.0.5", header.ICMPv4DstUnreachable, udpQuote[:27], syscall.EINVAL, 0},
		{"not an error type", "203.0.113.9", "10.1.0.5", header.ICMPv4EchoReply, udpQuote, syscall.EINVAL, 0},
		{"never about an ICMP error", "203.0.113.9", "10.1.0.5", header.ICMPv4DstUnreachable, errQuote, syscall.EINVAL, 0},
		{"never about a later fragment", "203.0.113.9", "10.1.0.5", header.ICMPv4DstUnreachable, frag, syscall.EINVAL, 0},
		{"not to a multicast address", "203.0.113.9", "224.0.0.1", header.ICMPv4DstUnreachable, udpQuote, syscall.EINVAL, 0},
		{"not from a 0/8 address", "0.0.0.9", "10.1.0.5", header.ICMPv4DstUnreachable, udpQuote, syscall.EINVAL, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			err := tn.l.SendICMPErrorQuote(ip(tc.src), ip(tc.dst), tc.typ, 3, 0, tc.quote)
			out := tn.take()
			if tc.err != nil {
				if !errors.Is(err, tc.err) || len(out) != 0 {
					t.Fatalf("err %v, sent %d", err, len(out))
				}
				return
			}
			if err != nil || len(out) != 1 {
				t.Fatalf("err %v, sent %d", err, len(out))
			}
			m := checkICMP(t, out[0], tc.src, tc.dst, tc.typ, 3)
			if !bytes.Equal(m.Payload(), tc.quote[:tc.quoteLen]) || out[0].ip().TOS() != icmpTOS {
				t.Fatalf("quote %d bytes, want %d", len(m.Payload()), tc.quoteLen)
			}
		})
	}
	tn := newTestNet(t, func(c *Config) { c.ICMPRateLimit, c.ICMPRateBurst = 1, 1 })
	if err := tn.l.SendICMPErrorQuote(ip("203.0.113.9"), ip("10.1.0.5"), 3, 3, 0, udpQuote); err != nil {
		t.Fatal(err)
	}
	if err := tn.l.SendICMPErrorQuote(ip("203.0.113.9"), ip("10.1.0.5"), 3, 3, 0, udpQuote); !errors.Is(err, ErrICMPRateLimited) || !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("second error in the burst: %v", err)
	}
	if tn.counter("IcmpOutRateLimitGlobal") != 1 {
		t.Fatal("rate limit not counted")
	}
}

// RFC 3704 §2.2: a diverted flow is local, but its source is still held
// to the link it came in on (ip_route_input_slow validates the source of
// a local route too): a pod on NIC 1 sending as 192.0.2.77, routed
// through the uplink, gives the proxy nothing.
func TestDivertedSourceIsReversePathFiltered(t *testing.T) {
	tn := newTestNet(t)
	tn.rcvDiverted(1, pkt{src: "192.0.2.77", dst: "203.0.113.9", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(tn.rcvd[header.ProtoUDP]) != 0 || tn.counter("TcpExtIPReversePathFilter") != 1 || tn.drops.Get(DropRPFilter) != 1 {
		t.Fatalf("spoofed diverted datagram: delivered %d, drops %v", len(tn.rcvd[header.ProtoUDP]), tn.drops.Snapshot())
	}
	tn.rcvDiverted(1, pkt{src: "10.1.0.5", dst: "203.0.113.9", proto: header.ProtoUDP, payload: udpish(8)}.bytes())
	if len(tn.rcvd[header.ProtoUDP]) != 1 {
		t.Fatal("the pod's own diverted datagram was not delivered")
	}
}
