package ipv6

import (
	"bytes"
	"math/rand"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// frag builds one fragment gw → pod of a UDP packet whose fragmentable
// part is data, identification id.
func fragOf(id uint32, data []byte, off, end int, more bool) []byte {
	return pkt{src: gw, dst: pod, proto: header.ProtoUDP, ext: []ext6{fragHdr(id, off, more)}, payload: data[off:end]}.bytes()
}

func seq(n int) []int {
	o := make([]int, n)
	for i := range o {
		o[i] = i
	}
	return o
}

// RFC 8200 §4.5: a 3000-byte packet over a 1500-byte link leaves as
// fragments of the unfragmentable part, a Fragment header and 8-octet
// multiples, and reassembles to the same bytes in any order, duplicates
// dropped alone.
func TestFragmentReassembleRoundTrip(t *testing.T) {
	sender := newTestNet(t)
	data := udpish(3000)
	if err := sender.l.QueueXmit(buf.FromBytes(buf.MaxHeadroom, data), flowTo(pod)); err != nil {
		t.Fatal(err)
	}
	frags := sender.take()
	if len(frags) != 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	var id uint32
	for i, f := range frags {
		h := f.ip()
		if len(f.b) > 1500 || f.nic != 1 || h.NextHeader() != header.ProtoFragment || h.TotalLen() != len(f.b) {
			t.Fatalf("fragment %d: %d bytes, nh %d", i, len(f.b), h.NextHeader())
		}
		fh := header.IPv6Fragment(f.b[header.IPv6MinSize:])
		if fh.NextHeader() != header.ProtoUDP || fh.FragOffset() != i*1448 || fh.More() != (i < 2) {
			t.Fatalf("fragment %d: %+v", i, fh.Fields())
		}
		if i == 0 {
			id = fh.ID()
		} else if fh.ID() != id {
			t.Fatal("identifications differ")
		}
	}
	if sender.counter("Ip6FragCreates") != 3 || sender.counter("Ip6FragOKs") != 1 {
		t.Fatal("sender counters")
	}
	rng := rand.New(rand.NewSource(1))
	for _, tc := range []struct {
		name  string
		order []int
	}{
		{"in order", seq(3)},
		{"reversed", []int{2, 1, 0}},
		{"shuffled with duplicates", func() []int {
			o := append(seq(3), 1, 2)
			rng.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
			return o
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestNet(t, withPeer)
			for _, i := range tc.order {
				r.rcv(1, frags[i].b)
			}
			got := r.rcvd[header.ProtoUDP]
			if len(got) != 1 || !bytes.Equal(got[0], data) {
				t.Fatalf("delivered %d packets", len(got))
			}
			if h := header.IPv6(r.hdrs[0]); h.PayloadLen() != 3000 || h.NextHeader() != header.ProtoUDP {
				t.Fatalf("reassembled header: payload %d nh %d", h.PayloadLen(), h.NextHeader())
			}
			if r.counter("Ip6ReasmOKs") != 1 || r.counter("Ip6ReasmReqds") != uint64(len(tc.order)) {
				t.Fatalf("counters %v", r.l.Counters())
			}
			// A duplicate arriving after completion opens a new queue
			// that times out.
			r.clk.Advance(DefaultReasmTimeout)
			if q, mem := r.l.reasm.pending(); q != 0 || mem != 0 {
				t.Fatalf("left %d queues, %d bytes", q, mem)
			}
		})
	}
}

// The unfragmentable part (RFC 8200 §4.5): Hop-by-Hop, Routing, and
// Destination Options before a Routing header go into every fragment; the
// rest is fragmented.
func TestUnfragmentablePart(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ext        []ext6
		len, nhoff int
	}{
		{"none", nil, 40, 6},
		{"Hop-by-Hop", []ext6{optsHdr(header.ProtoHopByHop)}, 48, 40},
		{"Hop-by-Hop, Routing", []ext6{optsHdr(header.ProtoHopByHop), routingHdr(4, 0)}, 72, 48},
		{"DestOpts before Routing", []ext6{optsHdr(header.ProtoDestOpts), routingHdr(4, 0)}, 72, 48},
		{"DestOpts for the destination only", []ext6{optsHdr(header.ProtoHopByHop), optsHdr(header.ProtoDestOpts)}, 48, 40},
	} {
		b := pkt{src: gw, dst: pod, proto: header.ProtoUDP, ext: tc.ext, payload: udpish(16)}.bytes()
		if n, nh := unfragmentablePart(b); n != tc.len || nh != tc.nhoff {
			t.Errorf("%s: %d, %d; want %d, %d", tc.name, n, nh, tc.len, tc.nhoff)
		}
	}
	// Fragmenting a packet with Hop-by-Hop keeps it in each fragment.
	sender := newTestNet(t)
	b := pkt{src: gw, dst: pod, proto: header.ProtoUDP, ext: []ext6{optsHdr(header.ProtoHopByHop)}, payload: udpish(2000)}.bytes()
	skb := buf.FromBytes(buf.MaxHeadroom, b)
	var frags [][]byte
	if err := sender.l.fragment(skb, 1280, func(f *buf.SKB) { frags = append(frags, bytes.Clone(f.Bytes())); f.Consume() }); err != nil {
		t.Fatal(err)
	}
	r := newTestNet(t, withPeer)
	for _, f := range frags {
		if f[6] != header.ProtoHopByHop || f[40] != header.ProtoFragment || len(f) > 1280 {
			t.Fatalf("fragment layout % x", f[:50])
		}
		r.rcv(1, f)
	}
	if got := r.rcvd[header.ProtoUDP]; len(got) != 1 || !bytes.Equal(got[0], b[48:]) {
		t.Fatal("reassembly with Hop-by-Hop")
	}
}

