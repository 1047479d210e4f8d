package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/kube"
)

// The host's forwarding switches: IPv4's, turned on at start; IPv6's,
// turned on once this node has an IPv6 pod CIDR (a dual-stack cluster):
// a host that forwards IPv6 ignores router advertisements on interfaces
// with accept_ra=1, so an IPv4-only cluster leaves it alone.
const (
	ipForwardPath  = "/proc/sys/net/ipv4/ip_forward"
	ip6ForwardPath = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// kubeAgent is `serve --kubernetes`: the route controller of daemon/kube
// over the host's main table, with host IPv4 forwarding on (the host
// forwards between its NIC and the uplink: other nodes' pods reach ours
// through it, and ours reach theirs).
type kubeAgent struct {
	node  string
	ctrl  *kube.Controller
	table *kube.NetlinkTable
	wg    sync.WaitGroup
}

// newKubeAgent builds the client and the controller; a bad kubeconfig or
// a missing in-cluster config fails the daemon's start.
func newKubeAgent(f *ServeFlags, version string, log *slog.Logger) (*kubeAgent, error) {
	cs, err := kube.NewClient(f.Kubeconfig, "cni-userstack/"+version+" (node "+f.NodeName+")")
	if err != nil {
		return nil, fmt.Errorf("--kubernetes: %w", err)
	}
	tbl, err := kube.NewNetlinkTable()
	if err != nil {
		return nil, fmt.Errorf("--kubernetes: netlink: %w", err)
	}
	if err := ensureForward(ipForwardPath, "IPv4", log); err != nil {
		tbl.Close()
		return nil, fmt.Errorf("--kubernetes: %w", err)
	}
	l := log.With("component", "kube")
	prepare := func(own []netip.Prefix) error {
		if slices.ContainsFunc(own, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
			return ensureForward(ip6ForwardPath, "IPv6", l)
		}
		return nil
	}
	return &kubeAgent{node: f.NodeName, table: tbl, ctrl: kube.NewController(cs,
		kube.ControllerConfig{NodeName: f.NodeName, Table: tbl, Logger: l, Prepare: prepare})}, nil
}

// start runs the controller until ctx ends.
func (k *kubeAgent) start(ctx context.Context, log *slog.Logger) {
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		if err := k.ctrl.Run(ctx); err != nil {
			log.Error("kubernetes route controller stopped", "err", err)
		}
	}()
}

// status is the controller's status in the API's terms.
func (k *kubeAgent) status() *api.KubeStatus { return kubeStatus(k.node, k.ctrl.Status()) }

func kubeStatus(node string, s kube.Status) *api.KubeStatus {
	ks := &api.KubeStatus{Node: node, PodCIDRs: s.PodCIDRs, Routes: []api.KubeRoute{},
		Reconciles: s.Reconciles, Errors: s.Errors, Conflicts: s.Conflicts, LastError: s.LastError}
	if ks.PodCIDRs == nil {
		ks.PodCIDRs = []netip.Prefix{}
	}
	for _, r := range s.Routes {
		ks.Routes = append(ks.Routes, api.KubeRoute{Dst: r.Dst, Via: r.Via, Node: r.Node})
	}
	return ks
}

// stop waits for the controller (ctx must have ended) and closes the
// table. Routes stay for the next daemon.
func (k *kubeAgent) stop() {
	k.wg.Wait()
	k.table.Close()
}

// ensureForward turns the forwarding switch of family at path on, saying
// so when it was off.
func ensureForward(path, family string, log *slog.Logger) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("turn on %s forwarding (%s): %w: the host must forward between other nodes and the uplink", family, path, err)
	}
	log.Info("turned host "+family+" forwarding on: other nodes' pods reach this node's through the host", "sysctl", path)
	return nil
}
