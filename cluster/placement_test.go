package cluster

import (
	"errors"
	"slices"
	"testing"
)

func TestPlaceReplicas(t *testing.T) {
	const G = 1 << 30
	// node makes an Online node in zone/rack with one Online pool of class
	// prio and free GiB free (no pool when prio is "").
	node := func(id, zone, rack, prio string, free int64) Node {
		n := Node{NodeRecord: NodeRecord{ID: id, Zone: zone, Rack: rack}, Status: StatusOnline}
		if prio != "" {
			n.Pools = []PoolSummary{{IOPriority: prio, Size: 100 * G, Used: 100*G - free*G, Status: "Online"}}
		}
		return n
	}
	offline := func(n Node) Node { n.Status = StatusOffline; return n }
	for _, tc := range []struct {
		name    string
		nodes   []Node
		req     PlaceRequest
		n       int
		want    []string // node ids, best first
		wantErr error
		wantMsg string // the whole error text
	}{
		{name: "three zones: one replica in each, before rank",
			nodes: []Node{
				node("a1", "z1", "r1", "low", 90), node("a2", "z1", "r2", "low", 80),
				node("b1", "z2", "r3", "low", 10), node("c1", "z3", "r4", "low", 20),
			},
			n: 3, want: []string{"a1", "c1", "b1"}},
		{name: "two zones: then another rack in a used zone",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 90), node("n2", "z1", "r1", "low", 80),
				node("n3", "z1", "r2", "low", 10), node("n4", "z2", "r3", "low", 5),
			},
			n: 3, want: []string{"n1", "n4", "n3"}},
		{name: "a rack is its name, across zones",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 90), node("n2", "z2", "r1", "low", 80),
				node("n3", "z3", "r2", "low", 10),
			},
			n: 2, want: []string{"n1", "n3"}},
		{name: "one zone, one rack: still placed",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 10), node("n2", "z1", "r1", "low", 20),
			},
			n: 2, want: []string{"n2", "n1"}},
		{name: "nodes without a zone share the zone \"\"",
			nodes: []Node{
				node("n1", "", "", "low", 90), node("n2", "", "", "low", 80), node("n3", "z1", "", "low", 10),
			},
			n: 2, want: []string{"n1", "n3"}},
		{name: "io_priority with fallback: high, then medium, then low",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 90), node("n2", "z2", "r2", "medium", 10),
				node("n3", "z3", "r3", "high", 5), node("n4", "z4", "r4", "", 0),
			},
			req: PlaceRequest{IOPriority: "high"}, n: 3, want: []string{"n3", "n2", "n1"}},
		{name: "io_priority: no high pool anywhere falls back to medium",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 90), node("n2", "z2", "r2", "medium", 10),
				node("n3", "z3", "r3", "medium", 20),
			},
			req: PlaceRequest{IOPriority: "high"}, n: 2, want: []string{"n3", "n2"}},
		{name: "room for the size beats more free bytes",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 30), node("n2", "z2", "r2", "low", 60), node("n3", "z3", "r3", "low", 50),
			},
			req: PlaceRequest{Size: 40 * G}, n: 2, want: []string{"n2", "n3"}},
		{name: "exclude: not chosen, and their zone counts as used",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 90), node("n2", "z1", "r2", "low", 80),
				node("n3", "z2", "r3", "low", 10),
			},
			req: PlaceRequest{Exclude: []string{"n1"}}, n: 1, want: []string{"n3"}},
		{name: "exclude: an Offline holder's zone and rack count too",
			nodes: []Node{
				offline(node("n1", "z1", "r1", "low", 90)), node("n2", "z1", "r1", "low", 80),
				node("n3", "z1", "r2", "low", 10),
			},
			req: PlaceRequest{Exclude: []string{"n1"}}, n: 1, want: []string{"n3"}},
		{name: "constraints: zones and racks",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 90), node("n2", "z2", "r2", "low", 80),
				node("n3", "z2", "r3", "low", 10), node("n4", "z3", "r4", "low", 50),
			},
			req: PlaceRequest{Placement: Placement{Zones: []string{"z2", "z3"}, Racks: []string{"r3", "r4"}}}, n: 2, want: []string{"n4", "n3"}},
		{name: "ties go to the lower node id, whatever the order listed",
			nodes: []Node{
				node("n3", "z1", "r1", "low", 10), node("n1", "z2", "r2", "low", 10),
				node("n2", "z3", "r3", "low", 10),
			},
			n: 3, want: []string{"n1", "n2", "n3"}},
		{name: "too few: how many were eligible and why not the others",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 10), node("n2", "z1", "r2", "low", 10),
				offline(node("n3", "z2", "r3", "low", 10)), node("n4", "z3", "r4", "", 0),
				node("n5", "z4", "r5", "low", 10),
			},
			req: PlaceRequest{Name: "db", Placement: Placement{Zones: []string{"z1", "z2", "z3"}}}, n: 3,
			wantErr: ErrNoPlacement,
			wantMsg: `cannot create volume "db" with repl 3: 2 eligible nodes (n1, n2) in zones z1, z2, z3: node n3 is Offline; node n4 has no usable storage pool; node n5 is in zone z4`},
		{name: "too few: nothing else to say",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 10),
			},
			req: PlaceRequest{Name: "db"}, n: 2,
			wantErr: ErrNoPlacement, wantMsg: `cannot create volume "db" with repl 2: 1 eligible node (n1)`},
		{name: "too few: adding replicas",
			nodes: []Node{
				node("n1", "z1", "r1", "low", 10), node("n2", "z2", "r2", "low", 10), node("n3", "z3", "r3", "low", 10),
			},
			req: PlaceRequest{Name: "db", Exclude: []string{"n1", "n3"}}, n: 2,
			wantErr: ErrNoPlacement,
			wantMsg: `cannot add 2 replicas to volume "db": 1 eligible node (n2): node n1 already holds a replica; node n3 already holds a replica`},
		{name: "none: the words of Place",
			nodes: []Node{
				offline(node("n1", "z1", "r1", "low", 10)),
			},
			req: PlaceRequest{Name: "db"}, n: 2,
			wantErr: ErrNoPlacement,
			wantMsg: `cannot create volume "db" with repl 2: no Online node with a storage pool: node n1 is Offline`},
		{name: "repl 0", nodes: []Node{node("n1", "z1", "r1", "low", 10)}, req: PlaceRequest{Name: "db"}, n: 0,
			wantErr: ErrInvalid, wantMsg: `cannot create volume "db" with repl 0: repl must be 1, 2 or 3`},
		{name: "repl 4", nodes: []Node{node("n1", "z1", "r1", "low", 10)}, req: PlaceRequest{Name: "db"}, n: 4,
			wantErr: ErrInvalid, wantMsg: `cannot create volume "db" with repl 4: repl must be 1, 2 or 3`},
	} {
		got, err := PlaceReplicas(tc.nodes, tc.req, tc.n)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) || err.Error() != tc.wantMsg {
				t.Errorf("%s: err %v, want %v saying %q", tc.name, err, tc.wantErr, tc.wantMsg)
			}
			continue
		}
		ids := make([]string, len(got))
		for i, n := range got {
			ids[i] = n.ID
		}
		if err != nil || !slices.Equal(ids, tc.want) {
			t.Errorf("%s: got %v, %v; want %v", tc.name, ids, err, tc.want)
		}
	}
}

