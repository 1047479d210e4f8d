package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/netstack/udp"
)

// Proxy mode over two stacks joined by a pipe: the "pod" (10.0.0.1,
// default route via the node) and the "node" (10.0.0.2) with netfilter
// and a PREROUTING hook that diverts every NEW flow to a destination that
// is not the node's, as the daemon's proxy-divert hook does.

var (
	outside    = netip.MustParseAddr("203.0.113.9")  // a destination beyond the node
	clientAddr = netip.MustParseAddr("198.51.100.7") // a port-mapping client's address
)

func proxyPair(t *testing.T) (pod, node *stacktest.Node, nf *netfilter.Netfilter) {
	t.Helper()
	pod, node = stacktest.Pair(t)
	if err := pod.AddRoute(route.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: node.Addr(),
		NIC: pod.NIC().ID(), Type: route.Unicast}); err != nil {
		t.Fatal(err)
	}
	nf = node.EnableNetfilter(netfilter.Config{})
	node.Hooks().Register(netfilter.Ops{Hook: netfilter.PreRouting, Priority: netfilter.PriMangle, Name: "test-divert",
		Fn: func(skb *buf.SKB, _ netfilter.State) netfilter.Verdict {
			if st, ok := nf.CtState(skb); !ok || st != netfilter.CtNew {
				return netfilter.Accept()
			}
			if h, err := header.CheckIPv4(skb.Bytes()); err == nil && !node.FIB().IsLocal(h.Dst()) {
				nf.Divert(skb)
			}
			return netfilter.Accept()
		}})
	return pod, node, nf
}

func intercept(t *testing.T, node *stacktest.Node, maxPending int) *tcp.Interceptor {
	t.Helper()
	i, err := node.InterceptTCP(maxPending)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { i.Close() })
	return i
}

type dialResult struct {
	c   *tcp.Conn
	err error
}

// dialAsync dials from the pod; the result arrives on the channel.
func dialAsync(pod *stacktest.Node, to netip.AddrPort, timeout time.Duration) <-chan dialResult {
	ch := make(chan dialResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := pod.DialTCP(ctx, netip.AddrPort{}, to)
		ch <- dialResult{c, err}
	}()
	return ch
}

func next(t *testing.T, i *tcp.Interceptor) *tcp.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := i.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return r
}

func result(t *testing.T, ch <-chan dialResult) dialResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("dial did not finish")
		return dialResult{}
	}
}

// Upstream first: the intercepted SYN is not answered until Accept; then
// the pod's connection is to the original destination, data flows both
// ways, and the node's listener on the same port never sees the flow.
func TestProxyTCPInterceptAccept(t *testing.T) {
	pod, node, _ := proxyPair(t)
	i := intercept(t, node, 0)
	ln, err := node.ListenTCP(netip.AddrPortFrom(netip.IPv4Unspecified(), 80))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	orig := netip.AddrPortFrom(outside, 80)
	dial := dialAsync(pod, orig, 10*time.Second)
	r := next(t, i)
	if r.Src().Addr() != pod.Addr() || r.Dst() != orig || r.NIC() != node.NIC().ID() {
		t.Fatalf("request %v → %v on NIC %d", r.Src(), r.Dst(), r.NIC())
	}
	if n := node.TCP().Counters()["TcpOutSegs"]; n != 0 {
		t.Fatalf("the node sent %d segments before Accept", n)
	}
	select {
	case d := <-dial:
		t.Fatalf("pod connected before Accept: %v", d.err)
	default:
	}
	if i.Pending() != 1 {
		t.Fatalf("pending %d", i.Pending())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	up, err := r.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	defer up.Close()
	d := result(t, dial)
	if d.err != nil {
		t.Fatalf("pod dial: %v", d.err)
	}
	defer d.c.Close()
	if got := d.c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != orig {
		t.Fatalf("pod connected to %v", got)
	}
	if got := up.LocalAddr().(*net.TCPAddr).AddrPort(); got != orig {
		t.Fatalf("proxy side local %v", got)
	}
	if i.Pending() != 0 {
		t.Fatalf("pending %d after Accept", i.Pending())
	}
	if _, err := r.Accept(ctx); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Accept: %v", err)
	}

	req := bytes.Repeat([]byte("pod→up "), 40000) // 280 KB
	go func() {
		d.c.Write(req)
		d.c.CloseWrite()
	}()
	got, err := readAll(up)
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("upstream read %d bytes, %v", len(got), err)
	}
	resp := bytes.Repeat([]byte("up→pod "), 30000)
	go func() {
		up.Write(resp)
		up.CloseWrite()
	}()
	got, err = readAll(d.c)
	if err != nil || !bytes.Equal(got, resp) {
		t.Fatalf("pod read %d bytes, %v", len(got), err)
	}
	if st := i.Stats(); st.Requests != 1 || st.Refused != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func readAll(c net.Conn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return io.ReadAll(c)
}

