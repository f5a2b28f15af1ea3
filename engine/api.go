package engine

import (
	"errors"
	"time"

	"github.com/cairn-storage/cairn/drive"
)

// Errors returned by the engine. Callers test them with errors.Is; the
// messages wrap these with the names and numbers involved.
var (
	ErrNotFound     = errors.New("engine: not found")
	ErrExists       = errors.New("engine: already exists")
	ErrNoSpace      = errors.New("engine: no space left in pool")
	ErrOutOfRange   = errors.New("engine: I/O beyond the end of the volume")
	ErrInvalid      = errors.New("engine: invalid argument")
	ErrIO           = errors.New("engine: I/O error")
	ErrReadOnly     = errors.New("engine: volume is read-only")
	ErrCorrupt      = errors.New("engine: corrupt metadata")
	ErrShrink       = errors.New("engine: volumes can only grow")
	ErrSticky       = errors.New("engine: sticky volume: turn sticky off first")
	ErrBusy         = errors.New("engine: volume is in use")
	ErrClosed       = errors.New("engine: closed")
	ErrNoPool       = errors.New("engine: no storage pool")
	ErrDriveRefused = errors.New("engine: drive refused")
	ErrHasSnapshots = errors.New("engine: volume has snapshots")
	ErrTooManySnaps = errors.New("engine: snapshot limit reached")
	ErrUnavailable  = errors.New("engine: volume unavailable") // its pool is not open
)

// IOPriority is a pool's class of service, as Portworx names them.
type IOPriority string

const (
	PriorityHigh   IOPriority = "high"
	PriorityMedium IOPriority = "medium"
	PriorityLow    IOPriority = "low"
)

// DriveSpec names a drive handed to the engine.
type DriveSpec struct {
	Path       string
	IOPriority IOPriority // "" = detect (NVMe high, SSD medium, HDD low, file low)
	Force      bool       // format over a foreign superblock or filesystem
	// Drive, when set, is used instead of opening Path (tests: drive.Mem).
	Drive drive.Drive
}

// Options configure Open.
type Options struct {
	NodeID string      // this node's identity; drives of another node are refused
	Drives []DriveSpec // formatted on first use when blank
	// Catalog, when set, keeps volume names taken while their pool is
	// missing (see names.go).
	Catalog Catalog
	// Observer, when set, sees every completed volume I/O (metrics).
	Observer Observer
	// LogAreaSize overrides the size of each metadata log area on newly
	// formatted drives (0 = 1/256 of the drive, 8 MiB to 256 MiB). Tests use
	// small areas to exercise checkpoints often.
	LogAreaSize int64

	// FillRate is how fast, in bytes per second, each pool's filler copies
	// into extents redirected after a snapshot (fill.go); 0 = DefaultFillRate.
	FillRate int64

	// manualCommit turns off the background committer and the filler (tests
	// that replay a seed need every commit to come from the test itself).
	manualCommit bool
	// fillCap overrides the pool's fill budget with that many dense fill
	// states (tests).
	fillCap int
}

// Op names a volume operation for the Observer.
type Op uint8

const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpTrim
	OpWriteZeroes
)

// Observer receives one call per completed I/O. It must be fast and must not block.
type Observer interface {
	ObserveIO(volume string, op Op, bytes int, d time.Duration, err error)
}

// VolumeSpec is what CreateVolume takes.
type VolumeSpec struct {
	Name         string
	Size         int64      // bytes, multiple of BlockSize, > 0
	IOPriority   IOPriority // requested; falls back high → medium → low
	Repl         int        // 1..3 (only 1 until replication lands)
	Sticky       bool
	SnapInterval int // minutes, 0 = off
	SnapKeep     int // scheduled snapshots kept; 0 = DefaultSnapKeep
	BlockSize    int // 4096 (the only supported value)
}

// MaxSnapshots is how many snapshots one volume may have (Portworx's limit).
const MaxSnapshots = 64

// DefaultSnapKeep is how many scheduled snapshots are kept when not told.
const DefaultSnapKeep = 5

// VolumeUpdate changes a volume; nil fields are left alone.
type VolumeUpdate struct {
	Size         *int64 // grow only
	Sticky       *bool
	SnapInterval *int
	SnapKeep     *int // scheduled snapshots to keep (1..MaxSnapshots)
}

// VolumeInfo describes a volume, a snapshot or a clone.
type VolumeInfo struct {
	ID                  string
	Name                string
	Size                int64
	Used                int64 // bytes mapped; for a snapshot, bytes only it references
	Repl                int
	IOPriority          IOPriority // where it landed
	RequestedIOPriority IOPriority
	Pool                int
	Sticky              bool
	SnapInterval        int
	SnapKeep            int
	BlockSize           int
	Parent              string // snapshot: its volume; clone: its snapshot
	ReadOnly            bool
	Snapshot            bool   // read-only, sharing extents with Parent
	State               string // "up", "error: …", "unavailable: …"
	Unavailable         bool   // its pool is not open (names.go): listed, not served
	Created             time.Time
}

// ExtentKind classifies a range for Extents (NBD base:allocation).
type ExtentKind uint8

const (
	ExtentData ExtentKind = iota // allocated, holds written data
	ExtentHole                   // unallocated: reads as zeros
)

// Extent is a run of bytes of one kind.
type Extent struct {
	Offset, Length int64
	Kind           ExtentKind
}

// Status is the node's view for `cairn status`.
type Status struct {
	NodeID string
	Pools  []PoolInfo
	// RefusedDrives are drives given to the node that it did not use, each
	// with the reason in Status (foreign, damaged, another node's, too small).
	RefusedDrives []DriveInfo
	// DuplicateNames are volume names found in more than one pool at Open;
	// each copy is served under NAME@poolN.
	DuplicateNames []DuplicateName
	// UnavailableVolumes counts volumes and snapshots whose pool is not open.
	UnavailableVolumes int
	// CatalogError is the last failure to save the volume catalog (names.go),
	// "" once a save succeeds.
	CatalogError string
}

type PoolInfo struct {
	ID         int
	UUID       string
	IOPriority IOPriority
	Raid       string // "raid0"
	Size       int64  // bytes usable for data
	Used       int64  // bytes holding data: Allocated less the blocks of redirected extents not filled yet
	Allocated  int64  // bytes of extents in use
	// Filling: extents redirected after a snapshot whose blocks are still
	// partly in their snapshot's extent; FillRAM the bytes their states
	// and lookup table take, FillBudget what it may take before the filler completes some
	// whatever their fill (engine/fill.go).
	Filling    int64
	FillRAM    int64
	FillBudget int64
	Status     string // "Online", "Error: …"
	Drives     []DriveInfo
}

type DriveInfo struct {
	Path   string
	Size   int64
	Used   int64
	Status string
}
