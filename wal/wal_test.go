package wal_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/wal"
)

const regionBase = 8192

func newLog(t *testing.T, size int64) (*drive.Mem, wal.Region) {
	t.Helper()
	return drive.NewMem("mem0", regionBase+size+8192), wal.Region{Base: regionBase, Size: size}
}

// writeFrames appends frames with payload "frame-i" (padded to vary sizes),
// one write and one sync per frame, and returns the offset of each frame.
func writeFrames(t *testing.T, w *wal.Writer, from, n int) []int64 {
	t.Helper()
	var offs []int64
	for i := from; i < from+n; i++ {
		offs = append(offs, w.Position().Off)
		if err := w.Append(1, payloadFor(i)); err != nil {
			t.Fatal(err)
		}
		if err := w.Write(); err != nil {
			t.Fatal(err)
		}
		if err := w.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	return offs
}

func payloadFor(i int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("frame-%d;", i)), 1+i*37%900)
}

func replayAll(dev wal.Device, r wal.Region, logID uint64) ([][]byte, wal.Position, error) {
	var got [][]byte
	pos, err := wal.Replay(dev, r, logID, 1, func(typ wal.Type, seq uint64, p []byte) error {
		got = append(got, append([]byte(nil), p...))
		return nil
	})
	return got, pos, err
}

func TestReplayRoundTrip(t *testing.T) {
	dev, r := newLog(t, 1<<20)
	w := wal.NewWriter(dev, r, wal.Start(42, 1))
	writeFrames(t, w, 0, 20)
	got, pos, err := replayAll(dev, r, 42)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 20 {
		t.Fatalf("replayed %d frames, want 20", len(got))
	}
	for i, p := range got {
		if !bytes.Equal(p, payloadFor(i)) {
			t.Fatalf("frame %d payload differs", i)
		}
	}
	if pos != w.Position() {
		t.Fatalf("replay position %+v, writer at %+v", pos, w.Position())
	}
	// Continue writing after replay, replay again: the chain links.
	w2 := wal.NewWriter(dev, r, pos)
	writeFrames(t, w2, 20, 3)
	got, _, err = replayAll(dev, r, 42)
	if err != nil || len(got) != 23 {
		t.Fatalf("after continuing: %d frames, err %v", len(got), err)
	}
	// Another log id sees nothing.
	if got, _, _ := replayAll(dev, r, 43); len(got) != 0 {
		t.Fatalf("foreign log id replayed %d frames", len(got))
	}
}

// A crash while the last frame was being written leaves any prefix of it (or
// garbage) on disk: replay must stop quietly before it, at every byte offset.
func TestTornTailEveryOffset(t *testing.T) {
	dev, r := newLog(t, 1<<20)
	w := wal.NewWriter(dev, r, wal.Start(7, 1))
	offs := writeFrames(t, w, 0, 6)
	last := offs[len(offs)-1]
	end := last + wal.HeaderSize + int64(len(payloadFor(5))) // padding is not part of the frame
	good := dev.Bytes()
	for cut := last; cut < end; cut++ {
		for _, fill := range []byte{0x00, 0xA5} {
			b := append([]byte(nil), good...)
			for i := regionBase + cut; i < regionBase+end; i++ {
				b[i] = fill
			}
			torn := drive.NewMem("torn", int64(len(b)))
			torn.Poke(0, b)
			got, pos, err := replayAll(torn, r, 7)
			if err != nil {
				t.Fatalf("cut at %d fill %#x: %v", cut, fill, err)
			}
			if len(got) != 5 || pos.Off != last || pos.Seq != 6 {
				t.Fatalf("cut at %d fill %#x: %d frames, next at %d seq %d; want 5 at %d seq 6", cut, fill, len(got), pos.Off, pos.Seq, last)
			}
		}
	}
}

// A byte flipped in a frame that later frames prove durable is corruption,
// reported with its offset; it is never silently treated as the end.
func TestMidLogCorruption(t *testing.T) {
	dev, r := newLog(t, 1<<20)
	w := wal.NewWriter(dev, r, wal.Start(9, 1))
	offs := writeFrames(t, w, 0, 10)
	for _, c := range []struct{ frame, at int64 }{{0, 60}, {3, 20}, {3, 200}, {8, 3}} {
		k := c.frame
		b := dev.Bytes()
		at := regionBase + offs[k] + c.at
		b[at] ^= 0x40
		bad := drive.NewMem("bad", int64(len(b)))
		bad.Poke(0, b)
		_, _, err := replayAll(bad, r, 9)
		if !errors.Is(err, wal.ErrCorrupt) {
			t.Fatalf("flip in frame %d: err %v, want ErrCorrupt", k, err)
		}
		want := fmt.Sprintf("at offset %d ", regionBase+offs[k])
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Fatalf("flip in frame %d: error %q does not name offset %d", k, err, regionBase+offs[k])
		}
	}
}

