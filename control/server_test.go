package control

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
)

// newTestAPI serves the API over a real engine on a sparse 1 GiB file.
func newTestAPI(t *testing.T) (*Client, *engine.Engine, *Metrics) {
	t.Helper()
	dir := t.TempDir()
	drivePath := filepath.Join(dir, "drive.img")
	f, err := os.Create(drivePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	node, err := OpenNode(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	metrics := NewMetrics()
	e, err := engine.Open(engine.Options{NodeID: node.ID(), Drives: []engine.DriveSpec{{Path: drivePath}}, Observer: metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	metrics.CollectStorage(e)
	srv := httptest.NewServer(NewServer(e, node, metrics, nil).Handler())
	t.Cleanup(srv.Close)
	return NewClient(srv.URL), e, metrics
}

func ptr[T any](v T) *T { return &v }

func TestAPIErrors(t *testing.T) {
	c, _, _ := newTestAPI(t)
	ctx := context.Background()
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "a", Size: 1 << 20, Sticky: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "b", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		call     func() error
		status   int
		sentinel error
		message  string
	}{
		{"zero size", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x"})
			return err
		}, 400, engine.ErrInvalid, "size 0: must be greater than zero"},
		{"unaligned size", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x", Size: 1000})
			return err
		}, 400, engine.ErrInvalid, "size 1000 bytes: must be a multiple of 4K"},
		{"size beyond the limit", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x", Size: 100 << 50})
			return err
		}, 400, engine.ErrInvalid, `cannot create volume "x": size 100P: must be at most 64T`},
		{"grow beyond the limit", func() error {
			_, err := c.UpdateVolume(ctx, "b", UpdateVolumeRequest{Size: ptr(int64(100 << 50))})
			return err
		}, 400, engine.ErrInvalid, `cannot update volume "b": size 100P: must be at most 64T`},
		{"leading dot", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: ".x", Size: 1 << 20})
			return err
		}, 400, engine.ErrInvalid, `volume name ".x": use 1 to 229 letters`},
		{"name of 256 bytes", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: strings.Repeat("n", 256), Size: 1 << 20})
			return err
		}, 400, engine.ErrInvalid, "use 1 to 229 letters"},
		{"snap_interval beyond a year", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x", Size: 1 << 20, SnapInterval: 1 << 32})
			return err
		}, 400, engine.ErrInvalid, "snap_interval 4294967296"},
		{"repl 4", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x", Size: 1 << 20, Repl: 4})
			return err
		}, 400, engine.ErrInvalid, "repl 4: must be 1, 2 or 3"},
		{"repl 2 on one node", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x", Size: 1 << 20, Repl: 2})
			return err
		}, 400, engine.ErrInvalid, "repl 2 needs 2 nodes; this node has not joined its cluster"},
		{"io_priority", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x", Size: 1 << 20, IOPriority: "HIGH!"})
			return err
		}, 400, engine.ErrInvalid, "io_priority"},
		{"bad name", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "../etc", Size: 1 << 20})
			return err
		}, 400, engine.ErrInvalid, "volume name"},
		{"duplicate", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "a", Size: 1 << 20})
			return err
		}, 409, engine.ErrExists, `volume "a" already exists`},
		{"too big for the pool", func() error {
			// Thin: size is only a limit, so this is accepted or refused
			// by the engine's own rule; either way it must not be a 500.
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "huge", Size: 1 << 50})
			if err == nil {
				return &APIError{StatusCode: 0}
			}
			return err
		}, -1, nil, ""},
		{"unknown volume", func() error {
			_, err := c.Volume(ctx, "nope")
			return err
		}, 404, engine.ErrNotFound, `volume "nope" not found`},
		{"delete unknown", func() error { return c.DeleteVolume(ctx, "nope") }, 404, engine.ErrNotFound, "not found"},
		{"delete sticky", func() error { return c.DeleteVolume(ctx, "a") }, 409, engine.ErrSticky, "sticky volume: turn sticky off first"},
		{"shrink", func() error {
			_, err := c.UpdateVolume(ctx, "b", UpdateVolumeRequest{Size: ptr(int64(4096))})
			return err
		}, 409, engine.ErrShrink, "can only grow"},
		{"negative snap_interval", func() error {
			_, err := c.UpdateVolume(ctx, "b", UpdateVolumeRequest{SnapInterval: ptr(-1)})
			return err
		}, 400, engine.ErrInvalid, "snap_interval -1"},
		{"add missing drive", func() error {
			_, err := c.AddDrive(ctx, AddDriveRequest{Path: "/nonexistent/drive"})
			return err
		}, -1, nil, "/nonexistent/drive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("want an *APIError, got %v", err)
			}
			if tc.status == -1 {
				if apiErr.StatusCode >= 500 && apiErr.Code == "internal" {
					t.Errorf("unclassified server error: %v", err)
				}
			} else if apiErr.StatusCode != tc.status {
				t.Errorf("status = %d, want %d (%v)", apiErr.StatusCode, tc.status, err)
			}
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.sentinel)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("message %q does not contain %q", err, tc.message)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("message is more than one line: %q", err)
			}
		})
	}
	// Nothing was changed by the failures.
	vols, err := c.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range vols {
		if v.Name != "huge" {
			names = append(names, v.Name)
		}
	}
	if strings.Join(names, ",") != "a,b" {
		t.Errorf("volumes after failed calls = %v, want a,b", names)
	}
}

