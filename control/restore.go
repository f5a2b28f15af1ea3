package control

import (
	"errors"
	"fmt"
)

// ErrStarting is a request the node cannot serve yet: it is still attaching
// and mounting what was attached before the restart (503, code "starting").
var ErrStarting = errors.New("control: node is starting")

// StatusStarting is Status.Status while the node restores its attachments.
const StatusStarting = "starting"

// A node is ready once Attacher.Restore has finished: every attachment and
// mount recorded by the previous run is back, or has failed and is listed in
// Status.RestoreErrors. Until then:
//   - GET /v1/status answers 200 with status "starting" and the number of
//     attachments still to restore; `cairn status` exits non-zero.
//   - Every other GET is served (reading is harmless).
//   - Every change (POST, PATCH, DELETE) is refused with ErrStarting: a
//     delete or restore racing the restore of the same volume would leave
//     either the operator's request or the restore half done.
// A failed restore does not keep the node starting: it is ready (degraded),
// and the failures are listed first in `cairn status`. What failed (or was
// not reached before a stop) stays in attachments.json for the next start,
// until host detach or host unmount forgets it (Attacher.pending).

// RestoreError is one attachment or mount of the previous run that could not
// be restored at start.
type RestoreError struct {
	Volume string `json:"volume"`
	Path   string `json:"path"` // the mount point; "" when the attach failed
	Error  string `json:"error"`
}

// RestoreState is how far Restore has come.
type RestoreState struct {
	Done    bool           // Restore has finished: the node is ready
	Pending int            // attachments not yet restored (or failed)
	Errors  []RestoreError // what could not be restored
}

// RestoreState returns how far Restore has come. Before Restore runs, the
// node is starting.
func (a *Attacher) RestoreState() RestoreState {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.restore
	st.Errors = append([]RestoreError{}, st.Errors...)
	return st
}

// restoreBegin records how many attachments Restore has to bring back.
func (a *Attacher) restoreBegin(n int) {
	a.mu.Lock()
	a.restore.Pending = n
	a.mu.Unlock()
}

// restoreFailed records an attachment (path "") or a mount that could not
// be restored.
func (a *Attacher) restoreFailed(volume, path string, err error) {
	a.mu.Lock()
	a.restore.Errors = append(a.restore.Errors, RestoreError{Volume: volume, Path: path, Error: plain(err)})
	a.mu.Unlock()
}

// restoreNext records that one attachment is restored (or failed).
func (a *Attacher) restoreNext() {
	a.mu.Lock()
	a.restore.Pending--
	a.mu.Unlock()
}

// restoreEnd marks the node ready.
func (a *Attacher) restoreEnd() {
	a.mu.Lock()
	a.restore.Done, a.restore.Pending = true, 0
	a.mu.Unlock()
}

// Ready returns nil when the node is ready, and an error matching
// ErrStarting that says what it waits for while it is starting.
func (st Status) Ready() error {
	if st.Status != StatusStarting {
		return nil
	}
	return startingError(st.Restoring)
}

func startingError(pending int) error {
	msg := "node is starting"
	switch {
	case pending == 1:
		msg += ": restoring 1 attachment"
	case pending > 1:
		msg += fmt.Sprintf(": restoring %d attachments", pending)
	}
	return &messageError{msg: msg, err: ErrStarting}
}
