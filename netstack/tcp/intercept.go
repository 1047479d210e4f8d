package tcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// Transparent proxying (proxy mode; the kernel's TPROXY with an
// IP_TRANSPARENT listener, but upstream first). A segment carrying
// netfilter.MarkDivert (a flow netfilter diverted to local delivery with
// its foreign destination kept) is looked up by its exact 4-tuple only;
// when it finds no connection and is a SYN, it goes to the Proto's
// Interceptor, never to an ordinary listener. Segments that are not
// diverted never reach the Interceptor.
//
// The Interceptor does not answer the SYN: it records what the SYN carried
// (sequence number, options, window, ECN bits) in a Request and queues it
// for Next. The proxy connects upstream first and then calls Accept, which
// creates the child exactly as a listener would (initPassive), hashed by
// its 4-tuple with the foreign destination as its local address, and
// sends the SYN,ACK; or Refuse, which answers the SYN with a reset. The
// pod's SYN retransmissions for a tuple still pending are dropped and
// counted (TcpExtInterceptSynDups); once the child is hashed they reach it
// and get the SYN,ACK again (tcp_check_req).
//
// Bounds: maxPending unresolved requests per Interceptor (queued for Next
// plus handed out and not yet resolved; DefaultMaxPending); a SYN past it
// is dropped and counted (TcpExtInterceptOverflows), and the pod's
// retransmission tries again later. A request lives until Accept, Refuse
// or Close; the proxy owns resolving every request Next returned.
//
// Lock order: Sock.mu > Interceptor.mu; Proto.mu is taken under neither
// by this file except through hashConn (a leaf).

// DefaultMaxPending is Intercept's bound when maxPending <= 0.
const DefaultMaxPending = 4096

// maxMaxPending caps maxPending (the connection table bounds the rest).
const maxMaxPending = 1 << 20

// ErrInterceptorBusy is Intercept's error when the Proto has an
// Interceptor already (one transparent proxy per stack). It unwraps to
// EADDRINUSE.
var ErrInterceptorBusy = fmt.Errorf("tcp: interceptor already set: %w", syscall.EADDRINUSE)

// Interceptor receives the new diverted flows of a Proto (a transparent
// proxy's listening socket). Its methods are safe for concurrent use.
type Interceptor struct {
	p          *Proto
	maxPending int

	mu      sync.Mutex
	pending map[tuple]*Request // unresolved requests; bound: maxPending
	queue   []*Request         // received, not yet returned by Next (a subset of pending)
	closed  bool

	ready chan struct{} // capacity 1: queue became non-empty
	done  chan struct{} // closed by Close
	// handler, when set, takes each new Request on the receiving
	// goroutine instead of the queue (SetHandler).
	handler atomic.Pointer[func(*Request)]

	requests, synDups, overflows, refused atomic.Uint64
}

// InterceptStats are an Interceptor's counters.
type InterceptStats struct {
	// Requests counts SYNs of new flows queued for Next.
	Requests uint64
	// SynDups counts SYN retransmissions dropped because their tuple was
	// pending already.
	SynDups uint64
	// Overflows counts SYNs dropped because maxPending requests were
	// pending.
	Overflows uint64
	// Refused counts requests answered with a reset (Refuse, Close, or
	// an Accept that could not create the child).
	Refused uint64
}

// Request is one intercepted SYN awaiting the proxy's decision.
type Request struct {
	i   *Interceptor
	t   tuple   // our side: laddr = the original destination
	nic int     // the NIC the SYN arrived on
	syn segment // seq, len, wnd, flags and options of the SYN; no SKB
	// state is guarded by i.mu.
	state reqState
}

type reqState uint8

const (
	reqPending   reqState = iota // queued or handed out, unresolved
	reqAccepting                 // Accept is creating the child
	reqDone                      // accepted or refused
)

