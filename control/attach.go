package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/blockdev/attach"
	bfuse "github.com/cairn-storage/cairn/blockdev/fuse"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/atomicfile"
)

// How a volume becomes a block device on this host.
const (
	ViaFUSE = "fuse" // FUSE file + loop device (/dev/loopN)
	ViaNBD  = "nbd"  // kernel NBD client (/dev/nbdN) on the daemon's NBD socket
)

// Budgets of the host operations.
const (
	// releaseWait is how long a detach waits for the kernel to close the
	// FUSE file after losetup -d.
	releaseWait = 10 * time.Second
	// busyUnmountGrace is how long shutdown retries unmounting a busy
	// filesystem before it syncs it and detaches it lazily.
	busyUnmountGrace = 5 * time.Second
	// attachStateFile, in the data directory, lists what is attached and
	// mounted, so that a restarted daemon serves it again.
	attachStateFile = "attachments.json"
)

// AttachConfig configures an Attacher.
type AttachConfig struct {
	DataDir   string // FUSE mount DataDir/fuse, state DataDir/attachments.json
	NBDSocket string // the daemon's NBD unix socket, for kernel NBD attach
	NodeID    string // shown as a volume's attached_on
	Logger    *slog.Logger
	// BeforeRestore, when set, runs once Restore has read what to restore
	// and before it attaches anything (tests hold the node starting).
	BeforeRestore func(ctx context.Context)
}

// Attacher owns the volumes attached to this host as block devices, and the
// filesystems `host mount` mounted on them.
//
// Concurrency: ops serialises the host operations (Attach, Detach, Mount,
// Unmount, Restore, Shutdown): they run commands and syscalls that take
// time, and each must see the state the previous one left. mu protects
// atts and fuse for readers that must not wait for an operation (volume
// JSON). Lock order: ops, then mu.
type Attacher struct {
	eng       *engine.Engine
	cfg       AttachConfig
	log       *slog.Logger
	fuseDir   string
	statePath string

	ops    sync.Mutex
	mu     sync.Mutex
	atts   map[string]*attachment // by volume name; REQUIRES: mu (writes also ops)
	fuse   *bfuse.Server          // mounted on the first FUSE attach; REQUIRES: mu
	closed bool                   // after Shutdown; REQUIRES: ops

	restore RestoreState // how far Restore has come; REQUIRES: mu

	// pending is what attachments.json asked for that Restore could not
	// bring back: the volume's pool missing, a mount point gone, a stop in
	// the middle of the restore. It stays recorded, so the next start tries
	// again, until the operator forgets it: host detach VOL (the whole
	// record) or host unmount VOL PATH (one mount). By volume; REQUIRES: ops.
	pending map[string]attachRecord

	// replicated, once set (SetReplicated), attaches replicated volumes
	// through their coordinator on this node.
	replicated atomic.Pointer[ReplicatedOpener]
}

// SetReplicated makes replicated volumes attach through f (the daemon sets
// it before Restore).
func (a *Attacher) SetReplicated(f ReplicatedOpener) { a.replicated.Store(&f) }

// volumeHold is what keeps an attached volume in use: the engine's hold on a
// local volume, or a replicated volume's coordinator reference.
type volumeHold interface {
	Release()
	Set(engine.Holder)
}

// coordinatorHold holds a replicated volume's coordinator while attached.
type coordinatorHold struct{ release func() }

func (h *coordinatorHold) Release() {
	if h.release != nil {
		h.release()
		h.release = nil
	}
}

// Set: the replicas' own nodes record the coordinator's use (HeldByReplication).
func (h *coordinatorHold) Set(engine.Holder) {}

// attachment is one attached volume.
type attachment struct {
	volume string
	via    string
	device string // /dev/loopN or /dev/nbdN
	file   string // the FUSE file behind a loop device
	nbd    *attach.NBDDevice
	hold   volumeHold // the record that the volume is in use, and how
	// auto: made by `host mount`, so the last `host unmount` detaches it.
	auto   bool
	mounts []mountRecord
}

