package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
)

var (
	gw  = netip.MustParseAddr("10.22.0.1")
	pod = netip.MustParseAddr("10.22.0.5")
)

func TestRouteLines(t *testing.T) {
	for _, c := range []struct {
		r    api.Route
		want string
	}{
		{api.Route{Table: api.TableMain, Type: "unicast", Dst: netip.PrefixFrom(pod, 32), Dev: "us1", Src: gw, Scope: "link"},
			"10.22.0.5 dev us1 scope link src 10.22.0.1"},
		{api.Route{Table: api.TableMain, Type: "unicast", Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("169.254.100.1"), Dev: "us-uplink", Scope: "global"},
			"default via 169.254.100.1 dev us-uplink"},
		{api.Route{Table: api.TableMain, Type: "unreachable", Dst: netip.MustParsePrefix("10.9.0.0/16"), Scope: "global", Metric: 5, MTU: 1400},
			"unreachable 10.9.0.0/16 metric 5 mtu 1400"},
		{api.Route{Table: api.TableLocal, Type: "local", Dst: netip.PrefixFrom(gw, 32), Dev: "us1", Src: gw, Scope: "host"},
			"local 10.22.0.1 dev us1 table local scope host src 10.22.0.1"},
		{api.Route{Table: api.TableLocal, Type: "broadcast", Dst: netip.MustParsePrefix("169.254.100.3/32"), Dev: "us-uplink", Scope: "link"},
			"broadcast 169.254.100.3 dev us-uplink table local scope link"},
	} {
		if got := routeLine(c.r); got != c.want {
			t.Errorf("routeLine(%+v) =\n  %q, want\n  %q", c.r, got, c.want)
		}
	}
	var b bytes.Buffer
	printRoutes(&b, []api.Route{{Table: api.TableMain, Type: "unicast", Dst: netip.PrefixFrom(pod, 32), Dev: "us1", Scope: "link", Pod: "ns/web"}}, true)
	if b.String() != "10.22.0.5 dev us1 scope link pod ns/web\n" {
		t.Errorf("wide route: %q", b.String())
	}
}

func TestNeighLines(t *testing.T) {
	n := api.Neighbour{NIC: 2, Dev: "us1", Addr: pod, MAC: "02:00:00:00:00:05", State: "PERMANENT", UsedAgo: api.Duration(3 * time.Second), Pod: "ns/web"}
	if got := neighLine(n, false, false); got != "10.22.0.5 dev us1 lladdr 02:00:00:00:00:05 PERMANENT" {
		t.Errorf("neigh: %q", got)
	}
	if got := neighLine(n, true, true); got != "10.22.0.5 dev us1 lladdr 02:00:00:00:00:05 used 3/- probes 0 queued 0 PERMANENT pod ns/web" {
		t.Errorf("neigh -s wide: %q", got)
	}
	inc := api.Neighbour{Dev: "us-uplink", Addr: netip.MustParseAddr("169.254.100.1"), State: "INCOMPLETE", Probes: 2, Queued: 1}
	if got := neighLine(inc, true, false); got != "169.254.100.1 dev us-uplink used -/- probes 2 queued 1 INCOMPLETE" {
		t.Errorf("incomplete: %q", got)
	}
}

