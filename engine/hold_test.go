package engine

import (
	"errors"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

func TestDescribeHolders(t *testing.T) {
	attached := Holder{Kind: HeldAttached, Device: "/dev/loop3"}
	mounted := Holder{Kind: HeldAttached, Device: "/dev/loop3", Mounts: []string{"/mnt/db"}}
	kernelNBD := Holder{Kind: HeldAttached, Device: "/dev/nbd0", ViaNBD: true}
	client := Holder{Kind: HeldByNBD}
	for _, tc := range []struct {
		holders []Holder
		want    string
	}{
		{[]Holder{attached}, "attached as /dev/loop3"},
		{[]Holder{mounted}, "attached as /dev/loop3, mounted on /mnt/db"},
		{[]Holder{client}, "1 NBD client connected"},
		{[]Holder{client, client}, "2 NBD clients connected"},
		// The kernel NBD client's own connection is not another client.
		{[]Holder{kernelNBD, client}, "attached as /dev/nbd0"},
		{[]Holder{kernelNBD, client, client}, "attached as /dev/nbd0; 1 NBD client connected"},
		{[]Holder{{Kind: HeldAttached}}, "being attached"},
	} {
		if got := DescribeHolders(tc.holders); got != tc.want {
			t.Errorf("DescribeHolders(%+v) = %q, want %q", tc.holders, got, tc.want)
		}
	}
}

// TestHoldsRefuseDeleteAndRestore: delete and restore are refused while any
// hold is taken, with the holder named, and allowed once every hold is
// released; a hold's description follows Set.
func TestHoldsRefuseDeleteAndRestore(t *testing.T) {
	e := memEngine(t, drive.NewMem("d0", 256<<20))
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSnapshot("v", "v.s"); err != nil {
		t.Fatal(err)
	}
	_, h, err := e.HoldVolume("v", Holder{Kind: HeldAttached})
	if err != nil {
		t.Fatal(err)
	}
	h.Set(Holder{Kind: HeldAttached, Device: "/dev/loop3", Mounts: []string{"/mnt/v"}})
	for _, err := range []error{e.RestoreVolume("v", "v.s"), e.DeleteVolume("v")} {
		var be *BusyError
		if !errors.As(err, &be) || !errors.Is(err, ErrBusy) || be.Volume != "v" || DescribeHolders(be.Holders) != "attached as /dev/loop3, mounted on /mnt/v" {
			t.Fatalf("refusal of a held volume: %v", err)
		}
	}
	if hs, _ := e.Holders("v"); len(hs) != 1 {
		t.Fatalf("holders %+v, want the one attachment", hs)
	}
	h.Release()
	h.Set(Holder{Kind: HeldByNBD}) // after Release: nothing
	if hs, _ := e.Holders("v"); len(hs) != 0 {
		t.Fatalf("holders after release: %+v", hs)
	}
	if err := e.RestoreVolume("v", "v.s"); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume("v.s"); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume("v"); err != nil {
		t.Fatal(err)
	}
}

// A replica that replication holds is never also used directly, nor the
// other way round: a direct writer would write around its coordinator.
func TestReplicationHoldExcludesDirectUse(t *testing.T) {
	e := memEngine(t, drive.NewMem("d0", 256<<20))
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	_, nbd, err := e.HoldVolume("v", Holder{Kind: HeldByNBD})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = e.HoldVolume("v", Holder{Kind: HeldByReplication})
	var be *BusyError
	if !errors.As(err, &be) || DescribeHolders(be.Holders) != "1 NBD client connected" {
		t.Fatalf("replication hold of a volume an NBD client uses: %v", err)
	}
	if _, second, err := e.HoldVolume("v", Holder{Kind: HeldAttached}); err != nil {
		t.Fatalf("two direct users: %v", err)
	} else {
		second.Release()
	}
	nbd.Release()
	_, repl, err := e.HoldVolume("v", Holder{Kind: HeldByReplication})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []HolderKind{HeldByNBD, HeldAttached} {
		if _, _, err := e.HoldVolume("v", Holder{Kind: k}); !errors.As(err, &be) || DescribeHolders(be.Holders) != "in use by the volume's coordinator (replication)" {
			t.Fatalf("direct hold (kind %d) of a replica: %v", k, err)
		}
	}
	if _, again, err := e.HoldVolume("v", Holder{Kind: HeldByReplication}); err != nil {
		t.Fatalf("two replication holds: %v", err)
	} else {
		again.Release()
	}
	repl.Release()

	// A restore holds the volume alone: no client while it fills, and no
	// restore into a volume in use.
	_, restore, err := e.HoldVolume("v", Holder{Kind: HeldByRestore})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []HolderKind{HeldByNBD, HeldAttached, HeldByReplication, HeldByRestore} {
		if _, _, err := e.HoldVolume("v", Holder{Kind: k}); !errors.As(err, &be) || DescribeHolders(be.Holders) != "being restored from a cloud snapshot" {
			t.Fatalf("hold (kind %d) of a volume being restored: %v", k, err)
		}
	}
	restore.Release()
	_, nbd, err = e.HoldVolume("v", Holder{Kind: HeldByNBD})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.HoldVolume("v", Holder{Kind: HeldByRestore}); !errors.Is(err, ErrBusy) {
		t.Fatalf("restore hold of a volume an NBD client uses: %v", err)
	}
	nbd.Release()
}
