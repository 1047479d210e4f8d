package ipv6

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// FuzzRcv feeds arbitrary bytes to the receive path of a forwarding node
// with a reassembler, as a pod link would: it must never panic, and every
// packet must end delivered, forwarded, answered or dropped and counted
// (Ip6InReceives is the sum of what happened, checked loosely: a packet
// handed in always moves InReceives).
func FuzzRcv(f *testing.F) {
	data := udpish(3000)
	for _, b := range [][]byte{
		pkt{src: pod, dst: gw, proto: header.ProtoUDP, payload: udpish(20)}.bytes(),
		pkt{src: pod, dst: remote, proto: header.ProtoUDP, hop: 1, payload: udpish(20)}.bytes(),
		pkt{src: pod, dst: gw, proto: header.ProtoUDP, ext: []ext6{optsHdr(header.ProtoHopByHop, 0xde, 0), optsHdr(header.ProtoDestOpts)}, payload: udpish(8)}.bytes(),
		pkt{src: pod, dst: gw, proto: header.ProtoUDP, ext: []ext6{routingHdr(0, 1)}, payload: udpish(8)}.bytes(),
		pkt{src: pod, dst: gw, proto: header.ProtoUDP, ext: []ext6{fragHdr(1, 0, true)}, payload: data[:1448]}.bytes(),
		pkt{src: pod, dst: gw, proto: header.ProtoUDP, ext: []ext6{fragHdr(1, 1448, false)}, payload: data[1448:2000]}.bytes(),
		pkt{src: pod, dst: gw, proto: header.ProtoICMPv6, payload: icmp6(pod, gw, header.ICMPv6EchoRequest, 0, 1, data[:64])}.bytes(),
		pkt{src: pod, dst: gw, proto: header.ProtoICMPv6, payload: icmp6(pod, gw, header.ICMPv6PacketTooBig, 0, 1280,
			pkt{src: gw, dst: pod, proto: header.ProtoUDP, payload: udpish(8)}.bytes())}.bytes(),
	} {
		f.Add(b)
	}
	tn := newTestNet(f)
	tn.noCopy = true
	f.Fuzz(func(t *testing.T, b []byte) {
		before := tn.l.get(InReceives)
		tn.rcv(1, b)
		tn.clk.Advance(DefaultReasmTimeout) // expire whatever waits
		if tn.l.get(InReceives) != before+1 {
			t.Fatal("InReceives")
		}
	})
}
