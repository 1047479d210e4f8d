package capture_test

import (
	"errors"
	"testing"

	"github.com/cni-userstack/cni-userstack/netstack/capture"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

var (
	macA = header.MAC{0x02, 0, 0, 0, 0, 0xa}
	macB = header.MAC{0x02, 0, 0, 0, 0, 0xb}
)

func eth() *stacktest.Builder { return stacktest.Frame().Eth(macA, macB) }

// Frames of the table below.
var (
	tcp80    = eth().IPv4("10.1.0.5", "192.0.2.7").TCP(40000, 80).Bytes()
	udp53    = eth().IPv4("10.1.0.5", "10.1.0.1").UDP(5353, 53).Payload(make([]byte, 30)).Bytes()
	echo     = eth().IPv4("10.1.0.5", "10.1.0.1").Echo(7, 1).Bytes()
	arpReq   = stacktest.ARPRequest(macA, "10.1.0.5", "10.1.0.1").Bytes()
	fragment = eth().IPv4("10.1.0.5", "192.0.2.7").Fragment(9, 1480, false).Proto(header.ProtoTCP).Payload(make([]byte, 40)).Bytes()
)

func TestFilterMatches(t *testing.T) {
	for _, c := range []struct {
		expr  string
		frame []byte
		dir   capture.Direction
		want  bool
	}{
		{"", tcp80, capture.Inbound, true},
		{"tcp", tcp80, capture.Inbound, true},
		{"tcp", udp53, capture.Inbound, false},
		{"udp", udp53, capture.Inbound, true},
		{"icmp", echo, capture.Inbound, true},
		{"icmp", tcp80, capture.Inbound, false},
		{"ip", arpReq, capture.Inbound, false},
		{"arp", arpReq, capture.Inbound, true},
		{"host 10.1.0.1", arpReq, capture.Inbound, true}, // ARP target, as tcpdump's "host" does
		{"src host 10.1.0.1", arpReq, capture.Inbound, false},
		{"dst host 10.1.0.1", arpReq, capture.Inbound, true},
		{"host 192.0.2.7", tcp80, capture.Inbound, true},
		{"src host 192.0.2.7", tcp80, capture.Inbound, false},
		{"dst host 192.0.2.7", tcp80, capture.Inbound, true},
		{"net 10.1.0.0/24", tcp80, capture.Inbound, true},
		{"dst net 10.1.0.0/24", tcp80, capture.Inbound, false},
		{"port 80", tcp80, capture.Inbound, true},
		{"port 80", fragment, capture.Inbound, false}, // no ports in a later fragment
		{"src port 80", tcp80, capture.Inbound, false},
		{"dst port 80", tcp80, capture.Inbound, true},
		{"udp port 80", tcp80, capture.Inbound, false},
		{"tcp dst port 80", tcp80, capture.Inbound, true},
		{"portrange 50-60", udp53, capture.Inbound, true},
		{"tcp portrange 50-60", udp53, capture.Inbound, false},
		{"port 53 and udp", udp53, capture.Inbound, true},
		{"port 53 && tcp", udp53, capture.Inbound, false},
		{"tcp or udp", udp53, capture.Inbound, true},
		{"tcp || icmp", udp53, capture.Inbound, false},
		{"not arp", tcp80, capture.Inbound, true},
		{"!arp", arpReq, capture.Inbound, false},
		{"not (tcp or udp)", echo, capture.Inbound, true},
		{"host 10.1.0.5 and not (port 53 or icmp)", udp53, capture.Inbound, false},
		{"host 10.1.0.5 and not (port 53 or icmp)", tcp80, capture.Inbound, true},
		{"ip proto 6", tcp80, capture.Inbound, true},
		{"proto udp", udp53, capture.Inbound, true},
		{"ether proto 0x0806", arpReq, capture.Inbound, true},
		{"ether host 02:00:00:00:00:0a", tcp80, capture.Inbound, true},
		{"ether dst host 02:00:00:00:00:0a", tcp80, capture.Inbound, false},
		{"inbound", tcp80, capture.Inbound, true},
		{"outbound", tcp80, capture.Inbound, false},
		{"outbound and tcp", tcp80, capture.Outbound, true},
		{"len > 100", tcp80, capture.Inbound, false},
		{"less 100", tcp80, capture.Inbound, true},
		{"greater 54", tcp80, capture.Inbound, true},
		{"len = 42", arpReq, capture.Inbound, true},
		{"tcp or udp and icmp", tcp80, capture.Inbound, true}, // and binds tighter
		{"(tcp or udp) and icmp", tcp80, capture.Inbound, false},
		{"icmp", []byte{1, 2, 3}, capture.Inbound, false},
		{"not icmp", nil, capture.Inbound, true},
	} {
		f, err := capture.Parse(c.expr)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.expr, err)
			continue
		}
		if got := f.Match(c.frame, c.dir); got != c.want {
			t.Errorf("%q matches %x (%v): %v, want %v", c.expr, c.frame, c.dir, got, c.want)
		}
	}
}