// holder describes the attachment to the engine, for the refusals of a
// delete or restore. REQUIRES: ops.
func (att *attachment) holder() engine.Holder {
	h := engine.Holder{Kind: engine.HeldAttached, Device: att.device, ViaNBD: att.via == ViaNBD}
	for _, m := range att.mounts {
		h.Mounts = append(h.Mounts, m.Path)
	}
	return h
}

type mountRecord struct {
	Path string `json:"path"`
	FS   string `json:"fs"`
}

// attachRecord is attachments.json, one per attached volume.
type attachRecord struct {
	Volume string        `json:"volume"`
	Via    string        `json:"via"`
	Auto   bool          `json:"auto,omitempty"`
	Mounts []mountRecord `json:"mounts,omitempty"`
}

// NewAttacher returns an Attacher with nothing attached; call Restore to
// serve what a previous run left attached.
func NewAttacher(e *engine.Engine, cfg AttachConfig) *Attacher {
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &Attacher{
		eng:       e,
		cfg:       cfg,
		log:       lg.With("component", "attach"),
		fuseDir:   filepath.Join(cfg.DataDir, "fuse"),
		statePath: filepath.Join(cfg.DataDir, attachStateFile),
		atts:      map[string]*attachment{},
		pending:   map[string]attachRecord{},
	}
}

// AttachInfo is what the volume JSON shows of an attachment.
type AttachInfo struct {
	NodeID string
	Device string
	Via    string
	Mounts []string
}

// Info returns a volume's attachment, if it has one.
func (a *Attacher) Info(volume string) (AttachInfo, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	att, ok := a.atts[volume]
	if !ok {
		return AttachInfo{}, false
	}
	info := AttachInfo{NodeID: a.cfg.NodeID, Device: att.device, Via: att.via}
	for _, m := range att.mounts {
		info.Mounts = append(info.Mounts, m.Path)
	}
	return info, true
}

// DefaultVia is the attach method used when none is asked for: the kernel
// NBD client where the kernel has it, else FUSE + loop.
func DefaultVia() string {
	if attach.HaveNBD() {
		return ViaNBD
	}
	return ViaFUSE
}

// Attach makes volume a block device on this host and returns its path.
// Attaching an attached volume returns its device (with the same via).
func (a *Attacher) Attach(ctx context.Context, volume, via string) (string, error) {
	a.ops.Lock()
	defer a.ops.Unlock()
	if err := a.usable(); err != nil {
		return "", err
	}
	if att := a.lookup(volume); att != nil {
		if via != "" && via != att.via {
			return "", invalidf("volume %q is already attached via %s as %s; detach it first to attach it via %s", volume, att.via, att.device, via)
		}
		return att.device, nil
	}
	att, err := a.attach(ctx, volume, via, false)
	if err != nil {
		return "", err
	}
	if p, ok := a.pending[volume]; ok {
		// Attached again by hand: only the record's mounts stay pending.
		p.Via, p.Auto = att.via, false
		a.pending[volume] = p
		a.clearRestoreErrors(func(e RestoreError) bool { return e.Volume == volume && e.Path == "" })
	}
	if err := a.persist(); err != nil {
		// Unrecorded, the attachment would silently vanish at the next
		// start: undo it and say why.
		if derr := a.detach(ctx, att); derr != nil {
			return "", fmt.Errorf("cannot attach volume %q: %w; detaching it again failed too: %w", volume, err, derr)
		}
		return "", fmt.Errorf("cannot attach volume %q: %w (it was detached again)", volume, err)
	}
	return att.device, nil
}

// busyf is a conflict with something in use (409, code "busy").
func busyf(format string, args ...any) error {
	return &messageError{msg: fmt.Sprintf(format, args...), err: engine.ErrBusy}
}

