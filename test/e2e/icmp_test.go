package e2e

// End-to-end tests of ICMP in proxy mode: echo to host addresses whatever
// net.ipv4.ping_group_range says (a ping socket where the host allows
// one, the daemon's raw ICMP socket where it does not), and ICMP errors
// that quote the datagram the pod sent. Each test has its own proxyEnv
// (daemon, stack netns, uplink, pod range, host test link), removed in
// t.Cleanup.

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/test/e2e/env"
)

const pingGroupRange = "/proc/sys/net/ipv4/ping_group_range"

// setPingGroupRange writes v to net.ipv4.ping_group_range (of the host
// netns, where the daemon opens its sockets) and restores the value it
// found in t.Cleanup, on failure too. The sysctl is the node's: tests
// that set it must not run in parallel.
func setPingGroupRange(t *testing.T, v string) {
	t.Helper()
	saved, err := os.ReadFile(pingGroupRange)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(pingGroupRange, saved, 0o644); err != nil {
			t.Errorf("restore %s to %q: %v", pingGroupRange, saved, err)
		}
	})
	if err := os.WriteFile(pingGroupRange, []byte(v), 0o644); err != nil {
		t.Fatalf("write %q to %s: %v", v, pingGroupRange, err)
	}
}

// pingSized runs `ping -s size -c count` from the pod and returns how
// many replies of the full size came back, with ping's output.
func pingSized(t *testing.T, p *pod, addr string, size, count int) (int, string) {
	t.Helper()
	out, _ := nsRun(p.ns, "ping", "-n", "-c", fmt.Sprint(count), "-W", "2", "-i", "0.2", "-s", fmt.Sprint(size), addr)
	return strings.Count(out, fmt.Sprintf("%d bytes from %s", size+header.ICMPv4MinSize, addr)), out
}

// TestProxyICMP: the pod pings its gateway (the stack answers) and a host
// address, with 56- and 3000-byte payloads (the pod fragments the large
// one, the stack reassembles it, the reply is fragmented back and the pod
// reassembles it), whatever net.ipv4.ping_group_range says: with "1 0"
// (the kernel's default, ping sockets refused to everyone) the daemon
// relays through its raw ICMP socket and counts it in echoRawRelayed;
// with "0 0" (root's group admitted) through ping sockets. An echo to a
// host address that never answers ARP comes back as host unreachable
// quoting the pod's request. The sysctl is restored afterwards, on
// failure too.
func TestProxyICMP(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	p := e.addPod()
	hostA := e.host.Local[0].String()
	for _, tc := range []struct {
		groups string
		raw    bool
	}{{"1 0", true}, {"0 0", false}} {
		t.Run("ping_group_range="+tc.groups, func(t *testing.T) {
			setPingGroupRange(t, tc.groups)
			e.ping(p, p.gateway().String())
			before := e.proxyStats()
			for _, size := range []int{56, 3000} {
				if n, out := pingSized(t, p, hostA, size, 3); n < 2 {
					t.Fatalf("ping -s %d %s: %d of 3 replies\n%s\nproxy stats %s", size, hostA, n, out, statsJSON(e.proxyStats()))
				}
			}
			after := e.proxyStats()
			relayed, raw := after.EchoRelayed-before.EchoRelayed, after.EchoRawRelayed-before.EchoRawRelayed
			if relayed < 6 || after.EchoDenied != before.EchoDenied {
				t.Fatalf("6 pings to %s: %d relayed, echoDenied %d → %d", hostA, relayed, before.EchoDenied, after.EchoDenied)
			}
			if tc.raw && raw != relayed || !tc.raw && raw != 0 {
				t.Fatalf("%d of %d relayed through the raw socket, want %v: %s", raw, relayed, tc.raw, statsJSON(after))
			}
			t.Logf("ping_group_range %q: %d echoes relayed, %d through the raw ICMP socket", tc.groups, relayed, raw)

			// An address of the host's that never answers ARP: the host
			// kernel reports host unreachable for the relayed request,
			// and the pod gets it about its own request, quoted as sent.
			echo := make([]byte, header.ICMPv4MinSize+24)
			header.ICMPv4(echo).Encode(header.ICMPv4Fields{Type: header.ICMPv4Echo, RestOfHeader: header.EchoRest(0x5e5e, 1)})
			copy(echo[header.ICMPv4MinSize:], "nobody answers this one")
			header.ICMPv4(echo).SetChecksum()
			req := env.IPv4Datagram(p.ip, e.host.Blackhole, header.ProtoICMP, 0x6006, 64, false, nil, echo)
			var got []byte
			err := do(p.ns, func() error {
				var err error
				got, err = env.RawICMPExchange(req, func(ip header.IPv4, m header.ICMPv4) bool {
					return m.Type() == header.ICMPv4DstUnreachable && quotes(m, req)
				}, 10*time.Second)
				return err
			})
			if err != nil {
				t.Fatalf("echo to %v (never answers ARP): %v\nproxy stats %s", e.host.Blackhole, err, statsJSON(e.proxyStats()))
			}
			m := header.ICMPv4(header.IPv4(got).Payload())
			q := m.Payload()
			if m.Code() != header.ICMPv4HostUnreachable || len(q) < len(req) || !bytes.Equal(maskTTL(q[:len(req)]), maskTTL(req)) {
				t.Fatalf("unreachable code %d quoting\n% x\nwant host unreachable quoting the pod's request\n% x", m.Code(), q, req)
			}
			t.Logf("host unreachable from %v quotes the pod's request", header.IPv4(got).Src())
			if st := e.proxyStats(); st.EchoICMPErrors == 0 {
				t.Fatalf("echoICMPErrors not counted: %s", statsJSON(st))
			}
		})
	}
}