func TestConntrackLine(t *testing.T) {
	e := api.ConntrackEntry{Proto: "tcp", ProtoNum: 6, State: "ESTABLISHED", Timeout: api.Duration(431999 * time.Second),
		Original: api.ConntrackTuple{Src: pod, Dst: netip.MustParseAddr("192.0.2.7"), SrcPort: 40000, DstPort: 80},
		Reply:    api.ConntrackTuple{Src: netip.MustParseAddr("192.0.2.7"), Dst: pod, SrcPort: 80, DstPort: 40000},
		Packets:  [2]uint64{5, 4}, Bytes: [2]uint64{300, 400}, Status: []string{"SEEN_REPLY", "ASSURED", "CONFIRMED"}}
	want := "tcp      6 431999 ESTABLISHED src=10.22.0.5 dst=192.0.2.7 sport=40000 dport=80 packets=5 bytes=300 " +
		"src=192.0.2.7 dst=10.22.0.5 sport=80 dport=40000 packets=4 bytes=400 [ASSURED] mark=0 use=1"
	if got := conntrackLine(e); got != want {
		t.Errorf("conntrack:\n  %q\nwant\n  %q", got, want)
	}
	icmp := api.ConntrackEntry{Proto: "icmp", ProtoNum: 1, Timeout: api.Duration(29 * time.Second),
		Original: api.ConntrackTuple{Src: pod, Dst: gw, SrcPort: 7}, Reply: api.ConntrackTuple{Src: gw, Dst: pod, SrcPort: 7},
		Packets: [2]uint64{1, 0}, Bytes: [2]uint64{84, 0}, SNAT: true}
	want = "icmp     1 29 src=10.22.0.5 dst=10.22.0.1 id=7 packets=1 bytes=84 [UNREPLIED] src=10.22.0.1 dst=10.22.0.5 id=7 packets=0 bytes=0 [SNAT] mark=0 use=1"
	if got := conntrackLine(icmp); got != want {
		t.Errorf("conntrack icmp:\n  %q\nwant\n  %q", got, want)
	}
	e.ReplyTo = "us-uplink"
	want = "tcp      6 431999 ESTABLISHED src=10.22.0.5 dst=192.0.2.7 sport=40000 dport=80 packets=5 bytes=300 " +
		"src=192.0.2.7 dst=10.22.0.5 sport=80 dport=40000 packets=4 bytes=400 [ASSURED] [REPLY-TO us-uplink] mark=0 use=1"
	if got := conntrackLine(e); got != want {
		t.Errorf("conntrack reply-to:\n  %q\nwant\n  %q", got, want)
	}
}

