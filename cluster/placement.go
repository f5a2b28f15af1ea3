package cluster

import (
	"fmt"
	"slices"
	"strings"
)

// PlaceRequest is what placement needs of a new volume, or of the
// replicas added to an existing one.
type PlaceRequest struct {
	Name       string
	Size       int64
	IOPriority string // "high", "medium", "low"; "" = low
	Placement  Placement
	// Exclude holds the ids of nodes that must not be chosen: the nodes
	// that already hold a replica, when one is added to an existing volume
	// (ha-update). Their zones and racks count as used, so the new replica
	// goes to another zone (rack) when there is one.
	Exclude []string
}

// maxReplicas bounds the n of PlaceReplicas: engine.MaxRepl, Portworx's
// limit (the cluster package does not import the engine).
const maxReplicas = 3

// priorityOrder is the engine's fallback (engine.choosePool): the class
// asked for, then the next lower one, then any.
var priorityOrder = map[string][]string{
	"high":   {"high", "medium", "low"},
	"medium": {"medium", "low", "high"},
	"low":    {"low", "medium", "high"},
}

// Place picks the node a new volume is created on: PlaceReplicas with
// n = 1.
func Place(nodes []Node, req PlaceRequest) (Node, error) {
	chosen, err := PlaceReplicas(nodes, req, 1)
	if err != nil {
		return Node{}, err
	}
	return chosen[0], nil
}

// PlaceReplicas picks n distinct nodes for a volume's replicas, best first,
// from the nodes as the cluster lists them.
//
// Candidates are the Online nodes that satisfy every constraint of
// req.Placement, have an Online pool of an io_priority class, and are not
// in req.Exclude.
//
// Each candidate has a rank. The io_priority decides first, with the
// engine's fallback: a node with a pool of the class asked for beats any
// without; then one with a pool of the next class, and so on. Then free
// space, of the node's best pool of its class: room for the whole size
// beats more free bytes without it; else the most free wins. Volumes are
// thin, so a node short of free space is still chosen when no candidate
// has room for the whole size (as a single node creates such a volume
// today); it only loses to one that has. Equal ranks go to the lower node
// id, so the same cluster always gets the same answer.
//
// The n nodes are chosen greedily, one at a time, so that replicas share
// as few failure domains as can be: at each step a node in a zone no chosen
// (or excluded) node is in wins; among those, one on a rack none is on;
// then the best rank. A rack is identified by its name alone, across zones
// (as Portworx treats rack labels). An empty zone or rack is a zone or rack
// like any other: all the nodes without a zone share the zone "", all
// those without a rack share the rack "". Spreading is a preference, not a
// requirement: two replicas go to one zone when no other zone has a
// candidate.
//
// n must be 1 to 3 (ErrInvalid). When there are fewer than n candidates
// the error (ErrNoPlacement) says how many there were and why each other
// node was not one.
func PlaceReplicas(nodes []Node, req PlaceRequest, n int) ([]Node, error) {
	what := fmt.Sprintf("create volume %q", req.Name)
	switch {
	case len(req.Exclude) > 0 && n == 1:
		what = fmt.Sprintf("add a replica to volume %q", req.Name)
	case len(req.Exclude) > 0:
		what = fmt.Sprintf("add %d replicas to volume %q", n, req.Name)
	case n != 1:
		what += fmt.Sprintf(" with repl %d", n)
	}
	if n < 1 || n > maxReplicas {
		return nil, errorf(ErrInvalid, "cannot %s: repl must be 1, 2 or 3", what)
	}
	order, ok := priorityOrder[req.IOPriority]
	if !ok {
		order = priorityOrder["low"]
	}
	pc := req.Placement
	var candidates []ranked
	var why []string
	for _, nd := range nodes {
		r, usable := rank(nd, order, req.Size)
		switch {
		case len(pc.Nodes) > 0 && !slices.Contains(pc.Nodes, nd.ID):
			continue // not asked for: not worth a word
		case slices.Contains(req.Exclude, nd.ID):
			why = append(why, fmt.Sprintf("node %s already holds a replica", nd.ID))
		case nd.Status != StatusOnline:
			why = append(why, fmt.Sprintf("node %s is %s", nd.ID, nd.Status))
		case len(pc.Zones) > 0 && !slices.Contains(pc.Zones, nd.Zone):
			why = append(why, fmt.Sprintf("node %s is in zone %s", nd.ID, nd.Zone))
		case len(pc.Racks) > 0 && !slices.Contains(pc.Racks, nd.Rack):
			why = append(why, fmt.Sprintf("node %s is on rack %s", nd.ID, nd.Rack))
		case !usable:
			why = append(why, fmt.Sprintf("node %s has no usable storage pool", nd.ID))
		default:
			candidates = append(candidates, r)
		}
	}
	for _, id := range pc.Nodes {
		if !slices.ContainsFunc(nodes, func(nd Node) bool { return nd.ID == id }) {
			why = append(why, fmt.Sprintf("node %s is not in the cluster", id))
		}
	}
	if len(candidates) < n {
		return nil, tooFew(what, candidates, pc, why)
	}

	zones, racks := map[string]bool{}, map[string]bool{}
	for _, nd := range nodes {
		if slices.Contains(req.Exclude, nd.ID) {
			zones[nd.Zone], racks[nd.Rack] = true, true
		}
	}
	// better says whether c is the next replica's node rather than o.
	better := func(c, o ranked) bool {
		if cz, oz := !zones[c.node.Zone], !zones[o.node.Zone]; cz != oz {
			return cz
		}
		if cr, or := !racks[c.node.Rack], !racks[o.node.Rack]; cr != or {
			return cr
		}
		return c.beats(o)
	}
	chosen := make([]Node, 0, n)
	for len(chosen) < n {
		best := 0
		for i := 1; i < len(candidates); i++ {
			if better(candidates[i], candidates[best]) {
				best = i
			}
		}
		nd := candidates[best].node
		chosen = append(chosen, nd)
		zones[nd.Zone], racks[nd.Rack] = true, true
		candidates = slices.Delete(candidates, best, best+1)
	}
	return chosen, nil
}

