package udp

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

var (
	local6 = netip.MustParseAddr("fd00::1")
	peer6  = netip.MustParseAddr("fd00::2")
)

// newProto6 is newProto with an IPv6 family beside the IPv4 one.
func newProto6(t testing.TB) (*Proto, *fakeIP, *fakeIP) {
	t.Helper()
	f4, f6 := &fakeIP{src: local}, &fakeIP{src: local6}
	return New(f4, f6, Config{Clock: clock.NewManual()}), f4, f6
}

// datagram6 builds an incoming skb as ipv6 hands it to V6Rcv: Bytes() at
// the UDP header, NetworkHeader() the IPv6 header. csum 0 sends a zero
// checksum, 1 a wrong one, else a correct one.
func datagram6(src, dst netip.Addr, sport, dport uint16, payload []byte, csum int) *buf.SKB {
	n := header.UDPSize + len(payload)
	b := make([]byte, header.IPv6MinSize+n)
	header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: uint16(n), NextHeader: header.ProtoUDP, HopLimit: 64, Src: src, Dst: dst})
	u := header.UDP(b[header.IPv6MinSize:])
	u.Encode(header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(n)})
	copy(u[header.UDPSize:], payload)
	u.SetChecksum(src, dst)
	switch csum {
	case 0:
		binary.BigEndian.PutUint16(u[6:], 0)
	case 1:
		u[6] ^= 0x40
	}
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	skb.SetNetworkHeader()
	skb.Pull(header.IPv6MinSize)
	return skb
}

// RFC 8200 §8.1 and RFC 4443 §3.1 at the protocol: a datagram to a bound
// IPv6 address arrives with its IPv6 source; a zero or wrong checksum is
// discarded silently; a closed port is answered with ICMPv6 Destination
// Unreachable code 4 through the IPv6 family, never IPv4's.
func TestV6Rcv(t *testing.T) {
	p, f4, f6 := newProto6(t)
	s := p.NewSocket()
	defer s.Close()
	if err := s.Bind(netip.AddrPortFrom(local6, 53)); err != nil {
		t.Fatal(err)
	}
	p.V6Rcv(datagram6(peer6, local6, 1000, 53, []byte("zero"), 0))
	p.V6Rcv(datagram6(peer6, local6, 1000, 53, []byte("bad"), 1))
	p.V6Rcv(datagram6(peer6, local6, 1000, 53, []byte("good"), 2))
	b := make([]byte, 16)
	n, m, err := s.RecvMsg(b, MsgDontWait)
	if err != nil || string(b[:n]) != "good" || m.From != netip.AddrPortFrom(peer6, 1000) || m.To != netip.AddrPortFrom(local6, 53) {
		t.Fatalf("got %q %+v %v", b[:n], m, err)
	}
	if _, _, err := s.RecvMsg(b, MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("second datagram: %v", err)
	}
	if st := p.Stats(); st.InCsumErrors != 2 || st.InErrors != 2 {
		t.Fatalf("stats %+v", st)
	}
	p.V6Rcv(datagram6(peer6, local6, 1000, 54, []byte("closed"), 2))
	if len(f6.icmp) != 1 || f6.icmp[0].typ != header.ICMPv6DstUnreachable || f6.icmp[0].code != header.ICMPv6PortUnreachable || len(f4.icmp) != 0 {
		t.Fatalf("ICMP: v6 %+v v4 %+v", f6.icmp, f4.icmp)
	}
}

// Sends go through the family of the destination with the IPv6
// pseudo-header checksum; IPv4-mapped destinations go out as IPv4; a
// Proto without IPv6 refuses IPv6 addresses.
func TestSendFamilies(t *testing.T) {
	p, f4, f6 := newProto6(t)
	s := p.NewSocket()
	defer s.Close()
	if _, err := s.SendTo([]byte("six"), netip.AddrPortFrom(peer6, 53)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SendTo([]byte("four"), netip.AddrPortFrom(netip.AddrFrom16(peer.As16()), 53)); err != nil {
		t.Fatal(err)
	}
	if len(f6.sent) != 1 || len(f4.sent) != 1 || f4.flows[0].Dst != peer {
		t.Fatalf("sent: v6 %d v4 %d", len(f6.sent), len(f4.sent))
	}
	u := header.UDP(f6.sent[0].Bytes())
	if header.Fold(header.Checksum(u, header.PseudoHeaderSum(header.ProtoUDP, local6, peer6, len(u)))) != 0xffff {
		t.Fatal("bad IPv6 checksum")
	}
	if _, err := s.SendTo(make([]byte, MaxPayload6), netip.AddrPortFrom(peer6, 53)); err != nil {
		t.Fatalf("largest IPv6 payload: %v", err)
	}
	if _, err := s.SendTo(make([]byte, MaxPayload+1), netip.AddrPortFrom(peer, 53)); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("IPv4 payload over the limit: %v", err)
	}
	p4, _ := newProto(t, Config{})
	s4 := p4.NewSocket()
	defer s4.Close()
	if _, err := s4.SendTo([]byte("x"), netip.AddrPortFrom(peer6, 53)); !errors.Is(err, syscall.EAFNOSUPPORT) {
		t.Fatalf("no IPv6: %v", err)
	}
}

