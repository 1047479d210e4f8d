package main

import (
	"bytes"
	"testing"
)

// ipSum is the IPv4 header checksum computed from scratch (RFC 791 §3.1).
func ipSum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// frame is a vnet header, an Ethernet header of type typ and a 20-byte
// IPv4 header with ttl and a valid checksum.
func frame(typ uint16, ttl byte) []byte {
	f := make([]byte, vnetHdrLen+ethHdrLen+20+8)
	e := f[vnetHdrLen:]
	copy(e[0:12], []byte{1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2})
	e[12], e[13] = byte(typ>>8), byte(typ)
	ip := e[ethHdrLen:]
	ip[0], ip[2], ip[3], ip[8], ip[9] = 0x45, 0, 28, ttl, 6
	copy(ip[12:20], []byte{10, 0, 0, 2, 192, 168, 1, 10})
	c := ipSum(ip[:20])
	ip[10], ip[11] = byte(c>>8), byte(c)
	return f
}

func TestRouteRewritesTTLChecksumAndMACs(t *testing.T) {
	d := &dir{src: [6]byte{0xa, 0, 0, 0, 0, 1}, dst: [6]byte{0xb, 0, 0, 0, 0, 2}, c: &counters{}}
	// Every TTL whose decrement carries in the one's complement sum.
	for ttl := 2; ttl <= 255; ttl++ {
		f := frame(0x0800, byte(ttl))
		if !d.route(f) {
			t.Fatalf("TTL %d: dropped", ttl)
		}
		ip := f[vnetHdrLen+ethHdrLen:]
		if ip[8] != byte(ttl-1) {
			t.Fatalf("TTL %d → %d", ttl, ip[8])
		}
		if s := ipSum(ip[:20]); s != 0 {
			t.Fatalf("TTL %d: header checksum does not verify (sum %#x)", ttl, s)
		}
		e := f[vnetHdrLen:]
		if !bytes.Equal(e[0:6], d.dst[:]) || !bytes.Equal(e[6:12], d.src[:]) {
			t.Fatalf("MACs %x", e[:12])
		}
	}
	for _, c := range []struct {
		f    []byte
		what string
		n    func() uint64
	}{
		{frame(0x0800, 1), "TTL 1", d.c.ttl.Load},
		{frame(0x0800, 0), "TTL 0", d.c.ttl.Load},
		{frame(0x0806, 64), "ARP", d.c.notIPv4.Load},
		{frame(0x86dd, 64), "IPv6", d.c.notIPv4.Load},
		{frame(0x0800, 64)[:vnetHdrLen+ethHdrLen+10], "runt", d.c.runt.Load},
	} {
		before := c.n()
		if d.route(c.f) {
			t.Errorf("%s: forwarded", c.what)
		}
		if c.n() != before+1 {
			t.Errorf("%s: not counted", c.what)
		}
	}
}