// RFC 5722 §4: overlapping fragments discard the whole packet, and "any
// constituent fragments, including those not yet received": late ones
// are swallowed until the timeout, after which the identification is
// fresh again. No ICMPv6 is sent.
func TestReassemblyOverlapDiscardsPacket(t *testing.T) {
	r := newTestNet(t, withPeer)
	data := udpish(3000)
	r.rcv(1, fragOf(7, data, 0, 1448, true))
	r.rcv(1, fragOf(7, data, 1440, 2888, true)) // overlaps [1440, 1448)
	if r.counter("Ip6ReasmOverlaps") != 1 || r.counter("Ip6ReasmFails") != 1 {
		t.Fatalf("counters %v", r.l.Counters())
	}
	r.rcv(1, fragOf(7, data, 1448, 2896, true))
	r.rcv(1, fragOf(7, data, 2896, 3000, false))
	if len(r.rcvd[header.ProtoUDP]) != 0 || len(r.take()) != 0 {
		t.Fatal("delivered or answered after an overlap")
	}
	if r.dropped(DropFragOverlap) != 4 {
		t.Fatalf("overlap drops %d", r.dropped(DropFragOverlap))
	}
	if _, mem := r.l.reasm.pending(); mem != 0 {
		t.Fatalf("a discarded packet holds %d bytes", mem)
	}
	r.clk.Advance(DefaultReasmTimeout)
	if len(r.take()) != 0 {
		t.Fatal("Time Exceeded for a discarded packet")
	}
	for _, f := range [][2]int{{0, 1448}, {1448, 2896}, {2896, 3000}} {
		r.rcv(1, fragOf(7, data, f[0], f[1], f[1] < 3000))
	}
	if got := r.rcvd[header.ProtoUDP]; len(got) != 1 || !bytes.Equal(got[0], data) {
		t.Fatal("a fresh packet after the tombstone expired")
	}
}

// RFC 8200 §4.5's Parameter Problems for bad fragments: a non-last
// fragment whose length is not a multiple of 8 (pointer: Payload Length),
// one that would make the payload exceed 65535 octets (pointer: Fragment
// Offset), and RFC 7112 §5's first fragment without the whole header
// chain (code 3, pointer 0).
func TestFragmentParameterProblems(t *testing.T) {
	data := udpish(70000)
	destOptsOnly := pkt{src: gw, dst: pod, proto: header.ProtoDestOpts,
		ext: []ext6{fragHdr(3, 0, true)}, payload: []byte{header.ProtoUDP, 0, 0, 0, 0, 0, 0, 0}}.bytes()
	destOptsHead := pkt{src: gw, dst: pod, proto: header.ProtoDestOpts,
		ext: []ext6{fragHdr(9, 0, true)}, payload: []byte{header.ProtoUDP, 1, 0, 0, 0, 0, 0, 0}}.bytes()
	for _, tc := range []struct {
		name string
		b    []byte
		code uint8
		ptr  uint32
	}{
		{"length not a multiple of 8", fragOf(1, data, 0, 1001, true), header.ICMPv6ErroneousHeader, header.IPv6PayloadLenOffset},
		{"payload past 65535", fragOf(2, data, 65000, 65536, true), header.ICMPv6ErroneousHeader, 42},
		{"first fragment without the UDP header", destOptsOnly, header.ICMPv6IncompleteHdrChain, 0},
		{"first fragment with a cut Destination Options header", destOptsHead, header.ICMPv6IncompleteHdrChain, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestNet(t, withPeer)
			r.rcv(1, tc.b)
			out := r.take()
			if len(out) != 1 {
				t.Fatalf("%d sent", len(out))
			}
			m := checkICMP(t, out[0], pod, gw, header.ICMPv6ParamProblem, tc.code)
			if m.Pointer() != tc.ptr {
				t.Fatalf("pointer %d, want %d", m.Pointer(), tc.ptr)
			}
			if r.counter("Ip6ReasmFails") != 1 || len(r.rcvd[header.ProtoUDP]) != 0 {
				t.Fatal("counters")
			}
		})
	}
}

