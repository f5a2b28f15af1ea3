package cloudsnap

import (
	"context"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sync/errgroup"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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

	stored, err := upload(ctx, sv, st, prefix, aead, todo, prog)
	if err != nil {
		cleanup(st, prefix)
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
		cleanup(st, prefix)
		return nil, fmt.Errorf("cloudsnap: internal error, manifest does not check: %w", err)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		cleanup(st, prefix)
		return nil, err
	}
	// The manifest last: from here on the backup is complete.
	if err := st.put(ctx, prefix+manifestName, raw, smallTimeout); err != nil {
		cleanup(st, prefix)
		return nil, err
	}
	return m, nil
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
// Best effort: what stays has no manifest, is never listed, and is deleted
// by a later Sweep.
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
	// The manifest first: a sweep cut short (its deadline, a failing
	// store) must not leave a listed backup whose objects are gone.
	if i := slices.Index(keys, prefix+manifestName); i > 0 {
		keys[0], keys[i] = keys[i], keys[0]
	}
	for _, k := range keys {
		if err := st.remove(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// Abandon deletes the objects of backup id if it has no manifest (an
// upload interrupted by a crash). A complete backup is left alone.
func Abandon(ctx context.Context, st *Store, id string) error {
	key, err := manifestKey(id)
	if err != nil {
		return err
	}
	if _, err := st.get(ctx, key, maxManifestBytes, smallTimeout); err == nil {
		return nil
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	prefix, _ := backupPrefix(id)
	return sweepPrefix(ctx, st, prefix)
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
// REQUIRES: no backup of the volume other than keep is running anywhere.
// The daemon keeps that (one backup of a volume at a time, on the node that
// holds it) and sweeps as each backup starts; swept during another backup's
// upload, that backup would write a manifest naming deleted objects.
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
		for _, k := range ks {
			if err := st.remove(ctx, k); err != nil {
				return swept, err
			}
		}
		swept++
	}
	return swept, nil
}

// ReadManifest reads and checks the manifest of backup id.
func ReadManifest(ctx context.Context, st *Store, id string) (*Manifest, error) {
	key, err := manifestKey(id)
	if err != nil {
		return nil, err
	}
	raw, err := st.get(ctx, key, maxManifestBytes, smallTimeout)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: cloudsnap %s in bucket %s (never completed, or deleted)", ErrNotFound, id, st.Bucket())
	}
	if err != nil {
		return nil, err
	}
	m, err := decodeManifest(key, raw)
	if err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, fmt.Errorf("%w: manifest %s names backup %q", ErrCorrupt, key, m.ID)
	}
	return m, nil
}
