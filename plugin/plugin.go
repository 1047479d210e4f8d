package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ipam"
)

// SupportedVersions are the cniVersions the plugin accepts (VERSION lists
// them).
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// cmdTimeout bounds one command's calls to the daemon (autostart has its
// own ReadyTimeout inside it).
const cmdTimeout = 60 * time.Second

// Main runs the plugin: skel reads the CNI_ environment and stdin and
// calls the command; errors are printed as CNI error JSON with their code.
func Main(ver string) {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus,
	}, SupportedVersions, fmt.Sprintf("CNI plugin cni-userstack %s (pods on a userspace TCP/IP stack)", ver))
}

// cniErr keeps a *types.Error or *api.Error's code; anything else is an
// I/O failure (5) with its text.
func cniErr(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.CNI()
	}
	return types.NewError(types.ErrIOFailure, err.Error(), "")
}

// ipamErr wraps a failure of the IPAM plugin, keeping its code.
func ipamErr(cmd, plugin string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return types.NewError(te.Code, fmt.Sprintf("IPAM plugin %q %s: %s", plugin, cmd, te.Msg), te.Details)
	}
	return types.NewError(types.ErrIOFailure, fmt.Sprintf("IPAM plugin %q %s: %v (is it in CNI_PATH?)", plugin, cmd, err), "")
}

func warnf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cni-userstack: "+format+"\n", args...)
}

// cmdAdd is ADD: check the port mappings and that nothing exists yet,
// IPAM, the veth pair, the daemon's attachment (with the mode, routed
// ranges and port mappings), then print the result. Every step that changed
// something registers its undo; a failure runs them last-first.
func cmdAdd(args *skel.CmdArgs) (err error) {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	pm, err := conf.PortMappings()
	if err != nil {
		return err
	}
	var undo undoList
	defer func() {
		if err != nil {
			if uerr := undo.run(); uerr != nil {
				warnf("ADD %s/%s failed and its rollback was incomplete: %v", args.ContainerID, args.IfName, uerr)
			}
			err = cniErr(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()

	cl, err := ensureDaemon(ctx, conf)
	if err != nil {
		return err
	}
	hostIf := veth.HostIfName(args.ContainerID, args.IfName)
	if err = checkNotAttached(ctx, cl, args, hostIf); err != nil {
		return err
	}

	r, err := ipam.ExecAdd(conf.IPAM.Type, args.StdinData)
	if err != nil {
		return ipamErr("ADD", conf.IPAM.Type, err)
	}
	undo.add("IPAM release", func() error { return ipam.ExecDel(conf.IPAM.Type, args.StdinData) })
	ipamRes, err := current.NewResultFromResult(r)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("IPAM plugin %q result: %v", conf.IPAM.Type, err), "")
	}
	pa, err := podAddressing(ipamRes)
	if err != nil {
		return err
	}

	pair, err := veth.Setup(veth.PodConfig{
		PodNetNS: args.Netns, IfName: args.IfName, HostIfName: hostIf, StackNetNS: conf.StackNetNS,
		MTU: conf.MTU, IPs: pa.IPs(), Routes: pa.Routes,
	})
	if err != nil {
		if errors.Is(err, veth.ErrExists) {
			return types.NewError(api.CodeAttachmentExists, fmt.Sprintf("container %s already has interface %s: %v; DEL it before adding it again", args.ContainerID, args.IfName, err), "")
		}
		if errors.Is(err, veth.ErrNetNSNotFound) {
			return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("pod netns %s: %v", args.Netns, err), "")
		}
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("create the pod's veth pair: %v", err), "")
	}
	undo.add("veth teardown", func() error { return veth.Teardown(args.Netns, args.IfName, hostIf, conf.StackNetNS) })

	podNS, podName := k8sPodName(args.Args)
	_, err = cl.Attach(ctx, api.AttachRequest{
		ContainerID: args.ContainerID, IfName: args.IfName, Network: conf.Name, PodNetNS: args.Netns,
		HostIfName: hostIf, PodMAC: pair.PodMAC.String(), IP: pa.IP, Gateway: pa.Gateway, Range: pa.Range,
		IP6: pa.IP6, Gateway6: pa.Gateway6, Range6: pa.Range6, RouterAdvert: conf.RouterAdvertisements && pa.IP6.IsValid(), MTU: conf.MTU, Mode: conf.Mode, RoutedRanges: conf.Routed(), PortMappings: pm,
		PodNamespace: podNS, PodName: podName,
	})
	if err != nil {
		return err
	}
	undo.add("daemon detach", func() error {
		_, err := cl.Detach(context.Background(), api.DetachRequest{ContainerID: args.ContainerID, IfName: args.IfName})
		return err
	})

	var prev *current.Result
	if conf.PrevResult != nil {
		if prev, err = current.NewResultFromResult(conf.PrevResult); err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
		}
	}
	res := buildResult(prev, resultDNS(conf, ipamRes.DNS, pa.Gateway, pa.Gateway6), args.IfName, args.Netns, pair.PodMAC, pa)
	if err = types.PrintResult(res, conf.CNIVersion); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("print result: %v", err), "")
	}
	return nil
}