// Frames written together and not yet synced may land in any order: a later
// one on disk without the earlier one is a torn tail, not corruption.
func TestUnsyncedReorderIsTorn(t *testing.T) {
	dev, r := newLog(t, 1<<20)
	w := wal.NewWriter(dev, r, wal.Start(5, 1))
	writeFrames(t, w, 0, 3)
	off := w.Position().Off
	for i := 3; i < 6; i++ {
		if err := w.Append(1, payloadFor(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Write(); err != nil {
		t.Fatal(err)
	}
	b := dev.Bytes()
	clear(b[regionBase+off : regionBase+off+wal.SectorSize]) // frame 3 lost, 4 and 5 landed
	d2 := drive.NewMem("reorder", int64(len(b)))
	d2.Poke(0, b)
	got, _, err := replayAll(d2, r, 5)
	if err != nil || len(got) != 3 {
		t.Fatalf("got %d frames, err %v; want 3, nil", len(got), err)
	}
}

func TestFullAndOversize(t *testing.T) {
	dev, r := newLog(t, 4*wal.SectorSize)
	w := wal.NewWriter(dev, r, wal.Start(1, 1))
	for i := 0; i < 4; i++ {
		if err := w.Append(1, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Append(1, []byte("x")); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("append to full log: %v", err)
	}
	if err := w.Append(1, make([]byte, wal.MaxPayload+1)); !errors.Is(err, wal.ErrTooBig) {
		t.Fatalf("oversize append: %v", err)
	}
}

// Many concurrent committers share rounds, and each returns only after a
// round that started after its call.
func TestCommitterGroups(t *testing.T) {
	var rounds, inRound atomic.Int64
	var mu sync.Mutex
	done := map[int]int64{} // caller → round counter when its call started
	c := wal.NewCommitter(func() error {
		if inRound.Add(1) != 1 {
			t.Error("rounds overlap")
		}
		rounds.Add(1)
		inRound.Add(-1)
		return nil
	})
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			before := rounds.Load()
			if err := c.Commit(); err != nil {
				t.Error(err)
			}
			if rounds.Load() <= before {
				t.Error("Commit returned before any round ran after it")
			}
			mu.Lock()
			done[i] = before
			mu.Unlock()
		}()
	}
	wg.Wait()
	if rounds.Load() >= 64 {
		t.Logf("no grouping observed (%d rounds for 64 commits)", rounds.Load())
	}
	// Failure is sticky.
	boom := errors.New("fsync failed")
	c2 := wal.NewCommitter(func() error { return boom })
	if err := c2.Commit(); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if err := c2.Commit(); !errors.Is(err, boom) {
		t.Fatalf("second commit after failure: %v", err)
	}
}

func TestRandomCrashReplay(t *testing.T) {
	seed := uint64(12345)
	rng := rand.New(rand.NewPCG(seed, 1))
	for iter := 0; iter < 200; iter++ {
		dev, r := newLog(t, 256<<10)
		dev.TearSize = 1
		w := wal.NewWriter(dev, r, wal.Start(77, 1))
		durable := 0
		written := 0
		for i := 0; i < 20; i++ {
			for j := rng.IntN(3); j >= 0; j-- {
				if err := w.Append(1, payloadFor(written)); err != nil {
					break
				}
				written++
			}
			if err := w.Write(); err != nil {
				t.Fatal(err)
			}
			if rng.IntN(2) == 0 {
				if err := w.Sync(); err != nil {
					t.Fatal(err)
				}
				durable = written
			}
		}
		dev.Crash(rng)
		got, _, err := replayAll(dev, r, 77)
		if err != nil {
			t.Fatalf("iter %d: %v", iter, err)
		}
		if len(got) < durable || len(got) > written {
			t.Fatalf("iter %d: replayed %d frames, durable %d written %d", iter, len(got), durable, written)
		}
		for i, p := range got {
			if !bytes.Equal(p, payloadFor(i)) {
				t.Fatalf("iter %d: frame %d wrong", iter, i)
			}
		}
	}
}

// On a sparse file drive the tail check skips holes (they read as zeros), but
// still finds a durable frame beyond a hole: frames lost to a punched range
// mid-log are corruption, not a torn tail.
func TestMidLogHoleInSparseFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.img")
	const size = 64 << 20
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	d, err := drive.OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r := wal.Region{Base: regionBase, Size: size - 2*regionBase}
	if next, ok := d.NextData(0); ok {
		t.Fatalf("empty sparse file: data at %d", next)
	}
	w := wal.NewWriter(d, r, wal.Start(5, 1))
	big := bytes.Repeat([]byte("x"), 256<<10)
	var offs []int64
	for i := range 30 {
		offs = append(offs, w.Position().Off)
		if err := w.Append(1, big); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 { // three synced batches: later frames prove earlier ones durable
			if err := w.Write(); err != nil {
				t.Fatal(err)
			}
			if err := w.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, pos, err := replayAll(d, r, 5); err != nil || pos.Seq != 31 {
		t.Fatalf("whole log: seq %d, err %v", pos.Seq, err)
	}
	// Frames 3..24 become a hole; frame 25 (written after frame 20 was synced) remains.
	from, to := regionBase+offs[3], regionBase+offs[25]
	if err := d.Zero(from, to-from); err != nil {
		t.Fatal(err)
	}
	if next, ok := d.NextData(from); !ok || next < to-wal.SectorSize {
		t.Fatalf("NextData(%d) = %d, %v: want the data at %d", from, next, ok, to)
	}
	_, _, err = replayAll(d, r, 5)
	if !errors.Is(err, wal.ErrCorrupt) {
		t.Fatalf("hole mid-log: err %v, want ErrCorrupt", err)
	}
	if want := fmt.Sprintf("at offset %d ", from); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name offset %d", err, from)
	}
}

// An I/O error while the tail check reads a later frame must stop recovery:
// taken as "not a frame", it would turn the mid-log corruption that frame
// proves into a torn tail that the next commit round overwrites.
func TestTailCheckReadErrorStopsReplay(t *testing.T) {
	dev, r := newLog(t, 1<<20)
	w := wal.NewWriter(dev, r, wal.Start(11, 1))
	offs := writeFrames(t, w, 0, 10)
	b := dev.Bytes()
	b[regionBase+offs[8]+60] ^= 0x40 // frame 8 is corrupt; frame 9 proves it was durable
	bad := drive.NewMem("bad", int64(len(b)))
	bad.Poke(0, b)
	last := regionBase + offs[9]
	// The tail check reads frame 9 twice: in its bulk chunk, then as a frame.
	bad.Inject(drive.Fault{Ops: drive.FaultRead, Off: last, Len: wal.SectorSize, Skip: 1, Count: 1})
	_, _, err := replayAll(bad, r, 11)
	if err == nil {
		t.Fatal("replay succeeded (a torn tail at frame 8), want the read error")
	}
	if errors.Is(err, wal.ErrCorrupt) || !errors.Is(err, drive.ErrIO) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("err %v: want drive.ErrIO and syscall.EIO, not wal.ErrCorrupt", err)
	}
	for _, want := range []string{"bad", fmt.Sprint(last)} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %q", err, want)
		}
	}
}

