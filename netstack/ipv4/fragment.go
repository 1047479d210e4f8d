package ipv4

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

// maxFragsPerQueue bounds the fragments of one datagram. A 65535-byte
// datagram over a 576-byte MTU (RFC 791's minimum reassembly size) is 119
// fragments; more than 256 is an attack. Overflow drops the datagram.
const maxFragsPerQueue = 256

// fragKey identifies a datagram (RFC 791: source, destination, protocol
// and identification; ipq's key).
type fragKey struct {
	src, dst netip.Addr
	id       uint16
	proto    uint8
}

// frag is one received fragment: skb's bytes are the whole fragment (IP
// header included); its payload covers [off, end) of the datagram.
type frag struct {
	skb      *buf.SKB
	off, end int
}

// fragQueue is one datagram under reassembly (struct ipq).
type fragQueue struct {
	key   fragKey
	frags []frag // sorted by off, disjoint (overlap kills the queue)
	total int    // payload length, -1 until the last fragment (MF=0) arrived
	have  int    // payload bytes held
	mem   int    // truesize of the held fragments
	first *buf.SKB
	timer *clock.Timer
	dead  bool

	prev, next *fragQueue // age list, oldest first
}

// reassembler is ip_defrag's state (struct fqdir). Bounds: memLimit bytes
// of fragment buffers over all queues (ipfrag_high_thresh) — a new fragment
// that pushes past it evicts the oldest datagrams, each counted ReasmFails;
// maxFragsPerQueue fragments per datagram; datagrams of at most 65535
// bytes. Every queue dies after timeout (ipfrag_time).
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

// truesize is what a held fragment costs: its whole buffer.
func truesize(skb *buf.SKB) int { return skb.Headroom() + skb.Len() + skb.Tailroom() }

// add is ip_defrag: queue the fragment skb (bytes from the IP header,
// trimmed to its total length) and return the reassembled datagram when
// it completes, else nil. It consumes skb.
func (r *reassembler) add(skb *buf.SKB) *buf.SKB {
	h := header.IPv4(skb.Bytes())
	hl := h.HeaderLen()
	off := h.FragOffset()
	end := off + h.TotalLen() - hl
	mf := h.MF()
	key := fragKey{src: h.Src(), dst: h.Dst(), id: h.ID(), proto: h.Protocol()}

	r.mu.Lock()
	q := r.queues[key]
	if q == nil {
		q = &fragQueue{key: key, total: -1}
		r.queues[key] = q
		r.pushNewest(q)
		q.timer = r.l.clk.AfterFunc(r.timeout, func() { r.expire(q) })
	}
	if reason, bad := r.check(q, off, end, hl, mf); bad {
		r.kill(q, reason)
		r.mu.Unlock()
		r.l.count(ReasmFails)
		skb.Free(reason)
		return nil
	}
	// Insert keeping frags sorted; RFC 5722's rule (written for IPv6, and
	// Linux applies it to IPv4 since CVE-2018-5391): overlapping fragments
	// drop the whole datagram; an exact duplicate is dropped alone.
	i := 0
	for i < len(q.frags) && q.frags[i].off < off {
		i++
	}
	if i < len(q.frags) && q.frags[i].off == off && q.frags[i].end == end {
		r.mu.Unlock()
		skb.Free(DropFragDup)
		return nil
	}
	if (i > 0 && q.frags[i-1].end > off) || (i < len(q.frags) && q.frags[i].off < end) {
		r.kill(q, DropFragOverlap)
		r.mu.Unlock()
		r.l.count(ReasmOverlaps)
		r.l.count(ReasmFails)
		skb.Free(DropFragOverlap)
		return nil
	}
	if len(q.frags) >= maxFragsPerQueue {
		r.kill(q, DropFragQueueFull)
		r.mu.Unlock()
		r.l.count(ReasmFails)
		skb.Free(DropFragQueueFull)
		return nil
	}
	q.frags = append(q.frags, frag{})
	copy(q.frags[i+1:], q.frags[i:])
	q.frags[i] = frag{skb: skb, off: off, end: end}
	q.have += end - off
	sz := truesize(skb)
	q.mem += sz
	r.mem += sz
	if off == 0 {
		q.first = skb
	}
	if !mf {
		q.total = end
	}
	if q.total >= 0 && q.have == q.total {
		if header.IPv4(q.first.Bytes()).HeaderLen()+q.total > 0xffff {
			// Later fragments with shorter headers let the payload
			// grow past what the first fragment's header can carry.
			r.kill(q, DropFragTooFar)
			r.mu.Unlock()
			r.l.count(ReasmFails)
			return nil
		}
		out := r.assemble(q)
		r.mu.Unlock()
		r.l.count(ReasmOKs)
		return out
	}
	// Memory cap: evict the oldest datagrams (possibly this one).
	evicted := 0
	for r.mem > r.memLimit && r.oldest != nil {
		r.kill(r.oldest, DropFragMem)
		evicted++
	}
	r.mu.Unlock()
	r.l.countN(ReasmFails, evicted)
	return nil
}

