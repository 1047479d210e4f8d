package netfilter_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// BenchmarkForwardHooks is the netfilter cost of one forwarded packet of
// an established TCP flow: PREROUTING, FORWARD and POSTROUTING as ipv4
// runs them, per packet (the copy restoring the template is included).
// "-reply" runs the flow's reply direction instead (where reply-to reads
// the Conn's reply NIC).
func BenchmarkForwardHooks(b *testing.B) {
	var many strings.Builder
	many.WriteString("*filter\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&many, "-A FORWARD -s 172.16.%d.%d -p tcp --dport %d -j DROP\n", i/250, i%250+1, 1000+i)
	}
	for _, bc := range []struct {
		name  string
		nf    bool
		rules string
	}{
		{"no-netfilter", false, ""},
		{"conntrack-no-rules", true, ""},
		{"conntrack-no-rules-reply", true, ""},
		{"conntrack+masquerade", true, "*nat\n-A POSTROUTING -o up0 -j MASQUERADE\n*filter\n-A FORWARD --ctstate ESTABLISHED -j ACCEPT\n"},
		{"conntrack+1000-rules", true, many.String()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := newRig(b, bc.rules, conntrack.Config{})
			hooks := r.hooks
			if !bc.nf {
				hooks = &netfilter.Hooks{}
			}
			// Establish the flow.
			syn := stacktest.Frame().IPv4Addr(client, server).TCP(40000, 80).Flags(header.SYN).Seq(100).Window(65535).Bytes()
			r.outb(syn)
			r.backb(stacktest.Frame().IPv4Addr(server, pub).TCP(80, 40000).Flags(header.SYN | header.ACK).Seq(500).Ack(101).Window(65535).Bytes())
			r.backb(stacktest.Frame().IPv4Addr(server, client).TCP(80, 40000).Flags(header.SYN | header.ACK).Seq(500).Ack(101).Window(65535).Bytes())
			tmpl := stacktest.Frame().IPv4Addr(client, server).TCP(40000, 80).Flags(header.ACK).Seq(101).Ack(501).Window(65535).Payload(make([]byte, 64)).Bytes()
			r.outb(tmpl)
			in, out := r.in.ID(), r.out.ID()
			if strings.HasSuffix(bc.name, "-reply") {
				tmpl = stacktest.Frame().IPv4Addr(server, client).TCP(80, 40000).Flags(header.ACK).Seq(501).Ack(165).Window(65535).Payload(make([]byte, 64)).Bytes()
				in, out = out, in
			}
			skb := buf.FromBytes(buf.MaxHeadroom, tmpl)
			defer skb.Consume()
			skb.SetNetworkHeader()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(skb.Bytes(), tmpl)
				if !hooks.Run(netfilter.PreRouting, skb, in, 0).Accepted() ||
					!hooks.Run(netfilter.Forward, skb, in, out).Accepted() ||
					!hooks.Run(netfilter.PostRouting, skb, in, out).Accepted() {
					b.Fatal("dropped")
				}
			}
			b.StopTimer()
			if bc.nf && r.nf.Conntrack().Len() != 1 {
				b.Fatalf("flows %d", r.nf.Conntrack().Len())
			}
			if bc.name == "conntrack+masquerade" && header.IPv4(skb.Bytes()).Src() != pub {
				b.Fatal("not masqueraded")
			}
		})
	}
}
