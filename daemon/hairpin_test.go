package daemon

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// TestStackAttacherServiceBackendOnSameNode is the Kubernetes case of
// docs/kubernetes.md ("How traffic flows") over pipes: pod A talks to a
// "Service" address that the host DNATs, as kube-proxy does, to pod B of
// the same stack. In route mode, and in proxy mode with the Service range
// in routedRanges, A's answers come from the Service address (the stack
// sends B's replies back to the host, whose conntrack undoes the DNAT),
// and B sees A's own address.
func TestStackAttacherServiceBackendOnSameNode(t *testing.T) {
	svc := netip.MustParseAddr("10.96.0.10")
	for _, mode := range []api.Mode{api.ModeRoute, api.ModeProxy} {
		t.Run(string(mode), func(t *testing.T) {
			k := newPipeKernel()
			a := newStackAttacher(StackConfig{StackNetNS: "test", UplinkSubnet: DefaultUplinkSubnet, UplinkHostIfName: "up", Logger: discardLogger()}, k)
			t.Cleanup(func() { a.Close() })
			gw := netip.MustParseAddr("10.1.0.1")
			attach := func(ctr string, last byte) (*api.Attachment, *netstack.Stack) {
				t.Helper()
				r := req(ctr, "n1", last)
				r.PodMAC, r.Mode = podMAC(last).String(), mode
				if mode == api.ModeProxy {
					r.RoutedRanges = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
				}
				at := &api.Attachment{AttachRequest: r, ID: r.HostIfName}
				if err := a.Attach(at); err != nil {
					t.Fatalf("attach %s: %v", ctr, err)
				}
				return at, endStack(t, k.peer(r.HostIfName), podMAC(last), r.IP, gw)
			}
			atA, podA := attach("a", 5)
			atB, podB := attach("b", 6)
			host := endStack(t, k.peer(UplinkStackIfName), header.MAC{0x02, 0xcc, 0, 0, 0, 1}, netip.MustParsePrefix("169.254.100.1/30"), netip.Addr{})
			if err := host.AddRoute(route.Route{Dst: atA.Range, Gateway: netip.MustParseAddr("169.254.100.2"), NIC: 1, Type: route.Unicast}); err != nil {
				t.Fatal(err)
			}
			host.SetForwarding(true)
			if err := host.EnableNetfilter(netfilter.Config{Logger: discardLogger()}).LoadText(`*nat
-A PREROUTING -d 10.96.0.10 -p udp --dport 53 -j DNAT --to-destination 10.1.0.6:5353
-A PREROUTING -d 10.96.0.10 -p tcp --dport 80 -j DNAT --to-destination 10.1.0.6:8080
`); err != nil {
				t.Fatal(err)
			}
			if got := a.nf.ReplyToNICs(); len(got) != 1 || got[0] != a.uplink.NIC {
				t.Fatalf("reply-to NICs %v, want the uplink %d", got, a.uplink.NIC)
			}
			pa, pb := atA.IP.Addr(), atB.IP.Addr()

			// UDP: B answers; A's unconnected socket reports the sender.
			srv, err := podB.ListenUDP(netip.AddrPortFrom(pb, 5353))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			seen := make(chan netip.AddrPort, 1)
			go func() {
				b := make([]byte, 64)
				n, from, err := srv.ReadFromUDPAddrPort(b)
				if err != nil {
					return
				}
				seen <- from
				srv.WriteToUDPAddrPort(append([]byte("echo:"), b[:n]...), from)
			}()
			cli, err := podA.ListenUDP(netip.AddrPortFrom(pa, 40000))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cli.Close() })
			b := make([]byte, 64)
			var n int
			var from netip.AddrPort
			for i := 0; i < 10; i++ { // the first datagrams may wait for ARP
				cli.WriteToUDPAddrPort([]byte("hi"), netip.AddrPortFrom(svc, 53))
				cli.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if n, from, err = cli.ReadFromUDPAddrPort(b); err == nil {
					break
				}
			}
			if err != nil || string(b[:n]) != "echo:hi" || from != netip.AddrPortFrom(svc, 53) {
				t.Fatalf("pod A → %v:53 → pod B: got %q from %v (%v), want the echo from the Service", svc, b[:n], from, err)
			}
			if got := <-seen; got.Addr() != pa {
				t.Fatalf("pod B saw the request from %v, want pod A's %v", got, pa)
			}
			// `conntrack -L` shows the flow the host sent in, replied to
			// through the uplink.
			var hairpin []api.ConntrackEntry
			for _, e := range a.Conntrack(true).Entries {
				if e.Original.Src == pa && e.Original.Dst == pb {
					hairpin = append(hairpin, e)
				}
			}
			if len(hairpin) != 1 || hairpin[0].ReplyTo != UplinkStackIfName {
				t.Fatalf("conntrack entries A → B: %+v, want one with reply-to %s", hairpin, UplinkStackIfName)
			}

			// TCP: a connection to the Service echoes.
			ln, err := podB.ListenTCP(netip.AddrPortFrom(pb, 8080))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.Copy(c, c)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := podA.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(svc, 80))
			if err != nil {
				t.Fatalf("pod A → %v:80: %v", svc, err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("over tcp")); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 8)
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "over tcp" {
				t.Fatalf("TCP echo through %v: %q %v", svc, got, err)
			}
			if ra := c.RemoteAddr().(*net.TCPAddr).AddrPort(); ra != netip.AddrPortFrom(svc, 80) {
				t.Fatalf("A's peer %v", ra)
			}
			if d := counter(a, "ProxyDiverted"); d != 0 {
				t.Fatalf("%d flows diverted: the Service range is routed", d)
			}

			// Only the uplink takes a pod's source from another link: pod
			// B sending as pod A (to the Service, or to the host) is
			// dropped by its link's strict rp_filter.
			stackMAC, err := header.ParseMAC(atB.StackMAC)
			if err != nil {
				t.Fatal(err)
			}
			before := a.s.Stats().IP.RPFilterDrops
			udp := make([]byte, header.UDPSize+4)
			header.UDP(udp).Encode(header.UDPFields{SrcPort: 40000, DstPort: 53, Length: uint16(len(udp))})
			for _, to := range []netip.Addr{svc, netip.MustParseAddr("169.254.100.1")} {
				skb := rawFrame(podMAC(6), stackMAC, pa, to, header.ProtoUDP, udp)
				if _, err := k.peer(atB.HostIfName).WriteBatch([]*buf.SKB{skb}); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(3 * time.Second)
			for a.s.Stats().IP.RPFilterDrops < before+2 {
				if time.Now().After(deadline) {
					t.Fatalf("pod B's packets with pod A's source: %d rp_filter drops, want 2", a.s.Stats().IP.RPFilterDrops-before)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}
