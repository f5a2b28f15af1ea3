package control

import (
	"time"

	"github.com/cairn-storage/cairn/engine"
)

// Volume is the JSON shape of a volume. Sizes are bytes; created is RFC 3339.
type Volume struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Size         int64  `json:"size"`
	Used         int64  `json:"used"`
	Repl         int    `json:"repl"`
	IOPriority   string `json:"io_priority"`
	Sticky       bool   `json:"sticky"`
	State        string `json:"state"`
	SnapInterval int    `json:"snap_interval"` // minutes, 0 = off
	Parent       string `json:"parent"`
	ReadOnly     bool   `json:"readonly"`
	AttachedOn   string `json:"attached_on"` // node id while attached on a host, else ""
	Created      string `json:"created"`
	Device       string `json:"device"`    // block device while attached (/dev/loopN, /dev/nbdN), else ""
	Snapshot     bool   `json:"snapshot"`  // a read-only snapshot of Parent
	SnapKeep     int    `json:"snap_keep"` // scheduled snapshots kept (default engine.DefaultSnapKeep)
	// CloudsnapInterval (minutes, 0 = off) and CloudsnapKeep: scheduled cloudsnaps.
	CloudsnapInterval int `json:"cloudsnap_interval"`
	CloudsnapKeep     int `json:"cloudsnap_keep"`

	// RequestedIOPriority is what create asked for; io_priority differs
	// when no pool of that class existed (high → medium → low).
	RequestedIOPriority string `json:"requested_io_priority"`

	// Node is the id of the node that holds the volume's data (and serves
	// it over NBD); NodeAddr is that node's management address ("" when
	// the node is not in a cluster yet).
	Node     string `json:"node"`
	NodeAddr string `json:"node_addr"`

	// A replicated volume (inspect): each replica, the volume's
	// replication status (ReplUp, ReplDegraded, ReplResyncing) and the
	// node serving it now ("" while no client has it open).
	Replicas    []ReplicaView `json:"replicas,omitempty"`
	ReplStatus  string        `json:"repl_status,omitempty"`
	Coordinator string        `json:"coordinator,omitempty"`
}

// ReplicaView is one replica of a volume as inspect shows it.
type ReplicaView struct {
	Node string `json:"node"`
	Pool int    `json:"pool"`
	// State: in-sync, resyncing, out-of-sync, or offline (an in-sync
	// replica whose node is Offline: it leaves the set at the next write).
	State string `json:"state"`
	// Progress of a resync: bytes copied of bytes to copy; Missing: what an
	// out-of-sync replica misses (as far as the coordinator knows).
	Copied  int64 `json:"copied,omitempty"`
	ToCopy  int64 `json:"to_copy,omitempty"`
	Missing int64 `json:"missing,omitempty"`
}

// Replication statuses (Volume.ReplStatus).
const (
	ReplUp        = "Up"
	ReplDegraded  = "Degraded"
	ReplResyncing = "Resyncing"
)

// HAUpdateRequest is the body of POST /v1/volumes/{name}/ha: the volume's
// new replication factor (one more or one fewer than it has) and, when
// given, the node to add the replica on or remove it from.
type HAUpdateRequest struct {
	Repl int    `json:"repl"`
	Node string `json:"node,omitempty"`
}

// VerifyReply is the body of POST /v1/volumes/{name}/verify.
type VerifyReply struct {
	Volume   string   `json:"volume"`
	Replicas []string `json:"replicas"` // the in-sync replicas' nodes compared
	Bytes    int64    `json:"bytes"`
	// Differences: regions whose checksums differ, each with every
	// replica's checksum by node.
	Differences []VerifyDifference `json:"differences"`
}

// VerifyEvent is one line of POST /v1/volumes/{name}/verify?progress=1
// (application/x-ndjson): progress (Done of Total bytes compared) about
// every second, then one line with the Result or the Error.
type VerifyEvent struct {
	Done   int64        `json:"done"`
	Total  int64        `json:"total"`
	Result *VerifyReply `json:"result,omitempty"`
	Error  *errorBody   `json:"error,omitempty"`
}

type VerifyDifference struct {
	Offset int64             `json:"offset"`
	Length int64             `json:"length"`
	Sums   map[string]string `json:"sums"`
}

