package udp

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

var foreign = netip.MustParseAddr("203.0.113.9")

// The diverted lookup, as a table: a diverted datagram goes to the
// connected socket with its exact 4-tuple, else to the intercept socket,
// never to a bound or wildcard socket; with neither, port unreachable
// from the foreign destination (RFC 1122 §4.1.3.1). Undiverted traffic
// never reaches the intercept socket.
func TestDivertedLookup(t *testing.T) {
	for _, tc := range []struct {
		name      string
		divert    bool
		dst       netip.Addr
		intercept bool
		want      string // "conn", "icpt", "wild", "unreach"
	}{
		{"diverted, exact 4-tuple", true, foreign, true, "conn"},
		{"diverted, other destination: the intercept socket", true, netip.MustParseAddr("203.0.113.10"), true, "icpt"},
		{"diverted, no intercept socket: not the wildcard", true, netip.MustParseAddr("203.0.113.10"), false, "unreach"},
		{"diverted to a local address: still not the wildcard", true, local, true, "icpt"},
		{"not diverted: the wildcard, never the intercept socket", false, local, true, "wild"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, f := newProto(t, Config{})
			wild := bindSock(t, p, "0.0.0.0:53")
			conn, err := p.DialTransparent(netip.AddrPortFrom(foreign, 53), netip.AddrPortFrom(peer, 999))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var icpt *Socket
			if tc.intercept {
				if icpt, err = p.Intercept(); err != nil {
					t.Fatal(err)
				}
				defer icpt.Close()
			}
			skb := datagram{src: peer, dst: tc.dst, sport: 999, dport: 53, payload: []byte("q")}.skb()
			if tc.divert {
				skb.Mark = netfilter.MarkDivert
			}
			p.V4Rcv(skb)
			got := map[string]*Socket{"conn": conn, "icpt": icpt, "wild": wild}
			for name, s := range got {
				if s == nil {
					continue
				}
				if n, _ := s.Queued(); (n == 1) != (name == tc.want) {
					t.Errorf("%s has %d datagrams", name, n)
				}
			}
			if unreach := len(f.icmp) == 1 && f.icmp[0].code == header.ICMPv4PortUnreachable; unreach != (tc.want == "unreach") {
				t.Errorf("icmp %v", f.icmp)
			}
			if tc.want == "icpt" {
				var b [8]byte
				_, m, err := icpt.RecvMsg(b[:], MsgDontWait)
				if err != nil || m.From != netip.AddrPortFrom(peer, 999) || m.To != netip.AddrPortFrom(tc.dst, 53) {
					t.Errorf("meta %+v %v", m, err)
				}
			}
		})
	}
}

// SendFromTo leaves with the foreign source, Flow.Transparent and
// MarkDivert; a transparent socket's sends carry both too.
func TestSendFromToFlow(t *testing.T) {
	p, f := newProto(t, Config{})
	s, err := p.Intercept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := p.Intercept(); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second Intercept: %v", err)
	}
	if _, err := s.SendFromTo([]byte("a"), netip.AddrPortFrom(foreign, 53), netip.AddrPortFrom(peer, 999)); err != nil {
		t.Fatal(err)
	}
	fl := f.flows[0]
	if fl.Src != foreign || fl.SrcPort != 53 || !fl.Transparent || fl.Mark != netfilter.MarkDivert {
		t.Fatalf("flow %+v", fl)
	}
	if _, err := s.SendFromTo([]byte("a"), netip.AddrPortFrom(foreign, 0), netip.AddrPortFrom(peer, 999)); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("port 0: %v", err)
	}
	if err := s.Bind(netip.MustParseAddrPort("0.0.0.0:53")); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Bind on the intercept socket: %v", err)
	}
	u := p.NewSocket()
	defer u.Close()
	u.SetTransparent(true)
	if err := u.Bind(netip.AddrPortFrom(foreign, 7)); err != nil {
		t.Fatal(err)
	}
	if _, err := u.SendTo([]byte("b"), netip.AddrPortFrom(peer, 9)); err != nil {
		t.Fatal(err)
	}
	if fl := f.flows[1]; fl.Src != foreign || !fl.Transparent || fl.Mark != netfilter.MarkDivert {
		t.Fatalf("transparent socket flow %+v", fl)
	}
	s.Close()
	if s2, err := p.Intercept(); err != nil {
		t.Fatalf("Intercept after Close: %v", err)
	} else {
		s2.Close()
	}
}

// SetNotify: the callback runs once at the end of a receive batch for all
// the datagrams the batch queued, right after the datagram outside one,
// with no lock held (it reads the queue itself, and may send), and not
// at all once removed.
func TestSetNotify(t *testing.T) {
	p, _ := newProto(t, Config{})
	icpt, err := p.Intercept()
	if err != nil {
		t.Fatal(err)
	}
	defer icpt.Close()
	s := bindSock(t, p, "0.0.0.0:53")
	for _, tc := range []struct {
		name string
		sock *Socket
		dst  netip.Addr
		mark uint32
	}{
		{"intercept socket (diverted)", icpt, foreign, netfilter.MarkDivert},
		{"bound socket", s, local, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls, read := 0, 0
			tc.sock.SetNotify(func() {
				calls++
				var b [8]byte
				for {
					if _, _, err := tc.sock.RecvMsg(b[:], MsgDontWait); err != nil {
						return
					}
					read++
					// No lock of the Proto is held: a send works.
					if _, err := tc.sock.SendFromTo([]byte("a"), netip.AddrPortFrom(tc.dst, 53), netip.AddrPortFrom(peer, 999)); err != nil {
						t.Errorf("send from the callback: %v", err)
					}
				}
			})
			in := func(b *buf.Batch) {
				skb := datagram{src: peer, dst: tc.dst, sport: 999, dport: 53, payload: []byte("q")}.skb()
				skb.Mark, skb.Batch = tc.mark, b
				p.V4Rcv(skb)
			}
			var b buf.Batch
			for range 3 {
				in(&b)
			}
			if calls != 0 {
				t.Fatalf("callback ran %d times inside the batch", calls)
			}
			b.Flush()
			if calls != 1 || read != 3 {
				t.Fatalf("after the batch: %d calls, %d datagrams read; want 1 and 3", calls, read)
			}
			in(nil)
			if calls != 2 || read != 4 {
				t.Fatalf("outside a batch: %d calls, %d datagrams read; want 2 and 4", calls, read)
			}
			tc.sock.SetNotify(nil)
			in(nil)
			if calls != 2 {
				t.Fatalf("callback ran after SetNotify(nil)")
			}
			if n, _ := tc.sock.Queued(); n != 1 {
				t.Fatalf("%d datagrams queued, want 1", n)
			}
		})
	}
}
