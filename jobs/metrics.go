package jobs

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"google.golang.org/grpc/status"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// Metrics are the sync engine's Prometheus metrics. Labels are low
// cardinality by construction: key kinds, job kinds, gRPC codes, outcomes;
// never a user, pool or provider id. A nil *Metrics records nothing.
type Metrics struct {
	SpiceDBWriteSeconds *prometheus.HistogramVec
	SyncLagSeconds      *prometheus.HistogramVec
	SyncApplied         *prometheus.CounterVec
	SyncFenceRetries    prometheus.Counter
	SyncFailures        *prometheus.CounterVec
	Jobs                *prometheus.CounterVec
	JobsReclaimed       *prometheus.CounterVec
	// ReconcileFallbacks counts reconciles that found a stream out of order
	// and compared in Postgres instead.
	ReconcileFallbacks prometheus.Counter
	// HandOffs counts changes handed off after their commit, by result.
	HandOffs *prometheus.CounterVec
	// Heal are the watcher's, restores' and reschedules' metrics.
	Heal *HealMetrics
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	latency := prometheus.ExponentialBuckets(0.0005, 2, 18) // 0.5 ms … ~65 s
	m := &Metrics{
		SpiceDBWriteSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_spicedb_write_duration_seconds",
			Help:    "Latency of SpiceDB WriteRelationships calls made by sync jobs, by gRPC code (OK or the error).",
			Buckets: latency,
		}, []string{"code"}),
		SyncLagSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_sync_lag_seconds",
			Help:    "Time from the transaction that changed a sync key to the SpiceDB write that applied it, by key kind.",
			Buckets: latency,
		}, []string{"kind"}),
		SyncApplied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sync_applied_total",
			Help: "Sync keys applied to SpiceDB, by key kind.",
		}, []string{"kind"}),
		SyncFenceRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_sync_fence_retries_total",
			Help: "Times a sync job found its key changed while it wrote, and wrote again.",
		}),
		SyncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sync_failures_total",
			Help: "Failed sync attempts, by key kind and whether the error was transient (retried) or not (job cancelled, key stalled).",
		}, []string{"kind", "transient"}),
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_jobs_total",
			Help: "Job attempts finished by this process, by job kind and outcome (completed, failed, cancelled, discarded, snoozed).",
		}, []string{"job_kind", "outcome"}),
		JobsReclaimed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_jobs_reclaimed_total",
			Help: "Running jobs this process took over from worker processes that stopped renewing their lease (presumed dead), by job kind.",
		}, []string{"job_kind"}),
		ReconcileFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_reconcile_stream_fallbacks_total",
			Help: "Reconciles that found SpiceDB's export or the desired relationships out of byte order and compared them in Postgres instead of merging the streams.",
		}),
		HandOffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sync_handoffs_total",
			Help: "Changes applied in the committing process right after their commit, by result (applied; left_to_job: failed or out of time, its job applies it; dropped: a test's fault).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.SpiceDBWriteSeconds, m.SyncLagSeconds, m.SyncApplied, m.SyncFenceRetries, m.SyncFailures, m.Jobs, m.JobsReclaimed,
		m.ReconcileFallbacks, m.HandOffs)
	m.Heal = newHealMetrics(reg)
	return m
}

func (m *Metrics) observeWrite(took time.Duration, err error) {
	if m == nil {
		return
	}
	m.SpiceDBWriteSeconds.WithLabelValues(status.Code(spicedb.UnwrapStatus(err)).String()).Observe(took.Seconds())
}

func (m *Metrics) observeApplied(kind string, fenceRetries int, changedAt time.Time) {
	if m == nil {
		return
	}
	m.SyncApplied.WithLabelValues(kind).Inc()
	m.SyncFenceRetries.Add(float64(fenceRetries))
	if changedAt.After(time.Unix(0, 0)) { // epoch: the key has no recorded change
		m.SyncLagSeconds.WithLabelValues(kind).Observe(max(0, time.Since(changedAt).Seconds()))
	}
}

func (m *Metrics) observeFenceRetries(n int) {
	if m == nil {
		return
	}
	m.SyncFenceRetries.Add(float64(n))
}

func (m *Metrics) observeHandOff(result string) {
	if m == nil {
		return
	}
	m.HandOffs.WithLabelValues(result).Inc()
}

func (m *Metrics) observeReclaimed(jobKind string) {
	if m == nil {
		return
	}
	m.JobsReclaimed.WithLabelValues(jobKind).Inc()
}

func (m *Metrics) observeReconcileFallback() {
	if m == nil {
		return
	}
	m.ReconcileFallbacks.Inc()
}

func (m *Metrics) observeFailure(kind string, transient bool) {
	if m == nil {
		return
	}
	m.SyncFailures.WithLabelValues(kind, strconv.FormatBool(transient)).Inc()
}

