package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cni-userstack/cni-userstack/internal/ociimage"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// staticBinary builds a tiny static Go program (a stand-in for the four
// real binaries, so the test stays fast) and returns its path.
func staticBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module tiny\n\ngo 1.21\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { println(\"tiny\") }\n"), 0o644)
	cmd := exec.Command("go", "build", "-o", "tiny", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in binary: %v\n%s", err, out)
	}
	return filepath.Join(dir, "tiny")
}

func TestBuildSteps(t *testing.T) {
	steps := buildSteps(options{version: "1.2.3", goarch: "arm64"}, "/out")
	if len(steps) != 2 {
		t.Fatalf("%d steps", len(steps))
	}
	for _, s := range steps {
		if !slices.Contains(s.env, "CGO_ENABLED=0") || !slices.Contains(s.env, "GOARCH=arm64") || !slices.Contains(s.args, "-trimpath") {
			t.Errorf("step %v %v: not a static, trimmed build for the arch", s.env, s.args)
		}
	}
	if !slices.Contains(steps[0].args, "-s -w -X main.Version=1.2.3") || steps[0].args[len(steps[0].args)-1] != ourPackage {
		t.Errorf("our build: %v", steps[0].args)
	}
	for _, p := range []string{"/plugins/ipam/host-local", "/plugins/main/loopback", "/plugins/meta/portmap"} {
		if !slices.Contains(steps[1].args, PluginsModule+p) {
			t.Errorf("plugin build lacks %s: %v", p, steps[1].args)
		}
	}
}

// TestImage runs mkimage over prebuilt (stand-in) binaries and reads the
// tarball back: the tag is the version, the config runs cni-userstack
// with the binaries on PATH, names the plugins' version from go.mod, the
// one layer holds exactly the binaries (0755, root) and /tmp (1777), the
// tarball's manifest.json is the `docker save` layout loaders read, and
// the same inputs give the same digest.
func TestImage(t *testing.T) {
	bin := t.TempDir()
	tiny := staticBinary(t)
	b, _ := os.ReadFile(tiny)
	for _, n := range binaries() {
		os.WriteFile(filepath.Join(bin, n), b, 0o700)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	o := options{version: "9.8.7-test", out: out, repo: DefaultRepo, binDir: bin, goarch: "amd64", created: time.Unix(1700000000, 0).UTC()}
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	if err := run(o, devnull); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("localhost/cni-userstack:9.8.7-test")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("read the tarball back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	pv, _ := goListModuleVersion(PluginsModule)
	switch {
	case cf.OS != "linux" || cf.Architecture != "amd64":
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	case !slices.Equal(c.Entrypoint, []string{"/opt/cni-userstack/bin/cni-userstack"}):
		t.Errorf("entrypoint %v", c.Entrypoint)
	case !slices.Contains(c.Env, "PATH=/opt/cni-userstack/bin"):
		t.Errorf("env %v", c.Env)
	case c.Labels["org.opencontainers.image.version"] != "9.8.7-test" || c.Labels["io.cni-userstack.cni-plugins.version"] != pv || pv == "":
		t.Errorf("labels %v (plugins %q)", c.Labels, pv)
	case !cf.Created.Time.Equal(o.created):
		t.Errorf("created %v", cf.Created)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(o.created) {
			t.Errorf("%s: owner %d:%d, mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		got[h.Name] = string(h.Typeflag) + " " + h.FileInfo().Mode().String()
		if h.Typeflag == tar.TypeReg {
			data, _ := io.ReadAll(tr)
			if string(data) != string(b) {
				t.Errorf("%s: content differs from the source", h.Name)
			}
		}
	}
	want := map[string]string{
		"opt/":                                "5 drwxr-xr-x",
		"opt/cni-userstack/":                  "5 drwxr-xr-x",
		"opt/cni-userstack/bin/":              "5 drwxr-xr-x",
		"opt/cni-userstack/bin/cni-userstack": "0 -rwxr-xr-x",
		"opt/cni-userstack/bin/host-local":    "0 -rwxr-xr-x",
		"opt/cni-userstack/bin/loopback":      "0 -rwxr-xr-x",
		"opt/cni-userstack/bin/portmap":       "0 -rwxr-xr-x",
		"tmp/":                                "5 dtrwxrwxrwx",
	}
	if len(got) != len(want) {
		t.Errorf("layer entries %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}

	// The docker-save layout: manifest.json names the tag.
	f, _ := os.Open(out)
	defer f.Close()
	otr := tar.NewReader(f)
	var manifest []struct{ RepoTags []string }
	for {
		h, err := otr.Next()
		if err != nil {
			break
		}
		if h.Name == "manifest.json" {
			json.NewDecoder(otr).Decode(&manifest)
		}
	}
	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{"localhost/cni-userstack:9.8.7-test"}) {
		t.Errorf("manifest.json %+v", manifest)
	}

	// Reproducible.
	out2 := filepath.Join(t.TempDir(), "img2.tar")
	o.out = out2
	if err := run(o, devnull); err != nil {
		t.Fatal(err)
	}
	img2, _ := tarball.ImageFromPath(out2, &tag)
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("same inputs, digests %v and %v", d1, d2)
	}
}

// TestImageRefusesDynamicBinary: no base image means no dynamic loader:
// a dynamically linked binary is refused before anything is written.
func TestImageRefusesDynamicBinary(t *testing.T) {
	dyn := "/bin/true"
	if ociimage.CheckStatic(dyn) == nil {
		t.Skip("/bin/true is static here")
	}
	bin := t.TempDir()
	tiny, _ := os.ReadFile(staticBinary(t))
	d, _ := os.ReadFile(dyn)
	for _, n := range binaries() {
		os.WriteFile(filepath.Join(bin, n), tiny, 0o755)
	}
	os.WriteFile(filepath.Join(bin, "portmap"), d, 0o755)
	out := filepath.Join(t.TempDir(), "img.tar")
	err := run(options{version: "1", out: out, repo: DefaultRepo, binDir: bin, goarch: "amd64"}, os.Stdout)
	if err == nil || !strings.Contains(err.Error(), "portmap") || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("dynamic binary: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("a tarball was written")
	}
	if err := ociimage.CheckStatic(filepath.Join(bin, "nope")); err == nil {
		t.Fatal("missing file passes CheckStatic")
	}
}