// RFC 4443 §3 errors reach a connected IPv6 socket as header.ICMPError:
// port unreachable as ECONNREFUSED, a soft one not at all.
func TestV6Err(t *testing.T) {
	p, _, _ := newProto6(t)
	s := p.NewSocket()
	defer s.Close()
	if err := s.Connect(netip.AddrPortFrom(peer6, 53)); err != nil {
		t.Fatal(err)
	}
	lport := s.LocalAddr().Port()
	quote := func() *buf.SKB {
		b := make([]byte, header.IPv6MinSize+header.UDPSize)
		header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: 8, NextHeader: header.ProtoUDP, HopLimit: 64, Src: local6, Dst: peer6})
		header.UDP(b[header.IPv6MinSize:]).Encode(header.UDPFields{SrcPort: lport, DstPort: 53, Length: 8})
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		skb.SetNetworkHeader()
		skb.SetTransportHeaderAt(header.IPv6MinSize)
		return skb
	}
	p.V6Err(quote(), header.ICMPError{V6: true, Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6NoRoute, Errno: syscall.ENETUNREACH})
	if _, _, err := s.RecvMsg(nil, MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("after a soft error: %v", err)
	}
	p.V6Err(quote(), header.ICMPError{V6: true, Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6PortUnreachable,
		Errno: syscall.ECONNREFUSED, Hard: true})
	if _, _, err := s.RecvMsg(nil, MsgDontWait); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after port unreachable: %v", err)
	}
}

// Any bytes after an IPv6 header, as a datagram or as an ICMPv6 error's
// quote, are delivered, dropped and counted, or answered; never a panic.
func FuzzV6Rcv(f *testing.F) {
	f.Add(datagram6(peer6, local6, 1, 53, []byte("seed"), 2).Bytes(), false)
	f.Add([]byte{0, 1, 0, 53, 0, 8, 0, 0}, false)
	f.Add([]byte{0, 53, 0, 1, 0, 8, 0, 0}, true)
	p, _, _ := newProto6(f)
	s := p.NewSocket()
	if err := s.Bind(netip.MustParseAddrPort("[::]:53")); err != nil {
		f.Fatal(err)
	}
	c := p.NewSocket()
	if err := c.Connect(netip.AddrPortFrom(peer6, 1)); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte, asErr bool) {
		src, dst := peer6, local6
		if asErr {
			src, dst = local6, peer6
		}
		ip := make([]byte, header.IPv6MinSize)
		header.IPv6(ip).Encode(header.IPv6Fields{PayloadLen: uint16(len(b)), NextHeader: header.ProtoUDP, HopLimit: 64, Src: src, Dst: dst})
		skb := buf.FromBytes(buf.MaxHeadroom, append(ip, b...))
		skb.SetNetworkHeader()
		if asErr {
			skb.SetTransportHeaderAt(header.IPv6MinSize)
			p.V6Err(skb, header.ICMPError{V6: true, Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6PortUnreachable,
				Errno: syscall.ECONNREFUSED, Hard: true})
			skb.Consume()
		} else {
			skb.Pull(header.IPv6MinSize)
			p.V6Rcv(skb)
		}
		for _, x := range []*Socket{s, c} {
			for {
				if _, _, err := x.RecvMsg(make([]byte, 100), MsgDontWait); errors.Is(err, syscall.EAGAIN) {
					break
				}
			}
		}
	})
}

// Ports are shared across families as Linux shares them between AF_INET
// and AF_INET6 sockets (bindv6only=0): :: overlaps everything, 0.0.0.0
// every IPv4 address and no IPv6 one, a specific address itself.
func TestBindConflictsAcrossFamilies(t *testing.T) {
	for _, tc := range []struct {
		first, second string
		conflict      bool
	}{
		{"0.0.0.0", "fd00::1", false},
		{"fd00::1", "0.0.0.0", false},
		{"0.0.0.0", "10.0.0.1", true},
		{"::", "10.0.0.1", true},
		{"::", "0.0.0.0", true},
		{"fd00::1", "::", true},
		{"fd00::1", "fd00::2", false},
		{"fd00::1", "fd00::1", true},
		{"10.0.0.1", "fd00::1", false},
	} {
		p, _, _ := newProto6(t)
		a, b := p.NewSocket(), p.NewSocket()
		if err := a.Bind(netip.AddrPortFrom(netip.MustParseAddr(tc.first), 53)); err != nil {
			t.Fatal(err)
		}
		err := b.Bind(netip.AddrPortFrom(netip.MustParseAddr(tc.second), 53))
		if got := errors.Is(err, syscall.EADDRINUSE); got != tc.conflict {
			t.Errorf("%s then %s: %v", tc.first, tc.second, err)
		}
		a.Close()
		b.Close()
	}
}