func TestSocketTable(t *testing.T) {
	dst := netip.MustParseAddrPort("192.0.2.7:80")
	s := &api.Sockets{
		Sockets: []api.Socket{
			{Proto: "tcp", State: "LISTEN", Local: netip.MustParseAddrPort("0.0.0.0:53"), SendQ: 128},
			{Proto: "tcp", State: "ESTABLISHED", Local: dst, Remote: netip.MustParseAddrPort("10.22.0.5:40000"), RecvQ: 1, SendQ: 2,
				TCP: &api.TCPInfo{RTT: api.Duration(1500 * time.Microsecond), RTTVar: api.Duration(750 * time.Microsecond),
					RTO: api.Duration(201 * time.Millisecond), MSS: 1448, Cwnd: 10, Ssthresh: 1 << 31, Retransmits: 3, CC: "cubic",
					Options: []string{"ts", "sack"}, BytesAcked: 9, BytesReceived: 8, SegsOut: 4, SegsIn: 5},
				Relay: &api.Relay{Kind: api.RelayOutbound, Proto: "tcp", PodName: "ns/web", HostLocal: netip.MustParseAddrPort("10.0.0.9:51234"),
					HostRemote: dst, FromPod: 8, ToPod: 9}},
			{Proto: "udp", State: "UNCONN", Local: netip.MustParseAddrPort("0.0.0.0:0"), Intercept: true},
		},
		Relays: []api.Relay{{Kind: api.RelayOutbound, Proto: "udp", Pod: "us1", PodLocal: netip.MustParseAddrPort("192.0.2.8:53"),
			PodRemote: netip.MustParseAddrPort("10.22.0.5:5353"), HostLocal: netip.MustParseAddrPort("10.0.0.9:40001"),
			HostRemote: netip.MustParseAddrPort("192.0.2.8:53"), FromPod: 40, ToPod: 80}},
	}
	flt, err := parseSSFilter(nil)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := printSockets(&b, selectSockets(s, ssFlags{all: true, process: true, info: true}, flt), ssFlags{all: true, process: true, info: true}); err != nil {
		t.Fatal(err)
	}
	want := `Netid  State   Recv-Q  Send-Q  Local Address:Port  Peer Address:Port  Process
tcp    LISTEN  0       128     *:53                *:*                -
tcp    ESTAB   1       2       192.0.2.7:80        10.22.0.5:40000    relay:(outbound,pod=ns/web,host=10.0.0.9:51234->192.0.2.7:80,from_pod=8,to_pod=9)
	 cubic ts sack rto:201 rtt:1.5/0.75 mss:1448 cwnd:10 bytes_acked:9 bytes_received:8 segs_out:4 segs_in:5 snd_wnd:0 rcv_wnd:0 retrans:0/3
udp    UNCONN  0       0       *:*                 *:*                intercept:(proxy)
udp    FLOW    0       0       192.0.2.8:53        10.22.0.5:5353     relay:(outbound,pod=us1,host=10.0.0.9:40001->192.0.2.8:53,from_pod=40,to_pod=80)
`
	if got := b.String(); got != want {
		t.Errorf("ss -a -p -i:\n%s\nwant\n%s", got, want)
	}

	// Default selection: connected sockets only, no relay column.
	b.Reset()
	printSockets(&b, selectSockets(s, ssFlags{}, flt), ssFlags{})
	if got := b.String(); strings.Contains(got, "LISTEN") || strings.Contains(got, "relay:") || !strings.Contains(got, "ESTAB") {
		t.Errorf("ss:\n%s", got)
	}
	// Filters.
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"state", "established"}, 1},
		{[]string{"state", "listen"}, 0}, // ss without -l shows no listeners
		{[]string{"dport", "=", ":40000"}, 1},
		{[]string{"dport = :40001"}, 0},
		{[]string{"src", "192.0.2.0/24:80"}, 1},
		{[]string{"dst", "10.22.0.5", "and", "sport", "eq", "80"}, 1},
	} {
		f, err := parseSSFilter(c.args)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if got := len(selectSockets(s, ssFlags{}, f).Sockets); got != c.want {
			t.Errorf("ss %v: %d sockets, want %d", c.args, got, c.want)
		}
	}
	for _, bad := range [][]string{{"state", "bogus"}, {"dport"}, {"src", "10.0.0.300"}, {"sport", ":x"}, {"frobnicate"}} {
		if _, err := parseSSFilter(bad); err == nil {
			t.Errorf("ss filter %v accepted", bad)
		}
	}
}

