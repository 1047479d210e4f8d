// Package plugin owns the CNI side of cni-userstack (CNI spec 1.1.0): the
// network configuration, the ADD, DEL, CHECK, GC and STATUS commands, the
// delegation to the IPAM plugin, autostarting the daemon, and the result in
// the shape of the requested cniVersion.
//
// Not owned here: the veth pair and namespaces (veth), what the daemon
// does with an attachment (daemon), the wire types (daemon/api).
//
// Every error a command returns is a *types.Error with the spec's code
// (1 incompatible version, 2 unsupported field, 3 unknown container,
// 4 invalid environment, 5 I/O, 6 decode, 7 invalid network config, 8 bad
// netns, 11 try again later, 50/51 for STATUS) or one of the plugin codes
// of daemon/api (100 attachment exists, 101 attachment broken, 102 stack
// refused), with a message that says what to do. ADD undoes everything it
// did through one deferred LIFO undo list; DEL succeeds when anything is
// already gone.
package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cni-userstack/cni-userstack/daemon"
	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the CNI "type" of this plugin.
const PluginType = "cni-userstack"

// Defaults of the network configuration keys.
const (
	DefaultMTU      = 1500
	DefaultStateDir = daemon.DefaultStateDir
	MinMTU, MaxMTU  = 68, 65535
)

// UplinkConf is the route-mode uplink of the daemon the plugin autostarts.
type UplinkConf struct {
	// Subnet is a link-local IPv4 /30 (or shorter); the host end gets the
	// first address, the stack the second.
	Subnet string `json:"subnet,omitempty"`
	// Subnet6 is the uplink's IPv6 prefix (/126 or shorter), brought up
	// with the first dual-stack pod; the host end gets ::1, the stack ::2.
	Subnet6 string `json:"subnet6,omitempty"`
	// HostIfName is the uplink's name in the host netns.
	HostIfName string `json:"hostIfName,omitempty"`
}

