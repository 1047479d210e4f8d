package conntrack_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/clock"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/stacktest"
)

const (
	cli = "10.0.1.1"
	srv = "10.0.2.1"
)

func in(t *testing.T, tb *conntrack.Table, b []byte) (*conntrack.Conn, conntrack.Dir, conntrack.Info) {
	t.Helper()
	var p conntrack.Packet
	if err := conntrack.Parse(b, &p); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	c, d, i, err := tb.In(&p)
	if err != nil {
		t.Fatalf("In: %v", err)
	}
	return c, d, i
}

func tcp(src, dst string, sp, dp uint16, f header.TCPFlags, seq, ack uint32, payload int) []byte {
	return stacktest.IPv4(src, dst).TCP(sp, dp).Flags(f).Seq(seq).Ack(ack).Window(65535).Payload(make([]byte, payload)).Bytes()
}

func TestTupleReverse(t *testing.T) {
	a, b := netip.MustParseAddr(cli), netip.MustParseAddr(srv)
	for _, tc := range []struct {
		name string
		in   conntrack.Tuple
		want conntrack.Tuple
	}{
		{"tcp swaps ports", conntrack.Tuple{Src: a, Dst: b, SrcPort: 1, DstPort: 2, Proto: 6}, conntrack.Tuple{Src: b, Dst: a, SrcPort: 2, DstPort: 1, Proto: 6}},
		{"icmp keeps the identifier", conntrack.Tuple{Src: a, Dst: b, SrcPort: 77, Proto: 1}, conntrack.Tuple{Src: b, Dst: a, SrcPort: 77, Proto: 1}},
		{"no ports", conntrack.Tuple{Src: a, Dst: b, Proto: 47}, conntrack.Tuple{Src: b, Dst: a, Proto: 47}},
	} {
		if got := tc.in.Reverse(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
		if got := tc.in.Reverse().Reverse(); got != tc.in {
			t.Errorf("%s: reverse twice %v", tc.name, got)
		}
	}
}

// A whole TCP connection walks the kernel's states (nf_conntrack_proto_tcp)
// and the timeout follows the state.
func TestTCPStates(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{})
	steps := []struct {
		name    string
		pkt     []byte
		dir     conntrack.Dir
		info    conntrack.Info
		state   conntrack.TCPState
		timeout time.Duration
	}{
		{"SYN", tcp(cli, srv, 40000, 80, header.SYN, 100, 0, 0), conntrack.Original, conntrack.InfoNew, conntrack.TCPSynSent, 120 * time.Second},
		{"SYN-ACK", tcp(srv, cli, 80, 40000, header.SYN|header.ACK, 500, 101, 0), conntrack.Reply, conntrack.InfoEstablished, conntrack.TCPSynRecv, 60 * time.Second},
		{"ACK", tcp(cli, srv, 40000, 80, header.ACK, 101, 501, 0), conntrack.Original, conntrack.InfoEstablished, conntrack.TCPEstablished, 5 * 24 * time.Hour},
		{"data", tcp(cli, srv, 40000, 80, header.ACK|header.PSH, 101, 501, 100), conntrack.Original, conntrack.InfoEstablished, conntrack.TCPEstablished, 5 * 24 * time.Hour},
		{"ack of data", tcp(srv, cli, 80, 40000, header.ACK, 501, 201, 0), conntrack.Reply, conntrack.InfoEstablished, conntrack.TCPEstablished, 5 * 24 * time.Hour},
		{"client FIN", tcp(cli, srv, 40000, 80, header.FIN|header.ACK, 201, 501, 0), conntrack.Original, conntrack.InfoEstablished, conntrack.TCPFinWait, 120 * time.Second},
		{"ack of FIN", tcp(srv, cli, 80, 40000, header.ACK, 501, 202, 0), conntrack.Reply, conntrack.InfoEstablished, conntrack.TCPCloseWait, 60 * time.Second},
		{"server FIN", tcp(srv, cli, 80, 40000, header.FIN|header.ACK, 501, 202, 0), conntrack.Reply, conntrack.InfoEstablished, conntrack.TCPLastAck, 30 * time.Second},
		{"last ACK", tcp(cli, srv, 40000, 80, header.ACK, 202, 502, 0), conntrack.Original, conntrack.InfoEstablished, conntrack.TCPTimeWait, 120 * time.Second},
	}
	var first *conntrack.Conn
	for i, s := range steps {
		c, dir, info := in(t, tb, s.pkt)
		if i == 0 {
			first = c
			tb.Confirm(c)
		}
		if c != first || dir != s.dir || info != s.info {
			t.Fatalf("%s: conn %p dir %v info %v, want %p %v %v", s.name, c, dir, info, first, s.dir, s.info)
		}
		if got := c.TCPState(); got != s.state {
			t.Fatalf("%s: state %v, want %v", s.name, got, s.state)
		}
		e := tb.List()[0]
		if e.Timeout != s.timeout {
			t.Fatalf("%s: timeout %v, want %v", s.name, e.Timeout, s.timeout)
		}
	}
	if first.Status()&conntrack.StatusAssured == 0 {
		t.Fatal("an established flow must be ASSURED")
	}
	// TIME_WAIT expires after 120 s of the manual clock.
	clk.Advance(119 * time.Second)
	if tb.Len() != 1 {
		t.Fatal("expired early")
	}
	clk.Advance(2 * time.Second)
	if tb.Len() != 0 || tb.Stats().Expired != 1 {
		t.Fatalf("TIME_WAIT flow should expire: len %d stats %+v", tb.Len(), tb.Stats())
	}
}

