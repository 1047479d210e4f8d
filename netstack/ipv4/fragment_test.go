package ipv4

import (
	"bytes"
	"math/rand"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/route"
)

// withPeerFIB makes the layer the host 10.1.0.5 on NIC 1, the far end of
// the default testNet's pod link.
func withPeerFIB(c *Config) {
	fib := route.NewTable()
	_ = fib.Add(route.Route{Dst: pfx("10.1.0.0/24"), NIC: 1})
	fib.AddLocal(ip("10.1.0.5"), 1)
	c.FIB = fib
}

func newPeer(t *testing.T, opts ...option) *testNet {
	tn := newTestNet(t, append([]option{withPeerFIB}, opts...)...)
	tn.fib = tn.l.fib
	return tn
}

// frag builds one fragment of a UDP datagram 10.1.0.1 → 10.1.0.5.
func fragOf(id uint16, data []byte, off, end int, mf bool) []byte {
	return pkt{src: "10.1.0.1", dst: "10.1.0.5", proto: header.ProtoUDP, id: id, off: off, mf: mf, payload: data[off:end]}.bytes()
}

// RFC 791: a 60 KB datagram sent over a 1500-byte MTU arrives as
// fragments that reassemble into identical bytes, whatever their order
// and however often they are duplicated.
func TestFragmentReassembleRoundTrip(t *testing.T) {
	sender := newTestNet(t)
	data := udpish(60000)
	if err := sender.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, data), flowTo("10.1.0.5")); err != nil {
		t.Fatal(err)
	}
	frags := sender.take()
	if len(frags) != (60000+1479)/1480 {
		t.Fatalf("%d fragments", len(frags))
	}
	for i, f := range frags {
		if len(f.b) > 1500 || f.nic != 1 || !f.ip().ChecksumValid() {
			t.Fatalf("fragment %d: %d bytes on NIC %d", i, len(f.b), f.nic)
		}
	}
	if sender.counter("IpFragCreates") != uint64(len(frags)) || sender.counter("IpOutRequests") != 1 {
		t.Fatalf("sender counters %v", sender.l.Counters())
	}
	rng := rand.New(rand.NewSource(1))
	for _, tc := range []struct {
		name  string
		order func(n int) []int
	}{
		{"in order", func(n int) []int { return seq(n) }},
		{"reversed (last first)", func(n int) []int {
			o := seq(n)
			for i, j := 0, n-1; i < j; i, j = i+1, j-1 {
				o[i], o[j] = o[j], o[i]
			}
			return o
		}},
		{"shuffled", func(n int) []int { return rng.Perm(n) }},
		{"every fragment twice", func(n int) []int {
			var o []int
			for _, i := range rng.Perm(n) {
				o = append(o, i, i)
			}
			return o[:len(o)-1] // the datagram completes before the last copy
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rx := newPeer(t)
			order := tc.order(len(frags))
			for _, i := range order {
				rx.rcv(1, frags[i].b)
			}
			got := rx.rcvd[header.ProtoUDP]
			if len(got) != 1 || !bytes.Equal(got[0], data) {
				t.Fatalf("delivered %d datagrams (drops %v)", len(got), rx.drops.Snapshot())
			}
			if rx.counter("IpReasmOKs") != 1 || rx.counter("IpReasmReqds") != uint64(len(order)) {
				t.Fatalf("counters %v", rx.l.Counters())
			}
			if dups := uint64(len(order) - len(frags)); rx.drops.Get(DropFragDup) != dups {
				t.Fatalf("DUP_FRAG %d, want %d", rx.drops.Get(DropFragDup), dups)
			}
			if q, mem := rx.l.reasm.pending(); q != 0 || mem != 0 {
				t.Fatalf("left %d queues, %d bytes", q, mem)
			}
		})
	}
}

func seq(n int) []int {
	o := make([]int, n)
	for i := range o {
		o[i] = i
	}
	return o
}

