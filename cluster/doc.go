// Package cluster keeps a cairn cluster's shared state in etcd: the
// cluster's identity, its nodes (and which of them are alive) and volume
// specs whose names are unique across the cluster, with the node that
// holds each one's data. The data path never waits on it; only control
// operations do.
//
// # Key layout (version 1)
//
// Every key lives under one prefix per cluster, so several clusters can
// share an etcd (as Portworx clusters do) and a later layout can sit beside
// this one (/cairn/v2/...) while nodes upgrade. Values are JSON objects;
// readers ignore fields they do not know, writers never reuse a field's name
// for another meaning.
//
//	/cairn/v1/<cluster>/identity        Identity {"name","uuid","created"}
//	                                    written once, by the transaction that
//	                                    creates the cluster; never changed
//	/cairn/v1/<cluster>/nodes/<id>      NodeRecord: what a node says about
//	                                    itself, rewritten when it changes; no
//	                                    lease, so an Offline node stays listed
//	/cairn/v1/<cluster>/alive/<id>      Heartbeat {"clock","lease"} under the
//	                                    node's lease (TTL LeaseTTL): present
//	                                    means Online; rewritten every
//	                                    HeartbeatInterval with the node's clock
//	/cairn/v1/<cluster>/deleted/<id>    Tombstone {"deleted","hostname",
//	                                    "mgmt_addr","lost_volumes"}: written
//	                                    with the delete of nodes/<id> by
//	                                    `cluster delete`; a node with a
//	                                    tombstone never registers again
//	/cairn/v1/<cluster>/volumes/<name>  VolumeSpec {"name","id","size","repl",
//	                                    "io_priority","sticky","snap_interval",
//	                                    "snap_keep","snapshot","parent",
//	                                    "placement":{"nodes","zones","racks"},
//	                                    "state","replicas":[{"node","pool",
//	                                    "io_priority"}],"epoch","created"}:
//	                                    one per volume, snapshot and clone.
//	                                    Created (state "creating", pool -1) by
//	                                    a transaction that requires the key to
//	                                    be absent, so of two creates of one
//	                                    name exactly one wins; then "ready"
//	                                    once on the node's drives, "deleting"
//	                                    while it is being deleted. After the
//	                                    create, only the node in replicas[0]
//	                                    writes it, each write comparing the
//	                                    revision it read (control/clustervol.go
//	                                    has the order of steps and the
//	                                    invariant). Removed with its node by
//	                                    a forced `cluster delete`.
//	/cairn/v1/embedded                  {"cluster"}: set in an embedded etcd by
//	                                    the node that runs it; nodes of another
//	                                    cluster name are refused there
//
// <cluster> is the cluster name (-c), <id> the node id (a UUID kept in the
// node's data directory), <name> a volume name (engine naming rules: no "/").
//
// # Liveness
//
// A node grants a lease of LeaseTTL seconds, keeps it alive, and writes its
// heartbeat under it. When the node dies the lease expires and etcd deletes
// the heartbeat: the node is Offline at most LeaseTTL (plus etcd's expiry
// check, under a second) after its last keep-alive. A node that stops
// cleanly revokes its lease and is Offline at once. A node that loses its
// lease (etcd unreachable for longer than the TTL) registers again with a
// new lease when etcd is back.
//
// # Clock skew
//
// Each member watches the heartbeats. For every heartbeat it receives it
// notes the writer's clock minus its own (watch delivery on a working link
// takes milliseconds); a node whose offset is more than MaxClockSkew from the
// median offset of the Online nodes is flagged. A heartbeat replayed late
// (after a watch reconnect) may flag a node for one heartbeat interval.
//
// # Failure
//
// Every etcd call runs under a short deadline (CallTimeout): when etcd is
// unreachable or has no quorum, calls fail with ErrUnavailable ("kvdb
// unavailable") within that deadline instead of hanging.
package cluster