// TestPlaceReplicasDistinct checks, on every subset of a small cluster and
// every n, that the nodes chosen are distinct candidates and that as many
// zones are used as the candidates allow.
func TestPlaceReplicasDistinct(t *testing.T) {
	all := []Node{
		{NodeRecord: NodeRecord{ID: "n1", Zone: "z1", Rack: "r1"}},
		{NodeRecord: NodeRecord{ID: "n2", Zone: "z1", Rack: "r2"}},
		{NodeRecord: NodeRecord{ID: "n3", Zone: "z2", Rack: "r1"}},
		{NodeRecord: NodeRecord{ID: "n4", Zone: "z2", Rack: "r3"}},
		{NodeRecord: NodeRecord{ID: "n5", Zone: "z3", Rack: "r4"}},
		{NodeRecord: NodeRecord{ID: "n6", Zone: "", Rack: ""}},
	}
	for i := range all {
		all[i].Status = StatusOnline
		all[i].Pools = []PoolSummary{{IOPriority: "low", Size: int64(10 + i), Status: "Online"}}
	}
	for mask := 0; mask < 1<<len(all); mask++ {
		var nodes []Node
		zones := map[string]bool{}
		for i, n := range all {
			if mask&(1<<i) != 0 {
				nodes = append(nodes, n)
				zones[n.Zone] = true
			}
		}
		for n := 1; n <= 3; n++ {
			got, err := PlaceReplicas(nodes, PlaceRequest{Name: "v"}, n)
			if n > len(nodes) {
				if !errors.Is(err, ErrNoPlacement) {
					t.Errorf("%d nodes, repl %d: err %v, want ErrNoPlacement", len(nodes), n, err)
				}
				continue
			}
			if err != nil || len(got) != n {
				t.Fatalf("mask %b, repl %d: %d nodes, %v", mask, n, len(got), err)
			}
			seen, used := map[string]bool{}, map[string]bool{}
			for _, g := range got {
				if seen[g.ID] {
					t.Fatalf("mask %b, repl %d: %s chosen twice", mask, n, g.ID)
				}
				seen[g.ID], used[g.Zone] = true, true
			}
			if want := min(n, len(zones)); len(used) != want {
				t.Errorf("mask %b, repl %d: %d zones used, want %d", mask, n, len(used), want)
			}
		}
	}
}
