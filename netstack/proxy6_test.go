package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv6"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// Proxy mode over IPv6: proxyPair's twin on a dual-stack pair, the pod's
// IPv6 default route via the node, and the divert hook on the node's IPv6
// PREROUTING (the hooks are per family, as nf_hooks_ipv6).

var (
	outside6    = netip.MustParseAddr("2001:db8:9::9") // a destination beyond the node
	clientAddr6 = netip.MustParseAddr("2001:db8:7::7") // a port-mapping client's address
)

func proxyPair6(t *testing.T) (pod, node *stacktest.Node) {
	t.Helper()
	pod, node = stacktest.Pair(t, stacktest.DualStack())
	if err := pod.AddRoute(route.Route{Dst: netip.MustParsePrefix("::/0"), Gateway: node.Addr6(),
		NIC: pod.NIC().ID(), Type: route.Unicast}); err != nil {
		t.Fatal(err)
	}
	nf := node.EnableNetfilter(netfilter.Config{})
	node.Hooks6().Register(netfilter.Ops{Hook: netfilter.PreRouting, Priority: netfilter.PriMangle, Name: "test-divert6",
		Fn: func(skb *buf.SKB, _ netfilter.State) netfilter.Verdict {
			if st, ok := nf.CtState(skb); !ok || st != netfilter.CtNew {
				return netfilter.Accept()
			}
			if b := skb.Bytes(); len(b) >= header.IPv6MinSize {
				if dst := header.IPv6(b).Dst(); !dst.IsMulticast() && !dst.IsLinkLocalUnicast() && !node.FIB().IsLocal(dst) {
					nf.Divert(skb)
				}
			}
			return netfilter.Accept()
		}})
	return pod, node
}

// The intercepted IPv6 SYN waits for Accept; then the pod is connected
// to the original IPv6 destination and data flows both ways.
func TestProxyTCPInterceptAcceptIPv6(t *testing.T) {
	pod, node := proxyPair6(t)
	i := intercept(t, node, 0)
	orig := netip.AddrPortFrom(outside6, 80)
	dial := dialAsync(pod, orig, 10*time.Second)
	r := next(t, i)
	if r.Src().Addr() != pod.Addr6() || r.Dst() != orig || r.NIC() != node.NIC().ID() {
		t.Fatalf("request %v → %v on NIC %d", r.Src(), r.Dst(), r.NIC())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sc, err := r.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	d := result(t, dial)
	if d.err != nil {
		t.Fatalf("pod dial: %v", d.err)
	}
	defer d.c.Close()
	if got := d.c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != orig {
		t.Fatalf("pod connected to %v", got)
	}
	if got := sc.LocalAddr().(*net.TCPAddr).AddrPort(); got != orig {
		t.Fatalf("proxy side is %v", got)
	}
	msg := bytes.Repeat([]byte("six"), 40000)
	go func() {
		d.c.Write(msg)
		d.c.CloseWrite()
	}()
	if got, err := readAll(sc); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("proxy read %d, %v", len(got), err)
	}
	go func() {
		sc.Write([]byte("reply"))
		sc.CloseWrite()
	}()
	if got, err := readAll(d.c); err != nil || string(got) != "reply" {
		t.Fatalf("pod read %q, %v", got, err)
	}

	// Refuse: the pod's dial is reset (ECONNREFUSED).
	dial2 := dialAsync(pod, netip.AddrPortFrom(outside6, 81), 10*time.Second)
	next(t, i).Refuse()
	if d := result(t, dial2); !errors.Is(d.err, syscall.ECONNREFUSED) {
		t.Fatalf("refused dial: %v", d.err)
	}
}

