package ipv4

import (
	"bytes"
	"syscall"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// RFC 792 / RFC 1122 §3.2.2.6: an echo reply carries the request's
// identifier, sequence number and data back to its source.
func TestEchoReply(t *testing.T) {
	tn := newTestNet(t)
	data := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	req := icmpMsg(header.ICMPv4Echo, 0, header.EchoRest(0x1234, 7), data)
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoICMP, tos: 0x10, payload: req}.bytes())
	out := tn.take()
	if len(out) != 1 || out[0].nic != 1 || out[0].nextHop != ip("10.1.0.5") {
		t.Fatalf("sent %+v", out)
	}
	m := checkICMP(t, out[0], "10.1.0.1", "10.1.0.5", header.ICMPv4EchoReply, 0)
	if m.ID() != 0x1234 || m.Seq() != 7 || !bytes.Equal(m.Payload(), data) {
		t.Fatalf("reply id %#x seq %d data %q", m.ID(), m.Seq(), m.Payload())
	}
	// Byte for byte: the reply is the request with type 0 and a new checksum.
	want := append([]byte(nil), req...)
	want[0] = header.ICMPv4EchoReply
	header.ICMPv4(want).SetChecksum()
	if !bytes.Equal(m, want) {
		t.Fatalf("reply %x\nwant  %x", []byte(m), want)
	}
	if h := out[0].ip(); h.TTL() != DefaultTTL || h.TOS() != 0x10 || h.HeaderLen() != header.IPv4MinSize {
		t.Fatalf("reply header ttl %d tos %#x hl %d", h.TTL(), h.TOS(), h.HeaderLen())
	}
	if tn.counter("IcmpInEchos") != 1 || tn.counter("IcmpOutEchoReps") != 1 || tn.counter("IcmpInMsgs") != 1 {
		t.Fatalf("counters %v", tn.l.Counters())
	}
	// Options in the request are not reflected.
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoICMP, opts: []byte{1, 1, 1, 1}, payload: req}.bytes())
	if out = tn.take(); len(out) != 1 || out[0].ip().HeaderLen() != header.IPv4MinSize {
		t.Fatal("options reflected in the reply")
	}
	// RFC 1122 §3.2.2.6: echo to a broadcast MAY be discarded; we do.
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "255.255.255.255", proto: header.ProtoICMP, payload: req}.bytes())
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "10.1.0.255", proto: header.ProtoICMP, payload: req}.bytes())
	if len(tn.take()) != 0 || tn.drops.Get(DropICMPIgnored) != 2 {
		t.Fatal("answered a broadcast echo")
	}
}

func TestICMPBadChecksum(t *testing.T) {
	tn := newTestNet(t)
	req := icmpMsg(header.ICMPv4Echo, 0, header.EchoRest(1, 1), []byte("x"))
	req[2] ^= 0x55
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoICMP, payload: req}.bytes())
	if len(tn.take()) != 0 || tn.counter("IcmpInCsumErrors") != 1 || tn.counter("IcmpInErrors") != 1 || tn.drops.Get(DropICMPCsum) != 1 {
		t.Fatalf("counters %v", tn.l.Counters())
	}
	tn.rcv(1, pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoICMP, payload: []byte{8, 0, 0}}.bytes())
	if tn.counter("IcmpInErrors") != 2 || tn.drops.Get(DropICMPInvalid) != 1 {
		t.Fatal("short ICMP not counted")
	}
}

