package jobs

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherhq/tether/db/dbsqlc"
)

// HealMetrics are the self-healing metrics: what the watcher saw and
// repaired, restores, rescheduled jobs. Counters count in the process that
// did the work; sum them over replicas.
type HealMetrics struct {
	ForeignChanges  *prometheus.CounterVec
	ForeignRepaired *prometheus.CounterVec
	WatchChanges    *prometheus.CounterVec
	Restores        *prometheus.CounterVec
	Rescheduled     prometheus.Counter
	WatchSilent     prometheus.Counter

	// watching is true while this process holds the watch lease and its
	// stream is open; receivedAt is when the message being processed now
	// arrived (0: none), which makes the oldest unprocessed one (FIFO).
	watching   atomic.Bool
	receivedAt atomic.Int64
}

func newHealMetrics(reg prometheus.Registerer) *HealMetrics {
	m := &HealMetrics{
		ForeignChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_spicedb_foreign_changes_total",
			Help: "Changes to Tether's relations in SpiceDB not made by Tether that disagreed with Postgres, by relation.",
		}, []string{"relation"}),
		ForeignRepaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_spicedb_foreign_changes_repaired_total",
			Help: "Foreign changes undone (the key's state rewritten from Postgres), by relation.",
		}, []string{"relation"}),
		WatchChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_spicedb_watch_changes_total",
			Help: "Relationship changes the watcher received, by origin: tether (signed by Tether) or other.",
		}, []string{"origin"}),
		Restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_spicedb_restores_total",
			Help: "Full restores (schema written back if needed, everything reconciled) run by this process, by trigger.",
		}, []string{"trigger"}),
		Rescheduled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_sync_jobs_rescheduled_total",
			Help: "Sync jobs waiting out a retry backoff that were made available at once because SpiceDB answered again.",
		}),
	}
	m.WatchSilent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tether_spicedb_watch_silent_total",
		Help: "Watch streams reconnected because they delivered nothing after a write of this process they had to deliver (a connection that stopped answering without an error).",
	})
	up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tether_spicedb_watcher_up",
		Help: "1 if this process holds the watch lease and its SpiceDB Watch stream is open.",
	}, func() float64 {
		if m.watching.Load() {
			return 1
		}
		return 0
	})
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tether_spicedb_watch_lag_seconds",
		Help: "Age of the oldest change the watcher received and has not finished processing (0 when caught up or not watching).",
	}, func() float64 { return m.lag().Seconds() })
	reg.MustRegister(m.ForeignChanges, m.ForeignRepaired, m.WatchChanges, m.Restores, m.Rescheduled, m.WatchSilent, up, lag)
	return m
}

func (m *HealMetrics) lag() time.Duration {
	at := m.receivedAt.Load()
	if at == 0 || !m.watching.Load() {
		return 0
	}
	return max(0, time.Since(time.Unix(0, at)))
}

func (m *Metrics) heal() *HealMetrics {
	if m == nil {
		return nil
	}
	return m.Heal
}

func (m *Metrics) observeRepaired(relations []string) {
	if h := m.heal(); h != nil {
		for _, rel := range relations {
			h.ForeignRepaired.WithLabelValues(rel).Inc()
		}
	}
}

func (m *Metrics) observeForeign(relation string) {
	if h := m.heal(); h != nil {
		h.ForeignChanges.WithLabelValues(relation).Inc()
	}
}

func (m *Metrics) observeWatchChanges(origin string, n int) {
	if h := m.heal(); h != nil {
		h.WatchChanges.WithLabelValues(origin).Add(float64(n))
	}
}

func (m *Metrics) observeRestore(trigger string) {
	if h := m.heal(); h != nil {
		h.Restores.WithLabelValues(trigger).Inc()
	}
}

func (m *Metrics) observeWatchSilent() {
	if h := m.heal(); h != nil {
		h.WatchSilent.Inc()
	}
}

func (m *Metrics) observeRescheduled(n int64) {
	if h := m.heal(); h != nil {
		h.Rescheduled.Add(float64(n))
	}
}

func (m *Metrics) setWatching(on bool) {
	if h := m.heal(); h != nil {
		h.watching.Store(on)
		h.receivedAt.Store(0)
	}
}

// setProcessing records when the message being processed arrived (zero
// time: none).
func (m *Metrics) setProcessing(receivedAt time.Time) {
	if h := m.heal(); h != nil {
		var at int64
		if !receivedAt.IsZero() {
			at = receivedAt.UnixNano()
		}
		h.receivedAt.Store(at)
	}
}

// watchStateCollector exports the watcher's state as Postgres has it, so
// every replica reports it: the repair mode and the age of the holder's last
// heartbeat.
type watchStateCollector struct{ db *pgxpool.Pool }

var (
	watchModeDesc = prometheus.NewDesc("tether_spicedb_repair_mode",
		"How foreign changes to SpiceDB are repaired: 1 for the current mode (watch: within seconds; periodic: "+
			"Watch unavailable, periodic reconcile only; reconnecting; starting).", []string{"mode"}, nil)
	watchHeartbeatDesc = prometheus.NewDesc("tether_spicedb_watch_heartbeat_age_seconds",
		"Seconds since the process holding the watch lease last recorded progress (-1: never).", nil, nil)
)

// WatchModes are the values of spicedb_watch.mode.
var WatchModes = []string{WatchModeStarting, WatchModeWatch, WatchModePeriodic, WatchModeReconnecting}

func (c *watchStateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- watchModeDesc
	ch <- watchHeartbeatDesc
}

func (c *watchStateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := dbsqlc.New().WatchStateGet(ctx, c.db)
	if err != nil {
		return // the series are absent: Prometheus shows the gap
	}
	for _, mode := range WatchModes {
		v := 0.0
		if st.Mode == mode {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(watchModeDesc, prometheus.GaugeValue, v, mode)
	}
	age := -1.0
	if st.HeartbeatAt != nil {
		age = max(0, time.Since(*st.HeartbeatAt).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(watchHeartbeatDesc, prometheus.GaugeValue, age)
}
