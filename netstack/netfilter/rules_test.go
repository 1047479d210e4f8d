package netfilter_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

func synTo(dport uint16) []byte {
	return stacktest.IPv4("10.0.1.1", "192.0.2.50").TCP(40000, dport).Flags(header.SYN).Seq(1).Window(1000).Bytes()
}

// Every match, each with a packet it must match and one it must not
// (xt_* match semantics), as a FORWARD rule that drops what matches.
func TestMatches(t *testing.T) {
	udp := stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(5000, 53).Bytes()
	echo := stacktest.IPv4("10.0.1.1", "192.0.2.50").Echo(1, 1).Bytes()
	unreach := stacktest.IPv4("10.0.1.1", "192.0.2.50").ICMP(3, 13, 0).Payload(udp[:28]).Bytes()
	big := stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(5000, 53).Payload(make([]byte, 1000)).Bytes()
	for _, tc := range []struct {
		name  string
		rule  string
		hit   []byte
		miss  []byte
		reply bool // send miss in the reply direction (up0 → eth0)
	}{
		{"input link", "-i eth0", udp, udp, true},
		{"input link wildcard", "-i eth+", udp, udp, true},
		{"output link", "-o up0", udp, udp, true},
		{"output link wildcard", "-o up+", udp, udp, true},
		{"negated link", "! -i up0", udp, udp, true},
		{"source prefix", "-s 10.0.1.0/24", udp, stacktest.IPv4("10.0.9.1", "192.0.2.50").UDP(1, 2).Bytes(), false},
		{"source host", "-s 10.0.1.1", udp, stacktest.IPv4("10.0.1.2", "192.0.2.50").UDP(1, 2).Bytes(), false},
		{"negated source", "! -s 10.0.9.0/24", udp, stacktest.IPv4("10.0.9.1", "192.0.2.50").UDP(1, 2).Bytes(), false},
		{"destination prefix", "-d 192.0.2.0/24", udp, stacktest.IPv4("10.0.1.1", "198.51.100.1").UDP(1, 2).Bytes(), false},
		{"negated destination", "! -d 198.51.100.0/24", udp, stacktest.IPv4("10.0.1.1", "198.51.100.1").UDP(1, 2).Bytes(), false},
		{"protocol", "-p udp", udp, synTo(80), false},
		{"protocol number", "-p 1", echo, udp, false},
		{"negated protocol", "! -p tcp", udp, synTo(80), false},
		{"destination port", "-p tcp --dport 80", synTo(80), synTo(81), false},
		{"destination port range", "-p tcp --dport 8000:8100", synTo(8080), synTo(8101), false},
		{"source port range", "-p udp --sport 4000:6000", udp, stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(6001, 53).Bytes(), false},
		{"negated port", "-p tcp ! --dport 22", synTo(80), synTo(22), false},
		{"icmp type", "-p icmp --icmp-type echo-request", echo, unreach, false},
		{"icmp type/code", "-p icmp --icmp-type 3/13", unreach, echo, false},
		{"tcp flags", "-p tcp --tcp-flags SYN,ACK SYN", synTo(80),
			stacktest.IPv4("10.0.1.1", "192.0.2.50").TCP(40001, 80).Flags(header.SYN | header.ACK).Bytes(), false},
		{"syn", "-p tcp --syn", synTo(80),
			stacktest.IPv4("10.0.1.1", "192.0.2.50").TCP(40002, 80).Flags(header.ACK).Bytes(), false},
		{"ctstate new", "-m conntrack --ctstate NEW", udp, stacktest.IPv4("10.0.1.1", "192.0.2.50").EchoReply(99, 1).Bytes(), false},
		{"ctstate invalid", "--ctstate INVALID",
			stacktest.IPv4("10.0.1.1", "192.0.2.50").EchoReply(99, 1).Bytes(), udp, false},
		{"ctstate related", "--ctstate RELATED", nil, udp, false},
		{"mark", "--mark 0x0/0xff", udp, nil, false},
		{"length", "-m length --length 0:100", udp, big, false},
		{"negated length", "! --length 0:100", big, udp, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "*filter\n-A FORWARD "+tc.rule+" -j DROP\n", conntrack.Config{})
			hits := uint64(0)
			if tc.hit != nil {
				if v, _ := r.outb(tc.hit); !v.Dropped() || v.Reason() != netfilter.DropPolicy {
					t.Fatalf("%q should match: %+v", tc.rule, v)
				}
				hits++
			}
			if tc.miss != nil {
				send := r.outb
				if tc.reply {
					send = r.backb
				}
				if v, _ := send(tc.miss); !v.Accepted() {
					t.Fatalf("%q should not match: %+v", tc.rule, v)
				}
			}
			if p, b := r.counters("filter", "FORWARD", 0); p != hits || (hits > 0 && b != uint64(len(tc.hit))) {
				t.Fatalf("counters %d/%d, want %d packets of %d bytes", p, b, hits, len(tc.hit))
			}
		})
	}
}