// NetConf is the network configuration (stdin of every command).
type NetConf struct {
	types.PluginConf

	Mode       api.Mode    `json:"mode,omitempty"`
	MTU        int         `json:"mtu,omitempty"`
	Socket     string      `json:"socket,omitempty"`
	Autostart  *bool       `json:"autostart,omitempty"`
	StateDir   string      `json:"stateDir,omitempty"`
	StackNetNS string      `json:"stackNetNS,omitempty"`
	Uplink     *UplinkConf `json:"-"`
	LogFile    string      `json:"logFile,omitempty"`
	// RoutedRanges (proxy mode) are CIDRs forwarded through the uplink
	// with the pod's own address instead of proxied.
	RoutedRanges []string `json:"routedRanges,omitempty"`
	// RouterAdvertisements makes the stack send Router Advertisements
	// to dual-stack pods (api.AttachRequest.RouterAdvert); off by
	// default: the pod's routes come from CNI.
	RouterAdvertisements bool `json:"routerAdvertisements,omitempty"`
	// RuntimeConfig carries the capabilities' arguments the runtime
	// injects (capabilities: {"portMappings": true}).
	RuntimeConfig struct {
		PortMappings []PortMapEntry `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	// Attachments is the valid-attachments list under the key of the
	// original spec text (libcni sends both).
	Attachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`

	RawUplink json.RawMessage `json:"uplink,omitempty"`

	// Derived by LoadConf.
	uplinkSubnet  netip.Prefix
	uplinkSubnet6 netip.Prefix
	routed        []netip.Prefix
}

// PortMapEntry is one runtimeConfig.portMappings entry, in the CNI
// convention of the portMappings capability (CONVENTIONS.md).
type PortMapEntry struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Routed is the parsed routedRanges.
func (c *NetConf) Routed() []netip.Prefix { return c.routed }

// PortMappings checks and normalises the runtime's port mappings (protocol
// lowercased, "tcp" by default); a bad one is code 7. Only ADD checks
// them: DEL must clean up whatever the runtime passes. Route mode leaves
// them to a chained portmap plugin (the runtime hands them to every
// plugin of the list that declares the capability) and returns none.
func (c *NetConf) PortMappings() ([]api.PortMapping, error) {
	if c.Mode == api.ModeRoute {
		return nil, nil
	}
	in := make([]api.PortMapping, 0, len(c.RuntimeConfig.PortMappings))
	for _, m := range c.RuntimeConfig.PortMappings {
		in = append(in, api.PortMapping{HostPort: m.HostPort, ContainerPort: m.ContainerPort, Protocol: m.Protocol, HostIP: m.HostIP})
	}
	out, err := api.NormalizePortMappings(in)
	if err != nil {
		return nil, confErr("runtimeConfig.portMappings: %v", err)
	}
	return out, nil
}

// AutostartOn reports the autostart setting (default true).
func (c *NetConf) AutostartOn() bool { return c.Autostart == nil || *c.Autostart }

// UplinkSubnet is the parsed uplink subnet.
func (c *NetConf) UplinkSubnet() netip.Prefix { return c.uplinkSubnet }

// UplinkSubnet6 is the parsed IPv6 uplink subnet.
func (c *NetConf) UplinkSubnet6() netip.Prefix { return c.uplinkSubnet6 }

// LogPath is where an autostarted daemon logs.
func (c *NetConf) LogPath() string {
	if c.LogFile != "" {
		return c.LogFile
	}
	return filepath.Join(c.StateDir, "daemon.log")
}

// ValidAttachmentList merges both keys of the GC valid list.
func (c *NetConf) ValidAttachmentList() []api.GCAttachment {
	seen := map[types.GCAttachment]bool{}
	var out []api.GCAttachment
	for _, l := range [][]types.GCAttachment{c.ValidAttachments, c.Attachments} {
		for _, a := range l {
			if !seen[a] {
				seen[a] = true
				out = append(out, api.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
			}
		}
	}
	return out
}

func confErr(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

// LoadConf parses and checks the network configuration and fills the
// defaults. Errors are *types.Error: 6 for JSON that does not decode,
// 2 for an unknown key in the uplink object, 7 for a value that is wrong.
// A prevResult is parsed into PrevResult.
func LoadConf(stdin []byte) (*NetConf, error) {
	c := &NetConf{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network config is not valid JSON for %s: %v", PluginType, err), "")
	}
	if c.Type != PluginType {
		return nil, confErr("type is %q: this plugin is %q", c.Type, PluginType)
	}
	if c.Name == "" {
		return nil, confErr("name is missing: every network needs a name")
	}
	switch c.Mode {
	case "":
		c.Mode = api.DefaultMode
	case api.ModeProxy, api.ModeRoute:
	default:
		return nil, confErr(`mode %q is unknown: use "proxy" (the default) or "route"`, c.Mode)
	}
	if len(c.RoutedRanges) > api.MaxRoutedRanges {
		return nil, confErr("routedRanges: %d ranges, at most %d", len(c.RoutedRanges), api.MaxRoutedRanges)
	}
	for _, r := range c.RoutedRanges {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, confErr("routedRanges: %q is not a CIDR: %v", r, err)
		}
		if err := api.CheckRoutedRanges([]netip.Prefix{p}); err != nil {
			return nil, confErr("routedRanges: %v", err)
		}
		c.routed = append(c.routed, p)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < MinMTU || c.MTU > MaxMTU {
		return nil, confErr("mtu %d is out of range: use %d..%d (default %d)", c.MTU, MinMTU, MaxMTU, DefaultMTU)
	}
	if c.IPAM.Type == "" {
		return nil, confErr(`ipam is missing: add an IPAM section, e.g. "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}`)
	}
	if c.Socket == "" {
		c.Socket = api.DefaultSocket
	}
	if !filepath.IsAbs(c.Socket) {
		return nil, confErr("socket %q must be an absolute path", c.Socket)
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(c.StateDir) {
		return nil, confErr("stateDir %q must be an absolute path", c.StateDir)
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return nil, confErr("logFile %q must be an absolute path", c.LogFile)
	}
	if c.StackNetNS == "" {
		c.StackNetNS = veth.DefaultStackNetNS
	}
	if !validNetNSName(c.StackNetNS) {
		return nil, confErr("stackNetNS %q is not a valid netns name (letters, digits, '-', '_', '.'; no '/')", c.StackNetNS)
	}
	if err := c.loadUplink(); err != nil {
		return nil, err
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult does not parse: %v", err), "")
		}
	}
	return c, nil
}

func (c *NetConf) loadUplink() error {
	u := &UplinkConf{}
	if len(c.RawUplink) > 0 && !bytes.Equal(bytes.TrimSpace(c.RawUplink), []byte("null")) {
		dec := json.NewDecoder(bytes.NewReader(c.RawUplink))
		dec.DisallowUnknownFields()
		if err := dec.Decode(u); err != nil {
			return types.NewError(types.ErrUnsupportedField, fmt.Sprintf("uplink: %v (supported keys: subnet, subnet6, hostIfName)", err), "")
		}
	}
	if u.Subnet == "" {
		u.Subnet = daemon.DefaultUplinkSubnet.String()
	}
	p, err := netip.ParsePrefix(u.Subnet)
	if err != nil {
		return confErr("uplink.subnet %q: %v", u.Subnet, err)
	}
	if _, _, err := daemon.UplinkAddrs(p); err != nil {
		return confErr("uplink.subnet: %v", err)
	}
	if u.Subnet6 == "" {
		u.Subnet6 = daemon.DefaultUplinkSubnet6.String()
	}
	p6, err := netip.ParsePrefix(u.Subnet6)
	if err != nil {
		return confErr("uplink.subnet6 %q: %v", u.Subnet6, err)
	}
	if _, _, err := daemon.UplinkAddrs6(p6); err != nil {
		return confErr("uplink.subnet6: %v", err)
	}
	c.uplinkSubnet6 = p6.Masked()
	if u.HostIfName == "" {
		u.HostIfName = daemon.DefaultUplinkHostIfName
	}
	if len(u.HostIfName) > 15 || !validNetNSName(u.HostIfName) {
		return confErr("uplink.hostIfName %q is not a valid interface name (1..15 bytes, no '/', ':' or spaces)", u.HostIfName)
	}
	c.Uplink = u
	c.uplinkSubnet = p.Masked()
	return nil
}

func validNetNSName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 255 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') {
			return false
		}
	}
	return true
}
