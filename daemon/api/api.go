// Package api is the wire contract between the CNI plugin and the stack
// daemon: the HTTP+JSON request and response types of the daemon's unix
// socket API, and the Client the plugin uses. Errors cross the socket as
// CNI error JSON ({"code", "msg", "details"}) so that the plugin hands the
// daemon's code to the runtime unchanged.
//
// Not owned here: what an attachment does to the stack (package daemon),
// how the plugin builds a request (package plugin).
//
// Endpoints (all JSON; errors are an *Error body with a 4xx/5xx status):
//
//	POST /v1/attach       AttachRequest  → Attachment
//	POST /v1/detach       DetachRequest  → DetachResponse
//	GET  /v1/attachments                 → []Attachment
//	GET  /v1/status                      → Status
//	POST /v1/gc           GCRequest      → GCResponse
//
// and the read-only views of the stack the inspect commands read
// (inspect.go: links, routes, neighbours, sockets, conntrack, stats, and
// a streaming pcap capture).
package api

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// Paths of the API.
const (
	PathAttach      = "/v1/attach"
	PathDetach      = "/v1/detach"
	PathAttachments = "/v1/attachments"
	PathStatus      = "/v1/status"
	PathGC          = "/v1/gc"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/cni-userstack/daemon.sock"

// Plugin-specific CNI error codes (the spec leaves 100 and above to
// plugins). Documented in docs/config.md.
const (
	// CodeAttachmentExists: ADD for a container ID and interface name that
	// already has an attachment (a duplicate ADD).
	CodeAttachmentExists uint = 100
	// CodeAttachmentBroken: CHECK found the pod interface or the daemon's
	// attachment missing or different from the ADD result.
	CodeAttachmentBroken uint = 101
	// CodeStack: the stack refused the attachment (a NIC, address, route or
	// neighbour could not be added).
	CodeStack uint = 102
)

// Mode is a network's egress mode.
type Mode string

const (
	// ModeProxy, the default, terminates the pod's flows to anything but
	// another pod of the stack, the stack itself and the routed ranges in
	// the stack and relays them over host sockets (daemon/proxy).
	ModeProxy Mode = "proxy"
	// ModeRoute forwards through the stack's routing table and the uplink.
	ModeRoute Mode = "route"
)

// DefaultMode is the mode of a request that names none.
const DefaultMode = ModeProxy

// Bounds of one request's lists: far more than a pod uses, small enough
// that the divert hook's per-packet range check and the engine's listener
// set stay small.
const (
	MaxRoutedRanges = 64
	MaxPortMappings = 256
)

// PortMapping is one entry of the CNI portMappings capability
// (runtimeConfig.portMappings): the daemon listens on HostIP:HostPort and
// relays each client into the pod's ContainerPort.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"` // "tcp" (default) or "udp"
	HostIP        string `json:"hostIP,omitempty"`   // "" = every host address
}

func (m PortMapping) String() string {
	h := m.HostIP
	if h == "" {
		h = "*"
	} else if strings.Contains(h, ":") {
		h = "[" + h + "]" // an IPv6 host IP, bracketed before its port (RFC 3986 §3.2.2)
	}
	return fmt.Sprintf("%s:%d/%s→%d", h, m.HostPort, m.Protocol, m.ContainerPort)
}

