// Package s3test runs a real S3 server for tests: versitygw (installed by
// `make deps` into $(go env GOPATH)/bin) with its posix backend in a test's
// temporary directory, on a loopback port. The server is stopped in
// t.Cleanup, whatever the test's outcome. Without versitygw a test is
// skipped, or fails under CI=true (internal/testenv).
package s3test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/internal/testenv"
)

// Root user of every test server.
const (
	AccessKey = "cairntest"
	SecretKey = "cairntest-secret-key"
)

// Server is one versitygw.
type Server struct {
	t        testing.TB
	bin      string
	Dir      string // the posix backend's root: one directory per bucket
	Addr     string // 127.0.0.1:PORT
	readOnly bool

	mu  sync.Mutex
	cmd *exec.Cmd
	log *os.File
}

// Endpoint is the server's URL.
func (s *Server) Endpoint() string { return "http://" + s.Addr }

// Binary finds versitygw: on PATH, else in GOPATH/bin.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	var dirs []string
	if gp := os.Getenv("GOPATH"); gp != "" {
		dirs = append(dirs, strings.Split(gp, string(os.PathListSeparator))...)
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("/usr/local/go/bin/go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testenv.Unavailable(t, "versitygw is not installed (run `make deps`)")
	return ""
}

// Start runs a server with the given buckets created (directories of the
// posix backend).
func Start(t testing.TB, buckets ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), Dir: t.TempDir()}
	for _, b := range buckets {
		if err := os.Mkdir(filepath.Join(s.Dir, b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.Addr = freeAddr(t)
	t.Cleanup(s.Stop)
	s.start()
	return s
}

// StartReadOnly runs a server that refuses every write.
func StartReadOnly(t testing.TB, buckets ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), Dir: t.TempDir(), readOnly: true}
	for _, b := range buckets {
		if err := os.Mkdir(filepath.Join(s.Dir, b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.Addr = freeAddr(t)
	t.Cleanup(s.Stop)
	s.start()
	return s
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func (s *Server) start() {
	s.t.Helper()
	args := []string{"--port", s.Addr, "--access", AccessKey, "--secret", SecretKey, "--quiet", "--health", "/health"}
	if s.readOnly {
		args = append(args, "--readonly")
	}
	args = append(args, "posix", s.Dir)
	log, err := os.CreateTemp("", "versitygw-*.log")
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		s.t.Fatalf("start versitygw: %v", err)
	}
	s.mu.Lock()
	s.cmd, s.log = cmd, log
	s.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.Endpoint() + "/health")
		if err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, _ := os.ReadFile(log.Name())
	s.Stop()
	s.t.Fatalf("versitygw did not come up on %s: %s", s.Addr, out)
}

// Kill stops the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
	s.log.Close()
	os.Remove(s.log.Name())
}

// Restart starts a killed server again on the same address and data.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Stop stops the server (idempotent; registered with t.Cleanup).
func (s *Server) Stop() { s.Kill() }

// String is for logs.
func (s *Server) String() string { return fmt.Sprintf("versitygw on %s (%s)", s.Addr, s.Dir) }
