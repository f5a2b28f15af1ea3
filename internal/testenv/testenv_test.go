package testenv

import "testing"

// recorder is a testing.TB that notes a Fatalf or a Skip instead of
// stopping the test.
type recorder struct {
	testing.TB
	failed, skipped bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Fatalf(string, ...any) { r.failed = true }
func (r *recorder) Skip(...any)           { r.skipped = true }

func TestMissingFacilitySkipsOrFailsInCI(t *testing.T) {
	for _, tc := range []struct {
		ci              string
		failed, skipped bool
	}{
		{"", false, true},
		{"false", false, true},
		{"true", true, false},
	} {
		t.Setenv("CI", tc.ci)
		r := &recorder{}
		RequireTool(r, "cairn-no-such-tool")
		if r.failed != tc.failed || r.skipped != tc.skipped {
			t.Errorf("CI=%q: failed %v skipped %v, want failed %v skipped %v", tc.ci, r.failed, r.skipped, tc.failed, tc.skipped)
		}
	}
}