// NormalizePortMappings checks port mappings and returns them with the
// protocol lowercased ("tcp" when empty) and a wildcard host IP
// ("0.0.0.0" or "::") as "": every host address of the pod's families.
// An IPv6 host IP is kept (a dual-stack pod is reached at its IPv6
// address; the engine skips it for an IPv4-only pod), an IPv4-mapped one
// becomes IPv4. Refused: a port outside 1..65535, a protocol other
// than tcp or udp, a host IP that is not an IP address, two mappings of
// one (host IP, host port, protocol), and a wildcard mapping beside one
// on a specific host IP with the same port and protocol (the host could
// not bind both).
func NormalizePortMappings(in []PortMapping) ([]PortMapping, error) {
	if len(in) > MaxPortMappings {
		return nil, fmt.Errorf("%d port mappings: at most %d", len(in), MaxPortMappings)
	}
	if len(in) == 0 {
		return nil, nil
	}
	type key struct {
		ip    string
		port  int
		proto string
	}
	out := make([]PortMapping, 0, len(in))
	seen := make(map[key]bool, len(in))
	for _, m := range in {
		switch {
		case m.HostPort < 1 || m.HostPort > 65535:
			return nil, fmt.Errorf("port mapping %+v: hostPort %d out of 1..65535", m, m.HostPort)
		case m.ContainerPort < 1 || m.ContainerPort > 65535:
			return nil, fmt.Errorf("port mapping %+v: containerPort %d out of 1..65535", m, m.ContainerPort)
		}
		m.Protocol = strings.ToLower(m.Protocol)
		switch m.Protocol {
		case "":
			m.Protocol = "tcp"
		case "tcp", "udp":
		default:
			return nil, fmt.Errorf("port mapping of host port %d: protocol %q: want tcp or udp", m.HostPort, m.Protocol)
		}
		if m.HostIP != "" {
			a, err := netip.ParseAddr(m.HostIP)
			if a = a.Unmap(); err != nil || a.Zone() != "" || a.IsMulticast() {
				return nil, fmt.Errorf("port mapping of host port %d: hostIP %q: want a unicast IPv4 or IPv6 address, or nothing", m.HostPort, m.HostIP)
			}
			if a.IsUnspecified() {
				m.HostIP = ""
			} else {
				m.HostIP = a.String()
			}
		}
		k := key{m.HostIP, m.HostPort, m.Protocol}
		if seen[k] {
			return nil, fmt.Errorf("port mapping %v: host port %d/%s on %q is mapped twice", m, m.HostPort, m.Protocol, m.HostIP)
		}
		seen[k] = true
		out = append(out, m)
	}
	for _, m := range out {
		if m.HostIP != "" && seen[key{"", m.HostPort, m.Protocol}] {
			return nil, fmt.Errorf("port mapping %v: host port %d/%s is also mapped on every host address", m, m.HostPort, m.Protocol)
		}
	}
	return out, nil
}

// CheckRoutedRanges checks a network's routed ranges: masked IPv4 or
// IPv6 prefixes (not IPv4-mapped), at most MaxRoutedRanges.
func CheckRoutedRanges(rs []netip.Prefix) error {
	if len(rs) > MaxRoutedRanges {
		return fmt.Errorf("%d routed ranges: at most %d", len(rs), MaxRoutedRanges)
	}
	for _, p := range rs {
		switch {
		case !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "":
			return fmt.Errorf("routed range %v: an IPv4 or IPv6 prefix is required", p)
		case p != p.Masked():
			return fmt.Errorf("routed range %v has host bits set: did you mean %v?", p, p.Masked())
		}
	}
	return nil
}

// maxPodNameLen bounds AttachRequest.PodNamespace and PodName (Kubernetes
// names are at most 253 bytes).
const maxPodNameLen = 253

