package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cni-userstack/cni-userstack/netstack"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/link/fault"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

// attachFaulty is env.Peer.Attach with link/fault around the AF_PACKET
// endpoint: loss on the stack's side of the veth, both directions.
func attachFaulty(t testing.TB, p *env.Peer, opts ...fault.Option) (*netstack.Stack, *dev.NIC, *fault.Endpoint) {
	t.Helper()
	s := netstack.New()
	t.Cleanup(func() { _ = s.Close() })
	ep, err := afpacket.Open(afpacket.Config{NetNS: p.StackNSPath, Name: p.StackIf})
	if err != nil {
		t.Fatal(err)
	}
	fe := fault.Wrap(ep, opts...)
	nic, err := s.AddNIC(fe, netstack.NICConfig{Name: "eth0", MAC: header.MAC(ep.MAC())})
	if err != nil {
		fe.Close()
		t.Fatal(err)
	}
	if err := s.AddAddress(nic.ID(), p.StackAddr); err != nil {
		t.Fatal(err)
	}
	if p.StackAddr6.IsValid() {
		if err := s.AddAddress(nic.ID(), p.StackAddr6); err != nil {
			t.Fatal(err)
		}
	}
	return s, nic, fe
}

// With link/fault dropping 1% of the frames on the stack's side (both
// directions), a transfer each way completes intact.
func TestKernelTCPUnderLoss(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer(t, "10.226.0.1/24", "10.226.0.2/24", 1500)
	s, _, fe := attachFaulty(t, p, fault.Loss(0.01), fault.OnReceive(), fault.Seed(11))
	kernelTCPUnderLoss(t, &tcpPair{p: p, s: s, kernel: p.KernelAddr.Addr(), stack: p.StackAddr.Addr(), fault: fe})
}

// TestKernelTCP6UnderLoss is TestKernelTCPUnderLoss over IPv6 (NDP
// through the same lossy link).
func TestKernelTCP6UnderLoss(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer6(t, "10.235.0.1/24", "10.235.0.2/24", "fd00:235::1/64", "fd00:235::2/64", 1500)
	s, _, fe := attachFaulty(t, p, fault.Loss(0.01), fault.OnReceive(), fault.Seed(11))
	kernelTCPUnderLoss(t, &tcpPair{p: p, s: s, kernel: p.KernelAddr6.Addr(), stack: p.StackAddr6.Addr(), fault: fe})
}

// kernelTCPUnderLoss is TestKernelTCPUnderLoss's transfers over tp.
func kernelTCPUnderLoss(t *testing.T, tp *tcpPair) {
	s := tp.s
	size := tcpBulkMB() << 20
	if !testing.Short() {
		size = max(size, 256<<20)
	}

	ln, err := s.ListenTCP(netip.AddrPortFrom(tp.stack, 5010))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := stacktest.AcceptAndDrain(ln, 5*time.Minute)
	kc, err := tp.kernelDial(t, 5010)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sum, err := sendPattern(kc, size)
	if err != nil {
		t.Fatal(err)
	}
	kc.CloseWrite()
	r := <-got
	kc.Close()
	if r.Err != nil || r.N != int64(size) || r.Sum != sum {
		t.Fatalf("kernel→stack under 1%% loss: %d of %d bytes, checksum %v, %v", r.N, size, r.Sum == sum, r.Err)
	}
	t.Logf("kernel→stack %d MiB under 1%% loss: %v", size>>20, time.Since(start).Round(time.Millisecond))

	kl := tp.kernelListen(t, 5011)
	kgot := stacktest.AcceptAndDrain(kl, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sc, err := s.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(tp.kernel, 5011))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sc.SetDeadline(time.Now().Add(5 * time.Minute))
	stop := watchStall(t, tp, sc)
	start = time.Now()
	sum, err = sendPattern(sc, size)
	if err != nil {
		stop()
		t.Fatalf("%v\n%s", err, stackSenderState(tp, sc))
	}
	sc.CloseWrite()
	r = <-kgot
	stop()
	if r.Err != nil || r.N != int64(size) || r.Sum != sum {
		t.Fatalf("stack→kernel under 1%% loss: %d of %d bytes, checksum %v, %v\n%s", r.N, size, r.Sum == sum, r.Err,
			stackSenderState(tp, sc))
	}
	in := sc.Info()
	t.Logf("stack→kernel %d MiB under 1%% loss: %v (retransmits %d, rto %v)", size>>20,
		time.Since(start).Round(time.Millisecond), in.TotalRetrans, in.RTO)
}

// stallAfter is how long a transfer may go without an acknowledgment of
// new data before watchStall calls the connection stuck. Under 1% loss a
// healthy sender is ACKed within an RTO or two; 60 s is RTO backoff
// from 200 ms through eight lost retransmissions in a row.
const stallAfter = 60 * time.Second