// Covering returns only once every change counted before it is durable,
// runs no round when nothing changed since the last one, and lets callers
// share rounds. Writers make a change (counted after it is complete), then
// ask for it to be covered; the round makes durable what was complete when
// it took its queue. Seeded; the goroutines interleave as they will.
func TestCommitterCovering(t *testing.T) {
	var mu sync.Mutex
	var counter atomic.Uint64
	made, durable := 0, 0 // REQUIRES mu: changes complete, changes durable
	var rounds atomic.Int64
	c := wal.NewCommitterCounting(func() error {
		rounds.Add(1)
		mu.Lock()
		taken := made
		mu.Unlock()
		time.Sleep(50 * time.Microsecond) // the sync
		mu.Lock()
		durable = max(durable, taken)
		mu.Unlock()
		return nil
	}, counter.Load)

	if err := c.Covering(counter.Load()); err != nil || rounds.Load() != 0 {
		t.Fatalf("nothing changed: err %v, %d rounds", err, rounds.Load())
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 300 {
				if rng.IntN(3) > 0 { // a change, complete, then counted
					mu.Lock()
					made++
					mu.Unlock()
					counter.Add(1)
				}
				g := counter.Load()
				if err := c.Covering(g); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if uint64(durable) < g {
					t.Errorf("Covering(%d) returned with %d changes durable", g, durable)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	before := rounds.Load()
	for range 10 {
		if err := c.Covering(counter.Load()); err != nil {
			t.Fatal(err)
		}
	}
	if rounds.Load() != before {
		t.Fatalf("%d rounds for flushes with nothing new", rounds.Load()-before)
	}
	t.Logf("%d rounds for %d changes and 2400 flushes", before, counter.Load())

	// A failed round is sticky for Covering too, changed or not.
	boom := errors.New("fsync failed")
	var n atomic.Uint64
	c2 := wal.NewCommitterCounting(func() error { return boom }, n.Load)
	n.Add(1)
	if err := c2.Covering(n.Load()); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if err := c2.Covering(0); !errors.Is(err, boom) {
		t.Fatalf("after a failed round: %v", err)
	}
}

// A caller whose gen a finished round covered returns at once, even while a
// later round runs: it needs nothing of that round (a server answers a
// flush that shared another's outcome this way, and rounds run back to
// back under load).
func TestCommitterCoveredNeedsNoRunningRound(t *testing.T) {
	var n atomic.Uint64
	block := make(chan struct{})
	var blocking atomic.Bool
	started := make(chan struct{}, 1)
	c := wal.NewCommitterCounting(func() error {
		if blocking.Load() {
			started <- struct{}{}
			<-block
		}
		return nil
	}, n.Load)
	n.Add(1)
	if err := c.Covering(1); err != nil {
		t.Fatal(err)
	}
	n.Add(1)
	blocking.Store(true)
	defer func() {
		select {
		case <-block:
		default:
			close(block) // a failed check must not leave round 2 stuck
		}
	}()
	second := make(chan error, 1)
	go func() { second <- c.Covering(2) }()
	<-started // round 2 runs
	done := make(chan error, 1)
	go func() { done <- c.Covering(1) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Covering(1) waited for a round it does not need")
	}
	close(block)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}
