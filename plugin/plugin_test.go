package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func conf(mod func(m map[string]any)) []byte {
	m := map[string]any{
		"cniVersion": "1.1.0", "name": "net1", "type": "cni-userstack",
		"ipam": map[string]any{"type": "host-local", "subnet": "10.1.0.0/24"},
	}
	if mod != nil {
		mod(m)
	}
	b, _ := json.Marshal(m)
	return b
}

func TestLoadConfDefaults(t *testing.T) {
	c, err := LoadConf(conf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := struct {
		mode       api.Mode
		mtu        int
		socket     string
		stateDir   string
		stackNetNS string
		autostart  bool
		subnet     string
		hostIf     string
		log        string
	}{"proxy", 1500, "/run/cni-userstack/daemon.sock", "/var/lib/cni-userstack", "cni-userstack", true,
		"169.254.100.0/30", "cni-us-uplink", "/var/lib/cni-userstack/daemon.log"}
	got := want
	got.mode, got.mtu, got.socket, got.stateDir, got.stackNetNS = c.Mode, c.MTU, c.Socket, c.StateDir, c.StackNetNS
	got.autostart, got.subnet, got.hostIf, got.log = c.AutostartOn(), c.UplinkSubnet().String(), c.Uplink.HostIfName, c.LogPath()
	if got != want {
		t.Fatalf("defaults: got %+v, want %+v", got, want)
	}
	if c.UplinkSubnet6() != netip.MustParsePrefix("fd57:7c5d:8e2a:75::/64") {
		t.Fatalf("default uplink.subnet6: %v", c.UplinkSubnet6())
	}
	if len(c.Routed()) != 0 {
		t.Fatalf("default routed ranges: %v", c.Routed())
	}
	if pm, err := c.PortMappings(); err != nil || len(pm) != 0 {
		t.Fatalf("default port mappings: %v %v", pm, err)
	}
}

func TestLoadConfSettings(t *testing.T) {
	c, err := LoadConf(conf(func(m map[string]any) {
		m["mtu"], m["socket"], m["autostart"], m["stateDir"], m["stackNetNS"], m["logFile"] = 9000, "/tmp/x.sock", false, "/tmp/st", "ns-1", "/tmp/l.log"
		m["uplink"] = map[string]any{"subnet": "169.254.7.5/30", "subnet6": "fd00:7::9/120", "hostIfName": "up0"}
		m["mode"], m["routedRanges"] = "route", []string{"10.244.0.0/16", "192.168.7.0/24"}
		m["cni.dev/attachments"] = []any{map[string]any{"containerID": "a", "ifname": "eth0"}}
		m["cni.dev/valid-attachments"] = []any{map[string]any{"containerID": "a", "ifname": "eth0"}, map[string]any{"containerID": "b", "ifname": "eth1"}}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MTU != 9000 || c.Socket != "/tmp/x.sock" || c.AutostartOn() || c.StateDir != "/tmp/st" || c.StackNetNS != "ns-1" ||
		c.LogPath() != "/tmp/l.log" || c.UplinkSubnet() != netip.MustParsePrefix("169.254.7.4/30") || c.Uplink.HostIfName != "up0" ||
		c.UplinkSubnet6() != netip.MustParsePrefix("fd00:7::/120") ||
		c.Mode != api.ModeRoute || !reflect.DeepEqual(c.Routed(), []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("192.168.7.0/24")}) {
		t.Fatalf("settings not applied: %+v", c)
	}
	want := []api.GCAttachment{{ContainerID: "a", IfName: "eth0"}, {ContainerID: "b", IfName: "eth1"}}
	if got := c.ValidAttachmentList(); !reflect.DeepEqual(got, want) {
		t.Fatalf("valid attachments: %v, want %v", got, want)
	}
}

func TestLoadConfErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stdin []byte
		code  uint
		msg   string
	}{
		{"garbage", []byte("{nope"), types.ErrDecodingFailure, "not valid JSON"},
		{"wrong type", conf(func(m map[string]any) { m["type"] = "ptp" }), types.ErrInvalidNetworkConfig, `type is "ptp"`},
		{"missing name", conf(func(m map[string]any) { delete(m, "name") }), types.ErrInvalidNetworkConfig, "name is missing"},
		{"missing ipam", conf(func(m map[string]any) { delete(m, "ipam") }), types.ErrInvalidNetworkConfig, "ipam is missing"},
		{"ipam without type", conf(func(m map[string]any) { m["ipam"] = map[string]any{} }), types.ErrInvalidNetworkConfig, "ipam is missing"},
		{"negative mtu", conf(func(m map[string]any) { m["mtu"] = -5 }), types.ErrInvalidNetworkConfig, "mtu -5 is out of range"},
		{"small mtu", conf(func(m map[string]any) { m["mtu"] = 67 }), types.ErrInvalidNetworkConfig, "mtu 67"},
		{"oversized mtu", conf(func(m map[string]any) { m["mtu"] = 65536 }), types.ErrInvalidNetworkConfig, "mtu 65536"},
		{"mtu not a number", conf(func(m map[string]any) { m["mtu"] = "big" }), types.ErrDecodingFailure, "mtu"},
		{"unknown mode", conf(func(m map[string]any) { m["mode"] = "bridge" }), types.ErrInvalidNetworkConfig, `mode "bridge" is unknown: use "proxy" (the default) or "route"`},
		{"mode case", conf(func(m map[string]any) { m["mode"] = "Proxy" }), types.ErrInvalidNetworkConfig, `mode "Proxy" is unknown`},
		{"routed range garbage", conf(func(m map[string]any) { m["routedRanges"] = []string{"10.0.0.0/8", "pods"} }), types.ErrInvalidNetworkConfig, `"pods" is not a CIDR`},
		{"routed range address", conf(func(m map[string]any) { m["routedRanges"] = []string{"10.0.0.1"} }), types.ErrInvalidNetworkConfig, "not a CIDR"},
		{"routed range host bits", conf(func(m map[string]any) { m["routedRanges"] = []string{"10.244.1.0/16"} }), types.ErrInvalidNetworkConfig, "did you mean 10.244.0.0/16"},
		{"routed range IPv4-mapped", conf(func(m map[string]any) { m["routedRanges"] = []string{"::ffff:10.0.0.0/104"} }), types.ErrInvalidNetworkConfig, "IPv4 or IPv6"},
		{"routed ranges not a list", conf(func(m map[string]any) { m["routedRanges"] = "10.0.0.0/8" }), types.ErrDecodingFailure, "routedRanges"},
		{"too many routed ranges", conf(func(m map[string]any) {
			var l []string
			for i := 0; i <= api.MaxRoutedRanges; i++ {
				l = append(l, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16).String())
			}
			m["routedRanges"] = l
		}), types.ErrInvalidNetworkConfig, "at most"},
		{"relative socket", conf(func(m map[string]any) { m["socket"] = "d.sock" }), types.ErrInvalidNetworkConfig, "absolute"},
		{"relative stateDir", conf(func(m map[string]any) { m["stateDir"] = "st" }), types.ErrInvalidNetworkConfig, "absolute"},
		{"bad stackNetNS", conf(func(m map[string]any) { m["stackNetNS"] = "a/b" }), types.ErrInvalidNetworkConfig, "stackNetNS"},
		{"uplink unknown key", conf(func(m map[string]any) { m["uplink"] = map[string]any{"gateway": "x"} }), types.ErrUnsupportedField, "gateway"},
		{"uplink subnet garbage", conf(func(m map[string]any) { m["uplink"] = map[string]any{"subnet": "x"} }), types.ErrInvalidNetworkConfig, "uplink.subnet"},
		{"uplink subnet too small", conf(func(m map[string]any) { m["uplink"] = map[string]any{"subnet": "169.254.1.0/31"} }), types.ErrInvalidNetworkConfig, "/30"},
		{"uplink IPv6", conf(func(m map[string]any) { m["uplink"] = map[string]any{"subnet": "fe80::/64"} }), types.ErrInvalidNetworkConfig, "IPv4"},
		{"uplink subnet6 IPv4", conf(func(m map[string]any) { m["uplink"] = map[string]any{"subnet6": "169.254.1.0/30"} }), types.ErrInvalidNetworkConfig, "uplink.subnet6"},
		{"uplink subnet6 link-local", conf(func(m map[string]any) { m["uplink"] = map[string]any{"subnet6": "fe80::/64"} }), types.ErrInvalidNetworkConfig, "global unicast"},
		{"uplink subnet6 /127", conf(func(m map[string]any) { m["uplink"] = map[string]any{"subnet6": "fd00::/127"} }), types.ErrInvalidNetworkConfig, "/126"},
		{"uplink subnet6 garbage", conf(func(m map[string]any) { m["uplink"] = map[string]any{"subnet6": "x"} }), types.ErrInvalidNetworkConfig, "uplink.subnet6"},
		{"uplink long name", conf(func(m map[string]any) { m["uplink"] = map[string]any{"hostIfName": "abcdefghijklmnop"} }), types.ErrInvalidNetworkConfig, "hostIfName"},
		{"bad prevResult", conf(func(m map[string]any) { m["prevResult"] = map[string]any{"ips": "x"} }), types.ErrDecodingFailure, "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConf(tc.stdin)
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v (%T) is not a *types.Error", err, err)
			}
			if te.Code != tc.code || !strings.Contains(te.Error(), tc.msg) {
				t.Fatalf("got code %d %q, want code %d containing %q", te.Code, te.Error(), tc.code, tc.msg)
			}
		})
	}
}

