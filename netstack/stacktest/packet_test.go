package stacktest

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

var (
	macA = header.MAC{2, 0, 0, 0, 0, 0xa}
	macB = header.MAC{2, 0, 0, 0, 0, 0xb}
)

// parsed is what a builder's output decodes to.
type parsed struct {
	ip      header.IPv4
	l4OK    bool // the transport checksum verifies
	ipOK    bool // the IPv4 checksum verifies
	l4      []byte
	payload []byte
}

func parseIPv4(t *testing.T, b []byte) parsed {
	t.Helper()
	ip, err := header.CheckIPv4(b)
	if err != nil {
		t.Fatalf("CheckIPv4: %v", err)
	}
	p := parsed{ip: ip, ipOK: ip.ChecksumValid(), l4: ip.Payload()}
	switch ip.Protocol() {
	case header.ProtoUDP:
		u, err := header.CheckUDP(ip.Payload())
		if err != nil {
			t.Fatalf("CheckUDP: %v", err)
		}
		p.l4OK, p.payload = u.Checksum() != 0 && u.ChecksumValid(ip.Src(), ip.Dst()), u.Payload()
	case header.ProtoTCP:
		tc, err := header.CheckTCP(ip.Payload())
		if err != nil {
			t.Fatalf("CheckTCP: %v", err)
		}
		p.l4OK, p.payload = tc.ChecksumValid(ip.Src(), ip.Dst()), tc.Payload()
	case header.ProtoICMP:
		ic, err := header.CheckICMPv4(ip.Payload())
		if err != nil {
			t.Fatalf("CheckICMPv4: %v", err)
		}
		p.l4OK, p.payload = ic.ChecksumValid(), ic.Payload()
	}
	return p
}

