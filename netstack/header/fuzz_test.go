package header_test

import (
	"bytes"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// Fuzz targets, one per parser (STYLE §5). Each is seeded from the
// stacktest builders; `go test` runs the seeds, `go test -fuzz` explores.
// The property: once Check succeeds no accessor panics, and Encode of the
// decoded fields reproduces the header bytes it models.

var (
	macA = header.MAC{2, 0, 0, 0, 0, 0xa}
	macB = header.MAC{2, 0, 0, 0, 0, 0xb}
)

func seedPackets() [][]byte {
	return [][]byte{
		stacktest.TCPv4SYN().Bytes(),
		stacktest.TCPv4SYN().Flags(header.ACK).SACK(header.SACKBlock{Start: 1, End: 2}).Payload([]byte("x")).Bytes(),
		stacktest.UDPv4().Bytes(),
		stacktest.UDPv4().IPOptions([]byte{header.IPv4OptRouterAlert, 4, 0, 0}).Bytes(),
		stacktest.ICMPEcho(1, 2).Bytes(),
		stacktest.UDPv4().Fragment(7, 8, true).Bytes(),
		stacktest.IPv4("10.0.0.1", "10.0.0.2").ICMP(header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded,
			header.FragNeededRest(1400)).Payload(stacktest.UDPv4().Bytes()[:28]).Bytes(),
	}
}

func FuzzEthernet(f *testing.F) {
	f.Add(stacktest.UDPv4().Eth(macA, macB).Bytes())
	f.Add(stacktest.ARPRequest(macA, "10.0.0.1", "10.0.0.2").Bytes())
	f.Add(stacktest.UDPv4().Eth(macA, macB).EtherType(header.EtherTypeVLAN).Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := header.CheckEthernet(b)
		if err != nil {
			return
		}
		_ = e.Payload()
		_ = e.Dst().String() + e.Src().String()
		out := make([]byte, header.EthernetMinSize)
		header.Ethernet(out).Encode(e.Fields())
		if !bytes.Equal(out, b[:header.EthernetMinSize]) {
			t.Fatalf("re-encode % x != % x", out, b[:header.EthernetMinSize])
		}
	})
}

func FuzzARP(f *testing.F) {
	f.Add(stacktest.ARPRequest(macA, "10.0.0.1", "10.0.0.2").Bytes()[header.EthernetMinSize:])
	f.Add(stacktest.ARPReply(macA, "10.0.0.1", macB, "10.0.0.2").Bytes()[header.EthernetMinSize:])
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := header.CheckARP(b)
		if err != nil {
			return
		}
		out := make([]byte, header.ARPSize)
		header.ARP(out).Encode(a.Fields())
		if !bytes.Equal(out, b[:header.ARPSize]) {
			t.Fatalf("re-encode % x != % x", out, b[:header.ARPSize])
		}
	})
}

func FuzzIPv4(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := header.CheckIPv4(b)
		if err != nil {
			return
		}
		_ = h.Payload()
		_, _, _, _ = h.TOS(), h.Flags(), h.FragOffset(), h.IsFragment()
		if _, err := header.ParseIPv4Options(h.Options()); err != nil {
			t.Fatalf("Check passed but options fail: %v", err)
		}
		hl := h.HeaderLen()
		out := make([]byte, hl)
		header.IPv4(out).Encode(h.Fields())
		want := bytes.Clone(b[:hl])
		want[6] &^= 0x80          // the reserved flag is not in Fields
		want[10], want[11] = 0, 0 // Encode computes the checksum
		out[10], out[11] = 0, 0
		if !bytes.Equal(out, want) {
			t.Fatalf("re-encode\n% x\n% x", out, want)
		}
		// Incremental setters keep a valid checksum valid.
		c := header.IPv4(bytes.Clone(b))
		valid := c.ChecksumValid()
		c.SetTTL(c.TTL() - 1)
		c.SetSrc(c.Dst())
		if valid && !c.ChecksumValid() {
			t.Fatal("setter broke a valid checksum")
		}
	})
}

