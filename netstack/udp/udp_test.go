package udp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// fakeIP is the family beside Proto: it records what UDP sends.
type fakeIP struct {
	mu       sync.Mutex
	src      netip.Addr
	routeErr error
	rtType   route.Type
	xmitErr  error
	sent     []*buf.SKB
	flows    []route.Flow
	icmp     []icmpCall
}

type icmpCall struct {
	typ, code uint8
	quoted    []byte
}

func (f *fakeIP) QueueXmit(skb *buf.SKB, fl route.Flow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.xmitErr != nil {
		skb.Free(buf.DropNotSpecified)
		return f.xmitErr
	}
	f.sent = append(f.sent, skb)
	f.flows = append(f.flows, fl)
	return nil
}

func (f *fakeIP) RouteOutput(fl route.Flow) (route.Result, error) {
	if f.routeErr != nil {
		return route.Result{}, f.routeErr
	}
	src := fl.Src
	if !src.IsValid() {
		src = f.src
	}
	return route.Result{Type: f.rtType, NIC: 1, NextHop: fl.Dst, Src: src}, nil
}

func (f *fakeIP) SendICMPError(skb *buf.SKB, typ, code uint8, info uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.icmp = append(f.icmp, icmpCall{typ, code, append([]byte(nil), skb.NetworkHeader()...)})
}

func (f *fakeIP) SendICMPErrorQuote(src, dst netip.Addr, typ, code uint8, info uint32, quote []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.icmp = append(f.icmp, icmpCall{typ, code, append([]byte(nil), quote...)})
	return nil
}

var (
	local  = netip.MustParseAddr("10.0.0.1")
	peer   = netip.MustParseAddr("10.0.0.2")
	other  = netip.MustParseAddr("10.0.0.3")
	local2 = netip.MustParseAddr("10.0.0.9")
)

func newProto(t testing.TB, cfg Config) (*Proto, *fakeIP) {
	t.Helper()
	f := &fakeIP{src: local}
	if cfg.Clock == nil {
		cfg.Clock = clock.NewManual()
	}
	return New(f, nil, cfg), f
}

// datagram builds an incoming skb as ipv4 hands it to V4Rcv: Bytes() at
// the UDP header, NetworkHeader() the IPv4 header.
type datagram struct {
	src, dst     netip.Addr
	sport, dport uint16
	payload      []byte
	noCsum       bool // send checksum 0
	badCsum      bool // corrupt the checksum
	lenField     int  // override the UDP length field when non-zero
	pad          int  // bytes of IP payload after the datagram
	csum         buf.CsumState
}

func (d datagram) skb() *buf.SKB {
	n := header.UDPSize + len(d.payload)
	total := header.IPv4MinSize + n + d.pad
	skb := buf.Alloc(buf.MaxHeadroom, total)
	b := skb.Put(total)
	ip := header.IPv4(b)
	ip.Encode(header.IPv4Fields{TotalLen: uint16(total), TTL: 64, Protocol: header.ProtoUDP, Src: d.src, Dst: d.dst})
	u := header.UDP(b[header.IPv4MinSize:])
	copy(u[header.UDPSize:], d.payload)
	u.Encode(header.UDPFields{SrcPort: d.sport, DstPort: d.dport, Length: uint16(n)})
	if !d.noCsum {
		u[:n].SetChecksum(d.src, d.dst)
	}
	if d.badCsum {
		u[6] ^= 0x55
	}
	if d.lenField != 0 {
		u[4], u[5] = byte(d.lenField>>8), byte(d.lenField)
	}
	skb.SetNetworkHeader()
	skb.Pull(header.IPv4MinSize)
	skb.Csum = d.csum
	skb.InNIC = 1
	return skb
}

