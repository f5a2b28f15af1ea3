package nbd

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Handshake is the userspace half of a kernel NBD attach: it gets the
// export's size and flags, and an unknown export is refused.
func TestHandshake(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 64<<20)
	nc, err := net.Dial("unix", env.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	size, tflags, err := Handshake(nc, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if size != 64<<20 || tflags&TFlagHasFlags == 0 || tflags&TFlagSendFlush == 0 || tflags&TFlagReadOnly != 0 {
		t.Errorf("size %d, flags %#x", size, tflags)
	}
	if _, err := Dial("unix", env.sock, "missing"); err == nil {
		t.Error("handshake for an unknown export succeeded")
	}
}

// Client's calls from many goroutines at once: writes read back, trim
// zeroes, an error reply is a ReplyError that matches its errno, and after
// Close every call fails with ErrDisconnected.
func TestClient(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 8<<20)
	c, err := Dial("unix", env.sock, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 8<<20 {
		t.Fatalf("size %d", c.Size())
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := bytes.Repeat([]byte{byte(g + 1)}, 64<<10)
			off := int64(g) << 20
			if err := c.WriteAt(want, off, g%2 == 0); err != nil {
				t.Error(err)
				return
			}
			got := make([]byte, len(want))
			if err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
				t.Errorf("goroutine %d: read back %v, equal %v", g, err, bytes.Equal(got, want))
			}
		}()
	}
	wg.Wait()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(0, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Errorf("read after trim: %v, zeros %v", err, bytes.Equal(got, make([]byte, 4096)))
	}
	err = c.ReadAt(got, 8<<20) // past the end
	var re ReplyError
	if !errors.As(err, &re) || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("read past the end: %v, want a ReplyError of EINVAL", err)
	}
	c.Close()
	if err := c.ReadAt(got, 0); !errors.Is(err, ErrDisconnected) {
		t.Errorf("read after Close: %v, want ErrDisconnected", err)
	}
}
