package netfilter_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/link/fault"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/socket"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// natChain is stacktest.Chain (A 10.0.1.1 — R — B 10.0.2.1) on a manual
// clock, with a Netfilter on R loaded with rules. R's links are named
// r-ar (towards A) and r-rb (towards B).
func natChain(t *testing.T, rules string) (a, r, b *stacktest.Node, nf *netfilter.Netfilter, clk *clock.Manual) {
	t.Helper()
	clk = clock.NewManual()
	a, r, b = stacktest.Chain(t, stacktest.WithClock(clk))
	nf = netfilter.New(netfilter.Config{Hooks: r.Hooks(), Clock: r.Clock(), Devices: r.Devices(), FIB: r.FIB(),
		Neigh: r.Neigh(), Sender: r.IPv4()})
	if err := nf.LoadText(rules); err != nil {
		t.Fatal(err)
	}
	// Resolve both links first, so tests start from Reachable neighbours.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Ping(ctx, stacktest.ChainRA.Addr(), 0, nil); err != nil {
		t.Fatalf("ping R: %v", err)
	}
	if _, err := b.Ping(ctx, stacktest.ChainRB.Addr(), 0, nil); err != nil {
		t.Fatalf("ping R: %v", err)
	}
	return a, r, b, nf, clk
}

func udpListen(t *testing.T, n *stacktest.Node, port uint16) *socket.PacketConn {
	t.Helper()
	c, err := n.ListenUDP(netip.AddrPortFrom(n.Addr(), port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func udpDial(t *testing.T, n *stacktest.Node, to netip.AddrPort) *socket.Conn {
	t.Helper()
	c, err := n.DialUDP(netip.AddrPort{}, to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// within runs a blocking call with a wall-clock bound: socket deadlines
// run on the stack's (manual) clock, so they would never fire here.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out: %s", what)
	}
}

func readFrom(t *testing.T, c *socket.PacketConn) ([]byte, netip.AddrPort) {
	t.Helper()
	b := make([]byte, 65536)
	var n int
	var from net.Addr
	var err error
	within(t, "read", func() { n, from, err = c.ReadFrom(b) })
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b[:n], from.(*net.UDPAddr).AddrPort()
}

func read(t *testing.T, c *socket.Conn) (string, error) {
	t.Helper()
	b := make([]byte, 100)
	var n int
	var err error
	within(t, "read", func() { n, err = c.Read(b) })
	return string(b[:n]), err
}

// frames collects IPv4 packets a node receives, for checks at the packet level.
type frames struct {
	mu  sync.Mutex
	got [][]byte
}

func tapRx(n *stacktest.Node) *frames {
	f := &frames{}
	n.Devices().AddTap(func(_ *dev.NIC, skb *buf.SKB, d dev.Direction) {
		b := skb.Bytes()
		if d != dev.Rx || len(b) < header.EthernetMinSize || header.Ethernet(b).Type() != header.EtherTypeIPv4 {
			return
		}
		f.mu.Lock()
		f.got = append(f.got, append([]byte(nil), b[header.EthernetMinSize:]...))
		f.mu.Unlock()
	})
	return f
}

func (f *frames) find(t *testing.T, what string, ok func(header.IPv4) bool) header.IPv4 {
	t.Helper()
	var hit header.IPv4
	stacktest.WaitFor(t, what, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, b := range f.got {
			if ip, err := header.CheckIPv4(b); err == nil && ok(ip) {
				hit = ip
				return true
			}
		}
		return false
	})
	return hit
}

// Masquerade: B sees R's address, A gets B's answer, the flow is listed
// and expires on the manual clock (120 s once replied).
func TestMemMasquerade(t *testing.T) {
	a, _, b, nf, clk := natChain(t, "*nat\n-A POSTROUTING -o r-rb -j MASQUERADE\n")
	srv := udpListen(t, b, 7000)
	cli := udpDial(t, a, netip.AddrPortFrom(b.Addr(), 7000))
	if _, err := cli.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	msg, from := readFrom(t, srv)
	if string(msg) != "hi" || from.Addr() != stacktest.ChainRB.Addr() {
		t.Fatalf("B got %q from %v, want it from R's %v", msg, from, stacktest.ChainRB.Addr())
	}
	if _, err := srv.WriteTo([]byte("ho"), net.UDPAddrFromAddrPort(from)); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, cli); err != nil || got != "ho" {
		t.Fatalf("A got %q: %v", got, err)
	}
	// Still active 2 s on: a stream (ASSURED, 120 s), not a lone
	// query and answer (30 s).
	clk.Advance(3 * time.Second)
	if _, err := cli.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	readFrom(t, srv)
	// The ping of natChain and this flow.
	var udp []conntrack.Entry
	for _, e := range nf.Conntrack().List() {
		if e.Original.Proto == header.ProtoUDP {
			udp = append(udp, e)
		}
	}
	if len(udp) != 1 || udp[0].Reply.Dst != stacktest.ChainRB.Addr() || udp[0].Original.Src != a.Addr() || udp[0].Status&conntrack.StatusAssured == 0 {
		t.Fatalf("conntrack: %v", udp)
	}
	clk.Advance(119 * time.Second)
	if n := nf.Conntrack().Len(); n != 1 {
		t.Fatalf("%d flows after 119 s, want the UDP one", n)
	}
	clk.Advance(2 * time.Second)
	if n := nf.Conntrack().Len(); n != 0 {
		t.Fatalf("%d flows after 121 s", n)
	}
}

// DNAT port forward: A talks to R:8080 and reaches B:7000; B sees A's
// own address; A's connected socket accepts the answer, so it came from
// R:8080.
func TestMemDNATPortForward(t *testing.T) {
	a, _, b, _, _ := natChain(t, "*nat\n-A PREROUTING -i r-ar -p udp --dport 8080 -j DNAT --to-destination 10.0.2.1:7000\n")
	srv := udpListen(t, b, 7000)
	cli := udpDial(t, a, netip.AddrPortFrom(stacktest.ChainRA.Addr(), 8080))
	if _, err := cli.Write([]byte("fwd")); err != nil {
		t.Fatal(err)
	}
	msg, from := readFrom(t, srv)
	if string(msg) != "fwd" || from.Addr() != a.Addr() {
		t.Fatalf("B got %q from %v", msg, from)
	}
	srv.WriteTo([]byte("back"), net.UDPAddrFromAddrPort(from))
	if got, err := read(t, cli); err != nil || got != "back" {
		t.Fatalf("A got %q: %v", got, err)
	}
}

// REJECT with tcp-reset answers a SYN with RST|ACK acknowledging it
// (RFC 9293 §3.10.7.1), from the address A dialled; REJECT's default
// answers UDP with ICMP port unreachable (RFC 1812 §5.2.7.1).
func TestMemRejectRSTAndICMP(t *testing.T) {
	a, _, b, nf, _ := natChain(t, `-A FORWARD -p tcp --dport 23 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp --dport 9 -j REJECT
`)
	rx := tapRx(a)
	seg := stacktest.Frame().IPv4Addr(a.Addr(), b.Addr()).TCP(40000, 23).Flags(header.SYN).Seq(1000).Window(1000).Bytes()[20:]
	skb := buf.FromBytes(buf.MaxHeadroom, seg)
	if err := a.IPv4().QueueXmit(skb, route.Flow{Dst: b.Addr(), Proto: header.ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	rst := rx.find(t, "RST at A", func(ip header.IPv4) bool { return ip.Protocol() == header.ProtoTCP })
	th := header.TCP(rst.Payload())
	if rst.Src() != b.Addr() || th.SrcPort() != 23 || th.DstPort() != 40000 || th.Flags() != header.RST|header.ACK || th.Ack() != 1001 || th.Seq() != 0 {
		t.Fatalf("reset %v:%d > %v:%d %v seq %d ack %d", rst.Src(), th.SrcPort(), rst.Dst(), th.DstPort(), th.Flags(), th.Seq(), th.Ack())
	}
	if !th.ChecksumValid(rst.Src(), rst.Dst()) {
		t.Fatal("reset checksum")
	}
	cli := udpDial(t, a, netip.AddrPortFrom(b.Addr(), 9))
	cli.Write([]byte("discard?"))
	ic := rx.find(t, "ICMP at A", func(ip header.IPv4) bool { return ip.Protocol() == header.ProtoICMP })
	m := header.ICMPv4(ic.Payload())
	if ic.Src() != stacktest.ChainRA.Addr() || m.Type() != header.ICMPv4DstUnreachable || m.Code() != header.ICMPv4PortUnreachable {
		t.Fatalf("ICMP %v type %d code %d", ic.Src(), m.Type(), m.Code())
	}
	if st := nf.Stats(); st.Rejects != 2 || st.ResetsSent != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// An ICMP error from the server (port unreachable from B's UDP) about a
// masqueraded flow is translated back and reaches A: the quote names A's
// own address and port, and A's socket learns ECONNREFUSED.
func TestMemICMPErrorThroughNAT(t *testing.T) {
	a, _, b, _, _ := natChain(t, "*nat\n-A POSTROUTING -o r-rb -j MASQUERADE\n")
	rx := tapRx(a)
	cli := udpDial(t, a, netip.AddrPortFrom(b.Addr(), 9)) // nothing listens on B:9
	cli.Write([]byte("anyone?"))
	lport := cli.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	ic := rx.find(t, "port unreachable at A", func(ip header.IPv4) bool { return ip.Protocol() == header.ProtoICMP })
	if ic.Src() != b.Addr() || ic.Dst() != a.Addr() || !ic.ChecksumValid() {
		t.Fatalf("outer %v > %v", ic.Src(), ic.Dst())
	}
	m := header.ICMPv4(ic.Payload())
	if !m.ChecksumValid() || m.Type() != header.ICMPv4DstUnreachable || m.Code() != header.ICMPv4PortUnreachable {
		t.Fatalf("icmp type %d code %d", m.Type(), m.Code())
	}
	in, ok := conntrack.CheckQuoted(m.Payload())
	if !ok {
		t.Fatal("quote")
	}
	u := header.UDP(in[in.HeaderLen():])
	if in.Src() != a.Addr() || u.SrcPort() != lport || in.Dst() != b.Addr() || u.DstPort() != 9 {
		t.Fatalf("quote %v:%d > %v:%d, want %v:%d > %v:9", in.Src(), u.SrcPort(), in.Dst(), u.DstPort(), a.Addr(), lport, b.Addr())
	}
	if _, err := read(t, cli); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("A's socket should learn ECONNREFUSED from the translated error: %v", err)
	}
}

// A fragmented datagram crosses the masquerade: R reassembles it before
// NAT and fragments it again for B's link; B reads it whole from R.
func TestMemFragmentsThroughNAT(t *testing.T) {
	a, r, b, nf, _ := natChain(t, "*nat\n-A POSTROUTING -o r-rb -j MASQUERADE\n")
	srv := udpListen(t, b, 7000)
	cli := udpDial(t, a, netip.AddrPortFrom(b.Addr(), 7000))
	msg := bytes.Repeat([]byte("0123456789"), 400)
	if _, err := cli.Write(msg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("R netfilter %+v\nR stats %s\nB stats %s", nf.Stats(), r.Stats(), b.Stats())
		}
	})
	got, from := readFrom(t, srv)
	if !bytes.Equal(got, msg) || from.Addr() != stacktest.ChainRB.Addr() {
		t.Fatalf("B got %d bytes from %v", len(got), from)
	}
	if st := nf.Stats(); st.DefragOKs != 1 {
		t.Fatalf("defrag %+v", st)
	}
	if st := r.Stats().IP; st.FragCreates < 3 {
		t.Fatalf("R did not fragment again: %+v", st)
	}
	_ = ipv4.Protocol{}
}

// Ping crosses the masquerade both ways; a DROP rule then stops it and
// its counter shows the packets.
func TestMemPingAndDrop(t *testing.T) {
	a, _, b, nf, _ := natChain(t, "*nat\n-A POSTROUTING -o r-rb -j MASQUERADE\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		if _, err := a.Ping(ctx, b.Addr(), uint16(10+i), nil); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	if err := nf.LoadText("*nat\n-A POSTROUTING -o r-rb -j MASQUERADE\n*filter\n-A FORWARD -p icmp -j DROP\n"); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := a.Ping(short, b.Addr(), 20, nil); err == nil {
		t.Fatal("ping passed a DROP rule")
	}
	if p, by := nf.Ruleset().Chain("filter", "FORWARD").Rules[0].Counters(); p != 1 || by == 0 {
		t.Fatalf("DROP counters %d/%d", p, by)
	}
}

// DIVERT (proxy mode): a flow from A to B is delivered to R's UDP
// intercept socket (never to a wildcard listener), with its original
// destination kept; B sees nothing.
func TestMemDivertDeliversLocally(t *testing.T) {
	a, r, b, nf, _ := natChain(t, "*mangle\n-A PREROUTING -i r-ar -p udp --dport 7000 -j DIVERT\n")
	wild, err := r.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 7000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wild.Close() })
	proxy, err := r.InterceptUDP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	srv := udpListen(t, b, 7000)
	cli := udpDial(t, a, netip.AddrPortFrom(b.Addr(), 7000))
	for _, m := range []string{"first", "second"} {
		if _, err := cli.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 64)
		var n int
		var meta udp.Meta
		within(t, "read", func() { n, meta, err = proxy.RecvMsg(b, 0) })
		if err != nil || string(b[:n]) != m || meta.From.Addr() != a.Addr() || meta.To != netip.AddrPortFrom(stacktest.ChainB.Addr(), 7000) {
			t.Fatalf("proxy got %q %+v %v", b[:n], meta, err)
		}
	}
	if st := r.UDP().Stats(); st.InDiverted != 2 {
		t.Fatalf("R diverted %d datagrams, want 2 (%+v)", st.InDiverted, st)
	}
	if st := b.Stats().UDP; st.InDatagrams != 0 {
		t.Fatalf("B received %d datagrams of a diverted flow", st.InDatagrams)
	}
	if n := len(nf.Conntrack().List()); n == 0 {
		t.Fatal("diverted flow not tracked")
	}
	_ = srv
}

