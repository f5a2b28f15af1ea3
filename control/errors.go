package control

import (
	"errors"
	"net/http"
	"strings"

	"github.com/cairn-storage/cairn/cloudsnap"
	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
)

// ErrDaemonUnreachable is returned by the Client when nothing answers at the
// daemon's address.
var ErrDaemonUnreachable = errors.New("control: cairn daemon not reachable")

// errorKind ties an engine sentinel to its HTTP status and its stable code in
// error bodies. The client maps codes back to the same sentinels, so callers
// on both sides of the wire test errors with errors.Is.
type errorKind struct {
	sentinel error
	status   int
	code     string
}

// errorKinds is checked in order; the first sentinel that matches wins.
var errorKinds = []errorKind{
	{engine.ErrNotFound, http.StatusNotFound, "not_found"},
	{engine.ErrExists, http.StatusConflict, "exists"},
	{engine.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
	{engine.ErrSticky, http.StatusConflict, "sticky"},
	{engine.ErrBusy, http.StatusConflict, "busy"},
	{engine.ErrShrink, http.StatusConflict, "shrink"},
	{engine.ErrHasSnapshots, http.StatusConflict, "has_snapshots"},
	{engine.ErrTooManySnaps, http.StatusConflict, "too_many_snapshots"},
	{engine.ErrReadOnly, http.StatusConflict, "read_only"},
	{engine.ErrDriveRefused, http.StatusConflict, "drive_refused"},
	{engine.ErrNoSpace, http.StatusInsufficientStorage, "no_space"},
	{engine.ErrNoPool, http.StatusInsufficientStorage, "no_pool"},
	{engine.ErrInvalid, http.StatusBadRequest, "invalid"},
	{engine.ErrOutOfRange, http.StatusBadRequest, "out_of_range"},
	{engine.ErrClosed, http.StatusServiceUnavailable, "closed"},
	{ErrStarting, http.StatusServiceUnavailable, "starting"},
	{cluster.ErrUnavailable, http.StatusServiceUnavailable, "kvdb_unavailable"},
	{cluster.ErrNotFound, http.StatusNotFound, "node_not_found"},
	{cluster.ErrOnline, http.StatusConflict, "node_online"},
	{cluster.ErrHasVolumes, http.StatusConflict, "node_has_volumes"},
	{cluster.ErrExists, http.StatusConflict, "cluster_exists"},
	{cluster.ErrInvalid, http.StatusBadRequest, "cluster_invalid"},
	{cloudsnap.ErrNotFound, http.StatusNotFound, "cloudsnap_not_found"},
	{cloudsnap.ErrCorrupt, http.StatusUnprocessableEntity, "cloudsnap_corrupt"},
	{cloudsnap.ErrWrongPassphrase, http.StatusForbidden, "wrong_passphrase"},
	{cloudsnap.ErrStore, http.StatusBadGateway, "store_error"},
	{cloudsnap.ErrInvalid, http.StatusBadRequest, "cloudsnap_invalid"},
	{cloudsnap.ErrConflict, http.StatusConflict, "cloudsnap_conflict"},
	{cluster.ErrConflict, http.StatusConflict, "conflict"},
	{cluster.ErrNoPlacement, http.StatusInsufficientStorage, "no_placement"},
	{ErrNodeUnreachable, http.StatusServiceUnavailable, "node_unreachable"},
	{ErrElsewhere, http.StatusConflict, "elsewhere"},
	{engine.ErrCorrupt, http.StatusInternalServerError, "corrupt"},
	{engine.ErrIO, http.StatusInternalServerError, "io"},
}

func kindOf(err error) errorKind {
	for _, k := range errorKinds {
		if errors.Is(err, k.sentinel) {
			return k
		}
	}
	return errorKind{status: http.StatusInternalServerError, code: "internal"}
}

// statusOfCode is the HTTP status an error of code is answered with.
func statusOfCode(code string) int {
	for _, k := range errorKinds {
		if k.code == code {
			return k.status
		}
	}
	return http.StatusInternalServerError
}

func sentinelForCode(code string) error {
	for _, k := range errorKinds {
		if k.code == code {
			return k.sentinel
		}
	}
	return nil
}

// plain renders an error for an operator: the package prefixes that wrapped
// sentinels carry ("engine: ") help in logs but are noise on a terminal. This
// is presentation only; errors are classified with errors.Is, never by text.
func plain(err error) string {
	return strings.NewReplacer("engine: ", "", "cluster: ", "", "cloudsnap: ", "").Replace(err.Error())
}

// Message is the line an operator reads for err, as the API words it: the
// CLI shows its own refusals (by the engine's rules) the same way.
func Message(err error) string { return reason(err) }

// APIError is an error response from the daemon.
type APIError struct {
	StatusCode int    // HTTP status
	Code       string // stable code, e.g. "not_found"
	Message    string // one line for an operator
}

func (e *APIError) Error() string { return e.Message }

// Is lets errors.Is(err, engine.ErrNotFound) work on the client side too.
func (e *APIError) Is(target error) bool {
	s := sentinelForCode(e.Code)
	return s != nil && s == target
}
