package afpacket

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// Defaults and bounds.
const (
	// DefaultBatchSize is the number of frames one recvmmsg/sendmmsg moves.
	DefaultBatchSize = 64
	// MaxBatchSize bounds BatchSize (and the preallocated rings).
	MaxBatchSize = 1024
	// MaxQueues bounds Config.Queues.
	MaxQueues = 16
	// DefaultSockBuf is the socket send and receive buffer, in bytes.
	DefaultSockBuf = 4 << 20
	// rxHeadroom is reserved before each received frame, which starts at
	// the Ethernet header (see the package doc).
	rxHeadroom = buf.MaxHeadroom
	ethHdrLen  = 14
	// DefaultBusyPoll is the busy-poll budget the daemon's --busy-poll
	// starts from: off. make bench on a 2-vCPU VM, proxy mode, 30 µs
	// against off in one run (3 interleaved rounds, ratios to the kernel
	// path), BusyPollAlso polling the host sockets: 1-byte RR p50 6.65×
	// against 8.58×, but p99 10.4× against 8.9×, connections/s 0.42×
	// against 0.45×, one stream 0.73×/0.55× against 0.69×/0.78×, four
	// streams 0.44×/0.32× against 0.45×/0.54×, 0.46 CPU s/GB against
	// 0.42: the poller holds one of the two Ps that the other queue and
	// the host side need. With one receive queue (--rx-queues 1, another
	// run, 5 rounds) connections/s rose to 0.54× (0.45× off; pasta
	// 0.55×) and RR p50 to 5.9×, at the four streams' cost. Without
	// BusyPollAlso (the host's answers still wake the proxy's poller) 50
	// µs made round trips slower, not faster. Turn it on for
	// request/response pods on nodes with cores to spare, and measure.
	DefaultBusyPoll = 0
	// MaxBusyPoll bounds Config.BusyPoll: the CPU a link may burn on an
	// empty socket before it sleeps.
	MaxBusyPoll = 10 * time.Millisecond
)

// Drop reasons of the AF_PACKET link.
var (
	DropAFPacketRxTruncated = buf.NewDropReason("AFPACKET_RX_TRUNCATED")
	DropAFPacketRxRunt      = buf.NewDropReason("AFPACKET_RX_RUNT")
	DropAFPacketTxTooBig    = buf.NewDropReason("AFPACKET_TX_TOO_BIG")
	DropAFPacketTxRunt      = buf.NewDropReason("AFPACKET_TX_RUNT")
	DropAFPacketTxError     = buf.NewDropReason("AFPACKET_TX_ERROR")
	DropAFPacketBadVnetHdr  = buf.NewDropReason("AFPACKET_BAD_VNET_HDR")
)

// Config says which interface to open.
type Config struct {
	// NetNS is the path of the interface's network namespace (e.g.
	// /var/run/netns/NAME or /proc/PID/ns/net); empty is the caller's.
	NetNS string
	// Ifindex or Name selects the interface (both: they must agree).
	Ifindex int
	Name    string
	// BatchSize is the most frames per syscall (0: DefaultBatchSize,
	// at most MaxBatchSize).
	BatchSize int
	// FrameSize is the largest frame received, Ethernet header included
	// (0: the interface MTU + 14). Longer frames are dropped and counted.
	FrameSize int
	// SockBuf is the socket buffer size in bytes (0: DefaultSockBuf).
	SockBuf int
	// NoVnetHdr turns PACKET_VNET_HDR off: no checksum or segmentation
	// offload crosses the socket. Then a peer that sends TSO/GSO frames
	// (a veth with offloads on) loses them as truncated, and its partial
	// checksums arrive unfinished: only for links whose peer has
	// offloads off.
	NoVnetHdr bool
	// BusyPoll is how long ReadBatch keeps retrying a non-blocking
	// recvmmsg on an empty socket, yielding the CPU (sched_yield) between
	// tries, before it sleeps in the Go netpoller (NAPI busy polling, the
	// idea of SO_BUSY_POLL / net.core.busy_read). A frame that arrives
	// within the budget is read without an epoll wake-up of a parked
	// goroutine, which is most of a small round trip's latency; the price
	// is up to BusyPoll of CPU per empty read, so an idle link still
	// sleeps. 0 is off; at most MaxBusyPoll.
	BusyPoll time.Duration
	// BusyPollAlso, with BusyPoll on, is called on every try of a busy
	// poll to poll the other event sources of the flows this link
	// carries (the proxy's host sockets: daemon/proxy Engine.PollHost)
	// without blocking, so that the next event of a flow is caught
	// without a wake-up whichever side it comes from (epoll's busy
	// poll, ep_busy_loop, the other way round: there a socket waiter
	// polls the device queue). It returns how many events it handled;
	// any restarts the budget, as a frame ends the poll. It runs on the
	// reading goroutine with the queue held: it must not block, and
	// must not read this link.
	BusyPollAlso func() int
	// Queues is the number of receive queues: that many sockets bound
	// to the interface in one PACKET_FANOUT group that hashes flows
	// (PACKET_FANOUT_HASH, IP fragments reassembled first), so a flow's
	// frames always reach the same socket and each queue can be read by
	// its own goroutine (link.MultiQueue). 0 or 1 is one socket; at most
	// MaxQueues. The receive slots (and the memory they pin) are shared
	// out among the queues.
	Queues int
}

