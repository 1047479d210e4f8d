package api

import (
	"net/netip"
	"time"
)

// The read-only inspection endpoints (`cni-userstack link`, `addr`,
// `route`, `neigh`, `ss`, `conntrack`, `stats`, `pcap`). Every one is a
// GET answering JSON, except PathCapture, which streams a pcap file.
//
//	GET /v1/links                          → []Link
//	GET /v1/routes                         → []Route
//	GET /v1/neighbours                     → []Neighbour
//	GET /v1/sockets?proto=tcp|udp          → Sockets
//	GET /v1/conntrack?entries=false        → Conntrack
//	GET /v1/stats                          → Stats
//	GET /v1/capture?nic=&pod=&filter=&count=&duration=&snaplen=
//	                                       → application/vnd.tcpdump.pcap
const (
	PathLinks      = "/v1/links"
	PathRoutes     = "/v1/routes"
	PathNeighbours = "/v1/neighbours"
	PathSockets    = "/v1/sockets"
	PathConntrack  = "/v1/conntrack"
	PathStats      = "/v1/stats"
	PathCapture    = "/v1/capture"
)

// Link kinds.
const (
	KindPod    = "pod"
	KindUplink = "uplink"
)

// Link is one NIC of the stack (`ip -s -d link` and `ip addr` in one).
type Link struct {
	NIC       int            `json:"nic"`
	Name      string         `json:"name"`
	Kind      string         `json:"kind"` // KindPod, KindUplink, or "" for another NIC
	MAC       string         `json:"mac"`
	MTU       int            `json:"mtu"`
	Up        bool           `json:"up"`
	Offloads  []string       `json:"offloads,omitempty"` // ethtool -k names: tx-checksum, rx-checksum, tso, gro
	TxQueued  int            `json:"txQueued"`           // frames in the transmit queue now
	TxQueue   int            `json:"txQueueLen"`         // its bound (txqueuelen)
	Addresses []netip.Prefix `json:"addresses"`
	Stats     NICStats       `json:"stats"`
	// KernelDrops are frames the kernel dropped on the link's AF_PACKET
	// socket (its receive buffer was full), when the link is one.
	KernelDrops uint64 `json:"kernelDrops,omitempty"`
	// BusyPoll counts the link's busy polls (serve --busy-poll), when
	// the link is an AF_PACKET one and polling is on.
	BusyPoll *BusyPoll `json:"busyPoll,omitempty"`
	// Pod is the attachment the NIC belongs to (Kind KindPod).
	Pod *LinkPod `json:"pod,omitempty"`
}

// BusyPoll are a link's busy-poll outcomes (afpacket.Stats): reads whose
// frame came while polling (Hits: a wake-up saved), polls whose budget
// ran out (Sleeps), polls ended because another thread wanted the CPU
// (Yields), reads that slept at once because every polling slot was
// taken (Skips), and host-socket events the polls handled (HostEvents).
type BusyPoll struct {
	Hits       uint64 `json:"hits"`
	Sleeps     uint64 `json:"sleeps"`
	Yields     uint64 `json:"yields"`
	Skips      uint64 `json:"skips"`
	HostEvents uint64 `json:"hostEvents"`
}

// LinkPod names the pod of a pod link: its Kubernetes namespace and name
// when the runtime passed them (CNI_ARGS K8S_POD_NAMESPACE/K8S_POD_NAME),
// always its container ID.
type LinkPod struct {
	Attachment  string       `json:"attachment"`
	ContainerID string       `json:"containerID"`
	Namespace   string       `json:"namespace,omitempty"`
	Name        string       `json:"name,omitempty"`
	IfName      string       `json:"ifName"`
	Network     string       `json:"network"`
	Mode        Mode         `json:"mode"`
	IP          netip.Prefix `json:"ip"`
	IP6         netip.Prefix `json:"ip6,omitzero"` // a dual-stack pod's IPv6 address
	MAC         string       `json:"mac"`          // the pod end's
}

// String is "namespace/name" when known, else the container ID.
func (p *LinkPod) String() string {
	if p == nil {
		return ""
	}
	if p.Name != "" {
		if p.Namespace != "" {
			return p.Namespace + "/" + p.Name
		}
		return p.Name
	}
	return p.ContainerID
}

// Route tables of Route.Table.
const (
	TableMain  = "main"
	TableLocal = "local"
)

