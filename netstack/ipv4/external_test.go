package ipv4_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/ipv4"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// These tests use only the exported API and the stacktest builders
// (10.0.0.1 → 10.0.0.2): the layer is host 10.0.0.2 on NIC 1.

type rx struct {
	l     *ipv4.Layer
	clk   *clock.Manual
	drops buf.DropStats
	udp   [][]byte
}

func newRx(t testing.TB) *rx {
	r := &rx{clk: clock.NewManual()}
	fib := route.NewTable()
	if err := fib.Add(route.Route{Dst: netip.MustParsePrefix("10.0.0.0/24"), NIC: 1}); err != nil {
		t.Fatal(err)
	}
	fib.AddLocal(stacktest.DefaultDstIP, 1)
	r.l = ipv4.New(ipv4.Config{Clock: r.clk, FIB: fib})
	r.l.AddProtocol(header.ProtoUDP, ipv4.Protocol{
		Rcv: func(skb *buf.SKB) {
			if len(r.udp) < 16 {
				r.udp = append(r.udp, append([]byte(nil), skb.Bytes()...))
			}
			skb.Consume()
		},
		Err: func(*buf.SKB, header.ICMPError) {},
	})
	return r
}

func (r *rx) rcv(b []byte, csumOK bool) {
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.InNIC = 1
	skb.Drops = &r.drops
	if csumOK {
		skb.Csum = buf.CsumUnnecessary
	}
	r.l.Rcv(nil, skb)
}

func udp() *stacktest.Builder { return stacktest.UDPv4() }

func mangle(b []byte, f func([]byte)) []byte { f(b); return b }

// RFC 1122 §3.2.1: each malformed datagram is dropped and counted by its
// MIB name and drop reason; good ones are delivered.
func TestRcvValidation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		b        []byte
		csumOK   bool // the link vouched for the checksum (CsumUnnecessary)
		counters []string
		reason   buf.DropReason
	}{
		{"shorter than 20 bytes", udp().Bytes()[:12], false, []string{"IpInHdrErrors"}, ipv4.DropHdrError},
		{"RFC 1122 §3.2.1.1: version 6", mangle(udp().Bytes(), func(b []byte) { b[0] = 0x65 }), true,
			[]string{"IpInHdrErrors"}, ipv4.DropHdrError},
		{"IHL 4", mangle(udp().Bytes(), func(b []byte) { b[0] = 0x44 }), true, []string{"IpInHdrErrors"}, ipv4.DropHdrError},
		{"total length beyond the buffer", udp().TotalLen(300).Bytes(), false,
			[]string{"IpExtInTruncatedPkts"}, ipv4.DropTooSmall},
		{"total length below IHL", udp().TotalLen(12).Bytes(), false, []string{"IpInHdrErrors"}, ipv4.DropHdrError},
		{"RFC 1122 §3.2.1.2: bad header checksum", udp().BadIPChecksum().Bytes(), false,
			[]string{"IpExtInCsumErrors", "IpInHdrErrors"}, ipv4.DropCsum},
		{"bad header checksum although the link vouched for the L4 checksum", udp().BadIPChecksum().Bytes(), true,
			[]string{"IpExtInCsumErrors", "IpInHdrErrors"}, ipv4.DropCsum},
		{"bad checksum and truncated: the checksum is checked first", udp().TotalLen(300).BadIPChecksum().Bytes(), false,
			[]string{"IpExtInCsumErrors", "IpInHdrErrors"}, ipv4.DropCsum},
		{"RFC 1122 §3.2.1.8: option length past the header", udp().IPOptions([]byte{7, 9, 4, 0}).Bytes(), false,
			[]string{"IpInHdrErrors"}, ipv4.DropHdrError},
		{"RFC 7126 §4.3: loose source route", udp().IPOptions([]byte{131, 7, 4, 10, 0, 0, 9}).Bytes(), false,
			[]string{"IpInDiscards"}, ipv4.DropSourceRoute},
		{"RFC 7126 §4.4: strict source route", udp().IPOptions([]byte{1, 137, 7, 4, 10, 0, 0, 9}).Bytes(), false,
			[]string{"IpInDiscards"}, ipv4.DropSourceRoute},
		{"RFC 1812 §5.3.7: loopback source", stacktest.IPv4("127.0.0.1", "10.0.0.2").UDP(1, 2).Bytes(), false,
			[]string{"IpInAddrErrors"}, ipv4.DropInvalidSource},
		{"RFC 1812 §5.3.7: our own address as source", stacktest.IPv4("10.0.0.2", "10.0.0.2").UDP(1, 2).Bytes(), false,
			[]string{"IpInAddrErrors"}, ipv4.DropInvalidSource},
		{"RFC 1812 §5.3.7: 0/8 destination", stacktest.IPv4("10.0.0.1", "0.0.0.7").UDP(1, 2).Bytes(), false,
			[]string{"IpInAddrErrors"}, ipv4.DropInvalidDest},
		{"multicast destination (no groups joined)", stacktest.IPv4("10.0.0.1", "224.0.0.251").UDP(1, 2).Bytes(), false,
			[]string{"IpInAddrErrors"}, ipv4.DropMulticast},
		{"not for us, forwarding off", stacktest.IPv4("10.0.0.1", "10.0.0.3").UDP(1, 2).Bytes(), false,
			[]string{"IpInAddrErrors"}, ipv4.DropInAddrErrors},
		{"RFC 3704 §2.2: source not routed back through NIC 1", stacktest.IPv4("8.8.8.8", "10.0.0.2").UDP(1, 2).Bytes(), false,
			[]string{"TcpExtIPReversePathFilter"}, ipv4.DropRPFilter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRx(t)
			r.rcv(tc.b, tc.csumOK)
			c := r.l.Counters()
			for _, name := range tc.counters {
				if c[name] != 1 {
					t.Errorf("%s = %d, want 1 (%v)", name, c[name], c)
				}
			}
			if r.drops.Get(tc.reason) != 1 || r.drops.Total() != 1 {
				t.Errorf("drops %v, want one %v", r.drops.Snapshot(), tc.reason)
			}
			if c["IpInReceives"] != 1 || c["IpInDelivers"] != 0 || len(r.udp) != 0 {
				t.Errorf("InReceives %d InDelivers %d delivered %d", c["IpInReceives"], c["IpInDelivers"], len(r.udp))
			}
		})
	}
}

