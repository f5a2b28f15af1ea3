package control

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cairn-storage/cairn/engine"
)

// opNames are the "op" label values, indexed by engine.Op.
var opNames = [...]string{
	engine.OpRead:        "read",
	engine.OpWrite:       "write",
	engine.OpFlush:       "flush",
	engine.OpTrim:        "trim",
	engine.OpWriteZeroes: "write_zeroes",
}

// latencyBuckets span 10µs (a cached read) to ~2.6s (a stalled drive).
var latencyBuckets = prometheus.ExponentialBuckets(10e-6, 4, 10)

// Metrics is the engine.Observer that feeds the per-volume I/O metrics, plus
// the registry served at /metrics.
//
// ObserveIO runs on the I/O path, once per request, so it must not allocate
// or take a lock in the steady state: each volume's metric handles are
// resolved once and kept in a copy-on-write map read through an atomic
// pointer. Only the first I/O of a volume (and ForgetVolume) takes mu.
type Metrics struct {
	Registry *prometheus.Registry

	ops     *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	errors  *prometheus.CounterVec
	latency *prometheus.HistogramVec

	mu      sync.Mutex                                  // serialises writers of volumes
	volumes atomic.Pointer[map[string]*volumeIOMetrics] // immutable once published
}

// volumeIOMetrics holds one volume's resolved handles, indexed by engine.Op.
type volumeIOMetrics struct {
	ops, bytes, errors [len(opNames)]prometheus.Counter
	latency            [len(opNames)]prometheus.Observer
}

// NewMetrics registers the I/O metrics and the Go runtime and process
// collectors. It comes before the engine (which takes it as its Observer);
// CollectStorage adds the engine's capacity gauges once it is open.
func NewMetrics() *Metrics {
	labels := []string{"volume", "op"}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_volume_ops_total", Help: "Completed volume I/O requests.",
		}, labels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_volume_bytes_total", Help: "Bytes moved by completed volume I/O requests (trim and write_zeroes count their range).",
		}, labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_volume_errors_total", Help: "Volume I/O requests that returned an error.",
		}, labels),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cairn_volume_op_duration_seconds", Help: "Latency of volume I/O requests inside the engine.",
			Buckets: latencyBuckets,
		}, labels),
	}
	empty := map[string]*volumeIOMetrics{}
	m.volumes.Store(&empty)
	m.Registry.MustRegister(m.ops, m.bytes, m.errors, m.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// CollectStorage registers pool, drive and volume capacity gauges read from e.
func (m *Metrics) CollectStorage(e *engine.Engine) {
	m.Registry.MustRegister(&storageCollector{engine: e})
}

// ObserveIO implements engine.Observer.
func (m *Metrics) ObserveIO(volume string, op engine.Op, bytes int, d time.Duration, err error) {
	if int(op) >= len(opNames) {
		return
	}
	v := (*m.volumes.Load())[volume]
	if v == nil {
		v = m.resolve(volume)
	}
	v.ops[op].Inc()
	if err != nil {
		v.errors[op].Inc()
	} else {
		v.bytes[op].Add(float64(bytes))
	}
	v.latency[op].Observe(d.Seconds())
}

// resolve creates the handles of a volume's first I/O and publishes them.
func (m *Metrics) resolve(volume string) *volumeIOMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.volumes.Load()
	if v := old[volume]; v != nil {
		return v
	}
	v := &volumeIOMetrics{}
	for op, name := range opNames {
		v.ops[op] = m.ops.WithLabelValues(volume, name)
		v.bytes[op] = m.bytes.WithLabelValues(volume, name)
		v.errors[op] = m.errors.WithLabelValues(volume, name)
		v.latency[op] = m.latency.WithLabelValues(volume, name)
	}
	next := make(map[string]*volumeIOMetrics, len(old)+1)
	for k, x := range old {
		next[k] = x
	}
	next[volume] = v
	m.volumes.Store(&next)
	return v
}

// ForgetVolume drops a deleted volume's series, so that a new volume with the
// same name starts from zero and /metrics does not grow without bound.
func (m *Metrics) ForgetVolume(volume string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.volumes.Load()
	next := make(map[string]*volumeIOMetrics, len(old))
	for k, x := range old {
		if k != volume {
			next[k] = x
		}
	}
	m.volumes.Store(&next)
	for _, vec := range []*prometheus.MetricVec{m.ops.MetricVec, m.bytes.MetricVec, m.errors.MetricVec, m.latency.MetricVec} {
		vec.DeletePartialMatch(prometheus.Labels{"volume": volume})
	}
}

