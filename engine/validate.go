package engine

import (
	"fmt"
	"strings"

	"github.com/cairn-storage/cairn/internal/size"
)

// The rules for what a volume, snapshot or clone may be called and what its
// settings may be. They are said once, here: CreateVolume, UpdateVolume,
// CreateSnapshot and CloneVolume enforce them, the API passes their errors
// on (ErrInvalid: HTTP 400), and the CLI calls them only for what it cannot
// send (a 0 that the API reads as "the default"). Every error wraps ErrInvalid
// and names the value and the rule; sizes are written as the CLI takes them.

const (
	// MaxNameLen bounds a name in bytes: a name is also an NBD export name
	// and a file or directory name (255 bytes on Linux filesystems).
	MaxNameLen = 255
	// MaxVolumeNameLen bounds the name of a volume or clone: it leaves room
	// for ".snap-<timestamp>", so that a snapshot taken without a name (by
	// the scheduler too) always has a valid one (DefaultSnapshotName).
	MaxVolumeNameLen = MaxNameLen - len(".snap-20060102T150405.000Z")
	// MaxRepl is the most copies a volume may have (Portworx's limit).
	MaxRepl = 3
	// MaxSnapInterval is the longest snapshot schedule: a year, in minutes.
	MaxSnapInterval = 365 * 24 * 60
)

// ValidateName checks the name of a volume, snapshot or clone (what says
// which): 1 to MaxVolumeNameLen (a snapshot: MaxNameLen) letters, digits,
// '.', '_' and '-', starting with a letter or digit. So a name is never
// empty, hidden ('.x'), a path ('a/b', '..'), an option ('-x') or split by
// whitespace.
func ValidateName(what, name string) error {
	maxLen := MaxVolumeNameLen
	if what == "snapshot" {
		maxLen = MaxNameLen
	}
	ok := name != "" && len(name) <= maxLen && isAlnum(rune(name[0]))
	for _, r := range name {
		ok = ok && (isAlnum(r) || strings.ContainsRune("._-", r))
	}
	if !ok {
		return fmt.Errorf("%w: %s name %q: use 1 to %d letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, what, name, maxLen)
	}
	if looksLikeID(name) {
		// Every verb takes a name or an id: such a name could hide another
		// volume's id, and a delete by id would then delete the wrong one.
		return fmt.Errorf("%w: %s name %q has the form of a volume id (16 hex digits); choose another", ErrInvalid, what, name)
	}
	return nil
}

// looksLikeID reports whether s has the form of a volume id (volumeID).
func looksLikeID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// ValidateSize checks a volume size: a positive multiple of BlockSize, at
// most 64T.
func ValidateSize(n int64) error {
	switch {
	case n <= 0:
		return fmt.Errorf("%w: size %s: must be greater than zero", ErrInvalid, size.Exact(n))
	case n%BlockSize != 0:
		return fmt.Errorf("%w: size %s: must be a multiple of %s", ErrInvalid, size.Exact(n), size.Exact(BlockSize))
	case n > maxVolumeSize:
		return fmt.Errorf("%w: size %s: must be at most %s", ErrInvalid, size.Exact(n), size.Exact(maxVolumeSize))
	}
	return nil
}

// ValidateRepl checks a replication factor: 1 to MaxRepl. Whether the
// cluster has the nodes to hold the copies is placement's to say
// (cluster.PlaceReplicas).
func ValidateRepl(n int) error {
	if n < 1 || n > MaxRepl {
		return fmt.Errorf("%w: repl %d: must be 1, 2 or 3", ErrInvalid, n)
	}
	return nil
}

// ValidateSnapInterval checks a snapshot schedule in minutes (0 = off).
func ValidateSnapInterval(minutes int) error {
	if minutes < 0 || minutes > MaxSnapInterval {
		return fmt.Errorf("%w: snap_interval %d: minutes must be 0 (off) to %d (a year)", ErrInvalid, minutes, MaxSnapInterval)
	}
	return nil
}

// ValidateSnapKeep checks how many scheduled snapshots to keep.
func ValidateSnapKeep(n int) error {
	if n < 1 || n > MaxSnapshots {
		return fmt.Errorf("%w: snap_keep %d: must be 1 to %d", ErrInvalid, n, MaxSnapshots)
	}
	return nil
}

// ParseIOPriority accepts high, medium or low (any case).
func ParseIOPriority(s string) (IOPriority, error) {
	switch p := IOPriority(strings.ToLower(s)); p {
	case PriorityHigh, PriorityMedium, PriorityLow:
		return p, nil
	}
	return "", fmt.Errorf("%w: io_priority %q: must be high, medium or low", ErrInvalid, s)
}

// check applies the rules to a create request and fills in the defaults
// (repl 1, io_priority low, block size 4096, snap_keep DefaultSnapKeep as 0).
func (s *VolumeSpec) check() error {
	if err := ValidateName("volume", s.Name); err != nil {
		return err
	}
	if err := ValidateSize(s.Size); err != nil {
		return err
	}
	if s.BlockSize != 0 && s.BlockSize != BlockSize {
		return fmt.Errorf("%w: block_size %d: only %d is supported", ErrInvalid, s.BlockSize, BlockSize)
	}
	if s.Repl == 0 {
		s.Repl = 1
	}
	if err := ValidateRepl(s.Repl); err != nil {
		return err
	}
	if err := ValidateSnapInterval(s.SnapInterval); err != nil {
		return err
	}
	if s.SnapKeep != 0 {
		if err := ValidateSnapKeep(s.SnapKeep); err != nil {
			return err
		}
	}
	if s.IOPriority == "" {
		s.IOPriority = PriorityLow
	}
	p, err := ParseIOPriority(string(s.IOPriority))
	s.IOPriority = p
	return err
}

// check applies the rules to the fields an update sets. Growth is checked
// against the volume by UpdateVolume.
func (u VolumeUpdate) check() error {
	if u.Size != nil {
		if err := ValidateSize(*u.Size); err != nil {
			return err
		}
	}
	if u.SnapInterval != nil {
		if err := ValidateSnapInterval(*u.SnapInterval); err != nil {
			return err
		}
	}
	if u.SnapKeep != nil {
		if err := ValidateSnapKeep(*u.SnapKeep); err != nil {
			return err
		}
	}
	return nil
}
