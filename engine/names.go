package engine

import (
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Volume names are unique on a node, and stay so when a pool is missing.
//
// A pool's volumes are known only from its own metadata log, so a pool that
// cannot be opened (a drive missing, its log damaged) would take its names
// with it, and a name taken again meanwhile would collide when the pool came
// back. The Catalog remembers every volume's name and pool outside the pools:
// at Open, the names of volumes whose pool is not open stay taken and are
// listed as unavailable (with the reason) until the pool returns.
//
// A name found twice at Open (two pools, from any cause) never stops the
// node: each copy is served as NAME@poolN, which no valid name can be
// (ValidateName refuses '@'), and Status lists the duplicates. The aliases are
// not written anywhere; once the operator deletes one copy, the other gets
// its name back at the next start.

// Catalog keeps the node's volume names outside its pools (control keeps it
// in DATA_DIR/volumes.json). The engine saves the whole list after every
// change to the set of names; an entry is saved before the volume it names
// is committed, so a crash may leave a name the pools do not have (dropped
// at the next Open) but never a volume the catalog does not name.
type Catalog interface {
	Load() ([]CatalogEntry, error)
	Save([]CatalogEntry) error
}

// CatalogEntry is one volume or snapshot as the catalog remembers it. Its
// JSON shape is the catalog file's format.
type CatalogEntry struct {
	Name       string     `json:"name"`
	ID         string     `json:"id"`
	Pool       int        `json:"pool"`
	PoolUUID   string     `json:"pool_uuid"`
	IOPriority IOPriority `json:"io_priority"`
	Snapshot   bool       `json:"snapshot,omitempty"`
	Parent     string     `json:"parent,omitempty"`
}

// unavailableVolume is a catalog entry whose pool is not open.
type unavailableVolume struct {
	CatalogEntry
	served string // its name here: Name, or NAME@poolN when duplicated
	reason string
}

// DuplicateName is a volume name found in more than one pool at Open.
type DuplicateName struct {
	Name     string
	ServedAs []string // NAME@poolN, one per copy
}

// nameInPool names a volume by its own name and the uuid of its pool.
type nameInPool struct{ pool, name string }

// aliasFor is the name a copy of a duplicated volume is served under:
// NAME@poolN, with the pool uuid's first 8 digits added when two copies'
// pools have one number (a pool made while another was missing, before the
// catalog kept its number). It depends only on the copies, never on the
// order the drives were given, so an alias recorded in attachments.json or
// used by an NBD client names the same volume after a restart.
func aliasFor(name string, pool int, poolUUID string, numberShared bool) string {
	alias := fmt.Sprintf("%s@pool%d", name, pool)
	if numberShared {
		alias += "-" + poolUUID[:8]
	}
	return alias
}

// indexNames fills byName and unavailable from the open pools and the
// catalog, aliasing duplicates. Called once by Open, before anything is
// served. REQUIRES: e.mu held or e not yet shared.
func (e *Engine) indexNames(catalog []CatalogEntry) {
	open := map[string]bool{}
	for _, p := range e.pools {
		open[uuidString(p.uuid)] = true
	}
	var missing []unavailableVolume
	for _, c := range catalog {
		if !open[c.PoolUUID] && validUUID(c.PoolUUID) && c.Name != "" {
			missing = append(missing, unavailableVolume{CatalogEntry: c, reason: e.missingPoolReason(c)})
		}
	}
	// Every copy of every name: which pool numbers it is in, and how often.
	numbers := map[string]map[int]int{}
	copyOf := func(name string, pool int) {
		if numbers[name] == nil {
			numbers[name] = map[int]int{}
		}
		numbers[name][pool]++
	}
	for _, p := range e.pools {
		for _, v := range p.vols {
			copyOf(v.meta.name, p.number)
		}
	}
	for _, u := range missing {
		copyOf(u.Name, u.Pool)
	}
	e.aliases, e.duplicated = map[nameInPool]string{}, map[string]bool{}
	e.unavailable = map[string]*unavailableVolume{}
	dups := map[string][]string{}
	served := func(name string, pool int, poolUUID string) string {
		n := 0
		for _, c := range numbers[name] {
			n += c
		}
		if n < 2 {
			return name
		}
		alias := aliasFor(name, pool, poolUUID, numbers[name][pool] > 1)
		e.aliases[nameInPool{poolUUID, name}] = alias
		e.duplicated[name] = true
		dups[name] = append(dups[name], alias)
		return alias
	}
	for _, p := range e.pools {
		for _, v := range p.vols {
			v.served = served(v.meta.name, p.number, uuidString(p.uuid))
			e.byName[v.served] = v
		}
	}
	for i := range missing {
		u := &missing[i]
		u.served = served(u.Name, u.Pool, u.PoolUUID)
		e.unavailable[u.served] = u
	}
	for name, served := range dups {
		slices.Sort(served)
		e.duplicates = append(e.duplicates, DuplicateName{Name: name, ServedAs: served})
	}
	sort.Slice(e.duplicates, func(i, j int) bool { return e.duplicates[i].Name < e.duplicates[j].Name })
}

// validUUID reports whether s is a pool uuid as uuidString writes it (the
// catalog is a file an operator could edit).
func validUUID(s string) bool {
	if len(s) != 32 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// missingPoolReason says why c's pool is not open.
func (e *Engine) missingPoolReason(c CatalogEntry) string {
	for _, fp := range e.failedPools {
		if fp.UUID == c.PoolUUID {
			return fmt.Sprintf("pool %d (%s) could not be opened: %s", fp.ID, fp.IOPriority, strings.TrimPrefix(fp.Status, "Error: "))
		}
	}
	why := "none of its drives was given to this node"
	if len(e.refused) > 0 {
		why = "its drives are missing or were refused (see the refused drives in status)"
	}
	return fmt.Sprintf("pool %d (%s) is not on this node: %s", c.Pool, c.IOPriority, why)
}

// nameTakenLocked says whether a new volume may not be called name: a
// served volume, an unavailable one, or a name that is duplicated.
// REQUIRES: e.mu held.
func (e *Engine) nameTakenLocked(name string) error {
	if _, ok := e.byName[name]; ok {
		return fmt.Errorf("%w: volume or snapshot %q", ErrExists, name)
	}
	if u, ok := e.unavailable[name]; ok {
		return fmt.Errorf("%w: volume %q is unavailable (%s); its name stays taken until the pool is back (%w)", ErrUnavailable, name, u.reason, ErrExists)
	}
	if e.duplicated[name] {
		return fmt.Errorf("%w: volume %q is in more than one pool (served as %s@poolN, see status)", ErrExists, name, name)
	}
	return nil
}

// lookupLocked returns the volume served as name or, failing that, the one
// whose id (VolumeInfo.ID) it is, as pxctl takes either; or it says why
// there is none. No valid name looks like an id (ValidateName); names come
// first only for volumes made before that rule. Every entry point that
// takes a volume comes here.
// REQUIRES: e.mu held.
func (e *Engine) lookupLocked(name string) (*Volume, error) {
	if v, ok := e.byName[name]; ok {
		return v, nil
	}
	if u, ok := e.unavailable[name]; ok {
		return nil, fmt.Errorf("%w: volume %q is unavailable (%s)", ErrUnavailable, name, u.reason)
	}
	if e.duplicated[name] {
		return nil, fmt.Errorf("%w: volume %q is in more than one pool; name one copy as %s@poolN (see status)", ErrNotFound, name, name)
	}
	for _, v := range e.byName {
		if volumeID(v.meta.uid) == name { // uid never changes: no pool.mu needed
			return v, nil
		}
	}
	for _, u := range e.unavailable {
		if u.ID == name {
			return nil, fmt.Errorf("%w: volume %q (id %s) is unavailable (%s)", ErrUnavailable, u.served, name, u.reason)
		}
	}
	return nil, fmt.Errorf("%w: volume %q", ErrNotFound, name)
}

// catalogLocked lists every volume of the open pools, plus extra, plus the
// unavailable ones. REQUIRES: e.mu held.
func (e *Engine) catalogLocked(extra ...CatalogEntry) []CatalogEntry {
	var out []CatalogEntry
	for _, p := range e.pools {
		p.mu.Lock()
		for _, v := range p.vols {
			out = append(out, CatalogEntry{Name: v.meta.name, ID: volumeID(v.meta.uid), Pool: p.number,
				PoolUUID: uuidString(p.uuid), IOPriority: p.priority, Snapshot: v.meta.readOnly, Parent: v.meta.parent})
		}
		p.mu.Unlock()
	}
	out = append(out, extra...)
	for _, u := range e.unavailable {
		out = append(out, u.CatalogEntry)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Pool < out[j].Pool
	})
	return out
}

// saveCatalogLocked saves the catalog (with extra, for a volume about to
// be committed). REQUIRES: e.mu held.
func (e *Engine) saveCatalogLocked(extra ...CatalogEntry) error {
	if e.opts.Catalog == nil {
		return nil
	}
	err := e.opts.Catalog.Save(e.catalogLocked(extra...))
	if err != nil {
		err = fmt.Errorf("engine: saving the volume catalog: %w", err)
	}
	e.catalogErr = err
	return err
}

// entryFor is the catalog entry of a volume about to be made in p.
func entryFor(p *pool, m volumeMeta) CatalogEntry {
	return CatalogEntry{Name: m.name, ID: volumeID(m.uid), Pool: p.number, PoolUUID: uuidString(p.uuid),
		IOPriority: p.priority, Snapshot: m.readOnly, Parent: m.parent}
}

// servedParent is the name m's parent is served under in pool p. The
// aliases are fixed at Open, so no lock is needed.
func (e *Engine) servedParent(p *pool, m volumeMeta) string {
	return e.servedName(uuidString(p.uuid), m.parent)
}

func (e *Engine) servedName(poolUUID, name string) string {
	if alias, ok := e.aliases[nameInPool{poolUUID, name}]; ok {
		return alias
	}
	return name
}

// info describes an unavailable volume.
func (u *unavailableVolume) info(e *Engine) VolumeInfo {
	parent := e.servedName(u.PoolUUID, u.Parent)
	return VolumeInfo{ID: u.ID, Name: u.served, Pool: u.Pool, IOPriority: u.IOPriority, Snapshot: u.Snapshot,
		ReadOnly: u.Snapshot, Parent: parent, State: "unavailable: " + u.reason, Unavailable: true}
}
