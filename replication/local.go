package replication

import (
	"fmt"
	"sync/atomic"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cespare/xxhash/v2"
)

// Local is a node's own replica of a volume as the node's coordinator
// drives it: the engine volume behind the same epoch state the Server
// checks remote requests against. So the hello of a newer coordinator on
// another node fences this node's own writes as well as its remote ones: an
// old coordinator cannot go on writing to the replica on its own drives.
type Local struct {
	vol     Volume
	st      *epochState
	epoch   atomic.Uint64
	release func()
}

// OpenLocal opens this node's replica of volume for a coordinator at epoch,
// making epoch durable first (as a hello would). A replica that has seen a
// newer epoch refuses with a *StaleEpochError.
func (s *Server) OpenLocal(volume string, epoch uint64) (*Local, error) {
	st, err := s.epochState(volume)
	if err != nil {
		return nil, err
	}
	if _, err := st.admit(epoch); err != nil {
		return nil, err
	}
	st.fence.RUnlock()
	v, release, err := s.vols.OpenReplica(volume)
	if err != nil {
		return nil, err
	}
	l := &Local{vol: v, st: st, release: release}
	l.epoch.Store(epoch)
	return l, nil
}

// RaiseEpoch makes epoch the durable epoch of this node's replica of
// volume when it is newer, once the requests of older epochs in flight are
// done: from then on requests of an older coordinator are refused. For a
// change of every replica while no coordinator serves the volume (a
// restore, a resize). An older epoch than the replica's fails with a
// *StaleEpochError.
func (s *Server) RaiseEpoch(volume string, epoch uint64) error {
	st, err := s.epochState(volume)
	if err != nil {
		return err
	}
	if _, err := st.admit(epoch); err != nil {
		return err
	}
	st.fence.RUnlock()
	return nil
}

// SetEpoch makes later requests carry e; it never lowers the epoch.
func (l *Local) SetEpoch(e uint64) {
	for {
		cur := l.epoch.Load()
		if e <= cur || l.epoch.CompareAndSwap(cur, e) {
			return
		}
	}
}

// Size is the replica volume's size.
func (l *Local) Size() int64 { return l.vol.Size() }

// enter checks the coordinator's epoch against the replica's, as the
// Server's execute does, and holds the fence until exit: no closure, so a
// write allocates nothing.
func (l *Local) enter() error {
	_, err := l.st.admit(l.epoch.Load())
	return err
}

func (l *Local) exit() { l.st.fence.RUnlock() }

func (l *Local) WriteAt(p []byte, off int64, fua bool) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	return l.vol.WriteAt(p, off, fua)
}

// WriteAtDeferWriteback is WriteAt leaving the write's write-back to
// StartWriteback, on a volume that starts it early (deferredWriteback).
func (l *Local) WriteAtDeferWriteback(p []byte, off int64, fua bool) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	if wb, ok := l.vol.(deferredWriteback); ok {
		return wb.WriteAtDeferWriteback(p, off, fua)
	}
	return l.vol.WriteAt(p, off, fua)
}

// StartWriteback starts the write-back of a range written with
// WriteAtDeferWriteback (a hint: it changes nothing that is read).
func (l *Local) StartWriteback(off, n int64) {
	if wb, ok := l.vol.(deferredWriteback); ok {
		wb.StartWriteback(off, n)
	}
}

func (l *Local) ReadAt(p []byte, off int64) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	return l.vol.ReadAt(p, off)
}

func (l *Local) Flush() error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	return l.vol.Flush()
}

func (l *Local) Trim(off, n int64, fua bool) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	if err := l.vol.Trim(off, n); err != nil || !fua {
		return err
	}
	return l.vol.Flush()
}

func (l *Local) WriteZeroes(off, n int64, noHole, fua bool) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	if err := l.vol.WriteZeroes(off, n, noHole); err != nil || !fua {
		return err
	}
	return l.vol.Flush()
}

// setActivity replaces the replica's activity log with s, durably (as a
// MARK does).
func (l *Local) setActivity(s activitySet) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	return l.st.activity.store(s)
}

// activity reads the replica's activity log (as ACTIVITY does).
func (l *Local) activity() (activitySet, error) {
	if err := l.enter(); err != nil {
		return activitySet{}, err
	}
	defer l.exit()
	return l.st.activity.load(activityExtents(l.vol.Size()))
}

// Checksum is the xxhash64 of n bytes at off (as Client.Checksum).
func (l *Local) Checksum(off, n int64) (uint64, error) {
	if n < 0 || n > MaxPayload {
		return 0, fmt.Errorf("%w: checksum of %d bytes (limit %d)", ErrInvalid, n, MaxPayload)
	}
	buf := drive.GetBuffer(int(n))
	defer drive.PutBuffer(buf)
	if err := l.ReadAt(buf.B[:n], off); err != nil {
		return 0, err
	}
	return xxhash.Sum64(buf.B[:n]), nil
}

// Volume is the engine volume behind the fence (for what the coordinator
// asks of it outside the data path: its extents).
func (l *Local) Volume() Volume { return l.vol }

// Close releases the volume.
func (l *Local) Close() error {
	if l.release != nil {
		l.release()
		l.release = nil
	}
	return nil
}
