package cloudsnap

import (
	"cmp"
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"slices"
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
		start := time.Now()
		err = fill(ctx, eng, st, m, aead, name, prog)
		prog.FillNanos.Store(int64(time.Since(start)))
		if err != nil {
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
// each worker with its own codec, frame buffer and extent buffer, reused
// from one object to the next. A restore is CPU-bound next to the S3 server
// on small machines (profile in BENCHMARKS.md, cloudsnaps), and what costs
// is memory traffic: so a worker reads an object frame by frame into one
// buffer (the frames of other backups in between too: the checksum covers
// the whole object), and hashes, decodes and writes each frame while its
// bytes are still in the CPU's cache. A raw frame (format 2) is written
// into the volume straight from that buffer (decrypted in place): no
// decode, no copy. Frames are written before their object's xxhash64 is
// known; a damaged object fails the restore at its end, and a failed
// restore deletes its volume (zstd frames are bounded by the decoder, and
// encrypted ones checked by GCM's tag, before they are written). Each
// extent's write-back starts once it is written (Volume.Writeback): the
// pages go to the device while the next ones download, instead of piling up
// dirty until the kernel throttles the writes or the final flush writes
// them all while the restore waits. Writing around the page cache
// (O_DIRECT) costs less CPU but was slower: each worker then waits for the
// device (BENCHMARKS.md).
func fill(ctx context.Context, eng *engine.Engine, st *Store, m *Manifest, aead cipher.AEAD, name string, prog *Progress) error {
	// Held until filled and flushed: no export or attachment serves it
	// meanwhile. (Released before a failed restore deletes it.)
	v, hold, err := eng.HoldVolume(name, engine.Holder{Kind: engine.HeldByRestore})
	if err != nil {
		return err
	}
	defer hold.Release()
	byObject := make([][]Frame, len(m.Objects))
	for _, f := range m.Extents {
		byObject[f.O] = append(byObject[f.O], f)
		prog.Total.Add(m.extentLen(f.X))
	}
	for _, frames := range byObject {
		slices.SortFunc(frames, func(a, b Frame) int { return cmp.Compare(a.Off, b.Off) })
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
			frameBuf := make([]byte, maxFrame)
			sum := xxhash.New()
			for oi := range jobs {
				o := m.Objects[oi]
				err := st.getStream(gctx, o.Key, o.Size, dataTimeout, func(body io.Reader, size int64) error {
					damaged := func(why string) error {
						return fmt.Errorf("%w: object %s is damaged (%s)", ErrCorrupt, o.Key, why)
					}
					if size != o.Size {
						return damaged(fmt.Sprintf("size %d, want %d", size, o.Size))
					}
					sum.Reset()
					var at int64
					take := func(b []byte) error {
						if _, err := io.ReadFull(body, b); err != nil {
							return err
						}
						_, _ = sum.Write(b)
						at += int64(len(b))
						return nil
					}
					skipTo := func(end int64) error {
						for at < end {
							if err := take(frameBuf[:min(end-at, int64(len(frameBuf)))]); err != nil {
								return err
							}
						}
						return nil
					}
					for _, f := range byObject[oi] {
						if f.Off < at {
							return damaged(fmt.Sprintf("extent %d's frame overlaps the one before it", f.X))
						}
						frame := frameBuf[:f.Len]
						if err := skipTo(f.Off); err != nil {
							return err
						}
						if err := take(frame); err != nil {
							return err
						}
						ext := data[:m.extentLen(f.X)]
						var err error
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
						v.Writeback(f.X*extentSize, int64(len(ext)))
						prog.Done.Add(int64(len(ext)))
					}
					if err := skipTo(size); err != nil {
						return err
					}
					if sum.Sum64() != o.XXH64 {
						return damaged("checksum mismatch")
					}
					return nil
				})
				if errors.Is(err, ErrNotFound) {
					return fmt.Errorf("%w: object %s is missing from bucket %s", ErrCorrupt, o.Key, st.Bucket())
				}
				if err != nil {
					return err
				}
				prog.Stored.Add(o.Size)
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
