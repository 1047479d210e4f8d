package tcp

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// The transparent proxy's TCP side as RFC scenarios: the test plays the
// pod, whose SYN to a foreign address arrives diverted.

var foreignAddr = netip.MustParseAddr("203.0.113.9")

// newInterceptPeer is a peer whose segments go to foreignAddr:80, and the
// Proto's Interceptor.
func newInterceptPeer(t *testing.T, maxPending int) (*peer, *Interceptor) {
	c := newPeer(t, Config{})
	c.laddr = netip.AddrPortFrom(foreignAddr, 80)
	i, err := c.p.Intercept(maxPending)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { i.Close() })
	return c, i
}

func (c *peer) nextReq(i *Interceptor) *Request {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := i.Next(ctx)
	if err != nil {
		c.t.Fatalf("Next: %v", err)
	}
	return r
}

// waitSent waits (wall time, bounded) until the stack has sent n
// segments: Accept sends from another goroutine.
func (c *peer) waitSent(n int) {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.ip.mu.Lock()
		got := len(c.ip.sent)
		c.ip.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("waited for %d segments, have %d", n, got)
		}
		time.Sleep(time.Millisecond)
	}
}

// RFC 9293 §3.10.7.2 and RFC 3168 §6.1.1, upstream first: nothing
// answers an intercepted SYN until Accept; then the SYN,ACK comes from
// the original destination with the options the SYN offered (and ECN
// agreed), a retransmitted SYN gets it again, and the final ACK makes
// Accept return an ESTABLISHED connection.
func TestInterceptAcceptNegotiatesFromStoredSYN(t *testing.T) {
	c, i := newInterceptPeer(t, 0)
	all := header.TCPOptions{HasMSS: true, MSS: 1400, HasWScale: true, WScale: 7, SACKPermitted: true, HasTS: true, TSVal: 77}
	c.Send(c.Seg().Flags(SYN | header.ECE | header.CWR).Seq(c.ISS).Wnd(29200).Opts(all).Mark(netfilter.MarkDivert))
	c.ExpectNone("an intercepted SYN before Accept")
	r := c.nextReq(i)
	if r.Src() != c.raddr || r.Dst() != c.laddr {
		t.Fatalf("request %v → %v", r.Src(), r.Dst())
	}
	// The pod retransmits while the proxy dials upstream.
	c.Send(c.Seg().Flags(SYN | header.ECE | header.CWR).Seq(c.ISS).Wnd(29200).Opts(all).Mark(netfilter.MarkDivert))
	c.ExpectNone("a retransmitted SYN of a pending request")
	if st := i.Stats(); st.SynDups != 1 || i.Pending() != 1 {
		t.Fatalf("stats %+v pending %d", st, i.Pending())
	}
	type acc struct {
		c   *Conn
		err error
	}
	done := make(chan acc, 1)
	go func() {
		conn, err := r.Accept(context.Background())
		done <- acc{conn, err}
	}()
	c.waitSent(1)
	sa := c.Expect("SYN,ACK")
	if sa.flags != SYN|ACK|header.ECE || sa.ack != c.ISS+1 || sa.src != c.laddr || sa.dst != c.raddr {
		t.Fatalf("SYN,ACK %v flags %v", sa, sa.flags)
	}
	if !sa.opts.HasMSS || !sa.opts.HasWScale || !sa.opts.SACKPermitted || !sa.opts.HasTS || sa.opts.TSEcr != 77 {
		t.Fatalf("SYN,ACK options %+v", sa.opts)
	}
	if c.ip.transparent != 1 || c.ip.marked != 0 {
		t.Fatalf("transparent %d marked %d", c.ip.transparent, c.ip.marked)
	}
	c.IRS = sa.seq
	c.Send(c.Seg().Flags(SYN | header.ECE | header.CWR).Seq(c.ISS).Opts(all).Mark(netfilter.MarkDivert))
	if again := c.Expect("SYN,ACK again"); again.flags&(SYN|ACK) != SYN|ACK || again.seq != c.IRS {
		t.Fatalf("retransmitted SYN answered with %v", again)
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Opts(header.TCPOptions{HasTS: true, TSVal: 78}).Mark(netfilter.MarkDivert))
	a := <-done
	if a.err != nil {
		t.Fatalf("Accept: %v", a.err)
	}
	if st := a.c.Sock().State(); st != Established {
		t.Fatalf("state %v", st)
	}
	if a.c.Sock().LocalAddr() != c.laddr || c.p.Counter(PassiveOpens) != 1 {
		t.Fatalf("local %v, passive opens %d", a.c.Sock().LocalAddr(), c.p.Counter(PassiveOpens))
	}
	if i.Pending() != 0 {
		t.Fatalf("pending %d", i.Pending())
	}
}

