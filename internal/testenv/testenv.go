// Package testenv is what tests need of the host: root, /dev/fuse, a
// command-line tool. A test that lacks one is skipped on a developer's
// machine; in CI (CI=true, set by .ci/run), which runs as root with FUSE and
// `make deps`, a missing one fails the test instead, so that the FUSE, host
// mount and power-loss suites can never silently stop running.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI, where every facility this
// package checks is promised.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips the test (outside CI) or fails it (in CI): what it
// needs of the host is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s; CI=true promises it, so this is a failure, not a skip", msg)
	} else {
		t.Skip(msg)
	}
}

// RequireRoot needs the test to run as root; why says what for.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (%s)", why)
	}
}

// RequireFUSE needs /dev/fuse.
func RequireFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Unavailable(t, "no /dev/fuse: this kernel has no FUSE")
	}
}

// RequireTool needs a command on PATH (`make deps` installs them all) and
// returns its path.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s is not installed (run `make deps`)", name)
	}
	return p
}
