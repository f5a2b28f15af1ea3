package cloudsnap

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"time"
)

// Entry is one complete backup as `cloudsnap list` shows it.
type Entry struct {
	ID        string    `json:"id"`
	Volume    string    `json:"volume"`
	VolumeID  string    `json:"volume_id"`
	Created   time.Time `json:"created"`
	Full      bool      `json:"full"`
	Base      string    `json:"base,omitempty"`
	Size      int64     `json:"size"`           // the volume's size
	Data      int64     `json:"data_bytes"`     // bytes holding data
	Uploaded  int64     `json:"uploaded_bytes"` // bytes this backup stored
	Encrypted bool      `json:"encrypted"`
	// Error: the manifest is unreadable (listed so it can be deleted).
	Error string `json:"error,omitempty"`
}

func entryOf(m *Manifest) Entry {
	return Entry{ID: m.ID, Volume: m.Volume, VolumeID: m.VolumeID, Created: m.Created, Full: m.Full, Base: m.Base,
		Size: m.Size, Data: m.DataBytes, Uploaded: m.Uploaded, Encrypted: m.Encryption != nil}
}

// manifests reads every manifest under prefix (several at once); with
// pending, also the pending manifests of backups that may still publish
// them (build). vanished counts the listed manifests that were deleted
// before they could be read.
func manifests(ctx context.Context, st *Store, prefix string, pending bool) (ms []*Manifest, broken []Entry, vanished int, err error) {
	keys, err := st.list(ctx, prefix)
	if err != nil {
		return nil, nil, 0, err
	}
	var want []string
	for _, k := range keys {
		rest, name := path.Split(k)
		id := path.Base(rest)
		if name == manifestName || pending && name == pendingName && !pendingDead(id) {
			want = append(want, k)
		}
	}
	all := make([]*Manifest, len(want))
	bad := make([]*Entry, len(want))
	gone := make([]bool, len(want))
	errs := make([]error, len(want))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, key := range want {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m, err := readManifest(ctx, st, key)
			switch {
			case errors.Is(err, ErrCorrupt):
				bad[i] = &Entry{ID: path.Base(path.Dir(key)), Error: err.Error()}
			case errors.Is(err, ErrNotFound):
				gone[i] = true
			case err != nil:
				errs[i] = err
			default:
				all[i] = m
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, 0, err
	}
	for i := range want {
		switch {
		case all[i] != nil:
			ms = append(ms, all[i])
		case bad[i] != nil:
			broken = append(broken, *bad[i])
		case gone[i]:
			vanished++
		}
	}
	return ms, broken, vanished, nil
}

// List returns the complete backups in the bucket, oldest first; volume,
// when set, keeps those of a volume (its name or id).
func List(ctx context.Context, st *Store, volume string) ([]Entry, error) {
	ms, broken, _, err := manifests(ctx, st, rootPrefix, false)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, m := range ms {
		if volume == "" || m.Volume == volume || m.VolumeID == volume {
			out = append(out, entryOf(m))
		}
	}
	if volume == "" {
		out = append(out, broken...)
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// errUnreadableManifest: a manifest of the volume cannot be read (damaged,
// or of a newer format), so what it names is unknown.
var errUnreadableManifest = errors.New("a manifest of the volume cannot be read")

// namedObjects returns the keys of the objects the manifests under
// volPrefix name, pending ones included: those a deletion must keep. While
// one of them cannot be read it fails (errUnreadableManifest, naming it):
// it may name any object. The answer is the manifests of one listing, all
// read: a manifest deleted between the listing and its read may be the
// base of one published since, which names its objects (package doc,
// "Concurrent deletes"), so the listing is taken again.
func namedObjects(ctx context.Context, st *Store, volPrefix string) (map[string]bool, error) {
	for range 10 {
		ms, broken, vanished, err := manifests(ctx, st, volPrefix, true)
		if err != nil {
			return nil, fmt.Errorf("listing the volume's backups: %w", err)
		}
		if len(broken) > 0 {
			return nil, fmt.Errorf("%w: backup %s (%s)", errUnreadableManifest, broken[0].ID, broken[0].Error)
		}
		if vanished > 0 {
			continue
		}
		named := map[string]bool{}
		for _, m := range ms {
			for _, o := range m.Objects {
				named[o.Key] = true
			}
		}
		return named, nil
	}
	return nil, fmt.Errorf("%w: the volume's backups kept changing while they were read (a sweep as its next backup starts deletes what no backup names)", ErrConflict)
}

// Delete removes backup id: its manifest first (from then on it is not
// listed), then every object it names or stored that no other manifest of
// its volume names. Every other backup of the chain stays restorable. While
// another manifest of the volume cannot be read, the objects stay (an
// error says so); a backup's sweep takes those that no manifest names once
// every manifest reads again.
func Delete(ctx context.Context, st *Store, id string) error {
	target, err := ReadManifest(ctx, st, id)
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return err
	}
	prefix, err := backupPrefix(id)
	if err != nil {
		return err
	}
	volPrefix := prefix[:strings.LastIndexByte(strings.TrimSuffix(prefix, "/"), '/')+1]
	// Both manifests: one build left pending protects what it names.
	if err := removeKeys(ctx, st, prefix, []string{prefix + manifestName, prefix + pendingName}); err != nil {
		return err
	}
	keep, err := namedObjects(ctx, st, volPrefix)
	if err != nil {
		return fmt.Errorf("backup %s deleted, but its objects were kept: %w", id, err)
	}
	candidates := map[string]bool{}
	if target != nil {
		for _, o := range target.Objects {
			candidates[o.Key] = true
		}
	}
	own, err := st.list(ctx, prefix)
	if err != nil {
		return fmt.Errorf("backup %s deleted, but its objects were kept: %w", id, err)
	}
	for _, k := range own {
		candidates[k] = true
	}
	for k := range candidates {
		if keep[k] {
			continue
		}
		if err := st.remove(ctx, k); err != nil {
			return fmt.Errorf("backup %s deleted, but not all of its objects: %w", id, err)
		}
	}
	return nil
}
