package veth

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Keeping the stack netns's kernel off the far ends' frames.
//
// A far end has no kernel address, IPv6 is off and forwarding is off
// (farEndSysctls), so the kernel of the stack netns never answers a
// pod. It still parses what the pod sends: __netif_receive_skb_core
// hands every frame to the packet taps (the stack's AF_PACKET sockets,
// ETH_P_ALL handlers on the device's ptype_all list) and then to ip_rcv,
// which validates the header, looks up a route (ip_route_input_slow
// allocates a dst for the "unreachable" answer) and drops the packet in
// ip_error, counted in the netns's IpInAddrErrors: about 35 000 frames a
// second in make bench's connect run, a route lookup each, run inside
// the sender's system call. DropKernelInput ends that: a clsact qdisc on
// the far end with a cls_bpf filter in direct-action mode at ingress,
// whose program returns TC_ACT_SHOT. sch_handle_ingress runs after the
// taps have taken their copy (it delivers the last pending tap first),
// so the stack and any tcpdump on the far end see every frame, and
// before ip_rcv, which sees none.
//
// The kernel this was written on has neither cls_matchall nor act_gact
// (tc's usual "matchall action drop"); cls_bpf with a two-instruction
// program is the portable form (Linux 4.5: direct action; clsact 4.5).

// dropFilterName names the filter (tc filter show: "bpf name ...").
const dropFilterName = "cni-userstack-drop"

// loadDropProg loads a BPF_PROG_TYPE_SCHED_CLS program that returns
// TC_ACT_SHOT for every packet, and returns its fd (the caller closes
// it; an attached filter keeps the program).
func loadDropProg() (int, error) {
	insns := [2]uint64{
		0xb7 | uint64(netlink.TC_ACT_SHOT)<<32, // r0 = TC_ACT_SHOT (BPF_ALU64|BPF_MOV|BPF_K)
		0x95,                                   // exit (BPF_JMP|BPF_EXIT)
	}
	license := []byte("GPL\x00")
	attr := netlink.BPFAttr{
		ProgType: uint32(netlink.BPF_PROG_TYPE_SCHED_CLS),
		InsnCnt:  uint32(len(insns)),
		Insns:    uintptr(unsafe.Pointer(&insns[0])),
		License:  uintptr(unsafe.Pointer(&license[0])),
	}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&insns)
	runtime.KeepAlive(license)
	if errno != 0 {
		return -1, fmt.Errorf("bpf(BPF_PROG_LOAD) of the drop program: %w", errno)
	}
	return int(fd), nil
}

// DropKernelInput makes the kernel of the netns at nsPath drop every frame
// that arrives on ifName once the packet taps have seen it (see above).
// It replaces what is there, so calling it again (a re-attach after a
// restart) changes nothing. Use it only on a link the stack owns whole:
// the kernel of that netns receives nothing on it afterwards.
func DropKernelInput(nsPath, ifName string) error {
	prog, err := loadDropProg()
	if err != nil {
		return err
	}
	defer unix.Close(prog)
	r, err := openNS(nsPath)
	if err != nil {
		return err
	}
	defer r.close()
	l, err := r.h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %s: %w", ifName, err)
	}
	idx := l.Attrs().Index
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := r.h.QdiscReplace(q); err != nil {
		return fmt.Errorf("clsact qdisc on %s: %w", ifName, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1,
			Priority: 1, Protocol: unix.ETH_P_ALL},
		Fd: prog, Name: dropFilterName, DirectAction: true,
	}
	if err := r.h.FilterReplace(f); err != nil {
		return fmt.Errorf("ingress drop filter on %s: %w", ifName, err)
	}
	return nil
}
