package api

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func goodRequest() AttachRequest {
	return AttachRequest{
		ContainerID: "c1", IfName: "eth0", Network: "n1", PodNetNS: "/var/run/netns/c1", HostIfName: "us0123456789ab",
		PodMAC: "02:00:00:00:00:05", IP: netip.MustParsePrefix("10.1.0.5/24"), Gateway: netip.MustParseAddr("10.1.0.1"),
		Range: netip.MustParsePrefix("10.1.0.0/24"), MTU: 1500,
	}
}

func TestValidate(t *testing.T) {
	pm := func(host, ctr int, proto, ip string) PortMapping {
		return PortMapping{HostPort: host, ContainerPort: ctr, Protocol: proto, HostIP: ip}
	}
	dual := func(r *AttachRequest) {
		r.IP6, r.Gateway6, r.Range6 = netip.MustParsePrefix("fd00:1::5/64"), netip.MustParseAddr("fd00:1::1"), netip.MustParsePrefix("fd00:1::/64")
	}
	for _, tc := range []struct {
		name string
		mod  func(r *AttachRequest)
		err  string
		want func(r *AttachRequest) bool
	}{
		{"no mode is proxy", func(r *AttachRequest) {}, "", func(r *AttachRequest) bool { return r.Mode == ModeProxy }},
		{"route", func(r *AttachRequest) { r.Mode = ModeRoute }, "", func(r *AttachRequest) bool { return r.Mode == ModeRoute }},
		{"proxy", func(r *AttachRequest) { r.Mode = ModeProxy }, "", nil},
		{"unknown mode", func(r *AttachRequest) { r.Mode = "bridge" }, `mode "bridge": want "proxy" or "route"`, nil},
		{"routed ranges", func(r *AttachRequest) {
			r.RoutedRanges = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("0.0.0.0/0")}
		}, "", nil},
		{"routed range with host bits", func(r *AttachRequest) { r.RoutedRanges = []netip.Prefix{netip.MustParsePrefix("10.244.3.0/16")} },
			"did you mean 10.244.0.0/16", nil},
		{"routed range IPv6", func(r *AttachRequest) { r.RoutedRanges = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} }, "", nil},
		{"routed range IPv4-mapped", func(r *AttachRequest) { r.RoutedRanges = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")} }, "IPv4 or IPv6", nil},
		{"routed range zero", func(r *AttachRequest) { r.RoutedRanges = []netip.Prefix{{}} }, "IPv4 or IPv6", nil},
		{"dual stack", func(r *AttachRequest) { dual(r) }, "", nil},
		{"ip6 without gateway6", func(r *AttachRequest) { dual(r); r.Gateway6 = netip.Addr{} }, "gateway6 invalid IP", nil},
		{"gateway6 without ip6", func(r *AttachRequest) { r.Gateway6 = netip.MustParseAddr("fd00:1::1") }, "without ip6", nil},
		{"router advertisements without ip6", func(r *AttachRequest) { r.RouterAdvert = true }, "routerAdvert without ip6", nil},
		{"ip6 link-local", func(r *AttachRequest) { dual(r); r.IP6 = netip.MustParsePrefix("fe80::5/64") }, "global unicast", nil},
		{"ip6 IPv4-mapped", func(r *AttachRequest) { dual(r); r.IP6 = netip.MustParsePrefix("::ffff:10.1.0.5/120") }, "global unicast", nil},
		{"ip6 /127", func(r *AttachRequest) { dual(r); r.IP6 = netip.MustParsePrefix("fd00:1::5/127") }, "/126 or shorter", nil},
		{"gateway6 is the pod", func(r *AttachRequest) { dual(r); r.Gateway6 = r.IP6.Addr() }, "pod's own address", nil},
		{"gateway6 link-local", func(r *AttachRequest) { dual(r); r.Gateway6 = netip.MustParseAddr("fe80::1") }, "global unicast", nil},
		{"range6 outside", func(r *AttachRequest) { dual(r); r.Range6 = netip.MustParsePrefix("fd00:2::/64") }, "must be a masked prefix", nil},
		{"range6 unmasked", func(r *AttachRequest) { dual(r); r.Range6 = netip.MustParsePrefix("fd00:1::5/64") }, "must be a masked prefix", nil},
		{"dual stack below 1280", func(r *AttachRequest) { dual(r); r.MTU = 1279 }, "at least 1280", nil},
		{"too many routed ranges", func(r *AttachRequest) { r.RoutedRanges = make([]netip.Prefix, MaxRoutedRanges+1) }, "at most", nil},
		{"port mappings normalised", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{pm(80, 8080, "", ""), pm(80, 8080, "UDP", "0.0.0.0"), pm(81, 1, "Tcp", "127.0.0.1")}
		}, "", func(r *AttachRequest) bool {
			return reflect.DeepEqual(r.PortMappings, []PortMapping{pm(80, 8080, "tcp", ""), pm(80, 8080, "udp", ""), pm(81, 1, "tcp", "127.0.0.1")})
		}},
		{"same port on two host IPs", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{pm(80, 1, "", "10.0.0.1"), pm(80, 2, "", "10.0.0.2")}
		}, "", nil},
		{"host port 0", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(0, 80, "", "")} }, "hostPort 0 out of 1..65535", nil},
		{"host port 65536", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(65536, 80, "", "")} }, "hostPort 65536", nil},
		{"container port -1", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, -1, "", "")} }, "containerPort -1", nil},
		{"sctp", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, 80, "sctp", "")} }, `protocol "sctp": want tcp or udp`, nil},
		{"IPv6 host IP", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{pm(80, 80, "", "fd00::1"), pm(81, 80, "", "::ffff:10.0.0.1")}
		}, "",
			func(r *AttachRequest) bool {
				return reflect.DeepEqual(r.PortMappings, []PortMapping{pm(80, 80, "tcp", "fd00::1"), pm(81, 80, "tcp", "10.0.0.1")})
			}},
		{"IPv6 host IP shown bracketed", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, 8080, "", "fd00::1")} }, "",
			func(r *AttachRequest) bool { return r.PortMappings[0].String() == "[fd00::1]:80/tcp→8080" }},
		{"IPv6 wildcard host IP", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, 80, "", "::")} }, "",
			func(r *AttachRequest) bool { return r.PortMappings[0].HostIP == "" }},
		{"IPv6 host IP with a zone", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, 80, "", "fe80::1%eth0")} }, `hostIP "fe80::1%eth0"`, nil},
		{"multicast host IP", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, 80, "", "ff02::1")} }, `hostIP "ff02::1"`, nil},
		{"garbage host IP", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, 80, "", "x")} }, `hostIP "x"`, nil},
		{"duplicate", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{pm(80, 80, "tcp", ""), pm(80, 81, "", "0.0.0.0")}
		}, "mapped twice", nil},
		{"duplicate on a host IP", func(r *AttachRequest) {
			r.PortMappings = []PortMapping{pm(80, 80, "udp", "10.0.0.1"), pm(80, 81, "UDP", "10.0.0.1")}
		}, "mapped twice", nil},
		{"wildcard beside a host IP", func(r *AttachRequest) { r.PortMappings = []PortMapping{pm(80, 80, "", "10.0.0.1"), pm(80, 81, "", "")} },
			"every host address", nil},
		{"too many port mappings", func(r *AttachRequest) {
			for i := 0; i <= MaxPortMappings; i++ {
				r.PortMappings = append(r.PortMappings, pm(1000+i, 80, "", ""))
			}
		}, "at most", nil},
		{"port mappings in route mode", func(r *AttachRequest) { r.Mode = ModeRoute; r.PortMappings = []PortMapping{pm(80, 80, "", "")} },
			"chain the portmap plugin", nil},
		{"mtu", func(r *AttachRequest) { r.MTU = 67 }, "mtu 67", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := goodRequest()
			tc.mod(&r)
			err := r.Validate()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != nil && !tc.want(&r) {
				t.Fatalf("after Validate: %+v", r)
			}
		})
	}
}