// rxQueue is one receive socket: slot i's SKB holds frameSize bytes of
// data that iov[i] points at; msgs[i] points at iov[i]. Guarded by mu.
type rxQueue struct {
	f  *os.File
	rc syscall.RawConn

	mu   sync.Mutex
	skbs []*buf.SKB
	iov  []unix.Iovec // two per slot with vnet headers: header, frame
	hdr  []vnetHdr
	msgs []unix.Mmsghdr
	vlen int
	n    int
	err  unix.Errno
	fn   func(fd uintptr) bool // q.recv, bound once so a read allocates nothing
	try  func(fd uintptr) bool // q.tryRecv, likewise
	none bool                  // tryRecv found the socket empty
}

// Endpoint is an AF_PACKET link. It implements link.Endpoint and
// link.MultiQueue.
type Endpoint struct {
	info       ifInfo
	frameSize  int
	batch      int
	vnet       bool // PACKET_VNET_HDR is on
	iovPer     int  // iovecs per message: 2 with vnet headers, else 1
	busyPoll   time.Duration
	pollAlso   func() int // Config.BusyPollAlso
	maxPollers int32      // maxBusyPollers at Open

	closed atomic.Bool
	once   sync.Once

	// Receive queues; rxq[0]'s socket also transmits.
	rxq []*rxQueue

	// Transmit: txSkbs[:txLen] are the frames of the batch being sent.
	// Guarded by txMu.
	txMu   sync.Mutex
	txSkbs []*buf.SKB
	txIov  []unix.Iovec // two per slot with vnet headers: header, frame
	txHdr  []vnetHdr
	txMsgs []unix.Mmsghdr
	txOff  int
	txLen  int
	txN    int
	txErr  unix.Errno
	txFn   func(fd uintptr) bool

	rxPackets, rxBytes, rxErrors  atomic.Uint64
	rxEmpty                       atomic.Uint64 // recvmmsg calls that found the socket empty (EAGAIN)
	txPackets, txBytes, txErrors  atomic.Uint64
	kernelDrops                   atomic.Uint64 // accumulated PACKET_STATISTICS tp_drops
	busyPollHits, busyPollSleeps  atomic.Uint64
	busyPollSkips, busyPollYields atomic.Uint64
	busyPollAlso                  atomic.Uint64
	drops                         buf.DropStats
}

