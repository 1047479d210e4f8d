package main

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/pcap"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

var (
	macPod = header.MAC{0x02, 0, 0, 0, 0, 5}
	macGW  = header.MAC{0x02, 0, 0, 0, 0, 1}
)

// sampleFrames are a few frames of the kinds the printer decodes.
func sampleFrames() [][]byte {
	return [][]byte{
		stacktest.Frame().Eth(macPod, macGW).IPv4("10.22.0.5", "10.22.0.1").Echo(7, 1).Payload(make([]byte, 56)).Bytes(),
		stacktest.Frame().Eth(macGW, macPod).IPv4("10.22.0.1", "10.22.0.5").EchoReply(7, 1).Payload(make([]byte, 56)).Bytes(),
		stacktest.ARPRequest(macPod, "10.22.0.5", "10.22.0.1").Bytes(),
		stacktest.Frame().Eth(macPod, macGW).IPv4("10.22.0.5", "192.0.2.7").TCP(40000, 80).Flags(header.SYN).Seq(100).Window(64240).Bytes(),
		stacktest.Frame().Eth(macPod, macGW).IPv4("10.22.0.5", "192.0.2.8").UDP(5353, 53).Payload(make([]byte, 30)).Bytes(),
	}
}

// sampleStream is a pcap stream of sampleFrames as the daemon writes it,
// and the frames.
func sampleStream(t *testing.T) ([]byte, [][]byte) {
	t.Helper()
	frames := sampleFrames()
	var b bytes.Buffer
	w, err := pcap.NewWriter(&b, 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	for i, f := range frames {
		if err := w.WriteRecord(t0.Add(time.Duration(i)*time.Millisecond), f, len(f)); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes(), frames
}

// readAll reads a pcap file with gopacket's reader (tcpdump's format).
func readAll(t *testing.T, b []byte) [][]byte {
	t.Helper()
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a pcap file: %v", err)
	}
	var out [][]byte
	for {
		d, _, err := r.ReadPacketData()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("record %d: %v", len(out), err)
		}
		out = append(out, d)
	}
}

// A stream cut anywhere after its header (Ctrl-C, the daemon going away)
// leaves a complete pcap file holding every whole record received.
func TestCopyPcapCutAnywhere(t *testing.T) {
	stream, frames := sampleStream(t)
	ends := []int{24} // where each record ends
	for _, f := range frames {
		ends = append(ends, ends[len(ends)-1]+16+len(f))
	}
	for cut := 24; cut <= len(stream); cut++ {
		var out bytes.Buffer
		n, err := copyPcap(&out, bytes.NewReader(stream[:cut]), cut%2 == 0, nil)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		whole := 0
		for _, e := range ends[1:] {
			if e <= cut {
				whole++
			}
		}
		got := readAll(t, out.Bytes())
		if n != whole || len(got) != whole {
			t.Fatalf("cut at %d: %d records copied, %d read back; want %d", cut, n, len(got), whole)
		}
		for i := range got {
			if !bytes.Equal(got[i], frames[i]) {
				t.Fatalf("cut at %d: record %d altered", cut, i)
			}
		}
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestCopyPcapRefusesGarbage(t *testing.T) {
	stream, _ := sampleStream(t)
	for name, in := range map[string][]byte{
		"empty":     nil,
		"short":     stream[:10],
		"bad magic": append([]byte("NOTAPCAPFILEHEADER......"), stream[24:]...),
	} {
		if _, err := copyPcap(io.Discard, bytes.NewReader(in), false, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	huge := append([]byte(nil), stream[:24+16]...)
	huge[24+8], huge[24+9], huge[24+10], huge[24+11] = 0xff, 0xff, 0xff, 0x7f // captured length 2 GiB
	if _, err := copyPcap(io.Discard, bytes.NewReader(huge), false, nil); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("huge record: %v", err)
	}
	boom := errors.New("connection reset")
	if _, err := copyPcap(io.Discard, io.MultiReader(bytes.NewReader(stream[:30]), errReader{boom}), false, nil); !errors.Is(err, boom) {
		t.Errorf("read error: %v, want %v", err, boom)
	}
}

// Without -w, each record is printed as tcpdump -n prints it.
func TestPacketLines(t *testing.T) {
	stream, _ := sampleStream(t)
	var lines []string
	if _, err := copyPcap(nil, bytes.NewReader(stream), false, func(r pcapRecord) { lines = append(lines, packetLine(r)) }); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"IP 10.22.0.5 > 10.22.0.1: ICMP echo request, id 7, seq 1, length 64",
		"IP 10.22.0.1 > 10.22.0.5: ICMP echo reply, id 7, seq 1, length 64",
		"ARP, Request who-has 10.22.0.1 tell 10.22.0.5, length 28",
		"IP 10.22.0.5.40000 > 192.0.2.7.80: Flags [S], seq 100, win 64240, length 0",
		"IP 10.22.0.5.5353 > 192.0.2.8.53: UDP, length 30",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines: %q", len(lines), lines)
	}
	for i := range want {
		ts := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC).Add(time.Duration(i) * time.Millisecond).Local().Format("15:04:05.000000")
		if lines[i] != ts+" "+want[i] {
			t.Errorf("line %d: %q, want %q", i, lines[i], ts+" "+want[i])
		}
	}
}

// FuzzPacketLine: no frame makes the printer panic.
func FuzzPacketLine(f *testing.F) {
	for _, fr := range sampleFrames() {
		f.Add(fr)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = packetLine(pcapRecord{t: time.Unix(0, 0), data: b, length: len(b)})
	})
}

// Every command answers --help with exit 0; a command line that is wrong
// exits 2.
func TestHelpAndUsageExitCodes(t *testing.T) {
	root := newRootCmd()
	for _, c := range root.Commands() {
		if code := run([]string{c.Name(), "--help"}); code != exitOK {
			t.Errorf("%s --help: exit %d", c.Name(), code)
		}
	}
	for _, args := range [][]string{{"nope"}, {"ss", "-Z"}, {"route", "--table", "x"}, {"neigh", "-o", "table"},
		{"pcap", "port", "99999"}, {"pcap", "-c", "-1"}, {"stats", "[bad"}, {"conntrack", "-L", "-S"}, {"route", "extra"}} {
		if code := run(args); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}
