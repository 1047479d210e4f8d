package netfilter

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// defrag6 reassembles IPv6 fragments at PREROUTING before conntrack
// (nf_defrag_ipv6 → nf_ct_frag6_gather), so that tracking, NAT and DIVERT
// see the upper-layer header of every packet. As defrag does for IPv4:
// fragments are kept (Stolen) until the last one arrives, which becomes
// the whole packet and continues. RFC 8200 §4.5: keyed by (source,
// destination, identification); the unfragmentable part is the offset-
// zero fragment's, its last Next Header the Fragment header's. Atomic
// fragments (RFC 6946) pass untouched. An overlap (RFC 5722) discards the
// queue; an exact duplicate is dropped alone.
//
// Bounds: memLimit bytes held over all queues (a fragment past it is
// dropped), maxFragsPerDatagram per queue, timeout per queue.
type defrag6 struct {
	nf       *Netfilter
	timeout  time.Duration
	memLimit int

	mu  sync.Mutex
	mem int
	qs  map[frag6Key]*frag6Queue

	reqds, oks, fails, timeouts atomic.Uint64
}

type frag6Key struct {
	src, dst netip.Addr
	id       uint32
}

type frag6Queue struct {
	key   frag6Key
	frags []frag6
	total int // length of the fragmentable part once M=0 came, else -1
	mem   int
	timer *clock.Timer
}

// frag6 is one fragment: skb's bytes are the whole fragment packet, its
// Fragment header at fhoff, the Next Header byte naming it at nhoff.
type frag6 struct {
	skb          *buf.SKB
	off, end     int
	fhoff, nhoff int
}

func (d *defrag6) init(nf *Netfilter, timeout time.Duration, mem int) {
	if timeout <= 0 {
		// nf_conntrack_frag6_timeout, RFC 8200 §4.5's 60 seconds.
		timeout = 60 * time.Second
	}
	if mem <= 0 {
		mem = defaultDefragMem
	}
	d.nf, d.timeout, d.memLimit, d.qs = nf, timeout, mem, map[frag6Key]*frag6Queue{}
}

func (d *defrag6) stats() (reqds, oks, fails, timeouts uint64) {
	return d.reqds.Load(), d.oks.Load(), d.fails.Load(), d.timeouts.Load()
}

// findFragment walks the headers before a Fragment header: it returns the
// Fragment header's offset and the offset of the Next Header byte naming
// it, or ok false when the packet has none.
func findFragment(b []byte) (fhoff, nhoff int, ok bool) {
	nh := header.IPv6(b).NextHeader()
	off, nhoff := header.IPv6MinSize, header.IPv6NextHeaderOffset
	for i := 0; i < header.MaxIPv6ExtHeaders; i++ {
		switch nh {
		case header.ProtoFragment:
			return off, nhoff, off+header.IPv6FragmentSize <= len(b)
		case header.ProtoHopByHop, header.ProtoRouting, header.ProtoDestOpts, header.ProtoAH:
			n, err := header.IPv6ExtHeaderLen(nh, b[off:])
			if err != nil {
				return 0, 0, false
			}
			nh, nhoff, off = b[off], off, off+n
		default:
			return 0, 0, false
		}
	}
	return 0, 0, false
}

func (nf *Netfilter) defrag6Hook(skb *buf.SKB, st *State) Verdict {
	ip, err := header.CheckIPv6(skb.Bytes())
	if err != nil {
		return Accept() // the IPv6 layer counted it already
	}
	b := skb.Bytes()[:ip.TotalLen()]
	fhoff, nhoff, ok := findFragment(b)
	if !ok || header.IPv6Fragment(b[fhoff:]).IsAtomic() {
		return Accept()
	}
	return nf.frag6.add(skb, fhoff, nhoff)
}

