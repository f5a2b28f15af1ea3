package control

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/cairn-storage/cairn/cloudsnap"
)

// The credentials and cloudsnap routes:
//
//	POST   /v1/credentials               CreateCredentialRequest            → 201 CredentialInfo
//	GET    /v1/credentials               every credential, no secrets       → []CredentialInfo
//	POST   /v1/credentials/{name}/validate  reach the store, check the bucket → CredentialInfo
//	DELETE /v1/credentials/{name}                                           → 204
//	POST   /v1/cloudsnaps                CloudsnapBackupRequest (background) → 202 CloudsnapJob
//	GET    /v1/cloudsnaps?credential=&volume=  backups in the bucket        → []cloudsnap.Entry
//	GET    /v1/cloudsnaps/jobs[?volume=] running and recent jobs            → []CloudsnapJob
//	DELETE /v1/cloudsnaps/{id}?credential=                                  → 204
//	POST   /v1/cloudsnaps/{id}/restore   CloudsnapRestoreRequest (background) → 202 CloudsnapJob
//
// Secrets (secret key, passphrase) go in with CreateCredentialRequest and
// never come out of any route.

// CredentialInfo is a credential as the API shows it: never its secrets.
type CredentialInfo struct {
	Name      string `json:"name"`
	Provider  string `json:"provider"`
	Endpoint  string `json:"endpoint"`
	AccessKey string `json:"access_key"`
	Region    string `json:"region"`
	Bucket    string `json:"bucket"`
	Encrypted bool   `json:"encrypted"` // has an encryption passphrase
}

// CreateCredentialRequest is the body of POST /v1/credentials.
type CreateCredentialRequest struct {
	Name       string `json:"name"`
	Provider   string `json:"provider"`
	Endpoint   string `json:"endpoint"`
	AccessKey  string `json:"access_key"`
	SecretKey  string `json:"secret_key"`
	Region     string `json:"region,omitempty"`
	Bucket     string `json:"bucket,omitempty"`
	Passphrase string `json:"passphrase,omitempty"`
}

// CloudsnapBackupRequest is the body of POST /v1/cloudsnaps.
type CloudsnapBackupRequest struct {
	Volume     string `json:"volume"`
	Credential string `json:"credential,omitempty"` // "" = the only one
	Full       bool   `json:"full,omitempty"`
}

// CloudsnapRestoreRequest is the body of POST /v1/cloudsnaps/{id}/restore.
type CloudsnapRestoreRequest struct {
	Credential string `json:"credential,omitempty"`
	Name       string `json:"name,omitempty"` // "" = the backed-up volume's name
}

// CloudsnapJob is one backup or restore, running or recent.
type CloudsnapJob struct {
	ID              string  `json:"id"`
	Kind            string  `json:"kind"` // backup, restore
	Volume          string  `json:"volume"`
	Cloudsnap       string  `json:"cloudsnap"`
	Credential      string  `json:"credential"`
	Full            bool    `json:"full"`
	Scheduled       bool    `json:"scheduled"`
	State           string  `json:"state"` // running, done, failed
	Error           string  `json:"error,omitempty"`
	BytesTotal      int64   `json:"bytes_total"`
	BytesDone       int64   `json:"bytes_done"`
	BytesStored     int64   `json:"bytes_stored"` // uploaded (backup) or downloaded (restore) so far
	BytesUploaded   int64   `json:"bytes_uploaded"`
	RateBytesPerSec float64 `json:"rate_bytes_per_sec"`
	ETASeconds      float64 `json:"eta_seconds"`
	Started         string  `json:"started"`
	Finished        string  `json:"finished,omitempty"`
}

// SetCloudsnaps serves the credentials and cloudsnap routes.
func (s *Server) SetCloudsnaps(c *Cloudsnaps) { s.cloudsnaps = c }

func (s *Server) cloudsnapRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/credentials", s.createCredential)
	mux.HandleFunc("GET /v1/credentials", s.listCredentials)
	mux.HandleFunc("POST /v1/credentials/{name}/validate", s.validateCredential)
	mux.HandleFunc("DELETE /v1/credentials/{name}", s.deleteCredential)
	mux.HandleFunc("POST /v1/cloudsnaps", s.backupCloudsnap)
	mux.HandleFunc("GET /v1/cloudsnaps", s.listCloudsnaps)
	mux.HandleFunc("GET /v1/cloudsnaps/jobs", s.cloudsnapJobs)
	mux.HandleFunc("DELETE /v1/cloudsnaps/{id}", s.deleteCloudsnap)
	mux.HandleFunc("POST /v1/cloudsnaps/{id}/restore", s.restoreCloudsnap)
}

func (s *Server) cs(w http.ResponseWriter, r *http.Request) *Cloudsnaps {
	if s.cloudsnaps == nil {
		s.fail(w, r, invalidf("cloudsnaps are not served by this daemon"))
	}
	return s.cloudsnaps
}

func (s *Server) createCredential(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	var req CreateCredentialRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := c.CreateCredential(r.Context(), cloudsnap.Credential{Name: req.Name, Provider: req.Provider, Endpoint: req.Endpoint,
		AccessKey: req.AccessKey, SecretKey: req.SecretKey, Region: req.Region, Bucket: req.Bucket, Passphrase: req.Passphrase})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("credential created", "name", info.Name, "endpoint", info.Endpoint, "bucket", info.Bucket, "encrypted", info.Encrypted)
	reply(w, http.StatusCreated, info)
}

