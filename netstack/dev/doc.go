// Package dev owns network devices (net/core/dev.c, struct net_device, the
// qdisc layer and NAPI): the per-stack device list, each NIC's addresses,
// MTU and link state, the receive loop that reads batches from a
// link.Endpoint and dispatches each frame by EtherType (ptype_base), the
// taps that see every frame (ptype_all: pcap capture, counters), the
// bounded transmit queue, the per-NIC counters and drop reasons, and the
// Backlog (netif_rx's per-CPU backlog) the IP layers loop packets back
// through.
//
// Not owned here: what the frames carry (neigh answers ARP, ipv4 handles
// IPv4; both register a Handler with AddPacketType), link-layer address
// resolution (neigh), routes (route), and the wire itself (link and its
// subpackages).
//
// # Theory of operation
//
// Goroutines. Each NIC that is up has one receive goroutine per receive
// queue of its endpoint (one, or link.MultiQueue's RxQueues: a NIC's RSS
// queues, AF_PACKET's PACKET_FANOUT sockets, which keep each flow on one
// queue), the NAPI poll loop (napi_poll → __netif_receive_skb_core). It
// reads up to Config.RxBatch frames with one ReadBatch (ReadQueue) into
// its queue's preallocated slice — or lets an endpoint that runs the loop
// itself (link.LoopReader, AF_PACKET's) hand it each batch — takes
// clock.Now once per batch
// (buf.Batch.Now, RxTime), and runs every frame to completion on that
// goroutine: taps, Ethernet check (eth_type_trans),
// the PACKET_OTHERHOST filter, then the handler registered for the
// EtherType. Handlers run on that goroutine and must not block. Each
// queue has its own buf.Batch: work a layer defers to the end of the
// batch (TCP's ACK, a socket's Notify callback) runs there, on the same
// goroutine, after the last frame. Nothing else in this package starts a
// goroutine.
//
// Down and Remove. Endpoint.ReadBatch blocks and cannot be interrupted
// except by Close. Down clears the up flag: Xmit drops from then on
// (NIC_DOWN) and each receive goroutine, when its current read returns,
// frees that batch with NIC_DOWN and exits. Until a frame arrives it stays
// parked in its read; an Up in the meantime finds it still running and
// reuses it (starting only the queues' goroutines that exited), so a NIC
// never has more than one receive goroutine per queue. Remove closes the
// endpoint, which makes every read return link.ErrClosed, and waits for
// the goroutines to exit, so a removed NIC leaks nothing. Remove must not be called from a Handler or Tap (it would
// wait for its own goroutine).
//
// Transmit (dev_queue_xmit → __dev_xmit_skb → qdisc_run). Xmit appends the
// frame to the NIC's FIFO queue, bounded by Config.TxQueueLen (default
// 1000, txqueuelen); a frame arriving at a full queue is freed with
// QDISC_DROP and counted in TxDropped. There is no transmit goroutine: the
// caller that finds the queue idle (the kernel's __QDISC_STATE_RUNNING bit,
// here NIC.txRunning) becomes the flusher and writes the queue in batches
// of up to txBatch frames with Endpoint.WriteBatch until it is empty;
// callers that find a flusher running only enqueue, and the flusher picks
// their frames up before it stops. So frames leave in Xmit order and at
// most one goroutine writes to an endpoint at a time. A flusher keeps
// going as long as others keep feeding the queue; producers are themselves
// bounded by the queue length.
//
// Counters. RxPackets/RxBytes count every frame read from the endpoint,
// TxPackets/TxBytes every frame the endpoint accepted. RxDropped and
// TxDropped count frames this package freed (or the endpoint refused).
// Drops counts every Free on a frame received here or queued for transmit
// here, by reason: the receive loop points skb.Drops at the NIC's
// DropStats so upper layers' drops of a frame count on the NIC it came in
// on, as kfree_skb_reason tracepoints do; Xmit does the same for frames it
// takes over.
//
// Allocation. Receive dispatch and transmit allocate nothing per packet:
// the batch slices are preallocated, the handler and tap tables are
// immutable slices swapped atomically (copy on write) and the queue is
// intrusive (buf.Queue).
//
// Bounds. Devices: MaxNICs NICs. Per NIC: TxQueueLen queued frames,
// RxBatch frames per read, txBatch frames per write, MaxAddresses
// addresses.
//
// Lock order. Every lock here (Devices.mu, NIC.rxMu, NIC.txMu,
// NIC.addrMu) is a leaf: none is taken while another is held, and none is
// held while calling a Handler, a Tap, an address notifier or an Endpoint
// method, so handlers may transmit and taps may call back into dev.
package dev
