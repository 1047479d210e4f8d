package netstack_test

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/socket"
)

func newStack(t *testing.T) (*netstack.Stack, *clock.Manual) {
	t.Helper()
	clk := clock.NewManual()
	s := netstack.New(netstack.WithClock(clk))
	t.Cleanup(func() { s.Close() })
	return s, clk
}

func addNIC(t *testing.T, s *netstack.Stack, cfg netstack.NICConfig) int {
	t.Helper()
	ep, _ := pipe.New(1500)
	nic, err := s.AddNIC(ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return nic.ID()
}

func hasRoute(s *netstack.Stack, dst string, nic int) bool {
	for _, r := range s.FIB().Routes() {
		if r.Dst.String() == dst && r.NIC == nic {
			return true
		}
	}
	return false
}

func TestAddNIC(t *testing.T) {
	s, _ := newStack(t)
	ep, _ := pipe.New(1500)
	nic, err := s.AddNIC(ep, netstack.NICConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if !nic.IsUp() || nic.Name() != "eth0" || nic.MTU() != 1500 {
		t.Fatalf("nic %s up %v mtu %d", nic.Name(), nic.IsUp(), nic.MTU())
	}
	if m := nic.MAC(); m.IsMulticast() || m[0]&0x02 == 0 {
		t.Fatalf("random MAC %v is not local unicast", m)
	}
	ep2, _ := pipe.New(1500)
	nic2, err := s.AddNIC(ep2, netstack.NICConfig{Name: "eth0"})
	if err == nil {
		t.Fatalf("duplicate name accepted: %s", nic2.Name())
	}
	if err := s.RemoveNIC(99); !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("remove unknown: %v", err)
	}
}

// inet_insert_ifa + fib_add_ifaddr: an address is a local entry and a
// connected route; the route stays while another address uses it.
func TestAddresses(t *testing.T) {
	s, _ := newStack(t)
	id := addNIC(t, s, netstack.NICConfig{Name: "n"})
	p1 := netip.MustParsePrefix("10.1.0.1/24")
	p2 := netip.MustParsePrefix("10.1.0.2/24")
	for _, p := range []netip.Prefix{p1, p2} {
		if err := s.AddAddress(id, p); err != nil {
			t.Fatal(err)
		}
	}
	if !s.FIB().IsLocal(p1.Addr()) || !s.FIB().IsLocal(p2.Addr()) || !hasRoute(s, "10.1.0.0/24", id) {
		t.Fatalf("routes %v", s.FIB().Routes())
	}
	res, err := s.FIB().Output(route.Flow{Dst: netip.MustParseAddr("10.1.0.9")})
	if err != nil || res.NIC != id || res.Src != p1.Addr() {
		t.Fatalf("output route %+v %v", res, err)
	}
	if err := s.AddAddress(id, p1); err == nil {
		t.Fatal("duplicate address accepted")
	}
	if err := s.RemoveAddress(id, p1); err != nil {
		t.Fatal(err)
	}
	if s.FIB().IsLocal(p1.Addr()) || !hasRoute(s, "10.1.0.0/24", id) {
		t.Fatalf("after removing one: local %v routes %v", s.FIB().IsLocal(p1.Addr()), s.FIB().Routes())
	}
	if err := s.RemoveAddress(id, p2); err != nil {
		t.Fatal(err)
	}
	if hasRoute(s, "10.1.0.0/24", id) {
		t.Fatal("connected route outlived its addresses")
	}
	if err := s.AddAddress(77, p1); !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("unknown NIC: %v", err)
	}
	for _, p := range []string{"::ffff:10.0.0.1/128", "ff02::1/128", "::/0"} {
		if err := s.AddAddress(id, netip.MustParsePrefix(p)); !errors.Is(err, syscall.EAFNOSUPPORT) {
			t.Fatalf("%s: %v", p, err)
		}
	}
}

func TestRemoveNICFlushesRoutes(t *testing.T) {
	s, _ := newStack(t)
	id := addNIC(t, s, netstack.NICConfig{})
	if err := s.AddAddress(id, netip.MustParsePrefix("10.2.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRoute(route.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.2.0.254"), NIC: id}); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveNIC(id); err != nil {
		t.Fatal(err)
	}
	if len(s.FIB().Routes()) != 0 || s.FIB().IsLocal(netip.MustParseAddr("10.2.0.1")) {
		t.Fatalf("routes left: %v", s.FIB().Routes())
	}
	if s.Devices().ByID(id) != nil {
		t.Fatal("NIC still listed")
	}
}

