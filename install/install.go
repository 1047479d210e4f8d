package install

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/kube"
)

// DefaultBinaries are the binaries the image ships and the install step
// copies: ours and the reference plugins the conflist uses (host-local for
// IPAM, portmap chained in route mode; loopback for runtimes that set up
// the pod's lo through CNI, as containerd 1.6 does).
var DefaultBinaries = []string{"cni-userstack", "host-local", "loopback", "portmap"}

// binaryMode is the mode of an installed plugin binary.
const binaryMode = 0o755

// confMode is the mode of the conflist: runtimes read it as root; it
// holds no secret.
const confMode = 0o644

// pollInterval is how often the wait for the pod CIDR reads the Node.
const pollInterval = 2 * time.Second

// Options configure Run.
type Options struct {
	// SourceDir holds the binaries to install; Binaries names them.
	SourceDir string
	Binaries  []string
	// BinDir and ConfDir are the host's CNI directories as mounted in the
	// init container; ConfName is the conflist's file name.
	BinDir, ConfDir, ConfName string
	Network                   Network
	// PodCIDRs, when set, are used instead of reading the Node object.
	PodCIDRs []netip.Prefix
	// Client reads the Node object NodeName (when PodCIDRs is empty).
	Client   kube.NodeClient
	NodeName string
	// Wait bounds the wait for the pod CIDR; 0 waits until ctx ends.
	Wait   time.Duration
	Logger *slog.Logger
}

// Run installs the binaries, waits for the node's pod CIDRs and writes the
// conflist (see the package doc for the order and the atomicity).
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.ConfName == "" {
		o.ConfName = DefaultConfName
	}
	if err := o.Network.check(); err != nil {
		return err
	}
	if len(o.PodCIDRs) == 0 && (o.Client == nil || o.NodeName == "") {
		return fmt.Errorf("the node's pod CIDRs: pass --pod-cidr, or run in the cluster with --node-name / $NODE_NAME")
	}
	for _, d := range []string{o.BinDir, o.ConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if removed, err := RemoveStaleTemps(o.BinDir, o.Binaries...); err != nil {
		return err
	} else if len(removed) > 0 {
		log.Info("removed temp files of an interrupted install", "files", removed)
	}
	if _, err := RemoveStaleTemps(o.ConfDir, o.ConfName); err != nil {
		return err
	}
	for _, b := range o.Binaries {
		changed, err := InstallFile(filepath.Join(o.SourceDir, b), o.BinDir, b, binaryMode)
		if err != nil {
			return fmt.Errorf("install %s into %s: %w", b, o.BinDir, err)
		}
		log.Info("binary", "name", b, "dir", o.BinDir, "changed", changed)
	}

	cidrs := o.PodCIDRs
	if len(cidrs) == 0 {
		wctx := ctx
		if o.Wait > 0 {
			var cancel context.CancelFunc
			wctx, cancel = context.WithTimeout(ctx, o.Wait)
			defer cancel()
		}
		var err error
		if cidrs, err = kube.WaitPodCIDRs(wctx, o.Client, o.NodeName, pollInterval, log); err != nil {
			return fmt.Errorf("no conflist written: %w", err)
		}
	}
	conf, err := Render(o.Network, cidrs)
	if err != nil {
		return err
	}
	changed, err := WriteFileAtomic(o.ConfDir, o.ConfName, conf, confMode)
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Join(o.ConfDir, o.ConfName), err)
	}
	log.Info("conflist", "path", filepath.Join(o.ConfDir, o.ConfName), "podCIDRs", cidrs, "mode", o.Network.Mode, "changed", changed)
	return nil
}
