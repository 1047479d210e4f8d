package ipv6

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Bounds of reassembly (net/ipv6/reassembly.c, inet_frag).
const (
	// maxFragsPerQueue bounds the fragments of one packet. The largest
	// packet (65535 bytes of payload) cut at the minimum MTU is 54
	// fragments; 256 leaves room for smaller pieces, more is an attack.
	maxFragsPerQueue = 256
	// maxFragQueues bounds the packets under reassembly at once; a new
	// one beyond it evicts the oldest (each counted ReasmFails).
	maxFragQueues = 1024
)

// fragKey identifies a packet: RFC 8200 §4.5: "An original packet is
// identified by the combination of its Source Address, Destination
// Address, and Fragment Identification".
type fragKey struct {
	src, dst netip.Addr
	id       uint32
}

// frag is one fragment: skb's bytes are the whole fragment packet; its
// data (after the Fragment header at dataOff-8) covers [off, end) of the
// fragmentable part.
type frag struct {
	skb      *buf.SKB
	off, end int
	dataOff  int
}

// fragQueue is one packet under reassembly (struct frag_queue).
type fragQueue struct {
	key   fragKey
	frags []frag // sorted by off, disjoint; bound maxFragsPerQueue
	total int    // length of the fragmentable part, -1 until M=0 arrived
	have  int
	mem   int
	// first is the offset-zero fragment; its unfragmentable part (up to
	// fhoff, with the Next Header byte at nhoff) heads the result.
	first        *buf.SKB
	fhoff, nhoff int
	timer        *clock.Timer
	// dropped marks a packet discarded for overlapping fragments: RFC
	// 5722 §4: "the entire datagram (and any constituent fragments,
	// including those not yet received) MUST be silently discarded". The
	// queue stays, holding no buffers, until its timeout, so fragments
	// still to come are discarded too.
	dropped bool
	dead    bool

	prev, next *fragQueue // age list, oldest first
}

// reassembler is ipv6_frag_rcv's state. Bounds: memLimit bytes of
// fragment buffers over all queues (a fragment past it evicts the oldest
// packets, possibly its own, each ReasmFails), maxFragQueues packets,
// maxFragsPerQueue fragments each, and RFC 8200 §4.5's 65535-byte
// payload. Every queue dies after timeout (60 s).
type reassembler struct {
	l        *Layer
	timeout  time.Duration
	memLimit int

	mu             sync.Mutex
	mem            int
	queues         map[fragKey]*fragQueue
	oldest, newest *fragQueue
}

func (r *reassembler) init(l *Layer, timeout time.Duration, memLimit int) {
	r.l, r.timeout, r.memLimit = l, timeout, memLimit
	r.queues = map[fragKey]*fragQueue{}
}

func truesize(skb *buf.SKB) int { return skb.Headroom() + skb.Len() + skb.Tailroom() }

// upperMinLen is how much of an upper-layer header a first fragment must
// hold to carry "the entire IPv6 Header Chain" (RFC 7112 §5; Linux's
// ipv6frag_thdr_truncated uses the same sizes).
func upperMinLen(proto uint8) int {
	switch proto {
	case header.ProtoTCP:
		return header.TCPMinSize
	case header.ProtoUDP:
		return header.UDPSize
	case header.ProtoICMPv6:
		return header.ICMPv6MinSize
	}
	return 0
}