func TestCtStateEstablishedAndRelated(t *testing.T) {
	r := newRig(t, `*filter
:FORWARD DROP
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i eth0 --ctstate NEW -j ACCEPT
`, conntrack.Config{})
	q := stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(5000, 53).Bytes()
	if v, _ := r.outb(q); !v.Accepted() {
		t.Fatal("new flow from inside refused")
	}
	if v, _ := r.backb(stacktest.IPv4("192.0.2.50", "10.0.1.1").UDP(53, 5000).Bytes()); !v.Accepted() {
		t.Fatal("reply refused")
	}
	errPkt := stacktest.IPv4("192.0.2.50", "10.0.1.1").ICMP(3, 3, 0).Payload(q[:28]).Bytes()
	if v, _ := r.backb(errPkt); !v.Accepted() {
		t.Fatal("related ICMP error refused")
	}
	if v, _ := r.backb(stacktest.IPv4("192.0.2.50", "10.0.1.1").UDP(53, 5001).Bytes()); !v.Dropped() {
		t.Fatal("new flow from outside accepted")
	}
	if p, _ := r.counters("filter", "FORWARD", 0); p != 2 {
		t.Fatalf("established/related counter %d", p)
	}
	if p, _ := r.nf.Ruleset().Chain("filter", "FORWARD").PolicyCounters(); p != 1 {
		t.Fatalf("policy counter %d", p)
	}
}

// Jumps, RETURN, policies and counters (ipt_do_table).
func TestChainsJumpReturnPolicy(t *testing.T) {
	r := newRig(t, `*filter
:FORWARD DROP
:web -
:audit -
-A FORWARD -p tcp -j web
-A FORWARD -p udp -j ACCEPT
-A web -j audit
-A web -p tcp --dport 22 -j RETURN
-A web -j ACCEPT
-A audit -p tcp --dport 80 -j ACCEPT
-A audit -j RETURN
-A audit -j DROP
`, conntrack.Config{})
	for _, tc := range []struct {
		pkt    []byte
		accept bool
	}{
		{synTo(80), true},  // audit accepts
		{synTo(443), true}, // audit returns, web accepts
		{synTo(22), false}, // web returns to FORWARD, policy drops
		{stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(1, 2).Bytes(), true},
		{stacktest.IPv4("10.0.1.1", "192.0.2.50").Echo(1, 1).Bytes(), false},
	} {
		if v, _ := r.outb(tc.pkt); v.Accepted() != tc.accept {
			t.Errorf("%x: accepted %v, want %v", tc.pkt[:24], v.Accepted(), tc.accept)
		}
	}
	want := map[string][]uint64{"FORWARD": {3, 1}, "web": {3, 1, 1}, "audit": {1, 2, 0}}
	for chain, w := range want {
		for i, n := range w {
			if p, _ := r.counters("filter", chain, i); p != n {
				t.Errorf("%s rule %d: %d packets, want %d", chain, i+1, p, n)
			}
		}
	}
	if p, _ := r.nf.Ruleset().Chain("filter", "FORWARD").PolicyCounters(); p != 2 {
		t.Errorf("policy counted %d", p)
	}
	if !strings.Contains(r.nf.Ruleset().String(), "[1:40] -A web -p tcp --dport 22 -j RETURN") &&
		!strings.Contains(r.nf.Ruleset().String(), "-A web -p tcp --dport 22 -j RETURN") {
		t.Errorf("listing:\n%s", r.nf.Ruleset())
	}
}