// RFC 9293 §3.10.7.1: Refuse answers the SYN with RST,ACK and the pod's
// connect fails with ECONNREFUSED at once.
func TestProxyTCPRefuse(t *testing.T) {
	pod, node, _ := proxyPair(t)
	i := intercept(t, node, 0)
	start := time.Now()
	dial := dialAsync(pod, netip.AddrPortFrom(outside, 81), 10*time.Second)
	r := next(t, i)
	r.Refuse()
	r.Refuse() // no-op
	d := result(t, dial)
	if !errors.Is(d.err, syscall.ECONNREFUSED) {
		t.Fatalf("pod dial: %v", d.err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("refusal took %v", time.Since(start))
	}
	if _, err := r.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Refuse: %v", err)
	}
	if st := i.Stats(); st.Refused != 1 || i.Pending() != 0 {
		t.Fatalf("stats %+v pending %d", st, i.Pending())
	}
}

// A SYN retransmitted while its request is pending is dropped and
// counted, not queued twice; Accept afterwards still connects.
func TestProxyTCPPendingSynRetransmitDropped(t *testing.T) {
	pod, node, _ := proxyPair(t)
	i := intercept(t, node, 0)
	dial := dialAsync(pod, netip.AddrPortFrom(outside, 82), 10*time.Second)
	r := next(t, i)
	// The pod's SYN RTO is 1 s (RFC 6298 §2.1).
	stacktest.WaitFor(t, "SYN retransmission", func() bool { return i.Stats().SynDups >= 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if r2, err := i.Next(ctx); err == nil {
		t.Fatalf("a second request for the same flow: %v", r2.Src())
	}
	if i.Pending() != 1 || node.TCP().Counters()["TcpExtInterceptSynDups"] < 1 {
		t.Fatalf("pending %d counters %v", i.Pending(), node.TCP().Counters())
	}
	up, err := r.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if d := result(t, dial); d.err != nil {
		t.Fatal(d.err)
	} else {
		d.c.Close()
	}
}

// maxPending bounds the unresolved requests: a SYN past it is dropped
// and counted, and its retransmission gets in once a slot is free.
func TestProxyTCPMaxPending(t *testing.T) {
	pod, node, _ := proxyPair(t)
	i := intercept(t, node, 2)
	var dials []<-chan dialResult
	for p := uint16(0); p < 3; p++ {
		dials = append(dials, dialAsync(pod, netip.AddrPortFrom(outside, 90+p), 10*time.Second))
	}
	stacktest.WaitFor(t, "an overflow", func() bool { return i.Stats().Overflows >= 1 })
	if i.Pending() != 2 || i.Stats().Requests != 2 {
		t.Fatalf("pending %d stats %+v", i.Pending(), i.Stats())
	}
	next(t, i).Refuse()
	next(t, i).Refuse()
	r := next(t, i) // the dropped SYN, retransmitted
	r.Refuse()
	for _, d := range dials {
		if err := result(t, d).err; !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial: %v", err)
		}
	}
	if n := node.TCP().Counters()["TcpExtInterceptOverflows"]; n < 1 {
		t.Fatalf("overflow counter %d", n)
	}
}

// Close refuses every unresolved request; Next then reports
// net.ErrClosed, and a later diverted SYN, finding neither a connection
// nor an interceptor, gets the RST of a closed port (sent from the
// foreign address). A second Intercept works once the first is closed.
func TestProxyTCPInterceptorClose(t *testing.T) {
	pod, node, _ := proxyPair(t)
	i, err := node.InterceptTCP(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.InterceptTCP(0); !errors.Is(err, tcp.ErrInterceptorBusy) {
		t.Fatalf("second Intercept: %v", err)
	}
	queued := dialAsync(pod, netip.AddrPortFrom(outside, 83), 10*time.Second)
	handed := dialAsync(pod, netip.AddrPortFrom(outside, 84), 10*time.Second)
	r := next(t, i)
	stacktest.WaitFor(t, "two requests", func() bool { return i.Pending() == 2 })
	if err := i.Close(); err != nil {
		t.Fatal(err)
	}
	if err := i.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	for _, d := range []<-chan dialResult{queued, handed} {
		if err := result(t, d).err; !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial: %v", err)
		}
	}
	if _, err := r.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	if _, err := i.Next(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	if err := result(t, dialAsync(pod, netip.AddrPortFrom(outside, 85), 5*time.Second)).err; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial without interceptor: %v", err)
	}
	if n := node.TCP().Counters()["TcpExtInterceptNoInterceptor"]; n != 1 {
		t.Fatalf("no-interceptor counter %d", n)
	}
	i2 := intercept(t, node, 0)
	if i2 == i {
		t.Fatal("same interceptor")
	}
}

// Accept's context bounds the handshake: when the pod's ACK never comes
// the half-open child is reset and removed, and the pod sees the reset.
func TestProxyTCPAcceptTimeout(t *testing.T) {
	pod, node, nf := proxyPair(t)
	i := intercept(t, node, 0)
	// Lose the pod's handshake ACK (and everything after it) at the node.
	if err := nf.LoadText("*filter\n-A INPUT -p tcp --tcp-flags SYN,ACK ACK -j DROP\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	dial := dialAsync(pod, netip.AddrPortFrom(outside, 86), 10*time.Second)
	r := next(t, i)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := r.Accept(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Accept: %v", err)
	}
	d := result(t, dial)
	if d.err != nil {
		t.Fatalf("pod dial: %v", d.err) // the pod got the SYN,ACK
	}
	defer d.c.Close()
	if _, err := readAll(d.c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("pod read after the proxy gave up: %v", err)
	}
	if n := node.TCP().Counters()["TcpCurrEstab"]; n != 0 || i.Pending() != 0 {
		t.Fatalf("node holds %d connections, %d pending", n, i.Pending())
	}
}

// Traffic that is not diverted never reaches the interceptor: a SYN to
// the node's own closed port gets the RST (RFC 9293 §3.10.7.1), one to
// its listener is accepted there.
func TestProxyTCPNotDivertedUnaffected(t *testing.T) {
	pod, node, _ := proxyPair(t)
	i := intercept(t, node, 0)
	if err := result(t, dialAsync(pod, netip.AddrPortFrom(node.Addr(), 9), 5*time.Second)).err; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v", err)
	}
	ln, err := node.ListenTCP(netip.AddrPortFrom(node.Addr(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := result(t, dialAsync(pod, netip.AddrPortFrom(node.Addr(), 8080), 5*time.Second))
	if d.err != nil {
		t.Fatal(d.err)
	}
	d.c.Close()
	if st := i.Stats(); st.Requests != 0 || i.Pending() != 0 {
		t.Fatalf("interceptor saw local traffic: %+v", st)
	}
}

// The node opens a connection into the pod from a client's address that
// is not its own: the pod's server sees that peer, and the pod's replies
// come back to the transparent socket through conntrack's mark.
func TestProxyDialTCPTransparent(t *testing.T) {
	pod, node, _ := proxyPair(t)
	ln, err := pod.ListenTCP(netip.AddrPortFrom(pod.Addr(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := node.DialTCPTransparent(ctx, netip.AddrPortFrom(clientAddr, 0), netip.AddrPortFrom(pod.Addr(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	sc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	peer := sc.RemoteAddr().(*net.TCPAddr).AddrPort()
	if peer.Addr() != clientAddr || peer != c.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("pod sees %v, proxy side %v", peer, c.LocalAddr())
	}
	msg := bytes.Repeat([]byte("x"), 100000)
	go func() {
		c.Write(msg)
		c.CloseWrite()
	}()
	if got, err := readAll(sc); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("pod read %d, %v", len(got), err)
	}
	go func() {
		sc.Write([]byte("reply"))
		sc.CloseWrite()
	}()
	if got, err := readAll(c); err != nil || string(got) != "reply" {
		t.Fatalf("proxy read %q, %v", got, err)
	}
	if _, err := node.DialTCPTransparent(ctx, netip.AddrPort{}, netip.AddrPortFrom(pod.Addr(), 8080)); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("no local address: %v", err)
	}
}

// UDP: the intercept socket sees the pod's datagram with its original
// destination, SendFromTo answers from it, and SendPortUnreachable gives
// the pod's connected socket ECONNREFUSED (RFC 1122 §4.1.3.1).
func TestProxyUDPIntercept(t *testing.T) {
	pod, node, _ := proxyPair(t)
	is, err := node.InterceptUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	if _, err := node.InterceptUDP(); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second InterceptUDP: %v", err)
	}
	wild, err := node.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 53))
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Close()
	orig := netip.AddrPortFrom(outside, 53)
	c, err := pod.DialUDP(netip.AddrPort{}, orig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	is.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 100)
	n, m, err := is.RecvMsg(b, 0)
	if err != nil || string(b[:n]) != "query" {
		t.Fatalf("intercept read %q %v", b[:n], err)
	}
	podAddr := c.LocalAddr().(*net.UDPAddr).AddrPort()
	if m.From != podAddr || m.To != orig {
		t.Fatalf("meta %+v, pod %v", m, podAddr)
	}
	if _, err := is.SendFromTo([]byte("answer"), m.To, m.From); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = c.Read(b)
	if err != nil || string(b[:n]) != "answer" {
		t.Fatalf("pod read %q %v", b[:n], err)
	}
	if _, err := is.SendTo([]byte("x"), m.From); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("SendTo on the intercept socket: %v", err)
	}
	if err := node.SendPortUnreachable(m.From, m.To); err != nil {
		t.Fatal(err)
	}
	_, err = c.Read(b)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("pod read after port unreachable: %v", err)
	}
	if st := node.UDP().Stats(); st.InDiverted != 1 || st.InDatagrams != 1 {
		t.Fatalf("node udp %+v", st)
	}
	// Without the intercept socket, a diverted datagram is answered with
	// port unreachable from the original destination.
	is.Close()
	if _, err := pod.DialUDP(netip.AddrPort{}, orig); err != nil {
		t.Fatal(err)
	}
	c2, err := pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(outside, 54))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte("q"))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(b); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("pod read with no intercept socket: %v", err)
	}
	if st := node.UDP().Stats(); st.DivertNoPorts != 1 {
		t.Fatalf("node udp %+v", st)
	}
}

