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
//
// With a change counter (NewCommitterCounting), Covering lets a caller wait
// only for what it needs: the owner counts every change a round makes
// durable, after the change is complete; each round reads the counter as it
// begins, before it takes anything, so a round that read n covers every
// change counted up to n. A caller that saw the counter at n returns at once
// if a round that read n or more has succeeded — nothing it needs changed
// since (QEMU's block layer skips such flushes the same way: write_gen
// against flushed_gen), even while a later round runs; otherwise it waits
// for the running round, and leads the next if that one did not cover n.
type Committer struct {
	round func() error
	count func() uint64 // the owner's change counter; nil: none

	mu         sync.Mutex
	cond       sync.Cond
	started    uint64 // REQUIRES mu; rounds begun
	finished   uint64 // REQUIRES mu; rounds ended
	running    bool   // REQUIRES mu
	runningGen uint64 // REQUIRES mu; the counter as the running round began
	doneGen    uint64 // REQUIRES mu; the counter as the last round that succeeded began
	err        error  // REQUIRES mu; sticky
}

func NewCommitter(round func() error) *Committer { return NewCommitterCounting(round, nil) }

// NewCommitterCounting is NewCommitter with the owner's change counter
// (see Covering); count must be monotonic, start at 0 and be safe to call
// concurrently.
func NewCommitterCounting(round func() error, count func() uint64) *Committer {
	c := &Committer{round: round, count: count}
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
		c.lead()
	}
	return c.err
}

// Covering waits until a round that covers change gen of the counter
// (NewCommitterCounting) has succeeded, leading one if none will. Without
// a counter it is Commit.
func (c *Committer) Covering(gen uint64) error {
	if c.count == nil {
		return c.Commit()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil {
		switch {
		case c.doneGen >= gen:
			return nil // even while a later round runs: gen needs none of it
		case c.running:
			c.cond.Wait() // it may cover gen; if not, the next round will
		default:
			c.lead()
		}
	}
	return c.err
}

// lead runs one round. REQUIRES mu, held again on return; !c.running.
func (c *Committer) lead() {
	c.running = true
	c.started++
	r := c.started
	if c.count != nil {
		c.runningGen = c.count() // before the round takes anything
	}
	c.mu.Unlock()
	err := c.round()
	c.mu.Lock()
	c.running = false
	c.finished = r
	if err != nil && c.err == nil {
		c.err = err
	}
	if err == nil {
		c.doneGen = max(c.doneGen, c.runningGen)
	}
	c.cond.Broadcast()
}

// Err returns the sticky error of a failed round, if any.
func (c *Committer) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
