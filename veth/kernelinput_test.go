package veth

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ipInAddrErrors is the netns's IpInAddrErrors.
func ipInAddrErrors(t *testing.T, path string) uint64 {
	t.Helper()
	v, err := ReadSNMPIn(path, "Ip", "InAddrErrors")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// tapOn opens a non-blocking ETH_P_ALL packet socket on ifName inside the
// netns at path: a packet tap, as the stack's AF_PACKET sockets are.
func tapOn(t *testing.T, path, ifName string) int {
	t.Helper()
	fd := -1
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		proto := int(uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8)
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", ifName, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// drainUDP counts the frames the tap holds that carry UDP to port, for up
// to a second (bounded), until want are seen.
func drainUDP(fd int, port uint16, want int) int {
	n := 0
	b := make([]byte, 2048)
	for deadline := time.Now().Add(time.Second); n < want && time.Now().Before(deadline); {
		m, _, err := unix.Recvfrom(fd, b, 0)
		if err != nil {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		// Ethernet 14 + IPv4 20 (no options from the kernel's UDP) + UDP.
		if m >= 42 && b[12] == 0x08 && b[13] == 0x00 && b[23] == unix.IPPROTO_UDP && uint16(b[36])<<8|uint16(b[37]) == port {
			n++
		}
	}
	return n
}

// DropKernelInput: the stack netns's kernel no longer parses what the pod
// sends (IpInAddrErrors stays put), while a packet tap on the far end
// still sees every frame; applying it twice leaves one filter.
func TestDropKernelInput(t *testing.T) {
	podPath, stack := testNS(t)
	cfg := basicConfig(podPath, stack, "c-drop")
	pair, err := Setup(cfg)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	stackPath := NetNSPath(stack)
	// The gateway answers no ARP here: a static neighbour lets the pod
	// send IP frames at once.
	far := links(t, stackPath)[pair.HostIfName]
	pod, err := openNS(podPath)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.close()
	if err := pod.h.NeighSet(&netlink.Neigh{LinkIndex: pair.PodIfIndex, State: netlink.NUD_PERMANENT,
		IP: net.ParseIP("10.241.0.1"), HardwareAddr: far.Attrs().HardwareAddr}); err != nil {
		t.Fatal(err)
	}
	tap := tapOn(t, stackPath, pair.HostIfName)
	const port, count = 9, 20
	send := func() {
		t.Helper()
		err := ns.WithNetNSPath(podPath, func(ns.NetNS) error {
			c, err := net.Dial("udp4", fmt.Sprintf("10.242.7.7:%d", port))
			if err != nil {
				return err
			}
			defer c.Close()
			for i := 0; i < count; i++ {
				if _, err := c.Write([]byte("x")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("send from the pod: %v", err)
		}
	}

	before := ipInAddrErrors(t, stackPath)
	send()
	if got := drainUDP(tap, port, count); got != count {
		t.Fatalf("tap saw %d of %d datagrams", got, count)
	}
	parsed := ipInAddrErrors(t, stackPath) - before
	if parsed < count {
		t.Fatalf("without the drop the kernel parsed %d of %d frames (IpInAddrErrors): the test no longer shows what the drop saves", parsed, count)
	}

	for i := 0; i < 2; i++ {
		if err := DropKernelInput(stackPath, pair.HostIfName); err != nil {
			t.Fatalf("DropKernelInput (call %d): %v", i+1, err)
		}
	}
	before = ipInAddrErrors(t, stackPath)
	send()
	if got := drainUDP(tap, port, count); got != count {
		t.Fatalf("with the drop the tap saw %d of %d datagrams", got, count)
	}
	if d := ipInAddrErrors(t, stackPath) - before; d != 0 {
		t.Fatalf("with the drop the kernel still parsed %d frames", d)
	}

	r, err := openNS(stackPath)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	fs, err := r.h.FilterList(far, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 1 {
		t.Fatalf("ingress filters %v, want one", fs)
	}
	if bf, ok := fs[0].(*netlink.BpfFilter); !ok || !bf.DirectAction || !strings.HasPrefix(bf.Name, dropFilterName) {
		t.Fatalf("ingress filter %+v, want our direct-action bpf filter", fs[0])
	}
}