// A transparent UDP socket into the pod from a client's address: the
// pod's server sees the client, its reply returns to the socket; a
// second socket with the same 4-tuple is refused, another peer is not.
func TestProxyDialUDPTransparent(t *testing.T) {
	pod, node, _ := proxyPair(t)
	srv, err := pod.ListenUDP(netip.AddrPortFrom(pod.Addr(), 5353))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	client := netip.AddrPortFrom(clientAddr, 40000)
	podSrv := netip.AddrPortFrom(pod.Addr(), 5353)
	s, err := node.DialUDPTransparent(client, podSrv)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := node.DialUDPTransparent(client, podSrv); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("same 4-tuple: %v", err)
	}
	s2, err := node.DialUDPTransparent(client, netip.AddrPortFrom(pod.Addr(), 5354))
	if err != nil {
		t.Fatalf("same client, other peer: %v", err)
	}
	s2.Close()
	if _, err := s.Send([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 100)
	n, from, err := srv.ReadFrom(b)
	if err != nil || string(b[:n]) != "ping" || from.(*net.UDPAddr).AddrPort() != client {
		t.Fatalf("pod read %q from %v: %v", b[:n], from, err)
	}
	if _, err := srv.WriteTo([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, m, err := s.RecvMsg(b, 0)
	if err != nil || string(b[:n]) != "pong" || m.From != podSrv || m.To != client {
		t.Fatalf("proxy read %q %+v %v", b[:n], m, err)
	}
	eph, err := node.DialUDPTransparent(netip.AddrPortFrom(clientAddr, 0), podSrv)
	if err != nil {
		t.Fatal(err)
	}
	defer eph.Close()
	if p := eph.LocalAddr(); p.Addr() != clientAddr || p.Port() < udp.DefaultEphemeralLow {
		t.Fatalf("ephemeral local %v", p)
	}
}

// ICMP echo (RFC 792) to an outside address goes to the echo
// interceptor, whose reply from that address reaches the pod's ping;
// without one the request is dropped and counted. The node still answers
// pings to itself.
func TestProxyEcho(t *testing.T) {
	pod, node, _ := proxyPair(t)
	type echo struct {
		src, dst netip.Addr
		id, seq  uint16
		data     string
	}
	seen := make(chan echo, 4)
	node.InterceptEcho(func(r ipv4.EchoRequest) {
		src, dst, id, seq, payload := r.Src, r.Dst, r.ID, r.Seq, r.Payload
		seen <- echo{src, dst, id, seq, string(payload)}
		if err := node.SendEchoReply(dst, src, id, seq, payload); err != nil {
			t.Errorf("SendEchoReply: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pod.Ping(ctx, outside, 7, []byte("hello")); err != nil {
		t.Fatalf("ping through the interceptor: %v", err)
	}
	e := <-seen
	if e.src != pod.Addr() || e.dst != outside || e.seq != 7 || e.data != "hello" {
		t.Fatalf("intercepted %+v", e)
	}
	if _, err := pod.Ping(ctx, node.Addr(), 8, nil); err != nil {
		t.Fatalf("ping the node: %v", err)
	}
	if len(seen) != 0 {
		t.Fatal("the node's own ping was intercepted")
	}
	node.InterceptEcho(nil)
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, err := pod.Ping(short, outside, 9, nil); err == nil {
		t.Fatal("ping answered without an interceptor")
	}
	if st := node.Stats().IP.ICMP; st.InEchoDiverted != 1 || st.InEchoDivertDrops != 1 {
		t.Fatalf("icmp %+v", st)
	}
	if err := node.SendEchoReply(netip.MustParseAddr("224.0.0.1"), pod.Addr(), 1, 1, nil); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("multicast source: %v", err)
	}
}