// middleware counts job outcomes by kind. (River's completion events miss
// sync jobs: they complete inside their own fence transaction.)
func (m *Metrics) middleware() rivertype.Middleware {
	return river.WorkerMiddlewareFunc(func(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
		err := doInner(ctx)
		if m == nil {
			return err
		}
		var cancelErr *river.JobCancelError
		var snoozeErr *river.JobSnoozeError
		outcome := "failed"
		switch {
		case err == nil:
			outcome = "completed"
		case errors.As(err, &cancelErr):
			outcome = "cancelled"
		case errors.As(err, &snoozeErr):
			outcome = "snoozed"
		case job.Attempt >= job.MaxAttempts:
			outcome = "discarded"
		}
		m.Jobs.WithLabelValues(job.Kind, outcome).Inc()
		return err
	})
}

// RegisterStateGauges exports, on every scrape, what only the database and
// SpiceDB know, so every replica reports the same truth: the age of the
// oldest unapplied change and revocation, pending and stalled keys, the last
// reconcile (whoever ran it), and whether SpiceDB answers with Tether's
// schema. One scrape makes one query of each kind.
func RegisterStateGauges(reg prometheus.Registerer, db *pgxpool.Pool, spice *spicedb.Client) {
	reg.MustRegister(&stateCollector{db: db, spice: spice}, &watchStateCollector{db: db})
}

var stateDescs = struct {
	oldestChange, oldestRevocation, pending, stalled                *prometheus.Desc
	lastRun, lastDuration, lastSuccess, drift, spiceUp, spiceSchema *prometheus.Desc
}{
	oldestChange: prometheus.NewDesc("tether_sync_oldest_unapplied_change_age_seconds",
		"Age of the oldest change not yet applied to SpiceDB (0 when all are applied).", nil, nil),
	oldestRevocation: prometheus.NewDesc("tether_sync_oldest_unapplied_revocation_age_seconds",
		"Age of the oldest change that may revoke access and is not yet applied to SpiceDB (0 when none).", nil, nil),
	pending: prometheus.NewDesc("tether_sync_pending_keys", "Sync keys with a change not yet applied.", nil, nil),
	stalled: prometheus.NewDesc("tether_sync_stalled_keys",
		"Sync keys whose job stopped on a permanent error (the reconciler retries them).", nil, nil),
	lastRun:      prometheus.NewDesc("tether_reconcile_last_run_timestamp_seconds", "When the last reconcile finished (0: never).", nil, nil),
	lastDuration: prometheus.NewDesc("tether_reconcile_last_duration_seconds", "How long the last reconcile took.", nil, nil),
	lastSuccess: prometheus.NewDesc("tether_reconcile_last_success",
		"Whether the last reconcile finished without error (1) or not (0).", nil, nil),
	drift: prometheus.NewDesc("tether_reconcile_drift_relationships",
		"Relationships the last reconcile found out of step on settled keys.", []string{"kind"}, nil),
	spiceUp: prometheus.NewDesc("tether_spicedb_up", "Whether SpiceDB answered the last scrape's schema read (1) or not (0).", nil, nil),
	spiceSchema: prometheus.NewDesc("tether_spicedb_schema_current",
		"Whether SpiceDB holds exactly Tether's schema (0 after a wipe, until reconcile).", nil, nil),
}

type stateCollector struct {
	db    *pgxpool.Pool
	spice *spicedb.Client
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{stateDescs.oldestChange, stateDescs.oldestRevocation, stateDescs.pending,
		stateDescs.stalled, stateDescs.lastRun, stateDescs.lastDuration, stateDescs.lastSuccess, stateDescs.drift,
		stateDescs.spiceUp, stateDescs.spiceSchema} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	q := dbsqlc.New()
	if p, err := q.SyncOldestPending(ctx, c.db); err == nil {
		gauge(stateDescs.oldestChange, p.OldestPendingAgeSeconds)
		gauge(stateDescs.oldestRevocation, p.OldestRevokePendingAgeSeconds)
		gauge(stateDescs.pending, float64(p.PendingKeys))
		gauge(stateDescs.stalled, float64(p.StalledKeys))
	} // on error the series are absent: Prometheus shows the gap
	run, err := q.ReconcileRunLatest(ctx, c.db)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		gauge(stateDescs.lastRun, 0)
	case err == nil:
		success := 1.0
		if run.Error != nil {
			success = 0
		}
		gauge(stateDescs.lastRun, float64(run.FinishedAt.Unix()))
		gauge(stateDescs.lastDuration, run.FinishedAt.Sub(run.StartedAt).Seconds())
		gauge(stateDescs.lastSuccess, success)
		gauge(stateDescs.drift, float64(run.Missing), "missing")
		gauge(stateDescs.drift, float64(run.Extra), "extra")
	}
	up, current := 0.0, 0.0
	if st, err := c.spice.Probe(ctx); err == nil {
		up = 1
		if st == spicedb.SchemaCurrent {
			current = 1
		}
	}
	gauge(stateDescs.spiceUp, up)
	gauge(stateDescs.spiceSchema, current)
}