// RFC 9293 §3.10.7.4 seen from the middle: a segment far outside the
// receiver's window, or acknowledging data never sent, is INVALID; the
// liberal option accepts it.
func TestTCPWindowCheck(t *testing.T) {
	for _, liberal := range []bool{false, true} {
		tb := conntrack.New(clock.NewManual(), conntrack.Config{Liberal: liberal})
		c, _, _ := in(t, tb, tcp(cli, srv, 40000, 80, header.SYN, 100, 0, 0))
		tb.Confirm(c)
		in(t, tb, tcp(srv, cli, 80, 40000, header.SYN|header.ACK, 500, 101, 0))
		in(t, tb, tcp(cli, srv, 40000, 80, header.ACK, 101, 501, 0))
		want := conntrack.InfoInvalid
		if liberal {
			want = conntrack.InfoEstablished
		}
		for _, tc := range []struct {
			name string
			pkt  []byte
		}{
			{"data 1 GB ahead", tcp(cli, srv, 40000, 80, header.ACK, 101+1<<30, 501, 10)},
			{"ack of unsent data", tcp(srv, cli, 80, 40000, header.ACK, 501, 101+1<<20, 0)},
		} {
			if _, _, info := in(t, tb, tc.pkt); info != want {
				t.Errorf("liberal=%v %s: %v, want %v", liberal, tc.name, info, want)
			}
		}
		if _, _, info := in(t, tb, tcp(cli, srv, 40000, 80, header.ACK, 101, 501, 10)); info != conntrack.InfoEstablished {
			t.Errorf("liberal=%v in-window data: %v", liberal, info)
		}
		if got := c.TCPState(); got != conntrack.TCPEstablished {
			t.Errorf("liberal=%v: invalid segments changed the state to %v", liberal, got)
		}
	}
}

func TestTCPFirstPacketRules(t *testing.T) {
	tb := conntrack.New(clock.NewManual(), conntrack.Config{NoPickup: true})
	if c, _, info := in(t, tb, tcp(cli, srv, 1, 2, header.ACK, 1, 1, 0)); c != nil || info != conntrack.InfoInvalid {
		t.Fatalf("mid-stream ACK without pickup: %v %v", c, info)
	}
	if c, _, info := in(t, tb, tcp(cli, srv, 1, 2, header.RST, 1, 0, 0)); c != nil || info != conntrack.InfoInvalid {
		t.Fatalf("RST opened a flow: %v", info)
	}
	tb = conntrack.New(clock.NewManual(), conntrack.Config{})
	c, _, info := in(t, tb, tcp(cli, srv, 1, 2, header.ACK, 1, 1, 0))
	if c == nil || info != conntrack.InfoNew || c.TCPState() != conntrack.TCPEstablished {
		t.Fatalf("pickup: %v %v", c, info)
	}
}