// add queues a fragment; it returns Stolen while the packet is
// incomplete, Accept when skb now holds the whole packet, or Drop.
func (d *defrag6) add(skb *buf.SKB, fhoff, nhoff int) Verdict {
	d.reqds.Add(1)
	b := skb.Bytes()
	ip := header.IPv6(b)
	b = b[:ip.TotalLen()]
	fh := header.IPv6Fragment(b[fhoff:])
	dataOff := fhoff + header.IPv6FragmentSize
	off := fh.FragOffset()
	end := off + len(b) - dataOff
	if fhoff-header.IPv6MinSize+end > header.IPv6MaxPayload {
		d.fails.Add(1)
		return Drop(DropDefragTooBig)
	}
	// RFC 8200 §4.5: every fragment but the last carries a multiple of 8.
	if fh.More() && (end-off)%8 != 0 || end == off {
		d.fails.Add(1)
		return Drop(DropDefragMalform)
	}
	key := frag6Key{src: ip.Src(), dst: ip.Dst(), id: fh.ID()}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mem+skb.Len() > d.memLimit {
		d.fails.Add(1)
		return Drop(DropDefragMem)
	}
	q := d.qs[key]
	if q == nil {
		q = &frag6Queue{key: key, total: -1}
		q.timer = d.nf.clk.NewTimer(func() { d.expire(q) })
		q.timer.Reset(d.timeout)
		d.qs[key] = q
	}
	if !fh.More() {
		if q.total >= 0 && q.total != end {
			d.killLocked(q, DropDefragOverlap)
			return Drop(DropDefragOverlap)
		}
		q.total = end
	}
	for _, f := range q.frags {
		if f.off == off && f.end == end {
			d.fails.Add(1)
			return Drop(DropDefragDup)
		}
		if off < f.end && f.off < end || q.total >= 0 && f.end > q.total {
			d.killLocked(q, DropDefragOverlap)
			return Drop(DropDefragOverlap)
		}
	}
	if len(q.frags) >= maxFragsPerDatagram {
		d.killLocked(q, DropDefragTooMany)
		return Drop(DropDefragTooMany)
	}
	if q.total < 0 || !q.complete(off, end) {
		skb.Trim(len(b))
		q.frags = append(q.frags, frag6{skb: skb, off: off, end: end, fhoff: fhoff, nhoff: nhoff})
		q.mem += skb.Len()
		d.mem += skb.Len()
		return Stolen()
	}
	// Complete: skb becomes the packet (nf_ct_frag6_reasm).
	cur := skb.Copy()
	cur.Trim(len(b))
	q.frags = append(q.frags, frag6{skb: cur, off: off, end: end, fhoff: fhoff, nhoff: nhoff})
	sort.Slice(q.frags, func(i, j int) bool { return q.frags[i].off < q.frags[j].off })
	first := q.frags[0]
	fb := first.skb.Bytes()
	unfrag := first.fhoff
	var mac [header.EthernetMinSize]byte
	macLen := 0
	if mh := skb.MACHeader(); len(mh)-skb.Len() >= header.EthernetMinSize {
		macLen = copy(mac[:], mh)
	}
	skb.Trim(0)
	out := skb.Put(unfrag + q.total)
	if mh := skb.MACHeader(); macLen > 0 && len(mh) >= macLen {
		copy(mh, mac[:macLen])
	}
	copy(out, fb[:unfrag])
	out[first.nhoff] = header.IPv6Fragment(fb[first.fhoff:]).NextHeader()
	for _, f := range q.frags {
		data := f.skb.Bytes()[f.fhoff+header.IPv6FragmentSize:]
		copy(out[unfrag+f.off:], data[:f.end-f.off])
	}
	header.IPv6(out).SetPayloadLen(unfrag + q.total - header.IPv6MinSize)
	maxLen := 0
	for _, f := range q.frags {
		maxLen = max(maxLen, f.skb.Len())
	}
	setFragMaxSize(skb, maxLen)
	skb.SetNetworkHeader()
	skb.Csum = buf.CsumNone
	skb.GSOSize = 0
	d.freeLocked(q)
	d.oks.Add(1)
	return Accept()
}

// skb.CB[cbFragMax:cbFragMax+3] holds the largest fragment of a packet
// defrag6 reassembled (IP6CB(skb)->frag_max_size: in the IP layer's half
// of CB, below netfilter's conntrack reference, as in the kernel; ipv6
// leaves these bytes alone): a router that forwards the packet may
// fragment it again to that size (and sends Packet Too Big when even that
// exceeds the next link), so reassembly for conntrack changes nothing on
// the wire.
const cbFragMax = 12

func setFragMaxSize(skb *buf.SKB, n int) {
	skb.CB[cbFragMax], skb.CB[cbFragMax+1], skb.CB[cbFragMax+2] = 0xf6, byte(n>>8), byte(n)
}

// FragMaxSize is the size of the largest fragment skb was reassembled
// from at PREROUTING, 0 when it was not.
func FragMaxSize(skb *buf.SKB) int {
	if skb.CB[cbFragMax] != 0xf6 {
		return 0
	}
	return int(skb.CB[cbFragMax+1])<<8 | int(skb.CB[cbFragMax+2])
}

// complete reports whether adding [off, end) fills [0, total).
func (q *frag6Queue) complete(off, end int) bool {
	n := end - off
	for _, f := range q.frags {
		n += f.end - f.off
	}
	return n == q.total
}

func (d *defrag6) freeLocked(q *frag6Queue) {
	q.timer.Stop()
	for _, f := range q.frags {
		f.skb.Consume()
	}
	d.mem -= q.mem
	q.frags, q.mem = nil, 0
	if d.qs[q.key] == q {
		delete(d.qs, q.key)
	}
}

func (d *defrag6) killLocked(q *frag6Queue, reason buf.DropReason) {
	q.timer.Stop()
	for _, f := range q.frags {
		f.skb.Free(reason)
	}
	d.mem -= q.mem
	q.frags, q.mem = nil, 0
	delete(d.qs, q.key)
	d.fails.Add(1)
}

func (d *defrag6) expire(q *frag6Queue) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.qs[q.key] != q {
		return
	}
	d.timeouts.Add(1)
	d.killLocked(q, DropDefragTimeout)
}
