package veth

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("veth: test needs root (creates network namespaces and veth pairs)")
	}
}

var nonName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// testNetNS creates a uniquely named netns "cnius-test-<test>-<role>-<rand>"
// (a stack netns for role "stack", a plain one otherwise), removed in
// t.Cleanup, and returns its name and path.
func testNetNS(t *testing.T, role string) (name, path string) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	tn := nonName.ReplaceAllString(t.Name(), "-")
	if len(tn) > 40 {
		tn = tn[:40]
	}
	name = "cnius-test-" + tn + "-" + role + "-" + hex.EncodeToString(b)
	create := NewNetNS
	if role == "stack" {
		create = EnsureStackNetNS
	}
	path, err := create(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := DeleteNetNS(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return name, path
}

// testNS returns a pod netns and a stack netns of the test's own.
func testNS(t *testing.T) (podPath, stackName string) {
	needRoot(t)
	_, podPath = testNetNS(t, "pod")
	stackName, _ = testNetNS(t, "stack")
	return podPath, stackName
}

func links(t *testing.T, path string) map[string]netlink.Link {
	t.Helper()
	r, err := openNS(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer r.close()
	ls, err := retryDump(r.h.LinkList)
	if err != nil {
		t.Fatalf("link list in %s: %v", path, err)
	}
	m := map[string]netlink.Link{}
	for _, l := range ls {
		m[l.Attrs().Name] = l
	}
	return m
}

func addrsIn(t *testing.T, path, ifName string) []netlink.Addr {
	t.Helper()
	r, err := openNS(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer r.close()
	l, err := r.h.LinkByName(ifName)
	if err != nil {
		t.Fatalf("%s in %s: %v", ifName, path, err)
	}
	as, err := retryDump(func() ([]netlink.Addr, error) { return r.h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func basicConfig(podPath, stack, id string) PodConfig {
	return PodConfig{
		PodNetNS:   podPath,
		IfName:     "eth0",
		HostIfName: HostIfName(id, "eth0"),
		StackNetNS: stack,
		MTU:        1400,
		MAC:        net.HardwareAddr{0x02, 0x42, 0x0a, 0xf1, 0x00, 0x05},
		IPs:        []netip.Prefix{netip.MustParsePrefix("10.241.0.5/24")},
		Routes: []Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.241.0.1")},
			{Dst: netip.MustParsePrefix("10.242.0.0/16"), GW: netip.MustParseAddr("10.241.0.1")},
		},
	}
}

func TestHostIfName(t *testing.T) {
	inputs := []struct{ id, ifName string }{
		{"", ""},
		{"abc", "eth0"},
		{"abc", "eth1"},
		{"abd", "eth0"},
		{strings.Repeat("f", 64), "eth0"},
		{"c0ffee", "net1"},
	}
	valid := regexp.MustCompile(`^us[0-9a-f]{13}$`)
	seen := map[string]string{}
	for _, in := range inputs {
		n := HostIfName(in.id, in.ifName)
		if n != HostIfName(in.id, in.ifName) {
			t.Errorf("HostIfName(%q, %q) not stable", in.id, in.ifName)
		}
		if len(n) != maxIfName || !valid.MatchString(n) {
			t.Errorf("HostIfName(%q, %q) = %q: want us + 13 hex, %d bytes", in.id, in.ifName, n, maxIfName)
		}
		key := in.id + "/" + in.ifName
		if prev, dup := seen[n]; dup {
			t.Errorf("HostIfName collision: %q and %q both give %q", prev, key, n)
		}
		seen[n] = key
	}
	// Pinned value: the name is part of on-node state (the daemon finds
	// links by it after a restart), so it must not change.
	// `echo -n abc/eth0 | sha256sum` = 538f587a23655f38bbcd...
	if got, want := HostIfName("abc", "eth0"), "us538f587a23655"; got != want {
		t.Errorf("HostIfName(abc, eth0) = %q, want %q", got, want)
	}
}

func TestSetup(t *testing.T) {
	podPath, stack := testNS(t)
	cfg := basicConfig(podPath, stack, "c-setup")
	pair, err := Setup(cfg)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if pair.PodIfName != "eth0" || pair.HostIfName != cfg.HostIfName || pair.PodNetNS != podPath ||
		pair.StackNetNSPath != NetNSPath(stack) {
		t.Errorf("pair names = %+v", pair)
	}
	if pair.PodMAC.String() != cfg.MAC.String() {
		t.Errorf("pod MAC = %s, want %s", pair.PodMAC, cfg.MAC)
	}

	// Pod end.
	pl := links(t, podPath)["eth0"]
	if pl == nil {
		t.Fatalf("no eth0 in pod netns")
	}
	if pl.Type() != "veth" || pl.Attrs().MTU != 1400 || pl.Attrs().RawFlags&unix.IFF_UP == 0 ||
		pl.Attrs().Index != pair.PodIfIndex || pl.Attrs().HardwareAddr.String() != cfg.MAC.String() {
		t.Errorf("pod end: type %s mtu %d flags %#x index %d mac %s", pl.Type(), pl.Attrs().MTU,
			pl.Attrs().RawFlags, pl.Attrs().Index, pl.Attrs().HardwareAddr)
	}
	if pl.Attrs().ParentIndex != pair.HostIfIndex {
		t.Errorf("pod end's peer index = %d, want far end %d", pl.Attrs().ParentIndex, pair.HostIfIndex)
	}
	st, err := Inspect(podPath, "eth0")
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if !slices.Equal(st.IPs, cfg.IPs) {
		t.Errorf("pod IPs = %v, want %v", st.IPs, cfg.IPs)
	}
	// The ptp shape: no prefix route for the address, an on-link host
	// route to the gateway added before the routes through it.
	for _, want := range append(cfg.Routes, Route{Dst: netip.MustParsePrefix("10.241.0.1/32")}) {
		if !slices.Contains(st.Routes, want) {
			t.Errorf("pod routes %v lack %v", st.Routes, want)
		}
	}
	if onLink := (Route{Dst: netip.MustParsePrefix("10.241.0.0/24")}); slices.Contains(st.Routes, onLink) {
		t.Errorf("pod routes %v have the address's prefix route %v", st.Routes, onLink)
	}
	if len(st.Routes) != len(cfg.Routes)+1 {
		t.Errorf("pod routes %v, want %v and the gateway's host route", st.Routes, cfg.Routes)
	}
	if st.Kind != "veth" || st.MTU != 1400 || !st.Up || st.PeerIfIndex != pair.HostIfIndex || st.IfIndex != pair.PodIfIndex {
		t.Errorf("Inspect = %+v", st)
	}

	// Far end: in the stack netns only, no addresses, IPv6 off, up.
	if _, ok := links(t, podPath)[cfg.HostIfName]; ok {
		t.Errorf("far end %s visible in the pod netns", cfg.HostIfName)
	}
	hl := links(t, NetNSPath(stack))[cfg.HostIfName]
	if hl == nil {
		t.Fatalf("no %s in stack netns", cfg.HostIfName)
	}
	if hl.Type() != "veth" || hl.Attrs().MTU != 1400 || hl.Attrs().RawFlags&unix.IFF_UP == 0 ||
		hl.Attrs().Index != pair.HostIfIndex || hl.Attrs().HardwareAddr.String() != pair.HostMAC.String() {
		t.Errorf("far end: type %s mtu %d flags %#x index %d", hl.Type(), hl.Attrs().MTU, hl.Attrs().RawFlags, hl.Attrs().Index)
	}
	if as := addrsIn(t, NetNSPath(stack), cfg.HostIfName); len(as) != 0 {
		t.Errorf("far end has kernel addresses: %v", as)
	}
	if _, err := os.Stat("/proc/sys/net/ipv6"); err == nil {
		v, err := ReadSysctlIn(NetNSPath(stack), "net/ipv6/conf/"+cfg.HostIfName+"/disable_ipv6")
		if err != nil || v != "1" {
			t.Errorf("far end disable_ipv6 = %q, %v; want 1", v, err)
		}
	}
	for _, kv := range [][2]string{
		{"net/ipv4/conf/" + cfg.HostIfName + "/arp_ignore", "8"},
		{"net/ipv4/conf/" + cfg.HostIfName + "/forwarding", "0"},
		{"net/ipv4/ip_forward", "0"},
	} {
		if v, err := ReadSysctlIn(NetNSPath(stack), kv[0]); err != nil || v != kv[1] {
			t.Errorf("stack netns %s = %q, %v; want %s", kv[0], v, err, kv[1])
		}
	}
	if lo := links(t, NetNSPath(stack))["lo"]; lo == nil || lo.Attrs().RawFlags&unix.IFF_UP == 0 {
		t.Errorf("stack netns lo not up")
	}
}

// A /32 pod address (ptp style) needs an on-link route to its gateway.
func TestSetupHostPrefixGateway(t *testing.T) {
	podPath, stack := testNS(t)
	cfg := basicConfig(podPath, stack, "c-32")
	cfg.MAC = nil
	cfg.MTU = 0
	cfg.IPs = []netip.Prefix{netip.MustParsePrefix("10.241.0.9/32")}
	cfg.Routes = cfg.Routes[:1]
	if _, err := Setup(cfg); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	st, err := Inspect(podPath, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []Route{
		{Dst: netip.MustParsePrefix("10.241.0.1/32")},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.241.0.1")},
	} {
		if !slices.Contains(st.Routes, want) {
			t.Errorf("routes %v lack %v", st.Routes, want)
		}
	}
	if st.MTU != DefaultMTU {
		t.Errorf("MTU = %d, want %d", st.MTU, DefaultMTU)
	}
}

func TestSetupExists(t *testing.T) {
	podPath, stack := testNS(t)
	first := basicConfig(podPath, stack, "c-first")
	pair, err := Setup(first)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	otherPod := func() PodConfig { _, p := testNetNS(t, "pod2"); return basicConfig(p, stack, "c-first") }
	tests := []struct {
		name string
		cfg  PodConfig
	}{
		{"same pod and container", first},
		{"same ifName, other container", basicConfig(podPath, stack, "c-other")},
		{"same container, other pod netns", otherPod()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Setup(tt.cfg)
			if !errors.Is(err, ErrExists) {
				t.Fatalf("Setup again: err = %v, want ErrExists", err)
			}
			st, err := Inspect(podPath, "eth0")
			if err != nil {
				t.Fatalf("first pod gone: %v", err)
			}
			if st.IfIndex != pair.PodIfIndex || st.PeerIfIndex != pair.HostIfIndex || !slices.Equal(st.IPs, first.IPs) || !st.Up {
				t.Errorf("first pod changed: %+v", st)
			}
			if _, ok := links(t, NetNSPath(stack))[first.HostIfName]; !ok {
				t.Errorf("first far end gone")
			}
			if n := len(links(t, tt.cfg.PodNetNS)); tt.cfg.PodNetNS != podPath && n != 1 {
				t.Errorf("other pod netns has %d links, want lo only", n)
			}
		})
	}
}

// A failure after the pair exists removes it: no link left on either side.
func TestSetupRollback(t *testing.T) {
	podPath, stack := testNS(t)
	dup := netip.MustParsePrefix("10.241.0.5/24")
	tests := []struct {
		name, step string
		mod        func(*PodConfig)
	}{
		{"duplicate default route", "add route 0.0.0.0/0 via 10.241.0.2", func(c *PodConfig) {
			c.Routes = append(c.Routes, Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.241.0.2")})
		}},
		{"duplicate address", "add address 10.241.0.5/24", func(c *PodConfig) { c.IPs = append(c.IPs, dup) }},
		{"broadcast gateway", "add route 10.9.0.0/16", func(c *PodConfig) {
			c.Routes = []Route{{Dst: netip.MustParsePrefix("10.9.0.0/16"), GW: netip.MustParseAddr("10.241.0.255")}}
			c.IPs = []netip.Prefix{netip.MustParsePrefix("10.241.0.5/24")}
			// 10.241.0.255 is the subnet broadcast: the kernel refuses it as a gateway.
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := basicConfig(podPath, stack, "c-rb-"+tt.name)
			tt.mod(&cfg)
			_, err := Setup(cfg)
			var se *Error
			if !errors.As(err, &se) || !strings.HasPrefix(se.Step, tt.step) {
				t.Fatalf("Setup: err = %v, want a failure at step %q", err, tt.step)
			}
			if errors.Is(err, ErrExists) {
				t.Errorf("a half-way failure must not look like ErrExists: %v", err)
			}
			if _, ok := links(t, podPath)["eth0"]; ok {
				t.Errorf("eth0 left in the pod netns")
			}
			if _, ok := links(t, NetNSPath(stack))[cfg.HostIfName]; ok {
				t.Errorf("%s left in the stack netns", cfg.HostIfName)
			}
		})
	}
}

func TestSetupBadConfig(t *testing.T) {
	podPath, stack := testNS(t)
	tests := []struct {
		name string
		mod  func(*PodConfig)
	}{
		{"no netns", func(c *PodConfig) { c.PodNetNS = "" }},
		{"missing netns", func(c *PodConfig) { c.PodNetNS = "/var/run/netns/cnius-test-does-not-exist" }},
		{"long ifName", func(c *PodConfig) { c.IfName = "a-very-long-ifname0" }},
		{"slash ifName", func(c *PodConfig) { c.IfName = "eth/0" }},
		{"mtu", func(c *PodConfig) { c.MTU = 70000 }},
		{"multicast MAC", func(c *PodConfig) { c.MAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} }},
		{"family mix", func(c *PodConfig) {
			c.Routes = []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("fe80::1")}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := basicConfig(podPath, stack, "c-bad")
			tt.mod(&cfg)
			if _, err := Setup(cfg); err == nil || errors.Is(err, ErrExists) {
				t.Fatalf("Setup: err = %v, want a config error", err)
			}
			if n := len(links(t, podPath)); n != 1 {
				t.Errorf("pod netns has %d links, want lo only", n)
			}
			if _, ok := links(t, NetNSPath(stack))[cfg.HostIfName]; ok {
				t.Errorf("far end left behind")
			}
		})
	}
	cfg := basicConfig(podPath, stack, "c-bad")
	cfg.PodNetNS = "/var/run/netns/cnius-test-does-not-exist"
	if _, err := Setup(cfg); !errors.Is(err, ErrNetNSNotFound) {
		t.Errorf("missing pod netns: err = %v, want ErrNetNSNotFound", err)
	}
}

func TestTeardown(t *testing.T) {
	podPath, stack := testNS(t)
	cfg := basicConfig(podPath, stack, "c-td")
	if _, err := Setup(cfg); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := Teardown(podPath, "eth0", cfg.HostIfName, stack); err != nil {
			t.Fatalf("Teardown #%d: %v", i+1, err)
		}
	}
	if _, ok := links(t, podPath)["eth0"]; ok {
		t.Errorf("eth0 still in the pod netns")
	}
	if _, ok := links(t, NetNSPath(stack))[cfg.HostIfName]; ok {
		t.Errorf("far end still in the stack netns")
	}
	if _, err := Inspect(podPath, "eth0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Inspect after Teardown: err = %v, want ErrNotFound", err)
	}
	// Nothing at all: unknown stack netns, unknown pod netns.
	if err := Teardown("/var/run/netns/cnius-test-gone", "eth0", "usffffffffffff0", "cnius-test-gone"); err != nil {
		t.Errorf("Teardown of nothing: %v", err)
	}
}

// The pod end of a pair whose far end is not where Teardown looks (another
// stack netns name) is still removed by the pod-side name.
func TestTeardownPodSideOnly(t *testing.T) {
	podPath, stack := testNS(t)
	cfg := basicConfig(podPath, stack, "c-podside")
	if _, err := Setup(cfg); err != nil {
		t.Fatal(err)
	}
	if err := Teardown(podPath, "eth0", cfg.HostIfName, "cnius-test-other-stack"); err != nil {
		t.Fatal(err)
	}
	if _, ok := links(t, podPath)["eth0"]; ok {
		t.Errorf("eth0 still in the pod netns")
	}
	if _, ok := links(t, NetNSPath(stack))[cfg.HostIfName]; ok {
		t.Errorf("far end survived the deletion of its peer")
	}
}

func TestTeardownPodNetNSGone(t *testing.T) {
	needRoot(t)
	stack, stackPath := testNetNS(t, "stack")
	podName, podPath := testNetNS(t, "pod")
	cfg := basicConfig(podPath, stack, "c-gone")
	if _, err := Setup(cfg); err != nil {
		t.Fatal(err)
	}
	if err := DeleteNetNS(podName); err != nil {
		t.Fatal(err)
	}
	if err := Teardown(podPath, "eth0", cfg.HostIfName, stack); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if _, ok := links(t, stackPath)[cfg.HostIfName]; ok {
		t.Errorf("far end left in the stack netns")
	}
	if err := Teardown(podPath, "eth0", cfg.HostIfName, stack); err != nil {
		t.Fatalf("Teardown again: %v", err)
	}
	if _, err := Inspect(podPath, "eth0"); !errors.Is(err, ErrNetNSNotFound) {
		t.Errorf("Inspect in a deleted netns: err = %v, want ErrNetNSNotFound", err)
	}
}

func TestUplink(t *testing.T) {
	needRoot(t)
	stack, stackPath := testNetNS(t, "stack")
	// The "host" side is a netns of the test too: the uplink functions
	// work in the calling thread's netns, so run them there.
	_, hostPath := testNetNS(t, "host")
	b := make([]byte, 3)
	rand.Read(b)
	hostIf, stackIf := "cnh"+hex.EncodeToString(b), "cns"+hex.EncodeToString(b)
	addr := netip.MustParsePrefix("169.254.100.1/30")

	var p1, p2 *Pair
	inNetNS(t, hostPath, func() (err error) {
		if p1, err = UplinkSetup(hostIf, stackIf, stack, addr, 9000); err != nil {
			return err
		}
		p2, err = UplinkSetup(hostIf, stackIf, stack, addr, 9000)
		return err
	})
	if p1.PodIfIndex != p2.PodIfIndex || p1.HostIfIndex != p2.HostIfIndex {
		t.Errorf("second UplinkSetup recreated the pair: %+v then %+v", p1, p2)
	}
	hl := links(t, hostPath)[hostIf]
	if hl == nil || hl.Attrs().MTU != 9000 || hl.Attrs().RawFlags&unix.IFF_UP == 0 || hl.Attrs().ParentIndex != p1.HostIfIndex {
		t.Fatalf("host end = %v", hl)
	}
	var v4 []netip.Prefix
	for _, a := range addrsIn(t, hostPath, hostIf) {
		if p, ok := ipNetToPrefix(a.IPNet); ok && p.Addr().Is4() {
			v4 = append(v4, p)
		}
	}
	if !slices.Equal(v4, []netip.Prefix{addr}) {
		t.Errorf("host end IPv4 = %v, want %v", v4, addr)
	}
	sl := links(t, stackPath)[stackIf]
	if sl == nil || sl.Attrs().MTU != 9000 || sl.Attrs().RawFlags&unix.IFF_UP == 0 {
		t.Fatalf("stack end = %v", sl)
	}
	if as := addrsIn(t, stackPath, stackIf); len(as) != 0 {
		t.Errorf("stack end has kernel addresses: %v", as)
	}
	if v, err := ReadSysctlIn(stackPath, "net/ipv4/conf/"+stackIf+"/arp_ignore"); err != nil || v != "8" {
		t.Errorf("stack end arp_ignore = %q, %v; want 8", v, err)
	}

	// A changed address and MTU are applied to the existing pair.
	addr2 := netip.MustParsePrefix("169.254.100.5/30")
	var p3 *Pair
	inNetNS(t, hostPath, func() (err error) {
		p3, err = UplinkSetup(hostIf, stackIf, stack, addr2, 1500)
		return err
	})
	if p3.PodIfIndex != p1.PodIfIndex {
		t.Errorf("pair recreated on an address change")
	}
	v4 = nil
	for _, a := range addrsIn(t, hostPath, hostIf) {
		if p, ok := ipNetToPrefix(a.IPNet); ok && p.Addr().Is4() {
			v4 = append(v4, p)
		}
	}
	if !slices.Equal(v4, []netip.Prefix{addr2}) || links(t, stackPath)[stackIf].Attrs().MTU != 1500 {
		t.Errorf("host end IPv4 = %v, want %v; MTU %d", v4, addr2, links(t, stackPath)[stackIf].Attrs().MTU)
	}

	for range 2 {
		inNetNS(t, hostPath, func() error { return UplinkTeardown(hostIf) })
	}
	if _, ok := links(t, hostPath)[hostIf]; ok {
		t.Errorf("host end left")
	}
	if _, ok := links(t, stackPath)[stackIf]; ok {
		t.Errorf("stack end left")
	}
}

// inNetNS runs fn on a thread in the netns at path (the uplink functions
// act on the caller's netns), bounded in time; an error fails the test.
func inNetNS(t *testing.T, path string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		done <- ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("in netns %s: %v", path, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out in netns %s", path)
	}
}

func TestEnsureStackNetNSConcurrent(t *testing.T) {
	needRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := "cnius-test-concurrent-" + hex.EncodeToString(b)
	t.Cleanup(func() { DeleteNetNS(name) })

	// A stale mount-point file (a crash between create and mount) is reused.
	if err := os.WriteFile(NetNSPath(name), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	const n = 8
	paths := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], errs[i] = EnsureStackNetNS(name)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || paths[i] != NetNSPath(name) {
			t.Errorf("call %d: %q, %v", i, paths[i], errs[i])
		}
	}
	if !isNetNS(NetNSPath(name)) {
		t.Fatalf("%s is not a netns", NetNSPath(name))
	}
	if lo := links(t, NetNSPath(name))["lo"]; lo == nil || lo.Attrs().RawFlags&unix.IFF_UP == 0 {
		t.Errorf("lo not up")
	}
	if _, err := EnsureStackNetNS("bad/name"); err == nil {
		t.Errorf("a name with '/' was accepted")
	}
	if err := DeleteNetNS(name); err != nil {
		t.Fatal(err)
	}
	if err := DeleteNetNS(name); err != nil {
		t.Fatalf("DeleteNetNS twice: %v", err)
	}
	if _, err := os.Stat(NetNSPath(name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point left: %v", err)
	}
}

func TestNewNetNS(t *testing.T) {
	needRoot(t)
	name, path := testNetNS(t, "plain")
	if _, err := NewNetNS(name); !errors.Is(err, os.ErrExist) {
		t.Errorf("NewNetNS twice: err = %v, want os.ErrExist", err)
	}
	if !isNetNS(path) {
		t.Errorf("%s is not a netns after a refused second create", path)
	}
	// A plain netns keeps the kernel defaults (a pod must answer ARP).
	if v, err := ReadSysctlIn(path, "net/ipv4/conf/default/arp_ignore"); err != nil || v != "0" {
		t.Errorf("plain netns arp_ignore default = %q, %v; want 0", v, err)
	}
	_, stackPath := testNetNS(t, "stack")
	if v, err := ReadSysctlIn(stackPath, "net/ipv4/conf/default/arp_ignore"); err != nil || v != "8" {
		t.Errorf("stack netns arp_ignore default = %q, %v; want 8", v, err)
	}
}

func TestLookupAndListFarEnds(t *testing.T) {
	podPath, stack := testNS(t)
	cfg := basicConfig(podPath, stack, "c-list")
	pair, err := Setup(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fe, err := LookupFarEnd(stack, cfg.HostIfName)
	if err != nil {
		t.Fatalf("LookupFarEnd: %v", err)
	}
	if fe.Index != pair.HostIfIndex || fe.MAC.String() != pair.HostMAC.String() || fe.MTU != 1400 || !fe.Up {
		t.Errorf("LookupFarEnd = %+v, pair %+v", fe, pair)
	}
	if _, err := LookupFarEnd(stack, HostIfName("c-none", "eth0")); !errors.Is(err, ErrNotFound) {
		t.Errorf("LookupFarEnd of a missing link: err = %v, want ErrNotFound", err)
	}
	if _, err := LookupFarEnd("cnius-test-no-such-stack", cfg.HostIfName); !errors.Is(err, ErrNetNSNotFound) {
		t.Errorf("LookupFarEnd in a missing netns: err = %v, want ErrNetNSNotFound", err)
	}

	// A veth in the stack netns with a name HostIfName cannot make is not listed.
	r, err := openNS(NetNSPath(stack))
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	la := netlink.NewLinkAttrs()
	la.Name = "upl0"
	if err := r.h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "upl1", PeerTxQLen: -1}); err != nil {
		t.Fatal(err)
	}
	fes, err := ListFarEnds(stack)
	if err != nil {
		t.Fatalf("ListFarEnds: %v", err)
	}
	if len(fes) != 1 || fes[0].Name != cfg.HostIfName {
		t.Errorf("ListFarEnds = %+v, want only %s", fes, cfg.HostIfName)
	}
	if fes, err := ListFarEnds("cnius-test-no-such-stack"); err != nil || len(fes) != 0 {
		t.Errorf("ListFarEnds in a missing netns = %v, %v", fes, err)
	}
}
