package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cni-userstack/cni-userstack/daemon/api"
)

// maxRecordSize bounds one state file read back from disk; a record is a
// few hundred bytes, anything larger is not ours.
const maxRecordSize = 64 << 10

// Store keeps one JSON file per attachment under dir/attachments/<id>.json.
// A write is atomic and durable before Put returns: temp file, fsync,
// rename, fsync of the directory (so a crash leaves the old record or the
// new one, never a torn one, and a record the API acknowledged survives a
// power cut). IDs are far-end interface names: no '/' and no dot files.
type Store struct {
	dir string
}

// OpenStore creates stateDir/attachments (mode 0700) when missing.
func OpenStore(stateDir string) (*Store, error) {
	dir := filepath.Join(stateDir, "attachments")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the directory holding the records.
func (s *Store) Dir() string { return s.dir }

func checkID(id string) error {
	if id == "" || strings.ContainsAny(id, "/\x00") || strings.HasPrefix(id, ".") || len(id) > 255-len(".json.tmp") {
		return fmt.Errorf("invalid attachment id %q", id)
	}
	return nil
}

func (s *Store) path(id string) string { return filepath.Join(s.dir, id+".json") }

// Put writes a record atomically and durably.
func (s *Store) Put(a *api.Attachment) error {
	if err := checkID(a.ID); err != nil {
		return err
	}
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return fmt.Errorf("encode attachment %s: %w", a.ID, err)
	}
	f, err := os.CreateTemp(s.dir, "."+a.ID+".*.tmp")
	if err != nil {
		return fmt.Errorf("write attachment %s: %w", a.ID, err)
	}
	tmp := f.Name()
	if _, err = f.Write(append(b, '\n')); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path(a.ID))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write attachment %s: %w", a.ID, err)
	}
	return s.syncDir()
}

// Delete removes a record; a missing one is success.
func (s *Store) Delete(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove attachment %s: %w", id, err)
	}
	return s.syncDir()
}

func (s *Store) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	return nil
}

// Load reads every record, sorted by ID. Leftover temp files of a crashed
// write are removed. A record that does not parse, or whose ID does not
// match its file name, is returned in bad (by file name) and left on disk
// for a person to look at; it never stops the others from loading.
func (s *Store) Load() (recs []api.Attachment, bad []string, err error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("read state dir: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp") {
			os.Remove(filepath.Join(s.dir, name))
			continue
		}
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".json") {
			continue
		}
		a, err := readRecord(filepath.Join(s.dir, name))
		if err != nil || a.ID+".json" != name {
			bad = append(bad, name)
			continue
		}
		recs = append(recs, *a)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	return recs, bad, nil
}

func readRecord(path string) (*api.Attachment, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var a api.Attachment
	dec := json.NewDecoder(&limitedReader{f: f, n: maxRecordSize})
	if err := dec.Decode(&a); err != nil {
		return nil, err
	}
	if err := checkID(a.ID); err != nil {
		return nil, err
	}
	return &a, nil
}

type limitedReader struct {
	f *os.File
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("record too large")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= n
	return n, err
}

// Presence is what exists on the node at start-up, as values: the pod
// netns paths that are still network namespaces and the far-end names
// still present in the stack netns.
type Presence struct {
	NetNS map[string]bool
	Links map[string]bool
}

// RecoveryPlan is what start-up does with each record.
type RecoveryPlan struct {
	// Reattach: the pod netns and the far end both exist.
	Reattach []api.Attachment
	// Remove: the record goes; when RemoveLink is set for its ID the far
	// end is still there (its pod netns is gone) and is deleted too.
	Remove     []api.Attachment
	RemoveLink map[string]bool
}

// PlanRecovery decides, from values alone, which records to re-attach and
// which to drop: a record is re-attached when its pod netns still exists
// and its far end is still in the stack netns; otherwise it is removed,
// with its far end when that is still there. Two records for one far end
// cannot exist (the far-end name is the record's file name).
func PlanRecovery(recs []api.Attachment, p Presence) RecoveryPlan {
	plan := RecoveryPlan{RemoveLink: map[string]bool{}}
	for _, r := range recs {
		nsOK := p.NetNS[r.PodNetNS]
		linkOK := p.Links[r.HostIfName]
		if nsOK && linkOK {
			plan.Reattach = append(plan.Reattach, r)
			continue
		}
		plan.Remove = append(plan.Remove, r)
		if linkOK {
			plan.RemoveLink[r.ID] = true
		}
	}
	return plan
}
