// Package link owns the boundary between the stack and a wire: the Endpoint
// interface a NIC drives (the driver's ndo_start_xmit and NAPI poll, seen
// from net/core/dev.c). Implementations live in subpackages: afpacket (an
// AF_PACKET socket on a real interface), pipe (an in-memory pair for tests),
// fault (loss, reordering, duplication, corruption and delay, because this
// kernel has no netem) and pcap (a capture tap).
//
// Not owned here: what frames mean (dev dispatches by EtherType), queueing
// policy (dev's transmit queue), MAC addresses (dev's NIC).
package link

import (
	"errors"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// Caps are the offloads an endpoint offers (netdev_features_t).
type Caps uint32

const (
	// CapTxChecksumPartial: WriteBatch accepts buf.CsumPartial packets and
	// the far side completes the checksum (NETIF_F_HW_CSUM).
	CapTxChecksumPartial Caps = 1 << iota
	// CapRxChecksum: ReadBatch may mark packets CsumUnnecessary or
	// CsumPartial instead of leaving verification to software.
	CapRxChecksum
	// CapGSO: WriteBatch accepts TCP GSO super-packets (NETIF_F_TSO).
	CapGSO
	// CapGRO: ReadBatch may return merged super-packets.
	CapGRO
)

// Has reports whether every capability in c2 is present.
func (c Caps) Has(c2 Caps) bool { return c&c2 == c2 }

// Endpoint is a link a NIC reads from and writes to. Frames start at the
// Ethernet header in both directions.
type Endpoint interface {
	// ReadBatch blocks until at least one frame arrives, then fills
	// pkts[:n] with SKBs the caller owns. After Close it returns ErrClosed.
	ReadBatch(pkts []*buf.SKB) (n int, err error)
	// WriteBatch transmits pkts in order and consumes all of them, sent or
	// not: n are sent, the rest were freed with a drop reason.
	WriteBatch(pkts []*buf.SKB) (n int, err error)
	// MTU is the largest frame payload (excluding the Ethernet header).
	MTU() int
	// Caps are the offloads offered.
	Caps() Caps
	// Close makes ReadBatch and WriteBatch return ErrClosed; it is safe to
	// call more than once.
	Close() error
}

// MultiQueue is an Endpoint with several receive queues (a NIC's RSS
// queues; AF_PACKET's PACKET_FANOUT): the frames of one flow always
// arrive on the same queue, so each queue can be read by its own
// goroutine and flows are carried up on several CPUs at once, each in
// order. ReadBatch reads queue 0.
type MultiQueue interface {
	Endpoint
	// RxQueues is the number of receive queues, at least 1.
	RxQueues() int
	// ReadQueue is ReadBatch on receive queue q (0 <= q < RxQueues()).
	ReadQueue(q int, pkts []*buf.SKB) (n int, err error)
}

// LoopReader is an Endpoint that runs a receive queue's loop itself, as
// NAPI's poll runs inside the driver: ReadLoop reads queue q's frames
// into pkts and hands each batch (pkts[:n], owned by handle) to handle
// from inside its wait for readability, so that after a batch shorter
// than pkts it can wait for the next frame without another read to find
// the queue empty (a frame that arrived meanwhile is still announced).
// It returns nil when handle returns false, ErrClosed after Close, or
// the read's error. An Endpoint without it is read with ReadBatch and
// ReadQueue.
type LoopReader interface {
	ReadLoop(q int, pkts []*buf.SKB, handle func(n int) bool) error
}

// ErrClosed is returned by an Endpoint after Close.
var ErrClosed = errors.New("link: endpoint closed")

// DropTxClosed counts frames written to a closed endpoint.
var DropTxClosed = buf.NewDropReason("LINK_TX_CLOSED")
