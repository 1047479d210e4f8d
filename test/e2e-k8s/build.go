package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/internal/ociimage"
)

// kubeBinaries are the Kubernetes commands the run needs.
var kubeBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

// kubeRecipe changes when the way Kubernetes is built changes: a cache
// built another way is rebuilt.
const kubeRecipe = "recipe 1: staging replaces -> published k8s.io modules v0.X.Y; CGO_ENABLED=0 -trimpath -s -w; version ldflags"

// kubeVersionFromGoMod derives the Kubernetes release from the module's
// k8s.io/client-go (one release for every k8s.io module): client-go
// v0.34.2 is Kubernetes v1.34.2.
func kubeVersionFromGoMod(ctx context.Context) (kube, staging string, err error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", "k8s.io/client-go").Output()
	if err != nil {
		return "", "", fmt.Errorf("go list -m k8s.io/client-go: %w", err)
	}
	staging = strings.TrimSpace(string(out))
	if !regexp.MustCompile(`^v0\.\d+\.\d+$`).MatchString(staging) {
		return "", "", fmt.Errorf("k8s.io/client-go %q is not a release v0.MINOR.PATCH", staging)
	}
	return "v1" + staging[2:], staging, nil
}

// buildKubernetes returns the directory of the Kubernetes binaries of
// version, building them once into cacheDir/VERSION/bin. The module
// k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces every
// k8s.io/* staging module by a directory of its own tree): it is
// downloaded from the module proxy, copied to a private build dir, its
// staging replaces pointed at the published k8s.io modules of the same
// release (v0.MINOR.PATCH), and built. A stamp file marks a complete
// build; the source copy is removed afterwards.
func buildKubernetes(ctx context.Context, cacheDir, version, staging string, logf func(string, ...any)) (string, bool, error) {
	root := filepath.Join(cacheDir, version)
	bin := filepath.Join(root, "bin")
	stamp := filepath.Join(root, ".complete")
	if b, err := os.ReadFile(stamp); err == nil && string(b) == kubeRecipe {
		ok := true
		for _, k := range kubeBinaries {
			if _, err := os.Stat(filepath.Join(bin, k)); err != nil {
				ok = false
			}
		}
		if ok {
			return bin, false, nil
		}
	}
	logf("building Kubernetes %s into %s (once; about 6 min and 3 GB of Go build cache on an idle 2-core machine)", version, root)
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", "k8s.io/kubernetes@"+version).Output()
	if err != nil {
		return "", false, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %w", version, err)
	}
	var dl struct{ Dir, Error string }
	if err := json.Unmarshal(out, &dl); err != nil || dl.Dir == "" {
		return "", false, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %s %v", version, dl.Error, err)
	}
	src := filepath.Join(root, "src")
	os.RemoveAll(src)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", false, err
	}
	if err := run(ctx, "", nil, "cp", "-r", dl.Dir, src); err != nil {
		return "", false, err
	}
	defer os.RemoveAll(src)
	if err := run(ctx, "", nil, "chmod", "-R", "u+w", src); err != nil {
		return "", false, err
	}
	for _, p := range []string{"vendor", "go.work", "go.work.sum"} {
		os.RemoveAll(filepath.Join(src, p))
	}
	gomod := filepath.Join(src, "go.mod")
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", false, err
	}
	re := regexp.MustCompile(`(?m)^(\s*)(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+\s*$`)
	n := len(re.FindAll(b, -1))
	if n < 10 {
		return "", false, fmt.Errorf("%s: found %d staging replaces, expected the k8s.io/* set", gomod, n)
	}
	b = re.ReplaceAll(b, []byte("${1}${2} => ${2} "+staging))
	if err := os.WriteFile(gomod, b, 0o644); err != nil {
		return "", false, err
	}
	major, minor := "1", strings.Split(version, ".")[1]
	ld := fmt.Sprintf("-s -w -X k8s.io/component-base/version.gitVersion=%[1]s -X k8s.io/component-base/version.gitMajor=%[2]s "+
		"-X k8s.io/component-base/version.gitMinor=%[3]s -X k8s.io/component-base/version.gitTreeState=clean "+
		"-X k8s.io/client-go/pkg/version.gitVersion=%[1]s -X k8s.io/client-go/pkg/version.gitMajor=%[2]s -X k8s.io/client-go/pkg/version.gitMinor=%[3]s",
		version, major, minor)
	args := []string{"build", "-trimpath", "-ldflags", ld, "-o", bin + "/"}
	for _, k := range kubeBinaries {
		args = append(args, "./cmd/"+k)
	}
	env := []string{"GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0"}
	bctx, cancel := context.WithTimeout(ctx, 60*time.Minute)
	defer cancel()
	if err := run(bctx, src, env, "go", args...); err != nil {
		return "", false, err
	}
	return bin, true, os.WriteFile(stamp, []byte(kubeRecipe), 0o644)
}

// goBuildStatic builds packages of this module into dir, statically.
func goBuildStatic(ctx context.Context, dir string, pkgs ...string) error {
	args := append([]string{"build", "-trimpath", "-o", dir + "/"}, pkgs...)
	return run(ctx, "", []string{"CGO_ENABLED=0"}, "go", args...)
}

// testImage builds an image of one static binary at /NAME with args.
func testImage(tmp, out, ref, bin string, entry []string) error {
	img, err := ociimage.Build(ociimage.Spec{OS: "linux", Arch: "amd64",
		Files:      []ociimage.File{{Path: "/" + filepath.Base(bin), Src: bin, Mode: 0o755, Static: true}},
		Entrypoint: entry}, tmp)
	if err != nil {
		return err
	}
	return ociimage.WriteTarball(out, ref, img)
}

// run runs a command (in dir, with env added) and returns its output in
// the error when it fails.
func run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := string(out)
		if len(s) > 4000 {
			s = "..." + s[len(s)-4000:]
		}
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, s)
	}
	return nil
}

// output runs a command and returns its combined output.
func output(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
