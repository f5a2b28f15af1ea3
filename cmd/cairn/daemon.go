package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// daemonConfig is `cairn daemon`'s flags. Short names follow Portworx.
type daemonConfig struct {
	dataDir      string
	apiAddr      string
	mgmtIface    string // -m
	nbdAddr      string
	dataIface    string // -d
	nbdSocket    string
	replListen   string
	replTimeout  time.Duration
	resyncRate   string
	drives       []string // -s
	allDrives    bool     // -a
	force        bool     // -f
	storageless  bool     // -z
	cluster      string   // -c
	kvdb         string   // -k: external etcd endpoints; "" runs the embedded one
	kvdbListen   string   // embedded etcd's client address
	kvdbPeer     string   // embedded etcd's peer address
	kvdbFlagsSet bool     // --kvdb-listen or --kvdb-peer given
	zone, rack   string
	// clockOffset shifts the clock the node reports to the cluster
	// (hidden; tests stand a node with a wrong clock up with it).
	clockOffset      time.Duration
	defaultDriveSize string
	fillRate         string
	cpuProfile       string
	// snapMinute is how long one snap_interval minute lasts (hidden; tests
	// shorten it to watch scheduled snapshots come and go in seconds).
	snapMinute time.Duration
	// restoreGate holds the node starting, after it has read what to
	// restore, until this file exists (hidden; tests catch the "starting"
	// state deterministically).
	restoreGate string
}

// defaultDriveName is the embedded default drive: a sparse file in the data
// directory, so that `cairn daemon` works with no drive at all.
const defaultDriveName = "drive-0.img"

// defaultReplPort is the replication listener's port on the data address.
const defaultReplPort = "9002"

// Shutdown budgets: how long in-flight API calls and NBD requests get.
const (
	apiShutdownTimeout = 10 * time.Second
	nbdShutdownTimeout = 30 * time.Second
)