// Route is one entry of the FIB (`ip route show table all`): the main
// table's routes, and the local table's local and broadcast entries.
type Route struct {
	Table   string       `json:"table"`
	Type    string       `json:"type"` // unicast, local, broadcast, unreachable, blackhole, prohibit
	Dst     netip.Prefix `json:"dst"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	NIC     int          `json:"nic,omitempty"`
	Dev     string       `json:"dev,omitempty"`
	Src     netip.Addr   `json:"src,omitzero"`
	Metric  int          `json:"metric,omitempty"`
	MTU     int          `json:"mtu,omitempty"`
	// Scope is ip's: "link" for a connected route, "host" for a local
	// entry, "global" otherwise.
	Scope string `json:"scope"`
	// Pod is the pod the route's device belongs to ("namespace/name" or
	// the container ID), for a pod link.
	Pod string `json:"pod,omitempty"`
}

// Neighbour is one entry of the neighbour table (`ip -s neigh`).
type Neighbour struct {
	NIC    int        `json:"nic"`
	Dev    string     `json:"dev"`
	Addr   netip.Addr `json:"addr"`
	MAC    string     `json:"mac,omitempty"` // "" while INCOMPLETE or FAILED
	State  string     `json:"state"`         // NUD state: REACHABLE, STALE, PERMANENT, ...
	Probes int        `json:"probes"`
	Queued int        `json:"queued"` // packets waiting for the resolution
	// ConfirmedAgo and UsedAgo are how long ago the entry was last
	// confirmed reachable and last used; omitted when never.
	ConfirmedAgo Duration `json:"confirmedAgo,omitzero"`
	UsedAgo      Duration `json:"usedAgo,omitzero"`
	Pod          string   `json:"pod,omitempty"` // the pod of the device, when a pod link
}

// Duration is a time.Duration that reads and writes JSON and YAML as
// Go's duration text ("1.5s").
type Duration time.Duration

// MarshalText is Go's duration syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads Go's duration syntax.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// Sockets is the answer of PathSockets.
type Sockets struct {
	Sockets []Socket `json:"sockets"`
	// Relays lists the proxy engine's flows that have no stack socket of
	// their own (UDP and ICMP echo flows share the intercept socket).
	// TCP relays are on their Socket.
	Relays []Relay `json:"relays,omitempty"`
}

// Socket is one socket of the stack (`ss -tuanpi`).
type Socket struct {
	Proto  string         `json:"proto"` // "tcp" | "udp"
	State  string         `json:"state"` // TCP: RFC 9293 names; UDP: UNCONN or ESTAB (connected)
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote,omitzero"`
	RecvQ  int            `json:"recvQ"`
	SendQ  int            `json:"sendQ"`
	// Transparent: the local address need not be the stack's (a flow the
	// proxy took over, or one it opened into a pod).
	Transparent bool `json:"transparent,omitempty"`
	// Intercept marks the UDP socket every proxied datagram arrives on.
	Intercept bool     `json:"intercept,omitempty"`
	TCP       *TCPInfo `json:"tcp,omitempty"`
	UDPDrops  uint64   `json:"udpDrops,omitempty"`
	Relay     *Relay   `json:"relay,omitempty"`
}

// TCPInfo is a connection's TCP_INFO (`ss -ti`).
type TCPInfo struct {
	RTT           Duration `json:"rtt"`
	RTTVar        Duration `json:"rttvar"`
	MinRTT        Duration `json:"minrtt,omitzero"`
	RTO           Duration `json:"rto"`
	MSS           int      `json:"mss"`
	PeerMSS       int      `json:"peerMSS,omitempty"`
	Cwnd          uint32   `json:"cwnd"`
	Ssthresh      uint32   `json:"ssthresh"`
	SndWnd        uint32   `json:"sndWnd"`
	RcvWnd        uint32   `json:"rcvWnd"`
	Retransmits   uint64   `json:"retrans"` // segments retransmitted over the connection's life
	Backoff       int      `json:"backoff,omitempty"`
	BytesAcked    uint64   `json:"bytesAcked"`
	BytesReceived uint64   `json:"bytesReceived"`
	SegsOut       uint64   `json:"segsOut"`
	SegsIn        uint64   `json:"segsIn"`
	Unacked       int      `json:"unacked"`
	NotSent       int      `json:"notsent"`
	CC            string   `json:"cc,omitempty"`
	Options       []string `json:"options,omitempty"` // ts, sack, wscale:S,R
	InRecovery    bool     `json:"inRecovery,omitempty"`
}

// Relay kinds.
const (
	RelayOutbound = "outbound" // a pod's flow to the outside, relayed over a host socket
	RelayPortMap  = "portmap"  // a host port's client relayed into a pod
	RelayDNS      = "dns"      // a DNS-over-TCP connection to the gateway, relayed to a nameserver
)

// Relay is one flow of the proxy engine (`ss -p`'s process column for a
// userspace stack): its pod side in the stack and its host socket.
type Relay struct {
	Kind  string `json:"kind"`  // RelayOutbound, RelayPortMap, RelayDNS
	Proto string `json:"proto"` // tcp, udp, icmp
	// Pod is the pod's attachment ID and PodName its "namespace/name"
	// (or container ID).
	Pod     string `json:"pod,omitempty"`
	PodName string `json:"podName,omitempty"`
	// PodLocal and PodRemote are the stack side's addresses as the stack
	// socket sees them (local: the address the pod talks to; remote: the
	// pod). For ICMP echo the ports carry the identifier.
	PodLocal  netip.AddrPort `json:"podLocal"`
	PodRemote netip.AddrPort `json:"podRemote"`
	// HostLocal and HostRemote are the daemon's host socket.
	HostLocal  netip.AddrPort `json:"hostLocal,omitzero"`
	HostRemote netip.AddrPort `json:"hostRemote,omitzero"`
	// FromPod and ToPod count bytes each way: TCP payload bytes (the
	// stack socket's TCP_INFO), UDP and ICMP IP bytes seen by conntrack on
	// the pod side.
	FromPod uint64 `json:"fromPod"`
	ToPod   uint64 `json:"toPod"`
}