// Status is the JSON shape of `cairn status`.
type Status struct {
	NodeID  string `json:"node_id"`
	Status  string `json:"status"` // "operational"; "degraded" (statusWord, or an attachment not restored); "starting" until restored (Status.Ready)
	Cluster string `json:"cluster"`
	Pools   []Pool `json:"pools"`
	// RefusedDrives are drives the node was given but did not use, with the reason.
	RefusedDrives []Drive `json:"refused_drives"`
	// DuplicateVolumes are names found in more than one pool at start; each
	// copy is served under NAME@poolN until the operator deletes one.
	DuplicateVolumes []DuplicateVolume `json:"duplicate_volumes"`
	// UnavailableVolumes counts volumes whose pool is missing (volume list
	// shows them with the reason).
	UnavailableVolumes int `json:"unavailable_volumes"`
	// CatalogError is the last failure to save DATA_DIR/volumes.json (the
	// names kept for missing pools), "" once a save succeeds.
	CatalogError string `json:"catalog_error"`
	// SnapshotErrors are the most recent failures of the snapshot scheduler
	// (a scheduled snapshot not taken, an old one not pruned), oldest first.
	SnapshotErrors []SnapshotError `json:"snapshot_errors"`
	// Restoring is how many attachments of the previous run are still to
	// be attached and mounted again (while Status is "starting").
	Restoring int `json:"restoring"`
	// RestoreErrors are the attachments and mounts of the previous run that
	// could not be restored at start.
	RestoreErrors []RestoreError `json:"restore_errors"`
	// ClusterSummary is the cluster this node is a member of (Cluster is
	// its name): uuid, nodes online of total, the kvdb and its health.
	ClusterSummary *ClusterSummary `json:"cluster_summary,omitempty"`
}

// DuplicateVolume is one volume name found in more than one pool.
type DuplicateVolume struct {
	Name     string   `json:"name"`
	ServedAs []string `json:"served_as"`
}

// Pool is one storage pool of the node.
type Pool struct {
	ID         int     `json:"id"`
	IOPriority string  `json:"io_priority"`
	Raid       string  `json:"raid"`
	Size       int64   `json:"size"`
	Used       int64   `json:"used"`        // bytes holding data
	Allocated  int64   `json:"allocated"`   // bytes of extents in use: more than used while snapshot-redirected extents fill
	Filling    int64   `json:"filling"`     // extents redirected after a snapshot, not yet complete
	FillRAM    int64   `json:"fill_ram"`    // bytes of RAM their states and lookup table take
	FillBudget int64   `json:"fill_budget"` // what it may take before the filler completes some regardless
	Status     string  `json:"status"`
	Drives     []Drive `json:"drives"`
}

// Drive is one drive of a pool.
type Drive struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Used   int64  `json:"used"`
	Status string `json:"status"`
}

// CreateVolumeRequest is the body of POST /v1/volumes. Zero values take the
// defaults: repl 1, io_priority low, block_size 4096.
type CreateVolumeRequest struct {
	Name         string `json:"name"`
	Size         int64  `json:"size"`
	Repl         int    `json:"repl,omitempty"`
	IOPriority   string `json:"io_priority,omitempty"`
	Sticky       bool   `json:"sticky,omitempty"`
	SnapInterval int    `json:"snap_interval,omitempty"`
	SnapKeep     int    `json:"snap_keep,omitempty"` // 0 = engine.DefaultSnapKeep
	BlockSize    int    `json:"block_size,omitempty"`
	// Scheduled cloudsnaps (cloudsnap.go): minutes (0 = off), and how many to keep.
	CloudsnapInterval int `json:"cloudsnap_interval,omitempty"`
	CloudsnapKeep     int `json:"cloudsnap_keep,omitempty"`
	// Nodes, Zones and Racks restrict where the volume may be created
	// (pxctl's --nodes, --zones, --racks): node ids, zone and rack names.
	Nodes []string `json:"nodes,omitempty"`
	Zones []string `json:"zones,omitempty"`
	Racks []string `json:"racks,omitempty"`
	// ReplicaNodes: set by the node that placed a replicated volume when it
	// forwards the create to the first replica's node; the nodes of the
	// other replicas, in order.
	ReplicaNodes []string `json:"replica_nodes,omitempty"`
}

