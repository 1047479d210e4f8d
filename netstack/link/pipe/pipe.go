// Package pipe owns an in-memory, back-to-back pair of link endpoints for
// tests: what one side writes, the other reads, like a veth pair without a
// kernel (drivers/net/veth.c, veth_xmit → veth_forward_skb).
//
// Theory of operation: each direction has a receive queue on the reading
// side. WriteBatch copies each frame into a fresh pooled SKB and appends it
// to the peer's queue; ReadBatch blocks until the queue holds at least one
// frame or the pair is closed. The copy (no allocation: the storage is
// pooled) is deliberate: it gives the receiver a private block with
// buf.MaxHeadroom free for forwarding to push headers again, no header
// offsets, CB, InNIC or Drops of the sender, and no storage shared with a
// clone a sender-side tap may still hold.
//
// Limits: each receive queue holds at most QueueLen frames (default
// DefaultQueueLen). A frame that finds the peer's queue full is freed with
// DropPipeQueueFull and counted on the sender, as veth drops when the
// peer's ring is full: a link loses frames, it never blocks the writer.
// Frames longer than MTU+14 (unless GSO is negotiated) are freed with
// DropPipeTooBig, frames shorter than an Ethernet header with DropPipeRunt.
//
// Offload metadata crosses the wire only when both ends agree: checksum
// state (Csum, CsumOffset and the transport header it is relative to) when the sender advertises
// link.CapTxChecksumPartial and the receiver link.CapRxChecksum; GSO fields
// when the sender advertises link.CapGSO and the receiver link.CapGRO.
//
// Lock order: one mutex per pair guards both queues and the closed flag.
//
// Not owned here: loss, reordering or delay (link/fault), capture
// (link/pcap), what frames mean (dev).
package pipe

import (
	"sync"
	"sync/atomic"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// DefaultQueueLen is the receive queue bound per direction, in frames.
const DefaultQueueLen = 1024

// ethHdrLen is the Ethernet header the MTU excludes.
const ethHdrLen = 14

// Drop reasons of the pipe.
var (
	// DropPipeQueueFull: the peer's receive queue held QueueLen frames.
	DropPipeQueueFull = buf.NewDropReason("PIPE_QUEUE_FULL")
	// DropPipeTooBig: the frame exceeded MTU+14 and was not a negotiated GSO packet.
	DropPipeTooBig = buf.NewDropReason("PIPE_TOO_BIG")
	// DropPipeRunt: the frame was shorter than an Ethernet header.
	DropPipeRunt = buf.NewDropReason("PIPE_RUNT")
	// DropPipeClosed: the frame was queued when the pair closed.
	DropPipeClosed = buf.NewDropReason("PIPE_CLOSED")
)

// Option configures New.
type Option func(*config)

type config struct {
	capsA, capsB link.Caps
	queueLen     int
}

// WithCaps sets the offloads both ends advertise.
func WithCaps(c link.Caps) Option {
	return func(cf *config) { cf.capsA, cf.capsB = c, c }
}

// WithCapsEach sets the offloads of end a and end b separately.
func WithCapsEach(a, b link.Caps) Option {
	return func(cf *config) { cf.capsA, cf.capsB = a, b }
}

// WithQueueLen sets the receive queue bound per direction (frames, >= 1).
func WithQueueLen(n int) Option {
	return func(cf *config) {
		if n >= 1 {
			cf.queueLen = n
		}
	}
}

// pair is the state both ends share.
type pair struct {
	mu     sync.Mutex
	closed bool
}

// Endpoint is one end of a pipe. It implements link.Endpoint.
type Endpoint struct {
	p    *pair
	peer *Endpoint
	mtu  int
	caps link.Caps

	// rxq is this end's receive queue, guarded by p.mu. Bound: queueLen;
	// overflow is the sender's DropPipeQueueFull.
	rxq      buf.Queue
	queueLen int
	rxReady  *sync.Cond // signalled on enqueue and on close

	txPackets, txBytes, txDropped atomic.Uint64
	rxPackets, rxBytes            atomic.Uint64
	drops                         buf.DropStats
}

// New returns a connected pair with the given MTU (frame payload, without
// the 14-byte Ethernet header).
func New(mtu int, opts ...Option) (a, b *Endpoint) {
	cf := config{queueLen: DefaultQueueLen}
	for _, o := range opts {
		o(&cf)
	}
	p := &pair{}
	a = &Endpoint{p: p, mtu: mtu, caps: cf.capsA, queueLen: cf.queueLen, rxReady: sync.NewCond(&p.mu)}
	b = &Endpoint{p: p, mtu: mtu, caps: cf.capsB, queueLen: cf.queueLen, rxReady: sync.NewCond(&p.mu)}
	a.peer, b.peer = b, a
	return a, b
}

// Peer is the other end.
func (e *Endpoint) Peer() *Endpoint { return e.peer }

// MTU is the largest frame payload.
func (e *Endpoint) MTU() int { return e.mtu }

// Caps are the offloads this end advertises.
func (e *Endpoint) Caps() link.Caps { return e.caps }

// ReadBatch blocks until at least one frame is queued, then moves up to
// len(pkts) frames into pkts; the caller owns them. After Close it returns
// link.ErrClosed.
func (e *Endpoint) ReadBatch(pkts []*buf.SKB) (int, error) {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for e.rxq.Len() == 0 && !p.closed {
		e.rxReady.Wait()
	}
	if p.closed {
		return 0, link.ErrClosed
	}
	n := 0
	for n < len(pkts) {
		s := e.rxq.PopFront()
		if s == nil {
			break
		}
		e.rxPackets.Add(1)
		e.rxBytes.Add(uint64(s.Len()))
		pkts[n] = s
		n++
	}
	return n, nil
}

// WriteBatch consumes every frame in pkts: n were queued to the peer, the
// rest were freed with a drop reason and counted on this end. It returns
// link.ErrClosed after Close.
func (e *Endpoint) WriteBatch(pkts []*buf.SKB) (int, error) {
	p := e.p
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		for _, s := range pkts {
			e.drop(s, link.DropTxClosed)
		}
		return 0, link.ErrClosed
	}
	peer := e.peer
	n := 0
	// Frees happen under p.mu: Free only bumps atomic counters and returns
	// storage to its pool, it never calls out.
	for i, s := range pkts {
		pkts[i] = nil
		r, ok := e.check(s, peer)
		if ok && peer.rxq.Len() >= peer.queueLen {
			r, ok = DropPipeQueueFull, false
		}
		if !ok {
			e.drop(s, r)
			continue
		}
		c := e.transfer(s, peer)
		peer.rxq.PushBack(c)
		e.txPackets.Add(1)
		e.txBytes.Add(uint64(c.Len()))
		n++
	}
	if n > 0 {
		peer.rxReady.Broadcast()
	}
	p.mu.Unlock()
	return n, nil
}