// add is ipv6_frag_rcv: queue the fragment skb (bytes from the IPv6
// header, its Fragment header at fhoff, the Next Header byte naming it at
// nhoff) and return the reassembled packet when it completes, else nil.
// It consumes skb.
func (r *reassembler) add(skb *buf.SKB, fhoff, nhoff int) *buf.SKB {
	l := r.l
	b := skb.Bytes()
	h := header.IPv6(b)
	fh := header.IPv6Fragment(b[fhoff:])
	dataOff := fhoff + header.IPv6FragmentSize
	off := fh.FragOffset()
	end := off + len(b) - dataOff
	more := fh.More()
	// RFC 8200 §4.5: "If the length of a fragment, as derived from the
	// fragment packet's Payload Length field, is not a multiple of 8
	// octets and the M flag of that fragment is 1, then that fragment
	// must be discarded and an ICMP Parameter Problem, Code 0, message
	// should be sent to the source of the fragment, pointing to the
	// Payload Length field of the fragment packet."
	if more && (end-off)%8 != 0 {
		l.count(InHdrErrors)
		l.count(ReasmFails)
		l.SendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6ErroneousHeader, header.IPv6PayloadLenOffset)
		skb.Free(DropFragBad)
		return nil
	}
	// "If the length and offset of a fragment are such that the Payload
	// Length of the packet reassembled from that fragment would exceed
	// 65,535 octets, then that fragment must be discarded and an ICMP
	// Parameter Problem, Code 0, message should be sent to the source of
	// the fragment, pointing to the Fragment Offset field".
	if fhoff-header.IPv6MinSize+end > header.IPv6MaxPayload {
		l.count(InHdrErrors)
		l.count(ReasmFails)
		l.SendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6ErroneousHeader, uint32(fhoff+header.IPv6FragOffsetOffset))
		skb.Free(DropFragTooFar)
		return nil
	}
	// RFC 8200 §4.5 (RFC 7112 §5): "If the first fragment does not
	// include all headers through an Upper-Layer header, then that
	// fragment should be discarded and an ICMP Parameter Problem, Code 3,
	// message should be sent to the source of the fragment, with the
	// Pointer field set to zero."
	if off == 0 && !headerChainComplete(b[dataOff:], fh.NextHeader()) {
		l.count(InDiscards)
		l.count(ReasmFails)
		l.SendICMPError(skb, header.ICMPv6ParamProblem, header.ICMPv6IncompleteHdrChain, 0)
		skb.Free(DropFragIncomplete)
		return nil
	}
	key := fragKey{src: h.Src(), dst: h.Dst(), id: fh.ID()}

	r.mu.Lock()
	q := r.queues[key]
	evicted := 0
	if q == nil {
		for len(r.queues) >= maxFragQueues && r.oldest != nil {
			r.kill(r.oldest, DropFragQueueFull)
			evicted++
		}
		q = &fragQueue{key: key, total: -1}
		r.queues[key] = q
		r.pushNewest(q)
		q.timer = r.l.clk.AfterFunc(r.timeout, func() { r.expire(q) })
	}
	if q.dropped {
		r.mu.Unlock()
		l.countN(ReasmFails, evicted)
		skb.Free(DropFragOverlap)
		return nil
	}
	if reason, bad := r.check(q, off, end, more); bad {
		r.kill(q, reason)
		r.mu.Unlock()
		l.countN(ReasmFails, evicted+1)
		skb.Free(reason)
		return nil
	}
	i := 0
	for i < len(q.frags) && q.frags[i].off < off {
		i++
	}
	if i < len(q.frags) && q.frags[i].off == off && q.frags[i].end == end {
		// RFC 8200 §4.5: "an implementation may choose to detect this
		// case and drop exact duplicate fragments while keeping the other
		// fragments belonging to the same packet."
		r.mu.Unlock()
		l.countN(ReasmFails, evicted)
		skb.Free(DropFragDup)
		return nil
	}
	if (i > 0 && q.frags[i-1].end > off) || (i < len(q.frags) && q.frags[i].off < end) {
		// RFC 5722 §4: "if any of the fragments being reassembled overlap
		// with any other fragments being reassembled for the same packet,
		// reassembly of that packet must be abandoned and all the fragments
		// that have been received for that packet must be discarded".
		r.kill(q, DropFragOverlap)
		q.dropped = true
		r.mu.Unlock()
		l.count(ReasmOverlaps)
		l.countN(ReasmFails, evicted+1)
		skb.Free(DropFragOverlap)
		return nil
	}
	if len(q.frags) >= maxFragsPerQueue {
		r.kill(q, DropFragQueueFull)
		r.mu.Unlock()
		l.countN(ReasmFails, evicted+1)
		skb.Free(DropFragQueueFull)
		return nil
	}
	q.frags = append(q.frags, frag{})
	copy(q.frags[i+1:], q.frags[i:])
	q.frags[i] = frag{skb: skb, off: off, end: end, dataOff: dataOff}
	q.have += end - off
	sz := truesize(skb)
	q.mem += sz
	r.mem += sz
	if off == 0 {
		// "The Next Header values in the Fragment headers of different
		// fragments of the same original packet may differ. Only the
		// value from the Offset zero fragment packet is used."
		q.first, q.fhoff, q.nhoff = skb, fhoff, nhoff
	}
	if !more {
		q.total = end
	}
	if q.total >= 0 && q.have == q.total && q.first != nil {
		out := r.assemble(q)
		r.mu.Unlock()
		l.countN(ReasmFails, evicted)
		l.count(ReasmOKs)
		return out
	}
	for r.mem > r.memLimit && r.oldest != nil {
		r.kill(r.oldest, DropFragMem)
		evicted++
	}
	r.mu.Unlock()
	l.countN(ReasmFails, evicted)
	return nil
}

