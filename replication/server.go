package replication

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/connset"
)

// Volume is a replica as the server applies requests to it. *engine.Volume
// satisfies it.
type Volume interface {
	Size() int64
	ReadAt(p []byte, off int64) error
	// WriteAt must not keep p once it returns: the server reuses the buffer.
	WriteAt(p []byte, off int64, fua bool) error
	Flush() error
	Trim(off, n int64) error
	WriteZeroes(off, n int64, noHole bool) error
}

// deferredWriteback is a Volume (the engine's) that starts the write-back
// of a write to its device early while the volume sees flushes: the server
// writes with WriteAtDeferWriteback and starts it once the reply is handed
// to the writer, so the reply does not wait for it (as the NBD server
// does).
type deferredWriteback interface {
	WriteAtDeferWriteback(p []byte, off int64, fua bool) error
	StartWriteback(off, n int64)
}

// batchWriteback is a deferredWriteback that starts the write-back of
// several writes with one call per drive (the engine's StartWritebacks):
// the reader's inline burst answers many writes at once.
type batchWriteback interface {
	deferredWriteback
	StartWritebacks(rs []engine.WritebackRange)
}

// Volumes is where the server finds replicas (the daemon implements it on
// its engine).
type Volumes interface {
	// OpenReplica opens the named replica for one connection; release() is
	// called once when that connection ends. An unknown name returns an
	// error wrapping engine.ErrNotFound.
	OpenReplica(volume string) (v Volume, release func(), err error)
}

// Config tunes a Server.
type Config struct {
	// Cluster is the cluster's UUID; a hello from another cluster is refused.
	Cluster [16]byte
	// StateDir holds one small file per replica volume with the highest
	// epoch it has durably seen. Required; created if missing.
	StateDir    string
	MaxInFlight int // requests in flight per connection; 0 = 128
	Workers     int // worker goroutines per connection; 0 = min(MaxInFlight, 32)
	// HandshakeTimeout bounds the hello; 0 = 10 s.
	HandshakeTimeout time.Duration
	Logger           *slog.Logger // nil = slog.Default()
}

const (
	defaultMaxInFlight      = 128
	defaultWorkers          = 32
	defaultHandshakeTimeout = 10 * time.Second
)

// Server serves replica volumes to coordinators.
//
// Concurrency: mu protects listeners, conns, closed and states. The data
// path never takes it: a connection finds its epochState once, at hello.
type Server struct {
	vols Volumes
	cfg  Config
	log  *slog.Logger

	conns connset.Set[*conn] // listeners and live connections

	mu     sync.Mutex
	states map[string]*epochState // REQUIRES mu; loaded on first hello for the volume
}

// NewServer returns a server for vols. Call Serve for each listener.
func NewServer(vols Volumes, cfg Config) (*Server, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("replication: Config.StateDir is required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("replication: state directory: %w", err)
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = defaultMaxInFlight
	}
	if cfg.Workers <= 0 {
		cfg.Workers = defaultWorkers
	}
	cfg.Workers = min(cfg.Workers, cfg.MaxInFlight)
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server{
		vols: vols, cfg: cfg, log: log.With("component", "replication"),
		states: map[string]*epochState{},
	}, nil
}

// Serve accepts connections on l until Close, then returns ErrClosed.
func (s *Server) Serve(l net.Listener) error {
	err := s.conns.Serve(l, func(nc net.Conn) *conn { return newConn(s, nc) }, (*conn).serve,
		func(err error, wait time.Duration) { s.log.Warn("accept failed; retrying", "err", err, "in", wait) })
	if errors.Is(err, connset.ErrClosed) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("replication: %w", err)
	}
	return nil
}

func (s *Server) isClosed() bool { return s.conns.Closed() }

// Close stops accepting and closes every connection. Requests already
// being applied finish (Close waits for them); their replies are dropped,
// so the coordinator counts them as failed, never as done.
func (s *Server) Close() error {
	for _, c := range s.conns.Close() {
		c.nc.Close()
	}
	s.conns.Wait()
	return nil
}