// Open opens an AF_PACKET socket on the interface in cfg (see the package
// doc for how the namespace is entered).
func Open(cfg Config) (*Endpoint, error) {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchSize > MaxBatchSize {
		return nil, fmt.Errorf("afpacket: BatchSize %d > %d", cfg.BatchSize, MaxBatchSize)
	}
	if cfg.SockBuf <= 0 {
		cfg.SockBuf = DefaultSockBuf
	}
	if cfg.BusyPoll < 0 || cfg.BusyPoll > MaxBusyPoll {
		return nil, fmt.Errorf("afpacket: BusyPoll %v not in [0, %v]", cfg.BusyPoll, MaxBusyPoll)
	}
	if cfg.Queues <= 0 {
		cfg.Queues = 1
	}
	if cfg.Queues > MaxQueues {
		return nil, fmt.Errorf("afpacket: Queues %d > %d", cfg.Queues, MaxQueues)
	}
	fds, info, err := openInNetNS(cfg.NetNS, &cfg)
	if err != nil {
		return nil, err
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	vnet := !cfg.NoVnetHdr
	frameSize := cfg.FrameSize
	if frameSize <= 0 {
		frameSize = info.mtu + ethHdrLen
		if vnet {
			// A GSO super-frame: up to 64 KiB of IP datagram.
			frameSize = max(frameSize, maxGSOFrame)
		}
	}
	if frameSize < ethHdrLen {
		closeAll()
		return nil, fmt.Errorf("afpacket: FrameSize %d below an Ethernet header", frameSize)
	}
	rxBatch := cfg.BatchSize
	if vnet && cfg.FrameSize <= 0 {
		// Each receive slot holds a 64 KiB buffer: fewer slots bound the
		// memory a link pins (see the package doc), shared out among
		// the queues.
		rxBatch = min(rxBatch, max(vnetRxBatch/cfg.Queues, minVnetRxSlots))
	}
	iovPer := 1
	if vnet {
		iovPer = 2
	}
	e := &Endpoint{
		info: info, frameSize: frameSize, batch: cfg.BatchSize,
		vnet: vnet, iovPer: iovPer, busyPoll: cfg.BusyPoll, pollAlso: cfg.BusyPollAlso, maxPollers: maxBusyPollers(),
		txSkbs: make([]*buf.SKB, cfg.BatchSize),
		txIov:  make([]unix.Iovec, cfg.BatchSize*iovPer),
		txHdr:  make([]vnetHdr, cfg.BatchSize),
		txMsgs: make([]unix.Mmsghdr, cfg.BatchSize),
	}
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "afpacket:"+info.name)
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			for _, fd := range fds[i+1:] {
				unix.Close(fd)
			}
			e.closeQueues()
			return nil, fmt.Errorf("afpacket: %w", err)
		}
		q := &rxQueue{f: f, rc: rc,
			skbs: make([]*buf.SKB, rxBatch),
			iov:  make([]unix.Iovec, rxBatch*iovPer),
			hdr:  make([]vnetHdr, rxBatch),
			msgs: make([]unix.Mmsghdr, rxBatch),
		}
		for i := range q.msgs {
			q.msgs[i].Hdr.Iov = &q.iov[i*iovPer]
			q.msgs[i].Hdr.SetIovlen(iovPer)
			if vnet {
				q.iov[i*2].Base = &q.hdr[i][0]
				q.iov[i*2].SetLen(vnetHdrLen)
			}
			e.refill(q, i)
		}
		q.fn = func(fd uintptr) bool { return e.recv(q, fd) }
		q.try = func(fd uintptr) bool { return e.tryRecv(q, fd) }
		e.rxq = append(e.rxq, q)
	}
	for i := range e.txMsgs {
		e.txMsgs[i].Hdr.Iov = &e.txIov[i*iovPer]
		e.txMsgs[i].Hdr.SetIovlen(iovPer)
		if vnet {
			e.txIov[i*2].Base = &e.txHdr[i][0]
			e.txIov[i*2].SetLen(vnetHdrLen)
		}
	}
	e.txFn = e.send
	return e, nil
}

// RxQueues is the number of receive queues (Config.Queues).
func (e *Endpoint) RxQueues() int { return len(e.rxq) }

// Name is the interface name in its namespace.
func (e *Endpoint) Name() string { return e.info.name }

// Ifindex is the interface index in its namespace.
func (e *Endpoint) Ifindex() int { return e.info.index }

// MAC is the interface's hardware address, read at Open.
func (e *Endpoint) MAC() [6]byte { return e.info.mac }

// MTU is the interface MTU read at Open.
func (e *Endpoint) MTU() int { return e.info.mtu }

// Caps are the offloads PACKET_VNET_HDR carries: partial checksums and
// TCP segmentation both ways.
func (e *Endpoint) Caps() link.Caps {
	if !e.vnet {
		return 0
	}
	return link.CapTxChecksumPartial | link.CapRxChecksum | link.CapGSO | link.CapGRO
}

// refill gives receive slot i of q a fresh SKB from buf's pools.
func (e *Endpoint) refill(q *rxQueue, i int) {
	s := buf.Alloc(rxHeadroom, e.frameSize)
	p := s.Put(e.frameSize)
	q.skbs[i] = s
	iov := &q.iov[i*e.iovPer+e.iovPer-1]
	iov.Base = &p[0]
	iov.SetLen(e.frameSize)
}

