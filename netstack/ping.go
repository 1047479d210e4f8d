package netstack

import (
	"context"
	"crypto/rand"
	"encoding/binary"
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

// pinger is a minimal ICMP echo client, the part of a ping socket
// (net/ipv4/ping.c) that Ping needs: each Ping takes a fresh identifier,
// waits for the echo reply with that identifier and sequence, and hears
// of ICMP errors quoting its request.
type pinger struct {
	s      *Stack
	mu     sync.Mutex
	nextID uint16
	waits  map[echoKey]chan echoResult // bound: maxPingsInFlight
	closed bool
}

type echoKey struct{ id, seq uint16 }

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

// Ping sends one ICMP echo request (RFC 792) to dst with seq and payload
// and waits for the reply until ctx is done. It returns the round-trip
// time on the stack's clock, the errno of an ICMP error quoting the
// request (EHOSTUNREACH for time exceeded, as icmp_err_convert), or the
// routing error.
func (s *Stack) Ping(ctx context.Context, dst netip.Addr, seq uint16, payload []byte) (time.Duration, error) {
	if !dst.Is4() {
		return 0, syscall.EAFNOSUPPORT
	}
	if len(payload) > 0xffff-header.IPv4MinSize-header.ICMPv4MinSize {
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
	k := echoKey{p.nextID, seq}
	p.waits[k] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.waits, k)
		p.mu.Unlock()
	}()

	n := header.ICMPv4MinSize + len(payload)
	skb := buf.Alloc(buf.MaxHeadroom, n)
	m := header.ICMPv4(skb.Put(n))
	m.Encode(header.ICMPv4Fields{Type: header.ICMPv4Echo, RestOfHeader: header.EchoRest(k.id, k.seq)})
	copy(m[header.ICMPv4MinSize:], payload)
	m.SetChecksum()
	start := s.clk.Now()
	if err := s.ip.QueueXmit(skb, route.Flow{Dst: dst, Proto: header.ProtoICMP}); err != nil {
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

// rcv takes echo replies and other informational ICMP that ipv4 does not
// answer itself. It consumes skb, whose bytes start at the ICMP header.
func (p *pinger) rcv(skb *buf.SKB) {
	b := skb.Bytes()
	if len(b) < header.ICMPv4MinSize || b[0] != header.ICMPv4EchoReply {
		skb.Free(DropNoPingWaiter)
		return
	}
	m := header.ICMPv4(b)
	if !p.deliver(echoKey{m.ID(), m.Seq()}, echoResult{at: p.s.clk.Now()}) {
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
	p.deliver(echoKey{m.ID(), m.Seq()}, echoResult{err: e.Errno})
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
