package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
)

// maxRequestBytes bounds a request body: no API body is anywhere near this.
// (What volumes may be called and hold is the engine's rule, engine/validate.go.)
const maxRequestBytes = 64 << 10

// invalidError is a request the control plane refuses by itself. Its text is
// the operator's message alone; it still matches engine.ErrInvalid, so it
// maps to 400 and clients can test it with errors.Is.
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == engine.ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// Server serves the management API over an engine.
type Server struct {
	engine  *engine.Engine
	node    *Node
	metrics *Metrics
	log     *slog.Logger
	// attacher, when set (SetAttacher), serves the host routes.
	attacher *Attacher
	// scheduler, when set (SetScheduler), has its failures in status.
	scheduler *Scheduler
	// cluster, once set (SetCluster, possibly while serving), serves the
	// cluster routes and the cluster summary in status.
	cluster atomic.Pointer[ClusterConfig]
	// cloudsnaps, when set (SetCloudsnaps), serves credentials and cloudsnaps.
	cloudsnaps *Cloudsnaps
	// busy are the volumes this node is changing (clustervol.go).
	busy busySet
	// repl is set once the node serves replicated volumes; coords are the
	// ones it coordinates now.
	repl   atomic.Pointer[ReplicationConfig]
	coords coordinators
	// peerClient talks to other nodes' APIs, made once (peers).
	peerOnce   sync.Once
	peerClient *http.Client
	// recon is the last reconciliation's report (reconcile.go).
	recon atomic.Pointer[ReconcileReport]
}

// NewServer returns the API server. metrics may be nil (no /metrics).
func NewServer(e *engine.Engine, node *Node, metrics *Metrics, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{engine: e, node: node, metrics: metrics, log: log}
}

// Handler routes the API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.getStatus)
	mux.HandleFunc("GET /v1/volumes", s.listVolumes)
	mux.HandleFunc("POST /v1/volumes", s.createVolume)
	mux.HandleFunc("POST /v1/internal/replicas", s.createReplica)
	mux.HandleFunc("DELETE /v1/internal/replicas/{name}", s.deleteReplica)
	mux.HandleFunc("POST /v1/internal/replicas/{name}/change", s.replicaChange)
	mux.HandleFunc("POST /v1/internal/replicas/{name}/clones", s.replicaClone)
	mux.HandleFunc("GET /v1/internal/coordinators/{name}", s.coordinatorStatus)
	mux.HandleFunc("POST /v1/internal/coordinators/{name}/snapshot", s.coordinatorSnapshot)
	mux.HandleFunc("POST /v1/internal/replicas/{name}/snapshots", s.replicaSnapshot)
	mux.HandleFunc("POST /v1/volumes/{name}/verify", s.verifyVolume)
	mux.HandleFunc("POST /v1/volumes/{name}/ha", s.haUpdate)
	mux.HandleFunc("GET /v1/volumes/{name}", s.getVolume)
	mux.HandleFunc("PATCH /v1/volumes/{name}", s.updateVolume)
	mux.HandleFunc("DELETE /v1/volumes/{name}", s.deleteVolume)
	mux.HandleFunc("POST /v1/drives", s.addDrive)
	s.snapshotRoutes(mux)
	s.attachRoutes(mux)
	s.clusterRoutes(mux)
	s.cloudsnapRoutes(mux)
	if s.metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			s.noRoute(mux, w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := s.starting(); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// noRoute answers a request no pattern matches in JSON, like every other
// error. The mux still decides between 404 and 405 (and sets Allow).
func (s *Server) noRoute(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{header: w.Header()}
	mux.ServeHTTP(rec, r)
	if rec.status == http.StatusMethodNotAllowed {
		reply(w, rec.status, errorBody{Error: fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path), Code: "method_not_allowed"})
		return
	}
	reply(w, http.StatusNotFound, errorBody{Error: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path), Code: "no_route"})
}

// statusRecorder keeps the status a handler writes and drops its body.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

