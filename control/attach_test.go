package control

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/blockdev/attach"
	"github.com/cairn-storage/cairn/blockdev/attach/attachtest"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/testenv"
)

// hostAPI is the API with the host routes, in-process, on real kernel
// objects (FUSE mount, loop devices, ext4).
type hostAPI struct {
	c       *Client
	e       *engine.Engine
	a       *Attacher
	x       *Exports
	dataDir string
}

// newHostTestAPI serves the API with an Attacher and the NBD catalogue. It
// skips without root or /dev/fuse. Everything the test leaves on the host
// (mounts under dirs, loop devices on the FUSE files, the FUSE mount) is
// removed when it ends, pass or fail.
func newHostTestAPI(t *testing.T, dirs ...string) *hostAPI {
	t.Helper()
	testenv.RequireRoot(t, "host operations: FUSE mount, loop devices, mount")
	testenv.RequireFUSE(t)
	for _, tool := range []string{"losetup", "blkid", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run `make deps`", tool)
		}
	}
	h := &hostAPI{}
	h.c, h.e, h.dataDir = serveTestAPI(t, func(srv *Server, e *engine.Engine, dataDir string) {
		attachtest.Cleanup(t, filepath.Join(dataDir, "fuse"), append(dirs, dataDir)...)
		h.a = NewAttacher(e, AttachConfig{DataDir: dataDir, NodeID: e.Status().NodeID})
		h.a.Restore(context.Background()) // nothing to restore: the node is ready
		t.Cleanup(func() {
			if err := h.a.Shutdown(); err != nil {
				t.Errorf("attacher shutdown: %v", err)
			}
		})
		srv.SetAttacher(h.a)
	})
	h.x = NewExports(h.e)
	return h
}

// loops lists the loop devices on the attacher's FUSE files.
func (h *hostAPI) loops(t *testing.T) []attach.Loop {
	t.Helper()
	loops, err := attach.LoopsUnder(filepath.Join(h.dataDir, "fuse"))
	if err != nil {
		t.Fatal(err)
	}
	return loops
}

// TestAttachUnrecordedIsUndone: an attach or a mount whose record in
// attachments.json cannot be written fails, and leaves nothing attached or
// mounted — else the next start would silently not restore it.
func TestAttachUnrecordedIsUndone(t *testing.T) {
	mnt := t.TempDir()
	h := newHostTestAPI(t, mnt)
	ctx := context.Background()
	if _, err := h.c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	// A non-empty directory where attachments.json goes: it cannot be replaced.
	state := filepath.Join(h.dataDir, attachStateFile)
	if err := os.MkdirAll(filepath.Join(state, "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	nothingLeft := func(op string) {
		t.Helper()
		if v, err := h.c.Volume(ctx, "v"); err != nil || v.Device != "" {
			t.Errorf("after the failed %s: volume %+v, %v; want it not attached", op, v, err)
		}
		if loops := h.loops(t); len(loops) != 0 {
			t.Errorf("after the failed %s: loop devices %v", op, loops)
		}
		if ok, err := attach.IsMountPoint(mnt); err != nil || ok {
			t.Errorf("after the failed %s: %s is mounted (%v)", op, mnt, err)
		}
	}
	if _, err := h.c.Attach(ctx, "v", AttachRequest{Via: ViaFUSE}); err == nil || !strings.Contains(err.Error(), "cannot record the attachments") {
		t.Errorf("attach with an unwritable record: %v, want an error saying it cannot be recorded", err)
	}
	nothingLeft("attach")
	if _, err := h.c.Mount(ctx, "v", MountRequest{Path: mnt}); err == nil || !strings.Contains(err.Error(), "cannot record the attachments") {
		t.Errorf("mount with an unwritable record: %v, want an error saying it cannot be recorded", err)
	}
	nothingLeft("mount")
	// Nothing holds the volume: it can be deleted.
	if err := h.c.DeleteVolume(ctx, "v"); err != nil {
		t.Errorf("delete after the failed attach and mount: %v", err)
	}
	if _, err := h.c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}

	// With the record writable again, attach and mount work and are recorded.
	if err := os.RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.Mount(ctx, "v", MountRequest{Path: mnt}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(state); err != nil || !strings.Contains(string(b), mnt) {
		t.Errorf("attachments.json after a mount: %q, %v", b, err)
	}
	if _, err := h.c.Unmount(ctx, "v", UnmountRequest{Path: mnt}); err != nil {
		t.Fatal(err)
	}
	nothingLeft("unmount")
}

// TestInUseRefusals: delete, delete --force and restore are refused while
// the volume is attached, mounted or has NBD clients — each refusal naming
// the holder and what to do — and allowed once it is released.
func TestInUseRefusals(t *testing.T) {
	mnt := t.TempDir()
	h := newHostTestAPI(t, mnt)
	ctx := context.Background()
	if _, err := h.c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.CreateSnapshot(ctx, "v", "v.s"); err != nil {
		t.Fatal(err)
	}
	refused := func(holder string, want ...string) {
		t.Helper()
		for op, err := range map[string]error{
			"delete":         h.c.DeleteVolume(ctx, "v"),
			"delete --force": func() error { _, err := h.c.DeleteVolumeForce(ctx, "v"); return err }(),
			"restore":        func() error { _, err := h.c.RestoreVolume(ctx, "v", "v.s"); return err }(),
		} {
			if !errors.Is(err, engine.ErrBusy) {
				t.Errorf("%s while %s: %v, want busy", op, holder, err)
				continue
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s while %s: %q does not say %q", op, holder, err, w)
				}
			}
			if holder == "mounted" && strings.Contains(err.Error(), "host detach") {
				t.Errorf("%s while mounted suggests host detach, which is refused while mounted: %q", op, err)
			}
		}
	}

	dev, err := h.a.Attach(ctx, "v", ViaFUSE)
	if err != nil {
		t.Fatal(err)
	}
	refused("attached", "is in use: attached as "+dev, "cairn host detach v")
	if _, err := h.c.Detach(ctx, "v"); err != nil {
		t.Fatal(err)
	}

	if _, err := h.c.Mount(ctx, "v", MountRequest{Path: mnt}); err != nil {
		t.Fatal(err)
	}
	refused("mounted", "mounted on "+mnt, "cairn host unmount v "+mnt)
	if _, err := h.c.Unmount(ctx, "v", UnmountRequest{Path: mnt}); err != nil {
		t.Fatal(err)
	}

	_, release1, err := h.x.OpenExport("v")
	if err != nil {
		t.Fatal(err)
	}
	_, release2, err := h.x.OpenExport("v")
	if err != nil {
		t.Fatal(err)
	}
	refused("held by NBD clients", "2 NBD clients connected", "disconnect its NBD clients")
	release1()
	release2()

	// A snapshot in use stops delete --force before anything is deleted.
	_, releaseSnap, err := h.x.OpenExport("v.s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.DeleteVolumeForce(ctx, "v"); !errors.Is(err, engine.ErrBusy) || !strings.Contains(err.Error(), `v.s is in use: 1 NBD client connected`) {
		t.Errorf("delete --force with a client on its snapshot: %v", err)
	}
	if err := h.c.DeleteSnapshot(ctx, "v.s"); !errors.Is(err, engine.ErrBusy) || !strings.Contains(err.Error(), "1 NBD client connected") {
		t.Errorf("snapshot delete with a client: %v", err)
	}
	releaseSnap()

	if _, err := h.c.RestoreVolume(ctx, "v", "v.s"); err != nil {
		t.Errorf("restore after every holder left: %v", err)
	}
	if _, err := h.c.DeleteVolumeForce(ctx, "v"); err != nil {
		t.Errorf("delete --force after every holder left: %v", err)
	}
}