func TestLinkAndAddrTables(t *testing.T) {
	links := []api.Link{
		{NIC: 1, Name: "us-uplink", Kind: api.KindUplink, MAC: "02:aa:00:00:00:01", MTU: 1500, Up: true,
			Addresses: []netip.Prefix{netip.MustParsePrefix("169.254.100.2/30")}, Offloads: []string{"tso"}, TxQueue: 1000,
			Stats: api.NICStats{RxPackets: 1, RxBytes: 60, TxPackets: 2, TxBytes: 120}},
		{NIC: 2, Name: "us1", Kind: api.KindPod, MAC: "02:aa:00:00:00:02", MTU: 1500, Up: false,
			Addresses: []netip.Prefix{netip.PrefixFrom(gw, 32)},
			Pod:       &api.LinkPod{ContainerID: "0123456789abcdef", IfName: "eth0", Mode: api.ModeRoute, IP: netip.PrefixFrom(pod, 24), MAC: "02:bb:00:00:00:05"}},
	}
	var b bytes.Buffer
	printLinks(&b, links, false)
	want := `NIC  NAME       KIND    STATE  MTU   MAC                POD           RX-PACKETS  RX-BYTES  RX-DROPPED  TX-PACKETS  TX-BYTES  TX-DROPPED
1    us-uplink  uplink  UP     1500  02:aa:00:00:00:01  -             1           60        0           2           120       0
2    us1        pod     DOWN   1500  02:aa:00:00:00:02  0123456789ab  0           0         0           0           0         0
`
	if b.String() != want {
		t.Errorf("link:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	links[1].BusyPoll = &api.BusyPoll{Hits: 258, Sleeps: 1, Yields: 51, Skips: 2, HostEvents: 256}
	printLinks(&b, links, true)
	want = `NIC  NAME       KIND    STATE  MTU   MAC                POD           RX-PACKETS  RX-BYTES  RX-DROPPED  TX-PACKETS  TX-BYTES  TX-DROPPED  RX-ERRORS  TX-ERRORS  KERNEL-DROPS  BUSY-POLL       TXQ     OFFLOADS  CONTAINER         IFNAME  MODE
1    us-uplink  uplink  UP     1500  02:aa:00:00:00:01  -             1           60        0           2           120       0           0          0          0             -               0/1000  tso       -                 -       -
2    us1        pod     DOWN   1500  02:aa:00:00:00:02  0123456789ab  0           0         0           0           0         0           0          0          0             258/1/51/2/256  0/0     -         0123456789abcdef  eth0    route
`
	if b.String() != want {
		t.Errorf("link -o wide:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	printAddrs(&b, links)
	want = `NIC  NAME       STATE  MAC                ADDRESSES         POD           POD-IP        POD-MAC
1    us-uplink  UP     02:aa:00:00:00:01  169.254.100.2/30  -             -             -
2    us1        DOWN   02:aa:00:00:00:02  10.22.0.1/32      0123456789ab  10.22.0.5/24  02:bb:00:00:00:05
`
	if b.String() != want {
		t.Errorf("addr:\n%s\nwant\n%s", b.String(), want)
	}
	for _, c := range []struct {
		args []string
		want int
		err  bool
	}{{nil, 2, false}, {[]string{"2"}, 1, false}, {[]string{"0123456789ab"}, 1, false}, {[]string{"us-uplink", "us1"}, 2, false},
		{[]string{"0123"}, 0, true}, {[]string{"nope"}, 0, true}} {
		got, err := selectLinks(links, c.args)
		if (err != nil) != c.err || len(got) != c.want {
			t.Errorf("selectLinks(%v) = %d links, %v", c.args, len(got), err)
		}
	}
}

func TestStatsText(t *testing.T) {
	st := &api.Stats{
		Counters: map[string]uint64{"IpInReceives": 12, "TcpRetransSegs": 0, "UdpNoPorts": 3},
		Drops:    []api.Drop{{Reason: "IP_CSUM", Layer: "ipv4", Count: 2}, {Reason: "TCP_CSUM", Layer: "tcp"}},
		Attached: map[api.Mode]int{api.ModeProxy: 1},
	}
	var b bytes.Buffer
	printStats(&b, st, nil, false)
	want := `#kernel
IpInReceives  12
UdpNoPorts    3
#drops
LAYER  REASON   COUNT
ipv4   IP_CSUM  2
#attachments proxy=1 route=0
`
	if b.String() != want {
		t.Errorf("stats:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	printStats(&b, st, []string{"Tcp*", "TCP_*"}, true)
	want = `#kernel
TcpRetransSegs  0
#drops
LAYER  REASON    COUNT
tcp    TCP_CSUM  0
`
	if b.String() != want {
		t.Errorf("stats -z 'Tcp*' 'TCP_*':\n%s\nwant\n%s", b.String(), want)
	}
}

// A value with a tab or newline (a pod name from CNI_ARGS) cannot break
// a table's columns.
func TestTableCellsSanitized(t *testing.T) {
	var b bytes.Buffer
	tb := newTable(&b, "A", "B")
	tb.row("x\ty", "z\nw")
	tb.flush()
	if got := b.String(); got != "A    B\nx y  z w\n" {
		t.Errorf("table: %q", got)
	}
}
