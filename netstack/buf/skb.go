// Package buf owns the packet buffer (include/linux/skbuff.h, net/core/skbuff.c):
// the SKB with reserved headroom, push/pull/put/trim, recorded header offsets,
// clones that share payload, pooled storage and drop reasons.
//
// Not owned here: what the bytes mean (header), who transmits (dev) or
// queues (sockets). An SKB has exactly one owner at a time; every function
// that takes an SKB says in its doc whether it consumes it. A consumed SKB
// leaves by Consume (delivered, no drop) or Free(reason) (dropped).
//
// Storage comes from size-classed pools of blocks, so a steady-state receive
// path allocates nothing: the SKB struct and its block return to their pools
// when the last reference goes.
package buf

import (
	"sync"
	"sync/atomic"
)

// SKB is a packet buffer, the sk_buff. The valid bytes are b.data[head:tail];
// bytes before head are headroom for headers pushed on the way down, bytes
// after tail are tailroom.
type SKB struct {
	blk        *block
	head, tail int

	// Header offsets into the block, -1 when unset (skb->mac_header,
	// network_header, transport_header).
	mac, network, transport int

	// Protocol is the EtherType of the payload (skb->protocol).
	Protocol uint16
	// InNIC is the ID of the NIC the packet arrived on, 0 for locally
	// generated packets (skb->skb_iif).
	InNIC int
	// OutNIC is the ID of the NIC chosen by routing, 0 before (skb_dst dev).
	OutNIC int
	// Mark is the netfilter/routing mark (skb->mark).
	Mark uint32
	// Csum describes checksum state (skb->ip_summed).
	Csum CsumState
	// CsumOffset locates the checksum a CsumPartial packet still needs
	// (csum_start/csum_offset): the sum covers the bytes from the
	// transport header (SetTransportHeader) to the end and is stored
	// CsumOffset bytes past the transport header. The transport header is
	// an offset into the storage, so it survives Push and Pull.
	CsumOffset uint16
	// GSOSize is the segment payload size of a GSO super-packet, 0 for a
	// normal packet (skb_shinfo(skb)->gso_size).
	GSOSize uint16
	// GSOType says which protocol segments a GSO super-packet.
	GSOType GSOType
	// Drops, when set, receives a count for each Free(reason). Receive
	// paths point it at the NIC's counters, local output at the stack's.
	Drops *DropStats
	// CB is per-layer scratch space, like skb->cb: the layer that owns the
	// SKB may use it and must not expect it to survive a hand-off.
	CB [32]byte
	// Batch is the receive batch carrying the SKB up (the NIC's receive
	// goroutine sets it, see Batch), nil for SKBs not being received
	// that way. Only valid while the SKB is carried up on that
	// goroutine: Clone and Copy do not pass it on.
	Batch *Batch

	next *SKB // intrusive link for Queue

	// ownHead: the headroom is this clone's to push into although the
	// storage is shared (CloneHeadroom): the bytes before privEnd, where
	// the shared data began, are its own.
	ownHead bool
	privEnd int
}

// CsumState is skb->ip_summed.
type CsumState uint8

const (
	// CsumNone: nothing is known; software must verify the checksum.
	CsumNone CsumState = iota
	// CsumUnnecessary: the checksum was verified (by a peer that owns the
	// wire, a veth with offloads, or by us).
	CsumUnnecessary
	// CsumPartial: the pseudo-header sum is stored in the checksum field and
	// the sum over CsumStart.. remains to be folded in before the wire.
	CsumPartial
)

// GSOType is the kind of a GSO super-packet (SKB_GSO_*).
type GSOType uint8

const (
	GSONone GSOType = iota
	GSOTCPv4
	GSOUDPL4v4
	GSOTCPv6
)

// block is refcounted storage shared by an SKB and its clones.
type block struct {
	data  []byte
	refs  atomic.Int32
	class int8 // index into classes, -1 for an unpooled block
}

// Size classes of pooled blocks. The last class holds a 64 KiB GSO
// super-packet plus headroom for every header we push.
var classes = [...]int{512, 2048, 9216, 65536 + 512}

var blockPools [len(classes)]sync.Pool

var skbPool = sync.Pool{New: func() any { return new(SKB) }}

// MaxHeadroom is the headroom callers reserve for Ethernet + IPv4 (with
// options) + TCP (with options) when they do not know better.
const MaxHeadroom = 128

func getBlock(size int) *block {
	for i, c := range classes {
		if size <= c {
			if v := blockPools[i].Get(); v != nil {
				b := v.(*block)
				b.refs.Store(1)
				return b
			}
			b := &block{data: make([]byte, c), class: int8(i)}
			b.refs.Store(1)
			return b
		}
	}
	b := &block{data: make([]byte, size), class: -1}
	b.refs.Store(1)
	return b
}