func ipamResult(t *testing.T, js string) *current.Result {
	t.Helper()
	var r current.Result
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func TestPodAddressing(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  string
		want *podAddr
		err  string
	}{
		// The ptp shape: the gateway on-link, the range via the gateway,
		// then the IPAM routes (or a default route) via the gateway.
		{"gateway and no routes", `{"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}]}`,
			&podAddr{IP: netip.MustParsePrefix("10.1.0.5/24"), Gateway: netip.MustParseAddr("10.1.0.1"), Range: netip.MustParsePrefix("10.1.0.0/24"),
				Routes: []veth.Route{{Dst: netip.MustParsePrefix("10.1.0.1/32")}, {Dst: netip.MustParsePrefix("10.1.0.0/24"), GW: netip.MustParseAddr("10.1.0.1")},
					{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.1.0.1")}}}, ""},
		{"no gateway: first address", `{"ips":[{"address":"10.1.0.5/24"}]}`,
			&podAddr{IP: netip.MustParsePrefix("10.1.0.5/24"), Gateway: netip.MustParseAddr("10.1.0.1"), Range: netip.MustParsePrefix("10.1.0.0/24"),
				Routes: []veth.Route{{Dst: netip.MustParsePrefix("10.1.0.1/32")}, {Dst: netip.MustParsePrefix("10.1.0.0/24"), GW: netip.MustParseAddr("10.1.0.1")},
					{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.1.0.1")}}}, ""},
		{"IPAM routes, gateway filled, the range once", `{"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.254"}],"routes":[{"dst":"10.9.0.0/16"},{"dst":"10.1.0.0/24"},{"dst":"0.0.0.0/0","gw":"10.1.0.254"}]}`,
			&podAddr{IP: netip.MustParsePrefix("10.1.0.5/24"), Gateway: netip.MustParseAddr("10.1.0.254"), Range: netip.MustParsePrefix("10.1.0.0/24"),
				Routes: []veth.Route{{Dst: netip.MustParsePrefix("10.1.0.254/32")}, {Dst: netip.MustParsePrefix("10.1.0.0/24"), GW: netip.MustParseAddr("10.1.0.254")},
					{Dst: netip.MustParsePrefix("10.9.0.0/16"), GW: netip.MustParseAddr("10.1.0.254")},
					{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.1.0.254")}}}, ""},
		{"no address", `{"ips":[]}`, nil, "no IPv4 address"},
		{"IPv6 only", `{"ips":[{"address":"fd00::5/64"}]}`, nil, "needs an IPv4 address beside it"},
		// Dual stack: one address per family, each family's routes in
		// the ptp shape via its own gateway.
		{"dual stack", `{"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"address":"fd00:1::5/64","gateway":"fd00:1::1"}]}`,
			&podAddr{IP: netip.MustParsePrefix("10.1.0.5/24"), Gateway: netip.MustParseAddr("10.1.0.1"), Range: netip.MustParsePrefix("10.1.0.0/24"),
				IP6: netip.MustParsePrefix("fd00:1::5/64"), Gateway6: netip.MustParseAddr("fd00:1::1"), Range6: netip.MustParsePrefix("fd00:1::/64"),
				Routes: []veth.Route{{Dst: netip.MustParsePrefix("10.1.0.1/32")}, {Dst: netip.MustParsePrefix("10.1.0.0/24"), GW: netip.MustParseAddr("10.1.0.1")},
					{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.1.0.1")},
					{Dst: netip.MustParsePrefix("fd00:1::1/128")}, {Dst: netip.MustParsePrefix("fd00:1::/64"), GW: netip.MustParseAddr("fd00:1::1")},
					{Dst: netip.MustParsePrefix("::/0"), GW: netip.MustParseAddr("fd00:1::1")}}}, ""},
		{"dual stack, IPv6 first, no gateways, IPAM routes per family", `{"ips":[{"address":"fd00:1::5/64"},{"address":"10.1.0.5/24"}],"routes":[{"dst":"2001:db8::/32"},{"dst":"10.9.0.0/16"}]}`,
			&podAddr{IP: netip.MustParsePrefix("10.1.0.5/24"), Gateway: netip.MustParseAddr("10.1.0.1"), Range: netip.MustParsePrefix("10.1.0.0/24"),
				IP6: netip.MustParsePrefix("fd00:1::5/64"), Gateway6: netip.MustParseAddr("fd00:1::1"), Range6: netip.MustParsePrefix("fd00:1::/64"),
				Routes: []veth.Route{{Dst: netip.MustParsePrefix("10.1.0.1/32")}, {Dst: netip.MustParsePrefix("10.1.0.0/24"), GW: netip.MustParseAddr("10.1.0.1")},
					{Dst: netip.MustParsePrefix("10.9.0.0/16"), GW: netip.MustParseAddr("10.1.0.1")},
					{Dst: netip.MustParsePrefix("fd00:1::1/128")}, {Dst: netip.MustParsePrefix("fd00:1::/64"), GW: netip.MustParseAddr("fd00:1::1")},
					{Dst: netip.MustParsePrefix("2001:db8::/32"), GW: netip.MustParseAddr("fd00:1::1")}}}, ""},
		{"two IPv6", `{"ips":[{"address":"10.1.0.5/24"},{"address":"fd00:1::5/64"},{"address":"fd00:2::5/64"}]}`, nil, "more than one IPv6"},
		{"IPv6 link-local", `{"ips":[{"address":"10.1.0.5/24"},{"address":"fe80::5/64"}]}`, nil, "global unicast"},
		{"IPv6 /127", `{"ips":[{"address":"10.1.0.5/24"},{"address":"fd00:1::5/127"}]}`, nil, "/126 or shorter"},
		{"IPv6 gateway is the pod", `{"ips":[{"address":"10.1.0.5/24"},{"address":"fd00:1::1/64"}]}`, nil, "not usable"},
		{"IPv6 gateway outside the subnet", `{"ips":[{"address":"10.1.0.5/24"},{"address":"fd00:1::5/64","gateway":"fd00:2::1"}]}`, nil, "not usable"},
		{"IPv6 gateway of the other family", `{"ips":[{"address":"10.1.0.5/24"},{"address":"fd00:1::5/64","gateway":"10.1.0.1"}]}`, nil, "not usable"},
		{"two IPv4", `{"ips":[{"address":"10.1.0.5/24"},{"address":"10.2.0.5/24"}]}`, nil, "more than one"},
		{"gateway is the pod", `{"ips":[{"address":"10.1.0.1/24"}]}`, nil, "not usable"},
		{"/32", `{"ips":[{"address":"10.1.0.1/32"}]}`, nil, "/30 or shorter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := podAddressing(ipamResult(t, tc.res))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
					t.Fatalf("err %v is not a code 7 *types.Error", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v %v, want %+v", got, err, tc.want)
			}
		})
	}
}

// TestDualStackResultPerVersion: a dual-stack ADD result carries both
// addresses, their gateways and both families' routes (prefix lengths of
// their own family) in every supported version (all of them carry IPv6:
// 0.3.0 and later have "ips" with any family; 0.3.x/0.4.0 also say
// "version": "6"), and CHECK's reading of it (resultIPs) finds both
// families' ptp shapes.
func TestDualStackResultPerVersion(t *testing.T) {
	ipamRes := ipamResult(t, `{"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"address":"fd00:1::5/64","gateway":"fd00:1::1"}]}`)
	pa, err := podAddressing(ipamRes)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	res := buildResult(nil, types.DNS{}, "eth0", "/var/run/netns/p1", mac, pa)
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			r, err := res.GetAsVersion(v)
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var raw struct {
				IPs []struct {
					Version, Address, Gateway string
					Interface                 *int
				} `json:"ips"`
				Routes []struct{ Dst, GW string } `json:"routes"`
			}
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			if len(raw.IPs) != 2 || raw.IPs[0].Address != "10.1.0.5/24" || raw.IPs[1].Address != "fd00:1::5/64" ||
				raw.IPs[1].Gateway != "fd00:1::1" || raw.IPs[1].Interface == nil || *raw.IPs[1].Interface != 0 {
				t.Fatalf("%s ips: %s", v, b)
			}
			if wantVer := v < "1.0.0"; wantVer && (raw.IPs[0].Version != "4" || raw.IPs[1].Version != "6") {
				t.Fatalf("%s: ips versions %q %q: %s", v, raw.IPs[0].Version, raw.IPs[1].Version, b)
			}
			var routes []string
			for _, rt := range raw.Routes {
				routes = append(routes, rt.Dst+" "+rt.GW)
			}
			want := []string{"10.1.0.1/32 ", "10.1.0.0/24 10.1.0.1", "0.0.0.0/0 10.1.0.1", "fd00:1::1/128 ", "fd00:1::/64 fd00:1::1", "::/0 fd00:1::1"}
			if !reflect.DeepEqual(routes, want) {
				t.Fatalf("%s routes %q, want %q", v, routes, want)
			}
			// CHECK reads the cached result back (as the runtime passes it).
			back, err := current.NewResultFromResult(r)
			if err != nil {
				t.Fatal(err)
			}
			ips, gotMAC, wantRoutes, err := resultIPs(back, "eth0", "/var/run/netns/p1")
			sameSet := func(a, b []veth.Route) bool {
				return len(a) == len(b) && !slices.ContainsFunc(a, func(r veth.Route) bool { return !slices.Contains(b, r) })
			}
			if err != nil || gotMAC != "02:00:00:00:00:05" || !reflect.DeepEqual(ips, pa.IPs()) || !sameSet(wantRoutes, pa.Routes) {
				t.Fatalf("%s resultIPs: %v %q %v %v, want %v %v", v, ips, gotMAC, wantRoutes, err, pa.IPs(), pa.Routes)
			}
		})
	}
}

// TestCheckDaemonIPs: CHECK wants the daemon's attachment to hold the
// result's addresses of both families, and no IPv6 the result lacks.
func TestCheckDaemonIPs(t *testing.T) {
	p4, p6 := netip.MustParsePrefix("10.1.0.5/24"), netip.MustParsePrefix("fd00:1::5/64")
	at := func(ip, ip6 netip.Prefix) *api.Attachment {
		return &api.Attachment{AttachRequest: api.AttachRequest{IP: ip, IP6: ip6}}
	}
	for _, tc := range []struct {
		name string
		want []netip.Prefix
		a    *api.Attachment
		err  string
	}{
		{"IPv4 only", []netip.Prefix{p4}, at(p4, netip.Prefix{}), ""},
		{"dual stack", []netip.Prefix{p4, p6}, at(p4, p6), ""},
		{"other IPv4", []netip.Prefix{p4}, at(netip.MustParsePrefix("10.1.0.6/24"), netip.Prefix{}), "the daemon attached 10.1.0.6/24"},
		{"daemon lacks IPv6", []netip.Prefix{p4, p6}, at(p4, netip.Prefix{}), "says fd00:1::5/64"},
		{"other IPv6", []netip.Prefix{p4, p6}, at(p4, netip.MustParsePrefix("fd00:1::6/64")), "IPv6 address fd00:1::6/64"},
		{"result lacks IPv6", []netip.Prefix{p4}, at(p4, p6), "the ADD result has none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkDaemonIPs(tc.want, tc.a)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("err %v, want %q", err, tc.err)
			}
		})
	}
}

// TestResultShapePerVersion converts the ADD result to every supported
// version and checks each one's shape.
func TestResultShapePerVersion(t *testing.T) {
	ipamRes := ipamResult(t, `{"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}],"dns":{"nameservers":["10.1.0.53"]}}`)
	pa, err := podAddressing(ipamRes)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	res := buildResult(nil, ipamRes.DNS, "eth0", "/var/run/netns/p1", mac, pa)
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			r, err := res.GetAsVersion(v)
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var raw struct {
				CNIVersion string `json:"cniVersion"`
				Interfaces []struct {
					Name, Mac, Sandbox string
				} `json:"interfaces"`
				IPs    []map[string]any `json:"ips"`
				Routes []struct {
					Dst, GW string
				} `json:"routes"`
				DNS struct {
					Nameservers []string
				} `json:"dns"`
			}
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			if raw.CNIVersion != v || len(raw.Interfaces) != 1 || raw.Interfaces[0].Name != "eth0" ||
				raw.Interfaces[0].Sandbox != "/var/run/netns/p1" || raw.Interfaces[0].Mac != "02:00:00:00:00:05" {
				t.Fatalf("%s: %s", v, b)
			}
			if len(raw.IPs) != 1 || raw.IPs[0]["address"] != "10.1.0.5/24" || raw.IPs[0]["gateway"] != "10.1.0.1" || raw.IPs[0]["interface"] != 0.0 {
				t.Fatalf("%s ips: %s", v, b)
			}
			_, hasVer := raw.IPs[0]["version"]
			if wantVer := v < "1.0.0"; hasVer != wantVer {
				t.Fatalf("%s: ips[0].version present=%v, want %v: %s", v, hasVer, wantVer, b)
			}
			if len(raw.Routes) != 3 || raw.Routes[0].Dst != "10.1.0.1/32" || raw.Routes[0].GW != "" ||
				raw.Routes[1].Dst != "10.1.0.0/24" || raw.Routes[1].GW != "10.1.0.1" ||
				raw.Routes[2].Dst != "0.0.0.0/0" || raw.Routes[2].GW != "10.1.0.1" {
				t.Fatalf("%s routes: %s", v, b)
			}
			// The gateway's route is on-link: spec 1.1's "scope" (253,
			// link), which libcni's conversion keeps in every version
			// (older readers ignore it).
			if !strings.Contains(string(b), `{"dst":"10.1.0.1/32","scope":253}`) {
				t.Fatalf("%s: gateway route without scope link: %s", v, b)
			}
			if len(raw.DNS.Nameservers) != 1 || raw.DNS.Nameservers[0] != "10.1.0.53" {
				t.Fatalf("%s dns: %s", v, b)
			}
		})
	}
}

// TestResultChained appends our interface to a previous plugin's result.
func TestResultChained(t *testing.T) {
	prev := ipamResult(t, `{"cniVersion":"1.1.0","interfaces":[{"name":"lo","sandbox":"/p"}],"ips":[{"address":"127.0.0.1/8","interface":0}],"dns":{"nameservers":["1.1.1.1"]}}`)
	ipamRes := ipamResult(t, `{"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}],"dns":{"nameservers":["10.1.0.53"]}}`)
	pa, _ := podAddressing(ipamRes)
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	r := buildResult(prev, ipamRes.DNS, "eth0", "/p", mac, pa)
	if len(r.Interfaces) != 2 || len(r.IPs) != 2 || *r.IPs[1].Interface != 1 || r.DNS.Nameservers[0] != "1.1.1.1" {
		t.Fatalf("chained result: %+v", r)
	}
	if len(prev.Interfaces) != 1 {
		t.Fatalf("prevResult modified")
	}
	ips, gotMAC, routes, err := resultIPs(r, "eth0", "/p")
	if err != nil || len(ips) != 1 || ips[0] != netip.MustParsePrefix("10.1.0.5/24") || gotMAC != "02:00:00:00:00:05" {
		t.Fatalf("resultIPs: %v %q %v", ips, gotMAC, err)
	}
	if !reflect.DeepEqual(routes, pa.Routes) {
		t.Fatalf("routes CHECK expects: %v, want the ADD's %v", routes, pa.Routes)
	}
	if _, _, _, err := resultIPs(r, "eth1", "/p"); err == nil {
		t.Fatalf("resultIPs found a missing interface")
	}
}

func TestUndoListLIFO(t *testing.T) {
	var order []string
	var u undoList
	u.add("ipam", func() error { order = append(order, "ipam"); return nil })
	u.add("veth", func() error { order = append(order, "veth"); return errors.New("busy") })
	u.add("detach", func() error { order = append(order, "detach"); return nil })
	err := u.run()
	if want := []string{"detach", "veth", "ipam"}; !reflect.DeepEqual(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	if err == nil || !strings.Contains(err.Error(), "undo veth: busy") {
		t.Fatalf("err %v, want the veth step's error", err)
	}
	order = nil
	if err := u.run(); err != nil || order != nil {
		t.Fatalf("second run: %v %v", order, err)
	}
}

// TestUndoOnNamedReturn checks the cmdAdd pattern: a later step's failure
// assigned to the named return (no shadowing) runs the undo list.
func TestUndoOnNamedReturn(t *testing.T) {
	ran := false
	f := func() (err error) {
		var u undoList
		defer func() {
			if err != nil {
				u.run()
			}
		}()
		u.add("first", func() error { ran = true; return nil })
		_, err = netip.ParsePrefix("not a prefix")
		if err != nil {
			return err
		}
		return nil
	}
	if f() == nil || !ran {
		t.Fatalf("undo did not run on failure")
	}
}

func TestDaemonEnvDropsCNIVars(t *testing.T) {
	got := daemonEnv([]string{"PATH=/bin", "CNI_COMMAND=ADD", "CNI_NETNS=/x", "HOME=/root"})
	if want := []string{"PATH=/bin", "HOME=/root"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestDaemonDownCodes(t *testing.T) {
	defer func(d time.Duration) { DaemonWait = d }(DaemonWait)
	DaemonWait = 100 * time.Millisecond
	sock := t.TempDir() + "/none.sock"
	stdin := conf(func(m map[string]any) { m["socket"], m["autostart"] = sock, false })
	c, err := LoadConf(stdin)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ensureDaemon(context.Background(), c)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "autostart is false") || !strings.Contains(te.Msg, sock) {
		t.Fatalf("ensureDaemon with the daemon down: %v", err)
	}
	err = cmdStatus(&skel.CmdArgs{StdinData: stdin})
	if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with the daemon down: %v", err)
	}
}

func TestDaemonStackNetNSMismatch(t *testing.T) {
	sock := t.TempDir() + "/d.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.Status{StackNetNS: "other-ns"})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c, err := LoadConf(conf(func(m map[string]any) { m["socket"] = sock }))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ensureDaemon(context.Background(), c)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "other-ns") {
		t.Fatalf("mismatched stack netns: %v", err)
	}
	c.StackNetNS = "other-ns"
	if _, err := ensureDaemon(context.Background(), c); err != nil {
		t.Fatalf("matching stack netns: %v", err)
	}
}

// TestAwaitDaemonDuringRestart: with autostart off, ADD waits (bounded by
// DaemonWait) for a daemon whose socket appears late, as during a rolling
// update of the DaemonSet, instead of failing at once; past the bound it
// is code 11 naming the socket and the wait.
func TestAwaitDaemonDuringRestart(t *testing.T) {
	defer func(d time.Duration) { DaemonWait = d }(DaemonWait)
	DaemonWait = 5 * time.Second
	sock := t.TempDir() + "/d.sock"
	c, err := LoadConf(conf(func(m map[string]any) { m["socket"], m["autostart"] = sock, false }))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.Status{StackNetNS: c.StackNetNS})
	})}
	t.Cleanup(func() { srv.Close() })
	up := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // the new daemon's start
		l, err := net.Listen("unix", sock)
		if err == nil {
			go srv.Serve(l)
		}
		up <- err
	}()
	start := time.Now()
	if _, err := ensureDaemon(context.Background(), c); err != nil {
		t.Fatalf("ensureDaemon across a restart: %v", err)
	}
	if err := <-up; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("answered after %v, before the daemon was up", d)
	}

	DaemonWait = 200 * time.Millisecond
	c.Socket = t.TempDir() + "/never.sock"
	start = time.Now()
	_, err = ensureDaemon(context.Background(), c)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "waited 200ms") || !strings.Contains(te.Msg, c.Socket) {
		t.Fatalf("daemon never up: %v", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 5*time.Second {
		t.Fatalf("gave up after %v, want about DaemonWait", d)
	}
}

// TestPortMappings: runtimeConfig.portMappings (the portMappings
// capability) in the CNI convention's shape, normalised, and refused with
// code 7 when wrong.
func TestPortMappings(t *testing.T) {
	pmConf := func(mode string, pms ...map[string]any) []byte {
		return conf(func(m map[string]any) {
			m["capabilities"] = map[string]any{"portMappings": true}
			m["runtimeConfig"] = map[string]any{"portMappings": pms}
			if mode != "" {
				m["mode"] = mode
			}
		})
	}
	pm := func(host, ctr int, proto, ip string) map[string]any {
		m := map[string]any{"hostPort": host, "containerPort": ctr}
		if proto != "" {
			m["protocol"] = proto
		}
		if ip != "" {
			m["hostIP"] = ip
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		stdin []byte
		want  []api.PortMapping
		err   string
	}{
		{"tcp by default, udp kept apart", pmConf("", pm(8080, 80, "", ""), pm(8080, 80, "UDP", ""), pm(9090, 90, "tcp", "127.0.0.1")),
			[]api.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, {HostPort: 8080, ContainerPort: 80, Protocol: "udp"},
				{HostPort: 9090, ContainerPort: 90, Protocol: "tcp", HostIP: "127.0.0.1"}}, ""},
		{"two host IPs on one port", pmConf("proxy", pm(80, 80, "", "127.0.0.1"), pm(80, 81, "", "127.0.0.2")),
			[]api.PortMapping{{HostPort: 80, ContainerPort: 80, Protocol: "tcp", HostIP: "127.0.0.1"}, {HostPort: 80, ContainerPort: 81, Protocol: "tcp", HostIP: "127.0.0.2"}}, ""},
		{"wildcard host IP", pmConf("", pm(80, 80, "", "0.0.0.0")), []api.PortMapping{{HostPort: 80, ContainerPort: 80, Protocol: "tcp"}}, ""},
		{"none", pmConf("route"), nil, ""},
		{"host port 0", pmConf("", pm(0, 80, "", "")), nil, "hostPort 0"},
		{"container port too big", pmConf("", pm(80, 65536, "", "")), nil, "containerPort 65536"},
		{"sctp", pmConf("", pm(80, 80, "sctp", "")), nil, `protocol "sctp"`},
		{"IPv6 host IP", pmConf("", pm(80, 80, "", "::1")), []api.PortMapping{{HostPort: 80, ContainerPort: 80, Protocol: "tcp", HostIP: "::1"}}, ""},
		{"IPv6 wildcard host IP", pmConf("", pm(80, 80, "", "::")), []api.PortMapping{{HostPort: 80, ContainerPort: 80, Protocol: "tcp"}}, ""},
		{"IPv6 host IP with a zone", pmConf("", pm(80, 80, "", "fe80::1%eth0")), nil, `hostIP "fe80::1%eth0"`},
		{"garbage host IP", pmConf("", pm(80, 80, "", "localhost")), nil, `hostIP "localhost"`},
		{"duplicate", pmConf("", pm(80, 80, "tcp", ""), pm(80, 81, "TCP", "")), nil, "mapped twice"},
		{"wildcard beside a host IP", pmConf("", pm(80, 80, "", ""), pm(80, 81, "", "10.0.0.1")), nil, "every host address"},
		{"route mode leaves them to a chained portmap", pmConf("route", pm(80, 80, "", ""), pm(0, 0, "sctp", "::1")), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConf(tc.stdin)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.PortMappings()
			if tc.err != "" {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.err) {
					t.Fatalf("err %v, want code 7 containing %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v %v, want %+v", got, err, tc.want)
			}
		})
	}
	// A port that is not a number does not decode: code 6.
	_, err := LoadConf(conf(func(m map[string]any) {
		m["runtimeConfig"] = map[string]any{"portMappings": []any{map[string]any{"hostPort": "http", "containerPort": 80}}}
	}))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrDecodingFailure {
		t.Fatalf("string hostPort: %v", err)
	}
}

