package tcp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// echoFlow is one client connection of TestConcurrentEchoBurst and the
// server socket that echoes it.
type echoFlow struct {
	c, s               *Sock
	sent, echoed, rcvd int
	cShut, sClosed     bool
	cEOF, sEOF         bool
	cDone              bool
	pending            []byte // read by the server, not yet written back
}

// Many flows echoing at once through one small drop-tail queue: a burst
// loses thousands of segments across all flows at the same instant (the
// proxy's 100 × 64 KiB echo over link/pipe). Every flow must recover and
// finish well within the simulated bound; a flow stuck on an RTO backed
// off over and over fails it.
func TestConcurrentEchoBurst(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flows int
		size  int
		cfg   wireCfg
		limit time.Duration
	}{
		{"100x64KiB-q64", 100, 64 << 10, wireCfg{delay: 50 * time.Microsecond, rate: 1.25e9, queue: 64, bothWays: true}, 10 * time.Second},
		{"100x64KiB-q256", 100, 64 << 10, wireCfg{delay: 20 * time.Microsecond, rate: 2.5e9, queue: 256, bothWays: true}, 10 * time.Second},
		{"50x64KiB-q32", 50, 64 << 10, wireCfg{delay: 100 * time.Microsecond, rate: 1.25e8, queue: 32, bothWays: true}, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWire(t, tc.cfg, Config{})
			start := w.clk.Now()
			echoBurst(t, w, tc.flows, tc.size, tc.limit)
			t.Logf("simulated %v, a→b %+v, b→a %+v", w.clk.Now().Sub(start), w.stats[0], w.stats[1])
			t.Logf("a: %v", nonzero(w.a))
			t.Logf("b: %v", nonzero(w.b))
		})
	}
}

func echoBurst(t *testing.T, w *wire, flows, size int, limit time.Duration) {
	t.Helper()
	l := w.b.NewSock()
	if err := l.Bind(netip.AddrPortFrom(remoteAddr, 80)); err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(flows); err != nil {
		t.Fatal(err)
	}
	l.SetNonblock(true)
	fl := make([]*echoFlow, flows)
	for i := range fl {
		c := w.a.NewSock()
		c.SetNonblock(true)
		if err := c.ConnectContext(context.Background(), netip.AddrPortFrom(remoteAddr, 80)); err != syscall.EINPROGRESS {
			t.Fatalf("connect %d: %v", i, err)
		}
		fl[i] = &echoFlow{c: c}
	}
	byPort := map[uint16]*echoFlow{}
	for _, f := range fl {
		byPort[f.c.LocalAddr().Port()] = f
	}
	out := make([]byte, 16<<10)
	rb := make([]byte, 16<<10)
	again := func(err error) bool { return errors.Is(err, syscall.EAGAIN) }
	app := func() bool {
		for {
			s, err := l.Accept(time.Time{})
			if err != nil {
				break
			}
			s.SetNonblock(true)
			f := byPort[s.RemoteAddr().Port()]
			if f == nil {
				t.Fatalf("accepted unknown %v", s.RemoteAddr())
			}
			f.s = s
		}
		done := true
		for i, f := range fl {
			// Client: write size bytes, shut down, read the echo to EOF.
			for f.sent < size && f.c.State() != SynSent {
				n := min(len(out), size-f.sent)
				pattern(out[:n], f.sent)
				m, err := f.c.Write(out[:n])
				f.sent += m
				if err != nil && !again(err) {
					t.Fatalf("flow %d: client write: %v", i, err)
				}
				if m < n {
					break
				}
			}
			if f.sent == size && !f.cShut {
				if err := f.c.Shutdown(false, true); err != nil {
					t.Fatalf("flow %d: shutdown: %v", i, err)
				}
				f.cShut = true
			}
			for !f.cEOF {
				n, err := f.c.Read(rb)
				if n > 0 {
					var want [16 << 10]byte
					pattern(want[:n], f.rcvd)
					if string(want[:n]) != string(rb[:n]) {
						t.Fatalf("flow %d: echo corrupt at %d", i, f.rcvd)
					}
					f.rcvd += n
				}
				if err != nil {
					if err.Error() == "EOF" {
						f.cEOF = true
					} else if !again(err) {
						t.Fatalf("flow %d: client read after %d: %v", i, f.rcvd, err)
					}
					break
				}
			}
			if f.cEOF && !f.cDone {
				if f.rcvd != size {
					t.Fatalf("flow %d: echo EOF after %d of %d bytes", i, f.rcvd, size)
				}
				_ = f.c.Close()
				f.cDone = true
			}
			// Server: echo what arrives; close after EOF once all is written.
			if f.s != nil && !f.sClosed {
				for {
					if len(f.pending) > 0 {
						m, err := f.s.Write(f.pending)
						f.pending = f.pending[m:]
						f.echoed += m
						if err != nil && !again(err) {
							t.Fatalf("flow %d: server write: %v", i, err)
						}
						if len(f.pending) > 0 {
							break
						}
					}
					if f.sEOF {
						break
					}
					n, err := f.s.Read(rb)
					if n > 0 {
						f.pending = append(f.pending[:0:0], rb[:n]...)
						continue
					}
					if err != nil {
						if err.Error() == "EOF" {
							f.sEOF = true
						} else if !again(err) {
							t.Fatalf("flow %d: server read: %v", i, err)
						}
						break
					}
				}
				if f.sEOF && len(f.pending) == 0 {
					_ = f.s.Close()
					f.sClosed = true
				}
			}
			done = done && f.cDone
		}
		return done
	}
	end := w.clk.Now().Add(limit)
	for !app() {
		if !w.clk.Step() {
			t.Fatalf("simulation stalled at %v: no timer armed\n%s", w.clk.Now().Sub(clock.Epoch), stuck(fl))
		}
		if w.clk.Now().After(end) {
			t.Fatalf("flows did not finish within %v; a→b %+v b→a %+v, over the MTU a %d b %d\na: %v\nb: %v\n%s",
				limit, w.stats[0], w.stats[1], w.ipA.tooBig, w.ipB.tooBig, nonzero(w.a), nonzero(w.b), stuck(fl))
		}
	}
	_ = l.Close()
	if w.ipA.tooBig+w.ipB.tooBig != 0 {
		t.Errorf("segments over the MTU: a %d b %d", w.ipA.tooBig, w.ipB.tooBig)
	}
}