func newDaemonCommand() *cobra.Command {
	var cfg daemonConfig
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the cairn node daemon (engine, management API, NBD exports)",
		Long: `Run the cairn node daemon in the foreground.

With no drive (-s, -a) and not storageless (-z), the daemon uses the embedded
default: a sparse file DATA_DIR/` + defaultDriveName + ` of --default-drive-size.
Drives are remembered in DATA_DIR, so a restart opens the same ones again.
SIGTERM or SIGINT stops it cleanly: in-flight I/O finishes, everything is
flushed, and it exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.kvdbFlagsSet = cmd.Flags().Changed("kvdb-listen") || cmd.Flags().Changed("kvdb-peer")
			return runDaemon(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.dataDir, "data-dir", "/var/lib/cairn", "directory for the node state, the default drive and the NBD socket")
	f.StringVar(&cfg.apiAddr, "api", control.DefaultAPIAddr, "management API address host:port")
	f.StringVarP(&cfg.mgmtIface, "mgmt-iface", "m", "", "interface name or IP for the management API (replaces the host of --api)")
	f.StringVar(&cfg.nbdAddr, "nbd", "127.0.0.1:10809", "NBD listener address host:port")
	f.StringVarP(&cfg.dataIface, "data-iface", "d", "", "interface name or IP for NBD (replaces the host of --nbd)")
	f.StringVar(&cfg.nbdSocket, "nbd-socket", "", "NBD unix socket (default DATA_DIR/nbd.sock)")
	f.StringVar(&cfg.replListen, "repl-listen", "", "replication listener address host:port (default: the host of --nbd, port "+defaultReplPort+"; -d replaces the host)")
	f.DurationVar(&cfg.replTimeout, "repl-timeout", replication.DefaultTimeout, "how long a replica may take to answer before it leaves the in-sync set")
	f.StringVar(&cfg.resyncRate, "resync-rate", "256M", "bytes per second a resync or rebuild copies to a replica (an eighth of it while clients do I/O on the volume)")
	f.StringArrayVarP(&cfg.drives, "drive", "s", nil, "drive to use: a block device or a file (repeatable)")
	f.BoolVarP(&cfg.allDrives, "all-drives", "a", false, "use every unused drive of the node")
	f.BoolVarP(&cfg.force, "force", "f", false, "also take drives with a filesystem or another node's superblock (never mounted ones, never this node's own)")
	f.BoolVarP(&cfg.storageless, "storageless", "z", false, "run without storage")
	f.StringVarP(&cfg.cluster, "cluster", "c", "", "cluster name (default: the stored one, or "+control.DefaultCluster+")")
	f.StringVarP(&cfg.kvdb, "kvdb", "k", "", "external etcd: etcd://HOST:PORT[,HOST:PORT...] (default: run an embedded one in DATA_DIR/"+kvdbDirName+")")
	f.StringVar(&cfg.kvdbListen, "kvdb-listen", defaultKvdbListen, "client address of the embedded kvdb (other nodes join with -k etcd://ADDR)")
	f.StringVar(&cfg.kvdbPeer, "kvdb-peer", defaultKvdbPeer, "peer address of the embedded kvdb")
	f.StringVar(&cfg.zone, "zone", defaultTopology, "failure zone of this node")
	f.StringVar(&cfg.rack, "rack", defaultTopology, "rack of this node")
	f.DurationVar(&cfg.clockOffset, "clock-offset", 0, "shift the clock this node reports to the cluster (tests)")
	_ = f.MarkHidden("clock-offset")
	f.StringVar(&cfg.defaultDriveSize, "default-drive-size", "64G", "size of the embedded default drive file (sparse)")
	f.StringVar(&cfg.fillRate, "fill-rate", "64M", "bytes per second each pool's filler copies into extents redirected after a snapshot")
	f.StringVar(&cfg.cpuProfile, "cpu-profile", "", "write a Go CPU profile of the whole run to FILE (benchmarks)")
	f.DurationVar(&cfg.snapMinute, "snap-minute", time.Minute, "length of one snap_interval minute (tests)")
	_ = f.MarkHidden("snap-minute")
	f.StringVar(&cfg.restoreGate, "restore-gate", "", "restore attachments only once FILE exists (tests)")
	_ = f.MarkHidden("restore-gate")
	return cmd
}

func runDaemon(ctx context.Context, cfg daemonConfig) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if cfg.storageless && (len(cfg.drives) > 0 || cfg.allDrives) {
		return errors.New("daemon: -z (storageless) cannot be combined with -s or -a")
	}
	if cfg.kvdb != "" && cfg.kvdbFlagsSet {
		return errKvdbFlags
	}
	if cfg.zone == "" || cfg.rack == "" {
		return errors.New("daemon: --zone and --rack cannot be empty (default: " + defaultTopology + ")")
	}
	defaultSize, err := parseSize(cfg.defaultDriveSize)
	if err != nil {
		return fmt.Errorf("daemon: --default-drive-size: %w", err)
	}
	fillRate, err := parseSize(cfg.fillRate)
	if err != nil {
		return fmt.Errorf("daemon: --fill-rate: %w", err)
	}
	apiAddr, err := withInterface(cfg.apiAddr, cfg.mgmtIface)
	if err != nil {
		return fmt.Errorf("daemon: -m: %w", err)
	}
	nbdAddr, err := withInterface(cfg.nbdAddr, cfg.dataIface)
	if err != nil {
		return fmt.Errorf("daemon: -d: %w", err)
	}
	if cfg.replListen == "" {
		cfg.replListen = net.JoinHostPort(hostOf(nbdAddr), defaultReplPort)
	}
	replAddr, err := withInterface(cfg.replListen, cfg.dataIface)
	if err != nil {
		return fmt.Errorf("daemon: -d: %w", err)
	}
	resyncRate, err := parseSize(cfg.resyncRate)
	if err != nil || resyncRate <= 0 {
		return fmt.Errorf("daemon: --resync-rate %q: want a positive size per second", cfg.resyncRate)
	}
	if cfg.replTimeout <= 0 {
		return fmt.Errorf("daemon: --repl-timeout %v: must be positive", cfg.replTimeout)
	}
	if err := os.MkdirAll(cfg.dataDir, 0o755); err != nil {
		return fmt.Errorf("daemon: data dir: %w", err)
	}
	dataDir, err := filepath.Abs(cfg.dataDir)
	if err != nil {
		return err
	}
	if cfg.nbdSocket == "" {
		cfg.nbdSocket = filepath.Join(dataDir, "nbd.sock")
	}
	unlock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer unlock()

	node, err := control.OpenNode(dataDir, cfg.cluster)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	// The cluster is joined before any drive is touched: a node refused by
	// its cluster (another cluster's kvdb, another cluster's node) stops
	// here, having changed nothing.
	clus, err := joinCluster(ctx, cfg, node, dataDir, hostOf(apiAddr), log)
	if err != nil && ctx.Err() != nil {
		// Stopped (a signal) while joining: a clean stop, nothing touched.
		log.Info("stopped while joining the cluster", "err", err)
		log.Info("cairn daemon stopped")
		return nil
	}
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	defer clus.close()
	drives, err := chooseDrives(cfg, node, newDriveScanner(), dataDir, defaultSize, log)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}

	metrics := control.NewMetrics()
	eng, err := engine.Open(engine.Options{NodeID: node.ID(), Drives: drives, Observer: metrics, FillRate: fillRate,
		Catalog: control.NewVolumeCatalog(dataDir, log)})
	if err != nil {
		return fmt.Errorf("daemon: open engine: %w", err)
	}
	logStorageProblems(log, eng)
	engineOpen := true
	defer func() {
		if engineOpen {
			eng.Close()
		}
	}()
	// Remember the drives once the engine has opened, refused ones too: a
	// drive missing now (its pool's volumes unavailable) is opened again
	// when it is back; status lists the refusals meanwhile.
	if err := node.RememberDrives(drives...); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	metrics.CollectStorage(eng)

	if cfg.cpuProfile != "" {
		stopProfile, err := startCPUProfile(cfg.cpuProfile)
		if err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
		defer stopProfile()
	}

	apiListener, err := net.Listen("tcp", apiAddr)
	if err != nil {
		return fmt.Errorf("daemon: management API: %w", err)
	}
	attachCfg := control.AttachConfig{DataDir: dataDir, NBDSocket: cfg.nbdSocket, NodeID: node.ID(), Logger: log}
	if cfg.restoreGate != "" {
		attachCfg.BeforeRestore = func(ctx context.Context) { waitForFile(ctx, cfg.restoreGate) }
	}
	attacher := control.NewAttacher(eng, attachCfg)
	if cfg.snapMinute <= 0 {
		return fmt.Errorf("daemon: --snap-minute %v: must be positive", cfg.snapMinute)
	}
	apiServer := control.NewServer(eng, node, metrics, log)
	// Scheduled snapshots are cluster objects: taken and pruned through
	// the server, which registers them (once the node has joined).
	schedCtx, stopScheduler := context.WithCancel(context.Background())
	defer stopScheduler()
	scheduler, err := control.NewScheduler(eng, control.SchedulerConfig{
		StatePath: filepath.Join(dataDir, "snapschedule.json"), Minute: cfg.snapMinute, Logger: log,
		Snapshot: func(volume, name string) (engine.VolumeInfo, error) {
			return apiServer.SnapshotHeld(schedCtx, volume, name)
		},
		Delete: func(name string) error { return apiServer.DeleteHeld(schedCtx, name) },
	})
	if err != nil {
		apiListener.Close()
		return fmt.Errorf("daemon: %w", err)
	}
	cloudsnaps, err := control.NewCloudsnaps(eng, control.CloudsnapsConfig{
		StatePath: filepath.Join(dataDir, "cloudsnap.json"), NodeID: node.ID(), Cluster: clus.cloudsnapStore, Minute: cfg.snapMinute, Logger: log,
		// Its snapshots and restored volumes are cluster objects too.
		Snapshot: apiServer.SnapshotHeld, Delete: apiServer.DeleteHeld, Create: apiServer.CreateRestored,
	})
	if err != nil {
		apiListener.Close()
		return fmt.Errorf("daemon: %w", err)
	}
	defer cloudsnaps.Shutdown() // error paths; the shutdown below stops it before the engine closes
	exports := control.NewExports(eng)
	apiServer.SetAttacher(attacher)
	apiServer.SetScheduler(scheduler)
	apiServer.SetCloudsnaps(cloudsnaps)
	api := &http.Server{
		Handler:           apiServer.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// The API answers from here on, but the node is "starting" (status
	// says so, changes are refused) until attacher.Restore has finished.
	errc := make(chan error, 4)
	go func() { errc <- api.Serve(apiListener) }()
	log.Info("api listening", "addr", apiListener.Addr().String())

	nbdStop, nbdTCP, err := startNBD(exports, nbdAddr, cfg.nbdSocket, log, errc)
	if err != nil {
		api.Close()
		return fmt.Errorf("daemon: %w", err)
	}
	replStop, replTCP, err := startReplication(eng, node, replAddr, filepath.Join(dataDir, "replication"), log, errc)
	if err != nil {
		api.Close()
		nbdStop()
		return fmt.Errorf("daemon: %w", err)
	}
	defer replStop() // error paths; the shutdown below stops it before the engine closes
	// Registered once every address is known: other nodes find it there.
	if err := clus.register(ctx, cfg, node, eng, apiListener.Addr().String(), nbdTCP, replTCP.Addr); err != nil {
		api.Close()
		nbdStop()
		return fmt.Errorf("daemon: %w", err)
	}
	apiServer.SetCluster(clus.serverConfig(apiListener.Addr().String(), hostOf(apiAddr)))
	apiServer.SetReplication(control.ReplicationConfig{Server: replTCP.Server, LocalIP: hostOf(nbdAddr),
		StateDir: filepath.Join(dataDir, "replication", "regions"), Timeout: cfg.replTimeout, ResyncRate: resyncRate})
	exports.SetLocate(func(name string) error { return apiServer.Locate(context.Background(), name) })
	exports.SetReplicated(apiServer.OpenReplicated)
	attacher.SetReplicated(apiServer.OpenReplicated)
	// A cloudsnap restore the previous run left half done is deleted
	// first: reconciliation would record its volume ready.
	cloudsnaps.RecoverRestores()
	// The drives and the cluster's specs agree before the node takes
	// changes (the attachments' restore below is what opens it to them);
	// what cannot agree is reported, and the node starts anyway.
	if err := apiServer.Reconcile(ctx); err != nil {
		log.Error("cluster: reconciliation at start failed; retried every 30 s", "err", err)
	}
	go apiServer.RunReconcile(schedCtx)

	// Volumes attached (and mounted) when the daemon last stopped are
	// served again before the node is ready: Restore's end is what makes
	// `cairn status` succeed.
	attacher.Restore(ctx)
	schedDone := make(chan struct{})
	go func() {
		defer close(schedDone)
		scheduler.Run(schedCtx)
	}()
	cloudsnaps.Start()
	st := eng.Status()
	log.Info("cairn daemon ready", "node_id", node.ID(), "cluster", node.Cluster(), "cluster_uuid", node.ClusterUUID(), "data_dir", dataDir, "pools", len(st.Pools), "drives", len(drives),
		"restore_errors", len(attacher.RestoreState().Errors))

	var serveErr error
	select {
	case <-ctx.Done():
		// A second signal should not be swallowed while shutdown waits on
		// clients: restore the default action, which ends the process.
		signal.Reset(os.Interrupt, syscall.SIGTERM)
		log.Info("signal received, shutting down (signal again to stop at once)")
	case serveErr = <-errc:
		log.Error("listener failed, shutting down", "err", serveErr)
	}

	// Order matters: stop taking control requests, let NBD clients' in-flight
	// requests finish (and their flushes reach the engine), then close the
	// engine, which makes everything durable.
	sctx, cancel := context.WithTimeout(context.Background(), apiShutdownTimeout)
	if err := api.Shutdown(sctx); err != nil {
		log.Warn("api shutdown", "err", err)
	}
	cancel()
	// No snapshot is taken or pruned once shutdown has begun.
	stopScheduler()
	<-schedDone
	// Running cloudsnaps stop and clean up (their snapshots, their
	// uploads, a restore's volume) while the engine is still open.
	cloudsnaps.Shutdown()
	// Host attachments next: unmount what host mount mounted, detach the
	// devices (kernel NBD ones are clients of the NBD server), unmount FUSE.
	attachErr := attacher.Shutdown()
	nbdErr := nbdStop() // the last client of a replicated volume flushes its replicas
	replStop()
	engineOpen = false
	closeErr := eng.Close()
	// Leave the cluster last: the node shows Online until its data is
	// safe, then Offline at once (its lease revoked). An embedded kvdb
	// stops after that; other nodes' streams to it get a few seconds.
	clus.close()
	if err := errors.Join(attachErr, nbdErr, closeErr); err != nil {
		return fmt.Errorf("daemon: shutdown: %w", err)
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !serverClosed(serveErr) {
		return fmt.Errorf("daemon: %w", serveErr)
	}
	log.Info("cairn daemon stopped")
	return nil
}

// logStorageProblems logs, at start, every drive the engine refused, every
// pool it could not open, every volume left unavailable by them and every
// name found in two pools: status shows them too, but the log is where an
// operator looks first after a restart.
func logStorageProblems(log *slog.Logger, eng *engine.Engine) {
	st := eng.Status()
	for _, d := range st.RefusedDrives {
		log.Error("drive refused", "path", d.Path, "reason", d.Status)
	}
	for _, p := range st.Pools {
		if p.Status != "Online" {
			log.Error("pool failed", "pool", p.ID, "io_priority", p.IOPriority, "reason", p.Status)
		}
	}
	for _, v := range eng.Volumes() {
		if v.Unavailable {
			log.Error("volume unavailable", "name", v.Name, "reason", strings.TrimPrefix(v.State, "unavailable: "))
		}
	}
	for _, d := range st.DuplicateNames {
		log.Error("volume name in more than one pool; each copy is served under its own name", "name", d.Name, "served_as", strings.Join(d.ServedAs, ","))
	}
}

// chooseDrives merges the remembered drives with -s and -a, and falls back to
// the embedded default when there is none and the node is not storageless.
func chooseDrives(cfg daemonConfig, node *control.Node, scanner driveScanner, dataDir string, defaultSize int64, log *slog.Logger) ([]engine.DriveSpec, error) {
	remembered := node.Drives()
	if cfg.storageless {
		if len(remembered) > 0 {
			return nil, fmt.Errorf("-z: this node already has %d drive(s) recorded in %s; it cannot become storageless", len(remembered), dataDir)
		}
		return nil, nil
	}
	// One drive is one spec, however many paths name it: a drive listed
	// twice would be formatted twice (see engine.Open, which refuses it too).
	var given []engine.DriveSpec
	givenBy := map[drive.Identity]string{}
	for _, p := range cfg.drives {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		id, err := drive.IdentityOf(abs)
		if err != nil {
			return nil, fmt.Errorf("-s %s: %w", p, err)
		}
		if prev, dup := givenBy[id]; dup {
			return nil, fmt.Errorf("-s %s and -s %s are the same drive; give each drive once", prev, p)
		}
		givenBy[id] = p
		given = append(given, engine.DriveSpec{Path: abs, Force: cfg.force})
	}
	if cfg.allDrives {
		found, skipped, err := scanner.unusedDrives(cfg.force)
		if err != nil {
			return nil, fmt.Errorf("-a: %w", err)
		}
		for _, s := range skipped {
			if s.Reason != reasonVirtual {
				log.Info("-a: skipping drive", "dev", s.Dev, "reason", s.Reason)
			}
		}
		if len(found) == 0 && len(remembered) == 0 && len(given) == 0 {
			return nil, errors.New("-a: no unused drives found on this node; give drives with -s, or omit -a to use the embedded default file drive")
		}
		for _, dev := range found {
			id, err := drive.IdentityOf(dev)
			if err != nil {
				return nil, fmt.Errorf("-a: %w", err)
			}
			if _, dup := givenBy[id]; !dup {
				givenBy[id] = dev
				given = append(given, engine.DriveSpec{Path: dev, Force: cfg.force})
			}
		}
	}
	// Flags win over the remembered spec of the same drive (they may force;
	// the engine never reformats the node's own drives, force or not).
	// A remembered drive that is gone is still handed to the engine, which
	// reports it refused.
	drives := given
	for _, d := range remembered {
		id, err := drive.IdentityOf(d.Path)
		if err != nil {
			drives = append(drives, d)
			continue
		}
		if _, dup := givenBy[id]; !dup {
			givenBy[id] = d.Path
			drives = append(drives, d)
		}
	}
	if len(drives) > 0 {
		return drives, nil
	}
	path := filepath.Join(dataDir, defaultDriveName)
	if err := createSparseFile(path, defaultSize); err != nil {
		return nil, err
	}
	log.Info("using the embedded default drive", "path", path, "size", formatSize(defaultSize))
	return []engine.DriveSpec{{Path: path}}, nil
}

// createSparseFile makes a blank file drive of size bytes, unless it exists.
func createSparseFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("default drive: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("default drive: %w", err)
	}
	return f.Close()
}

// lockDataDir makes sure one daemon at a time owns a data directory: two
// engines on the same drives would destroy each other's metadata.
func lockDataDir(dataDir string) (unlock func(), err error) {
	path := filepath.Join(dataDir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("daemon: another cairn daemon is running on %s", dataDir)
		}
		return nil, fmt.Errorf("daemon: lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// withInterface replaces the host of addr with iface: an IP address, or the
// first IPv4 (else IPv6) address of the named network interface.
func withInterface(addr, iface string) (string, error) {
	if iface == "" {
		return addr, nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(iface); ip != nil {
		return net.JoinHostPort(ip.String(), port), nil
	}
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return "", fmt.Errorf("%q is neither an IP address nor an interface: %w", iface, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return "", err
	}
	var v6 net.IP
	for _, a := range addrs {
		ipnet, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ipnet.IP.To4() != nil {
			return net.JoinHostPort(ipnet.IP.String(), port), nil
		}
		if v6 == nil && !ipnet.IP.IsLinkLocalUnicast() {
			v6 = ipnet.IP
		}
	}
	if v6 != nil {
		return net.JoinHostPort(v6.String(), port), nil
	}
	return "", fmt.Errorf("interface %s has no usable address", iface)
}

// waitForFile returns once path exists or ctx is done (--restore-gate).
func waitForFile(ctx context.Context, path string) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