// DialTCPTransparent into the pod from a client's IPv6 address: the pod
// sees the client; an IPv4 source towards an IPv6 pod is refused.
func TestProxyDialTCPTransparentIPv6(t *testing.T) {
	pod, node := proxyPair6(t)
	ln, err := pod.ListenTCP(netip.AddrPortFrom(pod.Addr6(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := node.DialTCPTransparent(ctx, netip.AddrPortFrom(clientAddr6, 0), netip.AddrPortFrom(pod.Addr6(), 8080))
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
	if peer.Addr() != clientAddr6 || peer != c.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("pod sees %v, proxy side %v", peer, c.LocalAddr())
	}
	go func() {
		sc.Write([]byte("hello client"))
		sc.CloseWrite()
	}()
	if got, err := readAll(c); err != nil || string(got) != "hello client" {
		t.Fatalf("proxy read %q, %v", got, err)
	}
	if _, err := node.DialTCPTransparent(ctx, netip.AddrPortFrom(clientAddr, 0), netip.AddrPortFrom(pod.Addr6(), 8080)); !errors.Is(err, syscall.EAFNOSUPPORT) {
		t.Fatalf("IPv4 source to an IPv6 pod: %v", err)
	}
}

// UDP over IPv6: the intercept socket sees the pod's datagram with its
// original IPv6 destination and answers from it; SendPortUnreachable and,
// without an intercept socket, the stack itself answer with ICMPv6 port
// unreachable from that destination (RFC 4443 §3.1), which the pod's
// connected socket reports as ECONNREFUSED.
func TestProxyUDPInterceptIPv6(t *testing.T) {
	pod, node := proxyPair6(t)
	is, err := node.InterceptUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	orig := netip.AddrPortFrom(outside6, 53)
	c, err := pod.DialUDP(netip.AddrPort{}, orig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("query6")); err != nil {
		t.Fatal(err)
	}
	is.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 100)
	n, m, err := is.RecvMsg(b, 0)
	if err != nil || string(b[:n]) != "query6" {
		t.Fatalf("intercept read %q %v", b[:n], err)
	}
	podAddr := c.LocalAddr().(*net.UDPAddr).AddrPort()
	if m.From != podAddr || m.To != orig || podAddr.Addr() != pod.Addr6() {
		t.Fatalf("meta %+v, pod %v", m, podAddr)
	}
	if _, err := is.SendFromTo([]byte("answer6"), m.To, m.From); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(b); err != nil || string(b[:n]) != "answer6" {
		t.Fatalf("pod read %q %v", b[:n], err)
	}
	if _, err := is.SendFromTo([]byte("x"), netip.AddrPortFrom(outside, 53), m.From); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("SendFromTo across families: %v", err)
	}
	if err := node.SendPortUnreachable(m.From, m.To); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(b); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("pod read after port unreachable: %v", err)
	}
	is.Close()
	c2, err := pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(outside6, 54))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte("q"))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(b); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("pod read with no intercept socket: %v", err)
	}
	if st := node.UDP().Stats(); st.DivertNoPorts != 1 || st.InDiverted != 1 {
		t.Fatalf("node udp %+v", st)
	}
	if st := pod.Stats().IP6.ICMP; st.InDestUnreachs != 2 {
		t.Fatalf("pod icmpv6 %+v", st)
	}
}

// A transparent UDP socket from a client's IPv6 address into the pod.
func TestProxyDialUDPTransparentIPv6(t *testing.T) {
	pod, node := proxyPair6(t)
	srv, err := pod.ListenUDP(netip.AddrPortFrom(pod.Addr6(), 5353))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	client := netip.AddrPortFrom(clientAddr6, 40000)
	podSrv := netip.AddrPortFrom(pod.Addr6(), 5353)
	s, err := node.DialUDPTransparent(client, podSrv)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
	if _, err := node.DialUDPTransparent(netip.AddrPortFrom(clientAddr, 1), podSrv); !errors.Is(err, syscall.EAFNOSUPPORT) {
		t.Fatalf("IPv4 source to an IPv6 pod: %v", err)
	}
}

// ICMPv6 echo (RFC 4443 §4.1) to an outside address goes to the IPv6
// echo interceptor, whose reply from that address reaches the pod.
func TestProxyEchoIPv6(t *testing.T) {
	pod, node := proxyPair6(t)
	seen := make(chan netip.Addr, 2)
	node.InterceptEcho6(func(r ipv6.EchoRequest) {
		seen <- r.Dst
		if len(r.Header) != header.IPv6MinSize+header.ICMPv6MinSize || r.Header[0]>>4 != 6 {
			t.Errorf("request header % x", r.Header)
		}
		if err := node.SendEchoReply(r.Dst, r.Src, r.ID, r.Seq, r.Payload); err != nil {
			t.Errorf("SendEchoReply: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pod.Ping(ctx, outside6, 7, []byte("hello6")); err != nil {
		t.Fatalf("ping through the interceptor: %v", err)
	}
	if dst := <-seen; dst != outside6 {
		t.Fatalf("intercepted to %v", dst)
	}
}
