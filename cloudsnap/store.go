package cloudsnap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Credential is how to reach a bucket. Its secrets (SecretKey, Passphrase)
// never leave the daemon through its API.
type Credential struct {
	Name       string `json:"name"`
	Provider   string `json:"provider"` // "s3"
	Endpoint   string `json:"endpoint"` // http://host:port or https://host[:port]; no scheme = https
	AccessKey  string `json:"access_key"`
	SecretKey  string `json:"secret_key"`
	Region     string `json:"region,omitempty"`
	Bucket     string `json:"bucket"`
	Passphrase string `json:"passphrase,omitempty"`
}

// DefaultBucket is the bucket of a credential created without one.
const DefaultBucket = "cairn-cloudsnaps"

// Check validates a credential's fields (not the store: Store.Validate).
func (c *Credential) Check() error {
	if c.Provider == "" {
		c.Provider = "s3"
	}
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	switch {
	case c.Provider != "s3":
		return fmt.Errorf("%w: provider %q: only s3 is supported", ErrInvalid, c.Provider)
	case c.Endpoint == "":
		return fmt.Errorf("%w: --s3-endpoint is required", ErrInvalid)
	case c.AccessKey == "" || c.SecretKey == "":
		return fmt.Errorf("%w: --s3-access-key and --s3-secret-key are required", ErrInvalid)
	}
	_, _, err := parseEndpoint(c.Endpoint)
	return err
}

func parseEndpoint(ep string) (host string, secure bool, err error) {
	if !strings.Contains(ep, "://") {
		ep = "https://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || (u.Scheme != "http" && u.Scheme != "https") {
		return "", false, fmt.Errorf("%w: s3 endpoint %q: want http://HOST:PORT or https://HOST[:PORT]", ErrInvalid, ep)
	}
	return u.Host, u.Scheme == "https", nil
}

// Timeouts of store calls: a small object (manifest, probe, listing page)
// and a data object (up to segmentExtents MiB). minio-go retries failed
// requests with backoff inside them.
var (
	smallTimeout = 30 * time.Second
	dataTimeout  = 3 * time.Minute
)

// maxRetries bounds minio-go's retries of one request (backoff between).
const maxRetries = 4

// Store is one credential's bucket.
type Store struct {
	cred Credential
	cli  *minio.Client
	// testHook, set by tests only, runs before every request (its op and
	// key): where a test makes another party's request interleave.
	testHook atomic.Pointer[func(op, key string)]
}

// Open returns the store of a credential; nothing is contacted yet.
func Open(c Credential) (*Store, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	host, secure, _ := parseEndpoint(c.Endpoint)
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
	}
	cli, err := minio.New(host, &minio.Options{
		Creds: credentials.NewStaticV4(c.AccessKey, c.SecretKey, ""), Secure: secure, Region: c.Region,
		Transport: tr, MaxRetries: maxRetries, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return &Store{cred: c, cli: cli}, nil
}

// Bucket is the store's bucket.
func (s *Store) Bucket() string { return s.cred.Bucket }

// CredentialName is the name of the store's credential.
func (s *Store) CredentialName() string { return s.cred.Name }

// Passphrase is the credential's encryption passphrase ("" = none).
func (s *Store) Passphrase() string { return s.cred.Passphrase }

// storeError words a failed store call for an operator: credentials
// refused, bucket missing, store unreachable or refusing writes.
func (s *Store) storeError(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %s: %s did not answer in time", ErrStore, op, s.cred.Endpoint)
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecretKey", "InvalidClientTokenId", "XAdminUserNotFound":
		return fmt.Errorf("%w: %s: %s refused the credentials (%s)", ErrStore, op, s.cred.Endpoint, resp.Code)
	case "AccessDenied":
		return fmt.Errorf("%w: %s: access denied by %s (read-only store or bucket policy?)", ErrStore, op, s.cred.Endpoint)
	case "NoSuchBucket":
		return fmt.Errorf("%w: %s: bucket %q does not exist at %s", ErrStore, op, s.cred.Bucket, s.cred.Endpoint)
	case "NoSuchKey":
		return fmt.Errorf("%w: %s", ErrNotFound, op)
	case "QuotaExceeded", "EntityTooLarge", "XMinioStorageFull", "StorageFull":
		return fmt.Errorf("%w: %s: the store is full (%s)", ErrStore, op, resp.Code)
	}
	var nerr net.Error
	var oerr *net.OpError
	if errors.As(err, &oerr) || errors.As(err, &nerr) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: cannot reach %s: %v", ErrStore, op, s.cred.Endpoint, err)
	}
	if resp.Code != "" {
		return fmt.Errorf("%w: %s: %s (%s)", ErrStore, op, resp.Message, resp.Code)
	}
	return fmt.Errorf("%w: %s: %v", ErrStore, op, err)
}

