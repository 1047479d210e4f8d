package afpacket

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

const etherTypeTest = 0x88b5 // IEEE local experimental: no kernel handler

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("afpacket tests need root (network namespaces, veth, AF_PACKET)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("afpacket tests need iproute2's ip command")
	}
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// suffix is random, so parallel runs and leftovers never collide.
func suffix() string { return fmt.Sprintf("%06x", rand.Uint32()&0xffffff) }

// newNetNS creates a uniquely named namespace, deleted (with its links) in
// t.Cleanup, and returns its name and path.
func newNetNS(t testing.TB, tag string) (string, string) {
	t.Helper()
	name := fmt.Sprintf("afp-%s-%s-%s", strings.ReplaceAll(t.Name(), "/", "_"), tag, suffix())
	if len(name) > 64 {
		name = name[len(name)-64:]
	}
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name, filepath.Join("/var/run/netns", name)
}

// vethPair creates a veth pair with one end in each namespace, both up,
// and returns the two names (IFNAMSIZ: 15 characters).
func vethPair(t testing.TB, nsA, nsB string) (string, string) {
	t.Helper()
	s := suffix()
	a, b := "afa"+s, "afb"+s
	run(t, "ip", "link", "add", a, "netns", nsA, "type", "veth", "peer", "name", b, "netns", nsB)
	run(t, "ip", "-n", nsA, "link", "set", a, "up")
	run(t, "ip", "-n", nsB, "link", "set", b, "up")
	return a, b
}