// storageCollector reports pool, drive and volume capacity, read from the
// engine at scrape time so the numbers are never stale.
type storageCollector struct {
	engine *engine.Engine
}

var (
	poolSizeDesc       = prometheus.NewDesc("cairn_pool_size_bytes", "Usable bytes of a storage pool.", []string{"pool", "io_priority"}, nil)
	poolUsedDesc       = prometheus.NewDesc("cairn_pool_used_bytes", "Bytes of a storage pool holding data.", []string{"pool", "io_priority"}, nil)
	poolAllocDesc      = prometheus.NewDesc("cairn_pool_allocated_bytes", "Bytes of a storage pool's extents in use (more than used while redirected extents fill after a snapshot).", []string{"pool", "io_priority"}, nil)
	poolFillingDesc    = prometheus.NewDesc("cairn_pool_filling_extents", "Extents of a storage pool redirected after a snapshot whose blocks are partly in the snapshot's extent.", []string{"pool", "io_priority"}, nil)
	poolFillRAMDesc    = prometheus.NewDesc("cairn_pool_fill_ram_bytes", "RAM the state of a pool's filling extents takes.", []string{"pool", "io_priority"}, nil)
	poolFillBudgetDesc = prometheus.NewDesc("cairn_pool_fill_ram_budget_bytes", "RAM a pool's filling extents may take before the filler completes some whatever their fill.", []string{"pool", "io_priority"}, nil)
	driveSizeDesc      = prometheus.NewDesc("cairn_drive_size_bytes", "Bytes of a drive.", []string{"pool", "path"}, nil)
	driveUsedDesc      = prometheus.NewDesc("cairn_drive_used_bytes", "Allocated bytes of a drive.", []string{"pool", "path"}, nil)
	volumeSizeDesc     = prometheus.NewDesc("cairn_volume_size_bytes", "Provisioned size of a volume.", []string{"volume"}, nil)
	volumeUsedDesc     = prometheus.NewDesc("cairn_volume_used_bytes", "Bytes a volume has allocated in its pool.", []string{"volume"}, nil)
)

func (c *storageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolSizeDesc, poolUsedDesc, poolAllocDesc, poolFillingDesc, poolFillRAMDesc, poolFillBudgetDesc, driveSizeDesc, driveUsedDesc, volumeSizeDesc, volumeUsedDesc} {
		ch <- d
	}
}

func (c *storageCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.engine.Status().Pools {
		id := strconv.Itoa(p.ID)
		ch <- prometheus.MustNewConstMetric(poolSizeDesc, prometheus.GaugeValue, float64(p.Size), id, string(p.IOPriority))
		ch <- prometheus.MustNewConstMetric(poolUsedDesc, prometheus.GaugeValue, float64(p.Used), id, string(p.IOPriority))
		ch <- prometheus.MustNewConstMetric(poolAllocDesc, prometheus.GaugeValue, float64(p.Allocated), id, string(p.IOPriority))
		ch <- prometheus.MustNewConstMetric(poolFillingDesc, prometheus.GaugeValue, float64(p.Filling), id, string(p.IOPriority))
		ch <- prometheus.MustNewConstMetric(poolFillRAMDesc, prometheus.GaugeValue, float64(p.FillRAM), id, string(p.IOPriority))
		ch <- prometheus.MustNewConstMetric(poolFillBudgetDesc, prometheus.GaugeValue, float64(p.FillBudget), id, string(p.IOPriority))
		for _, d := range p.Drives {
			ch <- prometheus.MustNewConstMetric(driveSizeDesc, prometheus.GaugeValue, float64(d.Size), id, d.Path)
			ch <- prometheus.MustNewConstMetric(driveUsedDesc, prometheus.GaugeValue, float64(d.Used), id, d.Path)
		}
	}
	for _, v := range c.engine.Volumes() {
		ch <- prometheus.MustNewConstMetric(volumeSizeDesc, prometheus.GaugeValue, float64(v.Size), v.Name)
		ch <- prometheus.MustNewConstMetric(volumeUsedDesc, prometheus.GaugeValue, float64(v.Used), v.Name)
	}
}
