package netfilter

import (
	"net/netip"
	"sort"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/inetfrag"
)

// Drop reasons of reassembly before conntrack.
var (
	DropDefragOverlap   = buf.NewDropReason("NF_DEFRAG_OVERLAP")
	DropDefragDup       = buf.NewDropReason("NF_DEFRAG_DUPLICATE")
	DropDefragMem       = buf.NewDropReason("NF_DEFRAG_MEM_LIMIT")
	DropDefragTooBig    = buf.NewDropReason("NF_DEFRAG_TOO_BIG")
	DropDefragTimeout   = buf.NewDropReason("NF_DEFRAG_TIMEOUT")
	DropDefragTooMany   = buf.NewDropReason("NF_DEFRAG_TOO_MANY_FRAGS")
	DropDefragMalform   = buf.NewDropReason("NF_DEFRAG_MALFORMED")
	defaultDefragTime   = 30 * time.Second
	defaultDefragMem    = 4 << 20
	maxFragsPerDatagram = 256 // a 64 KiB datagram in 256-byte pieces
)

// fragTable is the state defrag and defrag6 share: an inetfrag table whose
// memory is counted in fragment bytes (skb.Len), and the counters. Its
// queues hold fragments in arrival order (sorted when the last one comes)
// and are not aged out under memory pressure: a fragment past memLimit is
// dropped instead.
type fragTable[K comparable] struct {
	t inetfrag.Table[K]

	reqds, oks, fails, timeouts atomic.Uint64
}

func (d *fragTable[K]) init(nf *Netfilter, timeout time.Duration, mem int) {
	d.t.Init(inetfrag.Config{
		Clock: nf.clk, Timeout: timeout, MemLimit: mem,
		TimeoutReason: DropDefragTimeout, OnExpire: d.expire,
	})
}

func (d *fragTable[K]) stats() (reqds, oks, fails, timeouts uint64) {
	return d.reqds.Load(), d.oks.Load(), d.fails.Load(), d.timeouts.Load()
}

// queue files the fragment skb, carrying [off, end) of the payload from
// byte data on (its last when !more; skb kept trimmed to keep bytes; aux
// kept with it), in the queue for key. It returns the queue and true when
// the fragment completes it, for the caller to reassemble into skb (the
// queue then holds a copy of skb) and release with done; else the
// verdict: Stolen (skb kept) or Drop. The table is locked.
func (d *fragTable[K]) queue(key K, skb *buf.SKB, off, end, data, aux, keep int, more bool) (*inetfrag.Queue[K], Verdict, bool) {
	t := &d.t
	if !t.Admit(skb.Len()) {
		d.fails.Add(1)
		return nil, Drop(DropDefragMem), false
	}
	q := t.Lookup(key)
	if q == nil {
		q, _ = t.Create(key)
	}
	if !more {
		if q.Total >= 0 && q.Total != end {
			d.kill(q, DropDefragOverlap)
			return nil, Drop(DropDefragOverlap), false
		}
		q.Total = end
	} else if q.Total >= 0 && end > q.Total {
		// Past the end the last fragment set (RFC 791, RFC 8200 §4.5):
		// the datagram is corrupt, as ip_frag_queue and
		// ip6_frag_queue judge it (discard the queue).
		d.kill(q, DropDefragOverlap)
		return nil, Drop(DropDefragOverlap), false
	}
	for _, f := range q.Frags {
		fo, fe := int(f.Off), int(f.End)
		if fo == off && fe == end {
			d.fails.Add(1)
			return nil, Drop(DropDefragDup), false
		}
		if off < fe && fo < end || q.Total >= 0 && fe > q.Total {
			d.kill(q, DropDefragOverlap)
			return nil, Drop(DropDefragOverlap), false
		}
	}
	if len(q.Frags) >= maxFragsPerDatagram {
		d.kill(q, DropDefragTooMany)
		return nil, Drop(DropDefragTooMany), false
	}
	// Overlaps were refused, so the sizes add up.
	if q.Total < 0 || q.Have+end-off != q.Total {
		skb.Trim(keep)
		t.Insert(q, len(q.Frags), inetfrag.NewFrag(skb, off, end, data, aux), skb.Len())
		return q, Stolen(), false
	}
	cur := skb.Copy()
	cur.Trim(keep)
	t.Insert(q, len(q.Frags), inetfrag.NewFrag(cur, off, end, data, aux), 0)
	sort.Slice(q.Frags, func(i, j int) bool { return q.Frags[i].Off < q.Frags[j].Off })
	return q, Verdict{}, true
}