func TestReassemblyRejects(t *testing.T) {
	data := udpish(64)
	for _, tc := range []struct {
		name    string
		frags   [][]byte
		counter string
		reason  buf.DropReason
	}{
		{"RFC 5722 spirit: overlap drops the datagram",
			[][]byte{fragOf(1, data, 0, 24, true), fragOf(1, data, 16, 40, true), fragOf(1, data, 40, 64, false)},
			"IpExtReasmOverlaps", DropFragOverlap},
		{"overlap with the last fragment",
			[][]byte{fragOf(1, data, 32, 64, false), fragOf(1, data, 0, 40, true), fragOf(1, data, 40, 64, false)},
			"IpExtReasmOverlaps", DropFragOverlap},
		{"RFC 791: non-final fragment not a multiple of 8",
			[][]byte{fragOf(1, data, 0, 20, true), fragOf(1, data, 20, 64, false)},
			"IpReasmFails", DropFragBad},
		{"two different last fragments",
			[][]byte{fragOf(1, data, 40, 64, false), fragOf(1, data, 32, 40, false), fragOf(1, data, 0, 32, true)},
			"IpReasmFails", DropFragBad},
		{"data past the end",
			[][]byte{fragOf(1, data, 16, 32, true), fragOf(1, data, 8, 16, false)},
			"IpReasmFails", DropFragBad},
		{"data past a known end",
			[][]byte{fragOf(1, data, 8, 16, false), fragOf(1, data, 16, 32, true)},
			"IpReasmFails", DropFragBad},
		{"ping of death: beyond 65535 bytes",
			[][]byte{pkt{src: "10.1.0.1", dst: "10.1.0.5", proto: header.ProtoUDP, id: 1, off: 65528, payload: udpish(16)}.bytes()},
			"IpReasmFails", DropFragTooFar},
		{"options in the first fragment push the datagram past 65535 bytes",
			[][]byte{
				pkt{src: "10.1.0.1", dst: "10.1.0.5", proto: header.ProtoUDP, id: 1, mf: true, opts: make([]byte, 40), payload: udpish(65472)}.bytes(),
				pkt{src: "10.1.0.1", dst: "10.1.0.5", proto: header.ProtoUDP, id: 1, off: 65472, payload: udpish(32)}.bytes(),
			},
			"IpReasmFails", DropFragTooFar},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rx := newPeer(t)
			for _, f := range tc.frags {
				rx.rcv(1, f)
			}
			if len(rx.rcvd[header.ProtoUDP]) != 0 {
				t.Fatal("bad datagram delivered")
			}
			if rx.counter(tc.counter) != 1 || rx.drops.Get(tc.reason) == 0 {
				t.Fatalf("%s %d, %v %d; counters %v", tc.counter, rx.counter(tc.counter), tc.reason, rx.drops.Get(tc.reason), rx.l.Counters())
			}
		})
	}
}

func TestReassemblyFragmentBound(t *testing.T) {
	rx := newPeer(t)
	data := udpish(8 * (maxFragsPerQueue + 10))
	for i := 0; i <= maxFragsPerQueue; i++ {
		rx.rcv(1, fragOf(3, data, 8*i, 8*i+8, true))
	}
	if rx.drops.Get(DropFragQueueFull) != uint64(maxFragsPerQueue+1) || rx.counter("IpReasmFails") != 1 {
		t.Fatalf("drops %v counters %v", rx.drops.Snapshot(), rx.l.Counters())
	}
	if q, _ := rx.l.reasm.pending(); q != 0 {
		t.Fatal("queue survived")
	}
}

