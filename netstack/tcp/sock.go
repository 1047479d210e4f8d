package tcp

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/tcp/cc"
)

// State is a connection state (RFC 9293 §3.3.2).
type State uint8

const (
	Closed State = iota
	Listen
	SynSent
	SynReceived
	Established
	FinWait1
	FinWait2
	CloseWait
	Closing
	LastAck
	TimeWait
)

var stateNames = [...]string{"CLOSED", "LISTEN", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED",
	"FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "?"
}

// synchronized reports the states after the handshake (RFC 9293 §3.5.2).
func (s State) synchronized() bool { return s >= Established }

// rtxMode says what the retransmission timer does when it fires
// (icsk_pending: ICSK_TIME_RETRANS or ICSK_TIME_PROBE0).
type rtxMode uint8

const (
	rtxRetrans rtxMode = iota
	rtxProbe
	rtxTLP // RFC 8985 §7 probe timeout (ICSK_TIME_LOSS_PROBE)
)

// ofoSeg is one out-of-order segment: its payload is skb.Bytes().
type ofoSeg struct {
	seq, end uint32 // end includes the FIN
	fin      bool
	skb      *buf.SKB
}

// maxOFO bounds the out-of-order queue in segments; the bytes are bounded
// by the receive window. Overflow drops the new segment (TCPOFODrop).
const maxOFO = 1024

// Sock is one TCP endpoint (struct tcp_sock): a listener, or a connection
// in any state. Every field below mu is guarded by mu.
type Sock struct {
	p *Proto

	mu   sync.Mutex
	cond sync.Cond // readers, writers, connectors and acceptors wait here

	state  State
	stateA atomic.Uint32 // mirror of state for lock-free readers (Info, Counters)
	id     tuple
	bound  bool // Bind was called (id.laddr/lport set)

	hashed, holdsPort, listening bool

	// Listener side (listen.go): bounded queues.
	backlog  int
	acceptQ  []*Sock // established children awaiting Accept; bound: backlog
	synQ     int     // children in SYN-RECEIVED; bound: cfg.MaxSynBacklog
	parent   *Sock   // the listener of a passive child until accepted
	accepted bool

	// Send sequence space (RFC 9293 §3.3.1) plus BSD's snd_max.
	iss, sndUna, sndNxt, sndMax uint32
	sndWnd, maxSndWnd           uint32
	sndWl1, sndWl2              uint32
	sndWscale                   uint8
	sndBuf                      sndQueue // bytes from bufSeq on, unacknowledged or unsent (sndq.go)
	bufSeq                      uint32   // sequence number of sndBuf's first byte
	sndBufLimit                 int
	finQueued                   bool // the user shut the write side: FIN after the data
	mss                         int  // effective send MSS (data bytes per segment)
	peerMSS                     int
	routeMTU                    int
	gso                         bool // output NIC takes GSO super-packets
	flow                        route.Flow
	// ip is the network layer of the connection's family and v6 says
	// which (Sock.routeFlow sets both before the first segment).
	ip family
	v6 bool
	// transparent is IP_TRANSPARENT: id.laddr need not be an address
	// of the stack (intercepted children, DialTransparent); mark is
	// SO_MARK, put on every segment (MarkDivert for DialTransparent).
	transparent bool
	mark        uint32
	// intercepted: the child of an Interceptor's Request (a passive
	// open without a listener; counted in PassiveOpens when established).
	intercepted bool

	// Receive sequence space.
	irs, rcvNxt  uint32
	rcvWscale    uint8
	rcvAdv       uint32   // right edge of the window we advertised (rcv_wup + rcv_wnd)
	rcvq         rcvQueue // in-order bytes for the reader (rcvq.go)
	rcvBufLimit  int
	rcvAutoOff   bool      // SO_RCVBUF set: no auto-tuning
	rcvqCopied   int       // bytes read since rcvqTime
	rcvqTime     time.Time // start of the current measurement (one RTT)
	rcvSpace     int       // most bytes read in one RTT so far
	rcvMSS       int       // largest segment seen, for the delayed ACK rule
	ofo          []ofoSeg
	lastOFO      int // index of the most recently queued ofo segment (RFC 2018 §4)
	dsack        header.SACKBlock
	dsackPending bool // report dsack in the next ACK (RFC 2883)
	finRcvd      bool

	// Options negotiated (RFC 7323, RFC 2018).
	wsOK, tsOK, sackOK bool
	// ECN (RFC 3168): ecnOK once negotiated; ecnEcho while we must set
	// ECE on ACKs (a CE mark arrived and no CWR since); cwrPending when
	// the next new data segment carries CWR; ecnRecover bounds the
	// window reduction to once per window of data (§6.1.2).
	ecnOK, ecnEcho, cwrPending bool
	ecnRecover                 uint32
	tsRecent                   uint32
	tsRecentTime               time.Time
	tsOff                      uint32
	lastAckSent                uint32
	lastOOW                    time.Time // last out-of-window ACK (oowAck)

	// RTT and RTO (RFC 6298).
	srtt, rttvar, rto time.Duration
	minRTT            time.Duration
	rttSeq            uint32
	rttTime           time.Time
	rttTiming         bool
	backoff           int // retransmissions of the current segment / probes
	// probesOut is the zero-window probes the peer has not answered
	// (icsk_probes_out): every ACK clears it, while backoff keeps
	// spacing the probes out.
	probesOut    int
	rtxMode      rtxMode
	lastSend     time.Time
	retransTotal uint64

	// Congestion control and recovery (recovery.go).
	ca         cc.Algorithm
	cs         cc.State
	dupAcks    int
	inRecovery bool
	recover    uint32 // RFC 6582 "recover"
	sacked     []sackRange
	highRxt    uint32 // RFC 6675 HighRxt
	tlpHigh    uint32 // RFC 8985 TLP.end_seq; 0 when no probe is out
	lostBelow  uint32 // holes below are lost (a SACKed probe); 0: none
	// The last retransmission of SND.UNA in recovery and SND.MAX then
	// (lostRetransmit).
	headRtxSeq, headRtxMark uint32
	headRtxValid            bool
	rack                    rackState // RFC 8985 §6 (rack.go)

	// ACK scheduling (RFC 9293 §3.8.6.3).
	ackPending   bool
	unackedBytes int
	quickAcks    int

	// Receive batches (notify.go): rxBatch is the batch of the segment
	// being processed, set by rcv; inBatch: s is registered with a batch
	// whose end runs FlushBatch; ackDeferred: the ACK goes out then.
	rxBatch     *buf.Batch
	inBatch     bool
	ackDeferred bool
	// notify is the owner's event callback (SetNotify), events what was
	// raised since the last delivery.
	notify func(Event)
	events Event
	// nowT is the clock read once for the operation in progress (rcv
	// takes its batch's time; ReadTo, WriteFrom, Read and Write read it
	// once): nowOK says it is valid; cleared before the lock is released
	// (now, nowScope).
	nowT  time.Time
	nowOK bool
	// lastRcv is when the peer last sent us a segment, for keepalive
	// (armKeepalive); kaArmed says the keepalive timer runs.
	lastRcv time.Time
	kaArmed bool
	// reading: a ReadTo callback is using the receive queue's bytes
	// without the lock (releasing it waits: rcvqDeferRelease); writing:
	// a WriteFrom callback is filling reserved send queue space.
	reading, rcvqDeferRelease, writing bool

	// User side.
	nodelay, cork bool
	rdShut        bool // the user will not read (shutdown RD or Close)
	wrShut        bool // the user will not write (shutdown WR or Close)
	orphan        bool // closed by the user; the protocol finishes alone
	err           error
	softErr       error
	rdDeadline    time.Time
	wrDeadline    time.Time
	nonblock      bool
	keepalive     bool
	keepIdle      time.Duration
	keepIntvl     time.Duration
	keepCnt       int
	keepProbes    int
	lingerZero    bool

	// Counters for Info.
	bytesAcked, bytesReceived uint64
	segsOut, segsIn           uint64

	// Embedded, so a socket's timers cost no allocation (Fire tells
	// them apart).
	rtxTimer, delackTimer, kaTimer, dlTimer clock.Timer
	rackTimer                               clock.Timer // RFC 8985 §6.3 reordering timer
}

