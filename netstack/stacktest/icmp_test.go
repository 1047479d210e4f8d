package stacktest_test

import (
	"bytes"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// The wire of these tests: one stack with forwarding on, on a manual
// clock, between two pipes whose far ends the test drives frame by frame.
// "in" faces a pod (10.9.1.5, a static neighbour) from 10.9.1.254/24;
// "out" faces the far side from 10.9.2.254/24 with an MTU of 1280, where
// 10.9.2.7 is a static neighbour and 10.9.2.99 never answers ARP.
var (
	wPod     = netip.MustParseAddr("10.9.1.5")
	wInAddr  = netip.MustParsePrefix("10.9.1.254/24")
	wOutAddr = netip.MustParsePrefix("10.9.2.254/24")
	wFar     = netip.MustParseAddr("10.9.2.7")
	wSilent  = netip.MustParseAddr("10.9.2.99")
	wPodMAC  = header.MAC{0x02, 0, 0, 0, 0x09, 0x05}
	wFarMAC  = header.MAC{0x02, 0, 0, 0, 0x09, 0x07}
)

const wOutMTU = 1280

type routerWire struct {
	t       *testing.T
	s       *netstack.Stack
	clk     *clock.Manual
	in, out *pipe.Endpoint // the test's ends
	inNIC   *dev.NIC
}

func newRouterWire(t *testing.T) *routerWire {
	t.Helper()
	clk := clock.NewManual()
	s := netstack.New(netstack.WithClock(clk), netstack.WithForwarding(true))
	t.Cleanup(func() { s.Close() })
	w := &routerWire{t: t, s: s, clk: clk}
	var inEP, outEP *pipe.Endpoint
	inEP, w.in = pipe.New(1500)
	outEP, w.out = pipe.New(wOutMTU)
	var err error
	if w.inNIC, err = s.AddNIC(inEP, netstack.NICConfig{Name: "in"}); err != nil {
		t.Fatal(err)
	}
	outNIC, err := s.AddNIC(outEP, netstack.NICConfig{Name: "out"})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		s.AddAddress(w.inNIC.ID(), wInAddr),
		s.AddAddress(outNIC.ID(), wOutAddr),
		s.AddStaticNeighbor(w.inNIC.ID(), wPod, wPodMAC),
		s.AddStaticNeighbor(outNIC.ID(), wFar, wFarMAC),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// send writes an IPv4 datagram to the stack from the pod's MAC.
func (w *routerWire) send(dg []byte) {
	w.t.Helper()
	f := make([]byte, header.EthernetMinSize+len(dg))
	header.Ethernet(f).Encode(header.EthernetFields{Src: wPodMAC, Dst: header.MAC(w.inNIC.MAC()), Type: header.EtherTypeIPv4})
	copy(f[header.EthernetMinSize:], dg)
	if n, _ := w.in.WriteBatch([]*buf.SKB{buf.FromBytes(buf.MaxHeadroom, f)}); n != 1 {
		w.t.Fatal("the pipe refused the frame")
	}
}

// icmpIn waits (5 s) for the next ICMP message the stack sends to the pod
// and returns its IPv4 datagram; frames of other kinds are skipped.
func (w *routerWire) icmpIn() header.IPv4 {
	w.t.Helper()
	var got header.IPv4
	stacktest.WaitFor(w.t, "an ICMP message to the pod", func() bool {
		for w.in.Queued() > 0 {
			pkts := make([]*buf.SKB, 1)
			if n, _ := w.in.ReadBatch(pkts); n == 0 {
				return false
			}
			b := append([]byte(nil), pkts[0].Bytes()...)
			pkts[0].Consume()
			eth, err := header.CheckEthernet(b)
			if err != nil || eth.Type() != header.EtherTypeIPv4 {
				continue
			}
			if ip, err := header.CheckIPv4(eth.Payload()); err == nil && ip.Protocol() == header.ProtoICMP && ip.Dst() == wPod {
				got = ip
				return true
			}
		}
		return false
	})
	return got
}

// udpDatagram is the pod's datagram of the quoting tests: a chosen
// identification, DF, an options field (NOP NOP NOP EOL) and n bytes of
// payload, so that every header field a quote must keep is distinctive.
func udpDatagram(dst netip.Addr, ttl uint8, n int) []byte {
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	return stacktest.IPv4(wPod.String(), dst.String()).ID(0xbeef).DF().TTL(ttl).
		IPOptions([]byte{header.IPv4OptNOP, header.IPv4OptNOP, header.IPv4OptNOP, header.IPv4OptEOL}).
		UDP(40000, 9).Payload(payload).Bytes()
}

// routed is dg as a router forwarded it: TTL one less, the checksum
// updated to match (RFC 1624), every other byte the same.
func routed(dg []byte) []byte {
	c := append([]byte(nil), dg...)
	header.IPv4(c).SetTTL(header.IPv4(c).TTL() - 1)
	return c
}

// RFC 792 and RFC 1122 §3.2.2: an ICMP error quotes the offending
// datagram's IP header and at least its first 8 data bytes; RFC 1812
// §4.3.2.3: as much of it as fits 576 bytes. Byte for byte as the pod sent
// it (identification, flags, options, length, checksum), except that an
// error raised after the stack decremented the TTL quotes the TTL and
// checksum it forwarded with.
func TestICMPErrorsQuoteTheDatagram(t *testing.T) {
	const maxQuote = 576 - header.IPv4MinSize - header.ICMPv4MinSize
	frag0 := stacktest.IPv4(wPod.String(), wInAddr.Addr().String()).Fragment(0x5151, 0, true).UDP(40000, 9).
		Payload(make([]byte, 64)).Bytes()
	for _, tc := range []struct {
		name      string
		dg        []byte
		advance   time.Duration // of the manual clock after sending
		typ, code uint8
		info      uint32
		from      netip.Addr
		want      []byte // the quote
	}{
		{"RFC 1122 §4.1.3.1: port unreachable for a local closed port", udpDatagram(wInAddr.Addr(), 64, 100), 0,
			header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, wInAddr.Addr(), nil},
		{"RFC 1812 §4.3.2.3: a long datagram is quoted up to 576 bytes", udpDatagram(wInAddr.Addr(), 64, 1000), 0,
			header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, wInAddr.Addr(), nil},
		{"RFC 1122 §3.2.2.1: protocol unreachable", stacktest.IPv4(wPod.String(), wInAddr.Addr().String()).ID(0x1234).
			Proto(253).Payload([]byte("no such protocol here")).Bytes(), 0,
			header.ICMPv4DstUnreachable, header.ICMPv4ProtoUnreachable, 0, wInAddr.Addr(), nil},
		{"RFC 1812 §5.3.1: time exceeded for TTL 1, before any decrement", udpDatagram(wFar, 1, 100), 0,
			header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0, wInAddr.Addr(), nil},
		{"RFC 1191 §4: fragmentation needed with the next-hop MTU", udpDatagram(wFar, 64, 1400), 0,
			header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded, wOutMTU, wInAddr.Addr(), nil},
		{"RFC 1812 §4.3.3.1: host unreachable once ARP fails, as forwarded", udpDatagram(wSilent, 64, 100), 10 * time.Second,
			header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0, wInAddr.Addr(), routed(udpDatagram(wSilent, 64, 100))},
		{"RFC 1122 §3.3.2: reassembly timeout quotes fragment zero", frag0, 31 * time.Second,
			header.ICMPv4TimeExceeded, header.ICMPv4ReassemblyTimeout, 0, wInAddr.Addr(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRouterWire(t)
			w.send(tc.dg)
			if tc.advance > 0 {
				// Let the receive goroutine take the frame first.
				stacktest.WaitFor(t, "the datagram received", func() bool { return w.s.Stats().IP.InReceives > 0 })
				w.clk.Advance(tc.advance)
			}
			ip := w.icmpIn()
			m := header.ICMPv4(ip.Payload())
			if m.Type() != tc.typ || m.Code() != tc.code || m.RestOfHeader() != tc.info || ip.Src() != tc.from {
				t.Fatalf("got ICMP %d/%d rest %d from %v, want %d/%d rest %d from %v",
					m.Type(), m.Code(), m.RestOfHeader(), ip.Src(), tc.typ, tc.code, tc.info, tc.from)
			}
			if !m.ChecksumValid() || ip.TotalLen() > 576 {
				t.Fatalf("ICMP checksum valid %v, total length %d (≤ 576)", m.ChecksumValid(), ip.TotalLen())
			}
			want := tc.want
			if want == nil {
				want = tc.dg
			}
			want = want[:min(len(want), maxQuote)]
			if !bytes.Equal(m.Payload(), want) {
				t.Fatalf("quote\n% x\nwant\n% x", m.Payload(), want)
			}
		})
	}
}

// udpErrWire is a connected UDP socket of the wire's stack, 10.9.1.254:4000
// → the pod's port 53, and the datagram it sent, as the pod saw it.
func (w *routerWire) connectedUDP() (*udp.Socket, []byte) {
	w.t.Helper()
	s := w.s.UDP().NewSocket()
	w.t.Cleanup(func() { s.Close() })
	if err := s.Bind(netip.AddrPortFrom(wInAddr.Addr(), 4000)); err != nil {
		w.t.Fatal(err)
	}
	if err := s.Connect(netip.AddrPortFrom(wPod, 53)); err != nil {
		w.t.Fatal(err)
	}
	if _, err := s.Send([]byte("query")); err != nil {
		w.t.Fatal(err)
	}
	var sent []byte
	stacktest.WaitFor(w.t, "the socket's datagram", func() bool {
		if w.in.Queued() == 0 {
			return false
		}
		pkts := make([]*buf.SKB, 1)
		if n, _ := w.in.ReadBatch(pkts); n == 1 {
			if eth, err := header.CheckEthernet(pkts[0].Bytes()); err == nil && eth.Type() == header.EtherTypeIPv4 {
				sent = append([]byte(nil), eth.Payload()...)
			}
			pkts[0].Consume()
		}
		return sent != nil
	})
	return s, sent
}

// errorAbout builds an ICMP error from src about the datagram dg.
func errorAbout(src netip.Addr, typ, code uint8, rest uint32, dg []byte) []byte {
	return stacktest.IPv4(src.String(), wInAddr.Addr().String()).ICMP(typ, code, rest).Payload(dg).Bytes()
}

// RFC 1122 §4.1.3.3 as Linux applies it (no IP_RECVERR): a connected
// socket hears of a hard error once, on its next call, and carries on; a
// soft error (net or host unreachable, time exceeded, source route failed)
// never fails it. Here the errors arrive on the wire, through ipv4's ICMP
// input and the header.ICMPError seam.
func TestUDPHardAndSoftICMPErrors(t *testing.T) {
	router := netip.MustParseAddr("10.9.1.1")
	for _, tc := range []struct {
		name      string
		from      netip.Addr
		typ, code uint8
		rest      uint32
		df        bool
		want      syscall.Errno // 0: the socket is not told
	}{
		{"port unreachable: ECONNREFUSED", wPod, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, false, syscall.ECONNREFUSED},
		{"protocol unreachable: hard", wPod, header.ICMPv4DstUnreachable, header.ICMPv4ProtoUnreachable, 0, false, syscall.ENOPROTOOPT},
		{"administratively prohibited: hard", router, header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, false, syscall.EHOSTUNREACH},
		{"parameter problem: hard", wPod, header.ICMPv4ParamProblem, 0, header.ParamProblemRest(8), false, syscall.EPROTO},
		{"fragmentation needed, DF socket: EMSGSIZE", router, header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded, 1000, true, syscall.EMSGSIZE},
		{"fragmentation needed, no DF: not told", router, header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded, 1000, false, 0},
		{"host unreachable: soft", router, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0, false, 0},
		{"net unreachable: soft", router, header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable, 0, false, 0},
		{"source route failed: soft", router, header.ICMPv4DstUnreachable, header.ICMPv4SourceRouteFailed, 0, false, 0},
		{"time exceeded: soft", router, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRouterWire(t)
			s, sent := w.connectedUDP()
			s.SetDontFragment(tc.df)
			w.send(errorAbout(tc.from, tc.typ, tc.code, tc.rest, sent[:min(len(sent), 28)]))
			// Then the pod answers: the socket must get that datagram
			// whatever the error did.
			w.send(stacktest.IPv4(wPod.String(), wInAddr.Addr().String()).UDP(53, 4000).Payload([]byte("answer")).Bytes())
			// The frames are handled in order on the receive goroutine:
			// an error the socket hears of is pending before the answer
			// is queued, and a receive returns it first, once.
			var errs []error
			var got string
			var from netip.AddrPort
			b := make([]byte, 64)
			stacktest.WaitFor(t, "the answer", func() bool {
				n, m, err := s.RecvMsg(b, udp.MsgDontWait)
				switch {
				case errors.Is(err, syscall.EAGAIN):
					return false
				case err != nil:
					errs = append(errs, err)
					return false
				}
				got, from = string(b[:n]), m.From
				return true
			})
			if got != "answer" || from != netip.AddrPortFrom(wPod, 53) {
				t.Fatalf("received %q from %v", got, from)
			}
			switch {
			case tc.want == 0 && len(errs) != 0:
				t.Fatalf("a soft error reached the socket: %v", errs)
			case tc.want != 0 && (len(errs) != 1 || !errors.Is(errs[0], tc.want)):
				t.Fatalf("the socket reported %v, want %v once", errs, tc.want)
			}
			st := w.s.Stats().UDP
			if hard := tc.want != 0; hard && st.ICMPHardErrors != 1 || !hard && st.ICMPHardErrors != 0 {
				t.Fatalf("UDP counters %+v", st)
			}
		})
	}
}
