package install

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// tempSuffix is in the name of a temp file of NAME: "." + NAME + tempSuffix + random.
const tempSuffix = ".tmp-"

// InstallFile copies src to dir/name with mode, atomically (see the
// package doc). It reports whether the destination changed: a destination
// with the same content and mode is left alone.
func InstallFile(src, dir, name string, mode os.FileMode) (changed bool, err error) {
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("%s is not a regular file", src)
	}
	dst := filepath.Join(dir, name)
	if same, err := sameContent(in, fi.Size(), dst, mode); err != nil {
		return false, err
	} else if same {
		return false, nil
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	return true, writeAtomic(dir, name, mode, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

// WriteFileAtomic writes data to dir/name with mode, atomically; it
// reports whether the destination changed.
func WriteFileAtomic(dir, name string, data []byte, mode os.FileMode) (changed bool, err error) {
	if same, err := sameContent(bytes.NewReader(data), int64(len(data)), filepath.Join(dir, name), mode); err != nil {
		return false, err
	} else if same {
		return false, nil
	}
	return true, writeAtomic(dir, name, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// writeAtomic is temp file in dir, fill, fsync, chmod, rename, fsync dir.
// On any error the temp file is removed and the destination untouched.
func writeAtomic(dir, name string, mode os.FileMode, fill func(io.Writer) error) (err error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return fmt.Errorf("bad file name %q", name)
	}
	tmp, err := os.CreateTemp(dir, "."+name+tempSuffix+"*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = fill(tmp); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	// Chmod after the data: the file is never executable while partial.
	if err = tmp.Chmod(mode); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// sameContent reports whether path is a regular file with mode and the
// content of r (size bytes).
func sameContent(r io.Reader, size int64, path string, mode os.FileMode) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Size() != size || fi.Mode().Perm() != mode.Perm() {
		return false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h1, h2 := sha256.New(), sha256.New()
	if _, err := io.Copy(h1, r); err != nil {
		return false, err
	}
	if _, err := io.Copy(h2, f); err != nil {
		return false, err
	}
	return bytes.Equal(h1.Sum(nil), h2.Sum(nil)), nil
}

// RemoveStaleTemps removes the temp files an interrupted install left in
// dir for the given names, and returns what it removed.
func RemoveStaleTemps(dir string, names ...string) ([]string, error) {
	var removed []string
	for _, n := range names {
		m, err := filepath.Glob(filepath.Join(dir, "."+n+tempSuffix+"*"))
		if err != nil {
			return removed, err
		}
		for _, p := range m {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return removed, err
			}
			removed = append(removed, p)
		}
	}
	return removed, nil
}
