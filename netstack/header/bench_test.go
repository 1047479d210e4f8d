package header

import (
	"math/rand/v2"
	"testing"
)

func benchChecksum(b *testing.B, n int) {
	buf := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	b.SetBytes(int64(n))
	b.ReportAllocs()
	var sink uint16
	for b.Loop() {
		sink += Fold(Checksum(buf, 0))
	}
	_ = sink
}

func BenchmarkChecksum1500(b *testing.B) { benchChecksum(b, 1500) }
func BenchmarkChecksum64K(b *testing.B)  { benchChecksum(b, 65536) }

// BenchmarkChecksumReference1500 is the RFC 1071 word-at-a-time loop, for
// comparison with BenchmarkChecksum1500.
func BenchmarkChecksumReference1500(b *testing.B) {
	buf := make([]byte, 1500)
	b.SetBytes(1500)
	b.ReportAllocs()
	var sink uint16
	for b.Loop() {
		sink += refChecksum(buf)
	}
	_ = sink
}

func benchIPv4(b testing.TB) []byte {
	p := make([]byte, 24+40)
	IPv4(p).Encode(IPv4Fields{TotalLen: uint16(len(p)), ID: 9, DF: true, TTL: 64, Protocol: ProtoTCP,
		Src: ip4a, Dst: ip4b, Options: []byte{IPv4OptRouterAlert, 4, 0, 0}})
	return p
}

func BenchmarkIPv4Parse(b *testing.B) {
	p := benchIPv4(b)
	b.ReportAllocs()
	var sink int
	for b.Loop() {
		h, err := CheckIPv4(p)
		if err != nil {
			b.Fatal(err)
		}
		if h.Src() == h.Dst() || !h.ChecksumValid() {
			b.Fatal("bad parse")
		}
		sink += len(h.Payload()) + int(h.TTL()) + int(h.Protocol())
	}
	_ = sink
}

func BenchmarkIPv4Encode(b *testing.B) {
	p := make([]byte, 20)
	f := IPv4Fields{TotalLen: 1500, ID: 9, DF: true, TTL: 64, Protocol: ProtoTCP, Src: ip4a, Dst: ip4b}
	b.ReportAllocs()
	for b.Loop() {
		f.ID++
		IPv4(p).Encode(f)
	}
}

func BenchmarkTCPParseWithOptions(b *testing.B) {
	o := TCPOptions{HasMSS: true, MSS: 1460, SACKPermitted: true, HasTS: true, TSVal: 1, TSEcr: 2, HasWScale: true, WScale: 7}
	var opts [TCPMaxOptions]byte
	n := EncodeTCPOptions(opts[:], &o)
	p := make([]byte, TCPHeaderLen(n)+100)
	TCP(p).Encode(TCPFields{SrcPort: 1, DstPort: 2, Seq: 3, Flags: SYN, Window: 65535, Options: opts[:n]})
	b.ReportAllocs()
	var sink uint32
	for b.Loop() {
		h, err := CheckTCP(p)
		if err != nil {
			b.Fatal(err)
		}
		got, err := ParseTCPOptions(h.Options())
		if err != nil || !got.HasTS {
			b.Fatal("bad parse")
		}
		sink += got.TSVal + h.Seq() + uint32(len(h.Payload()))
	}
	_ = sink
}

func BenchmarkTCPOptionsEncode(b *testing.B) {
	o := TCPOptions{HasTS: true, TSVal: 1, TSEcr: 2, NumSACK: 3,
		SACKBlocks: [4]SACKBlock{{1, 2}, {3, 4}, {5, 6}}}
	var dst [TCPMaxOptions]byte
	b.ReportAllocs()
	for b.Loop() {
		o.TSVal++
		if EncodeTCPOptions(dst[:], &o) != 40 {
			b.Fatal("length")
		}
	}
}