// NewSock returns an unbound socket (tcp_v4_init_sock). Its timers are
// created now and cost no goroutine.
func (p *Proto) NewSock() *Sock {
	s := &Sock{p: p, sndBufLimit: p.cfg.SndBuf, rcvBufLimit: p.cfg.RcvBuf, rto: InitialRTO,
		keepIdle: DefaultKeepIdle, keepIntvl: DefaultKeepIntvl, keepCnt: DefaultKeepCount}
	s.cond.L = &s.mu
	for _, t := range [...]*clock.Timer{&s.rtxTimer, &s.delackTimer, &s.kaTimer, &s.dlTimer, &s.rackTimer} {
		p.clk.InitTimer(t, (*sockTimers)(s))
	}
	return s
}

// sockTimers is the socket as its timers' clock.Handler (kept off Sock's
// own method set).
type sockTimers Sock

// Fire runs the callback of the socket's timer t.
func (st *sockTimers) Fire(t *clock.Timer) {
	s := (*Sock)(st)
	switch t {
	case &s.rtxTimer:
		s.rtxFired()
	case &s.delackTimer:
		s.delackFired()
	case &s.kaTimer:
		s.kaFired()
	case &s.dlTimer:
		s.deadlineFired()
	case &s.rackTimer:
		s.rackFired()
	}
}

// now is the current time: the operation's cached reading inside a
// nowScope (tcp_mstamp, which Linux refreshes once per receive and per
// transmit), else the clock.
func (s *Sock) now() time.Time {
	if s.nowOK {
		return s.nowT
	}
	return s.p.clk.Now()
}

// nowScope makes now return t until nowEnd; s.mu is held and must not
// be released before nowEnd.
func (s *Sock) nowScope(t time.Time) { s.nowT, s.nowOK = t, true }

