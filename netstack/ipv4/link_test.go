package ipv4

import (
	"bytes"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// These tests run the layer over real dev + neigh NICs on a link/pipe.

type host struct {
	clk   *clock.Manual
	devs  *dev.Devices
	neigh *neigh.Table
	l     *Layer
	nic   *dev.NIC
}

// newHost puts a layer with address addr (a /24) on ep.
func newHost(t testing.TB, clk *clock.Manual, ep link.Endpoint, name string, mac header.MAC, addr string) *host {
	t.Helper()
	h := &host{clk: clk, devs: dev.NewDevices(clk)}
	h.neigh = neigh.New(clk, h.devs, neigh.Config{})
	fib := route.NewTable()
	h.l = New(Config{Clock: clk, Devices: h.devs, Neigh: h.neigh, FIB: fib})
	h.devs.AddPacketType(header.EtherTypeARP, h.neigh.Rcv)
	h.devs.AddPacketType(header.EtherTypeIPv4, h.l.Rcv)
	nic, err := h.devs.Add(ep, dev.Config{Name: name, MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	h.nic = nic
	p := netip.PrefixFrom(ip(addr), 24)
	if err := fib.Add(route.Route{Dst: p.Masked(), NIC: nic.ID()}); err != nil {
		t.Fatal(err)
	}
	fib.AddLocal(ip(addr), nic.ID())
	if err := nic.AddAddress(p); err != nil { // ARP answers for NIC addresses
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.devs.Remove(nic.ID()) })
	return h
}

var (
	macA = header.MAC{2, 0, 0, 0, 0, 0xa}
	macB = header.MAC{2, 0, 0, 0, 0, 0xb}
)

// Ping across a pipe: ARP resolves, the echo request is answered, the
// reply reaches the sender's ICMP handler.
func TestPingOverPipe(t *testing.T) {
	clk := clock.NewManual()
	ea, eb := pipe.New(1500)
	a := newHost(t, clk, ea, "a0", macA, "10.1.0.1")
	b := newHost(t, clk, eb, "b0", macB, "10.1.0.5")
	a.nic.Up()
	b.nic.Up()
	replies := make(chan []byte, 1)
	a.l.AddProtocol(header.ProtoICMP, Protocol{Rcv: func(skb *buf.SKB) {
		replies <- append([]byte(nil), skb.Bytes()...)
		skb.Consume()
	}})
	echo := icmpMsg(header.ICMPv4Echo, 0, header.EchoRest(9, 1), []byte("over the pipe"))
	if err := a.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, echo), route.Flow{Dst: ip("10.1.0.5"), Proto: header.ProtoICMP}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-replies:
		m := header.ICMPv4(r)
		if m.Type() != header.ICMPv4EchoReply || m.ID() != 9 || !bytes.Equal(m.Payload(), []byte("over the pipe")) {
			t.Fatalf("reply %x", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no echo reply (a %v, b %v)", a.l.Counters(), b.l.Counters())
	}
	if e, ok := a.neigh.Lookup(a.nic.ID(), ip("10.1.0.5")); !ok || e.MAC != macB {
		t.Fatalf("neighbour %+v %v", e, ok)
	}
}

// Resolution that never completes: the local sender's Err sees
// EHOSTUNREACH once neigh gives up (on the manual clock).
func TestNeighFailureOverPipe(t *testing.T) {
	clk := clock.NewManual()
	ea, eb := pipe.New(1500)
	a := newHost(t, clk, ea, "a0", macA, "10.1.0.1")
	a.nic.Up()
	go drain(eb) // nobody answers ARP
	errs := make(chan syscall.Errno, 4)
	a.l.AddProtocol(header.ProtoUDP, Protocol{
		Rcv: func(skb *buf.SKB) { skb.Consume() },
		Err: func(skb *buf.SKB, e header.ICMPError) { errs <- e.Errno },
	})
	if err := a.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, udpish(20)), flowTo("10.1.0.99")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(10 * time.Second) // 3 probes at 1 s, then Failed
	select {
	case e := <-errs:
		if e != syscall.EHOSTUNREACH {
			t.Fatalf("errno %v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no error reported: neigh %+v, ip %v", a.neigh.Stats(), a.l.Counters())
	}
}

func drain(ep *pipe.Endpoint) {
	pkts := make([]*buf.SKB, 64)
	for {
		n, err := ep.ReadBatch(pkts)
		if err != nil {
			return
		}
		for _, s := range pkts[:n] {
			s.Consume()
		}
	}
}
