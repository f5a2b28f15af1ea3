package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

var (
	// ErrUnavailable: etcd did not answer within CallTimeout (down, no
	// quorum, unreachable). Its text is what an operator reads first.
	ErrUnavailable = errors.New("kvdb unavailable")
	// ErrExists: a create found the key taken (a volume name, a node id).
	ErrExists = errors.New("cluster: already exists")
	// ErrNotFound: no such node or volume in the cluster.
	ErrNotFound = errors.New("cluster: not found")
	// ErrMismatch: the node, the kvdb or the flags belong to different
	// clusters; joining would mix them.
	ErrMismatch = errors.New("cluster mismatch")
	// ErrInvalid: a name or argument the cluster cannot take.
	ErrInvalid = errors.New("cluster: invalid argument")
	// ErrOnline: the node is Online; only an Offline node can be deleted.
	ErrOnline = errors.New("cluster: node is online")
	// ErrHasVolumes: deleting the node would lose the volumes it holds.
	ErrHasVolumes = errors.New("cluster: node holds volumes")
	// ErrConflict: what a change was based on changed meanwhile (a
	// compare-and-swap on a revision failed); nothing was changed.
	ErrConflict = errors.New("cluster: changed concurrently")
	// ErrNoPlacement: no node may hold a new volume under its
	// constraints (PlaceReplicas says which node lacked what).
	ErrNoPlacement = errors.New("cluster: no node to place the volume on")
	// ErrRemoved: the node was deleted from the cluster and may not
	// register again.
	ErrRemoved = errors.New("cluster: node removed from the cluster")
)

// kindError is an error whose text is the operator's message alone and
// which matches its sentinel (errors.Is): "node X is Online: ..." rather
// than "cluster: node is online: node X is Online: ...".
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// CallTimeout bounds every etcd call: a control operation fails with
// ErrUnavailable after this long rather than hanging on a dead kvdb.
const CallTimeout = 2 * time.Second

// dialTimeout bounds the first connection attempt of Connect.
const dialTimeout = 3 * time.Second

// ParseEndpoints reads the -k flag: a comma-separated list of etcd client
// addresses, each "host:port", "etcd://host:port", "http://host:port" or
// Portworx's "etcd:http://host:port". It returns http:// URLs. TLS
// (https) is not supported yet and is refused rather than ignored.
func ParseEndpoints(flag string) ([]string, error) {
	var out []string
	for _, item := range strings.Split(flag, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		rest := strings.TrimPrefix(item, "etcd:")
		rest = strings.TrimPrefix(rest, "//")
		if strings.HasPrefix(rest, "https://") {
			return nil, errorf(ErrInvalid, "kvdb endpoint %q: TLS is not supported yet; use http", item)
		}
		rest = strings.TrimPrefix(rest, "http://")
		host, port, err := net.SplitHostPort(rest)
		if err != nil || host == "" || port == "" || strings.ContainsAny(rest, "/?#@") {
			return nil, errorf(ErrInvalid, "kvdb endpoint %q: want etcd://HOST:PORT", item)
		}
		out = append(out, (&url.URL{Scheme: "http", Host: net.JoinHostPort(host, port)}).String())
	}
	if len(out) == 0 {
		return nil, errorf(ErrInvalid, "no kvdb endpoint in %q: want etcd://HOST:PORT[,HOST:PORT...]", flag)
	}
	return out, nil
}

// Connect returns an etcd client for endpoints whose connections leave from
// localIP (the node's management address), so that the node's traffic can
// be told apart, and cut off, by its address. localIP "" or unspecified
// (0.0.0.0) binds nothing. It fails with ErrUnavailable if no endpoint
// answers within a few seconds.
func Connect(ctx context.Context, endpoints []string, localIP string) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: dialTimeout,
		// Find a dead connection (a blackholed member) within ~8 s, not at
		// the next TCP timeout, and so move to another endpoint before the
		// node's 10 s lease runs out. Not more often: etcd servers refuse
		// pings closer than 5 s apart (grpc-keepalive-min-time) and drop
		// the connection of a client that sends them.
		DialKeepAliveTime:    6 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(BoundDialer(localIP)),
			// gRPC's reconnect backoff grows to 2 minutes: after an outage
			// or a partition the node would stay cut off long after etcd
			// is reachable again. Retry at least every 5 s.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
				MinConnectTimeout: dialTimeout,
			}),
		},
		Logger: zap.NewNop(), // our callers log what matters
		// No Context: the client lives until Close, not until ctx ends (a
		// daemon's ctx ends at SIGTERM, and it still revokes its lease).
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, strings.Join(endpoints, ","), err)
	}
	// clientv3.New does not wait for a connection: ask once, so that a
	// wrong -k is reported at start and not at the first control call.
	cctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err := cli.Get(cctx, "/cairn/v1/", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, unavailable(endpoints, err)
	}
	return cli, nil
}

// BoundDialer dials from localIP. A loopback source cannot reach another
// host, so a node whose management address is loopback (the default) binds
// it only for loopback destinations: on one machine that still tells nodes
// apart, and a node pointed at a remote etcd still reaches it.
func BoundDialer(localIP string) func(context.Context, string) (net.Conn, error) {
	src := net.ParseIP(localIP)
	if src != nil && src.IsUnspecified() {
		src = nil
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{}
		if src != nil {
			host, _, err := net.SplitHostPort(addr)
			dst := net.ParseIP(host)
			if err == nil && (!src.IsLoopback() || (dst != nil && dst.IsLoopback())) {
				d.LocalAddr = &net.TCPAddr{IP: src}
			}
		}
		return d.DialContext(ctx, "tcp", addr)
	}
}

// unavailable wraps an etcd error as ErrUnavailable, naming the endpoints.
func unavailable(endpoints []string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		err = errors.New("no answer in time")
	}
	return fmt.Errorf("%w (%s): %v", ErrUnavailable, strings.Join(endpoints, ","), err)
}