// usable refuses operations after Shutdown. REQUIRES: ops.
func (a *Attacher) usable() error {
	if a.closed {
		return &messageError{msg: "host operations are stopped: the daemon is shutting down", err: engine.ErrClosed}
	}
	return nil
}

func (a *Attacher) lookup(volume string) *attachment {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.atts[volume]
}

// attach does the work of Attach. REQUIRES: ops.
func (a *Attacher) attach(ctx context.Context, volume, via string, auto bool) (*attachment, error) {
	if via == "" {
		via = DefaultVia()
	}
	switch via {
	case ViaFUSE, ViaNBD:
	default:
		return nil, invalidf("attach via %q: want %s or %s", via, ViaFUSE, ViaNBD)
	}
	if via == ViaNBD && !attach.HaveNBD() {
		return nil, invalidf("cannot attach volume %q via nbd: this kernel has no nbd module (/dev/nbd0 is missing; load it with `modprobe nbd`), or attach via FUSE + loop instead: --via fuse", volume)
	}
	att := &attachment{volume: volume, via: via, auto: auto}
	v, hold, err := a.holdVolume(volume, att.holder())
	if err != nil {
		return nil, volumeError("attach", volume, err)
	}
	att.hold = hold
	switch via {
	case ViaFUSE:
		err = a.attachFUSE(ctx, att, v)
	case ViaNBD:
		att.nbd, err = attach.AttachNBD(a.cfg.NBDSocket, volume)
		if err == nil {
			att.device = att.nbd.Path
		}
	}
	if err != nil {
		hold.Release()
		return nil, fmt.Errorf("cannot attach volume %q via %s: %w", volume, via, err)
	}
	hold.Set(att.holder())
	a.mu.Lock()
	a.atts[volume] = att
	a.mu.Unlock()
	a.log.Info("volume attached", "volume", volume, "via", via, "device", att.device)
	return att, nil
}

// holdVolume holds what an attachment serves: a replicated volume's
// coordinator, or this node's engine volume.
func (a *Attacher) holdVolume(volume string, h engine.Holder) (bfuse.Volume, volumeHold, error) {
	if f := a.replicated.Load(); f != nil {
		exp, release, handled, err := (*f)(volume)
		if handled {
			if err != nil {
				return nil, nil, err
			}
			v, ok := exp.(bfuse.Volume)
			if !ok {
				release()
				return nil, nil, fmt.Errorf("volume %q cannot be attached here: its export is not a block volume", volume)
			}
			return v, &coordinatorHold{release: release}, nil
		}
	}
	v, hold, err := a.eng.HoldVolume(volume, h)
	if err != nil {
		return nil, nil, err
	}
	return v, hold, nil
}

func (a *Attacher) attachFUSE(ctx context.Context, att *attachment, v bfuse.Volume) error {
	srv, err := a.fuseServer()
	if err != nil {
		return err
	}
	file, err := srv.Add(att.volume, v)
	if err != nil {
		return err
	}
	dev, err := attach.AttachLoop(ctx, file)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), releaseWait)
		srv.Remove(rctx, att.volume)
		cancel()
		return err
	}
	if !attach.LoopDirectIO(dev) {
		a.log.Warn("loop device runs without direct I/O (page cache in front of the FUSE file)", "device", dev)
	}
	att.file, att.device = file, dev
	return nil
}

// fuseServer mounts the FUSE filesystem on first use. REQUIRES: ops.
func (a *Attacher) fuseServer() (*bfuse.Server, error) {
	a.mu.Lock()
	srv := a.fuse
	a.mu.Unlock()
	if srv != nil {
		return srv, nil
	}
	if err := os.MkdirAll(a.fuseDir, 0o700); err != nil {
		return nil, err
	}
	srv, err := bfuse.Mount(a.fuseDir, bfuse.Config{Logger: a.log})
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.fuse = srv
	a.mu.Unlock()
	a.log.Info("fuse mounted", "dir", a.fuseDir)
	return srv, nil
}

