package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/link/pcap"
)

// Bounds and defaults of a capture.
const (
	// DefaultSnaplen is the bytes kept of each frame when Config.Snaplen
	// is 0: a 64 KiB GSO super-packet and its headers (tcpdump's default).
	DefaultSnaplen = pcap.DefaultSnaplen
	// DefaultQueueLen and DefaultQueueBytes bound the frames copied by the
	// tap and not yet written; a frame past either is dropped and counted
	// (Stats.Dropped), the packet path never waits for the writer.
	DefaultQueueLen   = 4096
	DefaultQueueBytes = 16 << 20
	// MaxQueueBytes caps Config.QueueBytes.
	MaxQueueBytes = 256 << 20
)

// Config describes one capture.
type Config struct {
	// Devices are the NICs to tap (the stack's device list).
	Devices *dev.Devices
	// Clock stamps transmitted frames (received ones carry their batch's
	// receive time, dev.NIC.RxTime); nil is the wall clock.
	Clock clock.Clock
	// NICs selects NIC IDs; empty captures every NIC (tcpdump -i any).
	NICs []int
	// Filter selects frames; nil keeps every frame.
	Filter *Filter
	// Snaplen is the bytes kept per frame; 0 is DefaultSnaplen.
	Snaplen int
	// MaxPackets ends the capture after that many frames; 0 is no bound.
	MaxPackets int
	// QueueLen and QueueBytes bound the queue between the tap and the
	// writer; 0 takes the defaults.
	QueueLen, QueueBytes int
}

// Stats are a capture's counters.
type Stats struct {
	// Matched frames passed the NIC selection and the filter; Written
	// reached the pcap stream; Dropped were lost because the queue was
	// full (the writer, i.e. the reader of the stream, was too slow).
	Matched, Written, Dropped uint64
	// Bytes is the captured bytes written (at most Snaplen per frame).
	Bytes uint64
}

type record struct {
	t      time.Time
	data   []byte
	length int
}

// Session is one running capture: a tap on the device list and the
// bounded queue it fills. WritePcap drains it.
type Session struct {
	cfg    Config
	now    func() time.Time
	nics   map[int]bool // nil: every NIC
	remove func()

	mu      sync.Mutex
	q       []record // bound: cfg.QueueLen records, cfg.QueueBytes bytes
	qBytes  int
	stopped bool
	wake    chan struct{} // cap 1: the writer's doorbell

	matched, written, dropped, bytes atomic.Uint64
	// settled counts matched frames the tap has queued or dropped; with
	// MaxPackets, the capture is over once settled reaches it and the
	// queue is empty. full is set when matched reaches it: the tap stops
	// looking at frames.
	settled atomic.Uint64
	full    atomic.Bool
}

