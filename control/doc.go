// Package control is the cairn daemon's management plane: the JSON-over-HTTP
// API served on the management address, the typed client every CLI verb
// uses, the node's persisted identity, and the Prometheus metrics.
//
// The API (all bodies JSON; errors are {"error": "...", "code": "..."} with a
// matching HTTP status):
//
//	GET    /v1/status              node, cluster and pools with their drives  → Status
//	GET    /v1/volumes             every volume (not snapshots), by name      → []Volume
//	GET    /v1/volumes?all=true    volumes and snapshots, by name             → []Volume
//	POST   /v1/volumes             CreateVolumeRequest                        → 201 Volume
//	GET    /v1/volumes/{name}      one volume or snapshot                     → Volume
//	PATCH  /v1/volumes/{name}      UpdateVolumeRequest (grow only)            → Volume
//	DELETE /v1/volumes/{name}      refuses sticky, in-use and snapshotted     → 204
//	DELETE /v1/volumes/{name}?force=true  its snapshots first, then it        → DeleteResult
//	POST   /v1/volumes/{name}/snapshots   SnapshotRequest                     → 201 Volume (the snapshot)
//	GET    /v1/snapshots[?volume=NAME]    snapshots, oldest first             → []Volume
//	DELETE /v1/snapshots/{name}    refuses anything but a snapshot            → 204
//	POST   /v1/volumes/{snap}/clone       CloneRequest                        → 201 Volume
//	POST   /v1/volumes/{name}/restore     RestoreRequest (refused in use)     → Volume
//	POST   /v1/drives              AddDriveRequest                            → Status
//	POST   /v1/volumes/{name}/attach   AttachRequest (via fuse|nbd)          → Volume (device set)
//	POST   /v1/volumes/{name}/detach   refuses a volume with a mounted fs    → Volume
//	POST   /v1/volumes/{name}/mount    MountRequest (attach, mkfs if blank)  → Volume
//	POST   /v1/volumes/{name}/unmount  UnmountRequest (detach if auto)       → Volume
//	GET    /v1/cluster/nodes       every node of the cluster, by id          → []ClusterNode
//	GET    /v1/cluster/nodes/{node}  one node (id, or a unique hostname or
//	                               management address)                        → ClusterNode
//	DELETE /v1/cluster/nodes/{node}[?force=true]  an Offline node leaves the
//	                               cluster for good; refused Online, and with
//	                               volumes unless force                       → DeletedNode
//	GET    /metrics                Prometheus text format
//
// The cluster routes and status's cluster_summary read the cluster's etcd
// under a short deadline: with etcd down they answer 503, code
// "kvdb_unavailable", within seconds (status answers, with
// cluster_summary.kvdb.healthy false and status "degraded").
//
// After a restart the node is "starting" until the attachments and mounts of
// its previous run are back (restore.go): status says so, reads are served,
// and every change is refused with 503, code "starting".
//
// {name}, {snap}, ?volume= and RestoreRequest.Snapshot take a volume's (or
// snapshot's) name or its id, as pxctl does. A refusal because a volume is
// in use (code "busy") says what holds it — the device and mounts of an
// attachment, the number of NBD clients — and what to run.
//
// The JSON shapes of Volume and Status are a public contract: scripts and
// tests parse them. Add fields if you must; never rename or remove one.
package control