// TestProxyUDPErrorQuotesDatagram: a pod sends a UDP datagram with a
// chosen identification, DF and an options field to a closed port of a
// host address; the ICMP port unreachable it receives (from that address)
// quotes the datagram byte for byte, TTL and header checksum aside (RFC
// 792, RFC 1122 §3.2.2). The datagram is crafted with a raw socket in the
// pod's netns, so the test knows every byte the pod sent.
func TestProxyUDPErrorQuotesDatagram(t *testing.T) {
	e := newProxyEnv(t, nil, nil)
	p := e.addPod()
	hostA := e.host.Local[0]
	closed := freePort(t)

	payload := []byte("is anyone listening on this port?")
	u := make([]byte, header.UDPSize+len(payload))
	header.UDP(u).Encode(header.UDPFields{SrcPort: 41234, DstPort: uint16(closed), Length: uint16(len(u))})
	copy(u[header.UDPSize:], payload)
	header.UDP(u).SetChecksum(p.ip, hostA)
	opts := []byte{header.IPv4OptNOP, header.IPv4OptNOP, header.IPv4OptNOP, header.IPv4OptEOL}
	dg := env.IPv4Datagram(p.ip, hostA, header.ProtoUDP, 0xbeef, 64, true, opts, u)

	var got []byte
	err := do(p.ns, func() error {
		var err error
		got, err = env.RawICMPExchange(dg, func(ip header.IPv4, m header.ICMPv4) bool {
			return m.Type() == header.ICMPv4DstUnreachable && quotes(m, dg)
		}, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("UDP to %v:%d: %v\nproxy stats %s", hostA, closed, err, statsJSON(e.proxyStats()))
	}
	ip := header.IPv4(got)
	m := header.ICMPv4(ip.Payload())
	if m.Code() != header.ICMPv4PortUnreachable || ip.Src() != hostA {
		t.Fatalf("unreachable code %d from %v, want port unreachable (3) from %v", m.Code(), ip.Src(), hostA)
	}
	q := m.Payload()
	if len(q) < len(dg) {
		t.Fatalf("quote of %d bytes, want the whole %d-byte datagram", len(q), len(dg))
	}
	q = q[:len(dg)]
	if !bytes.Equal(maskTTL(q), maskTTL(dg)) {
		t.Fatalf("quote\n% x\nwant the pod's datagram (TTL and checksum aside)\n% x", q, dg)
	}
	t.Logf("port unreachable from %v quotes the pod's datagram (ID %#x, DF, options %x); TTL and checksum identical too: %v",
		ip.Src(), header.IPv4(q).ID(), opts, bytes.Equal(q, dg))
	if st := e.proxyStats(); st.UDPPortUnreachables < 1 || st.UDPICMPErrors < 1 {
		t.Fatalf("not counted: %s", statsJSON(st))
	}
}

// maskTTL is an IPv4 datagram with its TTL (byte 8) and header checksum
// (bytes 10, 11) zeroed: what a quote keeps whether or not it was routed.
func maskTTL(b []byte) []byte {
	c := append([]byte(nil), b...)
	c[8], c[10], c[11] = 0, 0, 0
	return c
}