// Start checks cfg and puts the capture's tap on the device list. The
// frames it copies wait in the session's queue until WritePcap writes
// them; Stop (or the end of WritePcap) removes the tap.
func Start(cfg Config) (*Session, error) {
	if cfg.Devices == nil {
		return nil, errors.New("capture: no device list")
	}
	if cfg.Snaplen < 0 || cfg.MaxPackets < 0 || cfg.QueueLen < 0 || cfg.QueueBytes < 0 {
		return nil, fmt.Errorf("capture: negative bound in %+v", cfg)
	}
	if cfg.Snaplen == 0 {
		cfg.Snaplen = DefaultSnaplen
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	if cfg.QueueBytes == 0 {
		cfg.QueueBytes = DefaultQueueBytes
	}
	cfg.QueueBytes = min(cfg.QueueBytes, MaxQueueBytes)
	s := &Session{cfg: cfg, now: time.Now, wake: make(chan struct{}, 1)}
	if cfg.Clock != nil {
		s.now = cfg.Clock.Now
	}
	if len(cfg.NICs) > 0 {
		s.nics = make(map[int]bool, len(cfg.NICs))
		for _, id := range cfg.NICs {
			s.nics[id] = true
		}
	}
	s.remove = cfg.Devices.AddTap(s.tap)
	return s, nil
}

// tap runs on a NIC's receive goroutine or on a transmit flusher: it
// selects, filters and copies; it never blocks beyond the queue's lock.
func (s *Session) tap(nic *dev.NIC, skb *buf.SKB, d dev.Direction) {
	if s.full.Load() || (s.nics != nil && !s.nics[nic.ID()]) {
		return
	}
	frame := skb.Bytes()
	dir := Inbound
	if d == dev.Tx {
		dir = Outbound
	}
	if !s.cfg.Filter.Match(frame, dir) {
		return
	}
	if m := s.matched.Add(1); m >= s.limit() {
		s.full.Store(true)
		if m > s.limit() {
			return
		}
	}
	var t time.Time
	if d == dev.Rx {
		t = nic.RxTime()
	} else {
		t = s.now()
	}
	n := min(len(frame), s.cfg.Snaplen)
	s.mu.Lock()
	if s.stopped || len(s.q) >= s.cfg.QueueLen || s.qBytes+n > s.cfg.QueueBytes {
		s.mu.Unlock()
		s.dropped.Add(1)
	} else {
		s.q = append(s.q, record{t: t, data: append([]byte(nil), frame[:n]...), length: len(frame)})
		s.qBytes += n
		s.mu.Unlock()
	}
	// Settled before the writer is rung: a writer woken by the last frame
	// of MaxPackets must see it settled, or it would wait for a ring that
	// never comes.
	s.settled.Add(1)
	s.ring()
}

// ring wakes the writer.
func (s *Session) ring() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Stop ends the capture: the tap goes, what is queued is still written
// by a running WritePcap, which then returns. Stop is idempotent.
func (s *Session) Stop() {
	s.mu.Lock()
	already := s.stopped
	s.stopped = true
	s.mu.Unlock()
	if !already {
		s.remove()
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (s *Session) Stats() Stats {
	return Stats{Matched: min(s.matched.Load(), s.limit()), Written: s.written.Load(),
		Dropped: s.dropped.Load(), Bytes: s.bytes.Load()}
}

func (s *Session) limit() uint64 {
	if s.cfg.MaxPackets > 0 {
		return uint64(s.cfg.MaxPackets)
	}
	return ^uint64(0)
}

// WritePcap writes a pcap stream (LINKTYPE_ETHERNET, the file header
// first) to w: every queued frame, in the order the tap saw them, until
// MaxPackets frames are written, Stop was called and the queue drained,
// or ctx is done (then what is queued is discarded). flush, when not nil,
// runs after each batch (an HTTP response's Flush). It stops the capture
// before returning and returns the first write error.
func (s *Session) WritePcap(ctx context.Context, w io.Writer, flush func()) (Stats, error) {
	defer s.Stop()
	pw, err := pcap.NewWriter(w, s.cfg.Snaplen)
	if err != nil {
		return s.Stats(), err
	}
	if flush != nil {
		flush()
	}
	var batch []record
	for {
		s.mu.Lock()
		batch, s.q = s.q, batch[:0]
		s.qBytes = 0
		stopped := s.stopped
		s.mu.Unlock()
		for i, r := range batch {
			if err := pw.WriteRecord(r.t, r.data, r.length); err != nil {
				return s.Stats(), err
			}
			s.bytes.Add(uint64(len(r.data)))
			batch[i] = record{}
			s.written.Add(1)
		}
		if len(batch) > 0 && flush != nil {
			flush()
		}
		s.mu.Lock()
		empty := len(s.q) == 0
		s.mu.Unlock()
		if empty && (stopped || s.settled.Load() >= s.limit()) {
			return s.Stats(), nil
		}
		if !empty {
			continue
		}
		select {
		case <-ctx.Done():
			return s.Stats(), nil
		case <-s.wake:
		}
	}
}