// Conntrack is the answer of PathConntrack.
type Conntrack struct {
	Count   int              `json:"count"`
	Max     int              `json:"max"`
	Stats   ConntrackStats   `json:"stats"`
	Entries []ConntrackEntry `json:"entries,omitempty"`
}

// ConntrackStats are `conntrack -S`.
type ConntrackStats struct {
	Found        uint64 `json:"found"`
	New          uint64 `json:"new"`
	Invalid      uint64 `json:"invalid"`
	Insert       uint64 `json:"insert"`
	InsertFailed uint64 `json:"insertFailed"`
	Drop         uint64 `json:"drop"`
	EarlyDrop    uint64 `json:"earlyDrop"`
	Expired      uint64 `json:"expired"`
	Deleted      uint64 `json:"deleted"`
}

// ConntrackTuple is one direction of a flow.
type ConntrackTuple struct {
	Src     netip.Addr `json:"src"`
	Dst     netip.Addr `json:"dst"`
	SrcPort uint16     `json:"sport,omitempty"` // the identifier of an ICMP query
	DstPort uint16     `json:"dport,omitempty"`
}

// ConntrackEntry is one flow (`conntrack -L`).
type ConntrackEntry struct {
	Proto    string         `json:"proto"` // tcp, udp, icmp, or the number
	ProtoNum uint8          `json:"protoNum"`
	State    string         `json:"state,omitempty"` // TCP tracking state
	Timeout  Duration       `json:"timeout"`         // left before the flow expires
	Original ConntrackTuple `json:"original"`
	Reply    ConntrackTuple `json:"reply"`
	Packets  [2]uint64      `json:"packets"` // original, reply
	Bytes    [2]uint64      `json:"bytes"`
	Status   []string       `json:"status,omitempty"` // SEEN_REPLY, ASSURED, ...
	Mark     uint32         `json:"mark,omitempty"`
	// SNAT and DNAT say the reply tuple was rewritten on the source or
	// destination side (a NAT binding).
	SNAT bool `json:"snat,omitempty"`
	DNAT bool `json:"dnat,omitempty"`
	// ReplyTo names the NIC the flow's replies are routed out of when
	// it is not the FIB's choice (netfilter's reply-to: a flow that came
	// in through the uplink).
	ReplyTo string `json:"replyTo,omitempty"`
}

// Stats is the answer of PathStats: `nstat`, the drop reasons and the
// per-NIC and per-subsystem counters.
type Stats struct {
	// Counters are the MIB counters by nstat name (IpInReceives,
	// TcpRetransSegs, ...), zeros included, plus the daemon's own
	// (PodSrcMACDrops, ProxyDiverted, ...).
	Counters map[string]uint64 `json:"counters"`
	// Drops are the packets freed, by reason, with the reason's layer:
	// every registered reason, zeros included.
	Drops     []Drop         `json:"drops"`
	NICs      []NICStats     `json:"nics"`
	Conntrack *Conntrack     `json:"conntrack,omitempty"` // without entries
	Proxy     *ProxyStats    `json:"proxy,omitempty"`
	Neigh     map[string]int `json:"neighbours"` // entries by NUD state
	TCP       map[string]int `json:"tcpSockets"` // sockets by state
	Attached  map[Mode]int   `json:"attachments"`
	// Kubernetes is the route controller's status (serve --kubernetes);
	// nil when it does not run.
	Kubernetes *KubeStatus `json:"kubernetes,omitempty"`
}

// Drop is one drop reason's count.
type Drop struct {
	Reason string `json:"reason"`
	Layer  string `json:"layer"`
	Count  uint64 `json:"count"`
}

// Capture limits the daemon enforces: at most MaxCaptures at a time, each
// at most MaxCaptureDuration long.
const (
	MaxCaptures        = 4
	MaxCaptureDuration = 24 * time.Hour
)

// CaptureRequest is the query of PathCapture.
type CaptureRequest struct {
	// NICs and Pods select the NICs (pods by attachment ID, container
	// ID, or namespace/name); none: every NIC.
	NICs []string
	Pods []string
	// Filter is the capture filter (netstack/capture's language).
	Filter string
	// Count and Duration end the capture; 0 is no bound (the daemon still
	// ends it after MaxCaptureDuration).
	Count    int
	Duration time.Duration
	// Snaplen is the bytes kept per frame; 0 is the default (262144).
	Snaplen int
}

// Trailers of a capture response: the capture's counters once it ended.
const (
	TrailerCaptured = "X-Capture-Written"
	TrailerDropped  = "X-Capture-Dropped"
	TrailerMatched  = "X-Capture-Matched"
	// HeaderCaptureNICs lists the NICs a capture taps ("id:name,...").
	HeaderCaptureNICs = "X-Capture-NICs"
)