// Validate reaches the store, checks the bucket exists and that objects can
// be written and deleted there (a probe object under the cairn prefix).
func (s *Store) Validate(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	ok, err := s.cli.BucketExists(cctx, s.cred.Bucket)
	if err != nil {
		return s.storeError("check bucket "+s.cred.Bucket, err)
	}
	if !ok {
		return fmt.Errorf("%w: bucket %q does not exist at %s", ErrStore, s.cred.Bucket, s.cred.Endpoint)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	key := rootPrefix + ".probe-" + hex.EncodeToString(rnd[:])
	if err := s.put(ctx, key, []byte("cairn"), smallTimeout); err != nil {
		return fmt.Errorf("bucket %q is not writable: %w", s.cred.Bucket, err)
	}
	return s.remove(ctx, key)
}

func (s *Store) put(ctx context.Context, key string, b []byte, timeout time.Duration) error {
	s.before("put", key)
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := s.cli.PutObject(cctx, s.cred.Bucket, key, bytes.NewReader(b), int64(len(b)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
	if err != nil {
		return s.storeError("put "+key, err)
	}
	return nil
}

// get reads a whole object of at most limit bytes.
func (s *Store) get(ctx context.Context, key string, limit int64, timeout time.Duration) ([]byte, error) {
	return s.getInto(ctx, nil, key, limit, timeout)
}

// getInto is get reading into buf when it is large enough (else into a
// new buffer of the object's size: no growing copies of 16 MiB); it
// returns the object's bytes, buf or the new buffer, for the next call.
func (s *Store) getInto(ctx context.Context, buf []byte, key string, limit int64, timeout time.Duration) ([]byte, error) {
	var b []byte
	err := s.getStream(ctx, key, limit, timeout, func(body io.Reader, size int64) error {
		if int64(cap(buf)) < size {
			buf = make([]byte, size)
		}
		b = buf[:size]
		_, err := io.ReadFull(body, b)
		return err
	})
	if err != nil {
		return buf, err
	}
	return b, nil
}

// getStream gets object key, of at most limit bytes, and hands its body
// and size to read, for a caller that uses the bytes as they arrive. An
// error reading the body is a store error naming the object.
func (s *Store) getStream(ctx context.Context, key string, limit int64, timeout time.Duration, read func(body io.Reader, size int64) error) error {
	s.before("get", key)
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	obj, err := s.cli.GetObject(cctx, s.cred.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return s.storeError("get "+key, err)
	}
	defer obj.Close()
	oi, err := obj.Stat()
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			return fmt.Errorf("%w: object %s is missing", ErrNotFound, key)
		}
		return s.storeError("get "+key, err)
	}
	if oi.Size > limit || oi.Size < 0 {
		return fmt.Errorf("%w: object %s is %d bytes, more than the %d expected", ErrCorrupt, key, oi.Size, limit)
	}
	err = read(bodyReader{obj, s, key}, oi.Size)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return s.storeError("get "+key, err) // the body ended before its size
	}
	return err
}

// bodyReader turns an error reading an object's body into a store error.
type bodyReader struct {
	r   io.Reader
	s   *Store
	key string
}

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = b.s.storeError("get "+b.key, err)
	}
	return n, err
}

func (s *Store) remove(ctx context.Context, key string) error {
	s.before("delete", key)
	cctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	if err := s.cli.RemoveObject(cctx, s.cred.Bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return s.storeError("delete "+key, err)
	}
	return nil
}

// before runs the test hook, if any, as a request of op on key starts.
func (s *Store) before(op, key string) {
	if h := s.testHook.Load(); h != nil {
		(*h)(op, key)
	}
}

// exists says whether key is in the bucket.
func (s *Store) exists(ctx context.Context, key string) (bool, error) {
	s.before("stat", key)
	cctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	_, err := s.cli.StatObject(cctx, s.cred.Bucket, key, minio.StatObjectOptions{})
	if err == nil {
		return true, nil
	}
	if err = s.storeError("stat "+key, err); errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return false, err
}

// list returns the keys under prefix.
func (s *Store) list(ctx context.Context, prefix string) ([]string, error) {
	s.before("list", prefix)
	cctx, cancel := context.WithTimeout(ctx, 2*smallTimeout)
	defer cancel()
	var keys []string
	for obj := range s.cli.ListObjects(cctx, s.cred.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return nil, s.storeError("list "+prefix, obj.Err)
		}
		keys = append(keys, obj.Key)
	}
	return keys, nil
}
