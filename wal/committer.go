package wal

import "sync"

// Committer runs commit rounds so that many concurrent callers share one
// round (one fsync): group commit. A round is supplied by the owner of the log
// (the engine's pool: take queued records, sync data drives, write and sync
// frames).
//
// Contract: Commit returns after a round that started after Commit was called
// has finished. Rounds never overlap. A failed round is fatal: its error is
// returned by every later Commit (a failed fsync cannot be retried into
// success — the data it covered may already be gone).
type Committer struct {
	round func() error

	mu       sync.Mutex
	cond     sync.Cond
	started  uint64 // REQUIRES mu; rounds begun
	finished uint64 // REQUIRES mu; rounds ended
	running  bool   // REQUIRES mu
	err      error  // REQUIRES mu; sticky
}

func NewCommitter(round func() error) *Committer {
	c := &Committer{round: round}
	c.cond.L = &c.mu
	return c
}

// Commit waits for (or leads) a round that starts after this call.
func (c *Committer) Commit() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	target := c.started + 1
	for c.finished < target && c.err == nil {
		if c.running {
			c.cond.Wait()
			continue
		}
		c.running = true
		c.started++
		r := c.started
		c.mu.Unlock()
		err := c.round()
		c.mu.Lock()
		c.running = false
		c.finished = r
		if err != nil && c.err == nil {
			c.err = err
		}
		c.cond.Broadcast()
	}
	return c.err
}

// Err returns the sticky error of a failed round, if any.
func (c *Committer) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
