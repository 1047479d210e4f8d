package pipe

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/link"
)

// frame builds an Ethernet frame of n bytes whose payload starts with tag.
func frame(n int, tag byte) *buf.SKB {
	s := buf.Alloc(buf.MaxHeadroom, n)
	p := s.Put(n)
	for i := range p {
		p[i] = tag + byte(i)
	}
	return s
}

func TestWriteThenRead(t *testing.T) {
	a, b := New(1500)
	defer a.Close()
	sent := [][]byte{}
	var out []*buf.SKB
	for i, n := range []int{14, 60, 1514} {
		s := frame(n, byte(i))
		sent = append(sent, append([]byte(nil), s.Bytes()...))
		out = append(out, s)
	}
	if n, err := a.WriteBatch(out); n != 3 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	pkts := make([]*buf.SKB, 8)
	n, err := b.ReadBatch(pkts)
	if n != 3 || err != nil {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	for i := 0; i < n; i++ {
		if !bytes.Equal(pkts[i].Bytes(), sent[i]) {
			t.Errorf("frame %d differs", i)
		}
		if len(pkts[i].MACHeader()) != len(sent[i]) {
			t.Errorf("frame %d: MAC header not at data start", i)
		}
		if pkts[i].Headroom() < buf.MaxHeadroom {
			t.Errorf("frame %d: headroom %d < %d", i, pkts[i].Headroom(), buf.MaxHeadroom)
		}
		pkts[i].Consume()
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.TxPackets != 3 || sa.TxBytes != 14+60+1514 || sb.RxPackets != 3 || sb.RxBytes != sa.TxBytes {
		t.Fatalf("stats a %+v b %+v", sa, sb)
	}
	// The other direction is independent.
	if n, err := b.WriteBatch([]*buf.SKB{frame(60, 9)}); n != 1 || err != nil {
		t.Fatalf("b→a WriteBatch = %d, %v", n, err)
	}
	if n, err := a.ReadBatch(pkts); n != 1 || err != nil || pkts[0].Bytes()[0] != 9 {
		t.Fatalf("b→a ReadBatch = %d, %v", n, err)
	}
	pkts[0].Consume()
}

func TestWriteDrops(t *testing.T) {
	tests := []struct {
		name     string
		opts     []Option
		sizes    []int
		gso      bool
		wantSent int
		reason   buf.DropReason
		wantDrop uint64
	}{
		{"queue bound: the overflow is dropped, not blocked", []Option{WithQueueLen(2)}, []int{60, 60, 60, 60, 60}, false, 2, DropPipeQueueFull, 3},
		{"runt shorter than Ethernet", nil, []int{13, 60}, false, 1, DropPipeRunt, 1},
		{"larger than MTU+14", nil, []int{1515, 1514}, false, 1, DropPipeTooBig, 1},
		{"GSO without negotiated offload is too big", []Option{WithCaps(link.CapGSO)}, []int{9000}, true, 0, DropPipeTooBig, 1},
		{"GSO negotiated passes", []Option{WithCaps(link.CapGSO | link.CapGRO)}, []int{9000}, true, 1, DropPipeTooBig, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := New(1500, tt.opts...)
			defer a.Close()
			var sender buf.DropStats
			var out []*buf.SKB
			for _, n := range tt.sizes {
				s := frame(n, 0)
				s.Drops = &sender
				if tt.gso {
					s.GSOSize, s.GSOType = 1448, buf.GSOTCPv4
				}
				out = append(out, s)
			}
			n, err := a.WriteBatch(out)
			if n != tt.wantSent || err != nil {
				t.Fatalf("WriteBatch = %d, %v; want %d", n, err, tt.wantSent)
			}
			if got := a.Drops().Get(tt.reason); got != tt.wantDrop {
				t.Errorf("pipe drops %s = %d, want %d", tt.reason, got, tt.wantDrop)
			}
			if got := sender.Get(tt.reason); got != tt.wantDrop {
				t.Errorf("sender's drop stats %s = %d, want %d", tt.reason, got, tt.wantDrop)
			}
			if st := a.Stats(); st.TxDropped != uint64(len(tt.sizes)-tt.wantSent) {
				t.Errorf("TxDropped %d", st.TxDropped)
			}
			if st := b.Stats(); st.RxQueued != tt.wantSent {
				t.Errorf("RxQueued %d, want %d", st.RxQueued, tt.wantSent)
			}
		})
	}
}

func TestMetadataDoesNotCrossTheWire(t *testing.T) {
	tests := []struct {
		name      string
		opts      []Option
		wantCsum  buf.CsumState
		wantStart uint16
		wantGSO   uint16
	}{
		{"no offloads: nothing crosses", nil, buf.CsumNone, 0, 0},
		{"sender offers partial, receiver no rx csum", []Option{WithCapsEach(link.CapTxChecksumPartial, 0)}, buf.CsumNone, 0, 0},
		{"both ends agree on checksum", []Option{WithCaps(link.CapTxChecksumPartial | link.CapRxChecksum)}, buf.CsumPartial, 34, 0},
		{"both ends agree on GSO/GRO", []Option{WithCaps(link.CapGSO | link.CapGRO)}, buf.CsumNone, 0, 1448},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := New(1500, tt.opts...)
			defer a.Close()
			var d buf.DropStats
			s := frame(100, 1)
			s.InNIC, s.OutNIC, s.Mark, s.Protocol = 7, 3, 0xbeef, 0x0800
			s.CB[0] = 0xff
			s.Drops = &d
			s.Csum, s.CsumOffset = buf.CsumPartial, 16
			s.GSOSize, s.GSOType = 1448, buf.GSOTCPv4
			s.SetNetworkHeaderAt(14)
			s.SetTransportHeaderAt(34)
			if n, _ := a.WriteBatch([]*buf.SKB{s}); n != 1 {
				t.Fatal("not sent")
			}
			pkts := make([]*buf.SKB, 1)
			if n, err := b.ReadBatch(pkts); n != 1 || err != nil {
				t.Fatalf("ReadBatch = %d, %v", n, err)
			}
			r := pkts[0]
			defer r.Consume()
			if r.InNIC != 0 || r.OutNIC != 0 || r.Mark != 0 || r.Protocol != 0 || r.CB != [32]byte{} || r.Drops != nil {
				t.Errorf("sender state leaked: InNIC %d OutNIC %d Mark %#x Protocol %#x CB[0] %d Drops %v",
					r.InNIC, r.OutNIC, r.Mark, r.Protocol, r.CB[0], r.Drops)
			}
			// Only the checksum start (the transport header) may cross, and
			// only with the checksum offload.
			start := uint16(0)
			if r.TransportHeader() != nil {
				start = uint16(r.TransportOffset())
			}
			if r.NetworkHeader() != nil {
				t.Error("sender's network header offset leaked")
			}
			if r.Csum != tt.wantCsum || start != tt.wantStart || r.GSOSize != tt.wantGSO {
				t.Errorf("csum %d start %d gso %d; want %d %d %d", r.Csum, start, r.GSOSize, tt.wantCsum, tt.wantStart, tt.wantGSO)
			}
		})
	}
}

