package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// podTCPServer accepts on the pod's port, reports each peer and echoes.
func (r *rig) podTCPServer(t *testing.T, port uint16) <-chan netip.AddrPort {
	t.Helper()
	ln, err := r.pod.ListenTCP(netip.AddrPortFrom(podAddr, port))
	must(t, err)
	peers := make(chan netip.AddrPort, 16)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return peers
}

// podUDPServer answers "pod:"+payload on the pod's port.
func (r *rig) podUDPServer(t testing.TB, port uint16) {
	t.Helper()
	pc, err := r.pod.ListenUDP(netip.AddrPortFrom(podAddr, port))
	must(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		// The answer is "pod:" and the datagram, read in behind it: no
		// allocation per datagram (BenchmarkPortMapUDPRR counts them).
		b := make([]byte, 2048)
		tag := copy(b, "pod:")
		for {
			n, from, err := pc.ReadFromUDPAddrPort(b[tag:])
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(b[:tag+n], from)
		}
	}()
}

// addMappedPod adds pod "p" with one mapping of a free host port of
// protocol proto ("tcp" or "udp") to containerPort, and returns that port.
func (r *rig) addMappedPod(tb testing.TB, proto string, containerPort uint16) uint16 {
	tb.Helper()
	hp := closedPort(tb, proto)
	must(tb, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{
		{HostPort: int(hp), ContainerPort: int(containerPort), Protocol: proto},
	}}))
	return hp
}

// hostIPv4 is a non-loopback address of this host, if any.
func hostIPv4() (netip.Addr, bool) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, b, err)
	}
}

func TestPortMapping(t *testing.T) {
	r := newRig(t, func(c *Config) { c.UDPIdleTimeout = 300 * time.Millisecond })
	peers := r.podTCPServer(t, 8080)
	r.podUDPServer(t, 9090)
	// TCP and UDP on the same host port number are two mappings.
	hp := closedPort(t, "tcp")
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{
		{HostPort: int(hp), ContainerPort: 8080, Protocol: "tcp"},
		{HostPort: int(hp), ContainerPort: 9090, Protocol: "UDP"},
	}}))

	t.Run("loopback client is shown as the gateway", func(t *testing.T) {
		c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", itoa(hp)))
		must(t, err)
		defer c.Close()
		roundTrip(t, c, "hello pod")
		if p := <-peers; p.Addr() != gwAddr {
			t.Errorf("pod sees %v, want the gateway %v", p, gwAddr)
		}
	})
	t.Run("other client keeps its address", func(t *testing.T) {
		a, ok := hostIPv4()
		if !ok {
			t.Skip("no non-loopback IPv4 address on this host")
		}
		c, err := net.Dial("tcp4", net.JoinHostPort(a.String(), itoa(hp)))
		must(t, err)
		defer c.Close()
		roundTrip(t, c, "from outside")
		if p := <-peers; p.Addr() != a {
			t.Errorf("pod sees %v, want the client's %v", p, a)
		}
	})
	t.Run("hairpin: the pod reaches its own host port", func(t *testing.T) {
		a, ok := hostIPv4()
		if !ok {
			t.Skip("no non-loopback IPv4 address on this host")
		}
		// pod → (diverted) relay → a:hp on the host → mapping →
		// transparent dial from a into the pod.
		c, err := r.dialPod(ctxT(t, 5*time.Second), a, hp)
		must(t, err)
		defer c.Close()
		roundTrip(t, c, "hairpin")
		if p := <-peers; p.Addr() != a {
			t.Errorf("pod's server sees %v, want %v", p, a)
		}
	})
	t.Run("udp", func(t *testing.T) {
		c, err := net.Dial("udp4", net.JoinHostPort("127.0.0.1", itoa(hp)))
		must(t, err)
		defer c.Close()
		c.Write([]byte("dgram"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 64)
		n, err := c.Read(b)
		if err != nil || string(b[:n]) != "pod:dgram" {
			t.Fatalf("udp mapping: %q, %v", b[:n], err)
		}
		r.waitStats("udp mapping flow idles out", func(s Stats) bool { return s.ActiveUDP == 0 })
	})
	if s := r.e.Stats(); s.PortMapConns == 0 {
		t.Errorf("PortMapConns = 0")
	}

	// RemovePod: the port is closed and the pod's flows are gone.
	c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", itoa(hp)))
	must(t, err)
	defer c.Close()
	roundTrip(t, c, "before removal")
	r.e.RemovePod("p")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("relayed connection after RemovePod: %v, want ECONNRESET", err)
	}
	if _, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", itoa(hp))); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after RemovePod: %v, want ECONNREFUSED", err)
	}
	ln, err := net.ListenPacket("udp4", net.JoinHostPort("0.0.0.0", itoa(hp)))
	if err != nil {
		t.Errorf("UDP host port still bound after RemovePod: %v", err)
	} else {
		ln.Close()
	}
	r.waitStats("no flows", func(s Stats) bool { return s.ActiveTCP == 0 && s.ActiveUDP == 0 && len(s.Pods) == 0 })
}

