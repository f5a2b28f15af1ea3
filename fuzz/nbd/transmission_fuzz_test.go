package nbdfuzz

import (
	"encoding/binary"
	"testing"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

// FuzzTransmission fuzzes the transmission phase against a real engine
// volume: a fixed, valid handshake (structured replies and base:allocation
// negotiated when the first input byte is odd, NBD_OPT_GO) followed by the
// fuzzed request stream. The server must not panic or hang and must close
// the connection once the bytes run out; the engine must stay consistent.
func FuzzTransmission(f *testing.F) {
	for _, s := range transmissionSeeds() {
		f.Add(s)
	}
	sock, eng := startEngineServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		structured := len(in) > 0 && in[0]&1 == 1
		if len(in) > 0 {
			in = in[1:]
		}
		stream(t, sock, append(handshake(structured), in...))
		if err := eng.Check(); err != nil {
			t.Fatalf("engine inconsistent after the stream: %v", err)
		}
	})
}

// clientFlags is what a client sends first: FIXED_NEWSTYLE | NO_ZEROES.
func clientFlags() []byte {
	return binary.BigEndian.AppendUint32(nil, nbd.ClientFlagFixedNewstyle|nbd.ClientFlagNoZeroes)
}

// handshake is the client's side of a fixed newstyle negotiation ending in
// NBD_OPT_GO for export "v".
func handshake(structured bool) []byte {
	hs := clientFlags()
	if structured {
		hs = nbd.AppendOption(hs, nbd.OptStructuredReply, nil)
		hs = nbd.AppendOption(hs, nbd.OptSetMetaContext, nbd.MetaContextData("v", nbd.MetaBaseAllocation))
	}
	return nbd.AppendOption(hs, nbd.OptGo, nbd.GoData("v"))
}

func transmissionSeeds() [][]byte {
	const h = 7 // handle
	s := []byte{1}
	s = append(nbd.AppendRequest(s, nbd.CmdWrite, nbd.CmdFlagFUA, h, 4096, 4096), make([]byte, 4096)...)
	s = nbd.AppendRequest(s, nbd.CmdRead, 0, h, 0, 8192)
	s = nbd.AppendRequest(s, nbd.CmdFlush, 0, h, 0, 0)
	s = nbd.AppendRequest(s, nbd.CmdTrim, 0, h, 1<<20, 1<<20)
	s = nbd.AppendRequest(s, nbd.CmdWriteZeroes, nbd.CmdFlagNoHole, h, 0, 65536)
	s = nbd.AppendRequest(s, nbd.CmdWriteZeroes, 0, h, 2<<20, 1<<20)
	s = nbd.AppendRequest(s, nbd.CmdBlockStatus, 0, h, 0, 4<<20)
	s = nbd.AppendRequest(s, nbd.CmdBlockStatus, nbd.CmdFlagReqOne, h, 0, 4<<20)
	s = nbd.AppendRequest(s, nbd.CmdRead, nbd.CmdFlagDF, h, 0, 65536)
	s = nbd.AppendRequest(s, nbd.CmdCache, 0, h, 0, 4096)
	s = nbd.AppendRequest(s, nbd.CmdRead, 0, h, 15<<20, 2<<20) // past the end
	s = nbd.AppendRequest(s, nbd.CmdBlockStatus+2, 0, h, 0, 0) // unknown command
	s = nbd.AppendRequest(s, nbd.CmdDisc, 0, h, 0, 0)
	simple := append([]byte{0}, s[1:]...)
	short := append(nbd.AppendRequest([]byte{0}, nbd.CmdWrite, 0, h, 0, 4096), "partial"...) // write payload cut short
	return [][]byte{s, simple, short, {1}, {0, 0x25, 0x60}}
}

// startEngineServer serves one 16 MiB engine volume "v" (on a crash-simulating
// memory drive) on a unix socket for the whole fuzz run.
func startEngineServer(f *testing.F) (string, *engine.Engine) {
	eng, err := engine.Open(engine.Options{NodeID: "fuzz", LogAreaSize: 256 << 10,
		Drives: []engine.DriveSpec{{Path: "mem0", Drive: drive.NewMem("mem0", 20<<20)}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { eng.Close() })
	if _, err := eng.CreateVolume(engine.VolumeSpec{Name: "v", Size: 16 << 20}); err != nil {
		f.Fatal(err)
	}
	return serve(f, engineExports{eng}, 16), eng
}

type engineExports struct{ eng *engine.Engine }

func (x engineExports) OpenExport(name string) (nbd.Export, func(), error) {
	v, h, err := x.eng.HoldVolume(name, engine.Holder{Kind: engine.HeldByNBD})
	if err != nil {
		return nil, nil, err
	}
	return v, h.Release, nil
}

func (x engineExports) ExportNames() []string { return []string{"v"} }
