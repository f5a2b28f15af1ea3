package cluster

import (
	"fmt"
	"slices"
	"strings"
)

// PlaceRequest is what placement needs of a new volume.
type PlaceRequest struct {
	Name       string
	Size       int64
	IOPriority string // "high", "medium", "low"; "" = low
	Placement  Placement
}

// priorityOrder is the engine's fallback (engine.choosePool): the class
// asked for, then the next lower one, then any.
var priorityOrder = map[string][]string{
	"high":   {"high", "medium", "low"},
	"medium": {"medium", "low", "high"},
	"low":    {"low", "medium", "high"},
}

// Place picks the node a new volume is created on, from the nodes as the
// cluster lists them. Only Online nodes that satisfy every constraint of
// req.Placement and have an Online pool are candidates. Among them the
// io_priority decides first, with the engine's fallback (a node with a
// pool of the class asked for beats any without); then free space: the
// node whose best pool of that class has the most free bytes. Volumes are
// thin, so a node short of free space is still chosen when no candidate has
// room for the whole size (as a single node creates such a volume today);
// it only loses to one that has.
//
// When no node is a candidate the error (ErrNoPlacement) names each node
// and what it lacked.
func Place(nodes []Node, req PlaceRequest) (Node, error) {
	order, ok := priorityOrder[req.IOPriority]
	if !ok {
		order = priorityOrder["low"]
	}
	pc := req.Placement
	var candidates []Node
	var why []string
	for _, n := range nodes {
		switch {
		case len(pc.Nodes) > 0 && !slices.Contains(pc.Nodes, n.ID):
			continue // not asked for: not worth a word
		case n.Status != StatusOnline:
			why = append(why, fmt.Sprintf("node %s is %s", n.ID, n.Status))
		case len(pc.Zones) > 0 && !slices.Contains(pc.Zones, n.Zone):
			why = append(why, fmt.Sprintf("node %s is in zone %s", n.ID, n.Zone))
		case len(pc.Racks) > 0 && !slices.Contains(pc.Racks, n.Rack):
			why = append(why, fmt.Sprintf("node %s is on rack %s", n.ID, n.Rack))
		case !hasOnlinePool(n):
			why = append(why, fmt.Sprintf("node %s has no usable storage pool", n.ID))
		default:
			candidates = append(candidates, n)
		}
	}
	for _, id := range pc.Nodes {
		if !slices.ContainsFunc(nodes, func(n Node) bool { return n.ID == id }) {
			why = append(why, fmt.Sprintf("node %s is not in the cluster", id))
		}
	}
	for _, prio := range order {
		best, bestFree, found := Node{}, int64(0), false
		for _, n := range candidates {
			free, ok := freeIn(n, prio)
			if !ok {
				continue
			}
			// Room for the whole size beats more free bytes without it;
			// else the most free wins.
			fits, bestFits := free >= req.Size, bestFree >= req.Size
			if !found || fits && !bestFits || fits == bestFits && free > bestFree {
				best, bestFree, found = n, free, true
			}
		}
		if found {
			return best, nil
		}
	}
	if len(why) == 0 {
		why = append(why, "the cluster has no nodes")
	}
	return Node{}, errorf(ErrNoPlacement, "cannot create volume %q: no Online node with a storage pool%s: %s", req.Name, describe(pc), strings.Join(why, "; "))
}

// freeIn returns the free bytes of n's Online pool of class prio with the
// most of them, and whether n has such a pool.
func freeIn(n Node, prio string) (int64, bool) {
	var best int64
	found := false
	for _, p := range n.Pools {
		if p.IOPriority != prio || p.Status != "Online" {
			continue
		}
		if free := p.Size - p.Used; !found || free > best {
			best, found = free, true
		}
	}
	return best, found
}

func hasOnlinePool(n Node) bool {
	return slices.ContainsFunc(n.Pools, func(p PoolSummary) bool { return p.Status == "Online" })
}

// describe words the constraints: " among nodes a, b in zone z1".
func describe(pc Placement) string {
	var b strings.Builder
	list := func(one, many string, vals []string) {
		switch len(vals) {
		case 0:
		case 1:
			fmt.Fprintf(&b, " %s %s", one, vals[0])
		default:
			fmt.Fprintf(&b, " %s %s", many, strings.Join(vals, ", "))
		}
	}
	list("among nodes", "among nodes", pc.Nodes)
	list("in zone", "in zones", pc.Zones)
	list("on rack", "on racks", pc.Racks)
	return b.String()
}