// REJECT answers with the configured ICMP code (RFC 1812 §5.2.7.1) and
// drops; the TCP reset form is shown end to end in topology_test.go.
func TestRejectICMP(t *testing.T) {
	for _, tc := range []struct {
		with string
		code uint8
	}{
		{"", header.ICMPv4PortUnreachable},
		{"--reject-with icmp-port-unreachable", header.ICMPv4PortUnreachable},
		{"--reject-with icmp-host-unreachable", header.ICMPv4HostUnreachable},
		{"--reject-with icmp-net-unreachable", header.ICMPv4NetUnreachable},
		{"--reject-with icmp-proto-unreachable", header.ICMPv4ProtoUnreachable},
		{"--reject-with icmp-admin-prohibited", header.ICMPv4AdminProhibited},
	} {
		r := newRig(t, "-A FORWARD -p udp -j REJECT "+tc.with, conntrack.Config{})
		v, _ := r.outb(stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(1, 2).Bytes())
		if !v.Dropped() || v.Reason() != netfilter.DropReject {
			t.Fatalf("%q: %+v", tc.with, v)
		}
		if len(r.sender.sent) != 1 || r.sender.sent[0] != (icmpSent{header.ICMPv4DstUnreachable, tc.code}) {
			t.Fatalf("%q: sent %+v", tc.with, r.sender.sent)
		}
		if r.nf.Conntrack().Len() != 0 {
			t.Fatalf("%q: the rejected flow's unconfirmed entry was kept", tc.with)
		}
	}
}

// LOG counts every packet and writes a structured line, at most LogBurst
// at once and LogRate per second after (rate-limited on the stack clock).
func TestLogRateLimited(t *testing.T) {
	r := newRig(t, `-A FORWARD -p udp -j LOG --log-prefix "fw: "`+"\n-A FORWARD -p udp -j DROP", conntrack.Config{})
	for i := 0; i < 25; i++ {
		if v, _ := r.outb(stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(uint16(1000+i), 53).Bytes()); !v.Dropped() {
			t.Fatal("LOG must not end evaluation")
		}
	}
	st := r.nf.Stats()
	if st.Logged != 25 || st.LogSuppressed != 5 {
		t.Fatalf("logged %d suppressed %d, want 25 and 5", st.Logged, st.LogSuppressed)
	}
	lines := strings.Count(r.logs.String(), "\n")
	if lines != 20 || !strings.Contains(r.logs.String(), `prefix="fw: "`) || !strings.Contains(r.logs.String(), "src=10.0.1.1") ||
		!strings.Contains(r.logs.String(), "dport=53") || !strings.Contains(r.logs.String(), "in=eth0 out=up0") {
		t.Fatalf("%d lines:\n%s", lines, r.logs)
	}
	r.clk.Advance(time.Second)
	r.outb(stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(3000, 53).Bytes())
	if strings.Count(r.logs.String(), "\n") != 21 {
		t.Fatal("the bucket did not refill")
	}
}

// MARK sets the mark (--set-xmark semantics) and later rules see it.
func TestMarkTarget(t *testing.T) {
	r := newRig(t, `*mangle
-A PREROUTING -p udp -j MARK --set-mark 0x5/0xf
-A FORWARD -j MARK --set-xmark 0x100/0x100
*filter
-A FORWARD --mark 0x105 -j DROP
`, conntrack.Config{})
	if v, _ := r.outb(stacktest.IPv4("10.0.1.1", "192.0.2.50").UDP(1, 2).Bytes()); !v.Dropped() {
		t.Fatal("mark 0x105 expected")
	}
	if v, _ := r.outb(synTo(80)); !v.Accepted() {
		t.Fatal("tcp got the udp mark")
	}
}

func TestHookPriorities(t *testing.T) {
	// The kernel's order: raw < conntrack < mangle < DNAT < filter < SNAT < confirm.
	order := []int{netfilter.PriConntrackDefrag, netfilter.PriRaw, netfilter.PriConntrack, netfilter.PriMangle,
		netfilter.PriNATDst, netfilter.PriFilter, netfilter.PriNATSrc, netfilter.PriConfirm}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Fatalf("priority %d not before %d", order[i-1], order[i])
		}
	}
}

