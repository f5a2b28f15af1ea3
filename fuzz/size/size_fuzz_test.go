// Package sizefuzz fuzzes the CLI's size parser (internal/size), which reads
// whatever a user or a script types after --size.
package sizefuzz

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/internal/size"
)

// FuzzParseSize: Parse never panics; what it accepts is positive, a whole
// number of KiB, independent of case and surrounding space, and the same
// number written in KiB parses back to it.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"512M", "10G", "1T", "2", "10GiB", "10gb", " 64G ", "4K", "8191P", "8192P", "0", "-1G", "1.5G", "", "99999999999999999999", "10 G B", "1\tki"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := size.Parse(s)
		if err != nil {
			if !errors.Is(err, size.ErrInvalid) {
				t.Fatalf("Parse(%q): error %v does not wrap ErrInvalid", s, err)
			}
			if n != 0 {
				t.Fatalf("Parse(%q) = %d with an error", s, n)
			}
			return
		}
		if n <= 0 || n%1024 != 0 {
			t.Fatalf("Parse(%q) = %d: not a positive whole number of KiB", s, n)
		}
		for _, v := range []string{strings.ToLower(s), strings.ToUpper(s), " " + s + "\t"} {
			if m, err := size.Parse(v); len(v) <= size.MaxInputLen && (err != nil || m != n) {
				t.Fatalf("Parse(%q) = %d but Parse(%q) = %d, %v", s, n, v, m, err)
			}
		}
		if m, err := size.Parse(fmt.Sprintf("%dK", n>>10)); err != nil || m != n {
			t.Fatalf("Parse(%q) = %d but %dK parses to %d, %v", s, n, n>>10, m, err)
		}
		if size.Format(n) == "" {
			t.Fatalf("Format(%d) is empty", n)
		}
	})
}