func TestPortMappingHostIPAndBindFailure(t *testing.T) {
	r := newRig(t, nil)
	r.podTCPServer(t, 8080)
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	must(t, err)
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	free := int(closedPort(t, "tcp"))

	err = r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{
		{HostPort: free, ContainerPort: 8080, Protocol: "tcp", HostIP: "127.0.0.1"},
		{HostPort: busyPort, ContainerPort: 8080, Protocol: "tcp", HostIP: "127.0.0.1"},
	}})
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("AddPod with a busy port: %v, want EADDRINUSE", err)
	}
	// Nothing of the failed AddPod stays: its first port is free.
	ln, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", itoa(uint16(free))))
	if err != nil {
		t.Fatalf("first mapping's port still bound: %v", err)
	}
	ln.Close()
	if s := r.e.Stats(); len(s.Pods) != 0 {
		t.Errorf("pod registered after a failed AddPod: %+v", s.Pods)
	}

	// hostIP is kept: a mapping on 127.0.0.2 does not answer on 127.0.0.1.
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{
		{HostPort: free, ContainerPort: 8080, Protocol: "tcp", HostIP: "127.0.0.2"},
	}}))
	if _, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", itoa(uint16(free)))); err == nil {
		t.Error("mapping on 127.0.0.2 answered on 127.0.0.1")
	}
	c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.2", itoa(uint16(free))))
	must(t, err)
	roundTrip(t, c, "via hostIP")
	c.Close()

	// A pod refusing the mapped port resets the client.
	must(t, r.e.AddPod(Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{
		{HostPort: free, ContainerPort: 8081, Protocol: "tcp", HostIP: "127.0.0.1"},
	}}))
	// On loopback the reset can beat connect's completion check.
	c, err = net.Dial("tcp4", net.JoinHostPort("127.0.0.1", itoa(uint16(free))))
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(c)
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client of a refused pod port: %v, want ECONNRESET", err)
	}
}

func TestAddPodValidation(t *testing.T) {
	r := newRig(t, nil)
	tests := []struct {
		name string
		pod  Pod
	}{
		{"no ID", Pod{Addr: podAddr, Gateway: gwAddr}},
		{"no address", Pod{ID: "p", Gateway: gwAddr}},
		{"bad protocol", Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{{HostPort: 1, ContainerPort: 1, Protocol: "sctp"}}}},
		{"bad port", Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{{HostPort: 70000, ContainerPort: 1}}}},
		{"bad host IP", Pod{ID: "p", Addr: podAddr, Gateway: gwAddr, PortMappings: []PortMapping{{HostPort: 1, ContainerPort: 1, HostIP: "x"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := r.e.AddPod(tt.pod); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// Close leaves no goroutine of the engine and no socket: a relay in the
// middle of a transfer, a UDP flow, a port mapping and a DNS listener.
func TestCloseLeavesNothing(t *testing.T) {
	r := newRig(t, nil)
	r.podTCPServer(t, 8080)
	hp := r.addMappedPod(t, "tcp", 8080)
	port := kernelListener(t, echoServe)
	c, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
	must(t, err)
	defer c.Close()
	roundTrip(t, c, "relay up")
	mc, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", itoa(hp)))
	must(t, err)
	defer mc.Close()
	roundTrip(t, mc, "mapping up")
	uport := udpEchoServer(t)
	u, err := r.pod.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(server, uport))
	must(t, err)
	defer u.Close()
	u.Write([]byte("x"))
	r.waitStats("flows up", func(s Stats) bool { return s.ActiveTCP == 2 && s.ActiveUDP == 1 })

	must(t, r.e.Close())
	waitNoEngineGoroutines(t)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("pod's relayed connection after Close: %v, want ECONNRESET", err)
	}
	if _, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", itoa(hp))); err == nil {
		t.Error("port mapping still listening after Close")
	}
	// The interceptors are released: a new engine can take them.
	e2, err := New(Config{Stack: r.node, ResolvConf: r.resolv, Dialer: testDialer})
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	c2, err := r.dialPod(ctxT(t, 5*time.Second), server, port)
	if err != nil {
		t.Fatalf("relay through the second engine: %v", err)
	}
	roundTrip(t, c2, "again")
	c2.Close()
	must(t, e2.Close())
	waitNoEngineGoroutines(t)
	_ = tcp.Established
}

// A UDP mapping's flow registers its abort once, however many datagrams
// it carries (each used to add it again: a list that grew without bound).
func TestPortMapUDPFlowRegistersOnce(t *testing.T) {
	r := newRig(t, nil)
	r.podUDPServer(t, 9090)
	hp := r.addMappedPod(t, "udp", 9090)
	c, err := net.Dial("udp4", net.JoinHostPort("127.0.0.1", itoa(hp)))
	must(t, err)
	defer c.Close()
	b := make([]byte, 64)
	for i := range 10 {
		c.Write([]byte("dgram"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(b); err != nil || string(b[:n]) != "pod:dgram" {
			t.Fatalf("datagram %d: %q, %v", i, b[:n], err)
		}
	}
	var flows []*pmFlow
	for _, u := range r.e.pods["p"].udp {
		u.mu.Lock()
		for _, pf := range u.flows {
			flows = append(flows, pf)
		}
		u.mu.Unlock()
	}
	if len(flows) != 1 {
		t.Fatalf("%d mapping flows, want 1", len(flows))
	}
	f := flows[0].f
	f.mu.Lock()
	n := len(f.closers)
	f.mu.Unlock()
	if n != 1 {
		t.Fatalf("the flow registered %d aborters for 10 datagrams, want 1", n)
	}
}