// AttachRequest asks the daemon to drive a pod's far end. The far end
// (HostIfName) already exists in the daemon's stack netns.
type AttachRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Network     string `json:"network"`
	// PodNetNS is the pod's netns path (CNI_NETNS), for recovery checks.
	PodNetNS string `json:"podNetNS"`
	// HostIfName is the far end's name in the stack netns; it is also the
	// attachment's ID (unique per container ID and interface name).
	HostIfName string `json:"hostIfName"`
	// PodMAC is the pod end's MAC: the stack's static neighbour for IP and
	// the only source MAC accepted from the link.
	PodMAC string `json:"podMAC"`
	// IP is the pod's address with the IPAM prefix length.
	IP netip.Prefix `json:"ip"`
	// Gateway is the pod's default gateway, owned by the stack on the link.
	Gateway netip.Addr `json:"gateway"`
	// Range is the network's pod range (IP masked to its prefix): the
	// host routes it to the stack through the uplink.
	Range netip.Prefix `json:"range"`
	// IP6, Gateway6 and Range6 are the pod's IPv6 side on a dual-stack
	// network, in the shape of IP, Gateway and Range (the gateway a
	// global address the stack owns on the link, beside its link-local
	// one); all three unset on an IPv4-only network. IPv4 is required:
	// an IPv6-only pod is refused.
	IP6      netip.Prefix `json:"ip6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	Range6   netip.Prefix `json:"range6,omitzero"`
	// RouterAdvert (dual-stack only) makes the stack send the pod Router
	// Advertisements on its link (RFC 4861 §6.2): the gateway's
	// link-local address as a default router, the link MTU and Gateway6
	// as a recursive DNS server (RFC 8106); no prefix (addresses come
	// from IPAM). Off: routes come from CNI alone.
	RouterAdvert bool `json:"routerAdvert,omitempty"`
	MTU          int  `json:"mtu"`
	Mode         Mode `json:"mode"`
	// RoutedRanges (proxy mode) are destinations forwarded through the
	// uplink with the pod's own source address instead of proxied, e.g.
	// the cluster's pod range; the host routes them as it routes any node
	// traffic. Route mode forwards everything and ignores them.
	RoutedRanges []netip.Prefix `json:"routedRanges,omitempty"`
	// PortMappings (proxy mode) are the pod's host ports.
	PortMappings []PortMapping `json:"portMappings,omitempty"`
	// PodNamespace and PodName name the pod when the runtime passed
	// K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS (kubelet's CRI
	// runtimes do); shown by `cni-userstack link` and the metrics.
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
}

// Validate checks a request before the daemon acts on it and normalises
// it: an empty Mode becomes DefaultMode, port mappings are normalised by
// NormalizePortMappings.
func (r *AttachRequest) Validate() error {
	if r.Mode == "" {
		r.Mode = DefaultMode
	}
	if err := CheckRoutedRanges(r.RoutedRanges); err != nil {
		return err
	}
	pm, err := NormalizePortMappings(r.PortMappings)
	if err != nil {
		return err
	}
	r.PortMappings = pm
	switch {
	case r.ContainerID == "" || r.IfName == "" || r.HostIfName == "":
		return fmt.Errorf("containerID, ifName and hostIfName are required")
	case !r.IP.IsValid() || !r.IP.Addr().Is4():
		return fmt.Errorf("ip %v: an IPv4 prefix is required", r.IP)
	case !r.Gateway.Is4():
		return fmt.Errorf("gateway %v: an IPv4 address is required", r.Gateway)
	case r.Gateway == r.IP.Addr():
		return fmt.Errorf("gateway %v is the pod's own address", r.Gateway)
	case !r.Range.IsValid() || r.Range != r.Range.Masked() || !r.Range.Contains(r.IP.Addr()):
		return fmt.Errorf("range %v must be a masked prefix holding %v", r.Range, r.IP.Addr())
	case r.MTU < 68 || r.MTU > 65535:
		return fmt.Errorf("mtu %d out of 68..65535", r.MTU)
	case r.IP6.IsValid() && r.MTU < MinMTU6:
		return fmt.Errorf("mtu %d: IPv6 needs at least %d (RFC 8200 §5)", r.MTU, MinMTU6)
	case r.Mode != ModeProxy && r.Mode != ModeRoute:
		return fmt.Errorf("mode %q: want %q or %q", r.Mode, ModeProxy, ModeRoute)
	case r.Mode == ModeRoute && len(r.PortMappings) > 0:
		return fmt.Errorf("port mappings are served in mode %q; in mode %q chain the portmap plugin", ModeProxy, ModeRoute)
	case len(r.PodNamespace) > maxPodNameLen || len(r.PodName) > maxPodNameLen:
		return fmt.Errorf("pod namespace/name longer than %d bytes", maxPodNameLen)
	}
	return r.validate6()
}

// MinMTU6 is IPv6's minimum link MTU (RFC 8200 §5): a dual-stack pod's
// link has at least this.
const MinMTU6 = 1280

// validate6 checks the IPv6 side: absent altogether, or a global unicast
// pod address (not IPv4-mapped, not link-local) in a masked Range6, with
// a unicast Gateway6 of the same kind that is not the pod's.
func (r *AttachRequest) validate6() error {
	if !r.IP6.IsValid() {
		if r.Gateway6.IsValid() || r.Range6.IsValid() {
			return fmt.Errorf("gateway6 %v / range6 %v without ip6", r.Gateway6, r.Range6)
		}
		if r.RouterAdvert {
			return fmt.Errorf("routerAdvert without ip6: router advertisements are IPv6's")
		}
		return nil
	}
	a, gw := r.IP6.Addr(), r.Gateway6
	switch {
	case !global6(a):
		return fmt.Errorf("ip6 %v: a global unicast IPv6 prefix is required (not IPv4-mapped, link-local or multicast)", r.IP6)
	case r.IP6.Bits() > 126:
		return fmt.Errorf("ip6 %v: the prefix must be /126 or shorter to hold a gateway", r.IP6)
	case !global6(gw):
		return fmt.Errorf("gateway6 %v: a global unicast IPv6 address is required", gw)
	case gw == a:
		return fmt.Errorf("gateway6 %v is the pod's own address", gw)
	case !r.Range6.IsValid() || r.Range6 != r.Range6.Masked() || !r.Range6.Contains(a):
		return fmt.Errorf("range6 %v must be a masked prefix holding %v", r.Range6, a)
	}
	return nil
}

// global6 reports an IPv6 unicast address that is neither IPv4-mapped,
// link-local, loopback, unspecified nor multicast (and has no zone).
func global6(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && a.Zone() == "" && !a.IsLinkLocalUnicast() && !a.IsLoopback() &&
		!a.IsUnspecified() && !a.IsMulticast()
}

// Attachment is a recorded attachment: the request plus what the daemon
// made of it. It is also the on-disk state record.
type Attachment struct {
	AttachRequest
	ID string `json:"id"`
	// NIC is the stack's NIC ID for the far end (0 when not attached, e.g.
	// before recovery).
	NIC int `json:"nic,omitempty"`
	// StackMAC is the far end's MAC: the gateway's MAC as the pod sees it.
	StackMAC string    `json:"stackMAC,omitempty"`
	Created  time.Time `json:"created"`
}

// DetachRequest names an attachment by container ID and interface name
// (the daemon derives the far-end name) or by ID.
type DetachRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	ID          string `json:"id,omitempty"`
}

// DetachResponse says what was removed; Found is false when nothing was
// attached (DEL is idempotent, so that is success).
type DetachResponse struct {
	Found      bool        `json:"found"`
	Attachment *Attachment `json:"attachment,omitempty"`
}

// GCAttachment is one valid (container ID, interface name) pair.
type GCAttachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// GCRequest removes every attachment of Network not in Valid.
type GCRequest struct {
	Network string         `json:"network"`
	Valid   []GCAttachment `json:"valid"`
}

// GCResponse lists the attachments GC removed (their veths deleted).
// Errors lists the attachments GC could not remove (the others were).
type GCResponse struct {
	Removed []Attachment `json:"removed"`
	Errors  []string     `json:"errors,omitempty"`
}

// Status is the daemon's health and the stack's counters.
type Status struct {
	Version     string     `json:"version"`
	PID         int        `json:"pid"`
	Started     time.Time  `json:"started"`
	Socket      string     `json:"socket"`
	StateDir    string     `json:"stateDir"`
	StackNetNS  string     `json:"stackNetNS"`
	Attachments int        `json:"attachments"`
	Uplink      *Uplink    `json:"uplink,omitempty"`
	Stack       StackStats `json:"stack"`
	// Proxy is the proxy engine's counters (nil when it does not run).
	Proxy *ProxyStats `json:"proxy,omitempty"`
	// Metrics is the metrics and probe server (serve --metrics-addr); nil
	// when it is off.
	Metrics *MetricsStatus `json:"metrics,omitempty"`
	// Ready is set once start-up recovery finished (what /readyz says).
	Ready bool `json:"ready"`
	// Kubernetes is the node agent's route controller (serve
	// --kubernetes); nil when it does not run.
	Kubernetes *KubeStatus `json:"kubernetes,omitempty"`
}

// KubeStatus is what the route controller of `serve --kubernetes` has
// done (daemon/kube.Status).
type KubeStatus struct {
	// Node is this node's Node object; PodCIDRs its spec.podCIDRs, empty
	// while the controller waits for them (and installs nothing).
	Node     string         `json:"node"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	// Routes are the host routes to other nodes' pod CIDRs the controller
	// owns after its last pass (proto 0x76).
	Routes []KubeRoute `json:"routes"`
	// Reconciles counts passes; Errors the passes that failed (LastError
	// says why); Conflicts the routes left alone because another owner
	// routes their destination.
	Reconciles uint64 `json:"reconciles"`
	Errors     uint64 `json:"errors"`
	Conflicts  uint64 `json:"conflicts"`
	LastError  string `json:"lastError,omitempty"`
}

