package main

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// sizeSyntax is a whole number with an optional binary unit. The unit may be
// spelled K, KB, Ki or KiB (any case); all units are powers of 1024, as in
// pxctl, where a bare number means GiB.
var sizeSyntax = regexp.MustCompile(`^([0-9]+)\s*(?:([KMGTP])(?:IB|I|B)?)?$`)

var unitShift = map[string]uint{"K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "": 30}

// parseSize turns "512M", "10G", "1T" or "20" (GiB) into bytes. Zero,
// negative and malformed sizes are refused with a message that shows the
// accepted forms.
func parseSize(s string) (int64, error) {
	m := sizeSyntax.FindStringSubmatch(strings.ToUpper(strings.TrimSpace(s)))
	if m == nil {
		return 0, fmt.Errorf("invalid size %q: use a whole number with a unit, like 512M, 10G or 1T (a bare number means GiB)", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	shift := unitShift[m[2]]
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	if n == 0 {
		return 0, fmt.Errorf("invalid size %q: must be greater than zero", s)
	}
	return n << shift, nil
}

// formatSize renders bytes for people: "10 GiB", "1.5 TiB", "512 MiB", "0 B".
func formatSize(n int64) string {
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
