// Command floorpacket is the forwarder of the "floor-route" variant of
// `make bench`: the least any userspace router on AF_PACKET can cost here,
// the physical floor of route mode. It sits where route mode's stack sits:
// between the stack end of a pod's veth and the stack end of an uplink
// veth whose other end is in the host netns, both in a netns of their own
// (-netns) where the kernel has no address and forwards nothing. One
// AF_PACKET SOCK_RAW socket is bound to each link for ETH_P_ALL with
// PACKET_VNET_HDR (net/packet/af_packet.c: packet_rcv hands TSO/GSO
// super-frames of up to 64 KiB whole, with their virtio_net_hdr; packet_snd
// gives them back to the kernel as GSO skbs, so nothing is segmented or
// checksummed here), and PACKET_IGNORE_OUTGOING.
//
// Per direction one OS thread (runtime.LockOSThread) loops: a blocking
// recvmmsg(2) of up to -batch frames (MSG_WAITFORONE) from one socket, for
// each frame what a router must do to an IPv4 datagram and nothing more —
// drop what is not IPv4 or whose TTL would expire (RFC 791 §3.2, RFC 1812
// §5.3.1), decrement the TTL and update the header checksum incrementally
// (RFC 1624 §3; the kernel's ip_decrease_ttl), rewrite the Ethernet
// destination to the next hop's MAC (-pod-mac or -host-mac, the harness
// knows them: there is one pod and one uplink, so the "route lookup" is
// the direction and the "neighbour" is a flag) and the source to the
// egress link's own — then one sendmmsg(2) of the batch to the other
// socket. No epoll, no goroutine hand-off, no allocation in the loop:
// each frame is copied twice (into this process by recvmmsg, out by
// sendmmsg), as in route mode.
//
// -netpoll is the Go shape for comparison: non-blocking sockets on the
// runtime's netpoller, a goroutine per direction that parks while its
// socket is empty, as every Go program's reader (and our daemon's) does.
//
// -qdisc-bypass sets PACKET_QDISC_BYPASS on both sockets (packet_xmit:
// the driver's ndo_start_xmit directly, no __dev_queue_xmit).
//
// Not here: PACKET_TX_RING. tpacket_snd would save the second copy (it
// maps the ring pages into the skb as page fragments, tpacket_fill_skb),
// but it hands the slot back to user space from the skb's destructor
// (tpacket_destruct_skb), and on a veth into a local netns that runs when
// the receiving kernel orphans the skb (ip_rcv_core's skb_orphan), long
// before the receiving socket has copied the fragments out: a forwarder
// that refills the slot then rewrites bytes still queued, unread, in the
// host's TCP receive queue, whose checksum (CHECKSUM_PARTIAL from the vnet
// header) is never verified. A floor must be correct, so it copies twice.
//
// Protocol to the harness: one line "ready" on stdout once both sockets
// are bound; SIGTERM or SIGINT writes the counters to stderr and exits.
// Limits: -batch frames per system call, each in a buffer of 64 KiB plus
// the vnet header (a frame the kernel truncates is dropped and counted).
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	vnetHdrLen = 10          // struct virtio_net_hdr (no mergeable buffers)
	frameMax   = 64<<10 + 64 // a 64 KiB GSO frame with its Ethernet header
	bufLen     = vnetHdrLen + frameMax
	ethHdrLen  = 14
)

// counters of one direction, written by its thread only.
type counters struct {
	fwd, notIPv4, ttl, trunc, runt, txErr atomic.Uint64
}