// Intercept makes i the receiver of the Proto's diverted SYNs, with at
// most maxPending unresolved requests (<= 0: DefaultMaxPending). A second
// Interceptor on one Proto is ErrInterceptorBusy until the first is
// closed.
func (p *Proto) Intercept(maxPending int) (*Interceptor, error) {
	if maxPending <= 0 {
		maxPending = DefaultMaxPending
	}
	maxPending = min(maxPending, maxMaxPending)
	i := &Interceptor{p: p, maxPending: maxPending, pending: map[tuple]*Request{},
		ready: make(chan struct{}, 1), done: make(chan struct{})}
	if !p.icpt.CompareAndSwap(nil, i) {
		return nil, ErrInterceptorBusy
	}
	return i, nil
}

// divertRcv is the lookup of a diverted segment: the connection with its
// exact 4-tuple (unless a SYN reopens it from TIME-WAIT, timewait.go),
// else, for a SYN, the Interceptor; otherwise the normal
// answer to a segment with no connection (RFC 9293 §3.10.7.1), sent from
// the foreign address (sendResetFor with seg.divert).
func (p *Proto) divertRcv(seg *segment, t tuple) {
	p.mu.RLock()
	s := p.conns[t]
	p.mu.RUnlock()
	if s != nil && !(seg.hasSyn && !seg.hasAck && s.timeWaitReopen(seg, func() bool { return p.icpt.Load() != nil })) {
		s.rcv(seg)
		return
	}
	// SYN with RST or FIN was dropped by V4Rcv already.
	if seg.hasSyn && !seg.hasAck {
		if i := p.icpt.Load(); i != nil {
			i.synRcv(seg, t)
			return
		}
		p.count(InterceptNoInterceptor)
	}
	p.noSocket(seg)
}

// synRcv queues a Request for a diverted SYN, or drops a retransmission
// of a pending one or one past maxPending. It consumes seg.skb.
func (i *Interceptor) synRcv(seg *segment, t tuple) {
	p := i.p
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		p.count(InterceptNoInterceptor)
		p.noSocket(seg)
		return
	}
	if _, dup := i.pending[t]; dup {
		i.mu.Unlock()
		i.synDups.Add(1)
		p.count(InterceptSynDups)
		seg.skb.Free(DropInterceptDup)
		return
	}
	if len(i.pending) >= i.maxPending {
		i.mu.Unlock()
		i.overflows.Add(1)
		p.count(InterceptOverflows)
		seg.skb.Free(DropInterceptFull)
		return
	}
	r := &Request{i: i, t: t, nic: seg.skb.InNIC, syn: segment{src: seg.src, dst: seg.dst, seq: seg.seq,
		flags: seg.flags, wnd: seg.wnd, opts: seg.opts, len: seg.len, hasSyn: true, divert: true,
		twISN: seg.twISN, hasTWISN: seg.hasTWISN}}
	i.pending[t] = r
	h := i.handler.Load()
	if h == nil {
		i.queue = append(i.queue, r)
	}
	i.mu.Unlock()
	i.requests.Add(1)
	p.count(InterceptRequests)
	seg.skb.Consume()
	if h != nil {
		(*h)(r)
		return
	}
	i.wake()
}

// SetHandler makes h take each new Request on the goroutine that received
// its SYN (a NIC's receive goroutine), instead of queueing it for Next; nil
// goes back to the queue. h must not block: it starts the upstream connect
// and returns, and resolves the Request later (AcceptAsync, Refuse).
// Requests already queued stay for Next.
func (i *Interceptor) SetHandler(h func(*Request)) {
	if h == nil {
		i.handler.Store(nil)
		return
	}
	i.handler.Store(&h)
}

func (i *Interceptor) wake() {
	select {
	case i.ready <- struct{}{}:
	default:
	}
}

