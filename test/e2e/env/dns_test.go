package env

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestDNSServerOverLoopback: the test resolver answers A queries over UDP
// and TCP, NXDOMAIN for other names, SERVFAIL for an unparsable question,
// and ignores what is too short to carry an ID.
func TestDNSServerOverLoopback(t *testing.T) {
	want := netip.MustParseAddr("192.0.2.7")
	// Port 0 would give UDP and TCP different ports: start once to learn a
	// free UDP port, then again on it for both.
	s, err := StartDNSServer(netip.MustParseAddrPort("127.0.0.1:0"), map[string]netip.Addr{"Known.Test.": want})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	port := s.udp.LocalAddr().(*net.UDPAddr).Port
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	if s, err = StartDNSServer(addr, map[string]netip.Addr{"Known.Test.": want}); err != nil {
		t.Skipf("port %d taken meanwhile: %v", port, err)
	}
	defer s.Close()

	for _, tc := range []struct {
		network, name string
		want          netip.Addr
		wantErr       string
	}{
		{"udp4", "known.test", want, ""},
		{"tcp4", "KNOWN.test.", want, ""},
		{"udp4", "other.test", netip.Addr{}, "RCODE 3"},
		{"tcp4", "other.test", netip.Addr{}, "RCODE 3"},
	} {
		t.Run(tc.network+"/"+tc.name, func(t *testing.T) {
			c, err := net.Dial(tc.network, addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := LookupA(c, tc.name, 77, 2*time.Second)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("LookupA(%q) = %v, %v; want an error with %q", tc.name, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("LookupA(%q) = %v, %v; want %v", tc.name, got, err, tc.want)
			}
		})
	}
	if s.UDPQueries.Load() != 2 || s.TCPQueries.Load() != 2 {
		t.Fatalf("queries counted UDP %d TCP %d, want 2 and 2", s.UDPQueries.Load(), s.TCPQueries.Load())
	}

	// Malformed: a header claiming a question that is not there → SERVFAIL.
	c, err := net.Dial("udp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad := []byte{0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, 'a'}
	c.Write(bad)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 512)
	n, err := c.Read(b)
	if err != nil || n < dnsHeaderLen || b[3]&0x0f != dnsRcodeFail || !bytes.Equal(b[:2], bad[:2]) {
		t.Fatalf("malformed query: answer % x, %v; want SERVFAIL with the query's ID", b[:n], err)
	}
	if _, err := ParseAAnswer(b[:n], 9); err == nil {
		t.Fatal("ParseAAnswer accepted a SERVFAIL")
	}
	// Too short to carry an ID: no answer.
	c.Write([]byte{1, 2, 3})
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(b); err == nil {
		t.Fatalf("a 3-byte query was answered: % x", b[:n])
	}
}

// TestParseAAnswerRejectsTruncated: every truncation of a good answer is
// an error, never a panic.
func TestParseAAnswerRejectsTruncated(t *testing.T) {
	s := &DNSServer{answers: map[string]netip.Addr{"a.test": netip.MustParseAddr("192.0.2.1")}}
	q, err := BuildAQuery(5, "a.test")
	if err != nil {
		t.Fatal(err)
	}
	resp := s.answer(q)
	if a, err := ParseAAnswer(resp, 5); err != nil || a != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("full answer: %v %v", a, err)
	}
	for i := 0; i < len(resp); i++ {
		if _, err := ParseAAnswer(resp[:i], 5); err == nil {
			t.Fatalf("answer truncated to %d bytes parsed", i)
		}
	}
	if _, err := ParseAAnswer(resp, 6); err == nil {
		t.Fatal("answer to another ID accepted")
	}
	if _, err := BuildAQuery(1, "a..b"); err == nil {
		t.Fatal("empty label accepted")
	}
}