func (s *Server) status(ctx context.Context) Status {
	st := s.engine.Status()
	out := Status{NodeID: st.NodeID, Status: statusWord(st), Cluster: s.node.Cluster(), Pools: poolsFromEngine(st), RefusedDrives: refusedFromEngine(st),
		DuplicateVolumes: duplicatesFromEngine(st), UnavailableVolumes: st.UnavailableVolumes, CatalogError: st.CatalogError, SnapshotErrors: []SnapshotError{},
		RestoreErrors: []RestoreError{}}
	if s.scheduler != nil {
		out.SnapshotErrors = s.scheduler.Errors()
	}
	if sum := s.clusterSummary(ctx); sum != nil {
		out.ClusterSummary = sum
		if !sum.Kvdb.Healthy || len(sum.UnregisteredVolumes) > 0 || len(sum.MissingVolumes) > 0 {
			out.Status = "degraded"
		}
	}
	if s.attacher != nil {
		rs := s.attacher.RestoreState()
		out.Restoring, out.RestoreErrors = rs.Pending, rs.Errors
		switch {
		case !rs.Done:
			out.Status = StatusStarting
		case len(rs.Errors) > 0:
			out.Status = "degraded"
		}
	}
	return out
}

// starting returns an ErrStarting error until the attachments of the
// previous run are restored (restore.go says what the node serves then).
func (s *Server) starting() error {
	if s.attacher == nil {
		return nil
	}
	if rs := s.attacher.RestoreState(); !rs.Done {
		return startingError(rs.Pending)
	}
	return nil
}

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, s.status(r.Context()))
}

// listVolumes answers GET /v1/volumes: the volumes (clones included), not
// their snapshots (GET /v1/snapshots), unless ?all=true.
func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) {
	all := false
	if v := r.URL.Query().Get("all"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.fail(w, r, invalidf("all=%q: want true or false", v))
			return
		}
		all = b
	}
	if cfg := s.clusterOf(); cfg != nil && r.Header.Get(forwardedHeader) == "" {
		out, done := s.listClustered(w, r, cfg, all)
		if done {
			return
		}
		if out != nil {
			reply(w, http.StatusOK, out)
			return
		}
	}
	infos := s.engine.Volumes()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	out := make([]Volume, 0, len(infos))
	for _, info := range infos {
		if info.Snapshot && !all {
			continue
		}
		out = append(out, s.volumeJSON(info.Name, volumeFromEngine(info)))
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) {
	var req CreateVolumeRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.checkCloudsnapSchedule(req.CloudsnapInterval, req.CloudsnapKeep); err != nil {
		s.fail(w, r, err)
		return
	}
	if cfg := s.clusterOf(); cfg != nil {
		s.createClustered(w, r, cfg, req)
		return
	}
	if req.Repl > 1 && req.Repl <= engine.MaxRepl {
		s.fail(w, r, volumeError("create", req.Name, fmt.Errorf("%w: repl %d needs %d nodes; this node has not joined its cluster", engine.ErrInvalid, req.Repl, req.Repl)))
		return
	}
	info, err := s.engine.CreateVolume(engine.VolumeSpec{
		Name: req.Name, Size: req.Size, Repl: req.Repl, IOPriority: engine.IOPriority(req.IOPriority), Sticky: req.Sticky,
		SnapInterval: req.SnapInterval, SnapKeep: req.SnapKeep, BlockSize: req.BlockSize,
	})
	if err != nil {
		s.fail(w, r, volumeError("create", req.Name, err))
		return
	}
	s.log.Info("volume created", "name", info.Name, "id", info.ID, "size", info.Size, "io_priority", info.IOPriority)
	if err := s.setCloudsnapSchedule(info.Name, setIfNonZero(req.CloudsnapInterval), setIfNonZero(req.CloudsnapKeep)); err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusCreated, s.volumeJSON(info.Name, volumeFromEngine(info)))
}