// Next returns the next intercepted SYN (a new flow), blocking until one
// arrives, ctx ends (ctx.Err()) or the Interceptor is closed
// (net.ErrClosed). Every Request returned must be resolved with Accept or
// Refuse: it counts against maxPending until then.
func (i *Interceptor) Next(ctx context.Context) (*Request, error) {
	for {
		i.mu.Lock()
		if len(i.queue) > 0 {
			r := i.queue[0]
			i.queue[0] = nil
			i.queue = i.queue[1:]
			more := len(i.queue) > 0
			i.mu.Unlock()
			if more {
				i.wake() // another waiter may take the rest
			}
			return r, nil
		}
		closed := i.closed
		i.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		select {
		case <-i.ready:
		case <-i.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Pending is the number of unresolved requests (queued for Next or
// handed out and not yet accepted or refused).
func (i *Interceptor) Pending() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return len(i.pending)
}

// Stats returns the Interceptor's counters.
func (i *Interceptor) Stats() InterceptStats {
	return InterceptStats{Requests: i.requests.Load(), SynDups: i.synDups.Load(),
		Overflows: i.overflows.Load(), Refused: i.refused.Load()}
}

// Close stops interception: the Proto answers later diverted SYNs with a
// reset, Next returns net.ErrClosed, and every unresolved request is
// refused (RST, as Refuse). Requests being accepted finish. A second
// Close returns net.ErrClosed.
func (i *Interceptor) Close() error {
	i.p.icpt.CompareAndSwap(i, nil)
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		return net.ErrClosed
	}
	i.closed = true
	close(i.done)
	var refuse []*Request
	for t, r := range i.pending {
		if r.state == reqPending {
			r.state = reqDone
			delete(i.pending, t)
			refuse = append(refuse, r)
		}
	}
	i.queue = nil
	i.mu.Unlock()
	for _, r := range refuse {
		r.sendRefuse()
	}
	return nil
}

// Src is the pod's side of the flow (the SYN's source).
func (r *Request) Src() netip.AddrPort { return netip.AddrPortFrom(r.t.raddr, r.t.rport) }

// Dst is the original destination (the SYN's destination, not ours).
func (r *Request) Dst() netip.AddrPort { return netip.AddrPortFrom(r.t.laddr, r.t.lport) }

// NIC is the ID of the NIC the SYN arrived on.
func (r *Request) NIC() int { return r.nic }

// resolve moves r from pending to done; false when it was not in the
// state from.
func (r *Request) resolve(from reqState, to reqState) bool {
	i := r.i
	i.mu.Lock()
	defer i.mu.Unlock()
	if r.state != from {
		return false
	}
	r.state = to
	if to == reqDone && i.pending[r.t] == r {
		delete(i.pending, r.t)
	}
	return true
}

// Refuse answers the SYN with <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
// (RFC 9293 §3.10.7.1, the answer of a CLOSED port), so the pod's connect
// fails with ECONNREFUSED. Refuse after Accept, Refuse or Close does
// nothing.
func (r *Request) Refuse() {
	if r.resolve(reqPending, reqDone) {
		r.sendRefuse()
	}
}

func (r *Request) sendRefuse() {
	p := r.i.p
	r.i.refused.Add(1)
	p.count(InterceptRefused)
	p.sendControl(r.t.laddr, r.t.raddr, header.TCPFields{SrcPort: r.t.lport, DstPort: r.t.rport,
		Ack: r.syn.seq + r.syn.len, Flags: header.RST | header.ACK}, r.syn.nic, true)
}

// Accept answers the SYN: it creates the connection as a listener's
// child (RFC 9293 §3.10.7.2: <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>, options
// negotiated from the stored SYN, ECN per RFC 3168 §6.1.1), sending from
// Dst (route.Flow.Transparent), and returns once it is ESTABLISHED. ctx
// bounds the wait: when it ends first the half-open child is reset and
// removed and ctx.Err() returned (in a *net.OpError). A child whose
// SYN,ACK retries run out fails with ETIMEDOUT, one the pod resets with
// ECONNRESET. Accept after Accept, Refuse or Close returns net.ErrClosed;
// a failure to create the child (no route back, connection table full)
// refuses the request and returns the error.
func (r *Request) Accept(ctx context.Context) (*Conn, error) {
	if !r.resolve(reqPending, reqAccepting) {
		return nil, opError("accept", r.Dst(), r.Src(), net.ErrClosed)
	}
	p := r.i.p
	c := p.NewSock()
	c.transparent, c.intercepted = true, true
	c.mu.Lock()
	err := c.initPassive(&r.syn, r.t)
	c.mu.Unlock()
	// Hashed now (or failed): later retransmissions of the SYN find the
	// child, or are new requests.
	r.resolve(reqAccepting, reqDone)
	if err != nil {
		r.sendRefuse()
		return nil, opError("accept", r.Dst(), r.Src(), err)
	}
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	c.mu.Lock()
	for c.state == SynReceived {
		if err := ctx.Err(); err != nil {
			c.sendReset()
			c.orphan = true
			c.done(err)
			c.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: "tcp", Source: net.TCPAddrFromAddrPort(r.Dst()),
				Addr: net.TCPAddrFromAddrPort(r.Src()), Err: err}
		}
		c.cond.Wait()
	}
	if c.state == Closed {
		err := c.err
		if err == nil {
			err = syscall.ECONNRESET
		}
		c.mu.Unlock()
		return nil, opError("accept", r.Dst(), r.Src(), err)
	}
	c.accepted = true
	c.mu.Unlock()
	return &Conn{s: c}, nil
}

// AcceptAsync is Accept without the wait: it creates the child (with
// notify as its Notify callback, set before the SYN,ACK leaves, so no
// event is missed), sends the SYN,ACK and returns the child at once, in
// SYN-RECEIVED. notify hears EventReadable|EventWritable when the
// handshake completes (State() is then Established) or fails (Closed:
// reads and writes return the error — ETIMEDOUT when the SYN,ACK
// retries ran out, ECONNRESET when the pod reset). Bounding the wait is
// the caller's: closing the child with linger 0 (SetLingerZero, Close)
// resets it. Errors are Accept's.
func (r *Request) AcceptAsync(notify func(Event)) (*Conn, error) {
	if !r.resolve(reqPending, reqAccepting) {
		return nil, opError("accept", r.Dst(), r.Src(), net.ErrClosed)
	}
	c := r.i.p.NewSock()
	c.transparent, c.intercepted, c.accepted = true, true, true
	c.mu.Lock()
	c.notify = notify
	err := c.initPassive(&r.syn, r.t)
	c.mu.Unlock()
	r.resolve(reqAccepting, reqDone)
	if err != nil {
		r.sendRefuse()
		return nil, opError("accept", r.Dst(), r.Src(), err)
	}
	return &Conn{s: c}, nil
}

// DialTransparent is Dial from laddr, which need not be an address of
// the stack (IP_TRANSPARENT; port 0 picks an ephemeral port): the proxy
// opens a connection into a pod from a client's own address. Its segments
// carry netfilter.MarkDivert, so the conntrack hook at OUTPUT marks the
// flow and the peer's replies, addressed to laddr, are delivered to it
// (this needs the stack's netfilter; without it the replies are routed
// as foreign traffic). laddr must be a valid IPv4 or IPv6 address naming
// a single host (EADDRNOTAVAIL otherwise; an IPv4-mapped one is its IPv4
// address) of raddr's family (EAFNOSUPPORT otherwise).
func (p *Proto) DialTransparent(ctx context.Context, laddr, raddr netip.AddrPort) (*Conn, error) {
	a := laddr.Addr().Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a == limitedBroadcast || a.Zone() != "" {
		return nil, opError("dial", laddr, raddr, syscall.EADDRNOTAVAIL)
	}
	if a.Is4() != raddr.Addr().Unmap().Is4() {
		return nil, opError("dial", laddr, raddr, syscall.EAFNOSUPPORT)
	}
	laddr = netip.AddrPortFrom(a, laddr.Port())
	s := p.NewSock()
	s.transparent, s.mark = true, netfilter.MarkDivert
	return p.dialSock(ctx, s, laddr, raddr)
}
