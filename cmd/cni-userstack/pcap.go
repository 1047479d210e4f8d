package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack/capture"
	"github.com/spf13/cobra"
)

type pcapFlags struct {
	pods, nics []string
	write      string
	count      int
	duration   time.Duration
	snaplen    int
}

func newPcapCmd() *cobra.Command {
	var cf clientFlags
	var f pcapFlags
	cmd := &cobra.Command{
		Use:   "pcap [--pod POD]... [--nic NIC]... [-w FILE|-] [-c COUNT] [--duration D] [FILTER...]",
		Short: "Capture packets inside the stack, in pcap format (tcpdump)",
		Long: `pcap captures the frames the stack's NICs receive and send, from inside the
userspace stack where the kernel's tcpdump cannot see, and writes them in
pcap format (-w FILE, or -w - for stdout: pipe it into ` + "`tcpdump -r -`" + ` or
wireshark) or prints one line per packet. Every NIC is captured unless
--pod or --nic select some. Received frames are seen before the stack
handles them, sent ones as they leave (a TCP segment of up to 64 KiB that
the link segments shows whole, as tcpdump shows a TSO packet).

The capture ends after --count packets, after --duration, or on Ctrl-C
(SIGINT) or SIGTERM; the file then holds every whole packet received, and
the counters are printed on stderr as tcpdump does. The daemon drops
packets (and counts them) rather than slow the stack when the capture
cannot keep up.

FILTER is tcpdump's language, a subset applied in the daemon: host, net,
port, portrange (each with src or dst), tcp, udp, icmp, ip, arp, proto N,
ether host, inbound, outbound, len/less/greater, combined with and, or,
not and parentheses. See docs/operations.md.`,
		Example: `  cni-userstack pcap --pod default/web-0 -c 10 icmp
  cni-userstack pcap -w - 'host 10.22.0.5 and tcp port 80' | tcpdump -nr -
  cni-userstack pcap --nic us-uplink --duration 30s -w uplink.pcap`,
		RunE: func(cmd *cobra.Command, args []string) error {
			expr := strings.Join(args, " ")
			if _, err := capture.Parse(expr); err != nil {
				return usageErrorf("%v", err)
			}
			switch {
			case f.count < 0:
				return usageErrorf("--count %d: must not be negative", f.count)
			case f.duration < 0 || f.duration > api.MaxCaptureDuration:
				return usageErrorf("--duration %v: want 0 (until interrupted) up to %v", f.duration, api.MaxCaptureDuration)
			case f.snaplen < 0 || f.snaplen > capture.DefaultSnaplen:
				return usageErrorf("--snaplen %d: want 0 (default %d) up to %d", f.snaplen, capture.DefaultSnaplen, capture.DefaultSnaplen)
			}
			req := api.CaptureRequest{NICs: f.nics, Pods: f.pods, Filter: expr, Count: f.count, Duration: f.duration, Snaplen: f.snaplen}
			return runPcap(cmd, &cf, f, req)
		},
	}
	cf.add(cmd)
	fl := cmd.Flags()
	fl.StringArrayVar(&f.pods, "pod", nil, "capture this pod's link: namespace/name, name, container ID or attachment ID (repeatable)")
	fl.StringArrayVar(&f.nics, "nic", nil, "capture this NIC, by name or number (repeatable)")
	fl.StringVarP(&f.write, "write", "w", "", "write a pcap file (- for stdout) instead of printing packets")
	fl.IntVarP(&f.count, "count", "c", 0, "stop after this many packets (0: no bound)")
	fl.DurationVar(&f.duration, "duration", 0, "stop after this long (0: until interrupted; the daemon ends any capture after "+api.MaxCaptureDuration.String()+")")
	fl.IntVarP(&f.snaplen, "snaplen", "s", 0, "bytes kept of each packet (0: 262144)")
	return cmd
}

