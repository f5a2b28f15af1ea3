package cloudsnap

import (
	"context"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sync/errgroup"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/cairn-storage/cairn/engine"
)

// Upload shape: changed extents are packed segmentExtents to a data object,
// and uploadWorkers objects are read, compressed and stored at once.
const (
	segmentExtents = 16
	uploadWorkers  = 4
)

// Progress counts a running backup's or restore's bytes; safe to read while
// it runs.
type Progress struct {
	Total atomic.Int64 // logical bytes to read (backup) or write (restore)
	Done  atomic.Int64
	// Stored: bytes uploaded (backup) or downloaded (restore) so far.
	Stored atomic.Int64
	// FlushNanos: how long a restore's final flush took (the volume's data
	// made durable).
	FlushNanos atomic.Int64
	// FillNanos: how long a restore took to download, write and flush the
	// data, without making and registering its volume.
	FillNanos atomic.Int64
}

// BackupRequest says what to back up.
type BackupRequest struct {
	ID       string // NewID(volume id, time of the snapshot)
	Snapshot string // the local snapshot to upload
	// BaseSnapshot and BaseID are the previous backup of the chain: its local
	// snapshot (still present) and its id. Empty: a full backup.
	BaseSnapshot, BaseID string
	Full                 bool   // force a full backup
	Node                 string // recorded in the manifest
}

// Backup uploads req.Snapshot and returns the manifest written last. On
// failure, the objects it stored are deleted (when the store answers) and
// no manifest exists.
func Backup(ctx context.Context, eng *engine.Engine, st *Store, req BackupRequest, prog *Progress) (*Manifest, error) {
	if prog == nil {
		prog = new(Progress)
	}
	sv, err := eng.Volume(req.Snapshot)
	if err != nil {
		return nil, err
	}
	info := sv.Info()
	if !info.Snapshot {
		return nil, fmt.Errorf("%w: %q is not a snapshot", ErrInvalid, req.Snapshot)
	}
	parent, err := eng.Volume(info.Parent)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: its volume: %w", req.Snapshot, err)
	}
	pinfo := parent.Info()
	prefix, err := backupPrefix(req.ID)
	if err != nil {
		return nil, err
	}
	m := &Manifest{ID: req.ID, Volume: pinfo.Name, VolumeID: pinfo.ID, Size: info.Size, ExtentSize: extentSize,
		Created: info.Created, Full: true, Node: req.Node, Snapshot: req.Snapshot, Compression: "zstd"}

	// An incremental needs its base's manifest (the frames it keeps) and
	// the same key; otherwise this backup is full.
	var base *Manifest
	if !req.Full && req.BaseID != "" && req.BaseSnapshot != "" {
		base, err = ReadManifest(ctx, st, req.BaseID)
		switch {
		case errors.Is(err, ErrNotFound):
			base = nil // deleted from the bucket: start a new chain
		case err != nil:
			return nil, err
		case base.ChainIndex+1 >= FullEvery, base.VolumeID != pinfo.ID, base.Size > info.Size:
			base = nil
		case (base.Encryption != nil) != (st.Passphrase() != ""):
			base = nil
		}
		if base != nil && base.Encryption != nil {
			if _, err := openEncryption(base.ID, st.Passphrase(), base.Encryption); err != nil {
				base = nil // the passphrase changed: a new chain with the new key
			}
		}
	}
	var aead cipher.AEAD
	if base != nil {
		m.Full, m.Base, m.ChainIndex, m.Encryption = false, base.ID, base.ChainIndex+1, base.Encryption
		if m.Encryption != nil {
			aead, _ = openEncryption(base.ID, st.Passphrase(), base.Encryption)
		}
	} else if st.Passphrase() != "" {
		if m.Encryption, aead, err = newEncryption(st.Passphrase()); err != nil {
			return nil, err
		}
	}
	from := ""
	if base != nil {
		from = req.BaseSnapshot
	}
	changed, err := eng.ChangedExtents(from, req.Snapshot)
	if errors.Is(err, engine.ErrNotFound) && from != "" {
		// The base snapshot went away under us: upload everything.
		m.Full, m.Base, m.ChainIndex, base = true, "", 0, nil
		changed, err = eng.ChangedExtents("", req.Snapshot)
	}
	if err != nil {
		return nil, err
	}

	// Frames kept from the base, then the changed ones replace or drop them.
	frames := map[int64]Frame{}
	var objects []Object
	objIndex := map[string]int{}
	if base != nil {
		for _, f := range base.Extents {
			frames[f.X] = f
		}
		objects = base.Objects
		for i, o := range objects {
			objIndex[o.Key] = i
		}
	}
	var todo []int64
	for _, c := range changed {
		delete(frames, c.Offset/extentSize)
		if c.Kind == engine.ExtentData {
			todo = append(todo, c.Offset/extentSize)
			prog.Total.Add(c.Length)
		}
	}

	// Until the manifest is stored, a failure deletes what was stored.
	published := false
	defer func() {
		if !published {
			cleanup(st, prefix)
		}
	}()
	stored, err := upload(ctx, sv, st, prefix, aead, todo, prog)
	if err != nil {
		return nil, err
	}
	for _, seg := range stored {
		objIndex[seg.obj.Key] = len(objects)
		objects = append(objects, seg.obj)
		m.Uploaded += seg.obj.Size
		for _, f := range seg.frames {
			f.O = objIndex[seg.obj.Key]
			frames[f.X] = f
		}
	}
	// Keep only the objects the frames use (a base's object whose every
	// frame was replaced is not this backup's concern any more).
	used := map[int]bool{}
	for _, f := range frames {
		used[f.O] = true
	}
	renum := map[int]int{}
	for i, o := range objects {
		if used[i] {
			renum[i] = len(m.Objects)
			m.Objects = append(m.Objects, o)
		}
	}
	m.Extents = make([]Frame, 0, len(frames))
	for _, f := range frames {
		f.O = renum[f.O]
		m.Extents = append(m.Extents, f)
		m.DataBytes += m.extentLen(f.X)
	}
	sortFrames(m.Extents)
	m.Format = formatFor(m.Extents) // the oldest that says what the frames are
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("cloudsnap: internal error, manifest does not check: %w", err)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	// Published in three steps (package doc, "Concurrent deletes"): the
	// pending manifest, which protects the objects it names from deletes
	// and sweeps; the checks that no delete or sweep began before it; the
	// manifest, from which on the backup is listed.
	if err := st.put(ctx, prefix+pendingName, raw, smallTimeout); err != nil {
		return nil, err
	}
	if err := confirm(ctx, st, prefix, base); err != nil {
		return nil, err
	}
	// (Age only grows: within the limit here, the checks were too.)
	if err := checkAge(req.ID); err != nil {
		return nil, err
	}
	if err := st.put(ctx, prefix+manifestName, raw, smallTimeout); err != nil {
		return nil, err
	}
	published = true
	// Left behind, the pending manifest is harmless: it names what the
	// manifest names, and Delete removes both.
	_ = st.remove(context.WithoutCancel(ctx), prefix+pendingName)
	return m, nil
}

