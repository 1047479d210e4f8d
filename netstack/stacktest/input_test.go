package stacktest_test

import (
	"net/netip"
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

// wire is one stack whose NIC (stacktest.DefaultDstMAC,
// stacktest.DefaultDstIP/24, stacktest.DefaultDstIP6/64) is fed frames
// from the other end of a pipe.
type wire struct {
	s    *netstack.Stack
	nic  *dev.NIC
	peer *pipe.Endpoint
	sock *udp.Socket // bound to :53, where the builders send
	pkts []*buf.SKB
}

func newWire(tb testing.TB, clk clock.Clock) *wire {
	tb.Helper()
	s := netstack.New(netstack.WithClock(clk))
	tb.Cleanup(func() { s.Close() })
	ours, peer := pipe.New(1500, pipe.WithQueueLen(4096))
	nic, err := s.AddNIC(ours, netstack.NICConfig{Name: "in", MAC: stacktest.DefaultDstMAC})
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.AddAddress(nic.ID(), netip.PrefixFrom(stacktest.DefaultDstIP, 24)); err != nil {
		tb.Fatal(err)
	}
	// Static, so replies need no ARP round trip to an absent peer.
	if err := s.AddStaticNeighbor(nic.ID(), stacktest.DefaultSrcIP, stacktest.DefaultSrcMAC); err != nil {
		tb.Fatal(err)
	}
	// IPv6 too: DefaultDstIP6/64, its peer static as well.
	if err := s.AddAddress(nic.ID(), netip.PrefixFrom(stacktest.DefaultDstIP6, 64)); err != nil {
		tb.Fatal(err)
	}
	if err := s.AddStaticNeighbor(nic.ID(), stacktest.DefaultSrcIP6, stacktest.DefaultSrcMAC); err != nil {
		tb.Fatal(err)
	}
	// On ::, so it takes both families' datagrams; a TCP listener on
	// both families' port 80, where the TCP seeds go.
	sock := s.UDP().NewSocket()
	if err := sock.Bind(netip.AddrPortFrom(netip.IPv6Unspecified(), 53)); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sock.Close() })
	ln, err := s.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), 80))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return &wire{s: s, nic: nic, peer: peer, sock: sock, pkts: make([]*buf.SKB, 1)}
}

// inject writes one frame towards the stack and reports whether the link
// took it (the pipe refuses runts and oversized frames).
func (w *wire) inject(frame []byte) bool {
	w.pkts[0] = buf.FromBytes(buf.MaxHeadroom, frame)
	n, _ := w.peer.WriteBatch(w.pkts)
	w.pkts[0] = nil
	return n == 1
}

// FuzzStackInput feeds arbitrary frames to a whole stack through its NIC:
// whatever arrives, nothing panics and every frame is consumed. Seeds come
// from the stacktest builders (`go test` runs them; `-fuzz` explores).
func FuzzStackInput(f *testing.F) {
	ours, us := stacktest.DefaultDstMAC, stacktest.DefaultSrcMAC
	eth := func(b *stacktest.Builder) []byte { return b.Eth(us, ours).Bytes() }
	seeds := [][]byte{
		eth(stacktest.UDPv4()),
		eth(stacktest.UDPv4().NoUDPChecksum()),
		eth(stacktest.UDPv4().BadL4Checksum()),
		eth(stacktest.UDPv4().UDPLength(200)),
		eth(stacktest.UDPv4().Fragment(7, 0, true).Payload(make([]byte, 64))),
		eth(stacktest.UDPv4().Fragment(7, 72, false).Payload(make([]byte, 64))),
		eth(stacktest.UDPv4().IPOptions([]byte{header.IPv4OptRouterAlert, 4, 0, 0})),
		eth(stacktest.UDPv4().TTL(1)),
		eth(stacktest.TCPv4SYN()),
		eth(stacktest.ICMPEcho(1, 2)),
		eth(stacktest.IPv4("10.0.0.1", "10.0.0.2").ICMP(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0).
			Payload(stacktest.UDPv4().Bytes()[:28])),
		eth(stacktest.IPv4("10.0.0.1", "10.0.0.2").ICMP(header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded,
			header.FragNeededRest(1400)).Payload(stacktest.UDPv4().Bytes()[:28])),
		eth(stacktest.IPv4("10.0.0.1", "10.0.0.99").UDP(1, 2)),
		eth(stacktest.UDPv4().BadIPChecksum()),
		eth(stacktest.UDPv6()),
		eth(stacktest.TCPv6SYN()),
		eth(stacktest.Echo6(1, 2)),
		eth(stacktest.Echo6(1, 2).HopByHop([]byte{0xc2, 4, 0, 0, 0, 0})),
		eth(stacktest.UDPv6().FragmentHeader(7, 0, true).Payload(make([]byte, 64))),
		eth(stacktest.UDPv6().RoutingHeader(0, 1, make([]byte, 16))),
		eth(stacktest.IPv6("fd00::1", "ff02::1:ff00:2").NS(stacktest.DefaultDstIP6, us)),
		eth(stacktest.IPv6("fe80::1", "ff02::2").RS(us)),
		eth(stacktest.IPv6("fd00::1", "fd00::2").ICMPv6(header.ICMPv6PacketTooBig, 0, 1280).Payload(stacktest.UDPv6().Bytes())),
		eth(stacktest.IPv6("fd00::1", "fd00::2").ICMPv6(header.ICMPv6DstUnreachable, header.ICMPv6PortUnreachable, 0).
			Payload(stacktest.TCPv6SYN().Bytes())),
		eth(stacktest.UDPv6().NoUDPChecksum()),
		eth(stacktest.TCPv6SYN().Flags(header.ACK).Ack(1)),
		stacktest.ARPRequest(us, "10.0.0.1", "10.0.0.2").Bytes(),
		stacktest.ARPReply(us, "10.0.0.1", ours, "10.0.0.2").Bytes(),
		make([]byte, 14),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	w := newWire(f, clock.NewManual())
	var sent uint64
	f.Fuzz(func(t *testing.T, frame []byte) {
		if !w.inject(frame) {
			return
		}
		sent++
		stacktest.WaitFor(t, "the NIC to take the frame", func() bool { return w.nic.Stats().RxPackets >= sent })
		for {
			if _, _, err := w.sock.RecvMsg(make([]byte, 2048), udp.MsgDontWait); err != nil {
				break
			}
		}
	})
}

// BenchmarkUDPReceivePath measures one datagram from the link to the
// application: pipe WriteBatch → the NIC's poll goroutine (ReadBatch,
// Ethernet, ipv4 rcv/route/deliver, udp lookup and enqueue) → a blocking
// RecvMsg on the benchmark goroutine copying 512 bytes out.
func BenchmarkUDPReceivePath(b *testing.B) {
	w := newWire(b, clock.NewReal())
	frame := stacktest.UDPv4().Payload(make([]byte, 512)).Eth(stacktest.DefaultSrcMAC, stacktest.DefaultDstMAC).Bytes()
	out := make([]byte, 2048)
	w.sock.SetReadDeadline(time.Time{})
	// Warm the pools and the route snapshot.
	for i := 0; i < 100; i++ {
		w.inject(frame)
		if _, _, err := w.sock.RecvMsg(out, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.SetBytes(512)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !w.inject(frame) {
			b.Fatal("pipe refused the frame")
		}
		if n, _, err := w.sock.RecvMsg(out, 0); err != nil || n != 512 {
			b.Fatalf("recv %d: %v", n, err)
		}
	}
}
