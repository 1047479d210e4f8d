// Package pcap owns packet capture to the classic pcap file format
// (LINKTYPE_ETHERNET), the stack's tcpdump: a Writer that any layer may
// feed (dev's tap calls WritePacket for every frame, like a ptype_all
// handler in net/packet/af_packet.c) and an Endpoint wrapper that records
// every frame a link reads or writes.
//
// The file format comes from github.com/gopacket/gopacket/pcapgo (pure Go,
// no cgo); this package adds the locking, snap length and counters.
//
// Limits: a frame longer than the snap length is truncated in the file
// (the record keeps its original length, as tcpdump -s does). Write errors
// do not disturb the link: they are counted and the first one is kept.
//
// Not owned here: buffering and closing the io.Writer (the caller's), what
// frames mean.
package pcap

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// DefaultSnaplen is what NewWriter uses for snaplen <= 0: a 64 KiB GSO
// super-packet and its headers, tcpdump's own default.
const DefaultSnaplen = 262144

// Writer writes frames to a pcap stream. It is safe for concurrent use.
type Writer struct {
	mu      sync.Mutex
	w       *pcapgo.Writer
	snaplen int

	packets, bytes, errs atomic.Uint64
	firstErr             atomic.Pointer[error]
}

// NewWriter writes the pcap file header (LINKTYPE_ETHERNET, microsecond
// timestamps) to w and returns a Writer that records at most snaplen bytes
// per frame (<= 0: DefaultSnaplen).
func NewWriter(w io.Writer, snaplen int) (*Writer, error) {
	if w == nil {
		return nil, errors.New("pcap: nil io.Writer")
	}
	if snaplen <= 0 {
		snaplen = DefaultSnaplen
	}
	pw := pcapgo.NewWriter(w)
	if err := pw.WriteFileHeader(uint32(snaplen), layers.LinkTypeEthernet); err != nil {
		return nil, fmt.Errorf("pcap: file header: %w", err)
	}
	return &Writer{w: pw, snaplen: snaplen}, nil
}

// WritePacket records frame (from its Ethernet header) captured at t. It
// does not keep frame.
func (w *Writer) WritePacket(t time.Time, frame []byte) error {
	data := frame
	if len(data) > w.snaplen {
		data = data[:w.snaplen]
	}
	ci := gopacket.CaptureInfo{Timestamp: t, CaptureLength: len(data), Length: len(frame)}
	w.mu.Lock()
	err := w.w.WritePacket(ci, data)
	w.mu.Unlock()
	if err != nil {
		return w.fail(err)
	}
	w.packets.Add(1)
	w.bytes.Add(uint64(len(data)))
	return nil
}

// fail counts a write error and keeps the first. It is a separate function
// so that the error escaping to the heap costs nothing on the success path.
func (w *Writer) fail(err error) error {
	w.errs.Add(1)
	err = fmt.Errorf("pcap: %w", err)
	w.firstErr.CompareAndSwap(nil, &err)
	return err
}

// WriterStats are a Writer's counters.
type WriterStats struct {
	Packets, Bytes uint64 // records written, captured bytes
	Errors         uint64 // failed writes
	FirstErr       error  // the first failure, nil when none
}

// Stats returns the counters.
func (w *Writer) Stats() WriterStats {
	s := WriterStats{Packets: w.packets.Load(), Bytes: w.bytes.Load(), Errors: w.errs.Load()}
	if p := w.firstErr.Load(); p != nil {
		s.FirstErr = *p
	}
	return s
}

// Endpoint records every frame an inner endpoint reads or writes. It
// implements link.Endpoint.
type Endpoint struct {
	inner link.Endpoint
	w     *Writer
	clk   clock.Clock
}

// Wrap returns inner with capture: received frames are recorded after the
// inner ReadBatch returns them, transmitted ones before the inner
// WriteBatch consumes them, each batch with one timestamp from clk (nil:
// the wall clock). Close closes inner, not w's io.Writer.
func Wrap(inner link.Endpoint, w *Writer, clk clock.Clock) *Endpoint {
	return &Endpoint{inner: inner, w: w, clk: clk}
}

func (e *Endpoint) now() time.Time {
	if e.clk == nil {
		return time.Now()
	}
	return e.clk.Now()
}

// ReadBatch reads from inner and records what it returned.
func (e *Endpoint) ReadBatch(pkts []*buf.SKB) (int, error) {
	n, err := e.inner.ReadBatch(pkts)
	if n > 0 {
		t := e.now()
		for _, s := range pkts[:n] {
			e.w.WritePacket(t, s.Bytes()) // failures are counted by the Writer
		}
	}
	return n, err
}

// WriteBatch records pkts, then hands them to inner, which consumes them.
func (e *Endpoint) WriteBatch(pkts []*buf.SKB) (int, error) {
	if len(pkts) > 0 {
		t := e.now()
		for _, s := range pkts {
			e.w.WritePacket(t, s.Bytes())
		}
	}
	return e.inner.WriteBatch(pkts)
}

// MTU is inner's.
func (e *Endpoint) MTU() int { return e.inner.MTU() }

// Caps are inner's.
func (e *Endpoint) Caps() link.Caps { return e.inner.Caps() }

// Close closes inner.
func (e *Endpoint) Close() error { return e.inner.Close() }

// Inner is the wrapped endpoint.
func (e *Endpoint) Inner() link.Endpoint { return e.inner }

var _ link.Endpoint = (*Endpoint)(nil)
