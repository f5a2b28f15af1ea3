// Package size parses and prints the byte sizes people type and read on the
// command line: "512M", "10G", "1T", a bare number meaning GiB (as in pxctl).
// All units are powers of 1024. Parse and Exact are inverses; Format rounds,
// for tables.
package size

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("invalid size")

// MaxInputLen bounds the text Parse looks at; longer input is refused before
// any matching is done.
const MaxInputLen = 64

// syntax is a whole number with an optional binary unit. The unit may be
// spelled K, KB, Ki or KiB (any case).
var syntax = regexp.MustCompile(`^([0-9]+)\s*(?:([KMGTP])(?:IB|I|B)?)?$`)

var unitShift = map[string]uint{"K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "": 30}

// Parse turns "512M", "10G", "1T" or "20" (GiB) into bytes. Zero, negative,
// overflowing and malformed sizes are refused with a message that shows the
// accepted forms.
func Parse(s string) (int64, error) {
	if len(s) > MaxInputLen {
		return 0, fmt.Errorf("%w %.20q…: longer than %d characters", ErrInvalid, s, MaxInputLen)
	}
	m := syntax.FindStringSubmatch(strings.ToUpper(strings.TrimSpace(s)))
	if m == nil {
		return 0, fmt.Errorf("%w %q: use a whole number with a unit, like 512M, 10G or 1T (a bare number means GiB)", ErrInvalid, s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	shift := unitShift[m[2]]
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%w %q: too large", ErrInvalid, s)
	}
	if n == 0 {
		return 0, fmt.Errorf("%w %q: must be greater than zero", ErrInvalid, s)
	}
	return n << shift, nil
}

// Exact renders bytes exactly, in the form Parse reads back: "64T", "100P",
// "1536M", "4K" (the largest unit that divides n). Messages about a size the
// user typed use it, so they answer in the user's terms. A size that is not a
// whole number of KiB is given in bytes ("4097 bytes"), since Parse reads a
// bare number as GiB.
func Exact(n int64) string {
	if n == 0 {
		return "0"
	}
	if n%1024 != 0 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	const units = "KMGTP"
	n /= 1024
	i := 0
	for n%1024 == 0 && i < len(units)-1 {
		n /= 1024
		i++
	}
	return strconv.FormatInt(n, 10) + string(units[i])
}

// Format renders bytes for people: "10 GiB", "1.5 TiB", "512 MiB", "0 B".
func Format(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string(units[i]) + "iB"
}