// checkNotAttached refuses an ADD for a (container, interface) that is
// already there, before anything is reserved: the existing pod and its
// IPAM lease stay untouched.
func checkNotAttached(ctx context.Context, cl *api.Client, args *skel.CmdArgs, hostIf string) error {
	if _, err := veth.Inspect(args.Netns, args.IfName); err == nil {
		return types.NewError(api.CodeAttachmentExists, fmt.Sprintf("interface %s already exists in netns %s: DEL the attachment before adding it again, or pick another CNI_IFNAME", args.IfName, args.Netns), "")
	} else if errors.Is(err, veth.ErrNetNSNotFound) {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("pod netns %s does not exist: %v", args.Netns, err), "")
	}
	l, err := cl.List(ctx)
	if err != nil {
		return err
	}
	for _, a := range l {
		if a.ID == hostIf {
			return types.NewError(api.CodeAttachmentExists, fmt.Sprintf("container %s interface %s is already attached (%v, netns %s): DEL it before adding it again", args.ContainerID, args.IfName, a.IP, a.PodNetNS), "")
		}
	}
	return nil
}

// cmdDel is DEL: detach from the daemon, delete the veth pair, release
// IPAM. Anything already gone is success, the netns included; a daemon
// that is down is skipped (its start-up recovery drops the record once the
// far end is gone).
func cmdDel(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cl := api.NewClient(conf.Socket, 0)
	if _, err := cl.Detach(ctx, api.DetachRequest{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		if !api.IsUnreachable(err) {
			return cniErr(err)
		}
		warnf("DEL %s/%s: daemon not reachable (%v); its record is dropped when it starts", args.ContainerID, args.IfName, err)
	}
	hostIf := veth.HostIfName(args.ContainerID, args.IfName)
	if err := veth.Teardown(args.Netns, args.IfName, hostIf, conf.StackNetNS); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("delete the pod's veth pair: %v", err), "")
	}
	if err := ipam.ExecDel(conf.IPAM.Type, args.StdinData); err != nil {
		return ipamErr("DEL", conf.IPAM.Type, err)
	}
	return nil
}

// cmdCheck is CHECK: the pod interface exists with the addresses and the
// routes of prevResult in the ptp shape (checkRoutes), the daemon has the
// attachment with the same address, and the IPAM plugin agrees.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return confErr("CHECK needs a prevResult (the runtime passes the cached ADD result)")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	want, wantMAC, wantRoutes, err := resultIPs(prev, args.IfName, args.Netns)
	if err != nil {
		return types.NewError(api.CodeAttachmentBroken, err.Error(), "")
	}
	st, err := veth.Inspect(args.Netns, args.IfName)
	if err != nil {
		return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("pod interface %s in netns %s: %v (deleted behind the plugin's back?); DEL and ADD the pod again", args.IfName, args.Netns, err), "")
	}
	if st.Kind != "veth" {
		return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("pod interface %s is a %s, not the veth the plugin made", args.IfName, st.Kind), "")
	}
	if wantMAC != "" && !strings.EqualFold(st.MAC.String(), wantMAC) {
		return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("pod interface %s has MAC %v, the ADD result says %s", args.IfName, st.MAC, wantMAC), "")
	}
	for _, p := range want {
		if !slices.Contains(st.IPs, p) {
			return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("pod interface %s lacks address %v of the ADD result (has %v)", args.IfName, p, st.IPs), "")
		}
	}
	if err := checkRoutes(args.IfName, st, want, wantRoutes); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cl, err := ensureDaemon(ctx, conf)
	if err != nil {
		return err
	}
	l, err := cl.List(ctx)
	if err != nil {
		return cniErr(err)
	}
	hostIf := veth.HostIfName(args.ContainerID, args.IfName)
	i := slices.IndexFunc(l, func(a api.Attachment) bool { return a.ID == hostIf })
	if i < 0 {
		return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("the daemon at %s has no attachment for container %s interface %s; DEL and ADD the pod again", conf.Socket, args.ContainerID, args.IfName), "")
	}
	if err := checkDaemonIPs(want, &l[i]); err != nil {
		return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("%v for container %s; DEL and ADD the pod again", err, args.ContainerID), "")
	}
	if err := ipam.ExecCheck(conf.IPAM.Type, args.StdinData); err != nil {
		return ipamErr("CHECK", conf.IPAM.Type, err)
	}
	return nil
}

