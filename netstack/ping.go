package netstack

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// maxPingsInFlight bounds the echo requests awaiting a reply; Ping past
// it fails with ENOBUFS.
const maxPingsInFlight = 256

// DropNoPingWaiter counts echo replies nobody waits for (ping_rcv finding
// no socket).
var DropNoPingWaiter = buf.NewDropReason("NO_SOCKET")

// pinger is a minimal ICMP and ICMPv6 echo client, the part of a ping
// socket (net/ipv4/ping.c, net/ipv6/ping.c) that Ping needs: each Ping takes a fresh identifier,
// waits for the echo reply with that identifier and sequence, and hears
// of ICMP errors quoting its request.
type pinger struct {
	s      *Stack
	mu     sync.Mutex
	nextID uint16
	waits  map[echoKey]chan echoResult // bound: maxPingsInFlight
	closed bool
}

// echoKey names one echo request: identifier, sequence and family
// (ICMP and ICMPv6 identifiers are separate spaces).
type echoKey struct {
	id, seq uint16
	v6      bool
}

type echoResult struct {
	err error
	at  time.Time
}

func (p *pinger) init(s *Stack) {
	p.s = s
	p.waits = map[echoKey]chan echoResult{}
	var b [2]byte
	_, _ = rand.Read(b[:]) // identifiers start at a random value, like ping's
	p.nextID = binary.BigEndian.Uint16(b[:])
}

// Ping sends one echo request to dst with seq and payload and waits for
// the reply until ctx is done: ICMP (RFC 792) for an IPv4 dst, ICMPv6
// (RFC 4443 §4.1) for an IPv6 one (a link-local dst names its NIC with
// a zone, "fe80::1%eth0"). It returns the round-trip time on the stack's
// clock, the errno of an ICMP or ICMPv6 error quoting the request
// (EHOSTUNREACH for time exceeded, as icmp_err_convert and
// icmpv6_err_convert), or the routing error.
func (s *Stack) Ping(ctx context.Context, dst netip.Addr, seq uint16, payload []byte) (time.Duration, error) {
	v6 := dst.Is6() && !dst.Is4In6()
	if !v6 && !dst.Is4() {
		return 0, syscall.EAFNOSUPPORT
	}
	hdr := header.IPv4MinSize
	if v6 {
		hdr = 0 // the ICMPv6 message is the payload length
	}
	if len(payload) > 0xffff-hdr-header.ICMPv4MinSize {
		return 0, syscall.EMSGSIZE
	}
	p := &s.ping
	ch := make(chan echoResult, 1)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return 0, ErrClosed
	}
	if len(p.waits) >= maxPingsInFlight {
		p.mu.Unlock()
		return 0, syscall.ENOBUFS
	}
	p.nextID++
	k := echoKey{p.nextID, seq, v6}
	p.waits[k] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.waits, k)
		p.mu.Unlock()
	}()

	start := s.clk.Now()
	var err error
	if v6 {
		err = s.sendEcho6(dst, k, payload)
	} else {
		n := header.ICMPv4MinSize + len(payload)
		skb := buf.Alloc(buf.MaxHeadroom, n)
		m := header.ICMPv4(skb.Put(n))
		m.Encode(header.ICMPv4Fields{Type: header.ICMPv4Echo, RestOfHeader: header.EchoRest(k.id, k.seq)})
		copy(m[header.ICMPv4MinSize:], payload)
		m.SetChecksum()
		err = s.ip.QueueXmit(skb, route.Flow{Dst: dst, Proto: header.ProtoICMP})
	}
	if err != nil {
		return 0, err
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return 0, r.err
		}
		return r.at.Sub(start), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// sendEcho6 sends an ICMPv6 Echo Request: routed first, since the