func (s *Sock) nowEnd() { s.nowOK = false }

// tsNow is the timestamp clock (RFC 7323 §5.4: 1 ms ticks).
func (s *Sock) tsNow() uint32 { return uint32(s.now().Sub(s.p.epoch).Milliseconds()) }

func (s *Sock) setState(st State) {
	s.state = st
	s.stateA.Store(uint32(st))
}

// State returns the current state.
func (s *Sock) State() State { return State(s.stateA.Load()) }

// initCC picks the congestion control (tcp_init_congestion_control).
func (s *Sock) initCC() {
	a, err := cc.New(s.p.cfg.CongestionControl)
	if err != nil {
		a, _ = cc.New(cc.Default)
	}
	s.ca = a
	s.cs = cc.State{Cwnd: cc.InitialWindow, Ssthresh: 1 << 30}
	s.ca.Init(&s.cs, s.now())
}

// done moves to CLOSED, stops every timer, frees the queues and leaves
// the tables (tcp_done). err, when set, is reported to the user.
func (s *Sock) done(err error) {
	if err != nil && s.err == nil {
		s.err = err
	}
	prev := s.state
	if prev == TimeWait {
		s.p.timeWait.Add(-1)
	}
	s.setState(Closed)
	s.rtxTimer.Stop()
	s.delackTimer.Stop()
	s.kaStop()
	s.rackTimer.Stop()
	s.rackRelease()
	for i := range s.ofo {
		s.ofo[i].skb.Free(DropClose)
	}
	s.ofo = nil
	s.sndBuf.release()
	if s.orphan {
		s.releaseRcvq()
	}
	s.p.unhash(s)
	if prev == SynReceived && s.parent != nil {
		s.leaveParent()
	}
	s.wake(EventReadable | EventWritable)
}

// rcvMaxSpace is the most the receive buffer may grow to: the window
// scale is chosen for it at the handshake.
func (s *Sock) rcvMaxSpace() int {
	if s.rcvAutoOff {
		return s.rcvBufLimit
	}
	return max(s.rcvBufLimit, s.p.cfg.MaxRcvBuf)
}

// rcvAutotune is tcp_rcv_space_adjust (dynamic right-sizing): once per
// RTT, if the reader consumed more than ever before, the buffer grows to
// twice that, so the window keeps ahead of a fast reader on a long path.
func (s *Sock) rcvAutotune(n int) {
	if s.rcvAutoOff || s.srtt == 0 {
		return
	}
	s.rcvqCopied += n
	now := s.now()
	if s.rcvqTime.IsZero() {
		s.rcvqTime = now
		return
	}
	if now.Sub(s.rcvqTime) < s.srtt {
		return
	}
	if s.rcvqCopied > s.rcvSpace {
		s.rcvSpace = s.rcvqCopied
		if want := min(2*s.rcvqCopied, s.rcvMaxSpace()); want > s.rcvBufLimit {
			s.rcvBufLimit = want
		}
	}
	s.rcvqCopied, s.rcvqTime = 0, now
}

// rcvWnd is the receive window we can offer now: the free buffer space,
// never moving the right edge we advertised back (RFC 9293 §3.8.6.2.2:
// "the window SHOULD NOT be shrunk").
func (s *Sock) rcvWnd() uint32 {
	free := s.rcvBufLimit - s.rcvq.len()
	if free < 0 {
		free = 0
	}
	w := uint32(free)
	// Round down to the scale so the advertised edge is exact.
	w &^= (1 << s.rcvWscale) - 1
	if header.SeqGT(s.rcvAdv, s.rcvNxt) && w < s.rcvAdv-s.rcvNxt {
		w = s.rcvAdv - s.rcvNxt
	}
	return min(w, uint32(0xffff)<<s.rcvWscale)
}

// errno maps a stored error for the user.
func (s *Sock) takeSoftErr() error {
	e := s.softErr
	s.softErr = nil
	return e
}

var errClosedSock = syscall.EBADF

// linkGSO is what a NIC must offer for us to hand it super-packets.
const linkGSO = link.CapGSO | link.CapTxChecksumPartial

// String describes the socket for logs and test failures.
func (s *Sock) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%v:%d>%v:%d %v una=%d nxt=%d max=%d end=%d wnd=%d cwnd=%d ssthresh=%d rcvnxt=%d rcvbuf=%d ofo=%d rto=%v backoff=%d rec=%v fin=%v/%v err=%v adv=%d wl1=%d wl2=%d",
		s.id.laddr, s.id.lport, s.id.raddr, s.id.rport, s.state, s.sndUna-s.iss, s.sndNxt-s.iss, s.sndMax-s.iss,
		s.dataEnd()-s.iss, s.sndWnd, s.cs.Cwnd, s.cs.Ssthresh, s.rcvNxt-s.irs, s.rcvq.len(), len(s.ofo), s.rto,
		s.backoff, s.inRecovery, s.finQueued, s.finRcvd, s.err, s.rcvAdv-s.irs, s.sndWl1-s.irs, s.sndWl2-s.iss)
}
