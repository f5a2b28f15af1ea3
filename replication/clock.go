package replication

import "time"

// Clock is the time a Client's request timeouts and a Coordinator's retries
// and resync throttle run on: the real one unless a config names another.
// The simulation tests drive a fake one, so that a partitioned request
// times out when the simulation says, not when the machine happens to be
// slow. Socket deadlines (a Client's hello) stay on real time.
type Clock interface {
	Now() time.Time
	// NewTicker is time.NewTicker: ch receives the time every d (dropping
	// ticks a slow receiver misses) until stop is called.
	NewTicker(d time.Duration) (ch <-chan time.Time, stop func())
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

// realClock is the Clock of production.
type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

func (realClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}