// morph is skb_morph: skb's bytes become n bytes for the reassembled
// packet, its link header kept (ipv4 reads its destination for the
// link-layer broadcast check, and Put may move the data to a larger
// block).
func morph(skb *buf.SKB, n int) []byte {
	var mac [header.EthernetMinSize]byte
	macLen := 0
	if mh := skb.MACHeader(); len(mh)-skb.Len() >= header.EthernetMinSize {
		macLen = copy(mac[:], mh)
	}
	skb.Trim(0)
	out := skb.Put(n)
	if mh := skb.MACHeader(); macLen > 0 && len(mh) >= macLen {
		copy(mh, mac[:macLen])
	}
	return out
}

// done releases a queue reassembled into skb and counts it.
func (d *fragTable[K]) done(q *inetfrag.Queue[K], skb *buf.SKB) Verdict {
	skb.SetNetworkHeader()
	skb.Csum = buf.CsumNone
	skb.GSOSize = 0
	d.t.Release(q)
	d.oks.Add(1)
	return Accept()
}

func (d *fragTable[K]) kill(q *inetfrag.Queue[K], reason buf.DropReason) {
	d.t.Kill(q, reason)
	d.fails.Add(1)
}

// expire is ip_expire: the datagram never completed (the table freed its
// fragments with DropDefragTimeout; no queue here records a first).
func (d *fragTable[K]) expire(first *buf.SKB) {
	d.timeouts.Add(1)
	d.fails.Add(1)
	if first != nil {
		first.Free(DropDefragTimeout)
	}
}

// defrag reassembles fragments at PREROUTING before conntrack
// (nf_defrag_ipv4 → ip_defrag(IP_DEFRAG_CONNTRACK_IN)), so that tracking
// and NAT see ports. Fragments are kept (Stolen) until the last one
// arrives, which becomes the whole datagram and continues, as the
// kernel's skb_morph does. RFC 791 reassembly keyed by (src, dst,
// protocol, ID).
//
// Bounds: memLimit bytes held over all queues (ipfrag_high_thresh; a
// fragment over it is dropped), maxFragsPerDatagram per queue, timeout per
// queue (ipfrag_time). An overlapping fragment discards its whole queue
// (Linux since 4.19, as RFC 5722 does for IPv6); an exact duplicate is
// dropped alone.
type defrag struct {
	fragTable[fragKey]
}

type fragKey struct {
	src, dst netip.Addr
	id       uint16
	proto    uint8
}

func (d *defrag) init(nf *Netfilter, timeout time.Duration, mem int) {
	if timeout <= 0 {
		timeout = defaultDefragTime
	}
	if mem <= 0 {
		mem = defaultDefragMem
	}
	d.fragTable.init(nf, timeout, mem)
}

func (nf *Netfilter) defragHook(skb *buf.SKB, st State) Verdict {
	b := skb.Bytes()
	if len(b) < header.IPv4MinSize {
		return Accept()
	}
	ip := header.IPv4(b)
	if !ip.MF() && ip.FragOffset() == 0 {
		return Accept()
	}
	return nf.defrag.add(skb)
}

// add queues a fragment; it returns Stolen while the datagram is
// incomplete, Accept when skb now holds the whole datagram, or Drop.
func (d *defrag) add(skb *buf.SKB) Verdict {
	d.reqds.Add(1)
	ip, err := header.CheckIPv4(skb.Bytes())
	if err != nil {
		d.fails.Add(1)
		return Drop(DropDefragMalform)
	}
	hl := ip.HeaderLen()
	off := ip.FragOffset()
	end := off + ip.TotalLen() - hl
	if end > 0xffff-hl {
		d.fails.Add(1)
		return Drop(DropDefragTooBig)
	}
	// RFC 791: every fragment but the last carries a multiple of 8 bytes.
	if ip.MF() && (end-off)%8 != 0 || end == off && ip.MF() {
		d.fails.Add(1)
		return Drop(DropDefragMalform)
	}
	key := fragKey{src: ip.Src(), dst: ip.Dst(), id: ip.ID(), proto: ip.Protocol()}
	d.t.Lock()
	defer d.t.Unlock()
	q, v, complete := d.queue(key, skb, off, end, hl, 0, skb.Len(), ip.MF())
	if !complete {
		return v
	}
	// Complete: skb becomes the datagram (ip_frag_reasm).
	first := header.IPv4(q.Frags[0].SKB.Bytes())
	fhl := first.HeaderLen()
	total := fhl + q.Total
	out := morph(skb, total)
	copy(out, first[:fhl])
	for i := range q.Frags {
		copy(out[fhl+int(q.Frags[i].Off):], q.Frags[i].Payload())
	}
	h := header.IPv4(out)
	h.SetTotalLen(total)
	h.SetFragOffset(0, false)
	return d.done(q, skb)
}