// check validates a new fragment against its queue (ip_frag_queue). A bad
// fragment kills the datagram.
func (r *reassembler) check(q *fragQueue, off, end, hl int, mf bool) (buf.DropReason, bool) {
	switch {
	case end+hl > 0xffff:
		// The datagram would exceed 65535 bytes (the "ping of death").
		return DropFragTooFar, true
	case end <= off:
		return DropFragBad, true
	case mf && (end-off)%8 != 0:
		// RFC 791: every fragment but the last carries a multiple of 8 bytes.
		return DropFragBad, true
	case mf && q.total >= 0 && end > q.total:
		return DropFragBad, true
	case !mf && q.total >= 0 && end != q.total:
		return DropFragBad, true
	case !mf && len(q.frags) > 0 && q.frags[len(q.frags)-1].end > end:
		return DropFragBad, true
	}
	return 0, false
}

// assemble is ip_frag_reasm: copy the fragments into one datagram with the
// first fragment's header, and release the queue. r.mu is held.
func (r *reassembler) assemble(q *fragQueue) *buf.SKB {
	first := q.first
	fb := first.Bytes()
	hl := header.IPv4(fb).HeaderLen()
	out := buf.Alloc(buf.MaxHeadroom, hl+q.total)
	d := out.Put(hl + q.total)
	copy(d, fb[:hl])
	for _, f := range q.frags {
		b := f.skb.Bytes()
		fhl := header.IPv4(b).HeaderLen()
		copy(d[hl+f.off:], b[fhl:fhl+f.end-f.off])
	}
	h := header.IPv4(d)
	h.SetTotalLen(hl + q.total)
	h.SetFragOffset(0, false)
	h.SetChecksum()
	out.SetNetworkHeader()
	out.Protocol = first.Protocol
	out.InNIC = first.InNIC
	out.Mark = first.Mark
	out.Drops = first.Drops
	out.CB = first.CB
	// The transport checksum of the whole datagram was never verified.
	out.Csum = buf.CsumNone
	r.unlink(q)
	for _, f := range q.frags {
		f.skb.Consume()
	}
	q.frags, q.first = nil, nil
	return out
}

// kill drops a queue and its fragments (inet_frag_kill). r.mu is held.
func (r *reassembler) kill(q *fragQueue, reason buf.DropReason) {
	r.unlink(q)
	for _, f := range q.frags {
		f.skb.Free(reason)
	}
	q.frags, q.first = nil, nil
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

// expire is ip_expire: the datagram did not complete within the timeout.
// RFC 792 / RFC 1122 §3.3.2: if fragment zero is available, send Time
// Exceeded, code 1 (fragment reassembly time exceeded).
func (r *reassembler) expire(q *fragQueue) {
	r.mu.Lock()
	if q.dead {
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
		r.l.SendICMPError(first, header.ICMPv4TimeExceeded, header.ICMPv4ReassemblyTimeout, 0)
		first.Free(DropFragTimeout)
	}
}

// pending reports the number of datagrams under reassembly and the memory
// they hold.
func (r *reassembler) pending() (queues, mem int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queues), r.mem
}