func (b *block) put() {
	if b.refs.Add(-1) != 0 {
		return
	}
	if b.class >= 0 {
		blockPools[b.class].Put(b)
	}
}

// Alloc returns an empty SKB with at least headroom bytes before the data
// and room for size bytes after it (alloc_skb + skb_reserve).
func Alloc(headroom, size int) *SKB {
	if headroom < 0 {
		headroom = 0
	}
	if size < 0 {
		size = 0
	}
	s := skbPool.Get().(*SKB)
	s.blk = getBlock(headroom + size)
	s.head, s.tail = headroom, headroom
	s.mac, s.network, s.transport = -1, -1, -1
	return s
}

// FromBytes returns an SKB holding a copy of p with headroom before it.
func FromBytes(headroom int, p []byte) *SKB {
	s := Alloc(headroom, len(p))
	copy(s.Put(len(p)), p)
	return s
}

// reset clears every field for reuse from the pool.
func (s *SKB) reset() {
	*s = SKB{}
}

// Len is the number of valid bytes.
func (s *SKB) Len() int { return s.tail - s.head }

// Bytes returns the valid bytes. The slice aliases the buffer: it is valid
// until the next Push, Put or release of the SKB, and a cloned SKB's bytes
// must not be written (see Writable).
func (s *SKB) Bytes() []byte { return s.blk.data[s.head:s.tail] }

// Truesize is the storage the SKB's block holds, headroom and tailroom
// included (skb->truesize without the struct): what queueing it costs.
func (s *SKB) Truesize() int { return len(s.blk.data) }

// Headroom is the number of bytes Push can prepend without reallocating.
func (s *SKB) Headroom() int { return s.head }

// Tailroom is the number of bytes Put can append without reallocating.
func (s *SKB) Tailroom() int { return len(s.blk.data) - s.tail }

// Push prepends n bytes and returns them (skb_push). Without enough
// headroom it reallocates (pskb_expand_head), which costs a copy; callers
// reserve MaxHeadroom to avoid it.
func (s *SKB) Push(n int) []byte {
	if n > s.head || s.shared() && !s.ownHead {
		s.expand(n+MaxHeadroom, 0)
	}
	s.head -= n
	return s.blk.data[s.head : s.head+n]
}

// Pull removes n bytes from the front and returns them (skb_pull). It
// returns nil and changes nothing when fewer than n bytes are valid.
func (s *SKB) Pull(n int) []byte {
	if n < 0 || n > s.Len() {
		return nil
	}
	p := s.blk.data[s.head : s.head+n]
	s.head += n
	return p
}

// Put appends n bytes and returns them (skb_put), reallocating when the
// tailroom is short.
func (s *SKB) Put(n int) []byte {
	if n > s.Tailroom() || s.shared() {
		s.expand(0, n)
	}
	p := s.blk.data[s.tail : s.tail+n]
	s.tail += n
	return p
}

// Extend appends n bytes that are already in the tailroom (written
// there by the owner) without unsharing the storage, unlike Put: clones
// never reach past their own tail, so the owner of a buffer it keeps
// appending to (a TCP send queue chunk whose clones are in flight) may
// keep appending. n must not exceed Tailroom.
func (s *SKB) Extend(n int) {
	if n > 0 && n <= s.Tailroom() {
		s.tail += n
	}
}

// TailroomBytes returns the tailroom for the owner to write into before
// Extend.
func (s *SKB) TailroomBytes() []byte { return s.blk.data[s.tail:] }

// Shared reports whether a clone shares the storage (skb_cloned).
func (s *SKB) Shared() bool { return s.shared() }

// CloneHeadroom is a clone whose headroom is its own to push headers
// into without a copy, although the storage is shared: the original is
// a payload-only buffer (a TCP send queue chunk: Linux's skb with nohdr
// set) that never uses the bytes before its data, and at most one such
// clone of it is alive at a time (the caller checks Shared first). Other
// writes still unshare (Writable).
func (s *SKB) CloneHeadroom() *SKB {
	c := s.Clone()
	c.ownHead, c.privEnd = true, c.head
	return c
}

// WritableHead makes the first n bytes of data safe to modify: a no-op
// when they lie in a CloneHeadroom clone's own headroom (the headers it
// pushed), else Writable.
func (s *SKB) WritableHead(n int) {
	if s.ownHead && s.head+n <= s.privEnd {
		return
	}
	s.Writable()
}

