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
package api

import (
	"fmt"
	"net/netip"
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
	// ModeRoute forwards through the stack's routing table and the uplink.
	ModeRoute Mode = "route"
	// ModeProxy terminates flows in the stack (a later release).
	ModeProxy Mode = "proxy"
)

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
	MTU   int          `json:"mtu"`
	Mode  Mode         `json:"mode"`
}

// Validate checks a request before the daemon acts on it.
func (r *AttachRequest) Validate() error {
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
	case r.Mode != ModeRoute:
		return fmt.Errorf("mode %q: only %q is implemented", r.Mode, ModeRoute)
	}
	return nil
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
}

// Uplink describes the route-mode uplink once it exists.
type Uplink struct {
	HostIfName string         `json:"hostIfName"`
	HostAddr   netip.Prefix   `json:"hostAddr"`
	StackAddr  netip.Prefix   `json:"stackAddr"`
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
	TxPackets uint64            `json:"txPackets"`
	TxBytes   uint64            `json:"txBytes"`
	TxDropped uint64            `json:"txDropped"`
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