func main() {
	var netns, podLink, upLink, podMAC, hostMAC string
	var batch int
	var bypass, netpoll bool
	var procs int
	flag.StringVar(&netns, "netns", "", "netns path of the two links (empty: here)")
	flag.StringVar(&podLink, "pod-link", "", "the stack end of the pod's veth")
	flag.StringVar(&upLink, "uplink", "", "the stack end of the uplink veth")
	flag.StringVar(&podMAC, "pod-mac", "", "the pod's eth0 MAC (next hop toward the pod)")
	flag.StringVar(&hostMAC, "host-mac", "", "the host end of the uplink's MAC (next hop toward the host)")
	flag.IntVar(&batch, "batch", 16, "frames per recvmmsg/sendmmsg")
	flag.BoolVar(&bypass, "qdisc-bypass", false, "PACKET_QDISC_BYPASS on both sockets")
	flag.BoolVar(&netpoll, "netpoll", false, "Go's shape instead: non-blocking sockets, a goroutine per direction parked on the runtime's netpoller (what a Go program's reader pays)")
	flag.IntVar(&procs, "procs", 0, "GOMAXPROCS (0: the runtime's default). A thread blocked in a system call holds its P until sysmon retakes it, so with as many blocked threads as Ps every wake-up of one goes through sysmon's retake and a new spinning M: -procs above the thread count shows that cost apart")
	flag.Parse()
	if procs > 0 {
		runtime.GOMAXPROCS(procs)
	}
	pm, err1 := net.ParseMAC(podMAC)
	hm, err2 := net.ParseMAC(hostMAC)
	if podLink == "" || upLink == "" || err1 != nil || err2 != nil || len(pm) != 6 || len(hm) != 6 || batch < 1 || batch > 256 {
		fmt.Fprintln(os.Stderr, "floorpacket: need -pod-link, -uplink, -pod-mac, -host-mac (Ethernet), -batch 1..256")
		os.Exit(2)
	}
	pod, err := openIn(netns, podLink, bypass)
	if err != nil {
		fatal(err)
	}
	up, err := openIn(netns, upLink, bypass)
	if err != nil {
		fatal(err)
	}
	var toHost, toPod counters
	toHostDir := &dir{name: "pod→host", in: pod.fd, out: up.fd, src: up.mac, dst: [6]byte(hm), c: &toHost}
	toPodDir := &dir{name: "host→pod", in: up.fd, out: pod.fd, src: pod.mac, dst: [6]byte(pm), c: &toPod}
	errs := make(chan error, 2)
	if netpoll {
		for _, s := range []*sock{pod, up} {
			if err := s.useNetpoll(); err != nil {
				fatal(err)
			}
		}
		toHostDir.useNetpoll(pod, up)
		toPodDir.useNetpoll(up, pod)
	}
	for _, d := range []*dir{toHostDir, toPodDir} {
		d.setupBufs(batch)
		go func(d *dir) {
			if !netpoll {
				runtime.LockOSThread()
			}
			errs <- d.loop()
		}(d)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("ready")
	code := 0
	select {
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "floorpacket: %v\n", s)
	case err := <-errs:
		fmt.Fprintln(os.Stderr, "floorpacket:", err)
		code = 1
	}
	for _, d := range []*dir{toHostDir, toPodDir} {
		c := d.c
		fmt.Fprintf(os.Stderr, "floorpacket: %s forwarded=%d not_ipv4=%d ttl_expired=%d truncated=%d runt=%d tx_error=%d\n",
			d.name, c.fwd.Load(), c.notIPv4.Load(), c.ttl.Load(), c.trunc.Load(), c.runt.Load(), c.txErr.Load())
	}
	os.Exit(code)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "floorpacket:", err)
	os.Exit(1)
}

// sock is one bound AF_PACKET socket (blocking).
type sock struct {
	fd  int
	mac [6]byte
	rc  syscall.RawConn // -netpoll
}

// openIn creates the socket for link inside netns on a thread of its own
// (a socket keeps the netns it was created in); the thread never returns
// to the pool: it exits with its goroutine.
func openIn(netns, link string, bypass bool) (*sock, error) {
	type res struct {
		s   *sock
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if netns != "" {
			f, err := unix.Open(netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- res{err: err}
				return
			}
			err = unix.Setns(f, unix.CLONE_NEWNET)
			unix.Close(f)
			if err != nil {
				ch <- res{err: fmt.Errorf("setns %s: %w", netns, err)}
				return
			}
		}
		s, err := openSock(link, bypass)
		ch <- res{s, err}
	}()
	r := <-ch
	return r.s, r.err
}

func openSock(link string, bypass bool) (*sock, error) {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", link, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	opts := [][3]int{
		{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1},
		{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4 << 20},
		{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4 << 20},
	}
	if bypass {
		opts = append(opts, [3]int{unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("%s: setsockopt %d/%d: %w", link, o[0], o[1], err)
		}
	}
	const ethPAll = 0x0300 // htons(ETH_P_ALL)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethPAll, Ifindex: l.Attrs().Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: %w", link, err)
	}
	s := &sock{fd: fd}
	copy(s.mac[:], l.Attrs().HardwareAddr)
	return s, nil
}

// dir is one direction: frames read from in leave on out, from src to dst.
type dir struct {
	name     string
	in, out  int
	src, dst [6]byte
	c        *counters
	msgs     []mmsghdr
	iovs     []unix.Iovec
	bufs     [][]byte
	// -netpoll: the sockets' RawConns, the calls bound once (no
	// allocation per batch) and their results.
	inRC, outRC      syscall.RawConn
	recvFn, sendFn   func(fd uintptr) bool
	rn, sent, sendTo int
	re               syscall.Errno
}

// mmsghdr is struct mmsghdr (x86-64 / arm64 layout).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

func (d *dir) setupBufs(n int) {
	d.msgs = make([]mmsghdr, n)
	d.iovs = make([]unix.Iovec, n)
	d.bufs = make([][]byte, n)
	for i := range d.msgs {
		d.bufs[i] = make([]byte, bufLen)
		d.iovs[i].Base = &d.bufs[i][0]
		d.iovs[i].SetLen(bufLen)
		d.msgs[i].hdr.Iov = &d.iovs[i]
		d.msgs[i].hdr.SetIovlen(1)
	}
}

func recvmmsg(fd int, msgs []mmsghdr, flags int) (int, syscall.Errno) {
	n, _, e := syscall.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), uintptr(flags), 0, 0)
	return int(n), e
}