func TestBuildersParseBack(t *testing.T) {
	tests := []struct {
		name       string
		b          *Builder
		proto      uint8
		ipOK, l4OK bool
		payload    string
		check      func(t *testing.T, p parsed)
	}{
		{"UDPv4 seed", UDPv4(), header.ProtoUDP, true, true, "hello", func(t *testing.T, p parsed) {
			u, _ := header.CheckUDP(p.l4)
			if u.SrcPort() != 1000 || u.DstPort() != 53 || p.ip.Src() != DefaultSrcIP || p.ip.Dst() != DefaultDstIP || p.ip.TTL() != 64 {
				t.Fatalf("udp %+v ip %+v", u.Fields(), p.ip.Fields())
			}
		}},
		{"fluent UDP", IPv4("192.168.1.1", "8.8.8.8").TTL(1).TOS(0x10).UDP(5000, 53).Payload([]byte("q")), header.ProtoUDP, true, true, "q",
			func(t *testing.T, p parsed) {
				if p.ip.TTL() != 1 || p.ip.TOS() != 0x10 || p.ip.Dst() != netip.MustParseAddr("8.8.8.8") {
					t.Fatalf("%+v", p.ip.Fields())
				}
			}},
		{"UDP bad checksum", UDPv4().BadL4Checksum(), header.ProtoUDP, true, false, "hello", nil},
		{"UDP no checksum", UDPv4().NoUDPChecksum(), header.ProtoUDP, true, false, "hello", func(t *testing.T, p parsed) {
			if u, _ := header.CheckUDP(p.l4); u.Checksum() != 0 {
				t.Fatal("checksum not zero")
			}
		}},
		{"bad IP checksum", UDPv4().BadIPChecksum(), header.ProtoUDP, false, true, "hello", nil},
		{"TCP SYN seed", TCPv4SYN(), header.ProtoTCP, true, true, "", func(t *testing.T, p parsed) {
			tc, _ := header.CheckTCP(p.l4)
			o, err := header.ParseTCPOptions(tc.Options())
			if err != nil || tc.Flags() != header.SYN || tc.Seq() != 1000 || !p.ip.DF() ||
				!o.HasMSS || o.MSS != 1460 || !o.SACKPermitted || !o.HasTS || !o.HasWScale || o.WScale != 7 {
				t.Fatalf("tcp %+v opts %+v err %v", tc.Fields(), o, err)
			}
		}},
		{"TCP data with SACK", IPv4("10.0.0.2", "10.0.0.1").TCP(80, 40000).Flags(header.ACK|header.PSH).Seq(5).Ack(1001).Window(100).
			Timestamps(7, 8).SACK(header.SACKBlock{Start: 10, End: 20}).Payload([]byte("data")), header.ProtoTCP, true, true, "data",
			func(t *testing.T, p parsed) {
				tc, _ := header.CheckTCP(p.l4)
				o, _ := header.ParseTCPOptions(tc.Options())
				if tc.Ack() != 1001 || tc.Window() != 100 || o.NumSACK != 1 || o.SACKBlocks[0] != (header.SACKBlock{Start: 10, End: 20}) || o.TSVal != 7 {
					t.Fatalf("tcp %+v opts %+v", tc.Fields(), o)
				}
			}},
		{"TCP bad checksum", TCPv4SYN().BadL4Checksum(), header.ProtoTCP, true, false, "", nil},
		{"ICMP echo", ICMPEcho(3, 4), header.ProtoICMP, true, true, "pingdata", func(t *testing.T, p parsed) {
			ic, _ := header.CheckICMPv4(p.l4)
			if ic.Type() != header.ICMPv4Echo || ic.ID() != 3 || ic.Seq() != 4 {
				t.Fatalf("%+v", ic.Fields())
			}
		}},
		{"ICMP echo reply, bad checksum", IPv4("10.0.0.2", "10.0.0.1").EchoReply(3, 4).BadL4Checksum(), header.ProtoICMP, true, false, "", nil},
		{"IP options", UDPv4().IPOptions([]byte{header.IPv4OptRouterAlert, 4, 0, 0}), header.ProtoUDP, true, true, "hello",
			func(t *testing.T, p parsed) {
				if p.ip.HeaderLen() != 24 {
					t.Fatal("IHL")
				}
			}},
		{"fragment", IPv4("10.0.0.1", "10.0.0.2").Proto(header.ProtoUDP).Fragment(77, 1480, true).Payload(make([]byte, 16)),
			header.ProtoUDP, true, false, "", func(t *testing.T, p parsed) {
				if p.ip.ID() != 77 || p.ip.FragOffset() != 1480 || !p.ip.MF() || len(p.ip.Payload()) != 16 {
					t.Fatalf("%+v", p.ip.Fields())
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b.Bytes()
			if !bytes.Equal(b, tt.b.Bytes()) {
				t.Fatal("Bytes not repeatable")
			}
			// A non-first fragment carries no transport header to parse.
			noL4 := len(b) >= 8 && (b[6]&0x1f != 0 || b[7] != 0)
			var p parsed
			if noL4 {
				ip, err := header.CheckIPv4(b)
				if err != nil {
					t.Fatal(err)
				}
				p = parsed{ip: ip, ipOK: ip.ChecksumValid()}
			} else {
				p = parseIPv4(t, b)
			}
			if p.ip.Protocol() != tt.proto || p.ipOK != tt.ipOK || p.ip.TotalLen() != len(b) {
				t.Fatalf("proto %d ipOK %v totlen %d/%d", p.ip.Protocol(), p.ipOK, p.ip.TotalLen(), len(b))
			}
			if !noL4 && (p.l4OK != tt.l4OK || string(p.payload) != tt.payload) {
				t.Fatalf("l4OK %v payload %q", p.l4OK, p.payload)
			}
			if tt.check != nil {
				tt.check(t, p)
			}
		})
	}
}

func TestFrameAndSKB(t *testing.T) {
	b := Frame().Eth(macA, macB).IPv4("10.0.0.1", "10.0.0.2").TTL(1).UDP(1000, 53).Payload([]byte("x")).Trailer(make([]byte, 6))
	p := b.Bytes()
	e, err := header.CheckEthernet(p)
	if err != nil || e.Src() != macA || e.Dst() != macB || e.Type() != header.EtherTypeIPv4 {
		t.Fatalf("eth %v %+v", err, e.Fields())
	}
	ip, err := header.CheckIPv4(e.Payload())
	if err != nil || ip.TTL() != 1 || ip.TotalLen() != 20+8+1 || len(e.Payload()) != 20+8+1+6 {
		t.Fatalf("ip %v %+v", err, ip.Fields())
	}
	s := b.SKB()
	defer s.Consume()
	if !bytes.Equal(s.Bytes(), p) || s.Headroom() < 128 || s.Protocol != uint16(header.EtherTypeIPv4) {
		t.Fatalf("skb len %d headroom %d proto %#x", s.Len(), s.Headroom(), s.Protocol)
	}
	if !bytes.Equal(s.MACHeader()[:14], p[:14]) || !bytes.Equal(s.NetworkHeader(), p[14:]) || !bytes.Equal(s.TransportHeader(), p[34:]) {
		t.Fatal("header offsets")
	}
	// Without Eth the SKB starts at the network header.
	s2 := TCPv4SYN().SKB()
	defer s2.Consume()
	if s2.NetworkOffset() != 0 || s2.TransportOffset() != 20 {
		t.Fatalf("offsets %d %d", s2.NetworkOffset(), s2.TransportOffset())
	}
}

func TestARPBuilders(t *testing.T) {
	req := ARPRequest(macA, "10.0.0.1", "10.0.0.2").Bytes()
	e, err := header.CheckEthernet(req)
	if err != nil || e.Dst() != header.BroadcastMAC || e.Src() != macA || e.Type() != header.EtherTypeARP {
		t.Fatalf("eth %v %+v", err, e.Fields())
	}
	a, err := header.CheckARP(e.Payload())
	if err != nil || a.Op() != header.ARPRequest || a.SenderMAC() != macA ||
		a.SenderIP() != netip.MustParseAddr("10.0.0.1") || a.TargetIP() != netip.MustParseAddr("10.0.0.2") || !a.TargetMAC().IsZero() {
		t.Fatalf("arp %v %+v", err, a.Fields())
	}
	rep := ARPReply(macB, "10.0.0.2", macA, "10.0.0.1").SKB()
	defer rep.Consume()
	e, _ = header.CheckEthernet(rep.Bytes())
	a, err = header.CheckARP(rep.NetworkHeader())
	if err != nil || e.Dst() != macA || a.Op() != header.ARPReply || a.SenderMAC() != macB || a.TargetMAC() != macA ||
		rep.Protocol != uint16(header.EtherTypeARP) {
		t.Fatalf("reply %v %+v", err, a.Fields())
	}
}

func TestMalformedKnobs(t *testing.T) {
	tests := []struct {
		name  string
		b     []byte
		check func([]byte) error
		want  error
	}{
		{"total length past buffer", UDPv4().TotalLen(100).Bytes(), func(b []byte) error { _, err := header.CheckIPv4(b); return err }, header.ErrBadTotalLen},
		{"UDP length past buffer", UDPv4().UDPLength(200).Bytes(), func(b []byte) error {
			ip, _ := header.CheckIPv4(b)
			_, err := header.CheckUDP(ip.Payload())
			return err
		}, header.ErrBadLength},
		{"bad TCP option", TCPv4SYN().RawTCPOptions([]byte{2, 0, 0, 0}).Bytes(), func(b []byte) error {
			ip, _ := header.CheckIPv4(b)
			_, err := header.CheckTCP(ip.Payload())
			return err
		}, header.ErrBadOption},
		{"VLAN tagged", UDPv4().Eth(macA, macB).EtherType(header.EtherTypeVLAN).Bytes(), func(b []byte) error {
			_, err := header.CheckEthernet(b)
			return err
		}, header.ErrVLANTagged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.check(tt.b); err != tt.want {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// The corruption never yields a value that still verifies.
	for c := 0; c <= 0xffff; c++ {
		d := corrupt(uint16(c))
		if d == 0 || header.Fold(uint32(d)+uint32(^uint16(c))) == 0xffff {
			t.Fatalf("corrupt(%#04x) = %#04x still verifies", c, d)
		}
	}
}
