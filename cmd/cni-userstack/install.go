package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/cni-userstack/cni-userstack/daemon"
	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/kube"
	"github.com/cni-userstack/cni-userstack/install"
	"github.com/cni-userstack/cni-userstack/veth"
	"github.com/spf13/cobra"
)

func newInstallCmd() *cobra.Command {
	var (
		o          install.Options
		mode       string
		cluster    []string
		routed     []string
		podCIDRs   []string
		kubeconfig string
	)
	o.Network = install.Network{}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the CNI binaries and this node's conflist (the DaemonSet's init step)",
		Long: `install copies the CNI binaries shipped beside this one (cni-userstack, host-local,
loopback, portmap) into the host's CNI bin directory, waits until this node's Node
object has a pod CIDR, and writes the conflist with it into the host's CNI conf
directory. Every file is written to a temp file in its directory, fsynced and renamed:
a runtime never sees a half-written binary or conflist. While the node has no pod
CIDR it waits and says why; the node stays NotReady meanwhile.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Network.Mode = api.Mode(mode)
			var err error
			if o.Network.ClusterCIDRs, err = parsePrefixes("--cluster-cidr", cluster); err != nil {
				return usageErrorf("%v", err)
			}
			if o.Network.RoutedRanges, err = parsePrefixes("--routed-ranges", routed); err != nil {
				return usageErrorf("%v", err)
			}
			if o.PodCIDRs, err = parsePrefixes("--pod-cidr", podCIDRs); err != nil {
				return usageErrorf("%v", err)
			}
			if o.SourceDir == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				o.SourceDir = filepath.Dir(exe)
			}
			if o.NodeName == "" {
				o.NodeName = os.Getenv(daemon.NodeNameEnv)
			}
			if len(o.PodCIDRs) == 0 {
				if o.NodeName == "" {
					return usageErrorf("this node's name is unknown: pass --node-name or set $%s (or give --pod-cidr)", daemon.NodeNameEnv)
				}
				if o.Client, err = kube.NewClient(kubeconfig, "cni-userstack-install/"+Version+" (node "+o.NodeName+")"); err != nil {
					return err
				}
			}
			o.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return install.Run(ctx, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.SourceDir, "source-dir", "", "directory of the binaries to install (default: this binary's directory)")
	fs.StringSliceVar(&o.Binaries, "binaries", install.DefaultBinaries, "binaries to install from --source-dir")
	fs.StringVar(&o.BinDir, "cni-bin-dir", "/host/opt/cni/bin", "the host's CNI bin directory, as mounted here")
	fs.StringVar(&o.ConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI conf directory, as mounted here")
	fs.StringVar(&o.ConfName, "conflist-name", install.DefaultConfName, "file name of the conflist (runtimes read the first in lexical order)")
	fs.StringVar(&o.Network.Name, "network-name", install.DefaultNetworkName, "the CNI network name")
	fs.StringVar(&o.Network.CNIVersion, "cni-version", install.DefaultCNIVersion, "cniVersion of the conflist (1.0.0: containerd 1.6 rejects 1.1.0)")
	fs.StringVar(&mode, "mode", string(api.DefaultMode), "egress mode: proxy or route")
	fs.IntVar(&o.Network.MTU, "mtu", 1500, "pod interface MTU")
	fs.StringSliceVar(&cluster, "cluster-cidr", nil, "the cluster's pod CIDRs (comma-separated): routed, not proxied, in proxy mode")
	fs.StringSliceVar(&routed, "routed-ranges", nil, "more CIDRs routed with the pod's address in proxy mode (e.g. the Service CIDR)")
	fs.StringVar(&o.Network.Socket, "socket", api.DefaultSocket, "the daemon's API socket (as the plugin on the host sees it)")
	fs.StringVar(&o.Network.StateDir, "state-dir", daemon.DefaultStateDir, "the daemon's state directory")
	fs.StringVar(&o.Network.StackNetNS, "stack-netns", veth.DefaultStackNetNS, "the stack's network namespace")
	fs.StringVar(&o.Network.IPAMDataDir, "ipam-data-dir", "", "host-local's lease directory (default: host-local's, /var/lib/cni/networks)")
	fs.StringSliceVar(&podCIDRs, "pod-cidr", nil, "this node's pod CIDRs; empty: read them from the Node object")
	fs.StringVar(&o.NodeName, "node-name", "", "this node's Node object (default: $"+daemon.NodeNameEnv+")")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the API client; empty: the pod's in-cluster service account")
	fs.DurationVar(&o.Wait, "wait", 0, "bound of the wait for the node's pod CIDR; 0 waits until stopped")
	return cmd
}

// parsePrefixes parses CIDRs, ignoring empty entries (an empty ConfigMap
// value).
func parsePrefixes(flag string, ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %v", flag, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}
