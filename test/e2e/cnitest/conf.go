package cnitest

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// HostLocal is a host-local IPAM section with one range (subnet, gateway
// defaulting to its first address) and a private dataDir.
func HostLocal(subnet netip.Prefix, dataDir string) map[string]any {
	return map[string]any{
		"type":    "host-local",
		"ranges":  [][]map[string]any{{{"subnet": subnet.Masked().String()}}},
		"dataDir": dataDir,
	}
}

// PTPConfJSON is a conflist for the reference ptp plugin with host-local
// IPAM on subnet (no masquerade: the tests keep traffic inside their own
// namespaces), mtu 0 = the plugin's default. It is the baseline beside which
// our plugin is measured.
func PTPConfJSON(t testing.TB, name, cniVersion string, subnet netip.Prefix, dataDir string, mtu int) string {
	t.Helper()
	p := map[string]any{
		"type":   "ptp",
		"ipMasq": false,
		"ipam":   HostLocal(subnet, dataDir),
	}
	if mtu > 0 {
		p["mtu"] = mtu
	}
	b, err := json.Marshal(map[string]any{
		"cniVersion": cniVersion,
		"name":       name,
		"plugins":    []any{p},
	})
	if err != nil {
		t.Fatalf("cnitest: ptp conflist: %v", err)
	}
	return string(b)
}

// Reservations lists the addresses host-local holds for network name in
// dataDir (its files named after addresses; "lock" and last_reserved_ip.*
// are not reservations).
func Reservations(t testing.TB, dataDir, name string) []netip.Addr {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dataDir, name))
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatalf("cnitest: host-local dataDir: %v", err)
	}
	var ips []netip.Addr
	for _, e := range ents {
		if a, err := netip.ParseAddr(e.Name()); err == nil {
			ips = append(ips, a)
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips
}

// HostLocalDual is HostLocal with two ranges, one per family (subnet and
// subnet6): host-local hands each pod one address of each (dual stack).
func HostLocalDual(subnet, subnet6 netip.Prefix, dataDir string) map[string]any {
	return map[string]any{
		"type":    "host-local",
		"ranges":  [][]map[string]any{{{"subnet": subnet.Masked().String()}}, {{"subnet": subnet6.Masked().String()}}},
		"dataDir": dataDir,
	}
}