// Epoch returns the durable epoch of a replica volume (0: it never served).
func (s *Server) Epoch(volume string) (uint64, error) {
	st, err := s.epochState(volume)
	if err != nil {
		return 0, err
	}
	return st.epoch.Load(), nil
}

// epochState returns volume's fencing state, loading it on first use.
func (s *Server) epochState(volume string) (*epochState, error) {
	if !validVolume(volume) {
		return nil, fmt.Errorf("%w: volume %q is not a valid replica name", ErrInvalid, volume)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.states[volume]; st != nil {
		return st, nil
	}
	st, err := loadEpochState(s.cfg.StateDir, s.cfg.Cluster, volume)
	if err != nil {
		return nil, err
	}
	s.states[volume] = st
	return st, nil
}

// hello reads and answers the coordinator's hello. On success the
// connection's volume, release and epoch state are set.
func (c *conn) hello() error {
	var h [HelloLen]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: truncated hello", ErrProtocol)
		}
		return err
	}
	hello, nodeLen, volLen, err := parseHelloHeader(&h)
	if err != nil {
		return err
	}
	var names [2 * MaxNameLen]byte
	if _, err := io.ReadFull(c.br, names[:nodeLen+volLen]); err != nil {
		return fmt.Errorf("%w: truncated hello names: %w", ErrProtocol, err)
	}
	hello.Node, hello.Volume = string(names[:nodeLen]), string(names[nodeLen:nodeLen+volLen])
	c.log = c.log.With("node", hello.Node, "volume", hello.Volume)

	refuse := func(status uint16, epoch uint64, err error) error {
		c.send(appendHelloReply(nil, helloReply{version: Version, status: status, epoch: epoch, msg: err.Error()}))
		return err
	}
	if hello.Version != Version {
		return refuse(HelloBadVersion, 0, fmt.Errorf("%w: %d (this replica speaks %d)", ErrVersion, hello.Version, Version))
	}
	if hello.Cluster != c.srv.cfg.Cluster {
		return refuse(HelloWrongCluster, 0, fmt.Errorf("%w: hello from cluster %s, this is %s", ErrWrongCluster, uuidString(hello.Cluster), uuidString(c.srv.cfg.Cluster)))
	}
	if !validVolume(hello.Volume) {
		return refuse(HelloUnknownVolume, 0, fmt.Errorf("%w: %q is not a valid replica name", ErrUnknownVolume, hello.Volume))
	}
	// The volume is opened before its state is loaded or its epoch raised,
	// so that a hello for a volume this node does not have leaves nothing
	// behind, in memory or on disk.
	vol, release, err := c.srv.vols.OpenReplica(hello.Volume)
	if err != nil {
		status := HelloError
		if errors.Is(err, engine.ErrNotFound) {
			status = HelloUnknownVolume
			err = fmt.Errorf("%w: %w", ErrUnknownVolume, err)
		}
		return refuse(status, 0, err)
	}
	st, err := c.srv.epochState(hello.Volume)
	if err != nil {
		release()
		return refuse(HelloError, 0, err)
	}
	// The hello's epoch is raised durably before it is answered (see
	// epochState): the new coordinator's hello is what fences the old one.
	if err := st.advance(hello.Epoch); err != nil {
		release()
		return refuse(HelloError, st.epoch.Load(), err)
	}
	if cur := st.epoch.Load(); hello.Epoch < cur {
		release()
		return refuse(HelloStaleEpoch, cur, &StaleEpochError{Sent: hello.Epoch, Epoch: cur})
	}
	c.vol, c.release, c.state = vol, release, st
	return c.send(appendHelloReply(nil, helloReply{version: Version, status: HelloOK, epoch: st.epoch.Load(), size: uint64(vol.Size())}))
}

// send writes b and flushes. Hello only.
func (c *conn) send(b []byte) error {
	c.bw.Write(b)
	return c.bw.Flush()
}
