// Package connset is the accept loop and the connection bookkeeping that
// cairn's TCP servers share (blockdev/nbd, replication): listeners and live
// connections are tracked so that a shutdown can stop accepting, reach every
// connection and wait for all of them, and accept errors that pass (out of
// file descriptors, a connection reset before it was accepted, a timeout)
// are retried with backoff instead of ending the server.
package connset

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrClosed is what Serve returns once Close was called.
var ErrClosed = errors.New("connset: closed")

// Set tracks one server's listeners and connections. The zero value is
// ready to use. C is the server's connection type.
type Set[C comparable] struct {
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[C]struct{}
	wg        sync.WaitGroup // one per live connection goroutine
}

// Serve accepts connections on l until Close: each is made into a C by
// newConn and run by serve on a goroutine of its own. It returns ErrClosed
// after Close, or the accept error that cannot be retried. retried, if not
// nil, hears of each retried accept error and the wait before the next try.
func (s *Set[C]) Serve(l net.Listener, newConn func(net.Conn) C, serve func(C), retried func(err error, wait time.Duration)) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	if s.listeners == nil {
		s.listeners, s.conns = map[net.Listener]struct{}{}, map[C]struct{}{}
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.Closed() {
				return ErrClosed
			}
			if retryable(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				if retried != nil {
					retried(err, backoff)
				}
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		c := newConn(nc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return ErrClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// retryable reports the accept errors worth retrying: running out of file
// descriptors, a connection reset before it was accepted, timeouts.
func retryable(err error) bool {
	type temporary interface{ Temporary() bool }
	var t temporary
	if errors.As(err, &t) && t.Temporary() {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Closed reports whether Close was called.
func (s *Set[C]) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting: it closes every listener, and Serve refuses what
// it accepts from now on. It returns the connections still live, for the
// caller to wind down (Wait then waits for them).
func (s *Set[C]) Close() []C {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]C, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// Wait waits until every connection's serve has returned.
func (s *Set[C]) Wait() { s.wg.Wait() }