// KubeRoute is one route to another node's pod CIDR.
type KubeRoute struct {
	Dst  netip.Prefix `json:"dst"`
	Via  netip.Addr   `json:"via"`
	Node string       `json:"node"`
}

// MetricsStatus says where /metrics, /healthz and /readyz are served.
type MetricsStatus struct {
	// Addr is the address asked for; Listening the one bound (a port 0
	// resolved), "" when the listener could not be opened: Error says why.
	Addr      string `json:"addr"`
	Listening string `json:"listening,omitempty"`
	Error     string `json:"error,omitempty"`
}

// ProxyStats are the proxy engine's counters (daemon/proxy.Stats): flows
// open now, and totals since start.
type ProxyStats struct {
	ActiveTCP  int `json:"activeTCP"`
	ActiveUDP  int `json:"activeUDP"`
	ActiveEcho int `json:"activeEcho"`
	PendingTCP int `json:"pendingTCP"`

	TCPAccepted         uint64 `json:"tcpAccepted"`
	TCPRefused          uint64 `json:"tcpRefused"`
	TCPTimeouts         uint64 `json:"tcpTimeouts"`
	TCPUnreachable      uint64 `json:"tcpUnreachable"`
	TCPNoResources      uint64 `json:"tcpNoResources"`
	FlowLimitDrops      uint64 `json:"flowLimitDrops"`
	UDPFlowsOpened      uint64 `json:"udpFlowsOpened"`
	UDPPortUnreachables uint64 `json:"udpPortUnreachables"`
	UDPICMPErrors       uint64 `json:"udpICMPErrors"`
	EchoRelayed         uint64 `json:"echoRelayed"`
	EchoRawRelayed      uint64 `json:"echoRawRelayed"`
	EchoDenied          uint64 `json:"echoDenied"`
	EchoICMPErrors      uint64 `json:"echoICMPErrors"`
	EchoDropped         uint64 `json:"echoDropped"`
	DNSQueries          uint64 `json:"dnsQueries"`
	DNSFailures         uint64 `json:"dnsFailures"`
	PortMapConns        uint64 `json:"portMapConns"`
	EchoFlowsOpened     uint64 `json:"echoFlowsOpened"`
	UDPIdleTimeouts     uint64 `json:"udpIdleTimeouts"`
	UDPEvicted          uint64 `json:"udpEvicted"`
	UDPDropped          uint64 `json:"udpDropped"`
	UDPNoResources      uint64 `json:"udpNoResources"`
	EchoNoResources     uint64 `json:"echoNoResources"`
	EchoIdleTimeouts    uint64 `json:"echoIdleTimeouts"`

	// Pods are per-pod counters by attachment ID.
	Pods map[string]ProxyPodStats `json:"pods,omitempty"`
}

