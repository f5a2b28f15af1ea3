package control

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

func TestNodeIdentityIsGeneratedOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	n, err := OpenNode(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(n.ID()) {
		t.Errorf("node id %q is not a version 4 UUID", n.ID())
	}
	if n.Cluster() != DefaultCluster {
		t.Errorf("cluster = %q, want %q", n.Cluster(), DefaultCluster)
	}
	if err := n.RememberDrives(engine.DriveSpec{Path: "/d1", IOPriority: engine.PriorityHigh, Force: true}, engine.DriveSpec{Path: "/d2"}); err != nil {
		t.Fatal(err)
	}
	if err := n.RememberDrives(engine.DriveSpec{Path: "/d1"}); err != nil { // known: ignored
		t.Fatal(err)
	}

	again, err := OpenNode(dir, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if again.ID() != n.ID() {
		t.Errorf("node id changed across opens: %s → %s", n.ID(), again.ID())
	}
	if again.Cluster() != "prod" {
		t.Errorf("cluster = %q, want prod", again.Cluster())
	}
	drives := again.Drives()
	want := []engine.DriveSpec{{Path: "/d1", IOPriority: engine.PriorityHigh}, {Path: "/d2"}}
	if len(drives) != 2 || drives[0] != want[0] || drives[1] != want[1] {
		t.Errorf("drives = %+v, want %+v (force is never remembered)", drives, want)
	}
	// -c given once sticks.
	if third, _ := OpenNode(dir, ""); third.Cluster() != "prod" {
		t.Errorf("cluster not kept: %q", third.Cluster())
	}
}

func TestNodeRefusesDamagedState(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, nodeFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenNode(dir, "")
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("want a damaged-state error, got %v", err)
	}
}

// Once a node has joined a cluster it keeps to it: another -c, or another
// cluster of the same name (another uuid), is refused; the same is not.
func TestNodeKeepsToItsCluster(t *testing.T) {
	dir := t.TempDir()
	n, err := OpenNode(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.JoinCluster("uuid-1"); err != nil {
		t.Fatal(err)
	}
	if err := n.JoinCluster("uuid-1"); err != nil {
		t.Fatalf("rejoin of the same cluster: %v", err)
	}
	if err := n.JoinCluster("uuid-2"); err == nil || !strings.Contains(err.Error(), "uuid-1") {
		t.Fatalf("join of another cluster named alpha: %v, want a refusal naming uuid-1", err)
	}
	if _, err := OpenNode(dir, "beta"); err == nil || !strings.Contains(err.Error(), `belongs to cluster "alpha"`) {
		t.Fatalf("open with -c beta: %v, want a refusal", err)
	}
	again, err := OpenNode(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if again.ClusterUUID() != "uuid-1" {
		t.Fatalf("cluster uuid not kept: %q", again.ClusterUUID())
	}
}
