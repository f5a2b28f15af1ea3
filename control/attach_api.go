package control

import (
	"context"
	"errors"
	"net/http"
	"net/url"

	"github.com/cairn-storage/cairn/engine"
)

// AttachRequest is the body of POST /v1/volumes/{name}/attach.
type AttachRequest struct {
	Via string `json:"via,omitempty"` // "fuse", "nbd"; "" = nbd where the kernel has it, else fuse
}

// MountRequest is the body of POST /v1/volumes/{name}/mount.
type MountRequest struct {
	Path string `json:"path"`         // absolute; must exist and not be a mount point
	FS   string `json:"fs,omitempty"` // used only when the volume is blank; "" = ext4
}

// UnmountRequest is the body of POST /v1/volumes/{name}/unmount.
type UnmountRequest struct {
	Path string `json:"path"`
}

// SetAttacher enables the host routes (attach, detach, mount, unmount) and
// the attached_on / device fields of volumes.
func (s *Server) SetAttacher(a *Attacher) { s.attacher = a }

// attachRoutes registers the host routes when an Attacher is set.
func (s *Server) attachRoutes(mux *http.ServeMux) {
	if s.attacher == nil {
		return
	}
	mux.HandleFunc("POST /v1/volumes/{name}/attach", s.attachVolume)
	mux.HandleFunc("POST /v1/volumes/{name}/detach", s.detachVolume)
	mux.HandleFunc("POST /v1/volumes/{name}/mount", s.mountVolume)
	mux.HandleFunc("POST /v1/volumes/{name}/unmount", s.unmountVolume)
}

// volumeJSON is a volume as the API shows it, with its attachment.
func (s *Server) volumeJSON(name string, v Volume) Volume {
	if s.cloudsnaps != nil && !v.Snapshot {
		v.CloudsnapInterval, v.CloudsnapKeep = s.cloudsnaps.Schedule(name)
	}
	v.Node = s.node.ID()
	if cfg := s.clusterOf(); cfg != nil {
		v.NodeAddr = cfg.MgmtAddr
	}
	if s.attacher == nil {
		return v
	}
	if ai, ok := s.attacher.Info(name); ok {
		v.AttachedOn, v.Device = ai.NodeID, ai.Device
	}
	return v
}

func (s *Server) replyVolume(w http.ResponseWriter, r *http.Request, name string) {
	v, err := s.engine.Volume(name)
	if errors.Is(err, engine.ErrUnavailable) {
		// Its pool is missing (a detach or unmount that forgot what a
		// restart could not restore): the operation is done; answer with
		// what the listing shows of it.
		for _, info := range s.engine.Volumes() {
			if info.Name == name {
				reply(w, http.StatusOK, s.volumeJSON(name, volumeFromEngine(info)))
				return
			}
		}
	}
	if errors.Is(err, engine.ErrNotFound) {
		// A replicated volume this node serves without a replica of it.
		if cfg := s.clusterOf(); cfg != nil {
			if sp, serr := cfg.Member.Store().Volume(r.Context(), name); serr == nil && len(sp.Replicas) > 1 {
				n, _ := s.nodeByID(r.Context(), sp.Node())
				vj := s.volumeJSON(name, volumeFromSpec(sp, n, "up"))
				vj.Node, vj.NodeAddr = n.ID, n.MgmtAddr
				reply(w, http.StatusOK, s.withReplicas(r.Context(), vj, &sp))
				return
			}
		}
	}
	if err != nil {
		s.fail(w, r, volumeError("inspect", name, err))
		return
	}
	reply(w, http.StatusOK, s.volumeJSON(name, volumeFromEngine(v.Info())))
}

func (s *Server) attachVolume(w http.ResponseWriter, r *http.Request) {
	if s.elsewhere(w, r) {
		return
	}
	name := s.volumeRef(r)
	var req AttachRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := s.attacher.Attach(r.Context(), name, req.Via); err != nil {
		s.fail(w, r, err)
		return
	}
	s.replyVolume(w, r, name)
}

func (s *Server) detachVolume(w http.ResponseWriter, r *http.Request) {
	if s.elsewhere(w, r) {
		return
	}
	name := s.volumeRef(r)
	if err := s.attacher.Detach(r.Context(), name); err != nil {
		s.fail(w, r, err)
		return
	}
	s.replyVolume(w, r, name)
}

func (s *Server) mountVolume(w http.ResponseWriter, r *http.Request) {
	if s.elsewhere(w, r) {
		return
	}
	name := s.volumeRef(r)
	var req MountRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := s.attacher.Mount(r.Context(), name, req.Path, req.FS); err != nil {
		s.fail(w, r, err)
		return
	}
	s.replyVolume(w, r, name)
}

func (s *Server) unmountVolume(w http.ResponseWriter, r *http.Request) {
	if s.elsewhere(w, r) {
		return
	}
	name := s.volumeRef(r)
	var req UnmountRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.attacher.Unmount(r.Context(), name, req.Path); err != nil {
		s.fail(w, r, err)
		return
	}
	s.replyVolume(w, r, name)
}

// Attach attaches a volume to the daemon's host; the Volume's Device is
// the block device.
func (c *Client) Attach(ctx context.Context, name string, req AttachRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/attach", req, &v)
}

func (c *Client) Detach(ctx context.Context, name string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/detach", struct{}{}, &v)
}

func (c *Client) Mount(ctx context.Context, name string, req MountRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/mount", req, &v)
}

func (c *Client) Unmount(ctx context.Context, name string, req UnmountRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/unmount", req, &v)
}

// elsewhere refuses, naming the node and its addresses, a host operation
// on a volume that another node holds: the host can only attach what this
// node serves (remote access comes with replication).
func (s *Server) elsewhere(w http.ResponseWriter, r *http.Request) bool {
	ref := r.PathValue("name")
	if _, err := s.engine.Volume(ref); err == nil {
		return false
	}
	if err := s.Locate(r.Context(), ref); err != nil {
		s.fail(w, r, err)
		return true
	}
	return false
}
