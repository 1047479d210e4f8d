package stacktest_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/fault"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/socket"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

func pingCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func neighState(n *stacktest.Node, addr netip.Addr) neigh.State {
	e, ok := n.Neigh().Lookup(n.NIC().ID(), addr)
	if !ok {
		return 255
	}
	return e.State
}

// RFC 826 resolution both ways, then RFC 1122 §2.3.2.1 / the NUD machine:
// A learns B from the reply (Reachable); B learnt A from the request
// (Stale), its reply moved it to Delay, and after DelayProbe with no
// confirmation B probes with a unicast request whose reply makes A
// Reachable at B too.
func TestARPResolvesBothWays(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk))
	if _, err := a.Ping(pingCtx(t), b.Addr(), 1, []byte("arp")); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if st := neighState(a, b.Addr()); st != neigh.Reachable {
		t.Fatalf("A's entry for B: %v", st)
	}
	ea, _ := a.Neigh().Lookup(a.NIC().ID(), b.Addr())
	if ea.MAC != b.NIC().MAC() {
		t.Fatalf("A resolved B to %v, B is %v", ea.MAC, b.NIC().MAC())
	}
	if st := neighState(b, a.Addr()); st != neigh.Delay && st != neigh.Stale {
		t.Fatalf("B's entry for A after answering: %v", st)
	}
	clk.Advance(5 * time.Second) // delay_first_probe_time → Probe: unicast request
	stacktest.WaitFor(t, "B's entry for A to become Reachable", func() bool {
		return neighState(b, a.Addr()) == neigh.Reachable
	})
	if st := neighState(a, b.Addr()); st != neigh.Reachable {
		t.Fatalf("A's entry for B: %v", st)
	}
	eb, _ := b.Neigh().Lookup(b.NIC().ID(), a.Addr())
	if eb.MAC != a.NIC().MAC() {
		t.Fatalf("B resolved A to %v, A is %v", eb.MAC, a.NIC().MAC())
	}
	if s := a.Stats().Neigh; s.OutRequests < 1 || s.InReplies < 1 {
		t.Fatalf("A's ARP counters %+v", s)
	}
}

// RFC 792 / RFC 1122 §3.2.2.6: an echo request is answered with the same
// identifier, sequence and data.
func TestPing(t *testing.T) {
	a, b := stacktest.Pair(t)
	for seq := uint16(1); seq <= 3; seq++ {
		if _, err := a.Ping(pingCtx(t), b.Addr(), seq, bytes.Repeat([]byte{byte(seq)}, 56)); err != nil {
			t.Fatalf("ping %d: %v", seq, err)
		}
	}
	if got := a.Stats().IP.ICMP.InEchoReps; got != 3 {
		t.Fatalf("A InEchoReps %d", got)
	}
	if got := b.Stats().IP.ICMP.OutEchoReps; got != 3 {
		t.Fatalf("B OutEchoReps %d", got)
	}
	// Nobody there: resolution fails and the ping hears of it (or times out).
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := a.Ping(ctx, netip.MustParseAddr("10.0.0.77"), 1, nil); err == nil {
		t.Fatal("ping to an absent host succeeded")
	}
}

// resolve makes A resolve B first, so a test starts from a Reachable
// neighbour instead of depending on the pending queue's bounds.
func resolve(t *testing.T, a, b *stacktest.Node) {
	t.Helper()
	if _, err := a.Ping(pingCtx(t), b.Addr(), 0, nil); err != nil {
		t.Fatalf("ping: %v", err)
	}
}

