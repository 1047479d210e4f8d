package ipv6

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inetfrag"
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

// reassembler is ipv6_frag_rcv's state: an inetfrag table of packets
// keyed by fragKey, each fragment's data (after the Fragment header)
// covering [Off, End) of the fragmentable part, sorted and disjoint; a
// queue's First is the offset-zero fragment, whose unfragmentable part (up
// to Head, the Fragment header, with the Next Header byte at NH) heads the
// result. A queue Dropped for overlapping fragments is a tombstone: RFC
// 5722 §4: "the entire datagram (and any constituent fragments, including
// those not yet received) MUST be silently discarded". It stays, holding
// no buffers, until its timeout, so fragments still to come are discarded
// too.
//
// Bounds: memLimit bytes of fragment buffers over all queues (a fragment
// past it evicts the oldest packets, possibly its own, each ReasmFails),
// maxFragQueues packets, maxFragsPerQueue fragments each, and RFC 8200
// §4.5's 65535-byte payload. Every queue dies after timeout (60 s).
type reassembler struct {
	l *Layer
	t inetfrag.Table[fragKey]
}

func (r *reassembler) init(l *Layer, timeout time.Duration, memLimit int) {
	r.l = l
	r.t.Init(inetfrag.Config{
		Clock: l.clk, Timeout: timeout, MemLimit: memLimit,
		MaxQueues: maxFragQueues, QueueFullReason: DropFragQueueFull,
		MaxFrags:  maxFragsPerQueue,
		MemReason: DropFragMem, TimeoutReason: DropFragTimeout,
		OnExpire: r.expire,
	})
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

	t := &r.t
	t.Lock()
	q := t.Lookup(key)
	evicted := 0
	if q == nil {
		q, evicted = t.Create(key)
	}
	if q.Dropped {
		t.Unlock()
		l.countN(ReasmFails, evicted)
		skb.Free(DropFragOverlap)
		return nil
	}
	if reason, bad := r.check(q, off, end, more); bad {
		t.Kill(q, reason)
		t.Unlock()
		l.countN(ReasmFails, evicted+1)
		skb.Free(reason)
		return nil
	}
	i, place := t.Place(q, off, end)
	switch place {
	case inetfrag.Duplicate:
		// RFC 8200 §4.5: "an implementation may choose to detect this
		// case and drop exact duplicate fragments while keeping the other
		// fragments belonging to the same packet."
		t.Unlock()
		l.countN(ReasmFails, evicted)
		skb.Free(DropFragDup)
		return nil
	case inetfrag.Overlaps:
		// RFC 5722 §4: "if any of the fragments being reassembled overlap
		// with any other fragments being reassembled for the same packet,
		// reassembly of that packet must be abandoned and all the fragments
		// that have been received for that packet must be discarded".
		t.Tombstone(q, DropFragOverlap)
		t.Unlock()
		l.count(ReasmOverlaps)
		l.countN(ReasmFails, evicted+1)
		skb.Free(DropFragOverlap)
		return nil
	case inetfrag.Full:
		t.Kill(q, DropFragQueueFull)
		t.Unlock()
		l.countN(ReasmFails, evicted+1)
		skb.Free(DropFragQueueFull)
		return nil
	}
	t.Insert(q, i, inetfrag.NewFrag(skb, off, end, dataOff, 0), truesize(skb))
	if off == 0 {
		// "The Next Header values in the Fragment headers of different
		// fragments of the same original packet may differ. Only the
		// value from the Offset zero fragment packet is used."
		q.First, q.Head, q.NH = skb, fhoff, nhoff
	}
	if !more {
		q.Total = end
	}
	if q.Complete() && q.First != nil {
		out := r.assemble(q)
		t.Unlock()
		l.countN(ReasmFails, evicted)
		l.count(ReasmOKs)
		return out
	}
	evicted += t.Evict()
	t.Unlock()
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
func (r *reassembler) check(q *inetfrag.Queue[fragKey], off, end int, more bool) (buf.DropReason, bool) {
	if !q.Consistent(off, end, !more) {
		return DropFragBad, true
	}
	return 0, false
}

// assemble is ip6_frag_reasm: the first fragment's unfragmentable part
// with its last Next Header set to the Fragment header's, then every
// fragment's data in order; the queue is released. The table is locked.
func (r *reassembler) assemble(q *inetfrag.Queue[fragKey]) *buf.SKB {
	fb := q.First.Bytes()
	unfrag := q.Head
	out := buf.Alloc(buf.MaxHeadroom, unfrag+q.Total)
	d := out.Put(unfrag + q.Total)
	copy(d, fb[:unfrag])
	d[q.NH] = header.IPv6Fragment(fb[q.Head:]).NextHeader()
	for i := range q.Frags {
		copy(d[unfrag+int(q.Frags[i].Off):], q.Frags[i].Payload())
	}
	header.IPv6(d).SetPayloadLen(unfrag + q.Total - header.IPv6MinSize)
	return r.t.Finish(q, out)
}

// expire is ip6_frag_expire: RFC 8200 §4.5: reassembly abandoned after
// the timeout (the table freed the other fragments with DropFragTimeout;
// a tombstone, RFC 5722, just went); "If the first fragment (i.e., the one
// with a Fragment Offset of zero) has been received, an ICMP Time
// Exceeded -- Fragment Reassembly Time Exceeded message should be sent to
// the source of that fragment."
func (r *reassembler) expire(first *buf.SKB) {
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
func (r *reassembler) pending() (queues, mem int) { return r.t.Pending() }

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