// Detach detaches an attached volume that has no mounted filesystem.
func (a *Attacher) Detach(ctx context.Context, volume string) error {
	a.ops.Lock()
	defer a.ops.Unlock()
	if err := a.usable(); err != nil {
		return err
	}
	att := a.lookup(volume)
	if att == nil {
		if _, ok := a.pending[volume]; !ok {
			return invalidf("volume %q is not attached", volume)
		}
		// Not restored at start: forgetting the record is the detach.
		a.forgetPending(volume, "")
		if err := a.persist(); err != nil {
			return fmt.Errorf("volume %q: %w; the next start will try to attach it again", volume, err)
		}
		return nil
	}
	if err := a.checkUnused(att); err != nil {
		return err
	}
	if err := a.detach(ctx, att); err != nil {
		return err
	}
	a.forgetPending(volume, "")
	if err := a.persist(); err != nil {
		return fmt.Errorf("volume %q detached, but %w; the next start will attach it again", volume, err)
	}
	return nil
}

// checkUnused refuses to detach a device with a filesystem mounted on it,
// by cairn or by anyone else.
func (a *Attacher) checkUnused(att *attachment) error {
	if len(att.mounts) > 0 {
		return busyf("cannot detach volume %q: it is mounted on %s; unmount it first (cairn host unmount %s %s)",
			att.volume, att.mounts[0].Path, att.volume, att.mounts[0].Path)
	}
	ms, err := attach.MountsOf(att.device)
	if err != nil {
		return err
	}
	if len(ms) > 0 {
		return busyf("cannot detach volume %q: %s is mounted on %s; unmount it first", att.volume, att.device, ms[0].MountPoint)
	}
	return nil
}

// detach tears a device down and forgets the attachment. REQUIRES: ops.
func (a *Attacher) detach(ctx context.Context, att *attachment) error {
	var err error
	switch att.via {
	case ViaFUSE:
		err = a.detachFUSE(ctx, att)
	case ViaNBD:
		if err = att.nbd.Detach(); err == nil {
			att.hold.Release()
		}
	}
	if err != nil {
		return fmt.Errorf("cannot detach volume %q: %w", att.volume, err)
	}
	a.mu.Lock()
	delete(a.atts, att.volume)
	a.mu.Unlock()
	a.log.Info("volume detached", "volume", att.volume, "device", att.device)
	return nil
}

func (a *Attacher) detachFUSE(ctx context.Context, att *attachment) error {
	if err := attach.DetachLoop(ctx, att.device); err != nil {
		return err
	}
	a.mu.Lock()
	srv := a.fuse
	a.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.Background(), releaseWait)
	defer cancel()
	if err := srv.Remove(rctx, att.volume); err != nil {
		// The loop device is gone from the operator's view but something
		// still has it open (autoclear pending). Keep the volume held
		// until the kernel lets go of the file, then release it.
		a.log.Warn("loop device still open after losetup -d; the volume stays held until it is closed", "volume", att.volume, "device", att.device)
		go func() {
			if srv.Remove(context.Background(), att.volume) == nil {
				att.hold.Release()
			}
		}()
		return nil
	}
	att.hold.Release()
	return nil
}

