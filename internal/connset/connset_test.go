package connset

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type tconn struct {
	nc   net.Conn
	done chan struct{}
}

// Close reaches every live connection, Wait waits for their goroutines,
// and Serve returns ErrClosed.
func TestServeCloseWait(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var s Set[*tconn]
	served := make(chan *tconn, 4)
	var finished atomic.Int32
	errc := make(chan error, 1)
	go func() {
		errc <- s.Serve(l, func(nc net.Conn) *tconn { return &tconn{nc: nc, done: make(chan struct{})} },
			func(c *tconn) {
				served <- c
				<-c.done
				finished.Add(1)
			}, nil)
	}()
	for range 3 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		<-served
	}
	live := s.Close()
	if len(live) != 3 {
		t.Fatalf("Close returned %d live connections, want 3", len(live))
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
	for _, c := range live {
		close(c.done)
	}
	s.Wait()
	if n := finished.Load(); n != 3 {
		t.Fatalf("Wait returned with %d of 3 connections finished", n)
	}
	if err := s.Serve(l, nil, nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve on a closed set: %v", err)
	}
}

// flakyListener fails its first Accept with EMFILE, then blocks until closed.
type flakyListener struct {
	net.Listener
	calls atomic.Int32
}

func (f *flakyListener) Accept() (net.Conn, error) {
	if f.calls.Add(1) == 1 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return f.Listener.Accept()
}

// Running out of file descriptors does not end the server: it retries.
func TestServeRetriesTemporaryErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: l}
	var s Set[net.Conn]
	var retries atomic.Int32
	errc := make(chan error, 1)
	go func() {
		errc <- s.Serve(fl, func(nc net.Conn) net.Conn { return nc }, func(nc net.Conn) { nc.Close() },
			func(error, time.Duration) { retries.Add(1) })
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for fl.calls.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	s.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve: %v", err)
	}
	if retries.Load() != 1 || fl.calls.Load() < 3 {
		t.Fatalf("%d retries, %d accepts: the EMFILE should be retried once and serving go on", retries.Load(), fl.calls.Load())
	}
	s.Wait()
}