// RFC 9293 §3.10.7.1: Refuse answers <SEQ=0><ACK=SEG.SEQ+SEG.LEN>
// <CTL=RST,ACK> from the original destination.
func TestInterceptRefuseSendsRSTACK(t *testing.T) {
	c, i := newInterceptPeer(t, 0)
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Mark(netfilter.MarkDivert))
	r := c.nextReq(i)
	r.Refuse()
	rst := c.Expect("RST")
	if rst.flags != RST|ACK || rst.seq != 0 || rst.ack != c.ISS+1 || rst.src != c.laddr {
		t.Fatalf("refusal %v flags %v", rst, rst.flags)
	}
	if c.ip.transparent != 1 || i.Stats().Refused != 1 || c.p.Counter(InterceptRefused) != 1 {
		t.Fatalf("transparent %d stats %+v", c.ip.transparent, i.Stats())
	}
	r.Refuse()
	c.ExpectNone("a second Refuse")
	if _, err := r.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Refuse: %v", err)
	}
}

// Only diverted segments reach the Interceptor, and diverted ones never
// reach a listener: a listener on the port keeps its own SYNs, a
// diverted SYN to the same port is intercepted, and a diverted segment
// that is not a SYN and finds no connection gets the closed-port reset
// from the foreign address.
func TestInterceptOnlyDivertedSegments(t *testing.T) {
	c, i := newInterceptPeer(t, 0)
	l := c.p.NewSock()
	if err := l.Bind(netip.AddrPortFrom(netip.IPv4Unspecified(), 80)); err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(4); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS)) // not diverted: the listener's
	if sa := c.Expect("listener SYN,ACK"); sa.flags != SYN|ACK {
		t.Fatalf("got %v", sa)
	}
	if i.Pending() != 0 {
		t.Fatal("a non-diverted SYN reached the interceptor")
	}
	c.raddr = netip.AddrPortFrom(remoteAddr, 40001)
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Mark(netfilter.MarkDivert))
	c.ExpectNone("diverted SYN to a listening port")
	if i.Pending() != 1 {
		t.Fatalf("pending %d", i.Pending())
	}
	c.raddr = netip.AddrPortFrom(remoteAddr, 40002)
	c.Send(c.Seg().Flags(ACK).Seq(5).Ack(9).Mark(netfilter.MarkDivert))
	rst := c.Expect("reset of a stray diverted ACK")
	if rst.flags != RST || rst.seq != 9 || c.ip.transparent != 1 {
		t.Fatalf("got %v, transparent %d", rst, c.ip.transparent)
	}
}

// With no Interceptor a diverted SYN is answered as a closed port would
// be (RFC 9293 §3.10.7.1), from the foreign destination.
func TestDivertedSYNWithoutInterceptorIsReset(t *testing.T) {
	c := newPeer(t, Config{})
	c.laddr = netip.AddrPortFrom(foreignAddr, 80)
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Mark(netfilter.MarkDivert))
	rst := c.Expect("RST")
	if rst.flags != RST|ACK || rst.ack != c.ISS+1 || rst.src != c.laddr || c.ip.transparent != 1 {
		t.Fatalf("got %v transparent %d", rst, c.ip.transparent)
	}
	if c.p.Counter(InterceptNoInterceptor) != 1 {
		t.Fatal("not counted")
	}
}

