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
	nf       *Netfilter
	timeout  time.Duration
	memLimit int

	mu  sync.Mutex
	mem int
	qs  map[fragKey]*fragQueue

	reqds, oks, fails, timeouts atomic.Uint64
}

type fragKey struct {
	src, dst netip.Addr
	id       uint16
	proto    uint8
}

type fragQueue struct {
	key   fragKey
	frags []frag
	total int // payload length once the last fragment came, else -1
	mem   int
	timer *clock.Timer
}

type frag struct {
	skb      *buf.SKB
	off, end int // payload byte range
}

func (d *defrag) init(nf *Netfilter, timeout time.Duration, mem int) {
	if timeout <= 0 {
		timeout = defaultDefragTime
	}
	if mem <= 0 {
		mem = defaultDefragMem
	}
	d.nf, d.timeout, d.memLimit, d.qs = nf, timeout, mem, map[fragKey]*fragQueue{}
}

func (d *defrag) stats() (reqds, oks, fails, timeouts uint64) {
	return d.reqds.Load(), d.oks.Load(), d.fails.Load(), d.timeouts.Load()
}

func (nf *Netfilter) defragHook(skb *buf.SKB, st *State) Verdict {
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
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mem+skb.Len() > d.memLimit {
		d.fails.Add(1)
		return Drop(DropDefragMem)
	}
	q := d.qs[key]
	if q == nil {
		q = &fragQueue{key: key, total: -1}
		q.timer = d.nf.clk.NewTimer(func() { d.expire(q) })
		q.timer.Reset(d.timeout)
		d.qs[key] = q
	}
	if !ip.MF() {
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
		q.frags = append(q.frags, frag{skb: skb, off: off, end: end})
		q.mem += skb.Len()
		d.mem += skb.Len()
		return Stolen()
	}
	// Complete: skb becomes the datagram (ip_frag_reasm).
	cur := skb.Copy()
	q.frags = append(q.frags, frag{skb: cur, off: off, end: end})
	sort.Slice(q.frags, func(i, j int) bool { return q.frags[i].off < q.frags[j].off })
	first := header.IPv4(q.frags[0].skb.Bytes())
	fhl := first.HeaderLen()
	total := fhl + q.total
	// Keep the link header: ipv4 reads its destination (link-layer
	// broadcast check) and Put may move the data to a larger block.
	var mac [header.EthernetMinSize]byte
	macLen := 0
	if mh := skb.MACHeader(); len(mh)-skb.Len() >= header.EthernetMinSize {
		macLen = copy(mac[:], mh)
	}
	skb.Trim(0)
	out := skb.Put(total)
	if mh := skb.MACHeader(); macLen > 0 && len(mh) >= macLen {
		copy(mh, mac[:macLen])
	}
	copy(out, first[:fhl])
	for _, f := range q.frags {
		fb := header.IPv4(f.skb.Bytes())
		copy(out[fhl+f.off:], fb[fb.HeaderLen():fb.HeaderLen()+(f.end-f.off)])
	}
	h := header.IPv4(out)
	h.SetTotalLen(total)
	h.SetFragOffset(0, false)
	skb.SetNetworkHeader()
	skb.Csum = buf.CsumNone
	skb.GSOSize = 0
	d.freeLocked(q)
	d.oks.Add(1)
	return Accept()
}

// complete reports whether adding [off, end) fills [0, total).
func (q *fragQueue) complete(off, end int) bool {
	n := end - off
	for _, f := range q.frags {
		n += f.end - f.off
	}
	return n == q.total // overlaps were refused, so sizes add up
}

func (d *defrag) freeLocked(q *fragQueue) {
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

func (d *defrag) killLocked(q *fragQueue, reason buf.DropReason) {
	q.timer.Stop()
	for _, f := range q.frags {
		f.skb.Free(reason)
	}
	d.mem -= q.mem
	q.frags, q.mem = nil, 0
	delete(d.qs, q.key)
	d.fails.Add(1)
}

// expire is ip_expire: the datagram never completed.
func (d *defrag) expire(q *fragQueue) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.qs[q.key] != q {
		return
	}
	d.timeouts.Add(1)
	d.killLocked(q, DropDefragTimeout)
}