// recv runs inside q.rc.Read; false asks the poller to wait for
// readability.
func (e *Endpoint) recv(q *rxQueue, fd uintptr) bool {
	for i := 0; i < q.vlen; i++ {
		q.msgs[i].Hdr.Flags = 0
	}
	for {
		// MSG_TRUNC: msg_len is the frame's real length (packet(7)).
		n, errno := recvmmsg(fd, q.msgs[:q.vlen], unix.MSG_TRUNC)
		switch errno {
		case 0:
			q.n, q.err = n, 0
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			e.rxEmpty.Add(1)
			return false
		default:
			q.n, q.err = 0, errno
			return true
		}
	}
}

// tryRecv runs inside q.rc.Read and never asks the poller to wait: an
// empty socket sets q.none.
func (e *Endpoint) tryRecv(q *rxQueue, fd uintptr) bool {
	if e.recv(q, fd) {
		q.none = false
	} else {
		q.n, q.err, q.none = 0, 0, true
	}
	return true
}

// busyPollers counts the reads busy polling now, in the whole process;
// at most maxBusyPollers at once (Go's runtime likewise spins at most
// GOMAXPROCS/2 idle threads). The rest sleep in the netpoller at once: a
// goroutine parked there is woken by a thread blocked in epoll_wait, which
// needs a P no poller holds, and pollers on every CPU would also keep the
// peers that answer us off the CPU.
var busyPollers atomic.Int32

func maxBusyPollers() int32 { return int32(max(1, runtime.GOMAXPROCS(0)/2)) }

// yieldTaken is how long a sched_yield(2) takes when it gave the CPU to
// another thread: the call alone returns in about a microsecond. A
// variable for the tests, which raise it to keep a poll going on a loaded
// machine.
var yieldTaken = 5 * time.Microsecond

// read fills rxN and rxErr with one recvmmsg. With a busy-poll budget, and
// a busy-poller slot free, it first retries the non-blocking read until a
// frame or an error comes or the budget has passed since the first empty
// try (napi_busy_loop until busy_loop_timeout), and only then sleeps in
// the netpoller, so an idle link costs at most one budget of CPU per read.
// Each try also runs BusyPollAlso, whose events restart the budget: a
// relay's host socket answered, and the pod's answer to what we sent it
// is likely next. Between tries it yields the CPU to other threads
// (sched_yield(2), as napi_busy_loop yields on need_resched), so a peer
// that is about to answer runs; a yield that took the CPU away (longer
// than yieldTaken: a thread was waiting for this CPU) ends the poll after
// one more try, so the poll spends only a CPU nobody else wants. It does
// not runtime.Gosched: that puts the goroutine on the global run queue
// and wakes an idle P's thread on every try, which measured slower than
// not polling at all; goroutines our frames woke are taken by the other
// Ps (work stealing). Each rc.Read checks Close and the read deadline, so
// both end the busy phase too. The budget is wall-clock time, not
// protocol time.
func (e *Endpoint) read(q *rxQueue) error {
	if e.busyPoll <= 0 {
		return q.rc.Read(q.fn)
	}
	if err := q.rc.Read(q.try); err != nil || !q.none {
		return err
	}
	if busyPollers.Add(1) > e.maxPollers {
		busyPollers.Add(-1)
		e.busyPollSkips.Add(1)
		return q.rc.Read(q.fn)
	}
	start := time.Now()
	for {
		if e.pollAlso != nil {
			if n := e.pollAlso(); n > 0 {
				e.busyPollAlso.Add(uint64(n))
				start = time.Now()
			}
		}
		t := time.Now()
		schedYield()
		taken := time.Since(t) > yieldTaken
		if err := q.rc.Read(q.try); err != nil || !q.none {
			busyPollers.Add(-1)
			if err == nil {
				e.busyPollHits.Add(1)
			}
			return err
		}
		if taken {
			e.busyPollYields.Add(1)
			break
		}
		if time.Since(start) >= e.busyPoll {
			e.busyPollSleeps.Add(1)
			break
		}
	}
	busyPollers.Add(-1)
	return q.rc.Read(q.fn)
}