// TestResultDNS: proxy mode points the pod at the gateway's DNS relay
// unless the configuration has "dns"; route mode keeps the IPAM DNS.
func TestResultDNS(t *testing.T) {
	gw := netip.MustParseAddr("10.1.0.1")
	ipamDNS := types.DNS{Nameservers: []string{"10.1.0.53"}, Search: []string{"svc.local"}}
	confDNS := types.DNS{Nameservers: []string{"9.9.9.9"}, Domain: "example"}
	for _, tc := range []struct {
		name string
		mode api.Mode
		conf types.DNS
		want types.DNS
	}{
		{"proxy: the gateway, IPAM search kept", api.ModeProxy, types.DNS{}, types.DNS{Nameservers: []string{"10.1.0.1"}, Search: []string{"svc.local"}}},
		{"proxy with dns in the config", api.ModeProxy, confDNS, confDNS},
		{"route: IPAM", api.ModeRoute, types.DNS{}, ipamDNS},
		{"route with dns in the config", api.ModeRoute, confDNS, confDNS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &NetConf{Mode: tc.mode}
			c.DNS = tc.conf
			if got := resultDNS(c, ipamDNS, gw, netip.Addr{}); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	// Through LoadConf: the "dns" key and the default mode.
	c, err := LoadConf(conf(func(m map[string]any) { m["dns"] = map[string]any{"nameservers": []string{"9.9.9.9"}} }))
	if err != nil {
		t.Fatal(err)
	}
	if got := resultDNS(c, ipamDNS, gw, netip.Addr{}); !reflect.DeepEqual(got.Nameservers, []string{"9.9.9.9"}) {
		t.Fatalf("config dns: %+v", got)
	}
	c, _ = LoadConf(conf(nil))
	if got := resultDNS(c, types.DNS{}, gw, netip.Addr{}); !reflect.DeepEqual(got, types.DNS{Nameservers: []string{"10.1.0.1"}}) {
		t.Fatalf("default mode dns: %+v", got)
	}
	if got := resultDNS(c, types.DNS{}, gw, netip.MustParseAddr("fd00:1::1")); !reflect.DeepEqual(got.Nameservers, []string{"10.1.0.1", "fd00:1::1"}) {
		t.Fatalf("dual-stack proxy-mode dns: %+v, want both gateways", got)
	}
}

// TestCheckRoutes: CHECK's view of the pod's routes against the ptp shape
// the ADD installed.
func TestCheckRoutes(t *testing.T) {
	ip := netip.MustParsePrefix("10.1.0.5/24")
	gw := netip.MustParseAddr("10.1.0.1")
	shape := []veth.Route{{Dst: netip.MustParsePrefix("10.1.0.1/32")}, {Dst: ip.Masked(), GW: gw},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: gw}}
	without := func(i int) []veth.Route { return slices.Delete(slices.Clone(shape), i, i+1) }
	for _, tc := range []struct {
		name string
		have []veth.Route
		err  string
	}{
		{"the shape", shape, ""},
		{"the shape and more", append(slices.Clone(shape), veth.Route{Dst: netip.MustParsePrefix("192.0.2.0/24"), GW: gw}), ""},
		{"gateway route removed", without(0), "lacks the on-link route to its gateway 10.1.0.1"},
		{"range via the gateway removed", without(1), "lacks the route 10.1.0.0/24 via 10.1.0.1"},
		{"default route removed", without(2), "lacks the route 0.0.0.0/0 via 10.1.0.1"},
		{"range on-link again", append(slices.Clone(shape), veth.Route{Dst: ip.Masked()}), "has 10.1.0.0/24 on-link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRoutes("eth0", &veth.PodState{Routes: tc.have}, []netip.Prefix{ip}, shape)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var te *types.Error
			if !errors.As(err, &te) || te.Code != api.CodeAttachmentBroken || !strings.Contains(te.Msg, tc.err) {
				t.Fatalf("err %v, want code %d containing %q", err, api.CodeAttachmentBroken, tc.err)
			}
		})
	}
}
