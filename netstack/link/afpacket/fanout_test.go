package afpacket

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// udpFrame is an Ethernet/IPv4/UDP frame of flow (src port) carrying seq.
func udpFrame(dst, src [6]byte, port uint16, seq uint32) *buf.SKB {
	const payload = 8
	s := buf.Alloc(buf.MaxHeadroom, 14+20+8+payload)
	p := s.Put(14 + 20 + 8 + payload)
	copy(p[0:], dst[:])
	copy(p[6:], src[:])
	binary.BigEndian.PutUint16(p[12:], uint16(header.EtherTypeIPv4))
	sa, da := netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("10.9.0.2")
	header.IPv4(p[14:]).Encode(header.IPv4Fields{TotalLen: 20 + 8 + payload, TTL: 64, Protocol: header.ProtoUDP, Src: sa, Dst: da})
	u := header.UDP(p[34:])
	u.Encode(header.UDPFields{SrcPort: port, DstPort: 9, Length: 8 + payload})
	binary.BigEndian.PutUint32(p[42:], uint32(port))
	binary.BigEndian.PutUint32(p[46:], seq)
	u.SetChecksum(sa, da)
	return s
}

// PACKET_FANOUT_HASH (packet(7)): with Queues 2 each frame reaches
// exactly one queue, every frame of a flow the same one and in order, and
// flows spread over both.
func TestFanoutQueues(t *testing.T) {
	needRoot(t)
	ns, path := newNetNS(t, "f")
	devA, devB := vethPair(t, ns, ns)
	a := open(t, Config{NetNS: path, Name: devA, NoVnetHdr: true})
	b := open(t, Config{NetNS: path, Name: devB, Queues: 2, NoVnetHdr: true})
	if b.RxQueues() != 2 {
		t.Fatalf("RxQueues %d", b.RxQueues())
	}
	const flows, perFlow = 32, 5
	var out []*buf.SKB
	for seq := uint32(0); seq < perFlow; seq++ {
		for f := uint16(0); f < flows; f++ {
			out = append(out, udpFrame(b.MAC(), a.MAC(), 40000+f, seq))
		}
	}
	if n, err := a.WriteBatch(out); n != len(out) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	queueOf := map[uint32]int{}
	next := map[uint32]uint32{}
	got, perQueue := 0, [2]int{}
	deadline := time.Now().Add(5 * time.Second)
	for got < flows*perFlow && time.Now().Before(deadline) {
		for q := 0; q < 2; q++ {
			b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			pkts := make([]*buf.SKB, 16)
			n, _ := b.ReadQueue(q, pkts)
			for _, s := range pkts[:n] {
				f := s.Bytes()
				if binary.BigEndian.Uint16(f[12:]) == uint16(header.EtherTypeIPv4) && len(f) >= 50 && f[14+9] == byte(header.ProtoUDP) {
					flow, seq := binary.BigEndian.Uint32(f[42:]), binary.BigEndian.Uint32(f[46:])
					if fq, ok := queueOf[flow]; ok && fq != q {
						t.Fatalf("flow %d on queues %d and %d", flow, fq, q)
					}
					queueOf[flow] = q
					if seq != next[flow] {
						t.Fatalf("flow %d: frame %d, want %d", flow, seq, next[flow])
					}
					next[flow]++
					got++
					perQueue[q]++
				}
				s.Consume()
			}
		}
	}
	if got != flows*perFlow {
		t.Fatalf("received %d of %d frames", got, flows*perFlow)
	}
	if perQueue[0] == 0 || perQueue[1] == 0 {
		t.Fatalf("flows not spread: %v", perQueue)
	}
	t.Logf("frames per queue %v", perQueue)
}