// TestHostByID: the host verbs take a volume's id as well as its name, and
// both name the same attachment.
func TestHostByID(t *testing.T) {
	mnt := t.TempDir()
	h := newHostTestAPI(t, mnt)
	ctx := context.Background()
	v, err := h.c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	att, err := h.c.Attach(ctx, v.ID, AttachRequest{Via: ViaFUSE})
	if err != nil || att.Name != "v" || att.Device == "" {
		t.Fatalf("attach by id: %+v, %v", att, err)
	}
	if again, err := h.c.Attach(ctx, "v", AttachRequest{}); err != nil || again.Device != att.Device {
		t.Fatalf("attach by name after attach by id: %+v, %v; want the same device %s", again, err, att.Device)
	}
	if _, err := h.c.Detach(ctx, v.ID); err != nil {
		t.Fatalf("detach by id: %v", err)
	}
	if _, err := h.c.Mount(ctx, v.ID, MountRequest{Path: mnt}); err != nil {
		t.Fatalf("mount by id: %v", err)
	}
	if got, err := h.c.Volume(ctx, "v"); err != nil || got.Device == "" {
		t.Fatalf("inspect by name after mount by id: %+v, %v", got, err)
	}
	if _, err := h.c.Unmount(ctx, v.ID, UnmountRequest{Path: mnt}); err != nil {
		t.Fatalf("unmount by id: %v", err)
	}
	if loops := h.loops(t); len(loops) != 0 {
		t.Fatalf("loop devices after unmount by id: %v", loops)
	}
}

// TestMountWithoutMkfs: `host mount` of a blank volume on a host without
// the filesystem's mkfs says which Debian package to install, and leaves
// nothing attached.
func TestMountWithoutMkfs(t *testing.T) {
	mnt := t.TempDir()
	h := newHostTestAPI(t, mnt)
	ctx := context.Background()
	if _, err := h.c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	// A PATH with the tools of an attach (and fusermount, if any) but no mkfs.
	bin := t.TempDir()
	for _, tool := range []string{"losetup", "blkid", "fusermount3", "fusermount"} {
		if p, err := exec.LookPath(tool); err == nil {
			if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("PATH", bin)
	for fs, pkg := range map[string]string{"xfs": "xfsprogs", "ext4": "e2fsprogs"} {
		_, err := h.c.Mount(ctx, "v", MountRequest{Path: mnt, FS: fs})
		if err == nil || !strings.Contains(err.Error(), "mkfs."+fs+" is not installed") || !strings.Contains(err.Error(), "apt-get install "+pkg) {
			t.Errorf("mount --fs %s without mkfs.%s: %v, want it to name the package %s", fs, fs, err, pkg)
		}
		if v, err := h.c.Volume(ctx, "v"); err != nil || v.Device != "" {
			t.Errorf("after the failed mount --fs %s: %+v, %v; want it not attached", fs, v, err)
		}
	}
	if loops := h.loops(t); len(loops) != 0 {
		t.Errorf("loop devices after the failed mounts: %v", loops)
	}
}