func TestRcvDelivers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		b      *stacktest.Builder
		csumOK bool
	}{
		{"plain", udp(), false},
		{"link padding trimmed", udp().Trailer(make([]byte, 12)), false},
		{"with options", udp().IPOptions([]byte{1, 1, 1, 1}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRx(t)
			r.rcv(tc.b.Bytes(), tc.csumOK)
			want := udp().Bytes()[header.IPv4MinSize:] // the UDP header and payload
			if len(r.udp) != 1 || !bytes.Equal(r.udp[0], want) {
				t.Fatalf("delivered %x, want %x (drops %v)", r.udp, want, r.drops.Snapshot())
			}
			if s := r.l.Stats(); s.InDelivers != 1 || s.InReceives != 1 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// FuzzIPv4Rcv feeds arbitrary bytes to Rcv: nothing may panic, whatever
// the bytes claim.
func FuzzIPv4Rcv(f *testing.F) {
	quoted := udp().Bytes()[:28]
	for _, b := range []*stacktest.Builder{
		udp(),
		stacktest.TCPv4SYN(),
		stacktest.ICMPEcho(1, 2),
		stacktest.IPv4("10.0.0.1", "10.0.0.2").ICMP(header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded,
			header.FragNeededRest(1280)).Payload(quoted),
		stacktest.IPv4("10.0.0.1", "10.0.0.2").ICMP(header.ICMPv4TimeExceeded, 0, 0).Payload(quoted),
		stacktest.IPv4("10.0.0.1", "10.0.0.2").Proto(99).Payload([]byte("unknown")),
		stacktest.IPv4("10.0.0.1", "10.0.0.2").Fragment(7, 0, true).Proto(header.ProtoUDP).Payload(make([]byte, 32)),
		stacktest.IPv4("10.0.0.1", "10.0.0.2").Fragment(7, 32, false).Proto(header.ProtoUDP).Payload(make([]byte, 16)),
		stacktest.IPv4("10.0.0.1", "10.0.0.9").TTL(1).UDP(1, 2),
		udp().IPOptions([]byte{148, 4, 0, 0}),
		udp().BadIPChecksum(),
	} {
		f.Add(b.Bytes())
	}
	f.Add([]byte{0x45})
	r := newRx(f)
	r.l.SetForwarding(true)
	f.Fuzz(func(t *testing.T, b []byte) {
		r.rcv(b, false)
		r.rcv(b, true)
		r.clk.Advance(0)
		r.udp = r.udp[:0]
	})
}
