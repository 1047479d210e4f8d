package header

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// refChecksum is RFC 1071 §4.1 transcribed: 16-bit big-endian words into a
// 32-bit accumulator, odd byte padded, carries folded at the end.
func refChecksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

func TestChecksumRFC1071Example(t *testing.T) {
	// RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Fold(Checksum(b, 0)); got != 0xddf2 {
		t.Fatalf("Fold(Checksum) = %#04x, want 0xddf2", got)
	}
	if got := ChecksumFinal(Checksum(b, 0)); got != ^uint16(0xddf2) {
		t.Fatalf("ChecksumFinal = %#04x", got)
	}
}

func TestChecksumKnownVectors(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want uint16 // folded, not complemented
	}{
		{"empty", nil, 0},
		{"one byte is the high half", []byte{0xab}, 0xab00},
		{"two bytes", []byte{0xab, 0xcd}, 0xabcd},
		{"odd tail", []byte{0x00, 0x01, 0x02}, 0x0201},
		{"carry", []byte{0xff, 0xff, 0x00, 0x01}, 0x0001},
		{"all ones stays -0", []byte{0xff, 0xff, 0xff, 0xff}, 0xffff},
		// A real IPv4 header (Wikipedia's example) with its checksum b861.
		{"ipv4 header", []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
			0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}, 0xffff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Fold(Checksum(tt.b, 0)); got != tt.want {
				t.Fatalf("got %#04x, want %#04x", got, tt.want)
			}
		})
	}
}

// Every length 0..1500 at random offsets (alignments) against the
// reference, with and without an initial sum.
func TestChecksumMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 1500+16)
	for l := 0; l <= 1500; l++ {
		for i := range big {
			big[i] = byte(rng.Uint32())
		}
		off := rng.IntN(16)
		b := big[off : off+l]
		want := refChecksum(b)
		if got := Fold(Checksum(b, 0)); got != want {
			t.Fatalf("len %d off %d: got %#04x, want %#04x", l, off, got, want)
		}
		init := rng.Uint32()
		wantInit := refChecksum(append(be32(init), b...))
		if got := Fold(Checksum(b, init)); got != wantInit {
			t.Fatalf("len %d off %d initial %#x: got %#04x, want %#04x", l, off, init, got, wantInit)
		}
	}
	// All 0xff: the accumulator carries on every add.
	ones := make([]byte, 4096)
	for i := range ones {
		ones[i] = 0xff
	}
	for l := 0; l <= len(ones); l += 7 {
		if got, want := Fold(Checksum(ones[:l], 0xffffffff)), refChecksum(append(be32(0xffffffff), ones[:l]...)); got != want {
			t.Fatalf("all ones len %d: got %#04x want %#04x", l, got, want)
		}
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func TestChecksumChainingEvenSplit(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 999)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for split := 0; split <= len(b); split += 2 {
		if got, want := Fold(Checksum(b[split:], Checksum(b[:split], 0))), Fold(Checksum(b, 0)); got != want {
			t.Fatalf("split %d: %#04x != %#04x", split, got, want)
		}
	}
}

func TestPseudoHeaderSum(t *testing.T) {
	src, dst := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("10.1.2.3")
	ph := []byte{192, 168, 0, 1, 10, 1, 2, 3, 0, 6, 0x05, 0xdc}
	if got, want := Fold(PseudoHeaderSum(ProtoTCP, src, dst, 1500)), refChecksum(ph); got != want {
		t.Fatalf("v4: %#04x, want %#04x", got, want)
	}
	s6, d6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fe80::ffff:1")
	a, b := s6.As16(), d6.As16()
	ph6 := append(append(a[:], b[:]...), 0, 1, 0, 2, 0, 0, 0, 17) // length 65538
	if got, want := Fold(PseudoHeaderSum(ProtoUDP, s6, d6, 65538)), refChecksum(ph6); got != want {
		t.Fatalf("v6: %#04x, want %#04x", got, want)
	}
}

