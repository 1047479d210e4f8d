package kube

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"slices"
	"testing"

	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestNetlinkTable runs the real table in a private network namespace:
// replace installs with protocol 0x76 and repoints, list sees the
// protocol, delete removes only ours (a static route to the same kind of
// destination stays, and deleting by its destination does not match it),
// and a gateway off the connected networks is ErrUnreachable.
func TestNetlinkTable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "kube-rt-" + hex.EncodeToString(b)
	path, err := veth.NewNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { veth.DeleteNetNS(name) })
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// A veth pair (this kernel may lack the dummy driver); node0 is the
	// "node's NIC".
	pair := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "node0"}, PeerName: "node0p"}
	if err := h.LinkAdd(pair); err != nil {
		t.Fatal(err)
	}
	l, _ := h.LinkByName("node0")
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(pfx("192.168.77.1/24"))}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	// A static route someone else owns.
	static := &netlink.Route{Dst: ipNet(pfx("10.244.9.0/24")), Gw: net.ParseIP("192.168.77.9"), Protocol: 4}
	if err := h.RouteAdd(static); err != nil {
		t.Fatal(err)
	}

	tbl, err := NewNetlinkTableAt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	r := Route{Dst: pfx("10.244.2.0/24"), Via: addr("192.168.77.2")}
	if err := tbl.Replace(r); err != nil {
		t.Fatal(err)
	}
	r.Via = addr("192.168.77.3")
	if err := tbl.Replace(r); err != nil { // repoint
		t.Fatal(err)
	}
	got, err := tbl.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []TableRoute{
		{Dst: pfx("10.244.2.0/24"), Via: addr("192.168.77.3"), Proto: NodeRouteProtocol},
		{Dst: pfx("10.244.9.0/24"), Via: addr("192.168.77.9"), Proto: 4},
		{Dst: pfx("192.168.77.0/24"), Proto: 2},
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("list lacks %+v: %+v", w, got)
		}
	}
	if n := len(got); n != len(want) {
		t.Errorf("list has %d routes, want %d: %+v", n, len(want), got)
	}
	// Deleting the static route's destination does not match it.
	if err := tbl.Delete(TableRoute{Dst: pfx("10.244.9.0/24"), Proto: NodeRouteProtocol}); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Delete(TableRoute{Dst: pfx("10.244.2.0/24"), Via: addr("192.168.77.3"), Proto: NodeRouteProtocol}); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Delete(TableRoute{Dst: pfx("10.244.2.0/24"), Proto: NodeRouteProtocol}); err != nil {
		t.Fatalf("deleting a missing route: %v", err)
	}
	got, _ = tbl.List()
	if !slices.Contains(got, want[1]) || slices.ContainsFunc(got, func(r TableRoute) bool { return r.Owned() }) {
		t.Fatalf("after delete: %+v", got)
	}
	if err := tbl.Replace(Route{Dst: pfx("10.244.3.0/24"), Via: addr("172.31.0.1")}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("off-link gateway: %v", err)
	}
}
