package engine

import (
	"errors"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"db", true},
		{"a", true},
		{"7", true},
		{"pvc-0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9", true},
		{"my_vol.v2", true},
		{"db.snap-20260101T000000.000Z", true},
		{"Data-01", true},
		{strings.Repeat("x", MaxVolumeNameLen), true},
		{strings.Repeat("x", MaxVolumeNameLen+1), false},
		{"", false},
		{".hidden", false}, // leading '.': hidden file, '.' and '..'
		{".", false},
		{"..", false},
		{"-rf", false},    // reads as an option
		{"_x", false},     // starts with neither a letter nor a digit
		{"a/b", false},    // a path
		{"../etc", false}, // a path
		{"a b", false},    // whitespace
		{"a\tb", false},
		{"a\n", false},
		{"tab\x00", false},
		{"café", false}, // letters are ASCII
		{"a:b", false},
		{"v@pool1", false}, // the alias of a name found in two pools (names.go)
		{"a%2Fb", false},
		{"0123456789abcdef", false}, // the form of a volume id
		{"0123456789abcdeF", true},
		{"0123456789abcde", true},
	} {
		err := ValidateName("volume", tc.name)
		if tc.ok != (err == nil) {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v: not ErrInvalid", tc.name, err)
		}
	}
}

// TestValidateSettings checks each rule's bounds and that its message names
// the value in the user's terms (sizes as the CLI takes them).
func TestValidateSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string // "" = accepted
	}{
		{"size 4K", ValidateSize(4096), ""},
		{"size 64T", ValidateSize(64 << 40), ""},
		{"size 0", ValidateSize(0), "size 0: must be greater than zero"},
		{"size negative", ValidateSize(-4096), "size -4K: must be greater than zero"},
		{"size unaligned", ValidateSize(1000), "size 1000 bytes: must be a multiple of 4K"},
		{"size 100P", ValidateSize(100 << 50), "size 100P: must be at most 64T"},
		{"size 64T+4K", ValidateSize(64<<40 + 4096), "size 68719476740K: must be at most 64T"},
		{"repl 1", ValidateRepl(1), ""},
		{"repl 0", ValidateRepl(0), "repl 0: must be 1, 2 or 3"},
		{"repl 4", ValidateRepl(4), "repl 4: must be 1, 2 or 3"},
		{"repl 2", ValidateRepl(2), ""},
		{"repl 3", ValidateRepl(3), ""},
		{"snap_interval 0", ValidateSnapInterval(0), ""},
		{"snap_interval a year", ValidateSnapInterval(MaxSnapInterval), ""},
		{"snap_interval -1", ValidateSnapInterval(-1), "snap_interval -1: minutes must be 0 (off) to 525600"},
		{"snap_interval beyond a year", ValidateSnapInterval(MaxSnapInterval + 1), "snap_interval 525601"},
		{"snap_interval beyond uint32", ValidateSnapInterval(1 << 32), "snap_interval 4294967296"},
		{"snap_keep 1", ValidateSnapKeep(1), ""},
		{"snap_keep 64", ValidateSnapKeep(MaxSnapshots), ""},
		{"snap_keep 0", ValidateSnapKeep(0), "snap_keep 0: must be 1 to 64"},
		{"snap_keep 65", ValidateSnapKeep(65), "snap_keep 65: must be 1 to 64"},
		{"io_priority HIGH", func() error { _, err := ParseIOPriority("HIGH"); return err }(), ""},
		{"io_priority fast", func() error { _, err := ParseIOPriority("fast"); return err }(), `io_priority "fast": must be high, medium or low`},
		{"io_priority empty", func() error { _, err := ParseIOPriority(""); return err }(), `io_priority ""`},
	} {
		switch {
		case tc.want == "" && tc.err != nil:
			t.Errorf("%s: %v, want accepted", tc.name, tc.err)
		case tc.want == "":
		case !errors.Is(tc.err, ErrInvalid) || !strings.Contains(tc.err.Error(), tc.want):
			t.Errorf("%s: %v, want ErrInvalid saying %q", tc.name, tc.err, tc.want)
		}
	}
}

// TestCreateUpdateUseTheRules checks that the engine's entry points refuse
// what the rules refuse, before anything changes, and normalise what they
// accept.
func TestCreateUpdateUseTheRules(t *testing.T) {
	e := memEngine(t, drive.NewMem("mem0", 64<<20))
	for _, spec := range []VolumeSpec{
		{Name: ".x", Size: 4096},
		{Name: strings.Repeat("x", MaxVolumeNameLen+1), Size: 4096},
		{Name: "x", Size: 100 << 50},
		{Name: "x", Size: 4096, BlockSize: 512},
		{Name: "x", Size: 4096, Repl: 4},
		{Name: "x", Size: 4096, SnapInterval: -1},
		{Name: "x", Size: 4096, SnapKeep: -1},
		{Name: "x", Size: 4096, SnapKeep: MaxSnapshots + 1},
		{Name: "x", Size: 4096, IOPriority: "fast"},
	} {
		if _, err := e.CreateVolume(spec); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateVolume(%+v) = %v, want ErrInvalid", spec, err)
		}
	}
	if n := len(e.Volumes()); n != 0 {
		t.Fatalf("%d volumes after refused creates", n)
	}
	info, err := e.CreateVolume(VolumeSpec{Name: strings.Repeat("x", MaxVolumeNameLen), Size: 4096, IOPriority: "HIGH"})
	if err != nil {
		t.Fatal(err)
	}
	if info.RequestedIOPriority != PriorityHigh || info.Repl != 1 || info.SnapKeep != DefaultSnapKeep {
		t.Errorf("created %+v: want io_priority high, repl 1, snap_keep %d", info, DefaultSnapKeep)
	}
	for _, upd := range []VolumeUpdate{
		{Size: ptrTo(int64(100 << 50))},
		{Size: ptrTo(int64(8192 + 1))},
		{SnapInterval: ptrTo(-1)},
		{SnapKeep: ptrTo(0)},
	} {
		if _, err := e.UpdateVolume(info.Name, upd); !errors.Is(err, ErrInvalid) {
			t.Errorf("UpdateVolume(%+v) = %v, want ErrInvalid", upd, err)
		}
	}
	if _, err := e.UpdateVolume(info.Name, VolumeUpdate{Size: ptrTo(int64(0))}); !errors.Is(err, ErrInvalid) {
		t.Errorf("shrink to 0: %v, want ErrInvalid", err)
	}
	if _, err := e.CreateSnapshot(info.Name, "-snap"); !errors.Is(err, ErrInvalid) {
		t.Errorf("snapshot named -snap: %v, want ErrInvalid", err)
	}
	if _, err := e.CloneVolume(info.Name, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("clone without a name: %v, want ErrInvalid", err)
	}
	if got, _ := e.Volume(info.Name); got.Info() != info {
		t.Errorf("volume changed by refused calls: %+v, was %+v", got.Info(), info)
	}
}

func ptrTo[T any](v T) *T { return &v }
