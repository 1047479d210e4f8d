// Package tcp owns TCP (RFC 9293; net/ipv4/tcp*.c, net/ipv6/tcp_ipv6.c)
// over IPv4 and IPv6: the connection table
// and listeners, the state machine, input (tcp_v4_rcv, tcp_v6_rcv →
// tcp_rcv_state_process → tcp_ack / tcp_data_queue), output
// (tcp_sendmsg → tcp_write_xmit → tcp_transmit_skb), timers, loss
// recovery (NewReno, SACK) and the socket calls with net.Conn and
// net.Listener adapters. Congestion control lives behind an interface in
// tcp/cc (NewReno, CUBIC).
//
// Not owned here: IP headers, routing, fragmentation and path MTU
// discovery (ipv4 and ipv6, reached through the family interface —
// icsk_af_ops); GSO segmentation and checksum completion (dev and the
// link); the protocol registry (socket; netstack.New registers Sock).
//
// # Files
//
// proto.go (tables, ISNs, Config), sock.go (struct tcp_sock), input.go
// (receive path), output.go (transmit path), timer.go (RTO, persist,
// delayed ACK, keepalive, TIME-WAIT, tail loss probe), recovery.go (fast
// retransmit, NewReno, RFC 6675 recovery), sack.go (scoreboard, SACK
// blocks, D-SACK), rack.go (RFC 8985 RACK loss detection, send times,
// the reordering timer), listen.go (passive open), timewait.go (a new
// SYN reopening a tuple in TIME-WAIT, for listeners and the Interceptor
// alike: RFC 1122 §4.2.2.13, RFC 6191), socket.go (user
// calls, TCP_INFO), conn.go (net.Conn/net.Listener), sndq.go (the send
// queue), rcvq.go (the receive queue), notify.go (receive batches,
// the Notify callback),
// syncookies.go (RFC 4987), ecn.go (RFC 3168), stats.go (MIB, drop
// reasons).
//
// # Theory of operation
//
// Families. A Proto holds an IPv4 and an IPv6 network layer (New's ip
// and ip6; nil ip6 refuses IPv6 addresses with EAFNOSUPPORT). Tuples are
// netip addresses of either family in one table; a socket takes its
// family's layer when it is routed (Sock.ip, Sock.v6: connect, the
// passive open, a cookie ACK) and everything family-specific follows it:
// the MSS is the route MTU less 40 bytes over IPv4 and 60 over IPv6 (RFC
// 9293 §3.7.1, RFC 8200 §8.3: 1220 at the minimum MTU 1280), GSO packets
// are GSOTCPv4 or GSOTCPv6, the checksum covers that family's
// pseudo-header (RFC 8200 §8.1; the one's-complement sum is the same
// code), ECN reads the TOS or the Traffic Class (RFC 3168 §5). V4Rcv and
// V6Rcv, V4Err and V6Err only read their network header and hand the
// rest to the same code. ICMP and ICMPv6 errors arrive as one
// header.ICMPError: hard ones (port unreachable, prohibited, parameter
// problem) abort a connection being opened, soft ones are remembered for
// a timeout's error, and fragmentation needed or Packet Too Big lowers
// the MSS and resends (RFC 1191, RFC 8201 §4; floors 576 and 1280); a
// path MTU ipv6 learnt also holds for new connections (setRoute asks
// the family's PathMTU when it has one). The socket API keeps IPv4-mapped
// addresses off the wire: ::ffff:a.b.c.d is a.b.c.d (sockAddr, RFC 4291
// §2.5.5.2), so such a flow is IPv4; a socket bound to one family cannot
// connect to the other; :: (and an unbound listener) takes both families,
// 0.0.0.0 only IPv4 (Linux's bindv6only=0), and 0.0.0.0 shares a port
// with a specific IPv6 address. A link-local peer is answered on the NIC
// its segment came in on (RFC 4007 §6); a dial names it with a zone
// (Config.Zone: a NIC name or ID, ENODEV for neither; without one the
// route lookup fails with EINVAL), which the tuple and the wire do not
// carry.
//
// States are RFC 9293 §3.3.2's eleven. A Sock is a listener or one
// connection. Connections are hashed by 4-tuple in Proto.conns (the
// ehash) from SYN-SENT or SYN-RECEIVED until CLOSED, TIME-WAIT included;
// listeners by port in Proto.listeners, a specific address before the
// wildcard. A SYN to a listener creates a child Sock in SYN-RECEIVED at
// once (Linux keeps a smaller request_sock; we trade memory for one code
// path, simultaneous open included). The child counts in the listener's
// SYN queue until its handshake completes, then moves to the accept
// queue.
//
// Receive runs to completion on the NIC's goroutine: V4Rcv (V6Rcv) validates
// (length, options, checksum unless the link did it), looks the segment
// up and processes it under the socket lock: PAWS (RFC 7323 §5.3), the
// acceptability test, RST (RFC 5961 §3), SYN (RFC 5961 §4), ACK (RFC 5961
// §5, window update, RTT, recovery, the FIN transitions), data and FIN.
// In-order payload stays in the SKB it arrived in, queued on the
// receive queue (rcvq.go, sk_receive_queue) with the headers pulled, so
// receive copies nothing; a payload filling less than half its buffer is
// copied into the tail of the queue instead (tcp_try_coalesce), which
// bounds what the queue pins to twice its payload plus one 2 KiB block.
// Out-of-order segments are kept as SKBs (the payload pulled/trimmed in
// place) until RCV.NXT reaches them, then move to the receive queue
// whole; SACK blocks describe them. A GRO or
// GSO super-segment (up to 64 KiB, CsumPartial) is one segment here.
//
// Send: Write copies into the send queue (sndq.go, bounded by the send
// buffer, blocking or EAGAIN) and calls writeXmit, which builds segments
// from it as the congestion window, the peer's window, Nagle and SWS
// avoidance allow. The send queue holds chunks of one full segment's
// payload (the size goal) in SKBs with headroom; a segment starting at a
// chunk goes out as a clone of it with the headers pushed in front, the
// payload not copied (Linux clones its write-queue skbs), unless a clone
// of that chunk is still in flight; other segments are copied out. A
// segment ends where its chunk ends (when that leaves at least one MSS),
// as Linux sends skb by skb: a chunk sent while still being filled (a
// short read, then more) costs one copied segment, after which segments
// start at chunks again.
// WriteFrom lets a relay read its host socket straight into the chunks:
// the tail chunk's room and as many fresh chunks as the caller has slices
// for, up to the free send buffer space, reserved while the caller fills
// them without the lock and queued at commit as far as it filled them
// (the rest go back to the pool). A segment carries at most curMSS bytes (tcp_current_mss):
// the MSS less the SACK blocks it carries while we hold out-of-order data
// or owe a D-SACK (RFC 6691 §3), so it still fits the MTU with DF set.
// Every segment is CsumPartial (the pseudo-header sum in
// the field): dev completes it in software when the NIC cannot. When the
// output NIC has link.CapGSO (afpacket with PACKET_VNET_HDR) a segment
// carries up to 64 KiB with GSOSize = MSS: one SKB, no copy of ours, one
// syscall slot for up to 44 wire segments. Retransmission clones or
// copies again from the send queue, which keeps every byte from SND.UNA
// on.
//
// Timers (per socket, five clock.Timer values, no goroutine): the
// retransmission timer (RTO per RFC 6298 with a 200 ms floor, doubling
// per retransmission, restarted by an ACK of new data; also the tail
// loss probe, and the persist timer for zero-window probes and the SWS
// override: probing goes on while the peer answers, RFC 9293 MUST-37,
// Retries2 unanswered probes end the connection, and the answers are no
// duplicate ACKs; an ACK of everything sent stops it unless it is the persist
// timer, which is armed whenever data waits, nothing is in flight and
// the timer has no other work, rtxPending: a pending loss probe must not
// hide a closed window, or a lost window update stalls the connection
// for good); the delayed ACK
// (40 ms; every second full segment is ACKed at once, the first 16
// segments too, out-of-order data at once); the keepalive timer, which
// also ends FIN-WAIT-2 of a closed socket (tcp_fin_timeout) and
// TIME-WAIT (2 MSL); the deadline timer that wakes blocked callers;
// RACK's reordering timer (RFC 8985 §6.3).
//
// Loss recovery: without SACK, three duplicate ACKs enter RFC 6582 NewReno
// (cwnd inflation, partial ACKs retransmit the next hole). With SACK a
// scoreboard of up to 32 ranges drives RFC 6675 recovery (lost holes sent
// first, pipe limits sending). The scoreboard and HighRxt outlive a
// recovery, so one entered right after neither takes forgotten SACKed data
// for holes nor resends a retransmission still in flight. A partial ACK
// that empties the scoreboard leaves what is missing to RACK rather than
// to NewReno's retransmit-and-deflate. Losses are marked by RFC 8985
// RACK-TLP as Linux does with tcp_recovery=1 (rack.go): a hole is lost when a
// segment sent after it was delivered RACK.rtt + RACK.reo_wnd ago (§6.2
// step 5), the reordering timer (§6.3) catching the ones no further ACK
// will reveal. reo_wnd is min_RTT/4, times reo_wnd_mult, which D-SACKs
// raise once per round and 16 D-SACK-free recoveries reset (§6.2 step 4),
// capped at SRTT. It is 0 while no reordering was seen and we are in fast
// recovery, in RTO recovery (from a timeout until SND.UNA passes SND.MAX
// of then), or DupThresh segments are SACKed. Our choice for DupThresh:
// RFC 6675's IsLost (DupThresh discontiguous ranges or (DupThresh-1)·SMSS
// SACKed above a hole) marks losses too as long as no reordering was seen,
// and is off once it was. Reordering is seen (§6.2 step 3) when an
// original is delivered below RACK.fack as an earlier ACK left it (blocks
// of one ACK are not compared with each other, Linux prior_fack), or on a
// D-SACK of a retransmission whose original an earlier ACK had covered, as
// Linux tcp_sacktag_one. So reordered segments get reo_wnd instead of a
// spurious retransmission; recovery is then entered only on a RACK-marked
// loss (Linux tcp_time_to_recover). Retransmissions RACK finds lost go out
// again; a retransmission of SND.UNA is also re-sent when DupThresh
// segments sent after it are SACKed (Linux tcp_mark_lost_retrans).
// Duplicates we receive are reported with a D-SACK (RFC 2883). An RTO sets
// cwnd to one segment, enters RTO recovery and goes back to SND.UNA,
// skipping SACKed ranges. The tail loss probe (RFC 8985 §7) replaces the
// RTO for the tail: PTO = 2·SRTT (+200 ms with one segment in flight),
// then one new segment or the last one again, which opens a TLP episode
// (§7.4.2: TLP.end_seq, TLP.is_retrans; one at a time). A SACK of the
// probe with a hole below it enters recovery (§7.4.1). An ACK beyond
// TLP.end_seq with no D-SACK for a retransmitted probe means the probe
// alone repaired a loss, answered once with ssthresh from the algorithm
// and cwnd = ssthresh (Linux CWR). A D-SACK for the probe, a probe of new
// data, fast recovery or a timeout end the episode without a reduction.
//
// RACK's send times (RFC 8985 §6.1 Segment.xmit_ts) are kept beside the
// send queue, not per segment: one record per run of bytes sent in the same
// clock tick in the in-order pass (at most 512, the newest one absorbing
// sends past that with its earliest and latest time), and the hole
// retransmissions (at most 32, like the scoreboard), both allocated on
// first send and freed with the send buffer. Send stamps are strictly
// increasing within a tick, so a retransmission is never ordered before
// new data sent ahead of it (§6.2's end_seq tiebreak assumes sequence
// order is send order). Deviations: loss marks are not stored but
// evaluated when recovery asks (same verdict at the same instant). After a
// timeout the go-back-N pass resends every unSACKed segment, also one sent
// within RACK.rtt + reo_wnd of the timeout that §6.3 would spare (the pass
// reaches it an RTT or more later). The TSecr test of §6.2 step 1 uses
// the millisecond TSval of the retransmission.
//
// Opening under load: a full SYN queue answers with SYN cookies
// (RFC 4987, syncookies.go); options ride in the timestamp. ECN
// (RFC 3168, ecn.go) is accepted when the peer asks and requested when
// Config.ECN is set.
//
// # Transparent proxying (intercept.go)
//
// Proxy mode terminates pod flows to foreign addresses in this stack. A
// segment whose skb.Mark carries netfilter.MarkDivert (netfilter diverted
// its flow to local delivery, destination kept) is looked up by exact
// 4-tuple only; a SYN that finds no connection goes to the Proto's one
// Interceptor (Proto.Intercept), never to a listener, and nothing else
// ever reaches the Interceptor. Upstream first: the SYN is not answered;
// its sequence number, length, window, options and ECN bits are kept in
// a Request returned by Interceptor.Next. Request.Accept creates the child
// as a listener would (initPassive, shared), hashed by 4-tuple with the
// foreign destination as local address, sends the SYN,ACK and waits,
// bounded by its context, for ESTABLISHED (on expiry the child is reset
// and removed). Request.Refuse answers <SEQ=0><ACK=SEG.SEQ+SEG.LEN>
// <CTL=RST,ACK> (RFC 9293 §3.10.7.1). SYN retransmissions of a pending
// request are dropped (TcpExtInterceptSynDups, TCP_INTERCEPT_DUP_SYN);
// once the child is hashed they get the SYN,ACK again. A diverted segment
// with neither connection nor Interceptor gets the closed-port answer
// (TcpExtInterceptNoInterceptor for SYNs). Children of intercepted
// requests and DialTransparent sockets send with route.Flow.Transparent
// (their source is not ours), as does every reset answering a diverted
// segment; DialTransparent sockets also put MarkDivert in the flow's
// Mark, so conntrack at OUTPUT marks the flow and the peer's replies are
// diverted back to them.
//
// Bound: maxPending unresolved requests per Interceptor (default 4096,
// DefaultMaxPending); a SYN past it is dropped (TcpExtInterceptOverflows,
// TCP_INTERCEPT_FULL) and its retransmission tries again. Accepted
// children count against MaxSockets like any connection.
//
// Deviations, each marked where coded: RTO floor 200 ms (Linux, not
// RFC 6298's 1 s); TS.Recent kept but segments without timestamps on a
// timestamped connection accepted (Linux, not RFC 7323 §3.2's SHOULD
// drop); window updates on any ACK that advances SND.UNA (Linux
// tcp_may_update_window); data arriving after close answered with RST
// (Linux, RFC 2525 §2.17); urgent data read inline (RFC 6093).
//
// # Limits
//
// Per connection: the send queue holds at most SndBuf bytes (default
// 1 MiB) in chunks from buf's pools, returned as they are acknowledged,
// the receive queue at most RcvBuf bytes of payload (default 256 KiB,
// auto-tuned up to MaxRcvBuf, 6 MiB, as the reader drains more per RTT
// — tcp_rcv_space_adjust; the window scale is chosen for MaxRcvBuf) in
// at most twice that of buffers; an empty receive queue holds nothing. The
// out-of-order queue holds at most maxOFO (1024) segments, bytes bounded
// by the window; overflow is TCPOFODrop. The SACK scoreboard keeps 32
// ranges; RACK keeps 512 send-time records and 32 retransmission
// records while data is in flight. Per listener: backlog (default 128, at most 4096) accepted
// connections; MaxSynBacklog (1024) in SYN-RECEIVED; overflow drops the
// SYN (ListenDrops/ListenOverflows). Per Proto: MaxSockets connections
// (default 131072), of which at most MaxTimeWait (default half of them,
// tcp_max_tw_buckets) in TIME-WAIT: a socket closing past that bound
// skips TIME-WAIT and is gone at once (TCPTimeWaitOverflow), so sockets
// waiting out the 60 s of a connection this stack closed first (a proxied
// server that closes first) never refuse new ones; 1000 challenge ACKs
// per second (RFC 5961 §7). A SYN
// flood past the SYN queue costs no memory: cookies hold the state.
//
// # Concurrency and lock order
//
// One mutex per socket (Sock.mu) guards all its state. The receive path,
// timer callbacks and user calls take it. User calls hold it only to copy
// and to run the output path, never across a wait (sync.Cond on the same
// mutex), so receive never queues behind a blocked reader; this is the
// simpler model next to Linux's owner flag + backlog (sk_add_backlog /
// release_sock): a segment arriving while a user call copies waits for
// the lock for the length of a copy instead of being queued, which keeps
// one ordering of events and no second queue to bound.
//
// Lock order: child Sock.mu > listener Sock.mu > Proto.mu > the clock's
// lock; Interceptor.mu is a leaf (never held while a socket lock or
// Proto.mu is taken). Proto.mu (the tables) is a leaf: nothing else is taken under
// it. ipv4.QueueXmit and ipv6.QueueXmit are called with Sock.mu held;
// they never call back into TCP on the same stack (loopback and the
// ICMPv6 Packet Too Big a DF send over the path MTU raises go through the
// layer's backlog), so no socket lock is re-entered.
package tcp