// ReadBatch blocks until at least one frame arrives (or Close, then
// link.ErrClosed, or a read deadline, then os.ErrDeadlineExceeded) and
// returns up to len(pkts) frames the caller owns, from the Ethernet header,
// MAC header set.
func (e *Endpoint) ReadBatch(pkts []*buf.SKB) (int, error) { return e.ReadQueue(0, pkts) }

// ReadQueue is ReadBatch on receive queue q (link.MultiQueue); one
// reader per queue at a time.
func (e *Endpoint) ReadQueue(qi int, pkts []*buf.SKB) (int, error) {
	if len(pkts) == 0 || qi < 0 || qi >= len(e.rxq) {
		return 0, nil
	}
	q := e.rxq[qi]
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if e.closed.Load() {
			return 0, link.ErrClosed
		}
		q.vlen = min(len(pkts), len(q.msgs))
		if err := e.read(q); err != nil {
			if e.closed.Load() || errors.Is(err, os.ErrClosed) {
				return 0, link.ErrClosed
			}
			return 0, err
		}
		if n, ok, err := e.harvest(q, pkts); ok {
			return n, err
		}
	}
}

// ReadLoop is link.LoopReader: queue qi's receive loop inside one
// rc.Read, each batch handed to handle from the read's callback. After a
// batch shorter than pkts whose handling sent nothing on this link, it
// waits for readability at once, without the recvmmsg that would find
// the socket empty (one per wake-up otherwise: rc.Read forgets, when it
// starts, a readiness that came before it, so ReadQueue must read until
// EAGAIN; within one rc.Read the netpoller keeps a frame's edge that came
// during the batch for the wait). After a batch that sent, it reads
// again: the peer may have answered inside our send. With a busy-poll
// budget it is ReadQueue's loop.
func (e *Endpoint) ReadLoop(qi int, pkts []*buf.SKB, handle func(n int) bool) error {
	if len(pkts) == 0 || qi < 0 || qi >= len(e.rxq) {
		return nil
	}
	if e.busyPoll > 0 {
		for {
			n, err := e.ReadQueue(qi, pkts)
			if n > 0 && !handle(n) {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	q := e.rxq[qi]
	q.mu.Lock()
	defer q.mu.Unlock()
	q.vlen = min(len(pkts), len(q.msgs))
	var ret error
	err := q.rc.Read(func(fd uintptr) bool {
		for {
			if e.closed.Load() {
				ret = link.ErrClosed
				return true
			}
			if !e.recv(q, fd) {
				return false // empty: wait
			}
			n, ok, err := e.harvest(q, pkts)
			switch {
			case !ok:
				continue // nothing to hand up (dropped frames, a link down)
			case err != nil:
				ret = err
				return true
			}
			sent := e.txPackets.Load()
			if !handle(n) {
				return true
			}
			// A short batch whose handling sent nothing on this link
			// leaves the queue empty but for what came meanwhile, which
			// the wait sees. A frame sent may have been answered inside
			// the send (the peer's receive runs in our sendmmsg on a
			// veth: a SYN-ACK's ACK, a request's answer): read again.
			if q.n < q.vlen && e.txPackets.Load() == sent {
				return false
			}
		}
	})
	if err != nil {
		if e.closed.Load() || errors.Is(err, os.ErrClosed) {
			return link.ErrClosed
		}
		return err
	}
	return ret
}

// harvest turns the frames of q's last recvmmsg (q.n, q.err) into SKBs in
// pkts and refills their slots. ok is false when there is nothing to
// hand up and the caller reads again: every frame was dropped, or the
// interface went down (ENETDOWN, which packet_notifier reports once; it
// may come back).
func (e *Endpoint) harvest(q *rxQueue, pkts []*buf.SKB) (n int, ok bool, err error) {
	if q.err != 0 {
		e.rxErrors.Add(1)
		if q.err == unix.ENETDOWN {
			return 0, false, nil
		}
		return 0, true, fmt.Errorf("afpacket: recvmmsg on %s: %w", e.info.name, q.err)
	}
	for i := 0; i < q.n; i++ {
		m := &q.msgs[i]
		l := int(m.Len)
		switch {
		case m.Hdr.Flags&unix.MSG_TRUNC != 0 || l > e.frameSize:
			// The slot keeps its SKB for the next read.
			e.rxErrors.Add(1)
			e.drops.Add(DropAFPacketRxTruncated)
			continue
		case l < ethHdrLen:
			e.rxErrors.Add(1)
			e.drops.Add(DropAFPacketRxRunt)
			continue
		}
		if e.vnet {
			l -= vnetHdrLen // msg_len counts the virtio_net_hdr
			if l < ethHdrLen {
				e.rxErrors.Add(1)
				e.drops.Add(DropAFPacketRxRunt)
				continue
			}
		}
		s := q.skbs[i]
		if l+rxHeadroom <= copyBreak {
			// copybreak: a small frame moves to a small buffer and the
			// slot keeps its 64 KiB one, so queues never pin big
			// buffers for small packets.
			s = buf.FromBytes(rxHeadroom, s.Bytes()[:l])
		} else {
			s.Trim(l)
			e.refill(q, i)
		}
		s.SetMACHeader()
		if e.vnet && !q.hdr[i].toSKB(s) {
			e.rxErrors.Add(1)
			e.free(s, DropAFPacketBadVnetHdr)
			continue
		}
		pkts[n] = s
		n++
		e.rxBytes.Add(uint64(l))
	}
	if n == 0 {
		return 0, false, nil
	}
	e.rxPackets.Add(uint64(n))
	return n, true, nil
}

// SetReadDeadline bounds a blocked ReadBatch (os.File semantics; the zero
// time removes the deadline).
func (e *Endpoint) SetReadDeadline(t time.Time) error {
	var err error
	for _, q := range e.rxq {
		err = errors.Join(err, q.f.SetReadDeadline(t))
	}
	return err
}

// tx is the transmitting socket: the first queue's.
func (e *Endpoint) tx() syscall.RawConn { return e.rxq[0].rc }

// send runs inside rc.Write over txMsgs[txOff:txLen].
func (e *Endpoint) send(fd uintptr) bool {
	for {
		n, errno := sendmmsg(fd, e.txMsgs[e.txOff:e.txLen], 0)
		switch errno {
		case 0:
			e.txN, e.txErr = n, 0
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			// sendmmsg fails only when the first message fails.
			e.txN, e.txErr = 0, errno
			return true
		}
	}
}

// WriteBatch sends pkts in order with as few sendmmsg calls as the batch
// size allows and consumes all of them: n were sent, the rest were freed
// with a drop reason.
func (e *Endpoint) WriteBatch(pkts []*buf.SKB) (int, error) {
	e.txMu.Lock()
	defer e.txMu.Unlock()
	if e.closed.Load() {
		for _, s := range pkts {
			e.free(s, link.DropTxClosed)
		}
		return 0, link.ErrClosed
	}
	sent := 0
	e.txLen = 0
	for i, s := range pkts {
		pkts[i] = nil
		l := s.Len()
		switch {
		case l < ethHdrLen:
			e.txErrors.Add(1)
			e.free(s, DropAFPacketTxRunt)
			continue
		case l > e.info.mtu+ethHdrLen && (s.GSOSize == 0 || !e.vnet || l > maxGSOFrame):
			e.txErrors.Add(1)
			e.free(s, DropAFPacketTxTooBig)
			continue
		}
		b := s.Bytes()
		e.txSkbs[e.txLen] = s
		iov := &e.txIov[e.txLen*e.iovPer+e.iovPer-1]
		iov.Base = &b[0]
		iov.SetLen(l)
		if e.vnet {
			e.txHdr[e.txLen].fromSKB(s)
		}
		e.txLen++
		if e.txLen == e.batch {
			n, err := e.flush()
			sent += n
			if err != nil {
				for _, rest := range pkts[i+1:] {
					e.free(rest, link.DropTxClosed)
				}
				return sent, err
			}
		}
	}
	n, err := e.flush()
	return sent + n, err
}

// flush sends txSkbs[:txLen] and empties it, returning how many were sent.
func (e *Endpoint) flush() (int, error) {
	sent := 0
	for e.txOff = 0; e.txOff < e.txLen; {
		if err := e.tx().Write(e.txFn); err != nil {
			for i := e.txOff; i < e.txLen; i++ {
				e.free(e.txSkbs[i], link.DropTxClosed)
			}
			e.resetTx()
			if e.closed.Load() || errors.Is(err, os.ErrClosed) {
				err = link.ErrClosed
			}
			return sent, err
		}
		if e.txErr != 0 {
			// The kernel refused the frame at txOff (ENOBUFS when the
			// device queue is full, ENETDOWN, ...): a lost frame.
			e.txErrors.Add(1)
			e.free(e.txSkbs[e.txOff], DropAFPacketTxError)
			e.txSkbs[e.txOff] = nil
			e.txOff++
			continue
		}
		for i := e.txOff; i < e.txOff+e.txN; i++ {
			s := e.txSkbs[i]
			e.txBytes.Add(uint64(s.Len()))
			s.Consume()
			e.txSkbs[i] = nil
		}
		e.txPackets.Add(uint64(e.txN))
		sent += e.txN
		e.txOff += e.txN
	}
	e.resetTx()
	return sent, nil
}

func (e *Endpoint) resetTx() {
	for i := 0; i < e.txLen; i++ {
		e.txSkbs[i] = nil
		e.txIov[i*e.iovPer+e.iovPer-1].Base = nil // do not keep freed storage reachable
	}
	e.txLen, e.txOff = 0, 0
}

func (e *Endpoint) free(s *buf.SKB, r buf.DropReason) {
	e.drops.Add(r)
	s.Free(r)
}

// Close closes the sockets: a blocked ReadBatch or ReadQueue returns
// link.ErrClosed. Safe to call more than once.
func (e *Endpoint) Close() error {
	var err error
	e.once.Do(func() {
		e.closed.Store(true)
		e.pollKernelStats()
		err = e.closeQueues()
	})
	return err
}

// closeQueues closes every receive socket and frees its slots.
func (e *Endpoint) closeQueues() error {
	var err error
	for _, q := range e.rxq {
		err = errors.Join(err, q.f.Close())
		q.mu.Lock()
		for i, s := range q.skbs {
			s.Consume() // never received: not a drop
			q.skbs[i] = nil
			q.iov[i*e.iovPer+e.iovPer-1].Base = nil
		}
		q.mu.Unlock()
	}
	return err
}

// pollKernelStats folds PACKET_STATISTICS (which the kernel resets on
// each read) into kernelDrops.
func (e *Endpoint) pollKernelStats() {
	for _, q := range e.rxq {
		q.rc.Control(func(fd uintptr) {
			if st, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
				e.kernelDrops.Add(uint64(st.Drops))
			}
		})
	}
}

// Stats are the link's counters (ip -s link, from the socket's side).
type Stats struct {
	RxPackets, RxBytes, RxErrors uint64
	TxPackets, TxBytes, TxErrors uint64
	// KernelDrops are frames the kernel dropped because the socket's
	// receive buffer was full (PACKET_STATISTICS tp_drops).
	KernelDrops uint64
	// BusyPollHits are reads whose frames came while busy polling, each
	// a netpoller wake-up saved; BusyPollSleeps are reads whose budget
	// ran out on an empty socket, so they slept in the netpoller;
	// BusyPollYields are busy polls ended early because another thread
	// wanted the CPU; BusyPollSkips are reads that slept at once because
	// the process's busy pollers were all taken. BusyPollAlso counts the
	// events Config.BusyPollAlso handled while polling.
	BusyPollHits, BusyPollSleeps, BusyPollYields, BusyPollSkips uint64
	BusyPollAlso                                                uint64
	Drops                                                       map[string]uint64
}

// Stats returns a snapshot of the counters.
func (e *Endpoint) Stats() Stats {
	if !e.closed.Load() {
		e.pollKernelStats()
	}
	return Stats{
		RxPackets: e.rxPackets.Load(), RxBytes: e.rxBytes.Load(), RxErrors: e.rxErrors.Load(),
		TxPackets: e.txPackets.Load(), TxBytes: e.txBytes.Load(), TxErrors: e.txErrors.Load(),
		KernelDrops:  e.kernelDrops.Load(),
		BusyPollHits: e.busyPollHits.Load(), BusyPollSleeps: e.busyPollSleeps.Load(),
		BusyPollYields: e.busyPollYields.Load(), BusyPollSkips: e.busyPollSkips.Load(),
		BusyPollAlso: e.busyPollAlso.Load(),
		Drops:        e.drops.Snapshot(),
	}
}

// Drops counts the frames this endpoint freed, by reason.
func (e *Endpoint) Drops() *buf.DropStats { return &e.drops }

var _ link.MultiQueue = (*Endpoint)(nil)