func listen(t *testing.T, n *stacktest.Node, port uint16) *socket.PacketConn {
	t.Helper()
	c, err := n.ListenUDP(netip.AddrPortFrom(n.Addr(), port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dial(t *testing.T, n *stacktest.Node, to netip.AddrPort) *socket.Conn {
	t.Helper()
	c, err := n.DialUDP(netip.AddrPort{}, to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func udpSocket(c interface{ Socket() socket.Datagram }) *udp.Socket { return c.Socket().(*udp.Socket) }

// RFC 791 §3.2 fragmentation and reassembly, end to end: a 60 KB datagram
// leaves A as MTU-sized fragments and reaches B's socket intact.
func TestUDPFragmentedDatagram(t *testing.T) {
	a, b := stacktest.Pair(t)
	resolve(t, a, b)
	srv := listen(t, b, 9000)
	cli := dial(t, a, netip.AddrPortFrom(b.Addr(), 9000))
	msg := make([]byte, 60000)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range msg {
		msg[i] = byte(r.Uint32())
	}
	if n, err := cli.Write(msg); err != nil || n != len(msg) {
		t.Fatalf("write %d: %v", n, err)
	}
	got := make([]byte, 65536)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := srv.ReadFrom(got)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got[:n], msg) {
		t.Fatalf("datagram differs: got %d bytes", n)
	}
	if from.(*net.UDPAddr).AddrPort() != cli.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("from %v", from)
	}
	// 60008 bytes of UDP in 1480-byte fragment payloads.
	wantFrags := uint64((60008 + 1479) / 1480)
	if st := a.Stats().IP; st.FragOKs != 1 || st.FragCreates != wantFrags {
		t.Fatalf("A fragmentation %+v", st)
	}
	if st := b.Stats().IP; st.ReasmOKs != 1 || st.ReasmReqds != wantFrags {
		t.Fatalf("B reassembly %+v", st)
	}
	if st := b.Stats().UDP; st.InDatagrams != 1 {
		t.Fatalf("B UDP %+v", st)
	}
}

// isFragmentAt matches an IPv4 frame carrying the fragment at offset off.
func isFragmentAt(off int) func([]byte) bool {
	return func(frame []byte) bool {
		eth, err := header.CheckEthernet(frame)
		if err != nil || eth.Type() != header.EtherTypeIPv4 {
			return false
		}
		ip, err := header.CheckIPv4(eth.Payload())
		return err == nil && ip.FragOffset() == off && (ip.MF() || off > 0)
	}
}

// RFC 791 §3.2 / RFC 1122 §3.3.2: a datagram missing a fragment is
// discarded when the reassembly timer expires (ipfrag_time, 30 s): the
// loss is counted, nothing reaches the socket, and since fragment zero
// arrived B reports time exceeded (code 1) to A.
func TestLostFragmentTimesOut(t *testing.T) {
	clk := clock.NewManual()
	a, b := stacktest.Pair(t, stacktest.WithClock(clk),
		stacktest.Fault(fault.Match(isFragmentAt(1480)), fault.Loss(1)))
	resolve(t, a, b)
	srv := listen(t, b, 9000)
	cli := dial(t, a, netip.AddrPortFrom(b.Addr(), 9000))
	if _, err := cli.Write(make([]byte, 5000)); err != nil { // 4 fragments
		t.Fatal(err)
	}
	stacktest.WaitFor(t, "the three surviving fragments at B", func() bool { return b.Stats().IP.ReasmReqds == 3 })
	clk.Advance(29 * time.Second)
	if st := b.Stats().IP; st.ReasmTimeout != 0 || st.ReasmFails != 0 {
		t.Fatalf("expired early: %+v", st)
	}
	clk.Advance(time.Second)
	st := b.Stats().IP
	if st.ReasmTimeout != 1 || st.ReasmFails != 1 || st.ReasmOKs != 0 {
		t.Fatalf("B reassembly after 30 s: %+v", st)
	}
	if d := b.Stats().Drops["FRAG_REASM_TIMEOUT"]; d == 0 {
		t.Fatalf("drop reason not counted: %v", b.Stats().Drops)
	}
	if _, _, err := udpSocket(srv).RecvMsg(make([]byte, 10000), udp.MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("socket got %v", err)
	}
	if got := b.Stats().UDP.InDatagrams; got != 0 {
		t.Fatalf("delivered %d", got)
	}
	stacktest.WaitFor(t, "time exceeded at A", func() bool { return a.Stats().IP.ICMP.InTimeExcds == 1 })
	// Time exceeded is a soft error: a connected UDP socket does not see it.
	if _, _, err := udpSocket(cli).RecvMsg(make([]byte, 10), udp.MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("connected socket got %v", err)
	}
}

// RFC 1122 §4.1.3.1 and §4.1.3.3: a datagram to a port nobody listens on
// draws port unreachable, which the sender's connected socket reports as
// ECONNREFUSED on its next call.
func TestUDPClosedPortRefused(t *testing.T) {
	a, b := stacktest.Pair(t)
	cli := dial(t, a, netip.AddrPortFrom(b.Addr(), 9))
	if _, err := cli.Write([]byte("anyone?")); err != nil {
		t.Fatal(err)
	}
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := cli.Read(make([]byte, 10))
	var oe *net.OpError
	if !errors.As(err, &oe) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("read: %v", err)
	}
	if st := b.Stats(); st.UDP.NoPorts != 1 || st.IP.ICMP.OutDestUnreachs != 1 {
		t.Fatalf("B: UDP %+v ICMP %+v", st.UDP, st.IP.ICMP)
	}
	// Reported once.
	if _, err := cli.Write([]byte("again")); err != nil {
		t.Fatalf("write after the error was read: %v", err)
	}
}

// ttlTap records the TTL of UDP datagrams a NIC receives.
func ttlTap(n *stacktest.Node) *atomic.Int32 {
	var ttl atomic.Int32
	ttl.Store(-1)
	n.Devices().AddTap(func(nic *dev.NIC, skb *buf.SKB, dir dev.Direction) {
		if dir != dev.Rx {
			return
		}
		eth, err := header.CheckEthernet(skb.Bytes())
		if err != nil || eth.Type() != header.EtherTypeIPv4 {
			return
		}
		if ip, err := header.CheckIPv4(eth.Payload()); err == nil && ip.Protocol() == header.ProtoUDP {
			ttl.Store(int32(ip.TTL()))
		}
	})
	return &ttl
}

// RFC 1812 §5.3.1: a router decrements the TTL of what it forwards.
func TestChainForwards(t *testing.T) {
	a, r, b := stacktest.Chain(t)
	ttl := ttlTap(b)
	srv := listen(t, b, 7000)
	cli := dial(t, a, netip.AddrPortFrom(b.Addr(), 7000))
	if _, err := cli.Write([]byte("through R")); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, from, err := srv.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "through R" {
		t.Fatalf("read %q: %v", buf[:n], err)
	}
	if from.(*net.UDPAddr).AddrPort().Addr() != a.Addr() {
		t.Fatalf("source %v", from)
	}
	if got := ttl.Load(); got != 63 {
		t.Fatalf("TTL at B %d, want 63", got)
	}
	if st := r.Stats().IP; st.ForwDatagrams != 1 {
		t.Fatalf("R forwarded %d", st.ForwDatagrams)
	}
	// And back: B answers through R.
	if _, err := srv.WriteTo([]byte("back"), from); err != nil {
		t.Fatal(err)
	}
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := cli.Read(buf); err != nil || string(buf[:n]) != "back" {
		t.Fatalf("reply %q: %v", buf[:n], err)
	}
	if _, err := a.Ping(pingCtx(t), b.Addr(), 1, nil); err != nil {
		t.Fatalf("ping through R: %v", err)
	}
}

// RFC 1812 §5.3.1 / RFC 792: a router that would forward a datagram with
// TTL 1 discards it and sends time exceeded (code 0) to the source.
func TestChainTTLExceeded(t *testing.T) {
	a, r, b := stacktest.Chain(t)
	srv := listen(t, b, 7000)
	cli := dial(t, a, netip.AddrPortFrom(b.Addr(), 7000))
	udpSocket(cli).SetTTL(1)
	if _, err := cli.Write([]byte("ttl 1")); err != nil {
		t.Fatal(err)
	}
	stacktest.WaitFor(t, "time exceeded at A", func() bool { return a.Stats().IP.ICMP.InTimeExcds == 1 })
	if st := r.Stats().IP; st.ICMP.OutTimeExcds != 1 || st.ForwDatagrams != 0 {
		t.Fatalf("R: %+v", st)
	}
	if _, _, err := udpSocket(srv).RecvMsg(make([]byte, 10), udp.MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("B received: %v", err)
	}
	// Linux (__udp4_lib_err): time exceeded is soft, the socket is not told.
	if _, _, err := udpSocket(cli).RecvMsg(make([]byte, 10), udp.MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("A's socket got %v", err)
	}
	// With the default TTL it goes through.
	udpSocket(cli).SetTTL(0)
	if _, err := cli.Write([]byte("ttl 64")); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := srv.ReadFrom(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
}

func TestStatsString(t *testing.T) {
	a, b := stacktest.Pair(t)
	if _, err := a.Ping(pingCtx(t), b.Addr(), 1, nil); err != nil {
		t.Fatal(err)
	}
	s := a.Stats().String()
	t.Log("\n" + s)
	for _, want := range []string{"#kernel", "IcmpInEchoReps", "IpOutRequests", "ArpOutRequests", "a-ab rx"} {
		if !bytes.Contains([]byte(s), []byte(want)) {
			t.Fatalf("stats lack %q:\n%s", want, s)
		}
	}
}