// checkAge fails a backup that has run maxBackupTime (its id's time): a
// sweep's mark may be gone by then (sweptKeep), and a sweep may take its
// pending manifest for a dead one (pendingDead).
func checkAge(id string) error {
	if t, ok := idTime(id); !ok || time.Since(t) > maxBackupTime {
		return fmt.Errorf("%w: backup %s has run longer than %v (or its id names no time)", ErrConflict, id, maxBackupTime)
	}
	return nil
}

// confirm is a backup's half of the two handshakes that keep every object a
// listed manifest names (package doc, "Concurrent deletes"): with its
// pending manifest stored, neither a sweep of its objects (the sweep's
// mark) nor a deletion of its base may have begun before it looked.
func confirm(ctx context.Context, st *Store, prefix string, base *Manifest) error {
	swept, err := st.exists(ctx, prefix+sweptName)
	if err != nil {
		return err
	}
	if swept {
		return fmt.Errorf("%w: this backup's objects were swept while it ran (another node took it for an interrupted upload: did the volume move?); nothing was kept", ErrConflict)
	}
	if base == nil {
		return nil
	}
	key, err := manifestKey(base.ID)
	if err != nil {
		return err
	}
	ok, err := st.exists(ctx, key)
	switch {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("%w: its base backup %s was deleted while it ran; nothing was kept (run it again: it will be full)", ErrConflict, base.ID)
	}
	return nil
}

type segment struct {
	obj    Object
	frames []Frame
}