func FuzzICMPv4(f *testing.F) {
	for _, p := range seedPackets() {
		if h, err := header.CheckIPv4(p); err == nil && h.Protocol() == header.ProtoICMP {
			f.Add([]byte(h.Payload()))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := header.CheckICMPv4(b)
		if err != nil {
			return
		}
		_, _, _, _ = h.ID(), h.Seq(), h.MTU(), h.Pointer()
		_, _, _ = h.Gateway(), h.IsError(), h.Payload()
		valid := h.ChecksumValid()
		out := header.ICMPv4(bytes.Clone(b))
		out.Encode(h.Fields())
		out.SetChecksum()
		if !out.ChecksumValid() {
			t.Fatal("SetChecksum did not produce a valid checksum")
		}
		// A valid stored checksum is the computed one, or its other
		// one's complement zero (0x0000 / 0xffff).
		zero := func(c uint16) bool { return c == 0 || c == 0xffff }
		if valid && out.Checksum() != h.Checksum() && !(zero(out.Checksum()) && zero(h.Checksum())) {
			t.Fatalf("valid checksum %#04x re-encoded as %#04x", h.Checksum(), out.Checksum())
		}
		if !bytes.Equal(out[:2], b[:2]) || !bytes.Equal(out[4:], b[4:]) {
			t.Fatal("re-encode changed bytes")
		}
	})
}

func FuzzUDP(f *testing.F) {
	for _, p := range seedPackets() {
		if h, err := header.CheckIPv4(p); err == nil && h.Protocol() == header.ProtoUDP {
			f.Add([]byte(h.Payload()))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := header.CheckUDP(b)
		if err != nil {
			return
		}
		if len(h.Payload()) != h.Length()-header.UDPSize {
			t.Fatal("payload length")
		}
		src, dst := stacktest.DefaultSrcIP, stacktest.DefaultDstIP
		_ = h.ChecksumValid(src, dst)
		out := make([]byte, header.UDPSize)
		header.UDP(out).Encode(h.Fields())
		if !bytes.Equal(out, b[:header.UDPSize]) {
			t.Fatal("re-encode differs")
		}
		c := header.UDP(bytes.Clone(b))
		c.SetChecksum(src, dst)
		if !c.ChecksumValid(src, dst) {
			t.Fatal("SetChecksum invalid")
		}
	})
}

func FuzzTCP(f *testing.F) {
	for _, p := range seedPackets() {
		if h, err := header.CheckIPv4(p); err == nil && h.Protocol() == header.ProtoTCP {
			f.Add([]byte(h.Payload()))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := header.CheckTCP(b)
		if err != nil {
			return
		}
		_, _ = h.Flags().String(), h.Payload()
		if _, err := header.ParseTCPOptions(h.Options()); err != nil {
			t.Fatalf("Check passed but options fail: %v", err)
		}
		doff := h.DataOffset()
		out := make([]byte, doff)
		header.TCP(out).Encode(h.Fields())
		want := bytes.Clone(b[:doff])
		want[12] &^= 0x0f // reserved bits and NS are not in Fields
		want[16], want[17] = 0, 0
		if !bytes.Equal(out, want) {
			t.Fatalf("re-encode\n% x\n% x", out, want)
		}
		src, dst := stacktest.DefaultSrcIP, stacktest.DefaultDstIP
		c := header.TCP(bytes.Clone(b))
		c.SetChecksum(src, dst)
		c.SetDstPort(c.SrcPort() + 1)
		if !c.ChecksumValid(src, dst) {
			t.Fatal("checksum invalid after SetChecksum + SetDstPort")
		}
	})
}

func FuzzTCPOptions(f *testing.F) {
	for _, p := range seedPackets() {
		if h, err := header.CheckIPv4(p); err == nil && h.Protocol() == header.ProtoTCP {
			if th, err := header.CheckTCP(h.Payload()); err == nil {
				f.Add([]byte(th.Options()))
			}
		}
	}
	f.Add([]byte{1, 1, 5, 34, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0, 8})
	f.Add([]byte{3, 3, 200, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := header.ParseTCPOptions(b)
		if err != nil {
			return
		}
		if o.NumSACK < 0 || o.NumSACK > header.TCPMaxSACKBlocks || o.WScale > header.TCPMaxWScale {
			t.Fatalf("out of range: %+v", o)
		}
		var dst [header.TCPMaxOptions]byte
		n := header.EncodeTCPOptions(dst[:], &o)
		if n%4 != 0 || n > header.TCPMaxOptions {
			t.Fatalf("encoded length %d", n)
		}
		again, err := header.ParseTCPOptions(dst[:n])
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		// SACK blocks that did not fit beside the other options are
		// dropped from the end; everything else round-trips.
		if again.NumSACK > o.NumSACK {
			t.Fatal("blocks invented")
		}
		for i := 0; i < again.NumSACK; i++ {
			if again.SACKBlocks[i] != o.SACKBlocks[i] {
				t.Fatal("block changed")
			}
		}
		again.NumSACK, again.SACKBlocks = o.NumSACK, o.SACKBlocks
		if again != o {
			t.Fatalf("round trip\n%+v\n%+v", again, o)
		}
	})
}