// UDP: 30 s unreplied, 120 s once replied (nf_conntrack_udp_timeout{,_stream});
// expiry runs on the stack's clock.
func TestUDPTimeoutsOnManualClock(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{})
	q := stacktest.IPv4(cli, srv).UDP(5000, 53).Bytes()
	c, _, info := in(t, tb, q)
	if info != conntrack.InfoNew {
		t.Fatal(info)
	}
	tb.Confirm(c)
	clk.Advance(29 * time.Second)
	if _, _, info := in(t, tb, q); info != conntrack.InfoNew {
		t.Fatalf("unreplied retransmit: %v", info)
	}
	clk.Advance(29 * time.Second) // refreshed by the retransmit
	if tb.Len() != 1 {
		t.Fatal("refresh ignored")
	}
	if _, dir, info := in(t, tb, stacktest.IPv4(srv, cli).UDP(53, 5000).Bytes()); dir != conntrack.Reply || info != conntrack.InfoEstablished {
		t.Fatalf("reply: %v %v", dir, info)
	}
	clk.Advance(119 * time.Second)
	if tb.Len() != 1 {
		t.Fatal("a replied flow must live 120 s")
	}
	clk.Advance(2 * time.Second)
	if tb.Len() != 0 {
		t.Fatal("replied flow did not expire")
	}
	// An unconfirmed flow (its packet was dropped before leaving) goes
	// after the short Unconfirmed timeout.
	in(t, tb, q)
	clk.Advance(11 * time.Second)
	if tb.Len() != 0 {
		t.Fatal("unconfirmed flow lingers")
	}
}

// ICMP echo is a flow keyed by its identifier; an ICMP error quoting a
// tracked datagram is RELATED to its flow (nf_conntrack_proto_icmp).
func TestICMPEchoAndRelated(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{})
	c, _, info := in(t, tb, stacktest.IPv4(cli, srv).Echo(7, 1).Bytes())
	if info != conntrack.InfoNew {
		t.Fatal(info)
	}
	tb.Confirm(c)
	if c2, dir, info := in(t, tb, stacktest.IPv4(srv, cli).EchoReply(7, 1).Bytes()); c2 != c || dir != conntrack.Reply || info != conntrack.InfoEstablished {
		t.Fatalf("echo reply: %v %v", dir, info)
	}
	if c2, _, info := in(t, tb, stacktest.IPv4(srv, cli).EchoReply(8, 1).Bytes()); c2 != nil || info != conntrack.InfoInvalid {
		t.Fatalf("reply to nothing: %v", info)
	}
	// A UDP flow and the port unreachable its server answers.
	q := stacktest.IPv4(cli, srv).UDP(5000, 53).Bytes()
	u, _, _ := in(t, tb, q)
	tb.Confirm(u)
	errPkt := stacktest.IPv4(srv, cli).ICMP(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0).Payload(q[:28]).Bytes()
	if c2, dir, info := in(t, tb, errPkt); c2 != u || dir != conntrack.Reply || info != conntrack.InfoRelated {
		t.Fatalf("port unreachable: conn %v dir %v info %v", c2 == u, dir, info)
	}
	other := stacktest.IPv4(cli, srv).UDP(5001, 53).Bytes()
	errPkt = stacktest.IPv4(srv, cli).ICMP(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0).Payload(other[:28]).Bytes()
	if c2, _, info := in(t, tb, errPkt); c2 != nil || info != conntrack.InfoInvalid {
		t.Fatalf("error about an unknown flow: %v", info)
	}
	clk.Advance(31 * time.Second)
	if tb.Len() != 0 {
		t.Fatalf("ICMP and UDP flows should expire after 30 s: %d", tb.Len())
	}
}

