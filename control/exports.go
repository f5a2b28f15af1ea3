package control

import (
	"errors"
	"sort"
	"sync/atomic"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/engine"
)

// Exports is the NBD server's catalogue: every volume and snapshot of the
// engine, exported under its name (snapshots read-only).
type Exports struct {
	engine *engine.Engine
	// locate, once set (SetLocate), says which node serves a name this
	// node does not have.
	locate atomic.Pointer[func(name string) error]
	// replicated, once set (SetReplicated), serves replicated volumes
	// through their coordinator.
	replicated atomic.Pointer[ReplicatedOpener]
}

// ReplicatedOpener opens a replicated volume's export through its
// coordinator; handled false leaves the name to the engine
// (Server.OpenReplicated).
type ReplicatedOpener func(name string) (exp nbd.Export, release func(), handled bool, err error)

// SetReplicated makes replicated volumes open through f; safe while serving.
func (x *Exports) SetReplicated(f ReplicatedOpener) { x.replicated.Store(&f) }

// SetLocate makes an unknown export's error name the node that serves it
// (Server.Locate); safe while serving.
func (x *Exports) SetLocate(f func(name string) error) { x.locate.Store(&f) }

func NewExports(e *engine.Engine) *Exports {
	return &Exports{engine: e}
}

// OpenExport implements nbd.Exports. The volume is held (an NBD client, in
// the engine's holders) for as long as the connection lives, so it cannot be
// deleted or restored under a client.
func (x *Exports) OpenExport(name string) (nbd.Export, func(), error) {
	if f := x.replicated.Load(); f != nil {
		if exp, release, handled, err := (*f)(name); handled {
			return exp, release, err
		}
	}
	v, h, err := x.engine.HoldVolume(name, engine.Holder{Kind: engine.HeldByNBD}) // an unknown name wraps engine.ErrNotFound
	if errors.Is(err, engine.ErrNotFound) {
		if f := x.locate.Load(); f != nil {
			if lerr := (*f)(name); lerr != nil {
				return nil, nil, lerr // wraps engine.ErrNotFound too: "unknown export", with the node to ask
			}
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return v, h.Release, nil
}

// ExportNames implements nbd.Exports (NBD_OPT_LIST), in name order.
func (x *Exports) ExportNames() []string {
	infos := x.engine.Volumes()
	names := make([]string, 0, len(infos))
	for _, info := range infos {
		names = append(names, info.Name)
	}
	sort.Strings(names)
	return names
}
