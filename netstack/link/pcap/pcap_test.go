package pcap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/link/pipe"
)

var (
	macA = []byte{0x02, 0, 0, 0, 0, 0x0a}
	macB = []byte{0x02, 0, 0, 0, 0, 0x0b}
)

// arpRequest is "who-has 10.0.0.1 tell 10.0.0.2", built by hand so this
// package needs no header package.
func arpRequest() []byte {
	f := make([]byte, 42)
	copy(f[0:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:], macB)
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // htype Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // ptype IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:], macB)
	copy(a[14:], []byte{10, 0, 0, 2})
	copy(a[24:], []byte{10, 0, 0, 1})
	return f
}

// udpFrame is 10.0.0.2:40000 → 10.0.0.1:9999 carrying payload.
func udpFrame(payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:], macA)
	copy(f[6:], macB)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8], ip[9] = 64, 17
	copy(ip[12:], []byte{10, 0, 0, 2})
	copy(ip[16:], []byte{10, 0, 0, 1})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 9999)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload) // checksum 0: none (RFC 768)
	return f
}

type record struct {
	t      time.Time
	data   []byte
	length int
}

func readBack(t *testing.T, r io.Reader) []record {
	t.Helper()
	pr, err := pcapgo.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	if pr.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v", pr.LinkType())
	}
	var out []record
	for {
		data, ci, err := pr.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, record{ci.Timestamp, append([]byte(nil), data...), ci.Length})
	}
}

func TestFileReadableByTcpdump(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cap.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	frames := [][]byte{arpRequest(), udpFrame([]byte("hello")), udpFrame(bytes.Repeat([]byte{1}, 1400))}
	for i, fr := range frames {
		if err := w.WritePacket(t0.Add(time.Duration(i)*time.Millisecond), fr); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Packets != 3 || st.Errors != 0 {
		t.Fatalf("stats %+v", st)
	}

	rf, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	recs := readBack(t, rf)
	if len(recs) != len(frames) {
		t.Fatalf("read back %d records", len(recs))
	}
	for i, r := range recs {
		if !bytes.Equal(r.data, frames[i]) || r.length != len(frames[i]) {
			t.Errorf("record %d differs", i)
		}
		if want := t0.Add(time.Duration(i) * time.Millisecond); !r.t.Equal(want) {
			t.Errorf("record %d time %v, want %v", i, r.t, want)
		}
	}

	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Skip("tcpdump not installed (apt-get install -y tcpdump): file checked with pcapgo only")
	}
	out, err := exec.Command(tcpdump, "-r", path, "-nn").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ARP, Request who-has 10.0.0.1 tell 10.0.0.2",
		"10.0.0.2.40000 > 10.0.0.1.9999: UDP, length 5",
		"10.0.0.2.40000 > 10.0.0.1.9999: UDP, length 1400",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tcpdump output lacks %q:\n%s", want, out)
		}
	}
}

func TestSnaplenTruncates(t *testing.T) {
	var b bytes.Buffer
	w, err := NewWriter(&b, 64)
	if err != nil {
		t.Fatal(err)
	}
	fr := udpFrame(bytes.Repeat([]byte{7}, 200))
	w.WritePacket(clock.Epoch, fr)
	recs := readBack(t, &b)
	if len(recs) != 1 || len(recs[0].data) != 64 || recs[0].length != len(fr) || !bytes.Equal(recs[0].data, fr[:64]) {
		t.Fatalf("records %+v", recs)
	}
}

type failingWriter struct{ after int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(p), nil
}

func TestWriteErrorsAreCounted(t *testing.T) {
	if _, err := NewWriter(&failingWriter{}, 0); err == nil {
		t.Fatal("file header write failure not reported")
	}
	if _, err := NewWriter(nil, 0); err == nil {
		t.Fatal("nil writer accepted")
	}
	w, err := NewWriter(&failingWriter{after: 1}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WritePacket(clock.Epoch, arpRequest()); err == nil {
		t.Fatal("write failure not reported")
	}
	if st := w.Stats(); st.Errors != 1 || st.Packets != 0 || st.FirstErr == nil {
		t.Fatalf("stats %+v", st)
	}
}

func TestConcurrentWritersKeepRecordsWhole(t *testing.T) {
	var b bytes.Buffer
	w, _ := NewWriter(&b, 0)
	const writers, each = 4, 200
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				w.WritePacket(clock.Epoch, udpFrame(bytes.Repeat([]byte{byte(g)}, 10+g)))
			}
		}(g)
	}
	wg.Wait()
	recs := readBack(t, &b)
	if len(recs) != writers*each {
		t.Fatalf("%d records", len(recs))
	}
	for i, r := range recs {
		g := r.data[len(r.data)-1]
		if int(g) >= writers || !bytes.Equal(r.data, udpFrame(bytes.Repeat([]byte{g}, 10+int(g)))) {
			t.Fatalf("record %d interleaved", i)
		}
	}
}

func TestWrapRecordsBothDirections(t *testing.T) {
	clk := clock.NewManual()
	var b bytes.Buffer
	w, _ := NewWriter(&b, 0)
	x, y := pipe.New(1500)
	e := Wrap(x, w, clk)
	defer e.Close()
	if e.MTU() != 1500 {
		t.Fatalf("MTU %d", e.MTU())
	}

	out := arpRequest()
	if n, err := e.WriteBatch([]*buf.SKB{buf.FromBytes(0, out)}); n != 1 || err != nil {
		t.Fatalf("WriteBatch %d %v", n, err)
	}
	clk.Advance(time.Second)
	in := udpFrame([]byte("reply"))
	y.WriteBatch([]*buf.SKB{buf.FromBytes(0, in)})
	pkts := make([]*buf.SKB, 4)
	n, err := e.ReadBatch(pkts)
	if n != 1 || err != nil {
		t.Fatalf("ReadBatch %d %v", n, err)
	}
	if !bytes.Equal(pkts[0].Bytes(), in) {
		t.Fatal("wrapper changed the received frame")
	}
	pkts[0].Consume()
	// The transmitted frame reached the peer unchanged.
	n, _ = y.ReadBatch(pkts)
	if n != 1 || !bytes.Equal(pkts[0].Bytes(), out) {
		t.Fatal("wrapper changed the transmitted frame")
	}
	pkts[0].Consume()

	recs := readBack(t, &b)
	if len(recs) != 2 || !bytes.Equal(recs[0].data, out) || !bytes.Equal(recs[1].data, in) {
		t.Fatalf("records %+v", recs)
	}
	if !recs[0].t.Equal(clock.Epoch) || !recs[1].t.Equal(clock.Epoch.Add(time.Second)) {
		t.Fatalf("timestamps %v %v not from the injected clock", recs[0].t, recs[1].t)
	}
}

func BenchmarkWritePacket(b *testing.B) {
	w, _ := NewWriter(io.Discard, 0)
	fr := udpFrame(bytes.Repeat([]byte{1}, 1458))
	b.ReportAllocs()
	b.SetBytes(int64(len(fr)))
	for b.Loop() {
		w.WritePacket(clock.Epoch, fr)
	}
}