// checkDaemonIPs is CHECK's comparison of the result's addresses with
// the daemon's attachment: the same IPv4 address, and the same IPv6
// address or none in both.
func checkDaemonIPs(want []netip.Prefix, a *api.Attachment) error {
	if !slices.Contains(want, a.IP) {
		return fmt.Errorf("the daemon attached %v, the ADD result says %v", a.IP, want)
	}
	i6 := slices.IndexFunc(want, func(p netip.Prefix) bool { return p.Addr().Is6() })
	switch {
	case i6 < 0 && a.IP6.IsValid():
		return fmt.Errorf("the daemon attached IPv6 address %v, the ADD result has none", a.IP6)
	case i6 >= 0 && want[i6] != a.IP6:
		return fmt.Errorf("the daemon attached IPv6 address %v, the ADD result says %v", a.IP6, want[i6])
	}
	return nil
}

// checkRoutes is CHECK's view of the pod's routes: the ptp shape the ADD
// installed (the gateway on-link, the range and the result's routes via
// the gateway) is all there, and no address's range is on-link, which
// would hide the stack's routing (TTL, traceroute) from the pod again.
func checkRoutes(ifName string, st *veth.PodState, ips []netip.Prefix, want []veth.Route) error {
	for _, rt := range want {
		if slices.Contains(st.Routes, rt) {
			continue
		}
		what := fmt.Sprintf("route %v via %v", rt.Dst, rt.GW)
		if !rt.GW.IsValid() {
			what = fmt.Sprintf("on-link route to its gateway %v", rt.Dst.Addr())
		}
		return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("pod interface %s lacks the %s of the ADD result (its routes: %s); DEL and ADD the pod again", ifName, what, fmtRoutes(st.Routes)), "")
	}
	for _, p := range ips {
		if onLink := (veth.Route{Dst: p.Masked()}); p.Bits() < p.Addr().BitLen() && slices.Contains(st.Routes, onLink) {
			return types.NewError(api.CodeAttachmentBroken, fmt.Sprintf("pod interface %s has %v on-link: the pod would reach its range without the gateway (its routes: %s); DEL and ADD the pod again", ifName, p.Masked(), fmtRoutes(st.Routes)), "")
		}
	}
	return nil
}

func fmtRoutes(rs []veth.Route) string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		if r.GW.IsValid() {
			out = append(out, fmt.Sprintf("%v via %v", r.Dst, r.GW))
		} else {
			out = append(out, fmt.Sprintf("%v on-link", r.Dst))
		}
	}
	return "[" + strings.Join(out, ", ") + "]"
}

// cmdGC is GC (spec 1.1): the daemon removes the attachments of this
// network missing from the valid list (both key names are read) with their
// veths; the plugin releases their IPAM reservations and passes GC on to
// the IPAM plugin.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cl, err := ensureDaemon(ctx, conf)
	if err != nil {
		return err
	}
	resp, err := cl.GC(ctx, api.GCRequest{Network: conf.Name, Valid: conf.ValidAttachmentList()})
	if err != nil {
		return cniErr(err)
	}
	errs := append([]string(nil), resp.Errors...)
	for _, a := range resp.Removed {
		if err := ipamRelease(ctx, conf.IPAM.Type, args, a); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if err := invoke.DelegateGC(ctx, conf.IPAM.Type, args.StdinData, nil); err != nil {
		errs = append(errs, ipamErr("GC", conf.IPAM.Type, err).Error())
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrIOFailure, "GC incomplete: "+strings.Join(errs, "; "), "")
	}
	return nil
}

// ipamRelease runs the IPAM plugin's DEL for a removed attachment, with
// its container ID and interface in the environment.
func ipamRelease(ctx context.Context, plugin string, args *skel.CmdArgs, a api.Attachment) error {
	path, err := invoke.FindInPath(plugin, filepath.SplitList(args.Path))
	if err != nil {
		return ipamErr("DEL", plugin, err)
	}
	ia := &invoke.Args{Command: "DEL", ContainerID: a.ContainerID, NetNS: a.PodNetNS, IfName: a.IfName, Path: args.Path}
	if err := invoke.ExecPluginWithoutResult(ctx, path, args.StdinData, ia, nil); err != nil {
		return ipamErr("DEL", plugin, fmt.Errorf("container %s: %w", a.ContainerID, err))
	}
	return nil
}

// cmdStatus is STATUS: ready when the daemon answers, or when it is down
// but autostart will start it at the next ADD; down with autostart off is
// code 50. The IPAM plugin's STATUS is passed on.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cl := api.NewClient(conf.Socket, 0)
	if _, err := cl.Status(ctx); err != nil {
		if !api.IsUnreachable(err) {
			return types.NewError(types.ErrLimitedConnectivity, fmt.Sprintf("cni-userstack daemon at %s answers but is unhealthy: %v", conf.Socket, err), "")
		}
		if !conf.AutostartOn() {
			return types.NewError(types.ErrPluginNotAvailable,
				fmt.Sprintf("cni-userstack daemon is not running at %s and autostart is false: start `cni-userstack serve --socket %s`", conf.Socket, conf.Socket), err.Error())
		}
	}
	if err := ipam.ExecStatus(conf.IPAM.Type, args.StdinData); err != nil {
		return ipamErr("STATUS", conf.IPAM.Type, err)
	}
	return nil
}
