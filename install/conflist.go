package install

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cni-userstack/cni-userstack/daemon/api"
)

// Defaults of the network the install step writes.
const (
	DefaultNetworkName = "cni-userstack"
	// DefaultCNIVersion is 1.0.0, not 1.1.0: containerd 1.6 (Debian 12's)
	// rejects a result of cniVersion 1.1.0, and 1.0.0 is what every
	// runtime in use reads.
	DefaultCNIVersion = "1.0.0"
	DefaultConfName   = "10-cni-userstack.conflist"
)

// cniVersions are the versions a conflist may declare: the plugin's, less
// 0.3.0 (no runtime of a supported Kubernetes uses it).
var cniVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Network is what the conflist says besides the node's pod CIDRs: the
// ConfigMap's settings and the daemon's paths.
type Network struct {
	Name       string // the CNI network name
	CNIVersion string
	Mode       api.Mode
	MTU        int
	// ClusterCIDRs are the cluster's pod ranges; in proxy mode they are
	// routed (pods on other nodes see the pod's own address), not proxied.
	ClusterCIDRs []netip.Prefix
	// RoutedRanges are more proxy-mode routed ranges (e.g. the Service
	// CIDR, to keep pod source addresses towards Services).
	RoutedRanges []netip.Prefix
	Socket       string
	StateDir     string
	StackNetNS   string
	// IPAMDataDir is host-local's lease directory; empty is its default
	// (/var/lib/cni/networks).
	IPAMDataDir string
}

// pluginConf is the cni-userstack entry of the list (the keys of
// plugin.NetConf).
type pluginConf struct {
	Type         string          `json:"type"`
	Mode         api.Mode        `json:"mode"`
	MTU          int             `json:"mtu,omitempty"`
	RoutedRanges []string        `json:"routedRanges,omitempty"`
	Socket       string          `json:"socket,omitempty"`
	StateDir     string          `json:"stateDir,omitempty"`
	StackNetNS   string          `json:"stackNetNS,omitempty"`
	Autostart    bool            `json:"autostart"`
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	IPAM         ipamConf        `json:"ipam"`
}

type ipamConf struct {
	Type    string            `json:"type"`
	Ranges  [][]ipamRange     `json:"ranges"`
	DataDir string            `json:"dataDir,omitempty"`
	Routes  []json.RawMessage `json:"routes,omitempty"`
}

type ipamRange struct {
	Subnet string `json:"subnet"`
}

type portmapConf struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	SNAT         bool            `json:"snat"`
}

type confList struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}

// Render returns the conflist for a node with podCIDRs. The daemon runs
// apart from the plugin ("autostart": false: the DaemonSet runs it), so
// the entry names its socket, state dir and stack netns. Proxy mode
// serves port mappings itself (the portMappings capability); route mode
// chains portmap for them. The pod CIDRs become host-local's ranges, one
// range set per family (IPv4 first), so a dual-stack node's pods get one
// address of each family. The plugin needs an IPv4 address for every pod:
// a node with no IPv4 pod CIDR (an IPv6-only cluster) is an error, as are
// two pod CIDRs of one family (spec.podCIDRs holds at most one per family).
func Render(n Network, podCIDRs []netip.Prefix) ([]byte, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	var v4, v6 []netip.Prefix
	for _, p := range podCIDRs {
		switch {
		case p != p.Masked() || p.Addr().Zone() != "" || p.Addr().Is4In6():
			return nil, fmt.Errorf("pod CIDR %v is not a network address", p)
		case p.Addr().Is4():
			v4 = append(v4, p)
		default:
			v6 = append(v6, p)
		}
	}
	switch {
	case len(v4) == 0:
		return nil, fmt.Errorf("no IPv4 pod CIDR among %v: cni-userstack gives every pod an IPv4 address (IPv4-only or dual-stack clusters; not IPv6-only)", podCIDRs)
	case len(v4) > 1 || len(v6) > 1:
		return nil, fmt.Errorf("pod CIDRs %v: at most one per family", podCIDRs)
	}
	ranges := [][]ipamRange{{{Subnet: v4[0].String()}}}
	if len(v6) == 1 {
		ranges = append(ranges, []ipamRange{{Subnet: v6[0].String()}})
	}
	pc := pluginConf{Type: "cni-userstack", Mode: n.Mode, MTU: n.MTU, Socket: n.Socket, StateDir: n.StateDir,
		StackNetNS: n.StackNetNS, IPAM: ipamConf{Type: "host-local", Ranges: ranges, DataDir: n.IPAMDataDir}}
	list := confList{CNIVersion: n.CNIVersion, Name: n.Name, Plugins: []any{&pc}}
	switch n.Mode {
	case api.ModeProxy:
		pc.Capabilities = map[string]bool{"portMappings": true}
		for _, p := range n.routed() {
			pc.RoutedRanges = append(pc.RoutedRanges, p.String())
		}
	case api.ModeRoute:
		list.Plugins = append(list.Plugins, portmapConf{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}, SNAT: true})
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// routed is the proxy-mode routed ranges: the cluster CIDRs of both
// families, then the other routed ranges, without duplicates.
func (n Network) routed() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range append(slices.Clone(n.ClusterCIDRs), n.RoutedRanges...) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// check validates the settings; errors name the install flag.
func (n *Network) check() error {
	switch {
	case n.Name == "":
		return fmt.Errorf("--network-name: required")
	case !slices.Contains(cniVersions, n.CNIVersion):
		return fmt.Errorf("--cni-version %q: want one of %v", n.CNIVersion, cniVersions)
	case n.Mode != api.ModeProxy && n.Mode != api.ModeRoute:
		return fmt.Errorf("--mode %q: want %q or %q", n.Mode, api.ModeProxy, api.ModeRoute)
	case n.MTU < 68 || n.MTU > 65535:
		return fmt.Errorf("--mtu %d: want 68..65535", n.MTU)
	case n.Socket == "" || n.StateDir == "" || n.StackNetNS == "":
		return fmt.Errorf("--socket, --state-dir and --stack-netns are required")
	}
	for _, p := range append(slices.Clone(n.ClusterCIDRs), n.RoutedRanges...) {
		if p != p.Masked() {
			return fmt.Errorf("--cluster-cidr/--routed-ranges: %v is not a network address (want %v)", p, p.Masked())
		}
	}
	if err := api.CheckRoutedRanges(n.routed()); err != nil {
		return fmt.Errorf("--cluster-cidr/--routed-ranges: %w", err)
	}
	return nil
}