// volumeRef is the volume a request's path names. {name} is a volume's (or
// snapshot's) name or its id, as pxctl takes either; the engine resolves it
// and the handlers go on with the name. An unknown one comes back as given,
// for the handler's "not found".
func (s *Server) volumeRef(r *http.Request) string {
	ref := r.PathValue("name")
	if v, err := s.engine.Volume(ref); err == nil {
		return v.Name()
	}
	return ref
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) {
	spec, done := s.route(w, r, r.PathValue("name"))
	if done {
		return
	}
	name := s.volumeRef(r)
	v, err := s.engine.Volume(name)
	if errors.Is(err, engine.ErrNotFound) && spec != nil {
		// The cluster places it here and the drives lack it: show what
		// the cluster knows, and say so (reconcile reports it too).
		self := s.clusterOf()
		n := cluster.Node{NodeRecord: cluster.NodeRecord{ID: self.Member.ID(), MgmtAddr: self.MgmtAddr}, Status: cluster.StatusOnline}
		state := spec.State
		if state == cluster.VolumeReady {
			state = "missing: not on the drives of its node " + n.ID
		}
		reply(w, http.StatusOK, volumeFromSpec(*spec, n, state))
		return
	}
	if err != nil {
		s.fail(w, r, volumeError("inspect", name, err))
		return
	}
	reply(w, http.StatusOK, s.withReplicas(r.Context(), s.volumeJSON(name, volumeFromEngine(v.Info())), spec))
}