// Mount mounts the filesystem on volume at path, attaching the volume first
// if it is not, and making a filesystem of type fsType ("" = ext4) only when
// the device is blank. It returns the device.
func (a *Attacher) Mount(ctx context.Context, volume, path, fsType string) (string, error) {
	a.ops.Lock()
	defer a.ops.Unlock()
	if err := a.usable(); err != nil {
		return "", err
	}
	if fsType != "" && !slices.Contains(attach.Filesystems, fsType) {
		return "", invalidf("filesystem %q: want ext4 or xfs", fsType)
	}
	real, err := attach.CleanPath(path)
	if err != nil {
		return "", invalidf("cannot mount volume %q: %v", volume, err)
	}
	if mounted, err := attach.IsMountPoint(real); err != nil {
		return "", err
	} else if mounted {
		return "", invalidf("cannot mount volume %q on %s: something is already mounted there", volume, path)
	}
	att := a.lookup(volume)
	if att == nil {
		if att, err = a.attach(ctx, volume, "", true); err != nil {
			return "", err
		}
	}
	fs, err := a.mountOn(ctx, att, real, fsType)
	if err != nil {
		if att.auto && len(att.mounts) == 0 && a.checkUnused(att) == nil {
			if derr := a.detach(ctx, att); derr != nil {
				a.log.Warn("detach after a failed mount", "volume", volume, "err", derr)
			}
		}
		if perr := a.persist(); perr != nil {
			a.log.Warn("record attachments after a failed mount", "err", perr)
		}
		return "", err
	}
	a.addMount(att, mountRecord{Path: real, FS: fs})
	a.forgetPendingMount(volume, real) // mounted now: no longer only recorded
	if err := a.persist(); err != nil {
		// Unrecorded, the mount would silently vanish at the next start:
		// undo it (and the attach, if this mount made it) and say why.
		if uerr := a.unmountAt(ctx, att, len(att.mounts)-1); uerr != nil {
			return "", fmt.Errorf("cannot mount volume %q on %s: %w; unmounting it again failed too: %w", volume, path, err, uerr)
		}
		return "", fmt.Errorf("cannot mount volume %q on %s: %w (it was unmounted again)", volume, path, err)
	}
	a.log.Info("volume mounted", "volume", volume, "device", att.device, "path", real, "fs", fs)
	return att.device, nil
}

func (a *Attacher) addMount(att *attachment, m mountRecord) {
	a.mu.Lock()
	att.mounts = append(att.mounts, m)
	a.mu.Unlock()
	att.hold.Set(att.holder())
}

// mountOn formats a blank device and mounts it. REQUIRES: ops.
func (a *Attacher) mountOn(ctx context.Context, att *attachment, path, want string) (string, error) {
	sig, err := attach.Signature(ctx, att.device)
	if err != nil {
		return "", err
	}
	fs := sig
	switch {
	case sig == "":
		fs = want
		if fs == "" {
			fs = "ext4"
		}
		a.log.Info("device is blank: making a filesystem", "volume", att.volume, "device", att.device, "fs", fs)
		if err := attach.MakeFS(ctx, att.device, fs); err != nil {
			return "", fmt.Errorf("cannot mount volume %q: it is blank, and making an %s filesystem on it failed: %w", att.volume, fs, err)
		}
	case want != "" && sig != want:
		return "", invalidf("cannot mount volume %q as %s: it holds %s (cairn formats only blank volumes); mount it with --fs %s", att.volume, want, sig, sig)
	case !isFilesystem(sig):
		return "", invalidf("cannot mount volume %q: it holds a %s, not a filesystem (cairn formats only blank volumes)", att.volume, sig)
	}
	if err := attach.Mount(att.device, path, fs); err != nil {
		return "", err
	}
	return fs, nil
}

// isFilesystem reports whether a blkid TYPE is a mountable filesystem we
// expect on a volume.
func isFilesystem(t string) bool {
	switch t {
	case "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs":
		return true
	}
	return false
}