// RFC 4007 §6 and §11 without a name resolver: zones are NIC IDs. A
// send to a zoned link-local address leaves through that NIC; a datagram
// from a link-local source is received with its NIC's zone, and
// answering that address goes back out there; a zoned bind binds the
// socket to the NIC; an unknown zone is ENODEV.
func TestLinkLocalZones(t *testing.T) {
	p, _, f6 := newProto6(t)
	ll := netip.MustParseAddr("fe80::2")
	s := p.NewSocket()
	defer s.Close()
	if err := s.Bind(netip.AddrPortFrom(netip.MustParseAddr("fe80::1%3"), 53)); err != nil {
		t.Fatal(err)
	}
	if s.nic != 3 {
		t.Fatalf("bound to NIC %d", s.nic)
	}
	if _, err := s.SendTo([]byte("x"), netip.AddrPortFrom(ll.WithZone("4"), 53)); err != nil {
		t.Fatal(err)
	}
	if fl := f6.flows[len(f6.flows)-1]; fl.NIC != 4 || fl.Dst != ll {
		t.Fatalf("flow %+v", fl)
	}
	skb := datagram6(ll, netip.MustParseAddr("fe80::1"), 1000, 53, []byte("hi"), 2)
	skb.InNIC = 3
	p.V6Rcv(skb)
	_, m, err := s.RecvMsg(make([]byte, 8), MsgDontWait)
	if err != nil || m.From != netip.AddrPortFrom(ll.WithZone("3"), 1000) || m.To.Addr().Zone() != "3" {
		t.Fatalf("meta %+v %v", m, err)
	}
	if _, err := s.SendTo([]byte("back"), m.From); err != nil {
		t.Fatal(err)
	}
	if fl := f6.flows[len(f6.flows)-1]; fl.NIC != 3 {
		t.Fatalf("answer's flow %+v", fl)
	}
	if _, err := s.SendTo([]byte("x"), netip.AddrPortFrom(ll.WithZone("eth9"), 53)); !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("unknown zone: %v", err)
	}
}

// RecvMsgHeader keeps the IPv6 header, extension headers and the UDP
// header of a datagram (what an ICMPv6 error quotes first); when the
// extension headers do not fit Header.B, the IPv6 header is rewritten to
// name UDP next so the quote still parses.
func TestRecvMsgHeaderIPv6(t *testing.T) {
	p, _, _ := newProto6(t)
	s := p.NewSocket()
	defer s.Close()
	if err := s.Bind(netip.AddrPortFrom(local6, 53)); err != nil {
		t.Fatal(err)
	}
	for _, extLen := range []int{0, 8, 64} {
		udpb := datagram6(peer6, local6, 1000, 53, []byte("hdr"), 2).Bytes()
		ext := make([]byte, extLen)
		if extLen > 0 {
			ext[0], ext[1] = header.ProtoUDP, byte(extLen/8-1) // a Destination Options header
			ext[2], ext[3] = 1, byte(extLen-4)                 // PadN
		}
		b := make([]byte, header.IPv6MinSize)
		nh := uint8(header.ProtoUDP)
		if extLen > 0 {
			nh = header.ProtoDestOpts
		}
		header.IPv6(b).Encode(header.IPv6Fields{PayloadLen: uint16(extLen + len(udpb)), NextHeader: nh, HopLimit: 64, Src: peer6, Dst: local6})
		b = append(append(b, ext...), udpb...)
		skb := buf.FromBytes(buf.MaxHeadroom, b)
		skb.SetNetworkHeader()
		skb.Pull(header.IPv6MinSize + extLen)
		p.V6Rcv(skb)
		var h Header
		if _, _, err := s.RecvMsgHeader(make([]byte, 8), &h, MsgDontWait); err != nil {
			t.Fatal(err)
		}
		hb := h.Bytes()
		u, err := header.IPv6SkipExtHeaders(hb)
		if err != nil || u.Proto != header.ProtoUDP || u.Offset+header.UDPSize != len(hb) ||
			header.UDP(hb[u.Offset:]).DstPort() != 53 || header.IPv6(hb).PayloadLen() != len(hb)-header.IPv6MinSize+3 {
			t.Fatalf("ext %d: header % x (%+v, %v)", extLen, hb, u, err)
		}
		if want := header.IPv6MinSize + extLen + header.UDPSize; extLen <= 20 && len(hb) != want {
			t.Fatalf("ext %d: %d bytes kept, want %d", extLen, len(hb), want)
		}
	}
}
