package netfilter

import (
	"net/netip"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
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
	fragTable[frag6Key]
}

type frag6Key struct {
	src, dst netip.Addr
	id       uint32
}

func (d *defrag6) init(nf *Netfilter, timeout time.Duration, mem int) {
	if timeout <= 0 {
		// nf_conntrack_frag6_timeout, RFC 8200 §4.5's 60 seconds.
		timeout = 60 * time.Second
	}
	if mem <= 0 {
		mem = defaultDefragMem
	}
	d.fragTable.init(nf, timeout, mem)
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

func (nf *Netfilter) defrag6Hook(skb *buf.SKB, st State) Verdict {
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
	d.t.Lock()
	defer d.t.Unlock()
	q, v, complete := d.queue(key, skb, off, end, dataOff, nhoff, len(b), fh.More())
	if !complete {
		return v
	}
	// Complete: skb becomes the packet (nf_ct_frag6_reasm). The
	// unfragmentable part and the Next Header come from the first
	// fragment (RFC 8200 §4.5: the offset-zero one).
	first := q.Frags[0]
	fb := first.SKB.Bytes()
	unfrag := int(first.Data) - header.IPv6FragmentSize // its Fragment header
	out := morph(skb, unfrag+q.Total)
	copy(out, fb[:unfrag])
	out[first.Aux] = header.IPv6Fragment(fb[unfrag:]).NextHeader()
	for i := range q.Frags {
		copy(out[unfrag+int(q.Frags[i].Off):], q.Frags[i].Payload())
	}
	header.IPv6(out).SetPayloadLen(unfrag + q.Total - header.IPv6MinSize)
	maxLen := 0
	for _, f := range q.Frags {
		maxLen = max(maxLen, f.SKB.Len())
	}
	setFragMaxSize(skb, maxLen)
	return d.done(q, skb)
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