// check validates s for the wire to peer.
func (e *Endpoint) check(s *buf.SKB, peer *Endpoint) (buf.DropReason, bool) {
	l := s.Len()
	if l < ethHdrLen {
		return DropPipeRunt, false
	}
	gso := s.GSOSize != 0 && e.caps.Has(link.CapGSO) && peer.caps.Has(link.CapGRO)
	if l > e.mtu+ethHdrLen && !gso {
		return DropPipeTooBig, false
	}
	return 0, true
}

// transfer consumes s and returns the receiver's SKB: a private copy with
// fresh headroom and only the negotiated offload metadata.
func (e *Endpoint) transfer(s *buf.SKB, peer *Endpoint) *buf.SKB {
	c := buf.FromBytes(buf.MaxHeadroom, s.Bytes())
	c.SetMACHeader()
	if e.caps.Has(link.CapTxChecksumPartial) && peer.caps.Has(link.CapRxChecksum) {
		c.Csum, c.CsumOffset = s.Csum, s.CsumOffset
		if off := s.TransportOffset(); s.TransportHeader() != nil && off >= 0 {
			c.SetTransportHeaderAt(off)
		}
	}
	if s.GSOSize != 0 && e.caps.Has(link.CapGSO) && peer.caps.Has(link.CapGRO) {
		c.GSOSize, c.GSOType = s.GSOSize, s.GSOType
	}
	s.Consume()
	return c
}

func (e *Endpoint) drop(s *buf.SKB, r buf.DropReason) {
	e.txDropped.Add(1)
	e.drops.Add(r)
	s.Free(r)
}

// Close closes both ends: queued frames are freed with DropPipeClosed,
// blocked readers return link.ErrClosed. Safe to call more than once.
func (e *Endpoint) Close() error {
	p := e.p
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	qa, qb := e.rxq.TakeAll(), e.peer.rxq.TakeAll()
	e.rxReady.Broadcast()
	e.peer.rxReady.Broadcast()
	p.mu.Unlock()
	for _, ep := range []struct {
		e *Endpoint
		q *buf.Queue
	}{{e, &qa}, {e.peer, &qb}} {
		for s := ep.q.PopFront(); s != nil; s = ep.q.PopFront() {
			ep.e.drops.Add(DropPipeClosed)
			s.Free(DropPipeClosed)
		}
	}
	return nil
}

// Stats are one end's counters (the veth's ip -s link).
type Stats struct {
	TxPackets, TxBytes uint64 // frames queued to the peer
	TxDropped          uint64 // frames this end freed instead of sending
	RxPackets, RxBytes uint64 // frames handed to ReadBatch callers
	RxQueued           int    // frames waiting in this end's receive queue
	Drops              map[string]uint64
}

// Stats returns a snapshot of this end's counters.
func (e *Endpoint) Stats() Stats {
	e.p.mu.Lock()
	q := e.rxq.Len()
	e.p.mu.Unlock()
	return Stats{
		TxPackets: e.txPackets.Load(), TxBytes: e.txBytes.Load(), TxDropped: e.txDropped.Load(),
		RxPackets: e.rxPackets.Load(), RxBytes: e.rxBytes.Load(), RxQueued: q,
		Drops: e.drops.Snapshot(),
	}
}

// Queued is the number of frames waiting in this end's receive queue: a
// ReadBatch now would not block when it is non-zero.
func (e *Endpoint) Queued() int {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	return e.rxq.Len()
}

// Drops is this end's drop counter by reason.
func (e *Endpoint) Drops() *buf.DropStats { return &e.drops }

var _ link.Endpoint = (*Endpoint)(nil)