// Bad rules are refused with the line and column of the problem.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		text, want string
	}{
		{"-A FORWARD -p tcp --dprt 80 -j ACCEPT", `line 1, column 19: unknown option "--dprt"`},
		{"\n-A FORWARD --dport 80 -j ACCEPT", "line 2, column 12: --dport needs -p tcp or -p udp before it"},
		{"-A FORWARD -s 10.0.0.300/8 -j DROP", `line 1, column 15: bad IPv4 prefix "10.0.0.300/8"`},
		{"-A FORWARD -p tcp --dport 90:80 -j DROP", `line 1, column 27: bad port range "90:80": range 90..80 is empty`},
		{"-A NOPE -j DROP", "line 1, column 4: no such chain: NOPE in table filter"},
		{"-A FORWARD -j nowhere", `line 1, column 15: jump to unknown chain "nowhere" in table filter`},
		{"-A FORWARD -p tcp", "line 1, column 1: rule without -j target"},
		{"*nat\n-A FORWARD -j MASQUERADE", "line 2, column 4: no such chain: FORWARD in table nat"},
		{"*filter\n-A FORWARD -j MASQUERADE", "line 2, column 15: filter FORWARD rule 1: target MASQUERADE is only valid in table nat"},
		{"*nat\n-A PREROUTING -j SNAT --to-source 1.2.3.4", "line 2, column 18: nat PREROUTING rule 1: target SNAT --to-source 1.2.3.4 is not valid at PREROUTING"},
		{"*nat\n-A OUTPUT -j DNAT", "line 2, column 14: DNAT needs --to-destination"},
		{"-A FORWARD -j REJECT --reject-with icmp-bogus", `line 1, column 36: unknown --reject-with "icmp-bogus" (icmp-port-unreachable, icmp-host-unreachable, icmp-net-unreachable, icmp-proto-unreachable, icmp-admin-prohibited, tcp-reset)`},
		{":a -\n:b -\n-A a -j b\n-A b -j a\n-A FORWARD -j a", "line 4, column 9: jump loop: b -> a comes back to a"},
		{"-A FORWARD -j LOG --log-prefix \"unterminated", "line 1, column 32: unterminated quoted string"},
		{"*raw", `line 1, column 1: unknown table "raw" (filter, nat, mangle)`},
		{":FORWARD MAYBE", `line 1, column 10: policy must be ACCEPT or DROP, not "MAYBE"`},
		{"-A FORWARD ! ! -s 1.2.3.4 -j DROP", "line 1, column 14: double negation"},
		{"-A FORWARD -i", "line 1, column 15: option -i needs an argument"},
		{"-A FORWARD -j MARK", "line 1, column 15: MARK needs --set-mark or --set-xmark"},
		{"-A FORWARD -p tcp --tcp-flags SYN,FOO SYN -j DROP", `line 1, column 31: unknown TCP flag "FOO" (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, ALL, NONE)`},
		{"-A FORWARD --ctstate NEW,OLD -j DROP", `line 1, column 22: unknown conntrack state "OLD" (NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED)`},
		{"-X FORWARD", `line 1, column 1: unknown command "-X" (expected *table, :CHAIN, -N, -P, -A or COMMIT)`},
		{"*mangle\n-A FORWARD -j DIVERT", "line 2, column 15: mangle FORWARD rule 1: target DIVERT is not valid at FORWARD"},
	} {
		_, err := netfilter.ParseRules(tc.text)
		var pe *netfilter.ParseError
		if !errors.As(err, &pe) || err.Error() != tc.want {
			t.Errorf("%q:\n got  %v\n want %s", tc.text, err, tc.want)
		}
	}
}

// The Go API builds the same rules as the text and Load checks them.
func TestGoAPI(t *testing.T) {
	r := newRig(t, "", conntrack.Config{})
	rs := netfilter.NewRuleset()
	if err := rs.NewChain("filter", "svc"); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rs.Append("filter", "FORWARD", &netfilter.Rule{Matches: []netfilter.Match{netfilter.ProtoMatch{Proto: header.ProtoTCP}}, Target: &netfilter.Jump{Chain: "svc"}}))
	must(rs.Append("filter", "svc", &netfilter.Rule{Matches: []netfilter.Match{netfilter.PortMatch{Dst: true, Min: 22, Max: 22}}, Target: &netfilter.Reject{With: netfilter.RejectAdminProhibited}}))
	must(rs.SetPolicy("filter", "FORWARD", netfilter.PolicyAccept))
	if err := rs.NewChain("filter", "svc"); !errors.Is(err, netfilter.ErrChainExist) {
		t.Fatalf("duplicate chain: %v", err)
	}
	if err := rs.Append("filter", "nope", &netfilter.Rule{Target: &netfilter.DropTarget{}}); !errors.Is(err, netfilter.ErrNoChain) {
		t.Fatalf("unknown chain: %v", err)
	}
	must(r.nf.Load(rs))
	if v, _ := r.outb(synTo(22)); !v.Dropped() || len(r.sender.sent) != 1 || r.sender.sent[0].code != header.ICMPv4AdminProhibited {
		t.Fatalf("ssh: %+v %+v", v, r.sender.sent)
	}
	bad := netfilter.NewRuleset()
	must(bad.Append("filter", "FORWARD", &netfilter.Rule{Target: &netfilter.Jump{Chain: "missing"}}))
	if err := r.nf.Load(bad); !errors.Is(err, netfilter.ErrNoChain) {
		t.Fatalf("bad jump loaded: %v", err)
	}
	if r.nf.Ruleset() != rs {
		t.Fatal("a refused ruleset replaced the running one")
	}
}