// A UDP query and its answer (DNS) are no stream: the flow keeps the
// 30 s timeout and is not ASSURED, so a full table evicts it; a flow
// still active 2 s after it began is a stream, ASSURED for 120 s
// (nf_conntrack_udp_packet's stream_ts).
func TestUDPQueryAnswerIsNoStream(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{Max: 2})
	timeout := func(sport uint16) (time.Duration, uint32) {
		for _, e := range tb.List() {
			if e.Original.SrcPort == sport {
				return e.Timeout, e.Status
			}
		}
		t.Fatalf("no flow from port %d", sport)
		return 0, 0
	}
	for _, sp := range []uint16{1000, 1001} {
		c, _, _ := in(t, tb, stacktest.IPv4(cli, srv).UDP(sp, 53).Bytes())
		tb.Confirm(c)
		in(t, tb, stacktest.IPv4(srv, cli).UDP(53, sp).Bytes())
		if to, st := timeout(sp); to != 30*time.Second || st&conntrack.StatusAssured != 0 {
			t.Fatalf("query and answer: timeout %v status %#x, want 30s, not assured", to, st)
		}
	}
	c, _, info := in(t, tb, stacktest.IPv4(cli, srv).UDP(1002, 53).Bytes())
	tb.Confirm(c)
	if info != conntrack.InfoNew || tb.Stats().EarlyDrop != 1 || tb.Len() != 2 {
		t.Fatalf("a full table of answered queries: %v %+v", info, tb.Stats())
	}
	in(t, tb, stacktest.IPv4(srv, cli).UDP(53, 1002).Bytes())
	clk.Advance(3 * time.Second)
	in(t, tb, stacktest.IPv4(cli, srv).UDP(1002, 53).Bytes())
	if to, st := timeout(1002); to != 120*time.Second || st&conntrack.StatusAssured == 0 {
		t.Fatalf("a stream: timeout %v status %#x, want 120s, assured", to, st)
	}
}

// A full table evicts an unreplied flow (early_drop); with only assured
// flows it refuses the new one and counts it, and established flows keep
// working.
func TestFullTable(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{Max: 4})
	var p conntrack.Packet
	for i := 0; i < 4; i++ {
		c, _, _ := in(t, tb, stacktest.IPv4(cli, srv).UDP(uint16(1000+i), 53).Bytes())
		tb.Confirm(c)
	}
	c, _, _ := in(t, tb, stacktest.IPv4(cli, srv).UDP(2000, 53).Bytes())
	tb.Confirm(c)
	if st := tb.Stats(); st.EarlyDrop != 1 || st.Entries != 4 {
		t.Fatalf("early drop: %+v", st)
	}
	// Make every flow assured: a reply each, and a packet more once the
	// flow is 2 s old (a stream).
	clk.Advance(3 * time.Second)
	for _, l := range tb.List() {
		in(t, tb, stacktest.IPv4(srv, cli).UDP(53, l.Original.SrcPort).Bytes())
		in(t, tb, stacktest.IPv4(cli, srv).UDP(l.Original.SrcPort, 53).Bytes())
	}
	if err := conntrack.Parse(stacktest.IPv4(cli, srv).UDP(3000, 53).Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := tb.In(&p); !errors.Is(err, conntrack.ErrTableFull) {
		t.Fatalf("new flow into a full table of assured flows: %v", err)
	}
	if st := tb.Stats(); st.Drop != 1 || st.Entries != 4 {
		t.Fatalf("drop not counted: %+v", st)
	}
	if _, _, info := in(t, tb, stacktest.IPv4(srv, cli).UDP(53, 2000).Bytes()); info != conntrack.InfoEstablished {
		t.Fatalf("established flow disturbed: %v", info)
	}
}