// ranked is a candidate node with what its rank is made of.
type ranked struct {
	node  Node
	class int   // index in the priority order of the first class it has a pool of
	free  int64 // free bytes of its best Online pool of that class
	fits  bool  // free >= the size asked for
}

// beats says whether r ranks above o (PlaceReplicas' rank).
func (r ranked) beats(o ranked) bool {
	switch {
	case r.class != o.class:
		return r.class < o.class
	case r.fits != o.fits:
		return r.fits
	case r.free != o.free:
		return r.free > o.free
	}
	return r.node.ID < o.node.ID
}

// rank ranks n for a volume of size bytes under the priority order, and
// says whether n has an Online pool of any class in it.
func rank(n Node, order []string, size int64) (ranked, bool) {
	for i, prio := range order {
		if free, ok := freeIn(n, prio); ok {
			return ranked{node: n, class: i, free: free, fits: free >= size}, true
		}
	}
	return ranked{}, false
}

// tooFew is the error of PlaceReplicas when there are fewer candidates
// than replicas: with none, "no Online node with a storage pool" (the
// words of Place since before replicas); else how many there are, which.
func tooFew(what string, candidates []ranked, pc Placement, why []string) error {
	if len(candidates) == 0 {
		if len(why) == 0 {
			why = append(why, "the cluster has no nodes")
		}
		return errorf(ErrNoPlacement, "cannot %s: no Online node with a storage pool%s: %s", what, describe(pc), strings.Join(why, "; "))
	}
	ids := make([]string, len(candidates))
	for i, c := range candidates {
		ids[i] = c.node.ID
	}
	slices.Sort(ids)
	eligible := fmt.Sprintf("%d eligible nodes", len(ids))
	if len(ids) == 1 {
		eligible = "1 eligible node"
	}
	msg := fmt.Sprintf("cannot %s: %s (%s)%s", what, eligible, strings.Join(ids, ", "), describe(pc))
	if len(why) > 0 {
		msg += ": " + strings.Join(why, "; ")
	}
	return errorf(ErrNoPlacement, "%s", msg)
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