// DialTransparent's segments leave with Flow.Transparent and MarkDivert,
// from the foreign local address; its SYN-SENT socket takes the
// diverted SYN,ACK by exact 4-tuple.
func TestDialTransparentMarksFlow(t *testing.T) {
	c := newPeer(t, Config{})
	client := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), 5555)
	done := make(chan error, 1)
	go func() {
		conn, err := c.p.DialTransparent(context.Background(), client, c.raddr)
		if err == nil && conn.Sock().LocalAddr() != client {
			err = errors.New("wrong local address " + conn.Sock().LocalAddr().String())
		}
		done <- err
	}()
	c.waitSent(1)
	syn := c.Expect("SYN")
	if syn.flags != SYN || syn.src != client || c.ip.transparent != 1 || c.ip.marked != 1 {
		t.Fatalf("SYN %v transparent %d marked %d", syn, c.ip.transparent, c.ip.marked)
	}
	c.laddr = client
	c.Send(c.Seg().Flags(SYN | ACK).Seq(c.ISS).Ack(syn.seq + 1).Mark(netfilter.MarkDivert))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c.p.DialTransparent(context.Background(), netip.AddrPortFrom(netip.IPv4Unspecified(), 1), c.raddr); err == nil {
		t.Fatal("unspecified transparent source accepted")
	}
}

// Any diverted segment, however malformed, to no connection, a pending
// request or an intercepted connection is dropped, counted or answered;
// never a panic, and every request is resolved.
func FuzzDivertedSegment(f *testing.F) {
	p := &peer{ISS: 1000}
	all := header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7, SACKPermitted: true, HasTS: true, TSVal: 1}
	for _, m := range []tmpl{
		p.Seg().Flags(SYN).Seq(1000).Opts(all),
		p.Seg().Flags(SYN | header.ECE | header.CWR).Seq(1000),
		p.Seg().Flags(ACK).Seq(1001).Ack(1),
		p.Seg().Flags(ACK | PSH).Seq(1001).Ack(1).Data([]byte("hello")),
		p.Seg().Flags(FIN | ACK).Seq(1001).Ack(1),
		p.Seg().Flags(RST).Seq(1001),
		p.Seg().Flags(SYN | FIN | RST | PSH | ACK | header.URG).Seq(0xffffffff).Ack(0xffffffff),
	} {
		b := seedSegment(m)
		for mode := uint8(0); mode < 3; mode++ {
			f.Add(b, mode)
		}
	}
	f.Add([]byte{0, 1, 2}, uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, mode uint8) {
		c := newPeer(t, Config{})
		c.laddr = netip.AddrPortFrom(foreignAddr, 80)
		i, err := c.p.Intercept(2)
		if err != nil {
			t.Fatal(err)
		}
		var r *Request
		if mode%3 >= 1 { // a pending request
			c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Opts(all).Mark(netfilter.MarkDivert))
			r = c.nextReq(i)
		}
		var conn *Conn
		if mode%3 == 2 { // accepted: SYN-RECEIVED until the handshake's ACK
			done := make(chan *Conn, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				cn, _ := r.Accept(ctx)
				done <- cn
			}()
			c.waitSent(1)
			sa := c.Expect("SYN,ACK")
			c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(sa.seq + 1).Mark(netfilter.MarkDivert))
			conn = <-done
		}
		if len(b) >= 4 {
			binary.BigEndian.PutUint16(b[0:], c.raddr.Port())
			binary.BigEndian.PutUint16(b[2:], c.laddr.Port())
		}
		if len(b) >= header.TCPMinSize {
			header.TCP(b).SetChecksum(c.raddr.Addr(), c.laddr.Addr())
		}
		skb := buf.Alloc(buf.MaxHeadroom, len(b))
		copy(skb.Put(len(b)), b)
		ip := header.IPv4(skb.Push(header.IPv4MinSize))
		ip.Encode(header.IPv4Fields{TotalLen: uint16(header.IPv4MinSize + len(b)), TTL: 64,
			Protocol: header.ProtoTCP, Src: c.raddr.Addr(), Dst: c.laddr.Addr()})
		skb.SetNetworkHeader()
		skb.Pull(header.IPv4MinSize)
		skb.SetTransportHeader()
		skb.Mark = netfilter.MarkDivert
		c.p.V4Rcv(skb)
		c.clk.Advance(200 * time.Second)
		c.Out()
		if r != nil {
			r.Refuse() // a no-op once accepted
		}
		if conn != nil {
			_ = conn.Close()
		}
		if err := i.Close(); err != nil {
			t.Fatal(err)
		}
		if i.Pending() != 0 {
			t.Fatalf("%d requests left", i.Pending())
		}
	})
}