// tcpFlow walks a TCP connection from client port sp through the
// handshake and, with closed, through both FINs to TIME_WAIT.
func tcpFlow(t *testing.T, tb *conntrack.Table, sp uint16, closed bool) *conntrack.Conn {
	t.Helper()
	c, _, _ := in(t, tb, tcp(cli, srv, sp, 80, header.SYN, 100, 0, 0))
	tb.Confirm(c)
	in(t, tb, tcp(srv, cli, 80, sp, header.SYN|header.ACK, 500, 101, 0))
	in(t, tb, tcp(cli, srv, sp, 80, header.ACK, 101, 501, 0))
	if closed {
		in(t, tb, tcp(cli, srv, sp, 80, header.FIN|header.ACK, 101, 501, 0))
		in(t, tb, tcp(srv, cli, 80, sp, header.FIN|header.ACK, 501, 102, 0))
		in(t, tb, tcp(cli, srv, sp, 80, header.ACK, 102, 502, 0))
	}
	want := conntrack.TCPEstablished
	if closed {
		want = conntrack.TCPTimeWait
	}
	if c.TCPState() != want || c.Status()&conntrack.StatusAssured == 0 {
		t.Fatalf("flow from %d: %v, status %#x; want %v, assured", sp, c.TCPState(), c.Status(), want)
	}
	return c
}

// A table full of ended TCP flows (TIME_WAIT, 120 s) takes new flows in
// their place (tcp_can_early_drop), while one full of established flows
// still refuses them: otherwise a node opening short connections faster
// than Max / 120 s would find every new flow refused.
func TestFullTableEvictsClosingTCP(t *testing.T) {
	tb := conntrack.New(clock.NewManual(), conntrack.Config{Max: 4})
	for i := range 4 {
		tcpFlow(t, tb, uint16(40000+i), true)
	}
	for i := range 8 { // twice the table: each new flow evicts an ended one
		tcpFlow(t, tb, uint16(41000+i), true)
	}
	if st := tb.Stats(); st.EarlyDrop != 8 || st.Drop != 0 || st.Entries != 4 {
		t.Fatalf("closing flows not evicted: %+v", st)
	}
	// Established flows take the ended ones' places, then no more fit.
	for i := range 4 {
		tcpFlow(t, tb, uint16(42000+i), false)
	}
	var p conntrack.Packet
	if err := conntrack.Parse(tcp(cli, srv, 42004, 80, header.SYN, 100, 0, 0), &p); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := tb.In(&p); !errors.Is(err, conntrack.ErrTableFull) {
		t.Fatalf("new flow into a table of established flows: %v", err)
	}
	for _, e := range tb.List() {
		if e.Original.SrcPort < 42000 || e.TCPState != conntrack.TCPEstablished {
			t.Fatalf("left in the table: %v", e)
		}
	}
}

// After a new flow was refused for a full table, the collector evicts
// ended TCP flows down to 95% full (gc_worker's early_drop with
// nf_conntrack_max95), established ones never; without a refusal it
// leaves a crowded table alone.
func TestCollectorEvictsClosingTCPOver95(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{Max: 100})
	for i := range 100 {
		tcpFlow(t, tb, uint16(40000+i), false)
	}
	closeFlow := func(sp uint16) {
		in(t, tb, tcp(cli, srv, sp, 80, header.FIN|header.ACK, 101, 501, 0))
		in(t, tb, tcp(srv, cli, 80, sp, header.FIN|header.ACK, 501, 102, 0))
		in(t, tb, tcp(cli, srv, sp, 80, header.ACK, 102, 502, 0))
	}
	for i := range 10 {
		closeFlow(uint16(40000 + 10*i))
	}
	clk.Advance(time.Second) // no refusal yet: nothing evicted
	if st := tb.Stats(); st.Entries != 100 || st.EarlyDrop != 0 {
		t.Fatalf("collector evicted without a refusal: %+v", st)
	}
	// The insert path scans 256 slots: with 100 it finds an ended flow.
	// Make all of them established again to get a refusal.
	for i := range 10 {
		sp := uint16(40000 + 10*i)
		var p conntrack.Packet
		if err := conntrack.Parse(tcp(cli, srv, sp, 80, header.SYN, 100, 0, 0), &p); err != nil {
			t.Fatal(err)
		}
		// A SYN on TIME_WAIT reopens the flow in place (tcp_new).
		if _, _, _, err := tb.In(&p); err != nil {
			t.Fatal(err)
		}
		in(t, tb, tcp(srv, cli, 80, sp, header.SYN|header.ACK, 500, 101, 0))
		in(t, tb, tcp(cli, srv, sp, 80, header.ACK, 101, 501, 0))
	}
	var p conntrack.Packet
	if err := conntrack.Parse(tcp(cli, srv, 45000, 80, header.SYN, 100, 0, 0), &p); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := tb.In(&p); !errors.Is(err, conntrack.ErrTableFull) {
		t.Fatalf("new flow into a table of established flows: %v", err)
	}
	for i := range 10 {
		closeFlow(uint16(40001 + 10*i))
	}
	clk.Advance(time.Second) // the sweep after the refusal
	if st := tb.Stats(); st.Entries != 95 || st.EarlyDrop != 5 {
		t.Fatalf("collector after a refusal: %+v", st)
	}
	ended := 0
	for _, e := range tb.List() {
		if e.TCPState != conntrack.TCPEstablished {
			ended++
		}
	}
	if ended != 5 {
		t.Fatalf("%d ended flows left, want 5 (established flows are never evicted)", ended)
	}
	clk.Advance(time.Second) // no new refusal: nothing more goes
	if st := tb.Stats(); st.Entries != 95 || st.EarlyDrop != 5 {
		t.Fatalf("collector without a new refusal: %+v", st)
	}
}