// fragment is ip_do_fragment's slow path: split skb (bytes from the IPv4
// header) into datagrams of at most mtu bytes, passing each to out, and
// consume skb. RFC 791: offsets are multiples of 8; every fragment but the
// last has MF; options without the copy flag appear only in the first
// fragment (later fragments carry the copied options, zero-padded to the
// same header length).
func (l *Layer) fragment(skb *buf.SKB, mtu int, out func(*buf.SKB)) error {
	if skb.Csum == buf.CsumPartial {
		finishChecksum(skb)
	}
	b := skb.Bytes()
	h := header.IPv4(b)
	hl := h.HeaderLen()
	total := h.TotalLen()
	if total > len(b) {
		total = len(b)
	}
	per := (mtu - hl) &^ 7
	if per < 8 || total <= hl {
		l.count(FragFails)
		skb.Free(DropFragFailed)
		return syscall.EMSGSIZE
	}
	payload := b[hl:total]
	baseOff, baseMF := h.FragOffset(), h.MF()
	later := b[:hl]
	if hl > header.IPv4MinSize {
		later = laterFragmentHeader(b[:hl])
	}
	for off := 0; off < len(payload); off += per {
		n := min(per, len(payload)-off)
		f := buf.Alloc(buf.MaxHeadroom, hl+n)
		d := f.Put(hl + n)
		if off == 0 {
			copy(d, b[:hl])
		} else {
			copy(d, later)
		}
		copy(d[hl:], payload[off:off+n])
		fh := header.IPv4(d)
		fh.SetTotalLen(hl + n)
		fh.SetFragOffset(baseOff+off, baseMF || off+n < len(payload))
		fh.SetChecksum()
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

// laterFragmentHeader returns a copy of hdr whose options keep only those
// with the copy flag (RFC 791 §3.1, "copied flag"), padded with End of
// Option List to the original length.
func laterFragmentHeader(hdr []byte) []byte {
	out := make([]byte, len(hdr))
	copy(out, hdr[:header.IPv4MinSize])
	opts := out[header.IPv4MinSize:]
	n := 0
	err := header.WalkIPv4Options(hdr[header.IPv4MinSize:], func(typ uint8, data []byte) bool {
		if typ&0x80 == 0 || typ <= 1 {
			return true
		}
		if n+2+len(data) > len(opts) {
			return false
		}
		opts[n], opts[n+1] = typ, byte(2+len(data))
		copy(opts[n+2:], data)
		n += 2 + len(data)
		return true
	})
	if err != nil {
		// Malformed options were rejected on input; for safety send no
		// options rather than garbage.
		clear(opts)
	}
	return out
}

// finishChecksum is skb_checksum_help: fold the software checksum of a
// CsumPartial packet (bytes from the IPv4 header) before it is split.
// The transport checksum starts at the transport header (the IPv4 payload
// when none was recorded) and is stored CsumOffset bytes into it.
func finishChecksum(skb *buf.SKB) {
	b := skb.Bytes()
	h := header.IPv4(b)
	start := skb.TransportOffset()
	if start < header.IPv4MinSize || start > len(b) {
		start = h.HeaderLen()
	}
	t := b[start:]
	off := int(skb.CsumOffset)
	if off+2 > len(t) {
		return
	}
	c := header.ChecksumFinal(header.Checksum(t, 0))
	if c == 0 && h.Protocol() == header.ProtoUDP {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(t[off:], c)
	skb.Csum = buf.CsumNone
}
