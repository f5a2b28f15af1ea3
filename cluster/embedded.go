package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EmbeddedConfig is a single-member etcd run inside the daemon (no -k).
type EmbeddedConfig struct {
	Name       string // member name: the node id, so that `etcdctl member list` says whose it is
	Dir        string // DATA_DIR/kvdb
	ClientAddr string // host:port for clients (--kvdb-listen); port 0 picks a free one
	PeerAddr   string // host:port for peers (--kvdb-peer); port 0 picks a free one
}

// embeddedStartTimeout bounds how long a start may take before the daemon
// gives up: a single member elects itself in well under a second.
const embeddedStartTimeout = 30 * time.Second

// Embedded is a running embedded etcd.
type Embedded struct {
	etcd       *embed.Etcd
	clientURL  string
	clientAddr string
}

// StartEmbedded starts the member and returns once it serves clients. Its
// data (the whole cluster state when no other node runs etcd) is in
// cfg.Dir; a restart on the same Dir finds it again.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	// A port picked for port 0 may be taken by another process before etcd
	// binds it (pickPort): then pick again, a few times.
	for attempt := 1; ; attempt++ {
		e, err := startEmbedded(ctx, cfg)
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == 5 || !picksPort(cfg.ClientAddr) && !picksPort(cfg.PeerAddr) {
			return e, err
		}
	}
}

func picksPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}

func startEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	clientAddr, err := pickPort(cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster: --kvdb-listen %s: %w", cfg.ClientAddr, err)
	}
	peerAddr, err := pickPort(cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster: --kvdb-peer %s: %w", cfg.PeerAddr, err)
	}
	curl := url.URL{Scheme: "http", Host: clientAddr}
	purl := url.URL{Scheme: "http", Host: peerAddr}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
	ec.InitialCluster = cfg.Name + "=" + purl.String()
	ec.ClusterState = embed.ClusterStateFlagNew // ignored once Dir holds data
	// Heartbeats rewrite a small key per node every few seconds: keep ten
	// minutes of history (a watcher away longer starts again from now)
	// and a bounded backend.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "10m"
	ec.QuotaBackendBytes = 2 << 30
	// A restarted single member without a raft snapshot waits one full
	// election timeout before it elects itself (etcd's tick fast-forward
	// applies only to fresh or snapshot-restored members); with no peer
	// there is nothing to tolerate, so keep that wait short.
	ec.TickMs, ec.ElectionMs = 50, 250
	// etcd's info logs would drown the daemon's; errors still reach stderr.
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(ec)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("cluster: start embedded kvdb: %w (another node's embedded kvdb? join it with -k etcd://%s, or give this node its own --kvdb-listen and --kvdb-peer)", err, clientAddr)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: start embedded kvdb in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("cluster: embedded kvdb: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	case <-time.After(embeddedStartTimeout):
		e.Close()
		return nil, fmt.Errorf("cluster: embedded kvdb in %s not ready after %v", cfg.Dir, embeddedStartTimeout)
	}
	return &Embedded{etcd: e, clientURL: curl.String(), clientAddr: clientAddr}, nil
}

// Endpoints are the client URLs other nodes reach this member at.
func (e *Embedded) Endpoints() []string { return []string{e.clientURL} }

// ClientAddr is host:port of the client listener (after a port 0 was picked).
func (e *Embedded) ClientAddr() string { return e.clientAddr }

// Err delivers a fatal error of the running member.
func (e *Embedded) Err() <-chan error { return e.etcd.Err() }

// Close stops the member; what it committed is on disk.
func (e *Embedded) Close() { e.etcd.Close() }

// pickPort returns addr with port 0 replaced by a port free right now.
// etcd takes addresses, not listeners, so there is a short window in which
// another process could take the port; StartEmbedded then picks again.
func pickPort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