func sendmmsg(fd int, msgs []mmsghdr) (int, syscall.Errno) {
	n, _, e := syscall.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	return int(n), e
}

// route does to the frame f (vnet header first) what a router does, in
// place: false drops it (counted).
func (d *dir) route(f []byte) bool {
	if len(f) < vnetHdrLen+ethHdrLen+20 {
		d.c.runt.Add(1)
		return false
	}
	e := f[vnetHdrLen:]
	if e[12] != 0x08 || e[13] != 0x00 { // ETH_P_IP only
		d.c.notIPv4.Add(1)
		return false
	}
	ip := e[ethHdrLen:]
	if ip[0]>>4 != 4 || ip[0]&0xf < 5 {
		d.c.runt.Add(1)
		return false
	}
	// RFC 1812 §5.3.1: a datagram whose TTL would reach 0 is not forwarded.
	if ip[8] <= 1 {
		d.c.ttl.Add(1)
		return false
	}
	ip[8]--
	// RFC 1624 §3 / ip_decrease_ttl: the TTL is the high byte of its
	// 16-bit word, so HC' = HC + 0x0100 in one's complement.
	c := uint32(ip[10])<<8 | uint32(ip[11])
	c += 0x0100
	c = (c & 0xffff) + (c >> 16)
	ip[10], ip[11] = byte(c>>8), byte(c)
	copy(e[0:6], d.dst[:])
	copy(e[6:12], d.src[:])
	return true
}

// useNetpoll makes s non-blocking and registers it with the Go netpoller
// (os.NewFile on a non-blocking fd), once per socket: both directions use
// its RawConn. The file is never closed.
func (s *sock) useNetpoll() error {
	if err := unix.SetNonblock(s.fd, true); err != nil {
		return err
	}
	var err error
	s.rc, err = os.NewFile(uintptr(s.fd), "afpacket").SyscallConn()
	return err
}

// useNetpoll binds d's calls on the netpoller's RawConns of in and out.
func (d *dir) useNetpoll(in, out *sock) {
	d.inRC, d.outRC = in.rc, out.rc
	d.recvFn = func(fd uintptr) bool {
		n, _, e := syscall.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&d.msgs[0])), uintptr(len(d.msgs)), 0, 0, 0)
		d.rn, d.re = int(n), e
		return e != unix.EAGAIN
	}
	d.sendFn = func(fd uintptr) bool {
		n, _, e := syscall.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&d.msgs[d.sent])), uintptr(d.sendTo-d.sent), 0, 0, 0)
		d.rn, d.re = int(n), e
		return e != unix.EAGAIN
	}
}

// recv reads a batch: a blocking recvmmsg, or with -netpoll a
// non-blocking one that parks on the netpoller while the socket is empty.
func (d *dir) recv() (int, syscall.Errno) {
	if d.inRC == nil {
		return recvmmsg(d.in, d.msgs, unix.MSG_WAITFORONE)
	}
	if err := d.inRC.Read(d.recvFn); err != nil {
		return 0, unix.EBADF
	}
	return d.rn, d.re
}

// send writes msgs[from:to]; -netpoll parks while the socket is full.
func (d *dir) send(from, to int) (int, syscall.Errno) {
	if d.outRC == nil {
		return sendmmsg(d.out, d.msgs[from:to])
	}
	d.sent, d.sendTo = from, to
	if err := d.outRC.Write(d.sendFn); err != nil {
		return 0, unix.EBADF
	}
	return d.rn, d.re
}

// loop is the two-copy shape: recvmmsg into our buffers, sendmmsg out.
func (d *dir) loop() error {
	for {
		n, e := d.recv()
		if e != 0 {
			if e == unix.EINTR {
				continue
			}
			return fmt.Errorf("%s recvmmsg: %v", d.name, e)
		}
		// Compact the frames to send to the front of msgs (iovs keep
		// pointing at their own buffers; swap the pairs).
		k := 0
		for i := 0; i < n; i++ {
			m := &d.msgs[i]
			l := int(m.len)
			if m.hdr.Flags&unix.MSG_TRUNC != 0 {
				d.c.trunc.Add(1)
				continue
			}
			if !d.route(d.bufs[i][:l]) {
				continue
			}
			d.iovs[i].SetLen(l)
			if k != i {
				d.iovs[i], d.iovs[k] = d.iovs[k], d.iovs[i]
				d.bufs[i], d.bufs[k] = d.bufs[k], d.bufs[i]
			}
			k++
		}
		for sent := 0; sent < k; {
			s, e := d.send(sent, k)
			if e != 0 {
				if e == unix.EINTR {
					continue
				}
				d.c.txErr.Add(1) // this frame is refused: drop it, go on
				sent++
				continue
			}
			sent += s
		}
		d.c.fwd.Add(uint64(k))
		for i := 0; i < n; i++ {
			d.iovs[i].SetLen(bufLen)
			d.msgs[i].hdr.Flags = 0
		}
	}
}