// NAT tuple handling (get_unique_tuple): many clients masqueraded behind
// one address with the same source port get distinct reply tuples; the
// port is kept when free; a range that runs out refuses the flow.
func TestBindNATUnique(t *testing.T) {
	tb := conntrack.New(clock.NewManual(), conntrack.Config{})
	pub := netip.MustParseAddr("192.0.2.1")
	seen := map[conntrack.Tuple]bool{}
	for i := 0; i < 50; i++ {
		src := netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)})
		c, _, _ := in(t, tb, stacktest.Frame().IPv4Addr(src, netip.MustParseAddr(srv)).UDP(40000, 53).Bytes())
		if err := tb.BindNAT(c, conntrack.ManipSrc, conntrack.Range{Min: pub, Max: pub}); err != nil {
			t.Fatal(err)
		}
		r := c.Tuple(conntrack.Reply)
		if r.Dst != pub || seen[r] {
			t.Fatalf("flow %d: reply %v (duplicate %v)", i, r, seen[r])
		}
		if i == 0 && r.DstPort != 40000 {
			t.Fatalf("first flow should keep its port: %v", r)
		}
		if r.DstPort < 1024 {
			t.Fatalf("unprivileged port mapped to %d", r.DstPort)
		}
		seen[r] = true
		if c2, dir, ok := tb.Lookup(r); !ok || c2 != c || dir != conntrack.Reply {
			t.Fatal("reply tuple not indexed")
		}
		if c.Status()&conntrack.StatusSrcNAT == 0 && i > 0 {
			t.Fatal("translated flow without SRC_NAT")
		}
	}
	// A range of two ports serves two flows, the third is refused.
	tb = conntrack.New(clock.NewManual(), conntrack.Config{})
	r := conntrack.Range{Min: pub, Max: pub, MinPort: 5000, MaxPort: 5001, Ports: true}
	for i := 0; i < 3; i++ {
		c, _, _ := in(t, tb, stacktest.IPv4(cli, srv).UDP(uint16(7000+i), 53).Bytes())
		err := tb.BindNAT(c, conntrack.ManipSrc, r)
		if i < 2 && err != nil || i == 2 && !errors.Is(err, conntrack.ErrNoTuple) {
			t.Fatalf("flow %d: %v", i, err)
		}
		if i < 2 && (c.Tuple(conntrack.Reply).DstPort < 5000 || c.Tuple(conntrack.Reply).DstPort > 5001) {
			t.Fatalf("port outside range: %v", c.Tuple(conntrack.Reply))
		}
	}
	// DNAT: the reply comes from the new destination.
	c, _, _ := in(t, tb, stacktest.IPv4(cli, "192.0.2.80").TCP(40000, 80).Flags(header.SYN).Bytes())
	be := netip.MustParseAddr(srv)
	if err := tb.BindNAT(c, conntrack.ManipDst, conntrack.Range{Min: be, Max: be, MinPort: 8080, MaxPort: 8080, Ports: true}); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Tuple(conntrack.Reply), (conntrack.Tuple{Src: be, Dst: netip.MustParseAddr(cli), SrcPort: 8080, DstPort: 40000, Proto: 6}); got != want {
		t.Fatalf("DNAT reply %v, want %v", got, want)
	}
	if !c.Translated(conntrack.ManipDst) || c.Translated(conntrack.ManipSrc) {
		t.Fatal("status bits")
	}
	// ICMP: SNAT maps the identifier.
	e1, _, _ := in(t, tb, stacktest.IPv4("10.0.1.1", srv).Echo(9, 1).Bytes())
	e2, _, _ := in(t, tb, stacktest.IPv4("10.0.1.2", srv).Echo(9, 1).Bytes())
	for _, e := range []*conntrack.Conn{e1, e2} {
		if err := tb.BindNAT(e, conntrack.ManipSrc, conntrack.Range{Min: pub, Max: pub}); err != nil {
			t.Fatal(err)
		}
	}
	if e1.Tuple(conntrack.Reply) == e2.Tuple(conntrack.Reply) {
		t.Fatal("two pings share one identifier")
	}
}