func (s *Server) updateVolume(w http.ResponseWriter, r *http.Request) {
	spec, done := s.route(w, r, r.PathValue("name"))
	if done {
		return
	}
	name := s.volumeRef(r)
	var req UpdateVolumeRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Size != nil && spec != nil && len(spec.Replicas) > 1 {
		if err := s.resizeReplicated(r.Context(), *spec, *req.Size); err != nil {
			s.fail(w, r, volumeError("resize", name, err))
			return
		}
	}
	if err := s.checkCloudsnapSchedule(deref(req.CloudsnapInterval), deref(req.CloudsnapKeep)); err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := s.engine.UpdateVolume(name, engine.VolumeUpdate{Size: req.Size, Sticky: req.Sticky, SnapInterval: req.SnapInterval, SnapKeep: req.SnapKeep})
	if err != nil {
		s.fail(w, r, volumeError("update", name, err))
		return
	}
	if err := s.recordUpdate(r.Context(), spec, info); err != nil {
		s.fail(w, r, fmt.Errorf("volume %q was updated on this node but the change is not recorded in the kvdb (it is, by itself, once the kvdb answers): %w", name, err))
		return
	}
	s.log.Info("volume updated", "name", name, "size", info.Size, "sticky", info.Sticky, "snap_interval", info.SnapInterval, "snap_keep", info.SnapKeep)
	if err := s.setCloudsnapSchedule(name, req.CloudsnapInterval, req.CloudsnapKeep); err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, s.volumeJSON(name, volumeFromEngine(info)))
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) {
	if _, done := s.route(w, r, r.PathValue("name")); done {
		return
	}
	name := s.volumeRef(r)
	force, err := forceParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if force {
		s.deleteForce(w, r, name)
		return
	}
	deleted, err := s.deleteHeld(r.Context(), []string{name}, func() ([]string, error) {
		if err := s.engine.DeleteVolume(name); err != nil {
			return nil, err
		}
		s.forget(name)
		return []string{name}, nil
	})
	if err != nil && len(deleted) > 0 {
		s.fail(w, r, err) // deleted, not recorded: the error says so
		return
	}
	if err != nil {
		if errors.Is(err, engine.ErrHasSnapshots) {
			s.fail(w, r, s.hasSnapshotsError(name, err))
			return
		}
		s.fail(w, r, volumeError("delete", name, err))
		return
	}
	s.log.Info("volume deleted", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) addDrive(w http.ResponseWriter, r *http.Request) {
	var req AddDriveRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Path == "" {
		s.fail(w, r, invalidf("drive path is empty"))
		return
	}
	spec := engine.DriveSpec{Path: req.Path, Force: req.Force}
	if req.IOPriority != "" {
		p, err := engine.ParseIOPriority(req.IOPriority)
		if err != nil {
			s.fail(w, r, &messageError{msg: fmt.Sprintf("cannot add drive %s: %s", req.Path, reason(err)), err: err})
			return
		}
		spec.IOPriority = p
	}
	if err := s.engine.AddDrive(spec); err != nil {
		s.fail(w, r, fmt.Errorf("cannot add drive %s: %w", req.Path, err))
		return
	}
	// The engine has the drive; remember it for the next start. Failing
	// here leaves a drive that is used now but forgotten on restart, so
	// say so loudly rather than pretend success.
	if err := s.node.RememberDrives(spec); err != nil {
		s.fail(w, r, fmt.Errorf("drive %s added but not recorded for the next start: %w", req.Path, err))
		return
	}
	s.log.Info("drive added", "path", req.Path, "io_priority", req.IOPriority)
	reply(w, http.StatusOK, s.status(r.Context()))
}

// volumeError words an engine error about a volume for an operator. The
// engine's own text (with its details) is kept for the cases without a
// better sentence; the sentinel stays reachable with errors.Is either way.
func volumeError(op, name string, err error) error {
	var msg string
	switch {
	case errors.Is(err, engine.ErrNotFound):
		msg = fmt.Sprintf("volume %q not found", name)
	case errors.Is(err, engine.ErrUnavailable): // its pool is missing; the engine says which and why
		msg = fmt.Sprintf("cannot %s volume %q: %s", op, name, strings.TrimPrefix(plain(err), "volume unavailable: "))
	case errors.Is(err, engine.ErrExists):
		msg = fmt.Sprintf("volume %q already exists", name)
	case errors.Is(err, engine.ErrSticky):
		msg = fmt.Sprintf("cannot %s volume %q: sticky volume: turn sticky off first (cairn volume update %s --sticky off)", op, name, name)
	case errors.Is(err, engine.ErrShrink):
		msg = fmt.Sprintf("cannot shrink volume %q: volumes can only grow", name)
	case errors.As(err, new(*engine.BusyError)):
		what, todo := inUse(name, holdersOf(err))
		msg = fmt.Sprintf("cannot %s volume %q: it is in use: %s; %s first", op, name, what, todo)
	case errors.Is(err, engine.ErrInvalid):
		msg = fmt.Sprintf("cannot %s volume %q: %s", op, name, reason(err))
	default:
		msg = fmt.Sprintf("cannot %s volume %q: %s", op, name, plain(err))
	}
	return &messageError{msg: msg, err: err}
}

// holdersOf returns what holds the volume a refusal (*engine.BusyError) is about.
func holdersOf(err error) []engine.Holder {
	var be *engine.BusyError
	if errors.As(err, &be) {
		return be.Holders
	}
	return nil
}

// inUse words what holds a volume (the engine's holders, the one record of
// it) and what the operator does about it: "attached as /dev/loop3, mounted
// on /mnt/db" and "unmount it (cairn host unmount db /mnt/db)".
func inUse(name string, hs []engine.Holder) (what, todo string) {
	var todos []string
	for _, h := range hs {
		if h.Kind != engine.HeldAttached {
			continue
		}
		if len(h.Mounts) > 0 {
			todos = append(todos, fmt.Sprintf("unmount it (cairn host unmount %s %s)", name, h.Mounts[0]))
		} else {
			todos = append(todos, fmt.Sprintf("detach it (cairn host detach %s)", name))
		}
	}
	if engine.NBDClients(hs) > 0 {
		todos = append(todos, "disconnect its NBD clients")
	}
	if slices.ContainsFunc(hs, func(h engine.Holder) bool { return h.Kind == engine.HeldByReplication }) {
		todos = append(todos, fmt.Sprintf("close it where it is open, or wait for its replica copy to end (cairn volume inspect %s)", name))
	}
	if slices.ContainsFunc(hs, func(h engine.Holder) bool { return h.Kind == engine.HeldByRestore }) {
		todos = append(todos, fmt.Sprintf("wait for its restore to end (cairn cloudsnap status %s)", name))
	}
	return engine.DescribeHolders(hs), strings.Join(todos, " and ")
}

// messageError replaces an error's text and keeps it for errors.Is.
type messageError struct {
	msg string
	err error
}

func (e *messageError) Error() string { return e.msg }
func (e *messageError) Unwrap() error { return e.err }

// decode reads a JSON body, refusing unknown fields (a typo in a script
// should fail, not be ignored) and bodies beyond maxRequestBytes.
func decode(r *http.Request, into any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		if errors.Is(err, io.EOF) {
			return invalidf("empty request body")
		}
		return invalidf("request body: %v", err)
	}
	return nil
}

func reply(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(body) // the client went away; nothing to do
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	k := kindOf(err)
	if k.status >= 500 && !errors.Is(err, ErrStarting) {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	reply(w, k.status, errorBody{Error: plain(err), Code: k.code})
}
