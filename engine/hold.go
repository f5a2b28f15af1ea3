package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// A volume in use — an NBD client connected to its export, a block device
// on this host — is held. The engine is the one owner of that fact: every
// user takes a Hold (HoldVolume) that says what it is, DeleteVolume and
// RestoreVolume refuse a held volume with a *BusyError naming its holders,
// and the control plane words its refusals from that error.

// HolderKind is what holds a volume.
type HolderKind uint8

const (
	// HeldByNBD is one NBD client connection to the volume's export.
	HeldByNBD HolderKind = iota + 1
	// HeldAttached is a block device on this host.
	HeldAttached
	// HeldByReplication is a coordinator's connection to this replica (or
	// this node's own coordinator using it).
	HeldByReplication
	// HeldByRestore is a cloud snapshot being restored into the volume: no
	// one else may use it until the restore is done (a reader would see a
	// partial volume, a writer's data would be overwritten).
	HeldByRestore
)

// Holder describes one hold on a volume, for the messages that refuse to
// delete or restore it.
type Holder struct {
	Kind HolderKind
	// HeldAttached: the block device ("" while it is being set up), and
	// whether it is the kernel NBD client's — whose connection to the
	// export is also a HeldByNBD hold, not another client.
	Device string
	ViaNBD bool
	// HeldAttached: where filesystems on Device are mounted.
	Mounts []string
}

// holdSet is a volume's holds, each with its holder's description.
type holdSet map[*Hold]Holder

// Hold is one holder's claim on a volume, from HoldVolume until Release.
type Hold struct {
	v *Volume
}

// Set replaces the holder's description (an attachment gets its device, a
// filesystem is mounted from it). It does nothing after Release.
func (h *Hold) Set(holder Holder) {
	h.v.holdMu.Lock()
	defer h.v.holdMu.Unlock()
	if _, ok := h.v.holds[h]; ok {
		h.v.holds[h] = holder
	}
}

// Release ends the hold; later calls do nothing.
func (h *Hold) Release() {
	h.v.holdMu.Lock()
	defer h.v.holdMu.Unlock()
	delete(h.v.holds, h)
}

// hold adds a holder. The engine's HoldVolume takes it under e.mu, so a
// concurrent DeleteVolume either sees it or has already won.
//
// A volume that replication holds (a replica its coordinator writes) is
// never also used directly (an NBD client or an attachment of this
// engine's volume), nor the other way round: a direct writer would write
// around the coordinator, and the replicas would differ. Checked here,
// under the lock that adds the hold, so that a direct open racing the
// volume's first added replica (control's ha-update) is refused or refuses
// it.
func (v *Volume) hold(holder Holder) (*Hold, error) {
	h := &Hold{v: v}
	v.holdMu.Lock()
	defer v.holdMu.Unlock()
	for _, other := range v.holds {
		if (other.Kind == HeldByReplication) != (holder.Kind == HeldByReplication) ||
			other.Kind == HeldByRestore || holder.Kind == HeldByRestore {
			hs := make([]Holder, 0, len(v.holds))
			for _, o := range v.holds {
				hs = append(hs, o)
			}
			return nil, &BusyError{Volume: v.Name(), Holders: hs}
		}
	}
	if v.holds == nil {
		v.holds = holdSet{}
	}
	v.holds[h] = holder
	return h, nil
}

// holders lists the volume's holders, attachments first.
func (v *Volume) holders() []Holder {
	v.holdMu.Lock()
	out := make([]Holder, 0, len(v.holds))
	for _, holder := range v.holds {
		out = append(out, holder)
	}
	v.holdMu.Unlock()
	slices.SortFunc(out, func(a, b Holder) int {
		return cmp.Or(cmp.Compare(b.Kind, a.Kind), cmp.Compare(a.Device, b.Device))
	})
	return out
}

// busy is the refusal of an operation on a held volume, or nil.
func (v *Volume) busy() error {
	if hs := v.holders(); len(hs) > 0 {
		return &BusyError{Volume: v.Name(), Holders: hs}
	}
	return nil
}

// BusyError refuses an operation on a volume in use; errors.Is(err, ErrBusy).
type BusyError struct {
	Volume  string
	Holders []Holder
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%v: volume %q: %s", ErrBusy, e.Volume, DescribeHolders(e.Holders))
}

func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// DescribeHolders words what holds a volume: "attached as /dev/loop3,
// mounted on /mnt/db", "2 NBD clients connected", joined by "; ".
func DescribeHolders(hs []Holder) string {
	var parts []string
	for _, h := range hs {
		if h.Kind != HeldAttached {
			continue
		}
		s := "attached as " + h.Device
		if h.Device == "" {
			s = "being attached"
		}
		if len(h.Mounts) > 0 {
			s += ", mounted on " + strings.Join(h.Mounts, ", ")
		}
		parts = append(parts, s)
	}
	for _, h := range hs {
		if h.Kind == HeldByReplication {
			parts = append(parts, "in use by the volume's coordinator (replication)")
			break
		}
	}
	for _, h := range hs {
		if h.Kind == HeldByRestore {
			parts = append(parts, "being restored from a cloud snapshot")
			break
		}
	}
	switch n := NBDClients(hs); {
	case n == 1:
		parts = append(parts, "1 NBD client connected")
	case n > 1:
		parts = append(parts, fmt.Sprintf("%d NBD clients connected", n))
	}
	return strings.Join(parts, "; ")
}

// NBDClients counts the NBD clients among hs. A kernel NBD attachment's own
// connection is its attachment, not another client.
func NBDClients(hs []Holder) int {
	n := 0
	for _, h := range hs {
		switch {
		case h.Kind == HeldByNBD:
			n++
		case h.Kind == HeldAttached && h.ViaNBD:
			n--
		}
	}
	return max(n, 0)
}

// HoldVolume looks a volume up and holds it for holder in one step, so a
// concurrent DeleteVolume either sees the hold (and refuses) or wins and the
// lookup fails.
func (e *Engine) HoldVolume(name string, holder Holder) (*Volume, *Hold, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil, ErrClosed
	}
	v, err := e.lookupLocked(name)
	if err != nil {
		return nil, nil, err
	}
	h, err := v.hold(holder)
	if err != nil {
		return nil, nil, err
	}
	return v, h, nil
}

// Holders lists what holds a volume, attachments first (none: not in use).
func (e *Engine) Holders(name string) ([]Holder, error) {
	v, err := e.Volume(name)
	if err != nil {
		return nil, err
	}
	return v.holders(), nil
}
