package tcp

import (
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

var batchSynOpts = header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7, SACKPermitted: true}

// RFC 9293 §3.8.6.3 wants an ACK at least for every second full-sized
// segment; in quick-ack mode we ACK each at once. In-order segments of
// one receive batch get one ACK, at the end of the batch, for all of
// them (Linux sends one per GRO super-segment; the batch is ours).
func TestBatchSendsOneACK(t *testing.T) {
	c := newPeer(t, Config{})
	c.establishPassive(batchSynOpts)
	var b buf.Batch
	data := make([]byte, 1000)
	for i := 0; i < 5; i++ {
		c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1 + uint32(i*1000)).Ack(c.IRS + 1).Data(data).Batch(&b))
	}
	c.ExpectNone("ACKs before the batch ends")
	b.Flush()
	a := c.Expect("the batch's ACK")
	if a.flags != ACK || a.ack != c.ISS+1+5000 {
		t.Fatalf("want ACK of 5000 bytes, got %v", a)
	}
	b.Flush()
	c.ExpectNone("a second flush")
}

// RFC 5681 §4.2: "an immediate duplicate ACK SHOULD be sent when an
// out-of-order segment arrives" — also inside a batch (the sender's
// loss detection counts them), with its SACK block (RFC 2018 §4).
func TestBatchOutOfOrderACKedAtOnce(t *testing.T) {
	c := newPeer(t, Config{})
	c.establishPassive(batchSynOpts)
	var b buf.Batch
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1 + 1000).Ack(c.IRS + 1).Data(make([]byte, 1000)).Batch(&b))
	a := c.Expect("duplicate ACK")
	if a.ack != c.ISS+1 || a.opts.NumSACK != 1 {
		t.Fatalf("want dup ACK with a SACK block, got %v", a)
	}
	b.Flush()
	c.ExpectNone("nothing deferred")
}

// The Notify callback runs once per batch, without the socket lock, and
// before the batch's ACK: a reader that drains the queue in it leaves
// the window fully open in that ACK (no separate window update).
func TestNotifyOncePerBatchBeforeACK(t *testing.T) {
	c := newPeer(t, Config{})
	s := c.establishPassive(batchSynOpts)
	var calls []Event
	rb := make([]byte, 64<<10)
	s.SetNotify(func(ev Event) {
		calls = append(calls, ev)
		for {
			if n, _ := s.Read(rb); n == 0 {
				break
			}
		}
	})
	var b buf.Batch
	data := make([]byte, 1000)
	for i := 0; i < 4; i++ {
		c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1 + uint32(i*1000)).Ack(c.IRS + 1).Data(data).Batch(&b))
	}
	if len(calls) != 0 {
		t.Fatalf("callback ran inside the batch: %v", calls)
	}
	b.Flush()
	if len(calls) != 1 || calls[0] != EventReadable {
		t.Fatalf("callbacks %v, want one EventReadable", calls)
	}
	a := c.Expect("the batch's ACK")
	if a.ack != c.ISS+1+4000 {
		t.Fatalf("ACK %v", a)
	}
	if wnd := int(a.wnd) << 7; wnd < DefaultRcvBuf-(1<<7) {
		t.Fatalf("window %d after the reader drained the queue, want about %d", wnd, DefaultRcvBuf)
	}
	// Outside a batch the callback runs when the segment is processed.
	c.Send(c.Seg().Flags(ACK | FIN).Seq(c.ISS + 1 + 4000).Ack(c.IRS + 1))
	if len(calls) != 2 || calls[1]&EventReadable == 0 {
		t.Fatalf("FIN: callbacks %v", calls)
	}
}

// ReadTo's callback sees the queued bytes in place; a Close from inside
// it (an abort racing the relay) frees the queue only after the callback
// returned, so the bytes it writes out are never a reused buffer's.
func TestReadToCloseDuringCallback(t *testing.T) {
	c := newPeer(t, Config{})
	s := c.establishPassive(batchSynOpts)
	want := []byte("hello, relay")
	c.Send(c.Seg().Flags(ACK).Seq(c.ISS + 1).Ack(c.IRS + 1).Data(want))
	c.Out()
	var v [4][]byte
	n, err := s.ReadTo(v[:], VecFunc(func(v [][]byte) (int, error) {
		if len(v) != 1 || string(v[0]) != string(want) {
			t.Fatalf("callback got %q", v)
		}
		s.Close() // unread data: RST (RFC 2525 §2.17)
		if string(v[0]) != string(want) {
			t.Fatal("bytes changed under the callback")
		}
		return len(v[0]), nil
	}))
	if n != len(want) || err != nil {
		t.Fatalf("ReadTo: %d, %v", n, err)
	}
	if in, _ := s.Buffered(); in != 0 || s.rcvq.mem != 0 {
		t.Fatalf("queue not released: %d bytes, %d pinned", in, s.rcvq.mem)
	}
	if rst := c.Expect("RST"); rst.flags&RST == 0 {
		t.Fatalf("want RST, got %v", rst)
	}
	if _, err := s.ReadTo(v[:], VecFunc(func([][]byte) (int, error) { return 0, nil })); err == nil {
		t.Fatal("ReadTo after Close succeeded")
	}
}

// WriteFrom's callback fills the send ring in place and the bytes go out
// as Write's would; a connection reset while it runs drops them.
func TestWriteFromInPlaceAndReset(t *testing.T) {
	c := newPeer(t, Config{})
	s := c.establishPassive(batchSynOpts)
	var v [4][]byte
	n, err := s.WriteFrom(v[:], VecFunc(func(v [][]byte) (int, error) {
		return copy(v[0], "abc"), nil
	}))
	if n != 3 || err != nil {
		t.Fatalf("WriteFrom: %d, %v", n, err)
	}
	if d := c.Expect("data"); string(d.data) != "abc" || d.seq != c.IRS+1 {
		t.Fatalf("sent %v %q", d, d.data)
	}
	n, err = s.WriteFrom(v[:], VecFunc(func(v [][]byte) (int, error) {
		c.Send(c.Seg().Flags(RST).Seq(c.ISS + 1)) // the peer resets meanwhile
		return copy(v[0], "def"), nil
	}))
	if n != 0 || err == nil {
		t.Fatalf("WriteFrom on a reset connection: %d, %v", n, err)
	}
	c.ExpectNone("nothing after the reset")
	if _, out := s.Buffered(); out != 0 || s.sndBuf.q.Len() != 0 {
		t.Fatalf("send queue kept %d bytes in %d chunks", out, s.sndBuf.q.Len())
	}
}
