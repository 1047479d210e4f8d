package ociimage

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSpecErrors(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("x"), 0o644)
	for _, tc := range []struct {
		s    Spec
		want string
	}{
		{Spec{Arch: "amd64"}, "OS and Arch"},
		{Spec{OS: "linux", Arch: "amd64", Files: []File{{Path: "bin/x", Src: f}}}, "absolute and clean"},
		{Spec{OS: "linux", Arch: "amd64", Files: []File{{Path: "/a/../x", Src: f}}}, "absolute and clean"},
		{Spec{OS: "linux", Arch: "amd64", Files: []File{{Path: "/x", Src: f, Static: true}}}, "not an ELF"},
		{Spec{OS: "linux", Arch: "amd64", Files: []File{{Path: "/x", Src: dir}}}, "not a regular file"},
	} {
		if _, err := Build(tc.s, dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.s, err, tc.want)
		}
	}
	if err := WriteTarball(filepath.Join(dir, "x.tar"), "Not A Valid:Ref!", nil); err == nil {
		t.Error("a bad reference is accepted")
	}
}

// TestLayerOrder: parents before children, sorted, the sticky bit kept,
// every entry stamped with the given time.
func TestLayerOrder(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, []byte("aa"), 0o600)
	os.WriteFile(b, []byte("b"), 0o600)
	when := time.Unix(1234567890, 0).UTC()
	var buf bytes.Buffer
	err := writeLayer(&buf, Spec{
		Files: []File{{Path: "/z/b", Src: b, Mode: 0o644}, {Path: "/opt/x/a", Src: a, Mode: 0o755}},
		Dirs:  []Dir{{Path: "/tmp", Mode: 0o777 | os.ModeSticky}},
	}, when)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if !h.ModTime.Equal(when) {
			t.Errorf("%s: mtime %v", h.Name, h.ModTime)
		}
		got = append(got, h.Name+" "+h.FileInfo().Mode().String())
	}
	want := "opt/ drwxr-xr-x|opt/x/ drwxr-xr-x|opt/x/a -rwxr-xr-x|tmp/ dtrwxrwxrwx|z/ drwxr-xr-x|z/b -rw-r--r--"
	if s := strings.Join(got, "|"); s != want {
		t.Errorf("layer\n got %s\nwant %s", s, want)
	}
}