func bindSock(t testing.TB, p *Proto, ap string) *Socket {
	t.Helper()
	s := p.NewSocket()
	if err := s.Bind(netip.MustParseAddrPort(ap)); err != nil {
		t.Fatalf("bind %s: %v", ap, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRcvValidation(t *testing.T) {
	good := datagram{src: peer, dst: local, sport: 999, dport: 53, payload: []byte("hello")}
	tests := []struct {
		name    string
		d       func(d datagram) datagram
		deliver string // payload expected at the socket, "" = nothing
		stats   Stats
		icmp    bool
	}{
		{"RFC 768: a correct datagram is delivered", func(d datagram) datagram { return d },
			"hello", Stats{InDatagrams: 1}, false},
		{"RFC 768: checksum zero means none was sent", func(d datagram) datagram { d.noCsum = true; return d },
			"hello", Stats{InDatagrams: 1}, false},
		{"RFC 1122 §4.1.3.4: bad checksum is discarded silently", func(d datagram) datagram { d.badCsum = true; return d },
			"", Stats{InErrors: 1, InCsumErrors: 1}, false},
		{"a checksum the link verified is not recomputed", func(d datagram) datagram {
			d.badCsum, d.csum = true, buf.CsumUnnecessary
			return d
		}, "hello", Stats{InDatagrams: 1}, false},
		{"length field past the IP payload is a header error", func(d datagram) datagram { d.lenField = 100; return d },
			"", Stats{InErrors: 1}, false},
		{"length field below the header size is a header error", func(d datagram) datagram { d.lenField = 7; return d },
			"", Stats{InErrors: 1}, false},
		{"IP payload past the UDP length is padding and trimmed", func(d datagram) datagram { d.pad = 6; return d },
			"hello", Stats{InDatagrams: 1}, false},
		{"RFC 1122 §4.1.3.1: no socket → port unreachable", func(d datagram) datagram { d.dport = 54; return d },
			"", Stats{NoPorts: 1}, true},
		{"bad checksum to a closed port draws no ICMP", func(d datagram) datagram { d.dport, d.badCsum = 54, true; return d },
			"", Stats{InErrors: 1, InCsumErrors: 1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, f := newProto(t, Config{})
			s := bindSock(t, p, "0.0.0.0:53")
			p.V4Rcv(tc.d(good).skb())
			b := make([]byte, 100)
			n, from, err := s.RecvMsg(b, MsgDontWait)
			if tc.deliver == "" {
				if !errors.Is(err, syscall.EAGAIN) {
					t.Fatalf("got %q from %v, err %v; want nothing", b[:n], from, err)
				}
			} else {
				if err != nil || string(b[:n]) != tc.deliver || from.From != netip.AddrPortFrom(peer, 999) ||
					from.To != netip.AddrPortFrom(local, 53) || from.NIC != 1 {
					t.Fatalf("got %q %+v err %v", b[:n], from, err)
				}
			}
			if got := p.Stats(); got != tc.stats {
				t.Fatalf("stats %+v, want %+v", got, tc.stats)
			}
			if got := len(f.icmp) == 1; got != tc.icmp {
				t.Fatalf("icmp %v", f.icmp)
			}
			if tc.icmp && (f.icmp[0].typ != header.ICMPv4DstUnreachable || f.icmp[0].code != header.ICMPv4PortUnreachable ||
				len(f.icmp[0].quoted) < header.IPv4MinSize) {
				t.Fatalf("icmp %+v", f.icmp[0])
			}
		})
	}
}

func TestLookupPrecedence(t *testing.T) {
	p, _ := newProto(t, Config{})
	wild := bindSock(t, p, "0.0.0.0:7000")
	spec := bindSock(t, p, "10.0.0.9:7001")
	conn := bindSock(t, p, "10.0.0.1:7002")
	if err := conn.Connect(netip.AddrPortFrom(peer, 9)); err != nil {
		t.Fatal(err)
	}
	wild2 := bindSock(t, p, "10.0.0.1:7003")
	tests := []struct {
		name string
		d    datagram
		want *Socket
	}{
		{"wildcard takes any local address", datagram{src: peer, dst: local, sport: 1, dport: 7000}, wild},
		{"specific address matches", datagram{src: peer, dst: local2, sport: 1, dport: 7001}, spec},
		{"specific address does not match another", datagram{src: peer, dst: local, sport: 1, dport: 7001}, nil},
		{"connected socket takes its peer", datagram{src: peer, dst: local, sport: 9, dport: 7002}, conn},
		{"connected socket refuses another source port", datagram{src: peer, dst: local, sport: 10, dport: 7002}, nil},
		{"connected socket refuses another source", datagram{src: other, dst: local, sport: 9, dport: 7002}, nil},
		{"bound address", datagram{src: other, dst: local, sport: 9, dport: 7003}, wild2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.mu.RLock()
			got := p.lookup(tc.d.src, tc.d.sport, tc.d.dst, tc.d.dport)
			p.mu.RUnlock()
			if got != tc.want {
				t.Fatalf("lookup chose %p, want %p", got, tc.want)
			}
		})
	}
}

func TestLookupPrefersConnected(t *testing.T) {
	p, _ := newProto(t, Config{})
	// Two sockets share a port when both have specific, different
	// addresses; a connected socket (whose address became specific on
	// connect) wins over a wildcard socket only through the score.
	a := bindSock(t, p, "10.0.0.1:8000")
	b := bindSock(t, p, "10.0.0.9:8000")
	if err := a.Connect(netip.AddrPortFrom(peer, 5)); err != nil {
		t.Fatal(err)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if got := p.lookup(peer, 5, local, 8000); got != a {
		t.Fatal("connected socket not chosen")
	}
	if got := p.lookup(peer, 5, local2, 8000); got != b {
		t.Fatal("bound socket not chosen")
	}
}

func TestBindConflicts(t *testing.T) {
	tests := []struct {
		first, second string
		want          error
	}{
		{"0.0.0.0:53", "0.0.0.0:53", syscall.EADDRINUSE},
		{"0.0.0.0:53", "10.0.0.1:53", syscall.EADDRINUSE},
		{"10.0.0.1:53", "0.0.0.0:53", syscall.EADDRINUSE},
		{"10.0.0.1:53", "10.0.0.1:53", syscall.EADDRINUSE},
		{"10.0.0.1:53", "10.0.0.9:53", nil},
		{"0.0.0.0:53", "0.0.0.0:54", nil},
	}
	for _, tc := range tests {
		t.Run(tc.first+"+"+tc.second, func(t *testing.T) {
			p, _ := newProto(t, Config{})
			bindSock(t, p, tc.first)
			s := p.NewSocket()
			defer s.Close()
			if err := s.Bind(netip.MustParseAddrPort(tc.second)); !errors.Is(err, tc.want) && err != tc.want {
				t.Fatalf("second bind: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestBindTwiceAndClosedPortReuse(t *testing.T) {
	p, _ := newProto(t, Config{})
	s := bindSock(t, p, "0.0.0.0:5000")
	if err := s.Bind(netip.MustParseAddrPort("0.0.0.0:5001")); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("rebind: %v", err)
	}
	s.Close()
	s2 := bindSock(t, p, "0.0.0.0:5000")
	if s2.LocalAddr().Port() != 5000 {
		t.Fatal("port not reusable after close")
	}
	if err := s.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
}

func TestEphemeralRange(t *testing.T) {
	p, _ := newProto(t, Config{EphemeralLow: 40000, EphemeralHigh: 40002})
	seen := map[uint16]bool{}
	for i := 0; i < 3; i++ {
		s := bindSock(t, p, "0.0.0.0:0")
		port := s.LocalAddr().Port()
		if port < 40000 || port > 40002 || seen[port] {
			t.Fatalf("ephemeral port %d (seen %v)", port, seen)
		}
		seen[port] = true
	}
	s := p.NewSocket()
	if err := s.Bind(netip.AddrPort{}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("exhausted range: %v", err)
	}
	// Autobind on send fails the same way.
	if _, err := s.SendTo([]byte("x"), netip.AddrPortFrom(peer, 1)); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("autobind: %v", err)
	}
}

func TestMaxSocketsBound(t *testing.T) {
	p, _ := newProto(t, Config{MaxSockets: 2})
	bindSock(t, p, "0.0.0.0:1")
	bindSock(t, p, "0.0.0.0:2")
	s := p.NewSocket()
	if err := s.Bind(netip.MustParseAddrPort("0.0.0.0:3")); !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("third bind: %v", err)
	}
}

func TestRcvbufOverflow(t *testing.T) {
	p, _ := newProto(t, Config{})
	s := bindSock(t, p, "0.0.0.0:53")
	s.SetReadBuffer(MinRcvBuf)
	d := datagram{src: peer, dst: local, sport: 1, dport: 53, payload: make([]byte, 100)}
	probe := d.skb()
	one := truesize(probe) // what each datagram is charged
	probe.Consume()
	// __udp_enqueue_schedule_skb: accepted while the charge is below the
	// bound, so the queue ends between the bound and one datagram over it.
	const sent = 20
	for i := 0; i < sent; i++ {
		p.V4Rcv(d.skb())
	}
	queued, charged := s.Queued()
	wantQueued := (MinRcvBuf + one - 1) / one
	st := p.Stats()
	if queued != wantQueued || charged != queued*one || charged >= MinRcvBuf+one {
		t.Fatalf("queued %d charged %d, want %d of %d bytes each", queued, charged, wantQueued, one)
	}
	if int(st.RcvbufErrors) != sent-queued || st.InErrors != st.RcvbufErrors || s.Drops() != st.RcvbufErrors {
		t.Fatalf("stats %+v drops %d", st, s.Drops())
	}
	for i := 1; i < queued; i++ {
		s.Recv(make([]byte, 200))
	}
	b := make([]byte, 200)
	if n, err := s.Recv(b); err != nil || n != 100 {
		t.Fatalf("recv %d %v", n, err)
	}
	if n, bytes := s.Queued(); n != 0 || bytes != 0 {
		t.Fatalf("queue not empty after recv: %d %d", n, bytes)
	}
}

func TestTruncationAndPeek(t *testing.T) {
	p, _ := newProto(t, Config{})
	s := bindSock(t, p, "0.0.0.0:53")
	p.V4Rcv(datagram{src: peer, dst: local, sport: 1, dport: 53, payload: []byte("abcdef")}.skb())
	b := make([]byte, 3)
	n, m, err := s.RecvMsg(b, MsgPeek|MsgDontWait)
	if err != nil || string(b[:n]) != "abc" || !m.Truncated || m.Len != 6 {
		t.Fatalf("peek %q %+v %v", b[:n], m, err)
	}
	n, m, err = s.RecvMsg(b, 0)
	if err != nil || string(b[:n]) != "abc" || !m.Truncated {
		t.Fatalf("recv %q %+v %v", b[:n], m, err)
	}
	if _, _, err := s.RecvMsg(b, MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("rest of a truncated datagram must be discarded: %v", err)
	}
}

var portUnreachable = header.ICMPError{Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4PortUnreachable,
	Errno: syscall.ECONNREFUSED, Hard: true}

// unreach is ipv4's ICMPError for destination unreachable code.
func unreach(code uint8, errno syscall.Errno, hard bool) header.ICMPError {
	return header.ICMPError{Type: header.ICMPv4DstUnreachable, Code: code, Errno: errno, Hard: hard}
}

// RFC 1122 §4.1.3.3 as Linux applies it without IP_RECVERR: a connected
// socket hears of hard errors, once; soft ones and unconnected sockets
// hear of nothing.
func TestV4Err(t *testing.T) {
	fragNeeded := header.ICMPError{Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4FragNeeded, Errno: syscall.EMSGSIZE, Info: 1280}
	tests := []struct {
		name      string
		connect   bool
		df        bool
		e         header.ICMPError
		wantError bool
	}{
		{"RFC 1122 §4.1.3.3: port unreachable reaches a connected socket", true, false, portUnreachable, true},
		{"protocol unreachable is hard", true, false, unreach(header.ICMPv4ProtoUnreachable, syscall.ENOPROTOOPT, true), true},
		{"admin prohibited is hard though EHOSTUNREACH", true, false, unreach(header.ICMPv4AdminProhibited, syscall.EHOSTUNREACH, true), true},
		{"parameter problem is hard", true, false, header.ICMPError{Type: header.ICMPv4ParamProblem, Errno: syscall.EPROTO, Hard: true}, true},
		{"fragmentation needed reaches a DF socket", true, true, fragNeeded, true},
		{"fragmentation needed is not a non-DF socket's business", true, false, fragNeeded, false},
		{"Linux: unconnected sockets do not hear of errors", false, false, portUnreachable, false},
		{"host unreachable is soft", true, false, unreach(header.ICMPv4HostUnreachable, syscall.EHOSTUNREACH, false), false},
		{"net unreachable is soft", true, false, unreach(header.ICMPv4NetUnreachable, syscall.ENETUNREACH, false), false},
		{"time exceeded is soft", true, false, header.ICMPError{Type: header.ICMPv4TimeExceeded, Errno: syscall.EHOSTUNREACH}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newProto(t, Config{})
			s := bindSock(t, p, "10.0.0.1:4000")
			s.SetDontFragment(tc.df)
			if tc.connect {
				if err := s.Connect(netip.AddrPortFrom(peer, 9)); err != nil {
					t.Fatal(err)
				}
			}
			// The quoted datagram, as ipv4 hands it over: from local:4000 to peer:9.
			skb := datagram{src: local, dst: peer, sport: 4000, dport: 9, payload: []byte("x")}.skb()
			skb.PushToNetwork()
			skb.SetTransportHeaderAt(header.IPv4MinSize)
			p.V4Err(skb, tc.e)
			skb.Consume()
			b := make([]byte, 10)
			_, _, err := s.RecvMsg(b, MsgDontWait)
			if tc.wantError {
				if !errors.Is(err, tc.e.Errno) {
					t.Fatalf("recv: %v, want %v", err, tc.e.Errno)
				}
				// Reported once (sock_error clears it).
				if _, _, err := s.RecvMsg(b, MsgDontWait); !errors.Is(err, syscall.EAGAIN) {
					t.Fatalf("second recv: %v", err)
				}
			} else if !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("recv: %v, want EAGAIN", err)
			}
			st := p.Stats()
			if hard := tc.e.Hard || tc.e.PathMTU(); !hard && st.ICMPSoftErrors != 1 {
				t.Fatalf("soft error not counted: %+v", st)
			}
			if tc.wantError && st.ICMPHardErrors != 1 {
				t.Fatalf("hard error not counted: %+v", st)
			}
		})
	}
}

func TestV4ErrReportedOnSend(t *testing.T) {
	p, _ := newProto(t, Config{})
	s := bindSock(t, p, "10.0.0.1:4000")
	if err := s.Connect(netip.AddrPortFrom(peer, 9)); err != nil {
		t.Fatal(err)
	}
	skb := datagram{src: local, dst: peer, sport: 4000, dport: 9}.skb()
	skb.PushToNetwork()
	p.V4Err(skb, portUnreachable)
	skb.Consume()
	if _, err := s.Send([]byte("x")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("send: %v", err)
	}
	if _, err := s.Send([]byte("x")); err != nil {
		t.Fatalf("second send: %v", err)
	}
}

func TestV4ErrMalformedQuote(t *testing.T) {
	p, _ := newProto(t, Config{})
	for _, b := range [][]byte{nil, make([]byte, 19), append([]byte{0x4f}, make([]byte, 30)...)} {
		skb := buf.FromBytes(0, b)
		skb.SetNetworkHeader()
		p.V4Err(skb, portUnreachable)
		skb.Consume()
	}
}

func TestSend(t *testing.T) {
	p, f := newProto(t, Config{})
	s := p.NewSocket()
	defer s.Close()
	s.SetTTL(1)
	payload := bytes.Repeat([]byte{0xab}, 1000)
	if n, err := s.SendTo(payload, netip.AddrPortFrom(peer, 9)); err != nil || n != 1000 {
		t.Fatalf("send: %d %v", n, err)
	}
	lport := s.LocalAddr().Port()
	if lport < DefaultEphemeralLow || lport > DefaultEphemeralHigh {
		t.Fatalf("autobind port %d", lport)
	}
	if len(f.sent) != 1 {
		t.Fatalf("sent %d", len(f.sent))
	}
	u, err := header.CheckUDP(f.sent[0].Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if u.SrcPort() != lport || u.DstPort() != 9 || u.Length() != 1008 || !bytes.Equal(u.Payload(), payload) {
		t.Fatalf("header %+v", u.Fields())
	}
	if u.Checksum() == 0 || !u.ChecksumValid(local, peer) {
		t.Fatal("RFC 768: checksum missing or wrong")
	}
	fl := f.flows[0]
	if fl.Src != local || fl.Dst != peer || fl.Proto != header.ProtoUDP || fl.TTL != 1 || fl.DstPort != 9 {
		t.Fatalf("flow %+v", fl)
	}
	if st := p.Stats(); st.OutDatagrams != 1 {
		t.Fatalf("stats %+v", st)
	}
	for _, skb := range f.sent {
		skb.Consume()
	}
}

func TestSendErrors(t *testing.T) {
	p, f := newProto(t, Config{})
	s := p.NewSocket()
	defer s.Close()
	dst := netip.AddrPortFrom(peer, 9)
	tests := []struct {
		name  string
		setup func()
		p     []byte
		to    netip.AddrPort
		want  error
	}{
		{"RFC 768: payload past 65507 is EMSGSIZE", func() {}, make([]byte, MaxPayload+1), dst, syscall.EMSGSIZE},
		{"no destination on an unconnected socket", func() {}, []byte("x"), netip.AddrPort{}, syscall.EDESTADDRREQ},
		{"port 0 is EINVAL", func() {}, []byte("x"), netip.AddrPortFrom(peer, 0), syscall.EINVAL},
		{"IPv6 is not supported yet", func() {}, []byte("x"), netip.MustParseAddrPort("[2001:db8::1]:9"), syscall.EAFNOSUPPORT},
		{"route error unwraps to its errno", func() { f.routeErr = route.ErrNoRoute }, []byte("x"), dst, syscall.ENETUNREACH},
		{"broadcast without SO_BROADCAST", func() { f.routeErr, f.rtType = nil, route.Broadcast }, []byte("x"), dst, syscall.EACCES},
		{"write deadline passed", func() {
			f.rtType = route.Unicast
			s.SetWriteDeadline(clock.Epoch)
		}, []byte("x"), dst, os.ErrDeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			if _, err := s.SendTo(tc.p, tc.to); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	s.SetWriteDeadline(time.Time{})
	f.xmitErr = syscall.ENOBUFS
	if _, err := s.SendTo([]byte("x"), dst); err != nil {
		t.Fatalf("ENOBUFS must not be reported: %v", err)
	}
	if st := p.Stats(); st.SndbufErrors != 1 {
		t.Fatalf("stats %+v", st)
	}
	s.Close()
	if _, err := s.SendTo([]byte("x"), dst); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
}

func TestDisconnect(t *testing.T) {
	p, _ := newProto(t, Config{})
	s := bindSock(t, p, "0.0.0.0:6000")
	if err := s.Connect(netip.AddrPortFrom(peer, 9)); err != nil {
		t.Fatal(err)
	}
	if s.LocalAddr().Addr() != local || s.RemoteAddr() != netip.AddrPortFrom(peer, 9) {
		t.Fatalf("after connect: %v %v", s.LocalAddr(), s.RemoteAddr())
	}
	p.V4Rcv(datagram{src: other, dst: local, sport: 9, dport: 6000}.skb())
	if st := p.Stats(); st.NoPorts != 1 {
		t.Fatalf("datagram from a stranger reached a connected socket: %+v", st)
	}
	if err := s.Connect(netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	if s.RemoteAddr().IsValid() || s.LocalAddr().Addr() != netip.IPv4Unspecified() {
		t.Fatalf("after disconnect: %v %v", s.LocalAddr(), s.RemoteAddr())
	}
	p.V4Rcv(datagram{src: other, dst: local, sport: 9, dport: 6000}.skb())
	if _, _, err := s.RecvMsg(make([]byte, 10), MsgDontWait); err != nil {
		t.Fatalf("after disconnect: %v", err)
	}
}

// waitFor polls cond for up to 5 s of wall time: a bound on a wait for
// another goroutine, not protocol timing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestBlockingRecv(t *testing.T) {
	clk := clock.NewManual()
	p, _ := newProto(t, Config{Clock: clk})
	s := bindSock(t, p, "0.0.0.0:53")

	t.Run("wakes on arrival", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			b := make([]byte, 10)
			n, from, err := s.RecvFrom(b)
			if err == nil && (string(b[:n]) != "hi" || from != netip.AddrPortFrom(peer, 1)) {
				err = errors.New("wrong datagram")
			}
			done <- err
		}()
		time.Sleep(10 * time.Millisecond) // let it block; correctness does not depend on it
		p.V4Rcv(datagram{src: peer, dst: local, sport: 1, dport: 53, payload: []byte("hi")}.skb())
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("receiver not woken")
		}
	})

	t.Run("deadline on the stack clock", func(t *testing.T) {
		s.SetReadDeadline(clk.Now().Add(time.Second))
		done := make(chan error, 1)
		go func() {
			_, _, err := s.RecvFrom(make([]byte, 10))
			done <- err
		}()
		waitFor(t, "the deadline timer to be armed", func() bool { return clk.Pending() > 0 })
		clk.Advance(999 * time.Millisecond)
		select {
		case err := <-done:
			t.Fatalf("returned before the deadline: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		clk.Advance(time.Millisecond)
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("err %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("deadline did not wake the receiver")
		}
		// A passed deadline fails at once.
		if _, _, err := s.RecvFrom(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
		s.SetReadDeadline(time.Time{})
	})

	t.Run("close wakes and frees", func(t *testing.T) {
		s2 := bindSock(t, p, "0.0.0.0:54")
		p.V4Rcv(datagram{src: peer, dst: local, sport: 1, dport: 54, payload: []byte("queued")}.skb())
		s3 := bindSock(t, p, "0.0.0.0:55")
		done := make(chan error, 1)
		go func() {
			_, _, err := s3.RecvFrom(make([]byte, 10))
			done <- err
		}()
		time.Sleep(10 * time.Millisecond)
		s3.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("err %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("close did not wake the receiver")
		}
		s2.Close()
		if n, b := s2.Queued(); n != 0 || b != 0 {
			t.Fatalf("close left %d datagrams (%d bytes)", n, b)
		}
	})
}

// TestReceivePathAllocs: V4Rcv → queue → RecvMsg allocates nothing once
// the pools are warm.
func TestReceivePathAllocs(t *testing.T) {
	p, _ := newProto(t, Config{})
	s := bindSock(t, p, "0.0.0.0:53")
	d := datagram{src: peer, dst: local, sport: 1, dport: 53, payload: make([]byte, 512)}
	frame := d.skb()
	raw := append([]byte(nil), frame.NetworkHeader()...)
	frame.Consume()
	b := make([]byte, 2048)
	allocs := testing.AllocsPerRun(1000, func() {
		skb := buf.FromBytes(buf.MaxHeadroom, raw)
		skb.SetNetworkHeader()
		skb.Pull(header.IPv4MinSize)
		p.V4Rcv(skb)
		if n, _, err := s.RecvMsg(b, MsgDontWait); err != nil || n != 512 {
			t.Fatalf("recv %d %v", n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per datagram", allocs)
	}
}

func FuzzV4Rcv(f *testing.F) {
	f.Add(datagram{src: peer, dst: local, sport: 1, dport: 53, payload: []byte("seed")}.skb().Bytes())
	f.Add([]byte{0, 1, 0, 53, 0, 8, 0, 0})
	f.Add([]byte{0, 1, 0, 54, 0, 9, 0, 0, 1})
	p, _ := newProto(f, Config{})
	s := bindSock(f, p, "0.0.0.0:53")
	ip := make([]byte, header.IPv4MinSize)
	header.IPv4(ip).Encode(header.IPv4Fields{TTL: 64, Protocol: header.ProtoUDP, Src: peer, Dst: local, TotalLen: 20})
	f.Fuzz(func(t *testing.T, b []byte) {
		skb := buf.FromBytes(buf.MaxHeadroom, append(append([]byte(nil), ip...), b...))
		skb.SetNetworkHeader()
		skb.Pull(header.IPv4MinSize)
		p.V4Rcv(skb)
		for {
			if _, _, err := s.RecvMsg(make([]byte, 100), MsgDontWait); err != nil {
				break
			}
		}
	})
}

func BenchmarkV4RcvRecv(b *testing.B) {
	p, _ := newProto(b, Config{})
	s := bindSock(b, p, "0.0.0.0:53")
	frame := datagram{src: peer, dst: local, sport: 1, dport: 53, payload: make([]byte, 512)}.skb()
	raw := append([]byte(nil), frame.NetworkHeader()...)
	frame.Consume()
	out := make([]byte, 2048)
	b.ReportAllocs()
	b.SetBytes(512)
	for i := 0; i < b.N; i++ {
		skb := buf.FromBytes(buf.MaxHeadroom, raw)
		skb.SetNetworkHeader()
		skb.Pull(header.IPv4MinSize)
		p.V4Rcv(skb)
		if _, _, err := s.RecvMsg(out, MsgDontWait); err != nil {
			b.Fatal(err)
		}
	}
}
