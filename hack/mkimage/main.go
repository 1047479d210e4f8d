// Command mkimage builds the cni-userstack container image offline
// (`make image`): the static cni-userstack binary and the reference CNI
// plugins host-local, loopback and portmap, built from
// github.com/containernetworking/plugins at the version go.mod requires,
// packed by internal/ociimage into one layer with no base image, and
// written as a tarball that `ctr -n k8s.io images import`, `podman load`
// and `kind load image-archive` accept. The tag is the version.
//
//	go run ./hack/mkimage -version 0.1.0 -out bin/cni-userstack-image.tar
//
// With -bin-dir it packs binaries built elsewhere instead of building
// them (they must still be static).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/internal/ociimage"
)

// PluginsModule is the module of the reference plugins.
const PluginsModule = "github.com/containernetworking/plugins"

// ourPackage is the main package of cni-userstack.
const ourPackage = "github.com/cni-userstack/cni-userstack/cmd/cni-userstack"

// referencePlugins maps each reference plugin the image ships to its
// package (kept in go.mod by test/e2e/cnitest/tools.go).
var referencePlugins = []struct{ name, pkg string }{
	{"host-local", PluginsModule + "/plugins/ipam/host-local"},
	{"loopback", PluginsModule + "/plugins/main/loopback"},
	{"portmap", PluginsModule + "/plugins/meta/portmap"},
}

// ImageBinDir is where the binaries are in the image; `cni-userstack
// install` copies them from its own directory.
const ImageBinDir = "/opt/cni-userstack/bin"

// DefaultRepo is the image's repository; the tag is the version.
const DefaultRepo = "localhost/cni-userstack"

type options struct {
	version, out, repo, binDir, goarch string
	// created stamps the image ($SOURCE_DATE_EPOCH; the Unix epoch
	// without it), so the same sources give the same digest.
	created time.Time
}

// buildStep is one `go build`.
type buildStep struct {
	args []string
	env  []string
}

// buildSteps are the builds of the four binaries into dir: static
// (CGO_ENABLED=0), trimmed paths, stripped, ours with its version.
func buildSteps(o options, dir string) []buildStep {
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + o.goarch}
	out := dir + string(filepath.Separator)
	steps := []buildStep{{args: []string{"build", "-trimpath", "-ldflags", "-s -w -X main.Version=" + o.version, "-o", out, ourPackage}, env: env}}
	pl := []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", out}
	for _, p := range referencePlugins {
		pl = append(pl, p.pkg)
	}
	return append(steps, buildStep{args: pl, env: env})
}

// binaries are the names the image holds, ours first.
func binaries() []string {
	out := []string{"cni-userstack"}
	for _, p := range referencePlugins {
		out = append(out, p.name)
	}
	return out
}

// imageSpec is the image over the binaries in binDir.
func imageSpec(o options, binDir, pluginsVersion string) ociimage.Spec {
	s := ociimage.Spec{
		OS: "linux", Arch: o.goarch, Created: o.created,
		Entrypoint: []string{ImageBinDir + "/cni-userstack"},
		Env:        []string{"PATH=" + ImageBinDir},
		Dirs:       []ociimage.Dir{{Path: "/tmp", Mode: 0o777 | os.ModeSticky}},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "cni-userstack",
			"org.opencontainers.image.description": "cni-userstack: a CNI plugin whose pods' traffic runs through a userspace TCP/IP stack; with host-local, loopback and portmap",
			"org.opencontainers.image.version":     o.version,
			"org.opencontainers.image.source":      "https://github.com/cni-userstack/cni-userstack",
			"io.cni-userstack.cni-plugins.version": pluginsVersion,
		},
	}
	for _, b := range binaries() {
		s.Files = append(s.Files, ociimage.File{Path: ImageBinDir + "/" + b, Src: filepath.Join(binDir, b), Mode: 0o755, Static: true})
	}
	return s
}

func main() {
	var o options
	flag.StringVar(&o.version, "version", "", "the image's tag and the version built into cni-userstack (required)")
	flag.StringVar(&o.out, "out", "bin/cni-userstack-image.tar", "the image tarball to write")
	flag.StringVar(&o.repo, "repo", DefaultRepo, "the image's repository (the reference is REPO:VERSION)")
	flag.StringVar(&o.binDir, "bin-dir", "", "pack the binaries from this directory instead of building them")
	flag.StringVar(&o.goarch, "goarch", runtime.GOARCH, "architecture to build for")
	flag.Parse()
	if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
		sec, err := strconv.ParseInt(e, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mkimage: SOURCE_DATE_EPOCH %q: %v\n", e, err)
			os.Exit(2)
		}
		o.created = time.Unix(sec, 0).UTC()
	}
	if err := run(o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(o options, stdout *os.File) error {
	if o.version == "" {
		return errors.New("-version is required")
	}
	ref := o.repo + ":" + o.version
	tmp, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	pluginsVersion, err := goListModuleVersion(PluginsModule)
	if err != nil {
		return err
	}
	binDir := o.binDir
	if binDir == "" {
		binDir = filepath.Join(tmp, "bin")
		if err := os.Mkdir(binDir, 0o755); err != nil {
			return err
		}
		for _, s := range buildSteps(o, binDir) {
			if err := goRun(s); err != nil {
				return err
			}
		}
	}
	img, err := ociimage.Build(imageSpec(o, binDir, pluginsVersion), tmp)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	if err := ociimage.WriteTarball(o.out, ref, img); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "image %s (%s, CNI plugins %s) written to %s\n", ref, d, pluginsVersion, o.out)
	fmt.Fprintf(stdout, "load it with: ctr -n k8s.io images import %s | podman load -i %s | kind load image-archive %s\n", o.out, o.out, o.out)
	return nil
}

// goListModuleVersion is the version of mod in the build list (go.mod).
func goListModuleVersion(mod string) (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", mod).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("go list -m %s: %v: %s", mod, err, ee.Stderr)
		}
		return "", fmt.Errorf("go list -m %s: %w", mod, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func goRun(s buildStep) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", s.args...)
	cmd.Env = append(os.Environ(), s.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s go %s: %w\n%s", strings.Join(s.env, " "), strings.Join(s.args, " "), err, out.Bytes())
	}
	return nil
}