// ProxyPodStats are one pod's proxy counters.
type ProxyPodStats struct {
	ActiveFlows    int    `json:"activeFlows"`
	FlowLimitDrops uint64 `json:"flowLimitDrops"`
}

// Uplink describes the route-mode uplink once it exists.
type Uplink struct {
	HostIfName string       `json:"hostIfName"`
	HostAddr   netip.Prefix `json:"hostAddr"`
	StackAddr  netip.Prefix `json:"stackAddr"`
	// HostAddr6 and StackAddr6 are the uplink's IPv6 addresses (from
	// --uplink-subnet6), set once a dual-stack pod brought IPv6 up on it.
	HostAddr6  netip.Prefix   `json:"hostAddr6,omitzero"`
	StackAddr6 netip.Prefix   `json:"stackAddr6,omitzero"`
	NIC        int            `json:"nic"`
	Routes     []netip.Prefix `json:"routes"` // pod ranges routed by the host
}

// StackStats are the stack's counters: MIB counters by nstat name, drops
// by reason, and per-NIC counters.
type StackStats struct {
	Counters map[string]uint64 `json:"counters"`
	Drops    map[string]uint64 `json:"drops"`
	NICs     []NICStats        `json:"nics"`
}

// NICStats are one NIC's counters (`ip -s link`).
type NICStats struct {
	ID        int               `json:"id"`
	Name      string            `json:"name"`
	RxPackets uint64            `json:"rxPackets"`
	RxBytes   uint64            `json:"rxBytes"`
	RxDropped uint64            `json:"rxDropped"`
	RxErrors  uint64            `json:"rxErrors,omitempty"`
	TxPackets uint64            `json:"txPackets"`
	TxBytes   uint64            `json:"txBytes"`
	TxDropped uint64            `json:"txDropped"`
	TxErrors  uint64            `json:"txErrors,omitempty"`
	Drops     map[string]uint64 `json:"drops,omitempty"`
}

// Error is a CNI error crossing the socket. The plugin returns it to the
// runtime as a *types.Error with the same code.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
	// Unreachable is set by the Client (never sent) when the daemon could
	// not be reached at all: no socket, connection refused, timeout.
	Unreachable bool `json:"-"`
}

func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + "; " + e.Details
	}
	return e.Msg
}

// CNI converts e to the CNI library's error type.
func (e *Error) CNI() *types.Error { return types.NewError(e.Code, e.Msg, e.Details) }

// Errorf builds an *Error with a code.
func Errorf(code uint, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}
