package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultAPIAddr is where the daemon serves its API unless told otherwise.
const DefaultAPIAddr = "127.0.0.1:9001"

// Client talks to a daemon's management API.
type Client struct {
	addr string // host:port as given, for messages
	base string // http://host:port
	http *http.Client
	// Warn, when set, receives the warning a daemon sends with a
	// successful reply (a listing from one node while the kvdb is
	// unavailable).
	Warn func(msg string)
}

// NewClient returns a client for the daemon at addr ("host:port" or an
// http:// URL).
func NewClient(addr string) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{
		addr: addr,
		base: strings.TrimRight(base, "/"),
		// No control call takes long; a hung daemon should not hang a script.
		http: &http.Client{Timeout: 60 * time.Second},
	}
}

// Addr is the daemon address the client was made for.
func (c *Client) Addr() string { return c.addr }

func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

func (c *Client) Volumes(ctx context.Context) ([]Volume, error) {
	var vols []Volume
	return vols, c.do(ctx, http.MethodGet, "/v1/volumes", nil, &vols)
}

func (c *Client) Volume(ctx context.Context, name string) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, &v)
}

// VerifyVolume compares a replicated volume's in-sync replicas, calling
// progress (when not nil) about every second with the bytes compared. It
// takes as long as the comparison does, but fails once the daemon has sent
// nothing for streamIdle.
func (c *Client) VerifyVolume(ctx context.Context, name string, progress func(done, total int64)) (VerifyReply, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/volumes/"+url.PathEscape(name)+"/verify?progress=1", strings.NewReader("{}"))
	if err != nil {
		return VerifyReply{}, fmt.Errorf("control: daemon address %q: %w", c.addr, err)
	}
	req.Header.Set("Content-Type", "application/json")
	stream := *c.http
	stream.Timeout = 0 // the watchdog below bounds it instead
	idle := time.AfterFunc(streamIdle, func() {
		cancel(fmt.Errorf("control: the daemon at %s sent nothing about the verify of %q for %v", c.addr, name, streamIdle))
	})
	defer idle.Stop()
	resp, err := stream.Do(req)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && !errors.Is(cause, context.Canceled) {
			return VerifyReply{}, cause
		}
		return VerifyReply{}, c.transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return VerifyReply{}, decodeError(resp)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		idle.Reset(streamIdle)
		var ev VerifyEvent
		if err := dec.Decode(&ev); err != nil {
			if cause := context.Cause(ctx); ctx.Err() != nil && cause != nil {
				return VerifyReply{}, cause
			}
			return VerifyReply{}, fmt.Errorf("control: verify %q: the reply ended early: %w", name, err)
		}
		switch {
		case ev.Error != nil:
			return VerifyReply{}, &APIError{StatusCode: statusOfCode(ev.Error.Code), Code: ev.Error.Code, Message: ev.Error.Error}
		case ev.Result != nil:
			return *ev.Result, nil
		case progress != nil:
			progress(ev.Done, ev.Total)
		}
	}
}

// streamIdle: how long a streamed reply may send nothing before the client
// gives up on it.
const streamIdle = 60 * time.Second

// HAUpdate adds or removes one replica of a volume.
func (c *Client) HAUpdate(ctx context.Context, name string, req HAUpdateRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/ha", req, &v)
}

func (c *Client) CreateVolume(ctx context.Context, req CreateVolumeRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPost, "/v1/volumes", req, &v)
}

func (c *Client) UpdateVolume(ctx context.Context, name string, req UpdateVolumeRequest) (Volume, error) {
	var v Volume
	return v, c.do(ctx, http.MethodPatch, "/v1/volumes/"+url.PathEscape(name), req, &v)
}

func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name), nil, nil)
}

func (c *Client) AddDrive(ctx context.Context, req AddDriveRequest) (Status, error) {
	var st Status
	return st, c.do(ctx, http.MethodPost, "/v1/drives", req, &st)
}

// ClusterNodes lists the nodes of the daemon's cluster.
func (c *Client) ClusterNodes(ctx context.Context) ([]ClusterNode, error) {
	var nodes []ClusterNode
	return nodes, c.do(ctx, http.MethodGet, "/v1/cluster/nodes", nil, &nodes)
}

// ClusterNode returns one node: by id, or by a hostname or management
// address only it has.
func (c *Client) ClusterNode(ctx context.Context, ref string) (ClusterNode, error) {
	var n ClusterNode
	return n, c.do(ctx, http.MethodGet, "/v1/cluster/nodes/"+url.PathEscape(ref), nil, &n)
}

// DeleteNode removes an Offline node from the cluster; force also when
// volumes live on it (they are lost with it).
func (c *Client) DeleteNode(ctx context.Context, ref string, force bool) (DeletedNode, error) {
	var d DeletedNode
	path := "/v1/cluster/nodes/" + url.PathEscape(ref)
	if force {
		path += "?force=true"
	}
	return d, c.do(ctx, http.MethodDelete, path, nil, &d)
}

// Metrics returns the Prometheus text exposition.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", c.transportError(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("control: /metrics: %s", resp.Status)
	}
	return string(body), nil
}

// do sends one request and decodes the reply into out (when not nil). Error
// replies become *APIError; a daemon that does not answer becomes
// ErrDaemonUnreachable.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		buf, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("control: daemon address %q: %w", c.addr, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if w := resp.Header.Get(warningHeader); w != "" && c.Warn != nil {
		c.Warn(w)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("control: %s %s: bad reply: %w", method, path, err)
	}
	return nil
}

func (c *Client) transportError(err error) error {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return &unreachableError{addr: c.addr, err: opErr.Err}
	}
	return fmt.Errorf("control: daemon at %s: %w", c.addr, err)
}

// unreachableError says that nothing answered at the daemon's address.
type unreachableError struct {
	addr string
	err  error // from dial, e.g. "connect: connection refused"
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("no cairn daemon answers at %s (%v)", e.addr, e.err)
}

func (e *unreachableError) Is(target error) bool { return target == ErrDaemonUnreachable }
func (e *unreachableError) Unwrap() error        { return e.err }

func decodeError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxRequestBytes))
	var eb errorBody
	if err := json.Unmarshal(raw, &eb); err != nil || eb.Error == "" {
		eb.Error = fmt.Sprintf("daemon replied %s", resp.Status)
	}
	return &APIError{StatusCode: resp.StatusCode, Code: eb.Code, Message: eb.Error}
}