// ICMP errors from the network reach the quoted protocol's Err with their
// type and code, and icmp_err_convert's errno and fatal flag (RFC 1122
// §4.1.3.3, §4.2.3.9: hard or soft).
func TestICMPErrorToProtocol(t *testing.T) {
	// The datagram we sent that the error quotes: UDP 10.1.0.1 → 10.1.0.9.
	inner := pkt{src: "10.1.0.1", dst: "10.1.0.9", proto: header.ProtoUDP, payload: udpish(100)}.bytes()
	quote := inner[:28]
	for _, tc := range []struct {
		name       string
		typ, code  uint8
		rest       uint32
		quote      []byte
		wantErrno  syscall.Errno
		wantHard   bool
		wantInfo   uint32
		wantCount  string
		noDelivery bool
	}{
		{"port unreachable → hard ECONNREFUSED", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, quote,
			syscall.ECONNREFUSED, true, 0, "IcmpInDestUnreachs", false},
		{"protocol unreachable → hard ENOPROTOOPT", header.ICMPv4DstUnreachable, header.ICMPv4ProtoUnreachable, 0, quote,
			syscall.ENOPROTOOPT, true, 0, "IcmpInDestUnreachs", false},
		{"RFC 1191: frag needed → EMSGSIZE with the MTU", header.ICMPv4DstUnreachable, header.ICMPv4FragNeeded,
			header.FragNeededRest(1280), quote, syscall.EMSGSIZE, false, 1280, "IcmpInDestUnreachs", false},
		{"host unreachable: soft", header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, 0, quote,
			syscall.EHOSTUNREACH, false, 0, "IcmpInDestUnreachs", false},
		{"net unreachable: soft", header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable, 0, quote,
			syscall.ENETUNREACH, false, 0, "IcmpInDestUnreachs", false},
		{"admin prohibited: hard, though EHOSTUNREACH", header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0, quote,
			syscall.EHOSTUNREACH, true, 0, "IcmpInDestUnreachs", false},
		{"time exceeded → soft EHOSTUNREACH (Linux)", header.ICMPv4TimeExceeded, 0, 0, quote,
			syscall.EHOSTUNREACH, false, 0, "IcmpInTimeExcds", false},
		{"parameter problem → hard EPROTO with the pointer", header.ICMPv4ParamProblem, 0, header.ParamProblemRest(9), quote,
			syscall.EPROTO, true, 9, "IcmpInParmProbs", false},
		{"whole datagram quoted", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, inner,
			syscall.ECONNREFUSED, true, 0, "IcmpInDestUnreachs", false},
		{"quote shorter than header + 8", header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, inner[:27],
			0, false, 0, "IcmpInErrors", true},
		{"unknown unreachable code", header.ICMPv4DstUnreachable, 16, 0, quote, 0, false, 0, "IcmpInErrors", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			msg := icmpMsg(tc.typ, tc.code, tc.rest, tc.quote)
			tn.rcv(1, pkt{src: "10.1.0.9", dst: "10.1.0.1", proto: header.ProtoICMP, payload: msg}.bytes())
			if tn.counter(tc.wantCount) != 1 {
				t.Fatalf("%s not counted: %v", tc.wantCount, tn.l.Counters())
			}
			if tc.noDelivery {
				if len(tn.errs) != 0 {
					t.Fatalf("delivered %+v", tn.errs)
				}
				return
			}
			if len(tn.errs) != 1 {
				t.Fatalf("Err called %d times", len(tn.errs))
			}
			e := tn.errs[0]
			want := header.ICMPError{Type: tc.typ, Code: tc.code, Errno: tc.wantErrno, Hard: tc.wantHard, Info: tc.wantInfo}
			if e.ICMPError != want {
				t.Fatalf("Err(%+v), want %+v", e.ICMPError, want)
			}
			if !bytes.Equal(e.inner, tc.quote) {
				t.Fatalf("Err saw %x, want the quoted datagram %x", e.inner, tc.quote)
			}
			if len(tn.take()) != 0 {
				t.Fatal("answered an ICMP error")
			}
		})
	}
}

// RFC 1122 §3.2.2: no ICMP error about an ICMP error, a non-first
// fragment, a broadcast or an invalid source.
func TestICMPErrorNeverList(t *testing.T) {
	errMsg := icmpMsg(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0, make([]byte, 28))
	for _, tc := range []struct {
		name string
		p    pkt
		bcst bool // arrives as a link-layer broadcast
		want int
	}{
		{"control: unknown protocol", pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: 99, payload: udpish(8)}, false, 1},
		{"about an ICMP error", pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoICMP, payload: errMsg}, false, 0},
		{"about a link-layer broadcast", pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: 99, payload: udpish(8)}, true, 0},
		{"about a directed broadcast", pkt{src: "10.1.0.5", dst: "10.1.0.255", proto: 99, payload: udpish(8)}, false, 0},
		{"from 0.0.0.0", pkt{src: "0.0.0.0", dst: "255.255.255.255", proto: 99, payload: udpish(8)}, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tn := newTestNet(t)
			tn.l.SetRPFilter(1, false)
			if tc.bcst {
				tn.rcvFrame(1, header.BroadcastMAC, tc.p.bytes())
			} else {
				tn.rcv(1, tc.p.bytes())
			}
			if got := len(tn.take()); got != tc.want {
				t.Fatalf("sent %d ICMP errors, want %d", got, tc.want)
			}
		})
	}
	// A non-first fragment: SendICMPError directly (as udp would).
	tn := newTestNet(t)
	skb := buf.FromBytes(buf.MaxHeadroom, pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: 99, off: 8, payload: udpish(8)}.bytes())
	skb.SetNetworkHeader()
	tn.l.SendICMPError(skb, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0)
	skb.Consume()
	if len(tn.take()) != 0 {
		t.Fatal("ICMP error about a non-first fragment")
	}
}

// RFC 1812 §4.3.2.8: ICMP errors are rate-limited by a token bucket.
func TestICMPRateLimit(t *testing.T) {
	tn := newTestNet(t, func(c *Config) { c.ICMPRateLimit = 2; c.ICMPRateBurst = 5 })
	unknown := pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: 99, payload: udpish(8)}.bytes()
	for i := 0; i < 10; i++ {
		tn.rcv(1, unknown)
	}
	if got := len(tn.take()); got != 5 {
		t.Fatalf("burst: sent %d, want 5", got)
	}
	if tn.counter("IcmpOutRateLimitGlobal") != 5 || tn.l.Stats().ICMP.OutRateLimited != 5 {
		t.Fatalf("OutRateLimited %d", tn.counter("IcmpOutRateLimitGlobal"))
	}
	tn.clk.Advance(time.Second) // 2 tokens
	for i := 0; i < 5; i++ {
		tn.rcv(1, unknown)
	}
	if got := len(tn.take()); got != 2 {
		t.Fatalf("after 1 s at 2/s: sent %d, want 2", got)
	}
	// Echo replies are not rate-limited (not in icmp_ratemask).
	req := icmpMsg(header.ICMPv4Echo, 0, header.EchoRest(1, 1), nil)
	for i := 0; i < 10; i++ {
		tn.rcv(1, pkt{src: "10.1.0.5", dst: "10.1.0.1", proto: header.ProtoICMP, payload: req}.bytes())
	}
	if got := len(tn.take()); got != 10 {
		t.Fatalf("echo replies limited: %d of 10", got)
	}
}