// upload reads, compresses, seals and stores the extents of todo, packed
// segmentExtents to an object, uploadWorkers at a time. An extent that
// reads as all zeros is not stored (a hole on restore).
func upload(ctx context.Context, sv *engine.Volume, st *Store, prefix string, aead cipher.AEAD, todo []int64, prog *Progress) ([]segment, error) {
	type job struct {
		exts []int64
		key  string
	}
	jobs := make(chan job)
	var (
		mu  sync.Mutex
		out []segment
	)
	// The first error cancels ctx: the feeder stops, the workers' next
	// store call fails, and Wait returns that first error.
	g, ctx := errgroup.WithContext(ctx)
	for range uploadWorkers {
		g.Go(func() error {
			c, err := newCodec(aead)
			if err != nil {
				return err
			}
			defer c.close()
			data := make([]byte, extentSize)
			var buf []byte
			for j := range jobs {
				buf = buf[:0]
				seg := segment{obj: Object{Key: j.key}}
				for _, x := range j.exts {
					n := min(extentSize, sv.Size()-x*extentSize)
					if err := sv.ReadAt(data[:n], x*extentSize); err != nil {
						return fmt.Errorf("read snapshot at extent %d: %w", x, err)
					}
					prog.Done.Add(n)
					if allZero(data[:n]) {
						continue
					}
					off := int64(len(buf))
					var raw bool
					if buf, raw, err = c.seal(buf, j.key, x, data[:n]); err != nil {
						return err
					}
					seg.frames = append(seg.frames, Frame{X: x, Off: off, Len: int64(len(buf)) - off, Raw: raw})
				}
				if len(seg.frames) == 0 {
					continue
				}
				seg.obj.Size, seg.obj.XXH64, seg.obj.Frames = int64(len(buf)), xxhash.Sum64(buf), len(seg.frames)
				if err := st.put(ctx, j.key, buf, dataTimeout); err != nil {
					return err
				}
				prog.Stored.Add(int64(len(buf)))
				mu.Lock()
				out = append(out, seg)
				mu.Unlock()
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		for i := 0; i < len(todo); i += segmentExtents {
			j := job{exts: todo[i:min(len(todo), i+segmentExtents)], key: fmt.Sprintf("%sdata/%06d", prefix, i/segmentExtents)}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// cleanup deletes what an unfinished backup stored under its prefix, on
// its own deadline (the backup's context may be the reason it failed).
// Best effort: what stays is never listed, and a later sweep deletes it.
func cleanup(st *Store, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*smallTimeout)
	defer cancel()
	_ = sweepPrefix(ctx, st, prefix)
}

func sweepPrefix(ctx context.Context, st *Store, prefix string) error {
	keys, err := st.list(ctx, prefix)
	if err != nil {
		return err
	}
	return removeKeys(ctx, st, prefix, keys)
}

// removeKeys deletes keys of the backup under prefix: its manifests first,
// so that a deletion cut short (its deadline, a failing store) never leaves
// a listed backup, or a pending manifest that protects nothing whole,
// naming an object that is gone.
func removeKeys(ctx context.Context, st *Store, prefix string, keys []string) error {
	rank := func(k string) int {
		switch k {
		case prefix + manifestName:
			return 0
		case prefix + pendingName:
			return 1
		}
		return 2
	}
	keys = slices.Clone(keys)
	slices.SortStableFunc(keys, func(a, b string) int { return rank(a) - rank(b) })
	for _, k := range keys {
		if err := st.remove(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// Abandon deletes what backup id stored if it was never published (an
// upload interrupted by a crash). A published backup is left alone. The
// backup is not running (its daemon restarted since), so its pending
// manifest protects nothing; it marks all the same (sweepOrphan).
func Abandon(ctx context.Context, st *Store, id string) error {
	prefix, err := backupPrefix(id)
	if err != nil {
		return err
	}
	keys, err := st.list(ctx, prefix)
	if err != nil {
		return err
	}
	if slices.Contains(keys, prefix+manifestName) {
		if slices.Contains(keys, prefix+pendingName) {
			return st.remove(ctx, prefix+pendingName)
		}
		return nil
	}
	_, err = sweepOrphan(ctx, st, id, keys, true)
	return err
}

// sweepOrphan deletes keys, what backup id stored that no manifest names,
// unless id is published or may still be running (its pending manifest is
// there, unless dead: too old, or known dead). It is the sweep's half of
// the handshake with the backup's confirm (package doc, "Concurrent
// deletes"): first its mark in the backup's prefix, then the look for the
// backup's manifests. The mark stays (until sweptKeep): a backup that
// stores its pending manifest later finds it and fails. It says whether it
// deleted anything.
func sweepOrphan(ctx context.Context, st *Store, id string, keys []string, dead bool) (bool, error) {
	prefix, err := backupPrefix(id)
	if err != nil {
		return false, err
	}
	mark := prefix + sweptName
	keys = slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return k == mark })
	if len(keys) == 0 {
		if t, ok := idTime(id); ok && time.Since(t) > sweptKeep {
			return false, st.remove(ctx, mark) // no backup that old still runs
		}
		return false, nil
	}
	if err := st.put(ctx, mark, []byte(sweptText), smallTimeout); err != nil {
		return false, err
	}
	// The pending manifest first: the backup stores it, then the
	// manifest, then removes it, so one of the two looks finds one.
	for _, name := range []string{pendingName, manifestName} {
		found, err := st.exists(ctx, prefix+name)
		if err != nil {
			return false, err
		}
		if found && (name == manifestName || !dead && !pendingDead(id)) {
			// Published, or still running (its confirm will fail on
			// the mark, and the next sweep takes its objects).
			return false, nil
		}
	}
	return true, removeKeys(ctx, st, prefix, keys)
}

const sweptText = "swept by cairn: this backup's upload was taken for an interrupted one\n"

// pendingDead says whether a pending manifest of backup id belongs to a
// backup that can no longer publish it (checkAge), with a day's margin for
// clocks that differ between nodes.
func pendingDead(id string) bool {
	t, ok := idTime(id)
	return !ok || time.Since(t) > maxBackupTime+24*time.Hour
}

// idTime is the time a backup id names (its start).
func idTime(id string) (time.Time, bool) {
	_, ts, _ := strings.Cut(id, "-")
	t, err := time.Parse(idTimeLayout, ts)
	return t, err == nil
}

// SweepOrphans deletes the objects of volumeID's backups that have no
// manifest, except backup keep: uploads that failed while the store could
// not be reached to clean them up (they are never listed, but they take
// space). An object that a manifest of the volume names stays wherever it
// is: a deleted backup's manifest goes, and its objects that later
// incrementals still use stay under its prefix (Delete). While any
// manifest of the volume cannot be read, nothing is swept (what it names
// is unknown). It returns how many backups it swept.
//
// A backup still uploading looks like an orphan. The daemon sweeps only
// as a backup of the volume starts, on the node that holds it, so that is
// rare (the volume moved while a backup ran); when it happens the sweep's
// mark makes that backup fail instead of listing deleted objects (package
// doc, "Concurrent deletes").
func SweepOrphans(ctx context.Context, st *Store, volumeID, keep string) (int, error) {
	if len(volumeID) != 16 || strings.ContainsAny(volumeID, "/\x00") {
		return 0, fmt.Errorf("%w: %q is not a volume id", ErrInvalid, volumeID)
	}
	keys, err := st.list(ctx, volumePrefix(volumeID))
	if err != nil {
		return 0, err
	}
	named, err := namedObjects(ctx, st, volumePrefix(volumeID))
	if errors.Is(err, errUnreadableManifest) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	complete, orphans := map[string]bool{}, map[string][]string{}
	for _, k := range keys {
		id, rest, ok := strings.Cut(strings.TrimPrefix(k, volumePrefix(volumeID)), "/")
		if !ok {
			continue
		}
		complete[id] = complete[id] || rest == manifestName
		// (An id this format does not write is not ours to delete.)
		if _, err := backupPrefix(id); err == nil && !named[k] {
			orphans[id] = append(orphans[id], k)
		}
	}
	swept := 0
	for id, ks := range orphans {
		if complete[id] || id == keep {
			continue
		}
		did, err := sweepOrphan(ctx, st, id, ks, false)
		if err != nil {
			return swept, err
		}
		if did {
			swept++
		}
	}
	return swept, nil
}

// ReadManifest reads and checks the manifest of backup id.
func ReadManifest(ctx context.Context, st *Store, id string) (*Manifest, error) {
	key, err := manifestKey(id)
	if err != nil {
		return nil, err
	}
	m, err := readManifest(ctx, st, key)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: cloudsnap %s in bucket %s (never completed, or deleted)", ErrNotFound, id, st.Bucket())
	}
	return m, err
}

// readManifest reads and checks the manifest (or pending manifest) at key.
func readManifest(ctx context.Context, st *Store, key string) (*Manifest, error) {
	raw, err := st.get(ctx, key, maxManifestBytes, smallTimeout)
	if err != nil {
		return nil, err
	}
	m, err := decodeManifest(key, raw)
	if err != nil {
		return nil, err
	}
	if id := path.Base(path.Dir(key)); m.ID != id {
		return nil, fmt.Errorf("%w: manifest %s names backup %q", ErrCorrupt, key, m.ID)
	}
	return m, nil
}
