package replication

import "sync"

// rangeLock keeps writes to overlapping byte ranges from being in flight
// together: the coordinator's side of the ordering contract (see the
// package doc), and what keeps a resync's copy of a region from racing a
// client write to it. Non-overlapping ranges never wait for each other.
//
// A coordinator has at most a few hundred writes in flight, so a slice
// scanned under one mutex is cheaper than a tree.
type rangeLock struct {
	mu     sync.Mutex
	held   []heldRange // REQUIRES mu
	waitCh chan struct{}
}

type heldRange struct{ off, end int64 }

// lock waits until no held range overlaps [off, off+n), then holds it.
// n ≤ 0 locks one byte (a range must be non-empty to conflict).
func (l *rangeLock) lock(off, n int64) {
	end := off + max(n, 1)
	l.mu.Lock()
	for l.overlaps(off, end) {
		if l.waitCh == nil {
			l.waitCh = make(chan struct{})
		}
		ch := l.waitCh
		l.mu.Unlock()
		<-ch
		l.mu.Lock()
	}
	l.held = append(l.held, heldRange{off, end})
	l.mu.Unlock()
}

func (l *rangeLock) overlaps(off, end int64) bool {
	for _, h := range l.held {
		if off < h.end && h.off < end {
			return true
		}
	}
	return false
}

// unlock releases a range lock took with the same arguments.
func (l *rangeLock) unlock(off, n int64) {
	end := off + max(n, 1)
	l.mu.Lock()
	for i, h := range l.held {
		if h.off == off && h.end == end {
			last := len(l.held) - 1
			l.held[i] = l.held[last]
			l.held = l.held[:last]
			break
		}
	}
	// Wake every waiter; each re-checks (a conflict is rare: NBD clients do
	// not overlap their writes, so this is the resync's path).
	if l.waitCh != nil {
		close(l.waitCh)
		l.waitCh = nil
	}
	l.mu.Unlock()
}
