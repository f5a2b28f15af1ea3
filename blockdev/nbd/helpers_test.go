package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/testenv"
)

// *engine.Volume is what the daemon serves.
var _ Export = (*engine.Volume)(nil)

// engineExports serves the volumes of one engine, plus optional wrapped
// exports (e.g. read-only views) by name.
type engineExports struct {
	e     *engine.Engine
	mu    sync.Mutex
	extra map[string]Export
}

func (x *engineExports) OpenExport(name string) (Export, func(), error) {
	x.mu.Lock()
	exp, ok := x.extra[name]
	x.mu.Unlock()
	if ok {
		return exp, func() {}, nil
	}
	v, h, err := x.e.HoldVolume(name, engine.Holder{Kind: engine.HeldByNBD})
	if err != nil {
		return nil, nil, err
	}
	return v, h.Release, nil
}

func (x *engineExports) ExportNames() []string {
	var names []string
	for _, v := range x.e.Volumes() {
		names = append(names, v.Name)
	}
	x.mu.Lock()
	for n := range x.extra {
		names = append(names, n)
	}
	x.mu.Unlock()
	return names
}

// readOnlyExport is a read-only view of another export.
type readOnlyExport struct{ Export }

func (readOnlyExport) ReadOnly() bool { return true }
func (readOnlyExport) WriteAt([]byte, int64, bool) error {
	return fmt.Errorf("%w: test view", engine.ErrReadOnly)
}

// testEnv is one engine, one server, one unix socket.
type testEnv struct {
	t    *testing.T
	eng  *engine.Engine
	exps *engineExports
	srv  *Server
	sock string
	dir  string
	logs *testWriter
}

// newEnv opens an engine on a sparse 4 GiB file drive in a temp dir and
// serves it on a unix socket. Everything is torn down by t.Cleanup.
func newEnv(t *testing.T) *testEnv {
	t.Helper()
	dir := t.TempDir()
	drive := filepath.Join(dir, "drive0")
	f, err := os.Create(drive)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(drive, 4<<30); err != nil {
		t.Fatal(err)
	}
	eng, err := engine.Open(engine.Options{NodeID: "test", Drives: []engine.DriveSpec{{Path: drive}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })

	l, sock := listenUnix(t)
	exps := &engineExports{e: eng, extra: map[string]Export{}}
	tw := &testWriter{t: t}
	log := slog.New(slog.NewTextHandler(tw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv := NewServer(exps, Config{Logger: log})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return &testEnv{t: t, eng: eng, exps: exps, srv: srv, sock: sock, dir: dir, logs: tw}
}

// volume creates a volume and returns its NBD URI.
func (e *testEnv) volume(name string, size int64) string {
	e.t.Helper()
	if _, err := e.eng.CreateVolume(engine.VolumeSpec{Name: name, Size: size}); err != nil {
		e.t.Fatal(err)
	}
	return e.uri(name)
}

func (e *testEnv) uri(name string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, e.sock)
}

// testWriter sends server logs to t.Log (dropping them once the test
// ended) and counts warnings.
type testWriter struct {
	t        *testing.T
	warnings atomic.Int64
}

func (w *testWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("level=WARN")) {
		w.warnings.Add(1)
	}
	defer func() { recover() }() // logging after the test finished panics
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// needTool skips the test when a client binary is missing (fails it in
// CI, where `make deps` installed all of them).
func needTool(t *testing.T, name string) string {
	t.Helper()
	return testenv.RequireTool(t, name)
}

// run runs a client to completion with a deadline and returns its output;
// the process is killed when the test ends, even on failure.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	path := needTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v: %w", name, timeout, err)
	}
	return string(out), err
}

func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// The server shares the flushes of an engine volume (conn.shareFlush).
var _ SharedFlusher = (*engine.Volume)(nil)