// Unmount unmounts a filesystem `host mount` mounted, and detaches the
// volume when `host mount` attached it and nothing else is mounted from it.
func (a *Attacher) Unmount(ctx context.Context, volume, path string) error {
	a.ops.Lock()
	defer a.ops.Unlock()
	if err := a.usable(); err != nil {
		return err
	}
	notMounted := invalidf("volume %q is not mounted on %s", volume, path)
	if a.forgetPendingMount(volume, path) {
		// A volume host mount attached for that mount alone goes too,
		// unless someone mounted it by hand meanwhile.
		if att := a.lookup(volume); att != nil && att.auto && len(att.mounts) == 0 && a.checkUnused(att) == nil {
			if err := a.detach(ctx, att); err != nil {
				return err
			}
		}
		if err := a.persist(); err != nil {
			return fmt.Errorf("volume %q: %w; the next start will try to mount it on %s again", volume, err, path)
		}
		return nil
	}
	att := a.lookup(volume)
	if att == nil {
		return notMounted
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return notMounted
	}
	i := slices.IndexFunc(att.mounts, func(m mountRecord) bool { return m.Path == real })
	if i < 0 {
		return notMounted
	}
	err = a.unmountAt(ctx, att, i)
	if perr := a.persist(); perr != nil {
		err = errors.Join(err, fmt.Errorf("volume %q: %w; the next start will mount it on %s again", volume, perr, real))
	}
	return err
}

// unmountAt unmounts att's i-th filesystem and forgets it, then detaches
// the volume when `host mount` attached it and nothing else is mounted from
// it. REQUIRES: ops.
func (a *Attacher) unmountAt(ctx context.Context, att *attachment, i int) error {
	path := att.mounts[i].Path
	if err := attach.Unmount(path); err != nil {
		if errors.Is(err, attach.ErrBusy) {
			return busyf("cannot unmount volume %q from %s: the filesystem is busy (files open or a process working in it)", att.volume, path)
		}
		return err
	}
	a.mu.Lock()
	att.mounts = slices.Delete(att.mounts, i, i+1)
	a.mu.Unlock()
	att.hold.Set(att.holder())
	a.log.Info("volume unmounted", "volume", att.volume, "path", path)
	if att.auto && len(att.mounts) == 0 {
		if err := a.checkUnused(att); err != nil {
			a.log.Info("volume stays attached", "volume", att.volume, "reason", err)
		} else if err := a.detach(ctx, att); err != nil {
			return err
		}
	}
	return nil
}

// persist publishes attachments.json. Callers that changed what is attached
// or mounted undo the change or report it when this fails: an unrecorded
// change is lost at the next start. REQUIRES: ops.
func (a *Attacher) persist() error {
	a.mu.Lock()
	recs := make([]attachRecord, 0, len(a.atts)+len(a.pending))
	for _, att := range a.atts {
		rec := attachRecord{Volume: att.volume, Via: att.via, Auto: att.auto, Mounts: slices.Clone(att.mounts)}
		rec.Mounts = append(rec.Mounts, a.pending[att.volume].Mounts...)
		recs = append(recs, rec)
	}
	for volume, rec := range a.pending {
		if a.atts[volume] == nil {
			recs = append(recs, rec)
		}
	}
	a.mu.Unlock()
	sort.Slice(recs, func(i, j int) bool { return recs[i].Volume < recs[j].Volume })
	if err := writeJSON(a.statePath, recs); err != nil {
		return fmt.Errorf("cannot record the attachments: %w", err)
	}
	return nil
}

// writeJSON publishes v as indented JSON at path (internal/atomicfile).
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}