func linkInfo(t testing.TB, ns, dev string) (mac [6]byte, mtu int) {
	t.Helper()
	var l []struct {
		Address string `json:"address"`
		MTU     int    `json:"mtu"`
	}
	if err := json.Unmarshal([]byte(run(t, "ip", "-n", ns, "-j", "link", "show", dev)), &l); err != nil || len(l) != 1 {
		t.Fatalf("ip -j link show %s: %v", dev, err)
	}
	hw, err := net.ParseMAC(l[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	copy(mac[:], hw)
	return mac, l[0].MTU
}

// inNetNS runs fn on a thread in the namespace at path.
func inNetNS(t testing.TB, path string, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- err
			return
		}
		target, err := netns.GetFromPath(path)
		if err != nil {
			done <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			done <- err
			return
		}
		fn()
		if err := netns.Set(orig); err != nil {
			done <- err // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func open(t testing.TB, cfg Config) *Endpoint {
	t.Helper()
	e, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// readUntil reads until match accepts a frame or the bounded wait ends.
func readUntil(t *testing.T, e *Endpoint, wait time.Duration, match func([]byte) bool) []byte {
	t.Helper()
	e.SetReadDeadline(time.Now().Add(wait))
	defer e.SetReadDeadline(time.Time{})
	pkts := make([]*buf.SKB, 16)
	for {
		n, err := e.ReadBatch(pkts)
		if err != nil {
			t.Fatalf("ReadBatch: %v", err)
		}
		var found []byte
		for _, s := range pkts[:n] {
			if found == nil && match(s.Bytes()) {
				found = append([]byte(nil), s.Bytes()...)
			}
			s.Consume()
		}
		if found != nil {
			return found
		}
	}
}

func isARP(op uint16, senderIP, targetIP net.IP) func([]byte) bool {
	return func(f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 &&
			binary.BigEndian.Uint16(f[20:]) == op &&
			bytes.Equal(f[28:32], senderIP.To4()) && bytes.Equal(f[38:42], targetIP.To4())
	}
}

// arpRequest builds "who-has target tell sender" from mac, by hand.
func arpRequest(mac [6]byte, sender, target net.IP) []byte {
	f := make([]byte, 42)
	copy(f[0:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:], mac[:])
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	binary.BigEndian.PutUint16(f[14:], 1)
	binary.BigEndian.PutUint16(f[16:], 0x0800)
	f[18], f[19] = 6, 4
	binary.BigEndian.PutUint16(f[20:], 1)
	copy(f[22:], mac[:])
	copy(f[28:], sender.To4())
	copy(f[38:], target.To4())
	return f
}

func netnsOfThreads(t *testing.T) map[string]bool {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	seen := map[string]bool{}
	for _, p := range tasks {
		if l, err := os.Readlink(p); err == nil {
			seen[l] = true
		}
	}
	return seen
}

// TestKernelPeer: the kernel owns 10.x.y.1 in nsK; we own the other veth
// end in nsU, where no address is configured.
func TestKernelPeer(t *testing.T) {
	needRoot(t)
	before := netnsOfThreads(t)
	nsK, pathK := newNetNS(t, "k")
	nsU, pathU := newNetNS(t, "u")
	devK, devU := vethPair(t, nsK, nsU)
	run(t, "ip", "-n", nsU, "link", "set", devU, "mtu", "1400")
	x, y := byte(rand.IntN(250)+1), byte(rand.IntN(250)+1)
	kernelIP, ourIP := net.IPv4(10, x, y, 1), net.IPv4(10, x, y, 2)
	run(t, "ip", "-n", nsK, "addr", "add", kernelIP.String()+"/24", "dev", devK)

	e := open(t, Config{NetNS: pathU, Name: devU})
	mac, mtu := linkInfo(t, nsU, devU)
	if e.MAC() != mac || e.MTU() != 1400 || mtu != 1400 {
		t.Fatalf("MAC %x MTU %d; ip link says %x %d", e.MAC(), e.MTU(), mac, mtu)
	}
	if e.Ifindex() == 0 || e.Name() != devU {
		t.Fatalf("ifindex %d name %q", e.Ifindex(), e.Name())
	}
	if after := netnsOfThreads(t); len(after) != len(before) || !sameKeys(before, after) {
		t.Fatalf("a thread was left in another namespace: before %v after %v", before, after)
	}

	t.Run("transmit bypasses the qdisc", func(t *testing.T) {
		var v int
		var err error
		e.rxq[0].rc.Control(func(fd uintptr) { // rxq[0]'s socket transmits
			v, err = unix.GetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS)
		})
		if err != nil || v != 1 {
			t.Fatalf("PACKET_QDISC_BYPASS = %d, %v; want 1", v, err)
		}
	})

	t.Run("kernel frame arrives", func(t *testing.T) {
		// A UDP send from nsK makes its kernel ARP for our address.
		inNetNS(t, pathK, func() {
			c, err := net.Dial("udp4", net.JoinHostPort(ourIP.String(), "9"))
			if err != nil {
				t.Error(err)
				return
			}
			c.Write([]byte("x"))
			c.Close()
		})
		readUntil(t, e, 5*time.Second, isARP(1, kernelIP, ourIP))
	})

	t.Run("our frame gets the kernel's ARP reply", func(t *testing.T) {
		req := arpRequest(e.MAC(), ourIP, kernelIP)
		if n, err := e.WriteBatch([]*buf.SKB{buf.FromBytes(0, req)}); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		// PACKET_IGNORE_OUTGOING: our own request must not come back.
		reply := readUntil(t, e, 5*time.Second, func(f []byte) bool {
			if bytes.Equal(f, req) {
				t.Fatal("read our own transmission back")
			}
			return isARP(2, kernelIP, ourIP)(f)
		})
		mac := e.MAC()
		if !bytes.Equal(reply[0:6], mac[:]) || !bytes.Equal(reply[32:38], mac[:]) {
			t.Fatalf("ARP reply not addressed to us: %x", reply)
		}
		st := e.Stats()
		if st.TxPackets != 1 || st.TxBytes != uint64(len(req)) || st.RxPackets == 0 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("oversize and runt frames are dropped, not sent", func(t *testing.T) {
		big := buf.FromBytes(0, make([]byte, e.MTU()+15))
		runt := buf.FromBytes(0, make([]byte, 13))
		ok := buf.FromBytes(0, arpRequest(e.MAC(), ourIP, kernelIP))
		if n, err := e.WriteBatch([]*buf.SKB{big, runt, ok}); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		if e.Drops().Get(DropAFPacketTxTooBig) != 1 || e.Drops().Get(DropAFPacketTxRunt) != 1 {
			t.Fatalf("drops %v", e.Stats().Drops)
		}
	})

	t.Run("Close unblocks ReadBatch", func(t *testing.T) {
		errc := make(chan error, 1)
		go func() {
			pkts := make([]*buf.SKB, 4)
			for {
				n, err := e.ReadBatch(pkts)
				for _, s := range pkts[:n] {
					s.Consume()
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
		time.Sleep(50 * time.Millisecond) // let it block; the outcome does not depend on it
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, link.ErrClosed) {
				t.Fatalf("ReadBatch after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock ReadBatch")
		}
		if err := e.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		var d buf.DropStats
		s := buf.FromBytes(0, make([]byte, 60))
		s.Drops = &d
		if n, err := e.WriteBatch([]*buf.SKB{s}); n != 0 || !errors.Is(err, link.ErrClosed) || d.Get(link.DropTxClosed) != 1 {
			t.Fatalf("WriteBatch after Close = %d, %v", n, err)
		}
	})
}

func sameKeys(a, b map[string]bool) bool {
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func TestOpenErrors(t *testing.T) {
	needRoot(t)
	ns, path := newNetNS(t, "e")
	_, _ = vethPair(t, ns, ns)
	tests := []struct {
		name, want string
		cfg        Config
	}{
		{"no interface named", "needs Name or Ifindex", Config{NetNS: path}},
		{"unknown name", `interface "nosuch0"`, Config{NetNS: path, Name: "nosuch0"}},
		{"name too long", "interface name", Config{NetNS: path, Name: "a-very-long-interface-name"}},
		{"unknown index", "interface index 99999", Config{NetNS: path, Ifindex: 99999}},
		{"name and index disagree", "not 99999", Config{NetNS: path, Name: "lo", Ifindex: 99999}},
		{"not Ethernet (loopback)", "not an Ethernet interface", Config{NetNS: path, Name: "lo"}},
		{"bad netns path", "netns /nonexistent/netns", Config{NetNS: "/nonexistent/netns", Name: "lo"}},
		{"batch too large", "BatchSize", Config{NetNS: path, Name: "lo", BatchSize: MaxBatchSize + 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Open(tt.cfg)
			if err == nil {
				e.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

// TestBatchBetweenEndpoints moves frames between two endpoints on the two
// ends of one veth, selected by index, with a small FrameSize.
func TestBatchBetweenEndpoints(t *testing.T) {
	needRoot(t)
	ns, path := newNetNS(t, "b")
	devA, devB := vethPair(t, ns, ns)
	a := open(t, Config{NetNS: path, Name: devA, BatchSize: 8})
	b := open(t, Config{NetNS: path, Ifindex: indexOf(t, ns, devB), FrameSize: 200})
	if b.Name() != devB {
		t.Fatalf("by index: name %q, want %q", b.Name(), devB)
	}
	const frames = 50 // several sendmmsg batches of 8
	var out []*buf.SKB
	for i := 0; i < frames; i++ {
		out = append(out, testFrame(b.MAC(), a.MAC(), uint32(i), 100))
	}
	out = append(out, testFrame(b.MAC(), a.MAC(), 9999, 300)) // longer than b's FrameSize
	if n, err := a.WriteBatch(out); n != frames+1 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	next := uint32(0)
	readUntil(t, b, 5*time.Second, func(f []byte) bool {
		if binary.BigEndian.Uint16(f[12:]) != etherTypeTest {
			return false
		}
		if len(f) != 100 {
			t.Fatalf("frame of %d bytes", len(f))
		}
		if id := binary.BigEndian.Uint32(f[14:]); id != next {
			t.Fatalf("frame %d, want %d", id, next)
		}
		next++
		return next == frames
	})
	// The long frame follows the last short one; give it a moment to be
	// counted as truncated.
	deadline := time.Now().Add(5 * time.Second)
	for b.Drops().Get(DropAFPacketRxTruncated) == 0 && time.Now().Before(deadline) {
		b.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		pkts := make([]*buf.SKB, 8)
		n, _ := b.ReadBatch(pkts)
		for _, s := range pkts[:n] {
			s.Consume()
		}
	}
	if b.Drops().Get(DropAFPacketRxTruncated) != 1 {
		t.Fatalf("truncated frame not counted: %v", b.Stats().Drops)
	}
}

func indexOf(t testing.TB, ns, dev string) int {
	var l []struct {
		Ifindex int `json:"ifindex"`
	}
	if err := json.Unmarshal([]byte(run(t, "ip", "-n", ns, "-j", "link", "show", dev)), &l); err != nil || len(l) != 1 {
		t.Fatalf("ifindex of %s: %v", dev, err)
	}
	return l[0].Ifindex
}

func testFrame(dst, src [6]byte, id uint32, size int) *buf.SKB {
	s := buf.Alloc(buf.MaxHeadroom, size)
	p := s.Put(size)
	copy(p[0:], dst[:])
	copy(p[6:], src[:])
	binary.BigEndian.PutUint16(p[12:], etherTypeTest)
	binary.BigEndian.PutUint32(p[14:], id)
	return s
}

// BenchmarkAFPacketBatch: frames/s from one endpoint to another across a
// veth pair, 64 frames of 1514 bytes per sendmmsg.
func BenchmarkAFPacketBatch(b *testing.B) {
	needRoot(b)
	ns, path := newNetNS(b, "bench")
	devA, devB := vethPair(b, ns, ns)
	tx := open(b, Config{NetNS: path, Name: devA})
	rx := open(b, Config{NetNS: path, Name: devB})
	const batch = 64
	out := make([]*buf.SKB, batch)
	in := make([]*buf.SKB, batch)
	var sent, got, lost int
	b.ReportAllocs()
	b.SetBytes(1514 * batch)
	for b.Loop() {
		for i := range out {
			out[i] = testFrame(rx.MAC(), tx.MAC(), uint32(i), 1514)
		}
		n, err := tx.WriteBatch(out)
		if err != nil {
			b.Fatal(err)
		}
		sent += n
		for want := got + n; got < want; {
			rx.SetReadDeadline(time.Now().Add(time.Second))
			m, err := rx.ReadBatch(in)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				lost += want - got
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			for _, s := range in[:m] {
				if binary.BigEndian.Uint16(s.Bytes()[12:]) == etherTypeTest {
					got++
				}
				s.Consume()
			}
		}
	}
	b.ReportMetric(float64(got)/b.Elapsed().Seconds(), "frames/s")
	b.ReportMetric(float64(lost), "lost")
	_ = sent
}

// ReadLoop hands every frame up in order, through bursts with quiet
// between them, and parks after a short batch without reading the socket
// empty first: a burst smaller than the batch costs one recvmmsg. A
// ReadQueue loop (dev's poll on other endpoints) reads until EAGAIN
// before it parks, an empty read per burst: the comparison. handle
// returning false ends ReadLoop with nil; Close ends it with ErrClosed.
func TestReadLoop(t *testing.T) {
	needRoot(t)
	ns, path := newNetNS(t, "loop")
	devA, devB := vethPair(t, ns, ns)
	a := open(t, Config{NetNS: path, Name: devA})
	b := open(t, Config{NetNS: path, Name: devB, BatchSize: 16})
	const bursts, perBurst = 20, 3
	pkts := make([]*buf.SKB, 16)
	// frames sends bursts of perBurst frames, each burst once the one
	// before was received in order, then the stop frame (9999); it
	// returns the empty reads meanwhile.
	frames := func(got <-chan uint32) uint64 {
		t.Helper()
		recv := func(want uint32) {
			t.Helper()
			select {
			case id := <-got:
				if id != want {
					t.Fatalf("frame %d, want %d", id, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("frame %d not received", want)
			}
		}
		empty0 := b.rxEmpty.Load()
		next := uint32(0)
		for range bursts {
			var out []*buf.SKB
			for i := range perBurst {
				out = append(out, testFrame(b.MAC(), a.MAC(), next+uint32(i), 100))
			}
			if n, err := a.WriteBatch(out); n != perBurst || err != nil {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			for range perBurst {
				recv(next)
				next++
			}
		}
		empty := b.rxEmpty.Load() - empty0
		if n, err := a.WriteBatch([]*buf.SKB{testFrame(b.MAC(), a.MAC(), 9999, 100)}); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		recv(9999)
		return empty
	}
	// ids hands the test frames of pkts[:n] to got (consuming them) and
	// reports whether the stop frame was among them.
	ids := func(n int, got chan<- uint32) (stop bool) {
		for _, s := range pkts[:n] {
			if f := s.Bytes(); binary.BigEndian.Uint16(f[12:]) == etherTypeTest {
				id := binary.BigEndian.Uint32(f[14:])
				stop = stop || id == 9999
				got <- id
			}
			s.Consume()
		}
		return stop
	}

	got, done := make(chan uint32, 64), make(chan error, 1)
	go func() { done <- b.ReadLoop(0, pkts, func(n int) bool { return !ids(n, got) }) }()
	loopEmpty := frames(got)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ReadLoop stopped by its handler: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadLoop did not return when its handler said stop")
	}

	go func() {
		for {
			n, err := b.ReadQueue(0, pkts)
			if err != nil || ids(n, got) {
				done <- err
				return
			}
		}
	}()
	queueEmpty := frames(got)
	if err := <-done; err != nil {
		t.Fatalf("ReadQueue: %v", err)
	}
	t.Logf("empty reads for %d bursts: ReadLoop %d, ReadQueue %d", bursts, loopEmpty, queueEmpty)
	if queueEmpty < bursts {
		t.Errorf("ReadQueue: %d empty reads for %d bursts, want one a burst at least (the comparison is void)", queueEmpty, bursts)
	}
	if loopEmpty >= bursts/2 {
		t.Errorf("ReadLoop: %d empty reads for %d bursts: it reads the socket empty before it parks", loopEmpty, bursts)
	}

	go func() { done <- b.ReadLoop(0, pkts, func(int) bool { return true }) }()
	time.Sleep(50 * time.Millisecond) // parked in its wait
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, link.ErrClosed) {
			t.Fatalf("ReadLoop after Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadLoop did not return after Close")
	}
}