// Our TCP through our masquerade, with 1% loss both ways on A's link (the
// fault wrapper: this kernel has no netem): 8 MiB arrive intact, B sees
// R's address as the peer, and conntrack marked nothing INVALID (the
// retransmissions stay inside the tracked window, RFC 9293 §3.4).
func TestOurTCPThroughMasqueradeUnderLoss(t *testing.T) {
	a, r, b := stacktest.Chain(t, stacktest.Fault(fault.Loss(0.01), fault.Seed(7), fault.OnReceive()))
	nf := r.EnableNetfilter(netfilter.Config{})
	if err := nf.LoadText("*nat\n-A POSTROUTING -o r-rb -j MASQUERADE\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	ln, err := b.ListenTCP(netip.AddrPortFrom(b.Addr(), 8000))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := stacktest.AcceptAndDrain(ln, 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(b.Addr(), 8000))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<20)
	_, _ = rand.Read(data)
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.Close()
	var res stacktest.Drained
	select {
	case res = <-done:
	case <-time.After(90 * time.Second):
		t.Fatal("transfer did not finish in 90s")
	}
	if res.Err != nil || res.N != int64(len(data)) || res.Sum != sha256.Sum256(data) {
		t.Fatalf("transfer through NAT: %d of %d bytes, err %v, checksum equal %v", res.N, len(data), res.Err, res.Sum == sha256.Sum256(data))
	}
	if res.Peer.Addr() != stacktest.ChainRB.Addr() {
		t.Fatalf("B saw peer %v, want R's address %v (masquerade)", res.Peer, stacktest.ChainRB.Addr())
	}
	if a.TCP().Counters()["TcpRetransSegs"] == 0 {
		t.Fatal("1% loss should have cost retransmissions")
	}
}
