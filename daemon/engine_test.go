package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/proxy"
)

// echoServer is a kernel TCP echo server on loopback: the "outside" a
// proxied flow reaches.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln
}

// freePort is a loopback TCP port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func echoOnce(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	b := make([]byte, len(msg))
	_, err := io.ReadFull(c, b)
	return string(b), err
}

// TestEngineOverDivert wires the real proxy engine (through EngineProxy)
// to the attacher's stack and its divert rule, over pipes: a proxy-mode
// pod's connection to an outside address is diverted, relayed over a
// kernel socket (the test's Dialer sends it to a loopback echo server)
// and echoes; a port mapping on a loopback host port reaches a server in
// the pod, which sees the loopback client as the gateway; the stats come
// through the API types; removing the pod closes its host port.
func TestEngineOverDivert(t *testing.T) {
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
	t.Cleanup(func() { a.Close() })
	upstream := echoServer(t)
	outside := "203.0.113.9:80"
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eng, err := proxy.New(proxy.Config{Stack: a.Stack(), ResolvConf: resolv, ConnectTimeout: 2 * time.Second, Logger: discardLogger(),
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == outside {
				addr = upstream.Addr().String()
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	px := &EngineProxy{e: eng}
	t.Cleanup(func() { px.Close() })

	r := req("p", "n1", 5)
	r.PodMAC, r.Mode = podMAC(5).String(), api.ModeProxy
	hostPort := freePort(t)
	r.PortMappings = []api.PortMapping{{HostPort: hostPort, ContainerPort: 8080, Protocol: "tcp", HostIP: "127.0.0.1"}}
	at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
	if err := a.Attach(at); err != nil {
		t.Fatal(err)
	}
	if err := px.AddPod(at); err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("10.1.0.1")
	pod := endStack(t, k.peer(r.HostIfName), podMAC(5), r.IP, gw)

	// Egress: pod → 203.0.113.9:80, relayed to the loopback echo server.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pod.DialTCP(ctx, netip.AddrPort{}, netip.MustParseAddrPort(outside))
	if err != nil {
		t.Fatalf("pod → %s through the proxy: %v", outside, err)
	}
	if got, err := echoOnce(c, "through the proxy"); err != nil || got != "through the proxy" {
		t.Fatalf("echo: %q %v", got, err)
	}
	c.Close()

	// Ingress: a port mapping on 127.0.0.1:hostPort into the pod's :8080.
	ln, err := pod.ListenTCP(netip.AddrPortFrom(netip.IPv4Unspecified(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	peers := make(chan string, 1)
	go func() {
		sc, err := ln.Accept()
		if err != nil {
			peers <- "accept: " + err.Error()
			return
		}
		peers <- sc.RemoteAddr().String()
		io.Copy(sc, sc)
		sc.Close()
	}()
	hc, err := net.DialTimeout("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(hostPort)).String(), 3*time.Second)
	if err != nil {
		t.Fatalf("dial the host port: %v", err)
	}
	if got, err := echoOnce(hc, "into the pod"); err != nil || got != "into the pod" {
		t.Fatalf("port mapping echo: %q %v", got, err)
	}
	hc.Close()
	select {
	case p := <-peers:
		if !strings.HasPrefix(p, gw.String()+":") {
			t.Fatalf("the pod saw its loopback client as %s, want the gateway %v", p, gw)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the pod's server accepted nothing")
	}

	st := px.Stats()
	if st.TCPAccepted < 1 || st.PortMapConns < 1 {
		t.Fatalf("proxy stats: %+v", st)
	}
	if n := counter(a, "ProxyDiverted"); n < 1 {
		t.Fatalf("ProxyDiverted %d", n)
	}

	// RemovePod closes the host port.
	px.RemovePod(at.ID)
	if c, err := net.DialTimeout("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(hostPort)).String(), time.Second); err == nil {
		c.Close()
		t.Fatalf("host port %d still open after RemovePod", hostPort)
	}

	// A host port somebody else holds fails AddPod with EADDRINUSE, which
	// the daemon turns into its "host port in use" message.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	at2 := *at
	at2.PortMappings = []api.PortMapping{{HostPort: busy.Addr().(*net.TCPAddr).Port, ContainerPort: 80, Protocol: "tcp", HostIP: "127.0.0.1"}}
	if err := px.AddPod(&at2); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("AddPod on a busy host port: %v, want EADDRINUSE", err)
	}
}

// TestEngineOverDivertIPv6 is TestEngineOverDivert for a dual-stack pod
// over IPv6: the divert rule on the IPv6 PREROUTING diverts the pod's
// connection to an outside IPv6 address, which the engine relays (the
// test's Dialer sends it to an echo server on [::1]); a port mapping on
// the host's [::1] reaches the pod's IPv6 address, the loopback client
// shown as the pod's IPv6 gateway (::1 must not reach the pod, RFC 4291
// §2.5.3); an IPv6 flow counts under the pod (one MaxFlowsPerPod).
func TestEngineOverDivertIPv6(t *testing.T) {
	ln6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { ln6.Close() })
	go func() {
		for {
			c, err := ln6.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
	t.Cleanup(func() { a.Close() })
	outside := "[2001:db8::9]:80"
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eng, err := proxy.New(proxy.Config{Stack: a.Stack(), ResolvConf: resolv, ConnectTimeout: 2 * time.Second, Logger: discardLogger(),
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == outside {
				addr = ln6.Addr().String()
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	px := &EngineProxy{e: eng}
	t.Cleanup(func() { px.Close() })

	r := req6("p", "n1", 5)
	r.PodMAC, r.Mode = podMAC(5).String(), api.ModeProxy
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	hostPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r.PortMappings = []api.PortMapping{{HostPort: hostPort, ContainerPort: 8080, Protocol: "tcp", HostIP: "::1"}}
	at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
	if err := a.Attach(at); err != nil {
		t.Fatal(err)
	}
	if err := px.AddPod(at); err != nil {
		t.Fatal(err)
	}
	pod := endStack(t, k.peer(r.HostIfName), podMAC(5), r.IP, netip.MustParseAddr("10.1.0.1"))
	endStack6(t, pod, r.IP6, r.Gateway6)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pod.DialTCP(ctx, netip.AddrPort{}, netip.MustParseAddrPort(outside))
	if err != nil {
		t.Fatalf("pod → %s through the proxy: %v", outside, err)
	}
	if got, err := echoOnce(c, "through the proxy over IPv6"); err != nil || got != "through the proxy over IPv6" {
		t.Fatalf("echo: %q %v", got, err)
	}
	if st := px.Stats(); st.Pods == nil || st.Pods[at.ID].ActiveFlows != 1 {
		t.Fatalf("the IPv6 flow is not counted under its pod: %+v", st.Pods)
	}
	c.Close()

	sl, err := pod.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), 8080))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sl.Close() })
	peers := make(chan string, 1)
	go func() {
		sc, err := sl.Accept()
		if err != nil {
			peers <- "accept: " + err.Error()
			return
		}
		peers <- sc.LocalAddr().String() + " " + sc.RemoteAddr().String()
		io.Copy(sc, sc)
		sc.Close()
	}()
	hc, err := net.DialTimeout("tcp6", netip.AddrPortFrom(netip.IPv6Loopback(), uint16(hostPort)).String(), 3*time.Second)
	if err != nil {
		t.Fatalf("dial the IPv6 host port: %v", err)
	}
	if got, err := echoOnce(hc, "into the pod over IPv6"); err != nil || got != "into the pod over IPv6" {
		t.Fatalf("port mapping echo: %q %v", got, err)
	}
	hc.Close()
	select {
	case p := <-peers:
		want := netip.AddrPortFrom(r.IP6.Addr(), 8080).String() + " [" + r.Gateway6.String() + "]:"
		if !strings.HasPrefix(p, want) {
			t.Fatalf("the pod's server saw %q, want %q… (its IPv6 address, the client as the IPv6 gateway)", p, want)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the pod's server accepted nothing")
	}
	if st := px.Stats(); st.TCPAccepted < 1 || st.PortMapConns < 1 {
		t.Fatalf("proxy stats: %+v", st)
	}
	if n := counter(a, "ProxyDiverted"); n < 1 {
		t.Fatalf("ProxyDiverted %d", n)
	}
}
