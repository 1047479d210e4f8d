package tcp

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// RFC 1122 §4.2.3.6 / RFC 9293 §3.8.4: keepalive probes (SEG.SEQ =
// SND.NXT-1, no data) after the idle time, every interval; an answer
// restarts the idle time; count unanswered probes end the connection.
func TestKeepalive(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{})
	s.SetKeepAlive(true, 10*time.Second, time.Second, 3)
	t0 := c.now()
	p := c.ExpectAt(t0+10*time.Second, "first probe")
	if p.seq != c.IRS || len(p.data) != 0 || p.flags != ACK {
		t.Fatalf("probe %v", p)
	}
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
	t1 := c.now()
	c.ExpectAt(t1+10*time.Second, "probe after the idle time again")
	c.ExpectAt(t1+11*time.Second, "second probe")
	c.ExpectAt(t1+12*time.Second, "third probe")
	if r := c.ExpectAt(t1+13*time.Second, "RST"); r.flags&RST == 0 {
		t.Fatalf("got %v", r)
	}
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("read %v", err)
	}
}

// RFC 1191 §6.1: ICMP fragmentation needed lowers the MSS to fit the
// next-hop MTU and the data is resent in smaller segments.
func TestPMTUFromFragNeeded(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	s := c.establishPassive(header.TCPOptions{HasMSS: true, MSS: 1460})
	s.Write(make([]byte, 3000))
	sent := c.ip.take()
	if len(sent) == 0 {
		t.Fatal("nothing sent")
	}
	first := sent[0]
	// The ICMP error quotes our IPv4 header and 8 bytes of TCP.
	quote := first.NetworkHeader()[:header.IPv4MinSize+8]
	q := buf.FromBytes(0, quote)
	c.p.V4Err(q, header.ICMPError{Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4FragNeeded, Errno: syscall.EMSGSIZE, Info: 1000})
	for _, skb := range sent {
		skb.Consume()
	}
	out := c.Out()
	if len(out) == 0 || len(out[0].data) > 1000-40 {
		t.Fatalf("after frag needed (MTU 1000): %v", out)
	}
	if in := s.Info(); in.MSS != 960 {
		t.Fatalf("MSS %d, want 960", in.MSS)
	}
	// An error quoting a sequence number not in flight is ignored
	// (RFC 5927 §4.1).
	header.TCP(quote[header.IPv4MinSize:])[4] ^= 0x80
	c.p.V4Err(buf.FromBytes(0, quote), header.ICMPError{Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4FragNeeded, Errno: syscall.EMSGSIZE, Info: 600})
	if in := s.Info(); in.MSS != 960 {
		t.Fatalf("forged error changed MSS to %d", in.MSS)
	}
}

// RFC 1122 §4.2.3.9: port unreachable aborts a connection being opened.
func TestICMPRefusedDuringConnect(t *testing.T) {
	c := newPeer(t, Config{})
	s := c.p.NewSock()
	s.SetNonblock(true)
	s.ConnectContext(t.Context(), c.raddr)
	syn := c.ip.take()[0]
	c.p.V4Err(buf.FromBytes(0, syn.NetworkHeader()[:28]), header.ICMPError{Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4PortUnreachable, Errno: syscall.ECONNREFUSED, Hard: true})
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("read %v", err)
	}
}

// RFC 3168: ECN negotiated by an ECN-setup SYN (ECE|CWR) and SYN-ACK
// (ECE); a CE mark is echoed with ECE until CWR; an ECE halves cwnd once
// and the next new data carries CWR; new data is ECT(0), pure ACKs not.
func TestECN(t *testing.T) {
	const ece, cwr = header.ECE, header.CWR
	c := newPeer(t, Config{NoTimestamps: true})
	l := c.listen()
	defer l.Close()
	c.Send(c.Seg().Flags(SYN | ece | cwr).Seq(c.ISS))
	sa := c.Expect("SYN,ACK")
	if sa.flags != SYN|ACK|ece {
		t.Fatalf("ECN-setup SYN-ACK: %v", sa)
	}
	c.IRS = sa.seq
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1))
	s, _ := l.Accept(time.Time{})
	seq := c.ISS + 1
	c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data([]byte("x")).TOS(ecnCE))
	seq++
	if a := c.Expect("ACK echoing CE"); a.flags&ece == 0 || a.tos&ecnMask != 0 {
		t.Fatalf("got %v tos %#x", a, a.tos)
	}
	c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data([]byte("y")))
	seq++
	c.clk.Advance(time.Second)
	if a := c.Expect("ECE until CWR"); a.flags&ece == 0 {
		t.Fatalf("got %v", a)
	}
	c.Send(c.Seg().Flags(ACK | cwr).Seq(seq).Ack(c.IRS + 1).Data([]byte("z")))
	seq++
	c.clk.Advance(time.Second)
	if a := c.Expect("no ECE after CWR"); a.flags&ece != 0 {
		t.Fatalf("got %v", a)
	}

	s.SetNoDelay(true)
	s.Write([]byte("data"))
	d := c.Expect("data")
	if d.tos&ecnMask != ecnECT0 {
		t.Fatalf("new data TOS %#x, want ECT(0)", d.tos)
	}
	cwnd := s.Info().Cwnd
	c.Send(c.Seg().Flags(ACK | ece).Seq(seq).Ack(c.IRS + 5))
	if got := s.Info().Cwnd; got >= cwnd {
		t.Fatalf("cwnd %d after ECE, was %d", got, cwnd)
	}
	s.Write([]byte("more"))
	if d := c.Expect("data after the reduction"); d.flags&cwr == 0 {
		t.Fatalf("want CWR: %v", d)
	}
	// Without an ECN-setup SYN nothing is marked.
	c2 := newPeer(t, Config{NoTimestamps: true})
	s2 := c2.establishPassive(header.TCPOptions{})
	s2.Write([]byte("plain"))
	if d := c2.Expect("data"); d.tos != 0 || d.flags&(ece|cwr) != 0 {
		t.Fatalf("non-ECN connection: %v tos %#x", d, d.tos)
	}
}

// RFC 2883: a duplicate segment is reported in the first SACK block of
// the ACK it draws (a D-SACK), once; RFC 2018 §4: out-of-order data is
// reported with the most recent block first.
func TestSACKBlocksAndDSACK(t *testing.T) {
	c := newPeer(t, Config{NoTimestamps: true})
	c.establishPassive(header.TCPOptions{SACKPermitted: true})
	seq := c.ISS + 1
	c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data([]byte("abcd")))
	c.clk.Advance(time.Second)
	c.Out()
	c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Data([]byte("abcd")))
	a := c.Expect("ACK with D-SACK")
	if a.opts.NumSACK != 1 || a.opts.SACKBlocks[0] != (header.SACKBlock{Start: seq, End: seq + 4}) {
		t.Fatalf("D-SACK: %+v", a.opts)
	}
	c.Send(c.Seg().Flags(ACK).Seq(seq + 10).Ack(c.IRS + 1).Data([]byte("xy")))
	c.Send(c.Seg().Flags(ACK).Seq(seq + 20).Ack(c.IRS + 1).Data([]byte("zz")))
	out := c.Out()
	last := out[len(out)-1]
	if last.opts.NumSACK != 2 || last.opts.SACKBlocks[0].Start != seq+20 || last.opts.SACKBlocks[1].Start != seq+10 {
		t.Fatalf("SACK blocks %+v", last.opts)
	}
}
