// Package afpacket owns the real link: an AF_PACKET SOCK_RAW socket bound
// to one Ethernet interface (net/packet/af_packet.c: packet_create,
// packet_bind, packet_recvmsg, packet_sendmsg), read and written in
// batches with recvmmsg(2) and sendmmsg(2).
//
// Theory of operation.
//
// Open creates the socket inside the interface's network namespace: a
// goroutine locks itself to its OS thread, setns(2)es into Config.NetNS,
// creates and binds the socket, and setns(2)es back. A socket keeps the
// namespace it was created in, so the process itself, and every other
// thread, stays in the namespace it started in. If returning to the
// original namespace fails, the goroutine exits without unlocking its
// thread, and the Go runtime terminates a thread whose locked goroutine
// exits: no other goroutine ever runs in the wrong namespace.
//
// The socket is created with protocol 0, so it receives nothing until
// bind(2) with ETH_P_ALL on the interface: it never sees frames of other
// interfaces. PACKET_IGNORE_OUTGOING (Linux 4.20) keeps our own
// transmissions out of our receive queue. PACKET_QDISC_BYPASS (Linux 3.14)
// sends with packet_xmit → dev_direct_xmit straight to the driver's
// ndo_start_xmit, skipping dev_queue_xmit: no qdisc (a veth's is noqueue
// anyway) and no dev_queue_xmit_nit, so other packet sockets on the
// interface (tcpdump) do not see our transmissions, only the peer does.
// Promiscuous mode is not needed:
// a veth has no hardware address filter (veth_xmit hands every frame to
// the peer's receive path) and an ETH_P_ALL packet socket is a ptype_all
// handler, which __netif_receive_skb_core runs for every frame, including
// PACKET_OTHERHOST frames addressed to MACs that are not the interface's.
// On a physical NIC whose hardware filters by MAC, set promiscuity
// outside this package (PACKET_ADD_MEMBERSHIP/PACKET_MR_PROMISC).
//
// The socket is non-blocking and registered with the Go netpoller through
// os.NewFile; ReadBatch and WriteBatch call recvmmsg/sendmmsg from inside
// syscall.RawConn.Read/Write and wait on the poller on EAGAIN, so Close
// (which closes the file and evicts the poller) wakes a blocked ReadBatch,
// which then returns link.ErrClosed. recvmmsg and sendmmsg are raw
// system calls (the goroutine keeps its P through them: they never block,
// and a sendmmsg that runs the peer's receive softirq is long enough for
// Go's sysmon to hand an ordinary syscall's P away). A NIC reads through
// ReadLoop (link.LoopReader) instead: one RawConn.Read for as long as
// frames come, each batch handed up from inside it, so that after a short
// batch that sent nothing on the link it waits at once instead of reading
// the socket empty first (RawConn.Read forgets a readiness from before it
// starts, so a ReadBatch per batch must read until EAGAIN). In make
// bench's request/response run that is one recvmmsg per round trip
// instead of two (perf stat: 99 614 recvmmsg, 49 807 of them EAGAIN,
// against 45 175 and none), and an A/B of 4 rounds gave 58.0 against 62.9
// µs of daemon CPU per round trip, RR p50 125.5 against 133.2 µs. A batch
// whose handling sent frames is followed by another read: on a veth the
// peer's receive runs inside our sendmmsg and may have answered already
// (without that read, connections/s fell 5% and CPU per connection rose
// 10% in the A/B before).
//
// Busy polling (Config.BusyPoll, off by default; the kernel's
// napi_busy_loop behind SO_BUSY_POLL). When a read finds the socket empty,
// ReadBatch keeps retrying the non-blocking recvmmsg, with sched_yield(2)
// between tries, until a frame comes or BusyPoll has passed, and only then
// waits on the netpoller: a frame that arrives within the budget costs no
// wake-up of a parked goroutine. Each try also runs Config.BusyPollAlso,
// the other event sources of the link's flows (the proxy's host sockets),
// whose events restart the budget: a relayed round trip is then caught
// on both sides by the polling goroutine (epoll's ep_busy_loop polls the
// device queue for a socket waiter; this is the same pairing from the
// device's side). A yield that gave the CPU away (another thread was
// waiting for it) ends the poll after one more try: a poll spends only a
// CPU nobody else wants. At most GOMAXPROCS/2 (at least one) reads
// poll at once in the process; the others wait on the netpoller at once,
// which keeps a P free to run the netpoller and the peers' threads a CPU.
// An idle link thus burns at most one budget of CPU per read, then
// sleeps. Stats counts BusyPollHits (wake-ups saved), BusyPollSleeps
// (budget spent, slept), BusyPollYields (CPU wanted, slept),
// BusyPollSkips (no slot free) and BusyPollAlso (events BusyPollAlso
// handled).
//
// Receive queues (Config.Queues, link.MultiQueue). With more than one,
// Open binds that many sockets to the interface and joins them in one
// PACKET_FANOUT group of type PACKET_FANOUT_HASH with
// PACKET_FANOUT_FLAG_DEFRAG (the kernel reassembles IP fragments before
// hashing) and a group ID the kernel picks (PACKET_FANOUT_FLAG_UNIQUEID):
// the kernel hands each frame to one socket by its flow hash, so a flow's
// frames always reach the same socket, in order, and dev reads each
// socket on its own goroutine (ReadQueue). The first socket also
// transmits. Each queue has its own receive slots; with vnet headers the
// vnetRxBatch slots are shared out among the queues (at least
// minVnetRxSlots each), so a link pins about the same memory whatever
// its queue count.
//
// Receive owns a ring of BatchSize preallocated SKBs, each with
// buf.MaxHeadroom of headroom (received frames start at the Ethernet
// header; the headroom lets forwarding push a header again without a copy)
// and FrameSize bytes of data, with an iovec and an mmsghdr pointing at it.
// A received frame's SKB goes to the caller and its slot is refilled from
// buf's pools, so the steady state allocates nothing. Transmit keeps a
// matching array of mmsghdrs and iovecs that point into the caller's SKBs
// for the duration of the syscall.
//
// Limits: one recvmmsg returns at most min(len(pkts), BatchSize) frames;
// a frame longer than FrameSize is freed with DropAFPacketRxTruncated
// (the kernel reports MSG_TRUNC), shorter than an Ethernet header with
// DropAFPacketRxRunt. On transmit, frames longer than MTU+14 are freed
// with DropAFPacketTxTooBig, shorter than 14 bytes with DropAFPacketTxRunt,
// and a frame the kernel refuses (ENOBUFS, ENETDOWN, ...) with
// DropAFPacketTxError. The socket's receive buffer (SockBuf, default
// DefaultSockBuf, forced past rmem_max with SO_RCVBUFFORCE when
// privileged) bounds what the kernel queues for us; its overflow is the
// kernel's drop, reported by PACKET_STATISTICS in Stats().KernelDrops.
//
// Offloads: PACKET_VNET_HDR (on unless Config.NoVnetHdr) puts a struct
// virtio_net_hdr before every frame in both directions (vnet.go). On
// receive it says whether the checksum still needs finishing (a veth peer
// with tx checksum offload leaves the pseudo-header sum in the field:
// buf.CsumPartial, transport header at csum_start) or was verified
// (CsumUnnecessary), and whether the frame is a TSO/GSO super-frame of up
// to 64 KiB (GSOSize/GSOType), which the peer kernel sends unsegmented.
// On transmit the same fields become the header, so the peer kernel
// finishes checksums and segments for us. With vnet headers each receive
// slot holds a 64 KiB buffer, so receive uses at most vnetRxBatch (16)
// slots (about 1 MiB pinned per link), and frames small enough for a
// smaller pool class are copied out (copybreak) so a socket queue never
// pins a 64 KiB buffer for a small datagram.
//
// Lock order: rxMu and txMu are independent; Close takes rxMu after
// closing the file.
//
// Not owned here: the namespace and the veth (veth package), MAC
// addresses the stack uses (dev), queueing (dev's tx queue).
package afpacket
