package replication

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cairn-storage/cairn/internal/atomicfile"
)

// epochState is one replica volume's fencing state, shared by every
// connection to that volume (the old coordinator's and the new one's).
//
// The invariant it keeps — the replica's half of fencing:
//
//	An epoch is in epoch only once it is durable in the state file, and it
//	is raised while fence is held for writing. So (1) no request of epoch E
//	is applied or acknowledged, nor a hello at E answered, before E is on
//	disk: a replica that restarts never accepts anything older than what it
//	already answered; and (2) every request of an older epoch that passed
//	its check has finished (it held fence for reading from its check to the
//	end of its I/O) before E is acknowledged to anyone, and none passes its
//	check afterwards.
//
// Requests take fence for reading, which costs an uncontended atomic in the
// steady state; only a new epoch — a new coordinator or an eviction, rare —
// takes it for writing, for one fsync.
type epochState struct {
	path    string
	cluster [16]byte
	volume  string

	fence sync.RWMutex
	epoch atomic.Uint64 // the durable epoch; raised only by advance

	// activity is the replica's activity log (activity.go): written by
	// MARK requests, which pass the epoch check like every other.
	activity *activityFile
}

// stateFile is the state file's content (JSON: small, rare, read by people
// when something went wrong). Part of the on-disk format — do not change
// without a new version.
type stateFile struct {
	Version int    `json:"version"`
	Cluster string `json:"cluster"`
	Volume  string `json:"volume"`
	Epoch   uint64 `json:"epoch"`
}

const stateFileVersion = 1

// validVolume reports whether v can name a state file: the daemon passes a
// volume id (hex) or name, and neither may climb out of the state directory.
func validVolume(v string) bool {
	if v == "" || v == "." || v == ".." || len(v) > MaxNameLen {
		return false
	}
	for _, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == '@'
		if !ok {
			return false
		}
	}
	return true
}

// loadEpochState reads volume's state file in dir; a missing file is epoch
// 0 (a replica that never served). A file that cannot be read or parsed, or
// that belongs to another cluster or volume, is an error: the replica must
// not serve on a forgotten epoch.
func loadEpochState(dir string, cluster [16]byte, volume string) (*epochState, error) {
	st := &epochState{path: filepath.Join(dir, volume+".epoch"), cluster: cluster, volume: volume, activity: newActivityFile(dir, volume)}
	b, err := os.ReadFile(st.path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("replication: epoch state of %s: %w", volume, err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("replication: epoch state %s is damaged: %w", st.path, err)
	}
	switch {
	case f.Version != stateFileVersion:
		return nil, fmt.Errorf("replication: epoch state %s has version %d (want %d)", st.path, f.Version, stateFileVersion)
	case f.Cluster != uuidString(cluster):
		return nil, fmt.Errorf("replication: epoch state %s belongs to cluster %s", st.path, f.Cluster)
	case f.Volume != volume:
		return nil, fmt.Errorf("replication: epoch state %s belongs to volume %q", st.path, f.Volume)
	}
	st.epoch.Store(f.Epoch)
	return st, nil
}

// advance makes e the durable epoch if it is newer. See the invariant on
// epochState. When it fails, the epoch is unchanged and the caller must
// neither apply nor acknowledge anything at e.
func (st *epochState) advance(e uint64) error {
	st.fence.Lock()
	defer st.fence.Unlock()
	if e <= st.epoch.Load() {
		return nil
	}
	b, err := json.Marshal(stateFile{Version: stateFileVersion, Cluster: uuidString(st.cluster), Volume: st.volume, Epoch: e})
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(st.path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("replication: recording epoch %d of %s: %w", e, st.volume, err)
	}
	st.epoch.Store(e)
	return nil
}

// admit checks a request's epoch, raising the durable one first when the
// request's is newer. On success it returns with fence held for reading:
// the caller applies the request, then calls st.fence.RUnlock. On a stale
// epoch it returns the durable one and a *StaleEpochError, holding nothing.
func (st *epochState) admit(e uint64) (uint64, error) {
	st.fence.RLock()
	cur := st.epoch.Load()
	if e > cur {
		st.fence.RUnlock()
		if err := st.advance(e); err != nil {
			return st.epoch.Load(), err
		}
		st.fence.RLock()
		cur = st.epoch.Load()
	}
	if e < cur {
		st.fence.RUnlock()
		return cur, &StaleEpochError{Sent: e, Epoch: cur}
	}
	return cur, nil
}

func uuidString(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