func runPcap(cmd *cobra.Command, cf *clientFlags, f pcapFlags, req api.CaptureRequest) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// --timeout bounds reaching the daemon; the capture itself runs until
	// its bounds or a signal.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(cf.timeout, cancel)
	stream, err := api.NewClient(cf.socket, cf.timeout).Capture(cctx, req)
	if !timer.Stop() && err == nil {
		stream.Body.Close()
		err = fmt.Errorf("the daemon at %s did not start the capture within %v", cf.socket, cf.timeout)
	}
	if err != nil {
		return cf.explain(err)
	}
	defer stream.Body.Close()
	stderr := cmd.ErrOrStderr()
	what := "every NIC"
	if stream.NICs != "" {
		what = "NICs " + stream.NICs
	}
	if len(req.NICs) == 0 && len(req.Pods) == 0 {
		what = "every NIC (" + stream.NICs + ")"
	}
	fmt.Fprintf(stderr, "cni-userstack pcap: capturing on %s", what)
	if req.Filter != "" {
		fmt.Fprintf(stderr, ", filter %q", req.Filter)
	}
	fmt.Fprintln(stderr)

	var dst io.Writer
	var onRecord func(pcapRecord)
	live := false
	switch f.write {
	case "":
		out := cmd.OutOrStdout()
		onRecord = func(r pcapRecord) { fmt.Fprintln(out, packetLine(r)) }
	case "-":
		dst, live = cmd.OutOrStdout(), true
	default:
		file, err := os.OpenFile(f.write, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := file.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		dst = file
	}
	n, cerr := copyPcap(dst, stream.Body, live, onRecord)
	interrupted := ctx.Err() != nil
	if cerr != nil && !interrupted {
		return fmt.Errorf("capture stream: %w (%d whole packets written)", cerr, n)
	}
	fmt.Fprintf(stderr, "%d packets captured\n", n)
	if !interrupted {
		if v := stream.Trailer.Get(api.TrailerMatched); v != "" {
			fmt.Fprintf(stderr, "%s packets matched by the filter\n", v)
		}
		if v := stream.Trailer.Get(api.TrailerDropped); v != "" {
			fmt.Fprintf(stderr, "%s packets dropped by the daemon (the capture could not keep up)\n", v)
		}
	}
	return nil
}

// pcapRecord is one record of a pcap stream.
type pcapRecord struct {
	t      time.Time
	data   []byte
	length int // on the wire
}

// maxRecord bounds a record's captured length the copier accepts: the
// largest snap length the daemon uses.
const maxRecord = capture.DefaultSnaplen

// copyPcap copies the pcap stream src to dst (nil: nowhere) one whole
// record at a time: the file header first, then each record once all its
// bytes arrived, so a stream cut anywhere (an interrupt, the daemon going
// away) leaves dst a complete pcap file. live flushes after every record
// (a pipe into tcpdump sees each packet at once). onRecord, when set, sees
// every record. It returns the records copied and the first error other
// than the stream ending; a stream that ends in the middle of a record
// loses that record only.
func copyPcap(dst io.Writer, src io.Reader, live bool, onRecord func(pcapRecord)) (int, error) {
	var bw *bufio.Writer
	if dst != nil {
		bw = bufio.NewWriterSize(dst, 1<<16)
		defer bw.Flush()
	}
	br := bufio.NewReaderSize(src, 1<<16)
	var hdr [24]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, errors.New("the daemon sent no pcap header")
		}
		return 0, fmt.Errorf("pcap header: %w", err)
	}
	order, nanos, ok := pcapMagic(hdr[:4])
	if !ok {
		return 0, fmt.Errorf("not a pcap stream (magic %x)", hdr[:4])
	}
	if bw != nil {
		if _, err := bw.Write(hdr[:]); err != nil {
			return 0, err
		}
		if err := bw.Flush(); err != nil {
			return 0, err
		}
	}
	n := 0
	var rh [16]byte
	data := make([]byte, 0, 2048)
	for {
		if _, err := io.ReadFull(br, rh[:]); err != nil {
			return n, streamEnd(err)
		}
		capLen := order.Uint32(rh[8:12])
		if capLen > maxRecord {
			return n, fmt.Errorf("record %d: captured length %d exceeds %d: corrupt stream", n+1, capLen, maxRecord)
		}
		data = data[:capLen]
		if _, err := io.ReadFull(br, data); err != nil {
			return n, streamEnd(err)
		}
		if bw != nil {
			if _, err := bw.Write(rh[:]); err != nil {
				return n, err
			}
			if _, err := bw.Write(data); err != nil {
				return n, err
			}
			if live {
				if err := bw.Flush(); err != nil {
					return n, err
				}
			}
		}
		n++
		if onRecord != nil {
			sub := int64(order.Uint32(rh[4:8]))
			if !nanos {
				sub *= 1000
			}
			onRecord(pcapRecord{t: time.Unix(int64(order.Uint32(rh[0:4])), sub), data: data,
				length: int(order.Uint32(rh[12:16]))})
		}
	}
}

// streamEnd maps the end of the stream: EOF between records, or a cut in
// the middle of one (the interrupted tail is dropped), is a clean end; a
// read error otherwise is an error unless the capture was cancelled.
func streamEnd(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// pcapMagic reads a pcap file's magic: its byte order and whether its
// timestamps are in nanoseconds.
func pcapMagic(b []byte) (binary.ByteOrder, bool, bool) {
	for _, o := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		switch o.Uint32(b) {
		case 0xa1b2c3d4:
			return o, false, true
		case 0xa1b23c4d:
			return o, true, true
		}
	}
	return nil, false, false
}