func TestProxyARPRouted(t *testing.T) {
	s, _ := newStack(t)
	a := addNIC(t, s, netstack.NICConfig{})
	b := addNIC(t, s, netstack.NICConfig{})
	s.AddAddress(a, netip.MustParsePrefix("10.3.0.1/24"))
	s.AddAddress(b, netip.MustParsePrefix("10.4.0.1/24"))
	answer := s.ProxyARPRouted(a)
	if !answer(netip.MustParseAddr("10.4.0.9")) {
		t.Fatal("target behind another NIC must be answered")
	}
	if answer(netip.MustParseAddr("10.3.0.9")) {
		t.Fatal("target on the asking link must not be answered")
	}
	if answer(netip.MustParseAddr("192.0.2.1")) {
		t.Fatal("unrouted target must not be answered")
	}
}

// A stack pings its own address over the loopback backlog, which the
// clock drains.
func TestPingSelf(t *testing.T) {
	s, clk := newStack(t)
	id := addNIC(t, s, netstack.NICConfig{})
	self := netip.MustParseAddr("10.5.0.1")
	if err := s.AddAddress(id, netip.PrefixFrom(self, 24)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.Ping(ctx, self, 1, []byte("me"))
		done <- err
	}()
	for {
		clk.Advance(0)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if st := s.Stats().IP.ICMP; st.InEchos != 1 || st.InEchoReps != 1 {
				t.Fatalf("icmp %+v", st)
			}
			return
		case <-time.After(time.Millisecond):
		}
	}
}

func TestPingNoRoute(t *testing.T) {
	s, _ := newStack(t)
	if _, err := s.Ping(context.Background(), netip.MustParseAddr("192.0.2.1"), 1, nil); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("err %v", err)
	}
}

func TestUDPOverLoopback(t *testing.T) {
	s, clk := newStack(t)
	id := addNIC(t, s, netstack.NICConfig{})
	self := netip.MustParseAddr("10.6.0.1")
	s.AddAddress(id, netip.PrefixFrom(self, 24))
	srv, err := s.ListenUDP(netip.AddrPortFrom(self, 53))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := s.DialUDP(netip.AddrPort{}, netip.AddrPortFrom(self, 53))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(0)                 // the loopback backlog
	srv.SetReadDeadline(clk.Now()) // do not block: it is there or not
	n, _, err := srv.ReadFrom(make([]byte, 10))
	if err != nil || n != 1 {
		t.Fatalf("read %d %v", n, err)
	}
	// TCP registers itself in New (inet_register_protosw); raw sockets do not exist.
	tcpSock, err := s.Sockets().Create(socket.AFInet, socket.SockStream, 0)
	if err != nil {
		t.Fatalf("SOCK_STREAM: %v", err)
	}
	tcpSock.Close()
	if _, err := s.Sockets().Create(socket.AFInet, socket.SockRaw, 0); !errors.Is(err, syscall.ESOCKTNOSUPPORT) {
		t.Fatalf("SOCK_RAW: %v", err)
	}
}

func TestCloseIdempotent(t *testing.T) {
	s := netstack.New() // real clock, owned
	ep, _ := pipe.New(1500)
	if _, err := s.AddNIC(ep, netstack.NICConfig{MAC: header.MAC{2, 0, 0, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ep2, _ := pipe.New(1500)
	if _, err := s.AddNIC(ep2, netstack.NICConfig{}); !errors.Is(err, netstack.ErrClosed) {
		t.Fatalf("AddNIC after Close: %v", err)
	}
	if _, err := s.Ping(context.Background(), netip.MustParseAddr("10.0.0.1"), 1, nil); !errors.Is(err, netstack.ErrClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
}

// closeRecorder is a link endpoint whose Close is recorded.
type closeRecorder struct {
	link.Endpoint
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return c.Endpoint.Close() }

// TestDetachNICReleasesLater: DetachNIC takes the NIC out of the stack at
// once (no lookup finds it, its routes are gone) and leaves its endpoint
// open until release, while the stack goes on working: another NIC is
// added in between.
func TestDetachNICReleasesLater(t *testing.T) {
	s, _ := newStack(t)
	p, _ := pipe.New(1500)
	ep := &closeRecorder{Endpoint: p}
	nic, err := s.AddNIC(ep, netstack.NICConfig{})
	if err != nil {
		t.Fatal(err)
	}
	id := nic.ID()
	if err := s.AddAddress(id, netip.MustParsePrefix("10.2.0.1/24")); err != nil {
		t.Fatal(err)
	}
	release, err := s.DetachNIC(id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Devices().ByID(id) != nil || len(s.FIB().Routes()) != 0 || s.FIB().IsLocal(netip.MustParseAddr("10.2.0.1")) {
		t.Fatalf("detached NIC still in the stack: routes %v", s.FIB().Routes())
	}
	if ep.closed.Load() {
		t.Fatal("endpoint closed before release")
	}
	other := addNIC(t, s, netstack.NICConfig{})
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if !ep.closed.Load() {
		t.Fatal("release did not close the endpoint")
	}
	if _, err := s.DetachNIC(id); !errors.Is(err, netstack.ErrNoNIC) {
		t.Fatalf("second detach: %v", err)
	}
	if err := s.RemoveNIC(other); err != nil {
		t.Fatal(err)
	}
}
