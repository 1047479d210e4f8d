package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/veth"
)

// pipeKernel gives the attacher in-memory links: each OpenLink makes a
// pipe whose far side the test drives with a netstack of its own (a pod,
// or the host at the uplink).
type pipeKernel struct {
	mu     sync.Mutex
	peers  map[string]*pipe.Endpoint
	macs   int
	routes map[netip.Prefix]netip.Addr // host routes: dst → gw
	calls  []string
}

func newPipeKernel() *pipeKernel {
	return &pipeKernel{peers: map[string]*pipe.Endpoint{}, routes: map[netip.Prefix]netip.Addr{}}
}

func (k *pipeKernel) OpenLink(name string) (link.Endpoint, header.MAC, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.peers[name]; ok {
		return nil, header.MAC{}, fmt.Errorf("%s already open", name)
	}
	a, b := pipe.New(1500)
	k.peers[name] = b
	k.macs++
	return a, header.MAC{0x02, 0xaa, 0, 0, 0, byte(k.macs)}, nil
}

func (k *pipeKernel) peer(name string) *pipe.Endpoint {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.peers[name]
}

func (k *pipeKernel) UplinkSetup(hostAddr netip.Prefix) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, "uplink "+hostAddr.String())
	return 42, nil
}

func (k *pipeKernel) UplinkSetup6(hostAddr netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, "uplink6 "+hostAddr.String())
	return nil
}

func (k *pipeKernel) HostRoute(dst netip.Prefix, gw netip.Addr, idx int, add bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if add {
		k.routes[dst] = gw
		k.calls = append(k.calls, fmt.Sprintf("route add %v via %v dev %d", dst, gw, idx))
	} else {
		delete(k.routes, dst)
		k.calls = append(k.calls, fmt.Sprintf("route del %v", dst))
	}
	return nil
}

