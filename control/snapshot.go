package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
)

// Snapshots, clones and restore: the API side of the engine's copy-on-write
// sharing. A snapshot is shown as a read-only volume (snapshot true, parent
// its volume, used its exclusive bytes); a clone as an ordinary volume whose
// parent is the snapshot it started from.

// SnapshotRequest is the body of POST /v1/volumes/{name}/snapshots.
type SnapshotRequest struct {
	Name string `json:"name,omitempty"` // "" = VOLUME.snap-<UTC timestamp>
}

// CloneRequest is the body of POST /v1/volumes/{snapshot}/clone.
type CloneRequest struct {
	Name string `json:"name"`
}

// RestoreRequest is the body of POST /v1/volumes/{name}/restore.
type RestoreRequest struct {
	Snapshot string `json:"snapshot"`
}

// DeleteResult is the reply of DELETE /v1/volumes/{name}?force=true: what
// was deleted, the volume's snapshots first and the volume last.
type DeleteResult struct {
	Deleted []string `json:"deleted"`
}

// SnapshotError is one failure of the snapshot scheduler, as status shows it.
type SnapshotError struct {
	Time     string `json:"time"` // RFC 3339
	Volume   string `json:"volume"`
	Snapshot string `json:"snapshot"` // the snapshot it tried to take or prune
	Op       string `json:"op"`       // "create", "prune" or "load" (the record)
	Error    string `json:"error"`
}

// SetScheduler makes status report the scheduler's failures.
func (s *Server) SetScheduler(sc *Scheduler) { s.scheduler = sc }

func (s *Server) snapshotRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/volumes/{name}/snapshots", s.createSnapshot)
	mux.HandleFunc("GET /v1/snapshots", s.listSnapshots)
	mux.HandleFunc("DELETE /v1/snapshots/{name}", s.deleteSnapshot)
	mux.HandleFunc("POST /v1/volumes/{name}/clone", s.cloneVolume)
	mux.HandleFunc("POST /v1/volumes/{name}/restore", s.restoreVolume)
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	if _, done := s.route(w, r, r.PathValue("name")); done {
		return
	}
	volume := s.volumeRef(r)
	var req SnapshotRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := s.SnapshotHeld(r.Context(), volume, req.Name)
	if err != nil {
		s.fail(w, r, shareError("snapshot", volume, req.Name, err))
		return
	}
	s.log.Info("snapshot created", "volume", volume, "snapshot", info.Name, "id", info.ID)
	reply(w, http.StatusCreated, s.volumeJSON(info.Name, volumeFromEngine(info)))
}

// SnapshotHeld takes a snapshot of a volume of this node (name "" = the
// default name) and registers it in the cluster: the API's snapshot
// create and the scheduler's.
func (s *Server) SnapshotHeld(ctx context.Context, volume, name string) (engine.VolumeInfo, error) {
	if name == "" {
		name = engine.DefaultSnapshotName(volume, time.Now())
	}
	if err := engine.ValidateName("snapshot", name); err != nil {
		return engine.VolumeInfo{}, err
	}
	if cfg := s.clusterOf(); cfg != nil {
		if sp, err := cfg.Member.Store().Volume(ctx, volume); err == nil && len(sp.Replicas) > 1 && !sp.Snapshot {
			return s.snapshotReplicated(ctx, sp, name)
		}
	}
	return s.createHeld(ctx, cluster.VolumeSpec{Name: name, Snapshot: true, Parent: volume, Repl: 1}, func() (engine.VolumeInfo, error) {
		return s.engine.CreateSnapshot(volume, name)
	})
}

// DeleteHeld deletes a snapshot (or volume) of this node and its spec:
// the scheduler's prune.
func (s *Server) DeleteHeld(ctx context.Context, name string) error {
	_, err := s.deleteHeld(ctx, []string{name}, func() ([]string, error) {
		if err := s.engine.DeleteVolume(name); err != nil {
			return nil, err
		}
		s.forget(name)
		return []string{name}, nil
	})
	return err
}

// CreateRestored makes a volume restored from a cloudsnap on this node
// (build creates and fills it) through createHeld: its name is reserved
// in the cluster, and stays creating while build fills it, so that no other
// node takes the name and nothing half-filled is listed ready; a build that
// fails gives the name back.
func (s *Server) CreateRestored(ctx context.Context, spec engine.VolumeSpec, build func() (engine.VolumeInfo, error)) (engine.VolumeInfo, error) {
	return s.createHeld(ctx, cluster.VolumeSpec{Name: spec.Name, Size: spec.Size, Repl: max(spec.Repl, 1)}, build)
}