// RFC 1624 §3: m = 0x5555 -> 0x3285 with the rest summing to 0xCD7A: the
// full recomputation is 0x0000, which eqn. 3 gives and RFC 1141's
// equation (0xFFFF) does not.
func TestChecksumUpdateRFC1624Corner(t *testing.T) {
	hc := ^Fold(0xcd7a + 0x5555)
	if hc != 0xdd2f {
		t.Fatalf("HC = %#04x, want 0xdd2f", hc)
	}
	if got := ChecksumUpdate16(hc, 0x5555, 0x3285); got != 0x0000 {
		t.Fatalf("eqn 3 = %#04x, want 0x0000", got)
	}
	full := ^Fold(0xcd7a + 0x3285)
	if full != 0 {
		t.Fatalf("recomputation = %#04x", full)
	}
}

// Incremental updates equal recomputation over random headers, fields and
// values, including values that drive the sum to 0xffff.
func TestChecksumUpdateEqualsRecompute(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	b := make([]byte, 40)
	corners := 0
	for i := 0; i < 20000; i++ {
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		b[0] |= 1 // never all-zero data: 0x0000 vs 0xffff is then ambiguous
		binary.BigEndian.PutUint16(b[10:], 0)
		binary.BigEndian.PutUint16(b[10:], ChecksumFinal(Checksum(b, 0)))
		csum := binary.BigEndian.Uint16(b[10:])
		w := 2 * (rng.IntN(19) + 1) // any word but 0 (kept non-zero) and 10
		if w == 10 {
			w = 12
		}
		old := binary.BigEndian.Uint16(b[w:])
		nv := uint16(rng.Uint32())
		switch i % 4 {
		case 1:
			nv = old // no change
		case 2:
			// RFC 1624 §3's corner: choose the new word so that the data
			// sums to 0xffff and the recomputed checksum is 0x0000.
			c := append([]byte(nil), b...)
			binary.BigEndian.PutUint16(c[10:], 0)
			binary.BigEndian.PutUint16(c[w:], 0)
			nv = ^Fold(Checksum(c, 0))
			corners++
		}
		binary.BigEndian.PutUint16(b[w:], nv)
		got := ChecksumUpdate16(csum, old, nv)
		binary.BigEndian.PutUint16(b[10:], 0)
		want := ChecksumFinal(Checksum(b, 0))
		if got != want {
			t.Fatalf("iter %d: incremental %#04x, full %#04x", i, got, want)
		}
		if i%4 == 2 && want != 0 {
			t.Fatalf("iter %d: corner case did not reach checksum 0 (%#04x)", i, want)
		}
	}
	if corners == 0 {
		t.Fatal("no corner cases ran")
	}
}

func TestChecksumUpdate32AndAddr(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	b := make([]byte, 20)
	for i := 0; i < 5000; i++ {
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		b[0] |= 0x40
		binary.BigEndian.PutUint16(b[10:], 0)
		csum := ChecksumFinal(Checksum(b, 0))
		old := netip.AddrFrom4([4]byte(b[12:16]))
		nv := netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
		a := nv.As4()
		copy(b[12:], a[:])
		want := ChecksumFinal(Checksum(b, 0))
		if got := ChecksumUpdateAddr(csum, old, nv); got != want {
			t.Fatalf("addr: %#04x want %#04x", got, want)
		}
		o4 := old.As4()
		if got := ChecksumUpdate32(csum, binary.BigEndian.Uint32(o4[:]), binary.BigEndian.Uint32(a[:])); got != want {
			t.Fatalf("32: %#04x want %#04x", got, want)
		}
	}
	// IPv6 pseudo-header update.
	o6, n6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8:ffff::9")
	payload := []byte{1, 2, 3, 4, 5}
	c := ChecksumFinal(Checksum(payload, PseudoHeaderSum(ProtoUDP, o6, o6, 5)))
	want := ChecksumFinal(Checksum(payload, PseudoHeaderSum(ProtoUDP, n6, o6, 5)))
	if got := ChecksumUpdateAddr(c, o6, n6); got != want {
		t.Fatalf("v6: %#04x want %#04x", got, want)
	}
}