// endStack is a netstack on the far side of a pipe: a pod or the host.
func endStack(t *testing.T, ep link.Endpoint, mac header.MAC, addr netip.Prefix, gw netip.Addr) *netstack.Stack {
	t.Helper()
	s := netstack.New()
	t.Cleanup(func() { s.Close() })
	nic, err := s.AddNIC(ep, netstack.NICConfig{MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddAddress(nic.ID(), addr); err != nil {
		t.Fatal(err)
	}
	if gw.IsValid() {
		if err := s.AddRoute(route.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: gw, NIC: nic.ID(), Type: route.Unicast}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// ping sends echo requests until one is answered (bounded: 3 s of wall
// time for ARP and the NICs' goroutines), or reports failure.
func ping(s *netstack.Stack, dst netip.Addr, tries int) error {
	var err error
	for i := 0; i < tries; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err = s.Ping(ctx, dst, uint16(i+1), []byte("cni-userstack"))
		cancel()
		if err == nil {
			return nil
		}
	}
	return err
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func podMAC(last byte) header.MAC { return header.MAC{0x02, 0xbb, 0, 0, 0, last} }

// TestStackAttacherWiring attaches two pods and the uplink over pipes and
// checks ARP for the gateway, pod-to-pod forwarding inside the stack,
// pod-to-host and host-to-pod through the uplink, the host route of the
// range, source-MAC and source-address anti-spoofing, and detach.
func TestStackAttacherWiring(t *testing.T) {
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
	t.Cleanup(func() { a.Close() })
	gw := netip.MustParseAddr("10.1.0.1")
	rng := netip.MustParsePrefix("10.1.0.0/24")

	attach := func(ctr string, last byte, mac header.MAC) (*api.Attachment, *netstack.Stack) {
		t.Helper()
		r := req(ctr, "n1", last)
		r.PodMAC = podMAC(last).String()
		at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
		if err := a.Attach(at); err != nil {
			t.Fatalf("attach %s: %v", ctr, err)
		}
		if at.NIC == 0 || at.StackMAC == "" {
			t.Fatalf("attach %s: %+v", ctr, at)
		}
		return at, endStack(t, k.peer(r.HostIfName), mac, r.IP, gw)
	}
	atA, podA := attach("a", 5, podMAC(5))
	atB, podB := attach("b", 6, podMAC(6))
	host := endStack(t, k.peer(UplinkStackIfName), header.MAC{0x02, 0xcc, 0, 0, 0, 1}, netip.MustParsePrefix("169.254.100.1/30"), netip.Addr{})
	if err := host.AddRoute(route.Route{Dst: rng, Gateway: netip.MustParseAddr("169.254.100.2"), NIC: 1, Type: route.Unicast}); err != nil {
		t.Fatal(err)
	}
	if got := k.routes[rng]; got != netip.MustParseAddr("169.254.100.2") {
		t.Fatalf("host route for %v: %v (calls %v)", rng, got, k.calls)
	}

	for _, c := range []struct {
		name string
		from *netstack.Stack
		to   string
	}{
		{"pod A → gateway", podA, "10.1.0.1"},
		{"pod A → pod B", podA, "10.1.0.6"},
		{"pod B → pod A", podB, "10.1.0.5"},
		{"pod A → host", podA, "169.254.100.1"},
		{"host → pod B", host, "10.1.0.6"},
	} {
		if err := ping(c.from, netip.MustParseAddr(c.to), 10); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}

	// A pod whose frames carry a MAC other than the one attached.
	_, podC := attach("c", 7, header.MAC{0x02, 0xde, 0xad, 0, 0, 7})
	if err := ping(podC, netip.MustParseAddr("10.1.0.5"), 2); err == nil {
		t.Fatalf("pod with a spoofed source MAC reached pod A")
	}
	st := &api.Status{}
	a.Status(st)
	if st.Stack.Counters["PodSrcMACDrops"] == 0 || st.Stack.Drops[DropPodSrcMAC.String()] == 0 {
		t.Fatalf("MAC spoofing not counted: %v / %v", st.Stack.Counters["PodSrcMACDrops"], st.Stack.Drops)
	}
	if st.Uplink == nil || st.Uplink.HostIfName != "up" || len(st.Uplink.Routes) != 1 || len(st.Stack.NICs) != 4 {
		t.Fatalf("status: %+v", st)
	}

	// Detach keeps the range's host route while a pod is left in it.
	if err := a.Detach(atA); err != nil {
		t.Fatal(err)
	}
	if err := a.Detach(atA); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if _, ok := k.routes[rng]; !ok {
		t.Fatalf("host route removed while pods remain")
	}
	if err := ping(podB, netip.MustParseAddr("10.1.0.5"), 2); err == nil {
		t.Fatalf("detached pod A still reachable")
	}
	for _, id := range []string{atB.ID, veth.HostIfName("c", "eth0")} {
		if err := a.Detach(&api.Attachment{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := k.routes[rng]; ok {
		t.Fatalf("host route left after the last pod: %v", k.calls)
	}
	if n := strings.Count(strings.Join(k.calls, "\n"), "uplink "); n != 1 {
		t.Fatalf("uplink set up %d times: %v", n, k.calls)
	}
}

func TestStackAttacherRefuses(t *testing.T) {
	k := newPipeKernel()
	a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
	t.Cleanup(func() { a.Close() })
	r := req("x", "n1", 5)
	r.Range = netip.MustParsePrefix("169.254.100.0/29")
	r.IP = netip.MustParsePrefix("169.254.100.5/29")
	r.Gateway = netip.MustParseAddr("169.254.100.6")
	if err := a.Attach(&api.Attachment{AttachRequest: r, ID: r.HostIfName}); err == nil || !strings.Contains(err.Error(), "overlaps the uplink") {
		t.Fatalf("overlapping range: %v", err)
	}
	r = req("y", "n1", 5)
	r.PodMAC = "ff:ff:ff:ff:ff:ff"
	if err := a.Attach(&api.Attachment{AttachRequest: r, ID: r.HostIfName}); err == nil {
		t.Fatalf("broadcast pod MAC accepted")
	}
	r = req("z", "n1", 5)
	at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
	if err := a.Attach(at); err != nil {
		t.Fatal(err)
	}
	if err := a.Attach(at); err == nil {
		t.Fatalf("second attach of one ID accepted")
	}
}
