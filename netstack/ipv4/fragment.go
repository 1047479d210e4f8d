package ipv4

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inetfrag"
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

// reassembler is ip_defrag's state (struct fqdir): an inetfrag table of
// datagrams keyed by fragKey, fragments sorted by offset, disjoint
// (overlap kills the datagram). Bounds: memLimit bytes of fragment
// buffers over all queues (ipfrag_high_thresh) — a new fragment that
// pushes past it evicts the oldest datagrams, each counted ReasmFails;
// maxFragsPerQueue fragments per datagram; datagrams of at most 65535
// bytes. Every queue dies after timeout (ipfrag_time).
type reassembler struct {
	l *Layer
	t inetfrag.Table[fragKey]
}

func (r *reassembler) init(l *Layer, timeout time.Duration, memLimit int) {
	r.l = l
	r.t.Init(inetfrag.Config{
		Clock: l.clk, Timeout: timeout, MemLimit: memLimit,
		MaxFrags:  maxFragsPerQueue,
		MemReason: DropFragMem, TimeoutReason: DropFragTimeout,
		OnExpire: r.expire,
	})
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

	t := &r.t
	t.Lock()
	q := t.Lookup(key)
	if q == nil {
		q, _ = t.Create(key)
	}
	if reason, bad := r.check(q, off, end, hl, mf); bad {
		t.Kill(q, reason)
		t.Unlock()
		r.l.count(ReasmFails)
		skb.Free(reason)
		return nil
	}
	// Insert keeping frags sorted; RFC 5722's rule (written for IPv6, and
	// Linux applies it to IPv4 since CVE-2018-5391): overlapping fragments
	// drop the whole datagram; an exact duplicate is dropped alone.
	i, place := t.Place(q, off, end)
	switch place {
	case inetfrag.Duplicate:
		t.Unlock()
		skb.Free(DropFragDup)
		return nil
	case inetfrag.Overlaps:
		t.Kill(q, DropFragOverlap)
		t.Unlock()
		r.l.count(ReasmOverlaps)
		r.l.count(ReasmFails)
		skb.Free(DropFragOverlap)
		return nil
	case inetfrag.Full:
		t.Kill(q, DropFragQueueFull)
		t.Unlock()
		r.l.count(ReasmFails)
		skb.Free(DropFragQueueFull)
		return nil
	}
	t.Insert(q, i, inetfrag.NewFrag(skb, off, end, hl, 0), truesize(skb))
	if off == 0 {
		q.First = skb
	}
	if !mf {
		q.Total = end
	}
	if q.Complete() {
		if header.IPv4(q.First.Bytes()).HeaderLen()+q.Total > 0xffff {
			// Later fragments with shorter headers let the payload
			// grow past what the first fragment's header can carry.
			t.Kill(q, DropFragTooFar)
			t.Unlock()
			r.l.count(ReasmFails)
			return nil
		}
		out := r.assemble(q)
		t.Unlock()
		r.l.count(ReasmOKs)
		return out
	}
	// Memory cap: evict the oldest datagrams (possibly this one).
	evicted := t.Evict()
	t.Unlock()
	r.l.countN(ReasmFails, evicted)
	return nil
}

// check validates a new fragment against its queue (ip_frag_queue). A bad
// fragment kills the datagram.
func (r *reassembler) check(q *inetfrag.Queue[fragKey], off, end, hl int, mf bool) (buf.DropReason, bool) {
	switch {
	case end+hl > 0xffff:
		// The datagram would exceed 65535 bytes (the "ping of death").
		return DropFragTooFar, true
	case mf && (end-off)%8 != 0:
		// RFC 791: every fragment but the last carries a multiple of 8 bytes.
		return DropFragBad, true
	case !q.Consistent(off, end, !mf):
		return DropFragBad, true
	}
	return 0, false
}

// assemble is ip_frag_reasm: copy the fragments into one datagram with the
// first fragment's header, and release the queue. The table is locked.
func (r *reassembler) assemble(q *inetfrag.Queue[fragKey]) *buf.SKB {
	fb := q.First.Bytes()
	hl := header.IPv4(fb).HeaderLen()
	out := buf.Alloc(buf.MaxHeadroom, hl+q.Total)
	d := out.Put(hl + q.Total)
	copy(d, fb[:hl])
	for i := range q.Frags {
		copy(d[hl+int(q.Frags[i].Off):], q.Frags[i].Payload())
	}
	h := header.IPv4(d)
	h.SetTotalLen(hl + q.Total)
	h.SetFragOffset(0, false)
	h.SetChecksum()
	return r.t.Finish(q, out)
}

// expire is ip_expire: the datagram did not complete within the timeout
// (the table freed its other fragments with DropFragTimeout). RFC 792 /
// RFC 1122 §3.3.2: if fragment zero is available, send Time Exceeded,
// code 1 (fragment reassembly time exceeded).
func (r *reassembler) expire(first *buf.SKB) {
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
func (r *reassembler) pending() (queues, mem int) { return r.t.Pending() }

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