// checksum covers the source address (RFC 4443 §2.3).
func (s *Stack) sendEcho6(dst netip.Addr, k echoKey, payload []byte) error {
	fl := route.Flow{Dst: dst.WithZone(""), Proto: header.ProtoICMPv6}
	if z := dst.Zone(); z != "" {
		nic := s.devs.ByName(z)
		if nic == nil {
			return fmt.Errorf("netstack: zone %q: %w", z, syscall.ENODEV)
		}
		fl.NIC = nic.ID()
	}
	res, err := s.ip6.RouteOutput(fl)
	if err != nil {
		return err
	}
	fl.Src = res.Src
	n := header.ICMPv6MinSize + len(payload)
	skb := buf.Alloc(buf.MaxHeadroom, n)
	m := header.ICMPv6(skb.Put(n))
	m.Encode(header.ICMPv6Fields{Type: header.ICMPv6EchoRequest, RestOfHeader: header.EchoRest(k.id, k.seq)})
	copy(m[header.ICMPv6MinSize:], payload)
	m.SetChecksum(fl.Src, fl.Dst)
	return s.ip6.QueueXmit(skb, fl)
}

// rcv takes echo replies and other informational ICMP that ipv4 does not
// answer itself. It consumes skb, whose bytes start at the ICMP header.
func (p *pinger) rcv(skb *buf.SKB) {
	b := skb.Bytes()
	if len(b) < header.ICMPv4MinSize || b[0] != header.ICMPv4EchoReply {
		skb.Free(DropNoPingWaiter)
		return
	}
	m := header.ICMPv4(b)
	if !p.deliver(echoKey{m.ID(), m.Seq(), false}, echoResult{at: p.s.clk.Now()}) {
		skb.Free(DropNoPingWaiter)
		return
	}
	skb.Consume()
}

// err hears of ICMP errors quoting an ICMP message: skb.Bytes() starts at
// the quoted IPv4 header, with at least 8 bytes of the quoted ICMP
// header after it. It does not consume skb.
func (p *pinger) err(skb *buf.SKB, e header.ICMPError) {
	b := skb.Bytes()
	if len(b) < header.IPv4MinSize {
		return
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < header.IPv4MinSize || len(b) < ihl+header.ICMPv4MinSize || b[ihl] != header.ICMPv4Echo {
		return
	}
	m := header.ICMPv4(b[ihl:])
	p.deliver(echoKey{m.ID(), m.Seq(), false}, echoResult{err: e.Errno})
}

// rcv6 takes ICMPv6 echo replies (the part of a ping6 socket Ping
// needs). It consumes skb, whose bytes start at the ICMPv6 header.
func (p *pinger) rcv6(skb *buf.SKB) {
	b := skb.Bytes()
	if len(b) < header.ICMPv6MinSize || b[0] != header.ICMPv6EchoReply {
		skb.Free(DropNoPingWaiter)
		return
	}
	m := header.ICMPv6(b)
	if !p.deliver(echoKey{m.ID(), m.Seq(), true}, echoResult{at: p.s.clk.Now()}) {
		skb.Free(DropNoPingWaiter)
		return
	}
	skb.Consume()
}

// err6 hears of ICMPv6 errors quoting an ICMPv6 message: skb's transport
// header is the quoted one. It does not consume skb.
func (p *pinger) err6(skb *buf.SKB, e header.ICMPError) {
	th := skb.TransportHeader()
	if len(th) < header.ICMPv6MinSize || th[0] != header.ICMPv6EchoRequest {
		return
	}
	m := header.ICMPv6(th)
	p.deliver(echoKey{m.ID(), m.Seq(), true}, echoResult{err: e.Errno})
}

func (p *pinger) deliver(k echoKey, r echoResult) bool {
	p.mu.Lock()
	ch, ok := p.waits[k]
	if ok {
		delete(p.waits, k)
	}
	p.mu.Unlock()
	if ok {
		ch <- r // buffered, and removed from the map: never blocks
	}
	return ok
}

func (p *pinger) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for k, ch := range p.waits {
		delete(p.waits, k)
		ch <- echoResult{err: ErrClosed}
	}
}