// Restore cleans up after a daemon that died without shutting down (dead
// FUSE mount, loop devices on it and filesystems on those), then attaches
// and mounts again what attachments.json lists. What cannot be restored is
// logged, reported in RestoreState and kept in the list (a.pending) for the
// next start; it never stops the daemon. The node is ready (RestoreState().Done) once Restore returns.
func (a *Attacher) Restore(ctx context.Context) {
	a.ops.Lock()
	defer a.ops.Unlock()
	defer a.restoreEnd()
	// Read the list first, so that status counts what is to restore from
	// the start.
	raw, err := os.ReadFile(a.statePath)
	var recs []attachRecord
	if err == nil {
		err = json.Unmarshal(raw, &recs)
	}
	a.restoreBegin(len(recs))
	a.cleanStale(ctx)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		// Kept aside for the operator: the next change rewrites the list.
		aside := a.statePath + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
		if rerr := os.Rename(a.statePath, aside); rerr != nil {
			aside = a.statePath
		}
		a.log.Error("cannot read the attachment list; nothing restored", "path", aside, "err", err)
		a.restoreFailed("", "", fmt.Errorf("cannot read the attachment list (kept as %s): %w", aside, err))
		return
	}
	if a.cfg.BeforeRestore != nil {
		a.cfg.BeforeRestore(ctx)
	}
	for _, r := range recs {
		att, err := a.attach(ctx, r.Volume, r.Via, r.Auto)
		if err != nil {
			a.log.Error("cannot attach a volume again after restart; kept for the next start (host detach forgets it)", "volume", r.Volume, "via", r.Via, "err", err)
			a.restoreFailed(r.Volume, "", err)
			a.pending[r.Volume] = r
			a.restoreNext()
			continue
		}
		for _, m := range r.Mounts {
			if err := a.remount(ctx, att, m); err != nil {
				a.log.Error("cannot mount a volume again after restart; kept for the next start (host unmount forgets it)", "volume", r.Volume, "path", m.Path, "err", err)
				a.restoreFailed(r.Volume, m.Path, err)
				p := a.pending[r.Volume]
				p.Volume, p.Via, p.Auto = r.Volume, r.Via, r.Auto
				p.Mounts = append(p.Mounts, m)
				a.pending[r.Volume] = p
				continue
			}
			a.addMount(att, m)
			a.log.Info("volume mounted again", "volume", r.Volume, "device", att.device, "path", m.Path)
		}
		a.restoreNext()
	}
	if err := a.persist(); err != nil {
		a.log.Error("the attachments are restored but their record is not updated", "err", err)
	}
}

// ForgetDeleted drops what attachments.json still records of a deleted
// volume (a record a restart could not restore). A deleted volume is never
// attached, so nothing else is to be done.
func (a *Attacher) ForgetDeleted(volume string) {
	a.ops.Lock()
	defer a.ops.Unlock()
	if _, ok := a.pending[volume]; !ok {
		return
	}
	a.forgetPending(volume, "")
	if err := a.persist(); err != nil {
		a.log.Error("a deleted volume stays in the attachment record; the next start will report it", "volume", volume, "err", err)
	}
}

// forgetPendingMount forgets a mount that Restore could not bring back, if
// path (as given, or with its symlinks resolved) is one; a record left with
// no mount that existed only for its mounts (auto) goes too. REQUIRES: ops.
func (a *Attacher) forgetPendingMount(volume, path string) bool {
	p, ok := a.pending[volume]
	if !ok {
		return false
	}
	paths := []string{filepath.Clean(path)}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		paths = append(paths, real)
	}
	i := slices.IndexFunc(p.Mounts, func(m mountRecord) bool { return slices.Contains(paths, m.Path) })
	if i < 0 {
		return false
	}
	a.forgetPending(volume, p.Mounts[i].Path)
	return true
}

// forgetPending drops what Restore could not bring back for volume: one
// mount (path), or the whole record (path ""), and its restore error, so
// status stops reporting what the operator has let go. REQUIRES: ops.
func (a *Attacher) forgetPending(volume, path string) {
	p := a.pending[volume]
	p.Mounts = slices.DeleteFunc(p.Mounts, func(m mountRecord) bool { return path == "" || m.Path == path })
	if path == "" || (len(p.Mounts) == 0 && (p.Auto || a.lookup(volume) != nil)) {
		delete(a.pending, volume)
	} else {
		a.pending[volume] = p
	}
	a.clearRestoreErrors(func(e RestoreError) bool { return e.Volume == volume && (path == "" || e.Path == path) })
}

// clearRestoreErrors drops the restore errors that no longer hold.
func (a *Attacher) clearRestoreErrors(gone func(RestoreError) bool) {
	a.mu.Lock()
	a.restore.Errors = slices.DeleteFunc(a.restore.Errors, gone)
	a.mu.Unlock()
}

