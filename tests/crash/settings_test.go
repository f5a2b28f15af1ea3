package crash

import (
	"encoding/json"
	"maps"
	"path/filepath"
	"testing"
)

// TestSettingsSurviveSIGKILL changes every setting `volume update` has, kills
// the daemon with SIGKILL and checks that the restarted daemon shows the
// volume exactly as before (issue 13: snap_keep was lost on replay).
func TestSettingsSurviveSIGKILL(t *testing.T) {
	dir := t.TempDir()
	drv := sparseFile(t, filepath.Join(dir, "drive0.img"), 2<<30)
	d := startDaemon(t, filepath.Join(dir, "data"), "-s", drv)
	d.cli("volume", "create", "v", "--size", "1G")
	d.cli("volume", "update", "v", "--snap_keep", "7")
	d.cli("volume", "update", "v", "--size", "2G", "--sticky", "on", "--snap_interval", "600")

	inspect := func(d *daemon) map[string]any {
		t.Helper()
		var v map[string]any
		out := d.cli("volume", "inspect", "v", "-j")
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("volume inspect -j: %v\n%s", err, out)
		}
		delete(v, "used")      // follows the data, not the settings
		delete(v, "node_addr") // the node's API port: a new one at each start
		return v
	}
	before := inspect(d)
	if before["snap_keep"] != 7.0 {
		t.Fatalf("snap_keep %v before the crash, want 7", before["snap_keep"])
	}
	d = d.restart() // SIGKILL, then start on the same drives
	if after := inspect(d); !maps.Equal(after, before) {
		t.Errorf("volume after SIGKILL and restart:\n got %v\nwant %v", after, before)
	}
}
