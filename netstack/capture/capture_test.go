package capture_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/cni-userstack/cni-userstack/netstack/capture"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

// syncBuffer is a bytes.Buffer the writer goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

type rec struct {
	data   []byte
	length int
	t      time.Time
}

// readPcap parses a whole pcap stream.
func readPcap(t *testing.T, b []byte) ([]rec, uint32) {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("pcap header: %v", err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v, want Ethernet", r.LinkType())
	}
	var out []rec
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return out, r.Snaplen()
		}
		if err != nil {
			t.Fatalf("record %d: %v", len(out), err)
		}
		out = append(out, rec{data: data, length: ci.Length, t: ci.Timestamp})
	}
}

func ping(t *testing.T, a *stacktest.Node, b *stacktest.Node, seq uint16) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Ping(ctx, b.Addr(), seq, []byte("capture")); err != nil {
		t.Fatalf("ping %v: %v", b.Addr(), err)
	}
}

// A capture bounded by a packet count writes exactly that many records,
// the ones the filter selects, and stops; the stream is a pcap file
// pcapgo reads back with the frames' bytes and lengths.
func TestCaptureCountAndFilter(t *testing.T) {
	a, b := stacktest.Pair(t)
	ping(t, a, b, 1) // resolve ARP first: the capture below sees only ICMP
	f, err := capture.Parse("icmp and host " + b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := capture.Start(capture.Config{Devices: a.Devices(), Clock: a.Clock(), Filter: f, MaxPackets: 4})
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	done := make(chan error, 1)
	var st capture.Stats
	go func() {
		var err error
		st, err = s.WritePcap(context.Background(), &out, nil)
		done <- err
	}()
	for seq := uint16(2); seq < 5; seq++ { // 3 pings: 6 frames, 4 kept
		ping(t, a, b, seq)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a capture of 4 packets did not end after 6 matched")
	}
	recs, snap := readPcap(t, out.Bytes())
	if len(recs) != 4 || st.Written != 4 || st.Matched != 4 {
		t.Fatalf("%d records, stats %+v; want 4", len(recs), st)
	}
	if snap != capture.DefaultSnaplen {
		t.Errorf("snaplen %d, want %d", snap, capture.DefaultSnaplen)
	}
	for i, r := range recs {
		typ := r.data[header.EthernetMinSize+header.IPv4MinSize]
		want := uint8(header.ICMPv4Echo)
		if i%2 == 1 {
			want = header.ICMPv4EchoReply
		}
		if typ != want || r.length != len(r.data) {
			t.Errorf("record %d: ICMP type %d (want %d), length %d of %d", i, typ, want, r.length, len(r.data))
		}
		if i > 0 && r.t.Before(recs[i-1].t) {
			t.Errorf("record %d stamped before record %d", i, i-1)
		}
	}
}

// The snap length cuts records but keeps each frame's original length;
// a NIC selection keeps other NICs' frames out.
func TestCaptureSnaplenAndNICSelection(t *testing.T) {
	a, r, b := stacktest.Chain(t)
	ping(t, a, b, 1)
	// r's NIC towards b only: the echo request leaves there, the reply
	// comes in there.
	s, err := capture.Start(capture.Config{Devices: r.Devices(), NICs: []int{r.NICs[1].ID()}, Snaplen: 34, MaxPackets: 2,
		Filter: mustParse(t, "icmp")})
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	done := make(chan error, 1)
	go func() { _, err := s.WritePcap(context.Background(), &out, nil); done <- err }()
	ping(t, a, b, 2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recs, _ := readPcap(t, out.Bytes())
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	for i, rc := range recs {
		if len(rc.data) != 34 || rc.length <= 34 {
			t.Errorf("record %d: %d bytes of %d, want 34 of more", i, len(rc.data), rc.length)
		}
		if src := header.IPv4(rc.data[header.EthernetMinSize:]).Src(); i == 0 && src != a.Addr() {
			t.Errorf("first record from %v, want the request from %v", src, a.Addr())
		}
	}
}

// Stop ends a capture after writing what was queued (a complete stream);
// a cancelled context ends it at once. Either way the tap is gone.
func TestCaptureStopDrainsAndCancelDiscards(t *testing.T) {
	a, b := stacktest.Pair(t)
	ping(t, a, b, 1)
	s, err := capture.Start(capture.Config{Devices: a.Devices(), Filter: mustParse(t, "icmp")})
	if err != nil {
		t.Fatal(err)
	}
	ping(t, a, b, 2)
	stacktest.WaitFor(t, "the reply captured", func() bool { return s.Stats().Matched == 2 })
	s.Stop()
	var out syncBuffer
	st, err := s.WritePcap(context.Background(), &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if recs, _ := readPcap(t, out.Bytes()); len(recs) != 2 || st.Written != 2 {
		t.Fatalf("after Stop: %d records, %+v; want the 2 queued", len(recs), st)
	}
	ping(t, a, b, 3)
	if st := s.Stats(); st.Matched != 2 {
		t.Fatalf("the tap still runs after Stop: %+v", st)
	}

	s2, err := capture.Start(capture.Config{Devices: a.Devices()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s2.WritePcap(ctx, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	before := s2.Stats().Matched
	ping(t, a, b, 4)
	if after := s2.Stats().Matched; after != before {
		t.Fatalf("the tap still runs after the context ended: matched %d → %d", before, after)
	}
}

// A full queue drops and counts; the packet path does not wait for a
// writer that does not read.
func TestCaptureQueueBound(t *testing.T) {
	a, b := stacktest.Pair(t)
	ping(t, a, b, 1)
	s, err := capture.Start(capture.Config{Devices: a.Devices(), QueueLen: 1, Filter: mustParse(t, "icmp")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	for seq := uint16(2); seq < 5; seq++ {
		ping(t, a, b, seq) // would hang if the tap waited
	}
	stacktest.WaitFor(t, "6 frames seen", func() bool { return s.Stats().Matched == 6 })
	if st := s.Stats(); st.Dropped != 5 {
		t.Fatalf("stats %+v: want 5 dropped past a queue of 1", st)
	}
}

// A write error ends the capture with that error.
func TestCaptureWriteError(t *testing.T) {
	a, _ := stacktest.Pair(t)
	s, err := capture.Start(capture.Config{Devices: a.Devices()})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	if _, err := s.WritePcap(context.Background(), failWriter{boom}, nil); !errors.Is(err, boom) {
		t.Fatalf("WritePcap on a failing writer: %v, want %v", err, boom)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func mustParse(t *testing.T, s string) *capture.Filter {
	t.Helper()
	f, err := capture.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