// remount mounts a recorded filesystem again: never a mkfs here.
func (a *Attacher) remount(ctx context.Context, att *attachment, m mountRecord) error {
	real, err := attach.CleanPath(m.Path)
	if err != nil {
		return err
	}
	if mounted, err := attach.IsMountPoint(real); err != nil {
		return err
	} else if mounted {
		return fmt.Errorf("%s is already a mount point", real)
	}
	sig, err := attach.Signature(ctx, att.device)
	if err != nil {
		return err
	}
	if sig != m.FS {
		return fmt.Errorf("device %s holds %q, expected %s", att.device, sig, m.FS)
	}
	return attach.Mount(att.device, real, m.FS)
}

// cleanStale removes what a killed daemon left: filesystems on loop devices
// backed by the dead FUSE mount (synced where possible, detached lazily),
// those loop devices, and the FUSE mount itself. REQUIRES: ops.
func (a *Attacher) cleanStale(ctx context.Context) {
	loops, err := attach.LoopsUnder(a.fuseDir)
	if err != nil {
		a.log.Warn("cannot list loop devices", "err", err)
	}
	for _, l := range loops {
		ms, _ := attach.MountsOf(l.Dev)
		for _, m := range ms {
			a.log.Warn("detaching a filesystem left by a previous daemon", "device", l.Dev, "path", m.MountPoint)
			if err := attach.SyncAndDetach(m.MountPoint); err != nil {
				a.log.Warn("stale mount", "err", err)
			}
		}
		a.log.Warn("detaching a loop device left by a previous daemon", "device", l.Dev, "file", l.Backing)
		if err := attach.DetachLoop(ctx, l.Dev); err != nil {
			a.log.Warn("stale loop device", "err", err)
		}
	}
	if mounted, _ := attach.IsMountPoint(a.fuseDir); mounted {
		a.log.Warn("unmounting the FUSE mount left by a previous daemon", "dir", a.fuseDir)
		if err := unix.Unmount(a.fuseDir, unix.MNT_DETACH); err != nil {
			a.log.Warn("stale fuse mount", "err", err)
		}
	}
}

// Shutdown unmounts every filesystem `host mount` mounted, detaches every
// device and unmounts the FUSE filesystem, so that nothing on the host is
// left depending on a daemon that is gone. attachments.json is kept: the
// next start attaches and mounts the same volumes again. A filesystem still
// busy after busyUnmountGrace is synced and detached lazily (its open files
// see I/O errors from then on) — stopping never hangs on a user's shell.
func (a *Attacher) Shutdown() error {
	a.ops.Lock()
	defer a.ops.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	a.mu.Lock()
	atts := make([]*attachment, 0, len(a.atts))
	for _, att := range a.atts {
		atts = append(atts, att)
	}
	srv := a.fuse
	a.mu.Unlock()
	var errs []error
	for _, att := range atts {
		for _, m := range att.mounts {
			unmountForShutdown(a.log, att, m.Path)
		}
		ctx, cancel := context.WithTimeout(context.Background(), releaseWait)
		if err := a.detach(ctx, att); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	if srv != nil {
		if err := srv.Unmount(); err != nil {
			a.log.Warn("fuse unmount failed; detaching it lazily", "err", err)
			if err := unix.Unmount(a.fuseDir, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("fuse: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

func unmountForShutdown(log *slog.Logger, att *attachment, path string) {
	deadline := time.Now().Add(busyUnmountGrace)
	for {
		err := attach.Unmount(path)
		if err == nil {
			log.Info("unmounted for shutdown", "volume", att.volume, "path", path)
			return
		}
		if !errors.Is(err, attach.ErrBusy) || time.Now().After(deadline) {
			log.Warn("filesystem busy at shutdown: synced and detached lazily; its open files now fail", "volume", att.volume, "path", path, "err", err)
			if err := attach.SyncAndDetach(path); err != nil {
				log.Error("lazy unmount", "err", err)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
