package jobs

import (
	"context"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherhq/tether/db/dbsqlc"
	"google.golang.org/grpc/status"
)

// Metrics are the sync engine's Prometheus metrics. A nil *Metrics records
// nothing, so tools and tests need not register any.
type Metrics struct {
	SpiceDBWriteSeconds *prometheus.HistogramVec
	SyncApplied         *prometheus.CounterVec
	SyncFenceRetries    prometheus.Counter
	SyncFailures        *prometheus.CounterVec
	ReconcileDrift      *prometheus.GaugeVec
	ReconcileLastRun    prometheus.Gauge
	ReconcileDuration   prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		SpiceDBWriteSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_spicedb_write_duration_seconds",
			Help:    "Latency of SpiceDB WriteRelationships calls made by sync jobs, by gRPC code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"code"}),
		SyncApplied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sync_applied_total",
			Help: "Sync keys applied to SpiceDB, by key kind.",
		}, []string{"kind"}),
		SyncFenceRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_sync_fence_retries_total",
			Help: "Times a sync job found its key changed while it wrote and wrote again.",
		}),
		SyncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sync_failures_total",
			Help: "Failed sync attempts, by key kind and whether the error was transient (retried) or not (job cancelled).",
		}, []string{"kind", "transient"}),
		ReconcileDrift: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_reconcile_drift_relationships",
			Help: "Relationships the last reconcile found missing from or extra in SpiceDB.",
		}, []string{"kind"}),
		ReconcileLastRun: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_reconcile_last_run_timestamp_seconds",
			Help: "When the last reconcile finished.",
		}),
		ReconcileDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_reconcile_duration_seconds",
			Help: "How long the last reconcile took.",
		}),
	}
	reg.MustRegister(m.SpiceDBWriteSeconds, m.SyncApplied, m.SyncFenceRetries, m.SyncFailures,
		m.ReconcileDrift, m.ReconcileLastRun, m.ReconcileDuration)
	return m
}

func (m *Metrics) observeWrite(started time.Time, err error) {
	if m == nil {
		return
	}
	m.SpiceDBWriteSeconds.WithLabelValues(status.Code(unwrapStatus(err)).String()).Observe(time.Since(started).Seconds())
}

func (m *Metrics) observeApplied(kind string, fenceRetries int) {
	if m == nil {
		return
	}
	m.SyncApplied.WithLabelValues(kind).Inc()
	m.SyncFenceRetries.Add(float64(fenceRetries))
}

func (m *Metrics) observeFailure(kind string, transient bool) {
	if m == nil {
		return
	}
	m.SyncFailures.WithLabelValues(kind, strconv.FormatBool(transient)).Inc()
}

func (m *Metrics) observeReconcile(r *ReconcileReport) {
	if m == nil {
		return
	}
	m.ReconcileDrift.WithLabelValues("missing").Set(float64(r.Missing))
	m.ReconcileDrift.WithLabelValues("extra").Set(float64(r.Extra))
	m.ReconcileLastRun.Set(float64(time.Now().Unix()))
	m.ReconcileDuration.Set(r.Duration.Seconds())
}

// RegisterSyncGauges exports, on every scrape, the age of the oldest change
// not yet applied to SpiceDB (and of the oldest revocation among them), and
// how many keys wait or are stalled. Read from Postgres, so any replica
// reports the same truth.
func (m *Metrics) RegisterSyncGauges(reg prometheus.Registerer, db *pgxpool.Pool) {
	read := func() *dbsqlc.SyncOldestPendingRow {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		row, err := dbsqlc.New().SyncOldestPending(ctx, db)
		if err != nil {
			return &dbsqlc.SyncOldestPendingRow{OldestPendingAgeSeconds: math.NaN(), OldestRevokePendingAgeSeconds: math.NaN(),
				PendingKeys: -1, StalledKeys: -1}
		}
		return row
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_sync_oldest_unapplied_change_age_seconds",
			Help: "Age of the oldest change not yet applied to SpiceDB (0 when all are applied).",
		}, func() float64 { return read().OldestPendingAgeSeconds }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_sync_oldest_unapplied_revocation_age_seconds",
			Help: "Age of the oldest change that may revoke access and is not yet applied to SpiceDB.",
		}, func() float64 { return read().OldestRevokePendingAgeSeconds }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_sync_pending_keys",
			Help: "Sync keys with a change not yet applied.",
		}, func() float64 { return float64(read().PendingKeys) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_sync_stalled_keys",
			Help: "Sync keys whose job stopped on a permanent error (the reconciler retries them).",
		}, func() float64 { return float64(read().StalledKeys) }),
	)
}
