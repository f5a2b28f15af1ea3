package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// TestStatusStartingUntilRestored: with an Attacher, the node is starting
// until Restore has finished: status says so (with what is left), changes
// are refused with ErrStarting (503), reads are served. An attachment that
// cannot be restored does not keep it starting: it is listed in status,
// which says degraded.
func TestStatusStartingUntilRestored(t *testing.T) {
	ctx := context.Background()
	var c *Client
	checkStarting := func(wantRestoring int) {
		t.Helper()
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != StatusStarting || st.Restoring != wantRestoring {
			t.Errorf("status %q restoring %d, want %q restoring %d", st.Status, st.Restoring, StatusStarting, wantRestoring)
		}
		if err := st.Ready(); !errors.Is(err, ErrStarting) {
			t.Errorf("Ready() = %v, want ErrStarting", err)
		}
		_, err = c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 1 << 20})
		var apiErr *APIError
		if !errors.Is(err, ErrStarting) || !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("create while starting: %v, want 503 ErrStarting", err)
		}
		if _, err := c.Volumes(ctx); err != nil {
			t.Errorf("list while starting: %v", err)
		}
	}
	var hookRan bool
	var a *Attacher
	c, _, _ = serveTestAPI(t, func(srv *Server, e *engine.Engine, dir string) {
		// The previous run had a volume attached that is gone now.
		if err := os.WriteFile(filepath.Join(dir, attachStateFile), []byte(`[{"volume": "gone", "via": "fuse"}]`), 0o600); err != nil {
			t.Fatal(err)
		}
		a = NewAttacher(e, AttachConfig{DataDir: dir, BeforeRestore: func(context.Context) {
			hookRan = true
			checkStarting(1)
		}})
		srv.SetAttacher(a)
	})

	checkStarting(0) // before Restore has read the list
	a.Restore(ctx)
	if !hookRan {
		t.Fatal("Restore did not run BeforeRestore")
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Ready(); err != nil {
		t.Errorf("Ready() after Restore = %v", err)
	}
	if st.Status != "degraded" || st.Restoring != 0 || len(st.RestoreErrors) != 1 || st.RestoreErrors[0].Volume != "gone" ||
		st.RestoreErrors[0].Path != "" || st.RestoreErrors[0].Error == "" {
		t.Errorf("status after a failed restore: %+v", st)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 1 << 20}); err != nil {
		t.Errorf("create once ready: %v", err)
	}
}