// acceptIntercepted runs an intercepted handshake (no options) and
// returns the accepted connection; c.IRS is the stack's ISS.
func (c *peer) acceptIntercepted(i *Interceptor) *Conn {
	c.t.Helper()
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Mark(netfilter.MarkDivert))
	r := c.nextReq(i)
	done := make(chan *Conn, 1)
	go func() {
		conn, _ := r.Accept(context.Background())
		done <- conn
	}()
	c.waitSent(1)
	sa := c.Expect("SYN,ACK")
	c.IRS = sa.seq
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Mark(netfilter.MarkDivert))
	conn := <-done
	if conn == nil {
		c.t.Fatal("Accept failed")
	}
	return conn
}

// RFC 1122 §4.2.2.13: a new SYN newer than the old incarnation reopens a
// tuple we hold in TIME-WAIT (the proxy closed first and the pod reuses
// its port); an old duplicate SYN does not.
func TestInterceptSynReopensTimeWait(t *testing.T) {
	c, i := newInterceptPeer(t, 0)
	conn := c.acceptIntercepted(i)
	conn.Close()
	fin := c.Expect("FIN")
	if fin.flags != FIN|ACK {
		t.Fatalf("got %v", fin)
	}
	c.Send(c.Seg().Flags(FIN | ACK).Seq(c.ISS + 1).Ack(c.IRS + 2).Mark(netfilter.MarkDivert))
	c.Expect("ACK of the pod's FIN")
	if st := conn.Sock().State(); st != TimeWait {
		t.Fatalf("state %v", st)
	}
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Mark(netfilter.MarkDivert)) // old duplicate
	if i.Pending() != 0 {
		t.Fatal("an old SYN reopened TIME-WAIT")
	}
	c.Out()
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS + 100000).Mark(netfilter.MarkDivert))
	c.ExpectNone("a new SYN to TIME-WAIT: no challenge ACK")
	if i.Pending() != 1 || conn.Sock().State() != Closed {
		t.Fatalf("pending %d, old state %v", i.Pending(), conn.Sock().State())
	}
}

// The event-driven form, upstream first as above: the handler takes the
// Request on the receiving goroutine (nothing is queued for Next), and
// AcceptAsync returns the child in SYN-RECEIVED at once; its Notify
// callback hears the handshake complete with the pod's ACK.
func TestInterceptHandlerAndAcceptAsync(t *testing.T) {
	c, i := newInterceptPeer(t, 0)
	var got []*Request
	i.SetHandler(func(r *Request) { got = append(got, r) })
	opts := header.TCPOptions{HasMSS: true, MSS: 1400, SACKPermitted: true}
	c.Send(c.Seg().Flags(SYN).Seq(c.ISS).Opts(opts).Mark(netfilter.MarkDivert))
	c.ExpectNone("an intercepted SYN before AcceptAsync")
	if len(got) != 1 || got[0].Dst() != c.laddr {
		t.Fatalf("handler got %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := i.Next(ctx); err == nil {
		t.Fatal("a handled request was also queued for Next")
	}
	var events []Event
	conn, err := got[0].AcceptAsync(func(ev Event) { events = append(events, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if st := conn.Sock().State(); st != SynReceived {
		t.Fatalf("state %v right after AcceptAsync", st)
	}
	sa := c.Expect("SYN,ACK")
	c.IRS = sa.seq
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Mark(netfilter.MarkDivert))
	if conn.Sock().State() != Established || len(events) != 1 || events[0] != EventReadable|EventWritable {
		t.Fatalf("state %v events %v", conn.Sock().State(), events)
	}
	if c.p.Counter(PassiveOpens) != 1 || i.Pending() != 0 {
		t.Fatalf("passive opens %d pending %d", c.p.Counter(PassiveOpens), i.Pending())
	}
	if _, err := got[0].AcceptAsync(nil); err == nil {
		t.Fatal("a second AcceptAsync succeeded")
	}
}