// headerChainComplete reports whether b (a first fragment's fragmentable
// part, its first header nh) holds every extension header and the
// upper-layer header's fixed part.
func headerChainComplete(b []byte, nh uint8) bool {
	off := 0
	for i := 0; i < header.MaxIPv6ExtHeaders && header.IPv6IsExtHeader(nh); i++ {
		n, err := header.IPv6ExtHeaderLen(nh, b[off:])
		if err != nil {
			return false
		}
		nh = b[off]
		off += n
	}
	return !header.IPv6IsExtHeader(nh) && off+upperMinLen(nh) <= len(b)
}

// check validates a new fragment against its queue (ip6_frag_queue).
func (r *reassembler) check(q *fragQueue, off, end int, more bool) (buf.DropReason, bool) {
	switch {
	case end <= off:
		// A fragment with no data.
		return DropFragBad, true
	case more && q.total >= 0 && end > q.total:
		return DropFragBad, true
	case !more && q.total >= 0 && end != q.total:
		return DropFragBad, true
	case !more && len(q.frags) > 0 && q.frags[len(q.frags)-1].end > end:
		return DropFragBad, true
	}
	return 0, false
}

// assemble is ip6_frag_reasm: the first fragment's unfragmentable part
// with its last Next Header set to the Fragment header's, then every
// fragment's data in order; the queue is released. r.mu is held.
func (r *reassembler) assemble(q *fragQueue) *buf.SKB {
	first := q.first
	fb := first.Bytes()
	unfrag := q.fhoff
	out := buf.Alloc(buf.MaxHeadroom, unfrag+q.total)
	d := out.Put(unfrag + q.total)
	copy(d, fb[:unfrag])
	d[q.nhoff] = header.IPv6Fragment(fb[q.fhoff:]).NextHeader()
	for _, f := range q.frags {
		b := f.skb.Bytes()
		copy(d[unfrag+f.off:], b[f.dataOff:f.dataOff+f.end-f.off])
	}
	header.IPv6(d).SetPayloadLen(unfrag + q.total - header.IPv6MinSize)
	out.SetNetworkHeader()
	out.Protocol = first.Protocol
	out.InNIC = first.InNIC
	out.Mark = first.Mark
	out.Drops = first.Drops
	out.CB = first.CB
	out.Csum = buf.CsumNone
	r.unlink(q)
	for _, f := range q.frags {
		f.skb.Consume()
	}
	q.frags, q.first = nil, nil
	return out
}

// kill frees a queue's fragments and unlinks it, unless it must stay as
// a tombstone (the caller then sets dropped). r.mu is held.
func (r *reassembler) kill(q *fragQueue, reason buf.DropReason) {
	for _, f := range q.frags {
		f.skb.Free(reason)
	}
	r.mem -= q.mem
	q.mem = 0
	q.frags, q.first = nil, nil
	q.have = 0
	if reason != DropFragOverlap {
		r.unlink(q)
	}
}

// unlink removes q from the table, the age list and the clock.
func (r *reassembler) unlink(q *fragQueue) {
	if q.dead {
		return
	}
	q.dead = true
	q.timer.Stop()
	delete(r.queues, q.key)
	if q.prev != nil {
		q.prev.next = q.next
	} else {
		r.oldest = q.next
	}
	if q.next != nil {
		q.next.prev = q.prev
	} else {
		r.newest = q.prev
	}
	q.prev, q.next = nil, nil
	r.mem -= q.mem
	q.mem = 0
}

func (r *reassembler) pushNewest(q *fragQueue) {
	q.prev = r.newest
	if r.newest != nil {
		r.newest.next = q
	} else {
		r.oldest = q
	}
	r.newest = q
}

// expire is ip6_frag_expire: RFC 8200 §4.5: reassembly abandoned after
// the timeout; "If the first fragment (i.e., the one with a Fragment
// Offset of zero) has been received, an ICMP Time Exceeded -- Fragment
// Reassembly Time Exceeded message should be sent to the source of that
// fragment." A tombstone (RFC 5722) just goes.
func (r *reassembler) expire(q *fragQueue) {
	r.mu.Lock()
	if q.dead {
		r.mu.Unlock()
		return
	}
	if q.dropped {
		r.unlink(q)
		r.mu.Unlock()
		return
	}
	first := q.first
	var rest []frag
	for _, f := range q.frags {
		if f.skb != first {
			rest = append(rest, f)
		}
	}
	q.frags = rest
	r.kill(q, DropFragTimeout)
	r.mu.Unlock()
	r.l.count(ReasmTimeout)
	r.l.count(ReasmFails)
	if first != nil {
		first.SetNetworkHeader()
		r.l.SendICMPError(first, header.ICMPv6TimeExceeded, header.ICMPv6ReassemblyTimeout, 0)
		first.Free(DropFragTimeout)
	}
}