// ReplicaRequest is the body of POST /v1/internal/replicas: a volume's
// holder asks another node to make its replica (the spec in etcd is the
// holder's to write).
type ReplicaRequest struct {
	Name       string `json:"name"`
	Size       int64  `json:"size"`
	Repl       int    `json:"repl"`
	IOPriority string `json:"io_priority,omitempty"`
	BlockSize  int    `json:"block_size,omitempty"`
}

// ReplicaReply is what the replica's node made.
type ReplicaReply struct {
	Pool       int    `json:"pool"`
	IOPriority string `json:"io_priority"`
}

// UpdateVolumeRequest is the body of PATCH /v1/volumes/{name}; absent fields
// are left alone.
type UpdateVolumeRequest struct {
	Size              *int64 `json:"size,omitempty"`
	Sticky            *bool  `json:"sticky,omitempty"`
	SnapInterval      *int   `json:"snap_interval,omitempty"`
	SnapKeep          *int   `json:"snap_keep,omitempty"`
	CloudsnapInterval *int   `json:"cloudsnap_interval,omitempty"`
	CloudsnapKeep     *int   `json:"cloudsnap_keep,omitempty"`
}

// AddDriveRequest is the body of POST /v1/drives.
type AddDriveRequest struct {
	Path       string `json:"path"`
	IOPriority string `json:"io_priority,omitempty"` // "" = detect
	Force      bool   `json:"force,omitempty"`
}

// errorBody is every error response.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

func volumeFromEngine(info engine.VolumeInfo) Volume {
	return Volume{
		ID:           info.ID,
		Name:         info.Name,
		Size:         info.Size,
		Used:         info.Used,
		Repl:         info.Repl,
		IOPriority:   string(info.IOPriority),
		Sticky:       info.Sticky,
		State:        info.State,
		SnapInterval: info.SnapInterval,
		Parent:       info.Parent,
		ReadOnly:     info.ReadOnly,
		AttachedOn:   "",
		Created:      info.Created.UTC().Format(time.RFC3339),
		Snapshot:     info.Snapshot,
		SnapKeep:     info.SnapKeep,

		RequestedIOPriority: string(info.RequestedIOPriority),
	}
}

func poolsFromEngine(st engine.Status) []Pool {
	pools := make([]Pool, 0, len(st.Pools))
	for _, p := range st.Pools {
		drives := make([]Drive, 0, len(p.Drives))
		for _, d := range p.Drives {
			drives = append(drives, Drive{Path: d.Path, Size: d.Size, Used: d.Used, Status: d.Status})
		}
		pools = append(pools, Pool{
			ID: p.ID, IOPriority: string(p.IOPriority), Raid: p.Raid,
			Size: p.Size, Used: p.Used, Allocated: p.Allocated, Status: p.Status, Drives: drives,
			Filling: p.Filling, FillRAM: p.FillRAM, FillBudget: p.FillBudget,
		})
	}
	return pools
}

func duplicatesFromEngine(st engine.Status) []DuplicateVolume {
	out := make([]DuplicateVolume, 0, len(st.DuplicateNames))
	for _, d := range st.DuplicateNames {
		out = append(out, DuplicateVolume{Name: d.Name, ServedAs: d.ServedAs})
	}
	return out
}

func refusedFromEngine(st engine.Status) []Drive {
	out := make([]Drive, 0, len(st.RefusedDrives))
	for _, d := range st.RefusedDrives {
		out = append(out, Drive{Path: d.Path, Size: d.Size, Used: d.Used, Status: d.Status})
	}
	return out
}

// statusWord is "operational" unless a pool failed, a drive was refused,
// a volume name is in two pools, a volume's pool is missing or the volume
// catalog could not be saved.
func statusWord(st engine.Status) string {
	if len(st.RefusedDrives) > 0 || len(st.DuplicateNames) > 0 || st.UnavailableVolumes > 0 || st.CatalogError != "" {
		return "degraded"
	}
	for _, p := range st.Pools {
		if p.Status != "Online" {
			return "degraded"
		}
	}
	return "operational"
}