func TestFilterErrors(t *testing.T) {
	for _, expr := range []string{
		"tcp and", "or udp", "host", "host 10.0.0.300", "host ::1", "net 10.0.0.1/24", "net 10.0.0.0",
		"port 70000", "port -1", "port http", "portrange 5-1", "portrange 5", "(tcp", "tcp)", "foo",
		"tcp & udp", "tcp | udp", "len 5", "len < x", "ether host zz", "src tcp", "tcp host 1.2.3.4",
		"host 10.0.0.1 or 10.0.0.2", "ip proto 256", "\x00", "héllo",
	} {
		if f, err := capture.Parse(expr); err == nil {
			t.Errorf("Parse(%q) = %q, want an error", expr, f)
		} else if !errors.Is(err, capture.ErrFilter) {
			t.Errorf("Parse(%q): %v does not wrap ErrFilter", expr, err)
		}
	}
	deep := ""
	for i := 0; i < capture.MaxFilterDepth+1; i++ {
		deep += "not "
	}
	if _, err := capture.Parse(deep + "tcp"); err == nil {
		t.Errorf("a filter nested %d deep parsed", capture.MaxFilterDepth+1)
	}
}

func TestFilterCanonicalForm(t *testing.T) {
	for expr, want := range map[string]string{
		"tcp port 80 and host 1.2.3.4":  "(tcp port 80 and host 1.2.3.4)",
		"ip proto 17 || ! arp":          "(udp or not arp)",
		"src net 10.0.0.0/8 && less 60": "(src net 10.0.0.0/8 and len <= 60)",
		"  ":                            "",
	} {
		f, err := capture.Parse(expr)
		if err != nil {
			t.Fatalf("Parse(%q): %v", expr, err)
		}
		if got := f.String(); got != want {
			t.Errorf("Parse(%q).String() = %q, want %q", expr, got, want)
		}
	}
}

// FuzzFilter: no expression panics the parser, a parsed filter's
// canonical form parses to itself, and matching any bytes never panics and
// agrees between the two.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{"tcp port 80", "not (arp or icmp) and src net 10.0.0.0/8", "ether host 02:00:00:00:00:01",
		"len >= 0x40", "portrange 1-1024 || outbound", "ip proto 255 and greater 1"} {
		f.Add(s, tcp80)
		f.Add(s, arpReq)
		f.Add(s, fragment)
	}
	f.Fuzz(func(t *testing.T, expr string, frame []byte) {
		flt, err := capture.Parse(expr)
		if err != nil {
			return
		}
		again, err := capture.Parse(flt.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", flt.String(), expr, err)
		}
		if again.String() != flt.String() {
			t.Fatalf("canonical form unstable: %q → %q", flt.String(), again.String())
		}
		for _, d := range []capture.Direction{capture.Inbound, capture.Outbound} {
			if flt.Match(frame, d) != again.Match(frame, d) {
				t.Fatalf("%q and its canonical form %q disagree on %x", expr, flt.String(), frame)
			}
		}
	})
}