func (s *Server) listCredentials(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	out, err := c.Credentials(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) validateCredential(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	info, err := c.ValidateCredential(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, info)
}

func (s *Server) deleteCredential(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	if err := c.DeleteCredential(r.Context(), r.PathValue("name")); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("credential deleted", "name", r.PathValue("name"))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) backupCloudsnap(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	// The volume is named in the body: read it here, and forward the same
	// bytes to the volume's node (a backup snapshots the volume and reads
	// it where its data is; its job lives there).
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err != nil {
		s.fail(w, r, invalidf("request body: %v", err))
		return
	}
	var req CloudsnapBackupRequest
	r.Body = io.NopCloser(bytes.NewReader(raw))
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Volume == "" {
		s.fail(w, r, invalidf("name the volume to back up"))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(raw))
	if _, done := s.route(w, r, req.Volume); done {
		return
	}
	job, err := c.Backup(r.Context(), req.Volume, req.Credential, req.Full, false)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusAccepted, job)
}

func (s *Server) listCloudsnaps(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	q := r.URL.Query()
	out, err := c.List(r.Context(), q.Get("credential"), q.Get("volume"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) cloudsnapJobs(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	// A volume's jobs are kept by the node that holds it (its backups run
	// there, a restore runs where the volume is made): ask that node. All
	// jobs (no volume) are this node's.
	volume := r.URL.Query().Get("volume")
	if volume != "" {
		if _, done := s.route(w, r, volume); done {
			return
		}
	}
	reply(w, http.StatusOK, c.Jobs(volume))
}

func (s *Server) deleteCloudsnap(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	if err := c.Delete(r.Context(), r.URL.Query().Get("credential"), r.PathValue("id")); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("cloudsnap deleted", "id", r.PathValue("id"))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) restoreCloudsnap(w http.ResponseWriter, r *http.Request) {
	c := s.cs(w, r)
	if c == nil {
		return
	}
	var req CloudsnapRestoreRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	job, err := c.Restore(r.Context(), r.PathValue("id"), req.Credential, req.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusAccepted, job)
}

// Client side.

func (c *Client) CreateCredential(ctx context.Context, req CreateCredentialRequest) (CredentialInfo, error) {
	var out CredentialInfo
	return out, c.do(ctx, http.MethodPost, "/v1/credentials", req, &out)
}

func (c *Client) Credentials(ctx context.Context) ([]CredentialInfo, error) {
	var out []CredentialInfo
	return out, c.do(ctx, http.MethodGet, "/v1/credentials", nil, &out)
}

func (c *Client) ValidateCredential(ctx context.Context, name string) (CredentialInfo, error) {
	var out CredentialInfo
	return out, c.do(ctx, http.MethodPost, "/v1/credentials/"+url.PathEscape(name)+"/validate", struct{}{}, &out)
}

func (c *Client) DeleteCredential(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/credentials/"+url.PathEscape(name), nil, nil)
}

func (c *Client) BackupCloudsnap(ctx context.Context, req CloudsnapBackupRequest) (CloudsnapJob, error) {
	var out CloudsnapJob
	return out, c.do(ctx, http.MethodPost, "/v1/cloudsnaps", req, &out)
}

func (c *Client) Cloudsnaps(ctx context.Context, credential, volume string) ([]cloudsnap.Entry, error) {
	var out []cloudsnap.Entry
	q := url.Values{}
	if credential != "" {
		q.Set("credential", credential)
	}
	if volume != "" {
		q.Set("volume", volume)
	}
	return out, c.do(ctx, http.MethodGet, "/v1/cloudsnaps?"+q.Encode(), nil, &out)
}

func (c *Client) CloudsnapJobs(ctx context.Context, volume string) ([]CloudsnapJob, error) {
	var out []CloudsnapJob
	path := "/v1/cloudsnaps/jobs"
	if volume != "" {
		path += "?volume=" + url.QueryEscape(volume)
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

func (c *Client) DeleteCloudsnap(ctx context.Context, credential, id string) error {
	path := "/v1/cloudsnaps/" + url.PathEscape(id)
	if credential != "" {
		path += "?credential=" + url.QueryEscape(credential)
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

func (c *Client) RestoreCloudsnap(ctx context.Context, id string, req CloudsnapRestoreRequest) (CloudsnapJob, error) {
	var out CloudsnapJob
	return out, c.do(ctx, http.MethodPost, "/v1/cloudsnaps/"+url.PathEscape(id)+"/restore", req, &out)
}

// checkCloudsnapSchedule refuses a bad --cloudsnap_interval or
// --cloudsnap_keep before the volume is created or changed.
func (s *Server) checkCloudsnapSchedule(interval, keep int) error {
	if interval == 0 && keep == 0 {
		return nil
	}
	if s.cloudsnaps == nil {
		return invalidf("cloudsnaps are not served by this daemon")
	}
	return checkSchedule(&interval, &keep)
}

// setCloudsnapSchedule records what create or update asked for; nil leaves
// a setting alone.
func (s *Server) setCloudsnapSchedule(volume string, interval, keep *int) error {
	if s.cloudsnaps == nil || (interval == nil && keep == nil) {
		return nil
	}
	if err := s.cloudsnaps.SetSchedule(volume, interval, keep); err != nil {
		return fmt.Errorf("volume %q: cloudsnap schedule not recorded: %w", volume, err)
	}
	return nil
}

// setIfNonZero is create's view of a schedule field: 0 is "not given".
func setIfNonZero(v int) *int {
	if v == 0 {
		return nil
	}
	return &v
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