// listSnapshots answers GET /v1/snapshots[?volume=NAME], oldest first.
func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	volume := r.URL.Query().Get("volume")
	if volume != "" {
		if _, done := s.route(w, r, volume); done {
			return
		}
	} else if cfg := s.clusterOf(); cfg != nil && r.Header.Get(forwardedHeader) == "" {
		all, done := s.listClustered(w, r, cfg, true)
		if done {
			return
		}
		if all != nil {
			out := []Volume{}
			for _, v := range all {
				if v.Snapshot {
					out = append(out, v)
				}
			}
			sort.SliceStable(out, func(i, j int) bool { return out[i].Created < out[j].Created })
			reply(w, http.StatusOK, out)
			return
		}
	}
	if volume != "" {
		v, err := s.engine.Volume(volume)
		if err != nil {
			s.fail(w, r, volumeError("list snapshots of", volume, err))
			return
		}
		if v.Info().Snapshot {
			s.fail(w, r, invalidf("%q is a snapshot; list the snapshots of its volume", volume))
			return
		}
		volume = v.Name() // it may have been given by id
	}
	out := []Volume{}
	for _, info := range s.engine.Snapshots(volume) {
		out = append(out, s.volumeJSON(info.Name, volumeFromEngine(info)))
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if _, done := s.route(w, r, r.PathValue("name")); done {
		return
	}
	name := s.volumeRef(r)
	v, err := s.engine.Volume(name)
	if err != nil {
		s.fail(w, r, snapshotNotFound(name, err))
		return
	}
	if !v.Info().Snapshot {
		s.fail(w, r, invalidf("%q is a volume, not a snapshot (delete volumes with cairn volume delete)", name))
		return
	}
	if err := s.DeleteHeld(r.Context(), name); err != nil {
		s.fail(w, r, snapshotOpError("delete", name, err))
		return
	}
	s.log.Info("snapshot deleted", "snapshot", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) cloneVolume(w http.ResponseWriter, r *http.Request) {
	spec, done := s.route(w, r, r.PathValue("name"))
	if done {
		return
	}
	snapshot := s.volumeRef(r)
	var req CloneRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := engine.ValidateName("clone", req.Name); err != nil {
		s.fail(w, r, shareError("clone", snapshot, req.Name, err))
		return
	}
	// A clone lives where its snapshot does: on this node, and on every
	// node holding a copy of a replicated volume's snapshot.
	var info engine.VolumeInfo
	var err error
	if spec != nil && len(spec.Replicas) > 1 {
		info, err = s.cloneReplicated(r.Context(), *spec, req.Name)
	} else {
		info, err = s.createHeld(r.Context(), cluster.VolumeSpec{Name: req.Name, Parent: snapshot, Repl: 1}, func() (engine.VolumeInfo, error) {
			return s.engine.CloneVolume(snapshot, req.Name)
		})
	}
	if err != nil {
		s.fail(w, r, shareError("clone", snapshot, req.Name, err))
		return
	}
	s.log.Info("volume cloned", "snapshot", snapshot, "name", info.Name, "id", info.ID)
	reply(w, http.StatusCreated, s.volumeJSON(info.Name, volumeFromEngine(info)))
}

func (s *Server) restoreVolume(w http.ResponseWriter, r *http.Request) {
	spec, done := s.route(w, r, r.PathValue("name"))
	if done {
		return
	}
	volume := s.volumeRef(r)
	var req RestoreRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Snapshot == "" {
		s.fail(w, r, invalidf("restore %q: name the snapshot to restore from", volume))
		return
	}
	restore := func() error { return s.engine.RestoreVolume(volume, req.Snapshot) }
	if spec != nil && len(spec.Replicas) > 1 {
		restore = func() error { return s.restoreReplicated(r.Context(), *spec, req.Snapshot) }
	}
	if err := restore(); err != nil {
		s.fail(w, r, restoreError(volume, req.Snapshot, err))
		return
	}
	s.log.Info("volume restored", "volume", volume, "snapshot", req.Snapshot)
	s.replyVolume(w, r, volume)
}

// deleteForce deletes a volume's snapshots and then the volume. Everything
// that can be checked up front is, so a refusal changes nothing: the volume
// must exist, not be sticky (its snapshots are kept) and neither it nor any
// of its snapshots may be in use. A client connecting between the check and
// the deletes can still make one fail; the error then names what was
// deleted.
func (s *Server) deleteForce(w http.ResponseWriter, r *http.Request, name string) {
	if s.scheduler != nil {
		defer s.scheduler.Pause(name)()
	}
	v, err := s.engine.Volume(name)
	if err != nil {
		s.fail(w, r, volumeError("delete", name, err))
		return
	}
	info := v.Info()
	var snaps []string
	if !info.Snapshot {
		for _, sn := range s.engine.Snapshots(name) {
			snaps = append(snaps, sn.Name)
		}
	}
	if info.Sticky {
		err := fmt.Errorf("%w: volume %q", engine.ErrSticky, name)
		msg := volumeError("delete", name, err).Error()
		if len(snaps) > 0 {
			msg += fmt.Sprintf("; its %d snapshot(s) are kept", len(snaps))
		}
		s.fail(w, r, &messageError{msg: msg, err: err})
		return
	}
	for _, n := range append(snaps, name) {
		if hs, _ := s.engine.Holders(n); len(hs) > 0 {
			what, todo := inUse(n, hs)
			s.fail(w, r, &messageError{
				msg: fmt.Sprintf("cannot delete volume %q: %s is in use: %s; %s first; nothing was deleted", name, n, what, todo),
				err: &engine.BusyError{Volume: n, Holders: hs},
			})
			return
		}
	}
	done, err := s.deleteHeld(r.Context(), append(snaps, name), func() ([]string, error) {
		var done []string
		for _, n := range snaps {
			if err := s.engine.DeleteVolume(n); err != nil {
				return done, &messageError{
					msg: fmt.Sprintf("cannot delete volume %q: deleting its snapshot %q failed: %s%s", name, n, plain(err), deletedSoFar(done)),
					err: err,
				}
			}
			s.forget(n)
			s.log.Info("snapshot deleted", "snapshot", n, "reason", "volume delete --force")
			done = append(done, n)
		}
		if err := s.engine.DeleteVolume(name); err != nil {
			e := volumeError("delete", name, err)
			return done, &messageError{msg: e.Error() + deletedSoFar(done), err: err}
		}
		s.forget(name)
		return append(done, name), nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("volume deleted", "name", name, "snapshots_deleted", len(snaps))
	reply(w, http.StatusOK, DeleteResult{Deleted: done})
}

// hasSnapshotsError names the snapshots that keep a volume from being deleted.
func (s *Server) hasSnapshotsError(name string, err error) error {
	var names []string
	for _, sn := range s.engine.Snapshots(name) {
		names = append(names, sn.Name)
	}
	return &messageError{
		msg: fmt.Sprintf("cannot delete volume %q: it has %d snapshot(s): %s; delete them first (cairn volume snapshot delete SNAP) or delete them with it (cairn volume delete %s --force)",
			name, len(names), strings.Join(names, ", "), name),
		err: err,
	}
}

func deletedSoFar(done []string) string {
	if len(done) == 0 {
		return "; nothing was deleted"
	}
	return fmt.Sprintf("; snapshots deleted before the failure: %s", strings.Join(done, ", "))
}

// forget drops what the node keeps about a deleted volume: its metrics,
// and a record of it that a restart could not restore (so that a new
// volume of that name is never attached in its place).
func (s *Server) forget(name string) {
	if s.metrics != nil {
		s.metrics.ForgetVolume(name)
	}
	if s.attacher != nil {
		s.attacher.ForgetDeleted(name)
	}
}

// forceParam reads ?force=; absent is false.
func forceParam(r *http.Request) (bool, error) {
	v := r.URL.Query().Get("force")
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, invalidf("force=%q: want true or false", v)
	}
	return b, nil
}

// shareError words a failed snapshot or clone: src is what is copied, name
// the new volume's name ("" for a default snapshot name).
func shareError(op, src, name string, err error) error {
	var msg string
	switch {
	case errors.Is(err, engine.ErrNotFound):
		if op == "clone" {
			msg = fmt.Sprintf("snapshot %q not found", src)
		} else {
			msg = fmt.Sprintf("volume %q not found", src)
		}
	case errors.Is(err, engine.ErrExists):
		msg = fmt.Sprintf("cannot %s %q: the name %q is taken by a volume or snapshot", op, src, name)
	case errors.Is(err, engine.ErrTooManySnaps):
		msg = fmt.Sprintf("cannot snapshot volume %q: it has %d snapshots, the most a volume can have; delete one first (cairn volume snapshot delete SNAP)", src, engine.MaxSnapshots)
	default:
		msg = fmt.Sprintf("cannot %s %q: %s", op, src, reason(err))
	}
	return &messageError{msg: msg, err: err}
}

// reason is an engine error's text without the sentinel's words where the
// rest of the text says it better ("invalid argument: "x" is a snapshot").
// Presentation only.
func reason(err error) string {
	msg := plain(err)
	for _, sentinel := range []error{engine.ErrInvalid, engine.ErrReadOnly} {
		if errors.Is(err, sentinel) {
			msg = strings.TrimPrefix(msg, plain(sentinel)+": ")
		}
	}
	return msg
}

func snapshotNotFound(name string, err error) error {
	if errors.Is(err, engine.ErrNotFound) {
		return &messageError{msg: fmt.Sprintf("snapshot %q not found", name), err: err}
	}
	return snapshotOpError("delete", name, err)
}

func snapshotOpError(op, name string, err error) error {
	var msg string
	switch {
	case errors.Is(err, engine.ErrNotFound):
		msg = fmt.Sprintf("snapshot %q not found", name)
	case errors.As(err, new(*engine.BusyError)):
		what, todo := inUse(name, holdersOf(err))
		msg = fmt.Sprintf("cannot %s snapshot %q: it is in use: %s; %s first", op, name, what, todo)
	default:
		msg = fmt.Sprintf("cannot %s snapshot %q: %s", op, name, plain(err))
	}
	return &messageError{msg: msg, err: err}
}

func restoreError(volume, snapshot string, err error) error {
	var msg string
	switch {
	case errors.As(err, new(*engine.BusyError)):
		what, todo := inUse(volume, holdersOf(err))
		msg = fmt.Sprintf("cannot restore volume %q: it is in use: %s; %s, then retry", volume, what, todo)
	case errors.Is(err, engine.ErrNotFound):
		msg = strings.TrimPrefix(plain(err), "not found: ") + " not found"
	default:
		msg = fmt.Sprintf("cannot restore volume %q from %q: %s", volume, snapshot, reason(err))
	}
	return &messageError{msg: msg, err: err}
}

// CreateSnapshot takes a snapshot of a volume; name "" = the default name.
func (c *Client) CreateSnapshot(ctx context.Context, volume, name string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/snapshots", SnapshotRequest{Name: name}, &v)
}

// Snapshots lists the snapshots of a volume ("" = of every volume), oldest first.
func (c *Client) Snapshots(ctx context.Context, volume string) ([]Volume, error) {
	path := "/v1/snapshots"
	if volume != "" {
		path += "?volume=" + url.QueryEscape(volume)
	}
	var vols []Volume
	return vols, c.do(ctx, http.MethodGet, path, nil, &vols)
}

// DeleteSnapshot deletes a snapshot; it refuses a volume.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(name), nil, nil)
}

// CloneVolume makes a writable volume name from a snapshot.
func (c *Client) CloneVolume(ctx context.Context, snapshot, name string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(snapshot)+"/clone", CloneRequest{Name: name}, &v)
}

// RestoreVolume makes a volume's content its snapshot's.
func (c *Client) RestoreVolume(ctx context.Context, volume, snapshot string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(volume)+"/restore", RestoreRequest{Snapshot: snapshot}, &v)
}

// DeleteVolumeForce deletes a volume's snapshots and then the volume, and
// returns the names deleted.
func (c *Client) DeleteVolumeForce(ctx context.Context, name string) ([]string, error) {
	var res DeleteResult
	err := c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name)+"?force=true", nil, &res)
	return res.Deleted, err
}

// AllVolumes lists volumes and snapshots.
func (c *Client) AllVolumes(ctx context.Context) ([]Volume, error) {
	var vols []Volume
	return vols, c.do(ctx, http.MethodGet, "/v1/volumes?all=true", nil, &vols)
}