// stuck describes the unfinished flows.
func stuck(fl []*echoFlow) string {
	var out string
	n := 0
	for i, f := range fl {
		if f.cDone {
			continue
		}
		n++
		if n > 8 {
			continue
		}
		out += fmt.Sprintf("flow %d: sent %d echoed %d rcvd %d\n  c: %v\n", i, f.sent, f.echoed, f.rcvd, f.c)
		if f.s != nil {
			out += fmt.Sprintf("  s: %v\n", f.s)
		}
	}
	return fmt.Sprintf("%d flows unfinished\n%s", n, out)
}

// RFC 9293 §3.7.1 and RFC 6691 §3: while we hold out-of-order data, our
// segments carry SACK blocks (RFC 2018 §3, up to three beside timestamps,
// four without), and the data they carry shrinks by the blocks' bytes so
// that a full segment still fits the 1500-byte MTU — new data, and the
// retransmission after a timeout alike. A full MSS of data beside the
// blocks would be dropped by IP (DF), every time, until the holes fill.
func TestSegmentsWithSACKBlocksFitMTU(t *testing.T) {
	for _, tc := range []struct {
		name      string
		noTS      bool
		holes     int
		wantBlock int
	}{
		{"ts/1hole", false, 1, 1},
		{"ts/2holes", false, 2, 2},
		{"ts/3holes", false, 3, 3},
		{"ts/5holes", false, 5, 3},
		{"nots/1hole", true, 1, 1},
		{"nots/5holes", true, 5, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPeer(t, Config{})
			o := header.TCPOptions{HasMSS: true, MSS: 1460, HasWScale: true, WScale: 7, SACKPermitted: true}
			if !tc.noTS {
				o.HasTS, o.TSVal = true, c.TSVal
			}
			s := c.establishPassive(o)
			peerOpts := header.TCPOptions{}
			if !tc.noTS {
				peerOpts = header.TCPOptions{HasTS: true, TSVal: c.TSVal + 1}
			}
			// Out-of-order data from the peer: tc.holes ranges above RCV.NXT.
			for i := range tc.holes {
				seq := c.ISS + 1 + uint32(1000*(2*i+1))
				c.Send(c.Seg().Flags(ACK).Seq(seq).Ack(c.IRS + 1).Opts(peerOpts).Data(make([]byte, 500)))
			}
			c.Out()
			if _, err := s.Write(make([]byte, 64<<10)); err != nil {
				t.Fatalf("write: %v", err)
			}
			check := func(what string, out []seg) {
				t.Helper()
				if c.ip.tooBig != 0 {
					t.Fatalf("%s: %d segments over the MTU dropped", what, c.ip.tooBig)
				}
				n := 0
				for _, sg := range out {
					if len(sg.data) == 0 {
						continue
					}
					n++
					ol := header.TCPOptionsLen(&sg.opts)
					if sg.opts.NumSACK != tc.wantBlock {
						t.Fatalf("%s: %v carries %d SACK blocks, want %d", what, sg, sg.opts.NumSACK, tc.wantBlock)
					}
					if got := header.IPv4MinSize + header.TCPMinSize + ol + len(sg.data); got > 1500 {
						t.Fatalf("%s: %v is %d bytes on the wire", what, sg, got)
					}
					if want := 1460 - ol; len(sg.data) != want {
						t.Fatalf("%s: %v carries %d bytes, want a full %d beside %d option bytes", what, sg, len(sg.data), want, ol)
					}
				}
				if n == 0 {
					t.Fatalf("%s: no data segment", what)
				}
			}
			check("initial window", c.Out())
			// RTO: the retransmission of SND.UNA carries the blocks too.
			c.clk.Advance(time.Second)
			check("retransmission", c.Out())
		})
	}
}