func TestParseRoundTrip(t *testing.T) {
	text := `*filter
:INPUT DROP
:FORWARD ACCEPT
:OUTPUT ACCEPT
:svc -
-A INPUT -i lo+ -j ACCEPT
-A INPUT ! -s 10.0.0.0/8 -p tcp --sport 1:1023 --dport 22 --tcp-flags SYN,ACK SYN -j svc
-A INPUT -p icmp --icmp-type 8/0 -j ACCEPT
-A INPUT --ctstate ESTABLISHED,RELATED --mark 0x1/0xff --length 0:1500 -j LOG --log-prefix "in "
-A svc -j REJECT --reject-with tcp-reset
-A FORWARD -o up+ -j RETURN
*nat
-A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 10.0.2.1:80
-A PREROUTING -p udp --dport 53 -j REDIRECT --to-ports 5353
-A POSTROUTING -o up0 -j MASQUERADE --to-ports 20000-30000
-A POSTROUTING -s 10.1.0.0/16 -j SNAT --to-source 192.0.2.1-192.0.2.9:1024-2047
*mangle
-A PREROUTING -p tcp ! -d 10.0.0.0/8 --ctstate NEW -j DIVERT
-A FORWARD -j MARK --set-xmark 0x2/0xff
`
	rs, err := netfilter.ParseRules(text)
	if err != nil {
		t.Fatal(err)
	}
	again, err := netfilter.ParseRules(stripCounters(rs.String()))
	if err != nil {
		t.Fatalf("listing does not parse back: %v\n%s", err, rs)
	}
	if rs.String() != again.String() {
		t.Fatalf("round trip differs:\n%s\n---\n%s", rs, again)
	}
	for _, want := range []string{"-A INPUT ! -s 10.0.0.0/8 -p tcp --sport 1:1023 --dport 22 --tcp-flags SYN,ACK SYN -j svc",
		"-j DNAT --to-destination 10.0.2.1:80", "-j SNAT --to-source 192.0.2.1-192.0.2.9:1024-2047", ":INPUT DROP"} {
		if !strings.Contains(rs.String(), want) {
			t.Errorf("listing lacks %q:\n%s", want, rs)
		}
	}
}

// stripCounters turns iptables-save -c output back into rules.
func stripCounters(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "[") {
			l = l[strings.Index(l, "]")+2:]
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func FuzzParseRules(f *testing.F) {
	for _, s := range []string{
		"*filter\n:FORWARD DROP\n-A FORWARD -p tcp --dport 80 -j ACCEPT\n",
		"*nat\n-A POSTROUTING -o eth+ -j MASQUERADE\n-A PREROUTING -p udp --dport 53 -j DNAT --to-destination 10.0.0.1:5353\n",
		":x -\n-A x -j RETURN\n-A INPUT ! -s 1.2.3.0/24 -j x\n",
		"-A FORWARD -m conntrack --ctstate NEW,INVALID -j LOG --log-prefix \"a \\\" b\"\n",
		"-A FORWARD -p icmp --icmp-type 3/4 -j REJECT --reject-with icmp-admin-prohibited\n",
		"*mangle\n-A PREROUTING -j MARK --set-mark 0x1/0x3\n-A PREROUTING -j DIVERT\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := netfilter.ParseRules(s)
		if err != nil {
			var pe *netfilter.ParseError
			if !errors.As(err, &pe) || pe.Line < 1 || pe.Col < 1 {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		// What parsed must list and parse back to the same rules.
		again, err := netfilter.ParseRules(stripCounters(rs.String()))
		if err != nil {
			t.Fatalf("listing of %q does not parse: %v\n%s", s, err, rs)
		}
		if again.String() != rs.String() {
			t.Fatalf("listing of %q changes on reparse:\n%s---\n%s", s, rs, again)
		}
	})
}