func TestListLikeConntrackL(t *testing.T) {
	tb := conntrack.New(clock.NewManual(), conntrack.Config{})
	c, _, _ := in(t, tb, tcp(cli, srv, 40000, 80, header.SYN, 100, 0, 0))
	tb.Confirm(c)
	got := tb.List()[0].String()
	want := "tcp      6 120 SYN_SENT src=10.0.1.1 dst=10.0.2.1 sport=40000 dport=80 packets=1 bytes=40 [UNREPLIED] src=10.0.2.1 dst=10.0.1.1 sport=80 dport=40000 packets=0 bytes=0 mark=0 use=1"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	tb.Kill(c)
	if tb.Len() != 0 || tb.Get(c.ID(), c.Gen()) != nil {
		t.Fatal("Kill left the flow")
	}
}

func FuzzParseAndTrack(f *testing.F) {
	f.Add(stacktest.TCPv4SYN().Bytes())
	f.Add(stacktest.UDPv4().Bytes())
	f.Add(stacktest.ICMPEcho(1, 1).Bytes())
	q := stacktest.UDPv4().Bytes()
	f.Add(stacktest.IPv4(srv, cli).ICMP(3, 3, 0).Payload(q[:28]).Bytes())
	f.Add(stacktest.TCPv6SYN().Bytes())
	f.Add(stacktest.Echo6(1, 1).Bytes())
	f.Add(stacktest.IPv6(srv6, cli6).ICMPv6(header.ICMPv6DstUnreachable, 4, 0).Payload(stacktest.UDPv6().Bytes()).Bytes())
	tb := conntrack.New(clock.NewManual(), conntrack.Config{Max: 64})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p conntrack.Packet
		if conntrack.Parse(b, &p) != nil {
			return
		}
		c, _, _, _ := tb.In(&p)
		if c != nil {
			_ = c.Tuple(conntrack.Reply).String()
			tb.Confirm(c)
		}
		if !strings.Contains(p.Tuple.String(), "src=") {
			t.Fatal("tuple string")
		}
	})
}

