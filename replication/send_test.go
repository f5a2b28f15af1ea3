package replication

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
)

// TestSendMixedSizes has many callers on one connection at once, with
// writes below, at and above the send buffer's size (writeBufferSize), so
// that callers queue behind a sender, wait for room in the buffer, and
// write payloads straight from their own memory; every caller clears its
// buffer as soon as StartWriteAt returns, before the reply (the payload is
// the caller's again once it is sent). The volume must hold exactly what
// each wrote.
func TestSendMixedSizes(t *testing.T) {
	const volSize = 64 << 20
	e := newEngine(t, volSize, "v")
	v := volume(t, e, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{MaxInFlight: 16, Workers: 4})
	cfg := clientConfig(srv.addr, "v", 1)
	cfg.MaxInFlight = 16
	c := dial(t, cfg)
	ctx := context.Background()

	sizes := []int{4 << 10, 60 << 10, writeBufferSize - RequestHeaderLen, writeBufferSize, 1 << 20}
	const goroutines, rounds = 20, 6
	span := int64(volSize / goroutines)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := sizes[g%len(sizes)]
			for i := range rounds {
				off := int64(g)*span + int64(i)*int64(n)%(span-int64(n))/4096*4096
				want := pattern(n, byte(g*7+i))
				p := bytes.Clone(want)
				pending := c.StartWriteAt(p, off, false)
				clear(p) // sent: the buffer is the caller's again
				if err := pending.Wait(ctx); err != nil {
					errs <- err
					return
				}
				got := make([]byte, n)
				if err := v.ReadAt(got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, want) {
					errs <- fmt.Errorf("goroutine %d round %d: %d bytes at %d differ from what was written", g, i, n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