// pending reports the packets under reassembly (tombstones included) and
// the memory they hold.
func (r *reassembler) pending() (queues, mem int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queues), r.mem
}

// unfragmentablePart is ip6_find_1stfragopt: the length of the headers
// every fragment repeats (RFC 8200 §4.5: the IPv6 header and the
// extension headers "that must be processed by nodes en route to the
// destination", i.e. Hop-by-Hop, Routing, and Destination Options before a
// Routing header), and the offset of the Next Header byte that names what
// follows them.
func unfragmentablePart(b []byte) (length, nhoff int) {
	nh := header.IPv6(b).NextHeader()
	off, nhoff := header.IPv6MinSize, header.IPv6NextHeaderOffset
	for i := 0; i < header.MaxIPv6ExtHeaders; i++ {
		switch nh {
		case header.ProtoHopByHop, header.ProtoRouting:
		case header.ProtoDestOpts:
			// Only a Destination Options header followed by a Routing
			// header is for the routers on the way.
			n, err := header.IPv6ExtHeaderLen(nh, b[off:])
			if err != nil || off+n >= len(b) || b[off] != header.ProtoRouting {
				return off, nhoff
			}
		default:
			return off, nhoff
		}
		n, err := header.IPv6ExtHeaderLen(nh, b[off:])
		if err != nil {
			return off, nhoff
		}
		nh, nhoff, off = b[off], off, off+n
	}
	return off, nhoff
}

// fragment is ip6_fragment's slow path: split skb (bytes from the IPv6
// header) into fragment packets of at most mtu bytes, passing each to
// out, and consume skb. RFC 8200 §4.5: each fragment carries the
// unfragmentable part, a Fragment header (the same Identification, an
// offset in 8-octet units, M on all but the last) and a piece of the
// fragmentable part, a multiple of 8 octets except the last.
func (l *Layer) fragment(skb *buf.SKB, mtu int, out func(*buf.SKB)) error {
	if skb.Csum == buf.CsumPartial {
		finishChecksum(skb)
	}
	b := skb.Bytes()
	h := header.IPv6(b)
	unfrag, nhoff := unfragmentablePart(b)
	per := (mtu - unfrag - header.IPv6FragmentSize) &^ 7
	if per < 8 || unfrag >= len(b) {
		l.count(FragFails)
		skb.Free(DropFragFailed)
		return syscall.EMSGSIZE
	}
	payload := b[unfrag:]
	nh := b[nhoff]
	id := l.selectIdent(h.Src(), h.Dst())
	for off := 0; off < len(payload); off += per {
		n := min(per, len(payload)-off)
		f := buf.Alloc(buf.MaxHeadroom, unfrag+header.IPv6FragmentSize+n)
		d := f.Put(unfrag + header.IPv6FragmentSize + n)
		copy(d, b[:unfrag])
		d[nhoff] = header.ProtoFragment
		header.IPv6Fragment(d[unfrag:]).Encode(header.IPv6FragmentFields{
			NextHeader: nh, FragOffset: uint16(off), More: off+n < len(payload), ID: id,
		})
		copy(d[unfrag+header.IPv6FragmentSize:], payload[off:off+n])
		header.IPv6(d).SetPayloadLen(len(d) - header.IPv6MinSize)
		f.SetNetworkHeader()
		f.Protocol = skb.Protocol
		f.InNIC = skb.InNIC
		f.OutNIC = skb.OutNIC
		f.Mark = skb.Mark
		f.Drops = skb.Drops
		l.count(FragCreates)
		out(f)
	}
	l.count(FragOKs)
	skb.Consume()
	return nil
}

// finishChecksum is skb_checksum_help for a CsumPartial packet before it
// is split: fold the sum from the transport header, store it CsumOffset
// bytes in. RFC 8200 §8.1: a UDP checksum is never sent as zero over
// IPv6: a computed zero is sent as all ones.
func finishChecksum(skb *buf.SKB) {
	b := skb.Bytes()
	start := skb.TransportOffset()
	if start < header.IPv6MinSize || start > len(b) {
		return
	}
	t := b[start:]
	off := int(skb.CsumOffset)
	if off+2 > len(t) {
		return
	}
	c := header.ChecksumFinal(header.Checksum(t, 0))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(t[off:], c)
	skb.Csum = buf.CsumNone
}