// No Conn has a timer (the collector, gc_worker): a Conn past its
// deadline is gone for lookups at once, even before the collector's next
// sweep; the tuple's next packet opens a fresh flow; a full table takes
// a dead assured Conn's room before it refuses; the collector stops when
// the table empties, so an idle table costs no wake-up.
func TestExpiryWithoutTimers(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{Max: 2})
	a := stacktest.IPv4(cli, srv).UDP(1000, 53).Bytes()
	ca, _, _ := in(t, tb, a)
	tb.Confirm(ca) // dies at 30 s
	clk.Advance(500 * time.Millisecond)
	b := stacktest.IPv4(cli, srv).UDP(1001, 53).Bytes()
	cb, _, _ := in(t, tb, b)
	tb.Confirm(cb) // dies at 30.5 s
	if clk.Pending() != 1 {
		t.Fatalf("%d timers armed for two flows, want the collector's one", clk.Pending())
	}
	// 30.7 s: the collector last swept at 30 s, when b was alive.
	clk.Advance(30200 * time.Millisecond)
	if tb.Len() != 1 {
		t.Fatalf("len %d: a swept at 30 s, b not yet", tb.Len())
	}
	if _, _, ok := tb.Lookup(ca.Tuple(conntrack.Original)); ok {
		t.Fatal("a swept Conn found")
	}
	if _, _, ok := tb.Lookup(cb.Tuple(conntrack.Original)); ok {
		t.Fatal("a Conn past its deadline found")
	}
	if l := tb.List(); len(l) != 0 {
		t.Fatalf("conntrack -L lists dead flows: %v", l)
	}
	c2, _, info := in(t, tb, b)
	if info != conntrack.InfoNew || c2 == cb {
		t.Fatalf("the dead tuple's next packet: %v", info)
	}
	tb.Confirm(c2)
	if st := tb.Stats(); st.Expired != 2 || st.Entries != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A full table of assured flows, one of them dead: its room is free.
	in(t, tb, stacktest.IPv4(srv, cli).UDP(53, 1001).Bytes())
	c3, _, _ := in(t, tb, stacktest.IPv4(cli, srv).UDP(1002, 53).Bytes())
	tb.Confirm(c3)
	in(t, tb, stacktest.IPv4(srv, cli).UDP(53, 1002).Bytes())
	clk.Advance(200 * time.Second) // both dead (replied UDP: 30 s)...
	if tb.Len() != 0 || clk.Pending() != 0 {
		t.Fatalf("len %d, %d timers: the collector must sweep and stop", tb.Len(), clk.Pending())
	}
	// The collector restarts with the first new flow and sweeps every
	// second from then; both flows' last packets come 2.5 s later (the
	// flows are streams by then: ASSURED, 120 s), so their deadlines
	// fall between two sweeps.
	for i := 0; i < 2; i++ {
		c, _, _ := in(t, tb, stacktest.IPv4(cli, srv).UDP(uint16(2000+i), 53).Bytes())
		tb.Confirm(c)
		in(t, tb, stacktest.IPv4(srv, cli).UDP(53, uint16(2000+i)).Bytes())
	}
	clk.Advance(2500 * time.Millisecond)
	for i := 0; i < 2; i++ {
		in(t, tb, stacktest.IPv4(srv, cli).UDP(53, uint16(2000+i)).Bytes())
	}
	clk.Advance(120*time.Second + 200*time.Millisecond) // dead for 0.2 s, swept in 0.3 s
	if tb.Len() != 2 {
		t.Fatalf("len %d: not swept yet", tb.Len())
	}
	if _, _, info := in(t, tb, stacktest.IPv4(cli, srv).UDP(3000, 53).Bytes()); info != conntrack.InfoNew {
		t.Fatalf("new flow into a table of dead assured flows: %v", info)
	}
}

// The collector sweeps while packets are tracked on another goroutine
// (run with -race): flows that keep getting packets live on, flows that
// went quiet are collected.
func TestCollectorBesideTraffic(t *testing.T) {
	clk := clock.NewManual()
	tb := conntrack.New(clk, conntrack.Config{Max: 4096})
	const flows = 1500
	pkt := func(i int) []byte { return stacktest.IPv4(cli, srv).UDP(uint16(10000+i), 53).Bytes() }
	for i := 0; i < flows; i++ {
		c, _, _ := in(t, tb, pkt(i))
		tb.Confirm(c)
	}
	// Each round the clock moves half a second on one goroutine (the
	// collector runs there, every second) while the even flows send on
	// this one, so they are refreshed well within their 30 s; the odd
	// ones go quiet.
	for round := 0; round < 100; round++ {
		done := make(chan struct{})
		go func() {
			defer close(done)
			clk.Advance(500 * time.Millisecond)
		}()
		for i := 0; i < flows; i += 2 {
			in(t, tb, pkt(i))
		}
		<-done
	}
	clk.Advance(2 * time.Second)
	if n := tb.Len(); n != flows/2 {
		t.Fatalf("%d flows left, want the %d that kept sending", n, flows/2)
	}
}