// RFC 8200 §4.5: reassembly is abandoned 60 s after the first-arriving
// fragment; Time Exceeded code 1 goes to the source only if the
// offset-zero fragment arrived.
func TestReassemblyTimeout(t *testing.T) {
	data := udpish(3000)
	r := newTestNet(t, withPeer)
	r.rcv(1, fragOf(5, data, 0, 1448, true))
	r.clk.Advance(30 * time.Second)
	r.rcv(1, fragOf(5, data, 2896, 3000, false))
	r.clk.Advance(30*time.Second - time.Millisecond)
	if len(r.take()) != 0 || r.counter("Ip6ReasmTimeout") != 0 {
		t.Fatal("expired early")
	}
	r.clk.Advance(time.Millisecond)
	out := r.take()
	if len(out) != 1 {
		t.Fatalf("%d sent", len(out))
	}
	m := checkICMP(t, out[0], pod, gw, header.ICMPv6TimeExceeded, header.ICMPv6ReassemblyTimeout)
	if first := fragOf(5, data, 0, 1448, true); !bytes.Equal(m.Payload(), first[:1280-48]) {
		t.Fatal("the error quotes the first fragment, up to 1280 bytes (RFC 4443 §2.4(c))")
	}
	if r.counter("Ip6ReasmTimeout") != 1 || r.counter("Ip6ReasmFails") != 1 || r.dropped(DropFragTimeout) != 2 {
		t.Fatalf("counters %v", r.l.Counters())
	}
	// Without the first fragment: no error.
	r.rcv(1, fragOf(6, data, 1448, 2896, true))
	r.clk.Advance(DefaultReasmTimeout)
	if len(r.take()) != 0 || r.counter("Ip6ReasmTimeout") != 2 {
		t.Fatal("Time Exceeded without the first fragment")
	}
	// RFC 6946: an atomic fragment is processed at once.
	r.rcv(1, pkt{src: gw, dst: pod, proto: header.ProtoUDP, ext: []ext6{fragHdr(9, 0, false)}, payload: data[:100]}.bytes())
	if got := r.rcvd[header.ProtoUDP]; len(got) != 1 || !bytes.Equal(got[0], data[:100]) {
		t.Fatal("atomic fragment")
	}
}

// Bounds: memory (the oldest packets are evicted, each a ReasmFails) and
// the number of packets under reassembly.
func TestReassemblyBounds(t *testing.T) {
	data := udpish(3000)
	r := newTestNet(t, withPeer, func(c *Config) { c.ReasmMemLimit = 20000 })
	for id := uint32(1); id <= 10; id++ {
		r.rcv(1, fragOf(id, data, 0, 1448, true))
	}
	q, mem := r.l.reasm.pending()
	if mem > 20000 || q >= 10 || r.counter("Ip6ReasmFails") != uint64(10-q) || r.dropped(DropFragMem) == 0 {
		t.Fatalf("%d queues, %d bytes, fails %d", q, mem, r.counter("Ip6ReasmFails"))
	}
	n := newTestNet(t, withPeer)
	for id := uint32(1); id <= maxFragQueues+1; id++ {
		n.rcv(1, fragOf(id, data[:64], 0, 16, true))
	}
	if q, _ := n.l.reasm.pending(); q != maxFragQueues || n.counter("Ip6ReasmFails") != 1 || n.dropped(DropFragQueueFull) != 1 {
		t.Fatalf("%d queues, fails %d", q, n.counter("Ip6ReasmFails"))
	}
}
