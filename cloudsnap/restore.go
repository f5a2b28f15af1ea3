package cloudsnap

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sync/errgroup"

	"github.com/cairn-storage/cairn/engine"
)

const downloadWorkers = 4

// CheckRestore reads backup id's manifest and checks that it can be
// restored under name: the name is free, the passphrase opens it. It is
// what a restore does before creating anything.
func CheckRestore(ctx context.Context, eng *engine.Engine, st *Store, id, name string) (*Manifest, cipher.AEAD, error) {
	m, err := ReadManifest(ctx, st, id)
	if err != nil {
		return nil, nil, err
	}
	if name == "" {
		name = m.Volume
	}
	if err := engine.ValidateName("volume", name); err != nil {
		return nil, nil, err
	}
	if _, err := eng.Volume(name); err == nil {
		return nil, nil, fmt.Errorf("%w: volume %q already exists; restore under another name (--name)", engine.ErrExists, name)
	}
	var aead cipher.AEAD
	if m.Encryption != nil {
		if aead, err = openEncryption(id, st.Passphrase(), m.Encryption); err != nil {
			return nil, nil, err
		}
	}
	return m, aead, nil
}

// Creator makes the volume a restore fills, around build: build creates
// it on the engine, fills it, and deletes it again when the fill fails; the
// Creator returns what build returned. The daemon's Creator registers the
// volume in its cluster (control: createHeld): the name is reserved
// cluster-wide before the volume exists, stays reserved (creating) while it
// is filled, and is given back when build fails — so no other node takes
// the name meanwhile, and no half-filled volume is ever listed as ready.
type Creator func(spec engine.VolumeSpec, build func() (engine.VolumeInfo, error)) (engine.VolumeInfo, error)

// Restore makes a new volume name ("" = the backed-up volume's name) with
// exactly backup id's content: a repl-1 volume on this node. On any failure
// (a missing or damaged object, named in the error) the volume is deleted:
// nothing partial is left.
func Restore(ctx context.Context, eng *engine.Engine, st *Store, id, name string, prog *Progress) (engine.VolumeInfo, error) {
	return RestoreWith(ctx, eng, st, id, name, prog, nil)
}

// RestoreWith is Restore with the volume made through create (nil: on the
// engine alone).
func RestoreWith(ctx context.Context, eng *engine.Engine, st *Store, id, name string, prog *Progress, create Creator) (engine.VolumeInfo, error) {
	if prog == nil {
		prog = new(Progress)
	}
	m, aead, err := CheckRestore(ctx, eng, st, id, name)
	if err != nil {
		return engine.VolumeInfo{}, err
	}
	if name == "" {
		name = m.Volume
	}
	spec := engine.VolumeSpec{Name: name, Size: m.Size, Repl: 1}
	build := func() (engine.VolumeInfo, error) {
		info, err := eng.CreateVolume(spec)
		if err != nil {
			return engine.VolumeInfo{}, err
		}
		if err := fill(ctx, eng, st, m, aead, name, prog); err != nil {
			if derr := eng.DeleteVolume(name); derr != nil {
				return engine.VolumeInfo{}, fmt.Errorf("%w (and the partial volume %q could not be deleted: %v)", err, name, derr)
			}
			return engine.VolumeInfo{}, err
		}
		return info, nil
	}
	if create == nil {
		return build()
	}
	return create(spec, build)
}

// fill writes every frame of m into volume name and flushes it: when it
// returns nil the volume holds the backup's content durably.
//
// downloadWorkers objects are fetched, checked, decoded and written at once,
// each worker with its own codec, object buffer and extent buffer, reused
// from one object to the next: a restore is CPU-bound next to the S3 server
// on small machines (profile in BENCHMARKS.md, cloudsnaps), and a fresh
// 16 MiB buffer per object cost a zeroing pass and GC work per object. A raw
// frame (format 2) is written into the volume straight from the object
// buffer, checked by the object's xxhash64 (and decrypted in place): no
// decode, no copy. Once an object's extents are written their write-back is
// started (Volume.Writeback): the pages go to the device while the next
// objects download, instead of piling up dirty until the kernel throttles
// the writes or the final flush writes them all while the restore waits.
func fill(ctx context.Context, eng *engine.Engine, st *Store, m *Manifest, aead cipher.AEAD, name string, prog *Progress) error {
	v, err := eng.Volume(name)
	if err != nil {
		return err
	}
	byObject := make([][]Frame, len(m.Objects))
	for _, f := range m.Extents {
		byObject[f.O] = append(byObject[f.O], f)
		prog.Total.Add(m.extentLen(f.X))
	}
	jobs := make(chan int)
	// The first error cancels ctx: the feeder stops, the workers' next
	// store call fails, and Wait returns that first error.
	g, gctx := errgroup.WithContext(ctx)
	for range downloadWorkers {
		g.Go(func() error {
			c, err := newCodec(aead)
			if err != nil {
				return err
			}
			defer c.close()
			data := make([]byte, extentSize)
			var raw []byte
			for oi := range jobs {
				o := m.Objects[oi]
				raw, err = st.getInto(gctx, raw, o.Key, o.Size, dataTimeout)
				if errors.Is(err, ErrNotFound) {
					return fmt.Errorf("%w: object %s is missing from bucket %s", ErrCorrupt, o.Key, st.Bucket())
				}
				if err != nil {
					return err
				}
				if int64(len(raw)) != o.Size || xxhash.Sum64(raw) != o.XXH64 {
					return fmt.Errorf("%w: object %s is damaged (size %d, want %d; checksum mismatch)", ErrCorrupt, o.Key, len(raw), o.Size)
				}
				prog.Stored.Add(int64(len(raw)))
				for _, f := range byObject[oi] {
					ext, frame := data[:m.extentLen(f.X)], raw[f.Off:f.Off+f.Len]
					if f.Raw {
						ext, err = c.openRaw(frame, o.Key, f.X)
					} else {
						err = c.open(ext, frame, o.Key, f.X)
					}
					if err != nil {
						return err
					}
					if err := v.WriteAt(ext, f.X*extentSize, false); err != nil {
						return fmt.Errorf("write volume %q: %w", name, err)
					}
					prog.Done.Add(int64(len(ext)))
				}
				for _, f := range byObject[oi] {
					v.Writeback(f.X*extentSize, m.extentLen(f.X))
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		for oi := range m.Objects {
			if len(byObject[oi]) == 0 {
				continue
			}
			select {
			case jobs <- oi:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	err = v.Flush()
	prog.FlushNanos.Store(int64(time.Since(start)))
	return err
}
