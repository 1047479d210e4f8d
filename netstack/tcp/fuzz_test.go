package tcp

import (
	"encoding/binary"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// seedSegment encodes a template as TCP bytes (checksum left to the
// fuzz body).
func seedSegment(m tmpl) []byte {
	var ob [40]byte
	ol := header.EncodeTCPOptions(ob[:], &m.opts)
	hl := header.TCPHeaderLen(ol)
	b := make([]byte, hl+len(m.data))
	header.TCP(b).Encode(header.TCPFields{SrcPort: 40000, DstPort: 80, Seq: m.seq, Ack: m.ack, Flags: m.flags,
		Window: m.wnd, Options: ob[:ol]})
	copy(b[hl:], m.data)
	return b
}

// Any segment, however malformed, to a listener or an established
// connection is dropped and counted or answered; never a panic. The
// ports are forced onto the sockets' so the fuzzer reaches the state
// machine; the checksum is fixed unless keepCsum.
func FuzzSegment(f *testing.F) {
	p := &peer{ISS: 1000}
	all := header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7, SACKPermitted: true, HasTS: true, TSVal: 1}
	for _, m := range []tmpl{
		p.Seg().Flags(SYN).Seq(1000).Opts(all),
		p.Seg().Flags(ACK).Seq(1001).Ack(1),
		p.Seg().Flags(ACK | PSH).Seq(1001).Ack(1).Data([]byte("hello")),
		p.Seg().Flags(FIN | ACK).Seq(1001).Ack(1),
		p.Seg().Flags(RST).Seq(1001),
		p.Seg().Flags(ACK).Seq(1001).Ack(1).Opts(header.TCPOptions{NumSACK: 2, SACKBlocks: [4]header.SACKBlock{{Start: 1, End: 100}, {Start: 200, End: 300}}}),
		p.Seg().Flags(SYN | FIN | RST | PSH | ACK | header.URG).Seq(0xffffffff).Ack(0xffffffff),
	} {
		b := seedSegment(m)
		f.Add(b, false, false)
		f.Add(b, true, false)
	}
	f.Add([]byte{0, 1, 2}, true, true)
	f.Fuzz(func(t *testing.T, b []byte, established, keepCsum bool) {
		c := newPeer(t, Config{})
		var s *Sock
		if established {
			s = c.establishPassive(all)
			_, _ = s.Write([]byte("some data"))
			c.Out()
		} else {
			c.listen()
		}
		if len(b) >= 4 {
			binary.BigEndian.PutUint16(b[0:], c.raddr.Port())
			binary.BigEndian.PutUint16(b[2:], c.laddr.Port())
		}
		if len(b) >= header.TCPMinSize && !keepCsum {
			header.TCP(b).SetChecksum(c.raddr.Addr(), c.laddr.Addr())
		}
		skb := buf.Alloc(buf.MaxHeadroom, len(b))
		copy(skb.Put(len(b)), b)
		ip := header.IPv4(skb.Push(header.IPv4MinSize))
		ip.Encode(header.IPv4Fields{TotalLen: uint16(header.IPv4MinSize + len(b)), TTL: 64,
			Protocol: header.ProtoTCP, Src: c.raddr.Addr(), Dst: c.laddr.Addr()})
		skb.SetNetworkHeader()
		skb.Pull(header.IPv4MinSize)
		skb.SetTransportHeader()
		c.p.V4Rcv(skb)
		c.clk.Advance(200 * 1e9) // run every timer the segment armed
		for _, o := range c.Out() {
			_ = o
		}
		if s != nil {
			_, _ = s.Read(make([]byte, 64))
			_ = s.Close()
			c.clk.Advance(200 * 1e9)
		}
	})
}