func TestReadBlocksUntilWrite(t *testing.T) {
	a, b := New(1500)
	defer a.Close()
	got := make(chan int, 1)
	go func() {
		pkts := make([]*buf.SKB, 4)
		n, _ := b.ReadBatch(pkts)
		for _, s := range pkts[:n] {
			s.Consume()
		}
		got <- n
	}()
	select {
	case n := <-got:
		t.Fatalf("ReadBatch returned %d before any write", n)
	case <-time.After(20 * time.Millisecond):
	}
	a.WriteBatch([]*buf.SKB{frame(60, 0)})
	select {
	case n := <-got:
		if n != 1 {
			t.Fatalf("read %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadBatch did not wake on write")
	}
}

func TestCloseUnblocksBothEnds(t *testing.T) {
	for _, closer := range []string{"reader", "writer"} {
		t.Run("close by "+closer, func(t *testing.T) {
			a, b := New(1500)
			// One frame queued toward a is freed by Close.
			b.WriteBatch([]*buf.SKB{frame(60, 0)})
			errc := make(chan error, 1)
			go func() {
				_, err := b.ReadBatch(make([]*buf.SKB, 1))
				errc <- err
			}()
			time.Sleep(10 * time.Millisecond) // let the reader block; the result does not depend on it
			c := a
			if closer == "reader" {
				c = b
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, link.ErrClosed) {
					t.Fatalf("ReadBatch after Close: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not unblock ReadBatch")
			}
			if a.Drops().Get(DropPipeClosed) != 1 {
				t.Errorf("queued frame not freed with PIPE_CLOSED: %v", a.Stats().Drops)
			}
			var d buf.DropStats
			s := frame(60, 0)
			s.Drops = &d
			if n, err := a.WriteBatch([]*buf.SKB{s}); n != 0 || !errors.Is(err, link.ErrClosed) {
				t.Fatalf("WriteBatch after Close = %d, %v", n, err)
			}
			if d.Get(link.DropTxClosed) != 1 {
				t.Error("write after close not counted as LINK_TX_CLOSED")
			}
			if _, err := a.ReadBatch(make([]*buf.SKB, 1)); !errors.Is(err, link.ErrClosed) {
				t.Fatalf("ReadBatch on the other end after Close: %v", err)
			}
		})
	}
}

func TestSteadyStateDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	a, b := New(1500)
	defer a.Close()
	out := make([]*buf.SKB, 1)
	in := make([]*buf.SKB, 1)
	allocs := testing.AllocsPerRun(1000, func() {
		out[0] = frame(1514, 0)
		a.WriteBatch(out)
		n, _ := b.ReadBatch(in)
		for _, s := range in[:n] {
			s.Consume()
		}
	})
	if allocs > 0 {
		t.Fatalf("write+read allocated %.1f times per frame", allocs)
	}
}

func BenchmarkPipeBatch(b *testing.B) {
	const batch = 64
	x, y := New(1500)
	defer x.Close()
	out := make([]*buf.SKB, batch)
	in := make([]*buf.SKB, batch)
	b.ReportAllocs()
	b.SetBytes(1514 * batch)
	for b.Loop() {
		for i := range out {
			out[i] = frame(1514, 0)
		}
		x.WriteBatch(out)
		for got := 0; got < batch; {
			n, _ := y.ReadBatch(in)
			for _, s := range in[:n] {
				s.Consume()
			}
			got += n
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "frames/s")
}
