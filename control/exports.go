package control

import (
	"sort"
	"sync"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/engine"
)

// Exports is the NBD server's catalogue: every volume and snapshot of the
// engine, exported under its name (snapshots read-only).
type Exports struct {
	engine *engine.Engine

	mu sync.Mutex
	// clients counts the open NBD connections per export, so the control
	// plane can refuse an operation that would fail half-way (volume delete
	// --force) before it changes anything. Protected by mu.
	clients map[string]int
}

func NewExports(e *engine.Engine) *Exports {
	return &Exports{engine: e, clients: map[string]int{}}
}

// OpenExport implements nbd.Exports. The volume is held for as long as the
// connection lives, so it cannot be deleted under a client (DeleteVolume
// returns ErrBusy).
func (x *Exports) OpenExport(name string) (nbd.Export, func(), error) {
	v, release, err := x.engine.HoldVolume(name) // an unknown name wraps engine.ErrNotFound
	if err != nil {
		return nil, nil, err
	}
	x.mu.Lock()
	x.clients[name]++
	x.mu.Unlock()
	var once sync.Once
	return v, func() {
		once.Do(func() {
			x.mu.Lock()
			if x.clients[name]--; x.clients[name] <= 0 {
				delete(x.clients, name)
			}
			x.mu.Unlock()
			release()
		})
	}, nil
}

// Clients is the number of NBD connections open to an export.
func (x *Exports) Clients(name string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.clients[name]
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