// TestAPINamesAsTheEngineAllows checks that the API takes every name the
// engine's rule allows (the API once had its own rule: 128 bytes), and that
// the longest volume name still gets a default snapshot name.
func TestAPINamesAsTheEngineAllows(t *testing.T) {
	c, _, _ := newTestAPI(t)
	ctx := context.Background()
	long := strings.Repeat("v", engine.MaxVolumeNameLen)
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: long, Size: 1 << 20, IOPriority: "LOW"}); err != nil {
		t.Fatalf("create with a %d-byte name: %v", len(long), err)
	}
	snap := strings.Repeat("s", engine.MaxNameLen)
	if _, err := c.CreateSnapshot(ctx, long, snap); err != nil {
		t.Fatalf("snapshot with a %d-byte name: %v", len(snap), err)
	}
	if _, err := c.CreateSnapshot(ctx, long, ""); err != nil {
		t.Fatalf("default-named snapshot of a %d-byte volume name: %v", len(long), err)
	}
	if _, err := c.CloneVolume(ctx, snap, "c"+long[1:]); err != nil {
		t.Fatalf("clone with a %d-byte name: %v", len(long), err)
	}
}

func TestAPIRejectsUnknownFieldsAndRoutes(t *testing.T) {
	c, _, _ := newTestAPI(t)
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/v1/volumes", `{"name":"x","size":4096,"szie":1}`, 400},
		{"POST", "/v1/volumes", `not json`, 400},
		{"POST", "/v1/volumes", ``, 400},
		{"GET", "/v1/nothing", ``, 404},
		{"PUT", "/v1/volumes/x", `{}`, 405},
	} {
		req, _ := http.NewRequest(tc.method, c.base+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s %q: status %d, want %d", tc.method, tc.path, tc.body, resp.StatusCode, tc.status)
		}
	}
}

func TestClientDaemonUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close() // nothing listens there now
	_, err := NewClient(addr).Status(context.Background())
	if !errors.Is(err, ErrDaemonUnreachable) {
		t.Fatalf("want ErrDaemonUnreachable, got %v", err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("message %q does not name the address", err)
	}
}

func TestMetrics(t *testing.T) {
	c, e, m := newTestAPI(t)
	ctx := context.Background()
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "m", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := e.Volume("m")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	if err := v.WriteAt(buf, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	text, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`cairn_volume_ops_total{op="write",volume="m"} 1`,
		`cairn_volume_bytes_total{op="write",volume="m"} 8192`,
		`cairn_volume_ops_total{op="read",volume="m"} 1`,
		`cairn_volume_op_duration_seconds_count{op="read",volume="m"} 1`,
		`cairn_pool_size_bytes{io_priority=`,
		`cairn_drive_size_bytes{path=`,
		`cairn_volume_size_bytes{volume="m"} 1.048576e+06`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics: missing %q", want)
		}
	}

	// The hot path allocates nothing once a volume's handles exist.
	allocs := testing.AllocsPerRun(1000, func() {
		m.ObserveIO("m", engine.OpWrite, 4096, time.Microsecond, nil)
	})
	if allocs != 0 {
		t.Errorf("ObserveIO allocates %v times per call, want 0", allocs)
	}

	if err := c.DeleteVolume(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	text, _ = c.Metrics(ctx)
	if strings.Contains(text, `volume="m"`) {
		t.Errorf("/metrics still has series of deleted volume m")
	}
}

func BenchmarkObserveIO(b *testing.B) {
	m := NewMetrics()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveIO("vol", engine.OpWrite, 4096, 20*time.Microsecond, nil)
		}
	})
}
