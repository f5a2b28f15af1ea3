package control

import "github.com/prometheus/client_golang/prometheus"

// replicationCollector exports, at each scrape, the state of the replicas
// of every volume this node coordinates (read from the coordinators, so the
// data path keeps only its atomic counters).
type replicationCollector struct{ s *Server }

var (
	replicaInSyncDesc = prometheus.NewDesc("cairn_replica_in_sync",
		"1 while the replica is in the volume's in-sync set, 0 otherwise (volumes this node coordinates).", []string{"volume", "node", "state"}, nil)
	replicaMissingDesc = prometheus.NewDesc("cairn_replica_missing_bytes",
		"Bytes of the regions an out-of-sync or resyncing replica misses.", []string{"volume", "node"}, nil)
	replicaResyncDesc = prometheus.NewDesc("cairn_replica_resync_copied_bytes",
		"Bytes the resync under way has copied to the replica.", []string{"volume", "node"}, nil)
	replicaWritesDesc = prometheus.NewDesc("cairn_replica_writes_total",
		"Writes the replica answered since its coordinator opened the volume.", []string{"volume", "node"}, nil)
	replicaWriteSecondsDesc = prometheus.NewDesc("cairn_replica_write_seconds_total",
		"Total time of those writes, send to reply: divided by cairn_replica_writes_total, the replica's mean write latency.", []string{"volume", "node"}, nil)
	volumeDegradedDesc = prometheus.NewDesc("cairn_volume_replication_degraded",
		"1 while a volume this node coordinates has a replica out of the in-sync set.", []string{"volume"}, nil)
)

func (replicationCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{replicaInSyncDesc, replicaMissingDesc, replicaResyncDesc, replicaWritesDesc, replicaWriteSecondsDesc, volumeDegradedDesc} {
		ch <- d
	}
}

func (rc replicationCollector) Collect(ch chan<- prometheus.Metric) {
	rc.s.coords.mu.Lock()
	names := make([]string, 0, len(rc.s.coords.open))
	for name := range rc.s.coords.open {
		names = append(names, name)
	}
	rc.s.coords.mu.Unlock()
	for _, name := range names {
		c := rc.s.coordinatorOf(name)
		if c == nil {
			continue
		}
		degraded := 0.0
		for _, st := range c.Status() {
			in := 0.0
			if st.State.String() == "in-sync" {
				in = 1
			} else {
				degraded = 1
			}
			ch <- prometheus.MustNewConstMetric(replicaInSyncDesc, prometheus.GaugeValue, in, name, st.Node, st.State.String())
			ch <- prometheus.MustNewConstMetric(replicaMissingDesc, prometheus.GaugeValue, float64(st.Missing), name, st.Node)
			ch <- prometheus.MustNewConstMetric(replicaResyncDesc, prometheus.GaugeValue, float64(st.Copied), name, st.Node)
			ch <- prometheus.MustNewConstMetric(replicaWritesDesc, prometheus.CounterValue, float64(st.Writes), name, st.Node)
			ch <- prometheus.MustNewConstMetric(replicaWriteSecondsDesc, prometheus.CounterValue, st.WriteSeconds, name, st.Node)
		}
		ch <- prometheus.MustNewConstMetric(volumeDegradedDesc, prometheus.GaugeValue, degraded, name)
	}
}