// watchStall watches sc's acknowledged bytes while a transfer runs; when
// they stand still for stallAfter it logs the sender's whole state (while
// it is still stuck) and ends the transfer by expiring sc's deadline, so
// a stall fails in a minute with the evidence instead of at the deadline.
// The returned stop ends the watch.
func watchStall(t *testing.T, tp *tcpPair, sc *tcp.Conn) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last, since := sc.Sock().Info().BytesAcked, time.Now()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			in := sc.Sock().Info()
			if in.BytesAcked != last || in.Unacked+in.NotSent == 0 {
				last, since = in.BytesAcked, time.Now()
				continue
			}
			if time.Since(since) >= stallAfter {
				t.Errorf("stack sender stalled: no new data acknowledged for %v\n%s", stallAfter, stackSenderState(tp, sc))
				sc.SetDeadline(time.Now())
				return
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// stackSenderState is everything about a stuck stack→kernel transfer:
// the sender's TCP state, the stack's nonzero TCP counters, the fault
// link's counters and the kernel receiver's view (ss -tinm).
func stackSenderState(tp *tcpPair, sc *tcp.Conn) string {
	var b strings.Builder
	b.WriteString("stack sender: " + sc.Sock().DebugString())
	ctr := tp.s.TCP().Counters()
	names := make([]string, 0, len(ctr))
	for k, v := range ctr {
		if v != 0 {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	b.WriteString("stack TCP counters:")
	for _, k := range names {
		fmt.Fprintf(&b, " %s=%d", k, ctr[k])
	}
	b.WriteString("\n")
	if tp.fault != nil {
		fmt.Fprintf(&b, "fault link: %+v\n", tp.fault.Stats())
	}
	out, err := tp.p.Exec("ss", "-tinmoe", "state", "all")
	fmt.Fprintf(&b, "kernel receiver (ss -tinmoe, err %v):\n%s", err, out)
	return b.String()
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkKernelTCPThroughput: one connection between the stack and the
// kernel over the veth (GSO on), each direction; reports Gbit/s and the
// process CPU per GiB (stack and kernel peer share this process's
// accounting: the kernel side's softirq work lands partly here). The
// "-ipv6" runs are the same over the veth's IPv6 addresses, for the ratio
// against IPv4 in one run.
func BenchmarkKernelTCPThroughput(b *testing.B) {
	requireRoot(b)
	p := newKernelPeer6(b, "10.227.0.1/24", "10.227.0.2/24", "fd00:227::1/64", "fd00:227::2/64", 1500)
	s, _ := attachStack(b, p, "")
	tp4 := &tcpPair{p: p, s: s, kernel: p.KernelAddr.Addr(), stack: p.StackAddr.Addr()}
	tp6 := &tcpPair{p: p, s: s, kernel: p.KernelAddr6.Addr(), stack: p.StackAddr6.Addr()}
	chunk := make([]byte, 1<<20)
	for _, run := range []struct {
		dir string
		tp  *tcpPair
	}{{"stack-to-kernel", tp4}, {"kernel-to-stack", tp4}, {"stack-to-kernel-ipv6", tp6}, {"kernel-to-stack-ipv6", tp6}} {
		dir, tp := strings.TrimSuffix(run.dir, "-ipv6"), run.tp
		b.Run(run.dir, func(b *testing.B) {
			var w io.WriteCloser
			done := make(chan int64, 1)
			port := 5020
			if tp.kernel.Is6() {
				port = 5120
			}
			if dir == "stack-to-kernel" {
				kl := tp.kernelListen(b, port)
				defer kl.Close() // each b.N round listens again
				go func() {
					c, err := kl.Accept()
					if err != nil {
						done <- 0
						return
					}
					n, _ := io.Copy(io.Discard, c)
					c.Close()
					done <- n
				}()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := s.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(tp.kernel, uint16(port)))
				if err != nil {
					b.Fatal(err)
				}
				w = c
			} else {
				ln, err := s.ListenTCP(netip.AddrPortFrom(tp.stack, uint16(port+1)))
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				go func() {
					c, err := ln.Accept()
					if err != nil {
						done <- 0
						return
					}
					n, _ := io.Copy(io.Discard, c)
					c.Close()
					done <- n
				}()
				var kc *net.TCPConn
				if err := p.Do(func() (err error) {
					var nc net.Conn
					nc, err = net.Dial(tp.network(), netip.AddrPortFrom(tp.stack, uint16(port+1)).String())
					if err == nil {
						kc = nc.(*net.TCPConn)
					}
					return err
				}); err != nil {
					b.Fatal(err)
				}
				w = kc
			}
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			cpu0, t0 := cpuTime(), time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := w.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			if cw, ok := w.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			n := <-done
			el, cpu := time.Since(t0), cpuTime()-cpu0
			b.StopTimer()
			w.Close()
			if n != int64(b.N)*int64(len(chunk)) {
				b.Fatalf("received %d of %d", n, int64(b.N)*int64(len(chunk)))
			}
			gib := float64(n) / (1 << 30)
			b.ReportMetric(float64(n)*8/el.Seconds()/1e9, "Gbit/s")
			b.ReportMetric(cpu.Seconds()/gib, "cpu-s/GiB")
		})
	}
}

// BenchmarkKernelTCPLatency: 1-byte request/response, p50 and p99, a
// kernel client against the stack and against a kernel server over the
// same kind of veth, in the same run.
func BenchmarkKernelTCPLatency(b *testing.B) {
	requireRoot(b)
	p := newKernelPeer(b, "10.228.0.1/24", "10.228.0.2/24", 1500)
	s, _ := attachStack(b, p, "")
	stackSrv := netip.AddrPortFrom(p.StackAddr.Addr(), 5030)
	ln, err := s.ListenTCP(stackSrv)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go echoServe(ln)

	// Kernel-to-kernel: a second peer whose other end gets a kernel
	// address in its own namespace.
	q := newKernelPeer(b, "10.229.0.1/24", "10.229.0.2/24", 1500)
	if _, err := env.Run("ip", "-n", q.StackNS, "addr", "add", q.StackAddr.String(), "dev", q.StackIf); err != nil {
		b.Fatal(err)
	}
	var kl net.Listener
	if err := inNS(q.StackNSPath, func() (err error) {
		kl, err = net.Listen("tcp4", netip.AddrPortFrom(q.StackAddr.Addr(), 5031).String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer kl.Close()
	go echoServe(kl)

	for _, tc := range []struct {
		name string
		peer *env.Peer
		addr netip.AddrPort
	}{{"stack", p, stackSrv}, {"kernel", q, netip.AddrPortFrom(q.StackAddr.Addr(), 5031)}} {
		b.Run(tc.name, func(b *testing.B) {
			var c net.Conn
			if err := tc.peer.Do(func() (err error) {
				c, err = net.Dial("tcp4", tc.addr.String())
				return err
			}); err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			one := []byte{1}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := c.Write(one); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

func echoServe(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if tc, ok := c.(interface{ SetNoDelay(bool) error }); ok {
				tc.SetNoDelay(true)
			}
			io.Copy(c, c)
		}()
	}
}

// inNS runs fn in the namespace at path.
func inNS(path string, fn func() error) error {
	p := &env.Peer{NSPath: path}
	return p.Do(fn)
}

// RFC 3168 against the kernel: a stack with ECN requested negotiates it
// with the kernel (tcp_ecn=2 accepts), and a kernel asking for ECN
// (tcp_ecn=1) gets it from the stack; TCP_INFO shows TCPI_OPT_ECN.
func TestKernelTCPECN(t *testing.T) {
	requireRoot(t)
	p := newKernelPeer(t, "10.230.0.1/24", "10.230.0.2/24", 1500)
	s := netstack.New(netstack.WithTCPConfig(tcp.Config{ECN: true}))
	t.Cleanup(func() { _ = s.Close() })
	_, closeCapture, err := p.Attach(s, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeCapture)
	tp := &tcpPair{p: p, s: s, kernel: p.KernelAddr.Addr(), stack: p.StackAddr.Addr()}
	const optECN = 8 // TCPI_OPT_ECN

	kl := tp.kernelListen(t, 5040)
	acc := make(chan *net.TCPConn, 1)
	go func() {
		c, err := kl.AcceptTCP()
		if err == nil {
			acc <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sc, err := s.DialTCP(ctx, netip.AddrPort{}, netip.AddrPortFrom(tp.kernel, 5040))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	kc := <-acc
	defer kc.Close()
	if o := kernelTCPInfo(t, kc).Options; o&optECN == 0 {
		t.Fatalf("stack-initiated: kernel TCP_INFO options %#x lack ECN", o)
	}
	if _, err := sc.Write([]byte("ect")); err != nil {
		t.Fatal(err)
	}

	if _, err := p.Exec("sysctl", "-qw", "net.ipv4.tcp_ecn=1"); err != nil {
		t.Fatal(err)
	}
	ln, err := s.ListenTCP(netip.AddrPortFrom(tp.stack, 5041))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.AcceptTCP()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	kc2, err := tp.kernelDial(t, 5041)
	if err != nil {
		t.Fatal(err)
	}
	defer kc2.Close()
	if o := kernelTCPInfo(t, kc2).Options; o&optECN == 0 {
		t.Fatalf("kernel-initiated: TCP_INFO options %#x lack ECN", o)
	}
}

func kernelTCPInfo(t *testing.T, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var gerr error
	rc.Control(func(fd uintptr) { info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return info
}