// Trim cuts the data to n bytes (skb_trim); a larger n changes nothing.
func (s *SKB) Trim(n int) {
	if n >= 0 && n < s.Len() {
		s.tail = s.head + n
	}
}

// Reserve moves an empty SKB's data start forward by n (skb_reserve).
func (s *SKB) Reserve(n int) {
	if s.Len() == 0 && n <= s.Tailroom() {
		s.head += n
		s.tail += n
	}
}

// Cloned reports whether the storage is shared with another SKB.
func (s *SKB) shared() bool { return s.blk.refs.Load() > 1 }

// Writable makes the bytes safe to modify: a clone gets a private copy
// (skb_cow). Call it before rewriting headers of a packet that may be
// shared, such as one captured by a tap.
func (s *SKB) Writable() {
	if s.shared() {
		s.expand(0, 0)
	}
}

// expand copies the data into a fresh private block with at least the
// given extra headroom and tailroom (pskb_expand_head).
func (s *SKB) expand(head, tail int) {
	if head < s.head {
		head = s.head
	}
	if t := s.Tailroom(); tail < t {
		tail = t
	}
	n := s.Len()
	nb := getBlock(head + n + tail)
	copy(nb.data[head:], s.blk.data[s.head:s.tail])
	delta := head - s.head
	for _, off := range []*int{&s.mac, &s.network, &s.transport} {
		if *off >= 0 {
			*off += delta
		}
	}
	s.blk.put()
	s.blk = nb
	s.head, s.tail = head, head+n
	s.ownHead = false
}

// Clone returns a second SKB sharing the storage (skb_clone): no payload
// copy. Both must call Writable before modifying bytes.
func (s *SKB) Clone() *SKB {
	c := skbPool.Get().(*SKB)
	*c = *s
	c.next, c.Batch, c.ownHead = nil, nil, false
	s.blk.refs.Add(1)
	return c
}

// Copy returns a private deep copy with the same headroom (skb_copy).
func (s *SKB) Copy() *SKB {
	c := skbPool.Get().(*SKB)
	*c = *s
	c.next, c.Batch, c.ownHead = nil, nil, false
	c.blk = getBlock(len(s.blk.data))
	copy(c.blk.data[s.head:s.tail], s.blk.data[s.head:s.tail])
	return c
}

// Consume releases an SKB that was delivered or transmitted (consume_skb).
func (s *SKB) Consume() {
	if s == nil || s.blk == nil {
		return
	}
	s.blk.put()
	s.reset()
	skbPool.Put(s)
}

// Free releases a dropped SKB and counts reason (kfree_skb_reason).
func (s *SKB) Free(reason DropReason) {
	if s == nil || s.blk == nil {
		return
	}
	if s.Drops != nil {
		s.Drops.Add(reason)
	}
	s.Consume()
}

// Header offsets. Set* records the current data start as the header;
// the getters return the bytes from the header to the end of data, or nil
// when unset or pulled past.

func (s *SKB) SetMACHeader()       { s.mac = s.head }
func (s *SKB) SetNetworkHeader()   { s.network = s.head }
func (s *SKB) SetTransportHeader() { s.transport = s.head }

// SetNetworkHeaderAt records the network header at off bytes past the data start.
func (s *SKB) SetNetworkHeaderAt(off int) { s.network = s.head + off }

// SetTransportHeaderAt records the transport header at off bytes past the data start.
func (s *SKB) SetTransportHeaderAt(off int) { s.transport = s.head + off }

func (s *SKB) MACHeader() []byte       { return s.from(s.mac) }
func (s *SKB) NetworkHeader() []byte   { return s.from(s.network) }
func (s *SKB) TransportHeader() []byte { return s.from(s.transport) }

// NetworkOffset is the network header's offset from the data start; it is
// negative when the header lies in the headroom (already pulled).
func (s *SKB) NetworkOffset() int { return s.network - s.head }

// TransportOffset is the transport header's offset from the data start.
func (s *SKB) TransportOffset() int { return s.transport - s.head }

func (s *SKB) from(off int) []byte {
	if off < 0 || off > s.tail {
		return nil
	}
	return s.blk.data[off:s.tail]
}

// PushTo moves the data start back to the network or MAC header recorded
// earlier (skb_push to a known header), returning false when unset.
func (s *SKB) PushToNetwork() bool { return s.pushTo(s.network) }
func (s *SKB) PushToMAC() bool     { return s.pushTo(s.mac) }

func (s *SKB) pushTo(off int) bool {
	if off < 0 || off > s.tail {
		return false
	}
	s.head = off
	return true
}
