// Package ociimage builds container images offline from files on disk
// with github.com/google/go-containerregistry: one layer, no base image,
// no registry, no Dockerfile. It backs `make image` (hack/mkimage) and the
// test images of `make e2e-k8s` (the echo server and the pause binary).
//
// Not owned here: which binaries go in (hack/mkimage), loading the
// tarball into a runtime (ctr, podman, kind).
//
// The image is reproducible: entries are sorted, owned by 0:0, stamped
// with Spec.Created, and every parent directory is written (0755) before
// its files, so the same inputs give the same digest. The tarball is the
// `docker save` layout (manifest.json with RepoTags) that `ctr images
// import`, `podman load` and `kind load image-archive` all read.
package ociimage

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one file of the image.
type File struct {
	// Path is its absolute path in the image.
	Path string
	// Src is the file on disk to copy; Mode its mode in the image.
	Src  string
	Mode os.FileMode
	// Static requires Src to be a statically linked ELF executable (no
	// base image means no dynamic loader and no libc).
	Static bool
}

// Dir is an empty directory of the image (e.g. /tmp, 01777).
type Dir struct {
	Path string
	Mode os.FileMode
}

// Spec is what the image holds and how it runs.
type Spec struct {
	Files      []File
	Dirs       []Dir
	Entrypoint []string
	Cmd        []string
	Env        []string
	Labels     map[string]string
	OS, Arch   string
	// Created stamps the config and every layer entry; the zero value is
	// the Unix epoch (reproducible builds).
	Created time.Time
}

// Build writes the layer to a temp file in tmpDir and returns the image
// over it; the file must outlive the image's use.
func Build(s Spec, tmpDir string) (v1.Image, error) {
	if s.OS == "" || s.Arch == "" {
		return nil, errors.New("ociimage: OS and Arch are required")
	}
	created := s.Created
	if created.IsZero() {
		created = time.Unix(0, 0).UTC()
	}
	for _, f := range s.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("ociimage: image path %q must be absolute and clean", f.Path)
		}
		if f.Static {
			if err := CheckStatic(f.Src); err != nil {
				return nil, err
			}
		}
	}
	lf, err := os.CreateTemp(tmpDir, "layer-*.tar")
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	if err := writeLayer(lf, s, created); err != nil {
		return nil, err
	}
	if err := lf.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromFile(lf.Name(), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = s.OS, s.Arch
	cf.Created = v1.Time{Time: created}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Cmd = s.Cmd
	cf.Config.Env = s.Env
	cf.Config.Labels = s.Labels
	cf.Config.WorkingDir = "/"
	cf.History = []v1.History{{Created: v1.Time{Time: created}, CreatedBy: "ociimage (go-containerregistry), offline"}}
	return mutate.ConfigFile(img, cf)
}

// writeLayer writes the layer's tar: parent directories, then the dirs
// and files, sorted by path.
func writeLayer(w io.Writer, s Spec, created time.Time) error {
	type entry struct {
		hdr *tar.Header
		src string
	}
	entries := map[string]entry{}
	addDir := func(p string, mode os.FileMode) {
		entries[p] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: int64(mode.Perm()), ModTime: created}}
	}
	parents := func(p string) {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				addDir(d, 0o755)
			}
		}
	}
	for _, d := range s.Dirs {
		parents(d.Path)
		addDir(d.Path, d.Mode)
		if d.Mode&os.ModeSticky != 0 {
			entries[d.Path].hdr.Mode |= 0o1000
		}
	}
	for _, f := range s.Files {
		fi, err := os.Stat(f.Src)
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("ociimage: %s is not a regular file", f.Src)
		}
		parents(f.Path)
		entries[f.Path] = entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: int64(f.Mode.Perm()),
			Size: fi.Size(), ModTime: created}, src: f.Src}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		e := entries[p]
		e.hdr.Format = tar.FormatPAX
		e.hdr.Uname, e.hdr.Gname = "root", "root"
		if err := tw.WriteHeader(e.hdr); err != nil {
			return err
		}
		if e.src == "" {
			continue
		}
		f, err := os.Open(e.src)
		if err != nil {
			return err
		}
		n, err := io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
		if n != e.hdr.Size {
			return fmt.Errorf("ociimage: %s changed while it was packed", e.src)
		}
	}
	return tw.Close()
}

// WriteTarball writes img tagged ref to path, through a temp file in the
// same directory and a rename (a loader never reads a partial tarball).
func WriteTarball(p, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("ociimage: tag %q: %w", ref, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tarball.Write(tag, img, tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// CheckStatic returns an error unless p is an ELF executable with no
// program interpreter and no shared-library dependency.
func CheckStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("ociimage: %s: not an ELF executable: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("ociimage: %s is dynamically linked (it has a program interpreter): build it with CGO_ENABLED=0", p)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Errorf("ociimage: %s needs shared libraries %v: build it with CGO_ENABLED=0", p, libs)
	}
	return nil
}