// RFC 1122 §3.3.2 / RFC 792: an incomplete datagram is dropped after the
// reassembly timeout; when fragment zero arrived, the sender gets Time
// Exceeded code 1.
func TestReassemblyTimeout(t *testing.T) {
	data := udpish(64)
	for _, tc := range []struct {
		name     string
		frag     []byte
		wantICMP bool
	}{
		{"first fragment received → ICMP", fragOf(5, data, 0, 32, true), true},
		{"only a later fragment → silent", fragOf(5, data, 32, 64, false), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rx := newPeer(t)
			rx.rcv(1, tc.frag)
			rx.clk.Advance(DefaultReasmTimeout - time.Millisecond)
			if rx.counter("IpReasmTimeout") != 0 {
				t.Fatal("expired early")
			}
			rx.clk.Advance(time.Millisecond)
			if rx.counter("IpReasmTimeout") != 1 || rx.counter("IpReasmFails") != 1 || rx.drops.Get(DropFragTimeout) != 1 {
				t.Fatalf("counters %v drops %v", rx.l.Counters(), rx.drops.Snapshot())
			}
			out := rx.take()
			if !tc.wantICMP {
				if len(out) != 0 {
					t.Fatal("ICMP without fragment zero")
				}
				return
			}
			if len(out) != 1 {
				t.Fatalf("sent %d", len(out))
			}
			m := checkICMP(t, out[0], "10.1.0.5", "10.1.0.1", header.ICMPv4TimeExceeded, header.ICMPv4ReassemblyTimeout)
			if !bytes.Equal(m.Payload(), tc.frag) {
				t.Fatal("quote is not fragment zero")
			}
			// The late rest starts a new datagram, which times out too.
			rx.rcv(1, fragOf(5, data, 32, 64, false))
			if len(rx.rcvd[header.ProtoUDP]) != 0 {
				t.Fatal("delivered after timeout")
			}
			if q, mem := rx.l.reasm.pending(); q != 1 || mem == 0 {
				t.Fatalf("pending %d %d", q, mem)
			}
		})
	}
}

// The memory cap evicts the oldest incomplete datagrams.
func TestReassemblyMemLimit(t *testing.T) {
	const limit = 12000
	rx := newPeer(t, func(c *Config) { c.ReasmMemLimit = limit })
	data := udpish(2000)
	for id := uint16(1); id <= 10; id++ {
		rx.rcv(1, fragOf(id, data, 0, 1480, true))
		if _, mem := rx.l.reasm.pending(); mem > limit {
			t.Fatalf("holding %d bytes over a %d limit", mem, limit)
		}
	}
	fails := rx.counter("IpReasmFails")
	q, _ := rx.l.reasm.pending()
	if fails == 0 || int(fails)+q != 10 || rx.drops.Get(DropFragMem) != fails {
		t.Fatalf("evicted %d, %d queues left, drops %v", fails, q, rx.drops.Snapshot())
	}
	// The oldest went first: datagram 1 cannot complete, 10 can.
	rx.rcv(1, fragOf(1, data, 1480, 2000, false))
	rx.rcv(1, fragOf(10, data, 1480, 2000, false))
	if got := rx.rcvd[header.ProtoUDP]; len(got) != 1 || !bytes.Equal(got[0], data) {
		t.Fatalf("delivered %d", len(got))
	}
	if h := header.IPv4(rx.hdrs[0]); h.ID() != 10 {
		t.Fatalf("completed datagram %d, want 10", h.ID())
	}
}

// RFC 791 §3.1: options without the copy flag stay in the first fragment.
func TestFragmentOptions(t *testing.T) {
	tn := newTestNet(t)
	tn.l.SetRPFilter(1, false)
	// Record Route (7, not copied) and Router Alert (148, copied).
	opts := []byte{7, 7, 4, 0, 0, 0, 0, 148, 4, 0, 0, 0}
	in := pkt{src: "10.1.0.5", dst: "8.8.8.8", proto: header.ProtoUDP, opts: opts, payload: udpish(1500)}.bytes()
	tn.rcv(1, in)
	out := tn.take()
	if len(out) != 2 {
		t.Fatalf("%d fragments", len(out))
	}
	if !bytes.Equal(out[0].ip().Options(), opts) {
		t.Fatalf("first fragment options %x", out[0].ip().Options())
	}
	want := []byte{148, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if got := out[1].ip().Options(); !bytes.Equal(got, want) {
		t.Fatalf("later fragment options %x, want %x", got, want)
	}
	for _, f := range out {
		if _, err := header.CheckIPv4(f.b); err != nil || !f.ip().ChecksumValid() {
			t.Fatalf("bad fragment: %v", err)
		}
	}
}
