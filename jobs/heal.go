package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// Restore triggers: what made the healer restore the store.
const (
	// TriggerWrite: a write met a store without Tether's schema.
	TriggerWrite = spicedb.TriggerWrite
	// TriggerProbe: the readiness probe or a metrics scrape found the
	// schema missing or different.
	TriggerProbe = spicedb.TriggerProbe
	// TriggerWatchStore: the watcher, (re)connecting, found the schema
	// missing, or the store empty where Postgres implies relationships.
	TriggerWatchStore = "watch_store"
	// TriggerWatchResume: the watch stream could not resume from the last
	// processed revision (none yet, expired, or another datastore's).
	TriggerWatchResume = "watch_resume"
	// TriggerWatchSchema: the stream reported a schema change that left
	// SpiceDB without Tether's schema.
	TriggerWatchSchema = "watch_schema"
)

// HealConfig tunes self-healing (ClientConfig.Heal): in every process that
// works jobs, a healer restores a lost store, reschedules waiting jobs when
// SpiceDB answers again after an outage and, in the one process that holds
// the watch lease, watches SpiceDB for changes made by anyone else.
type HealConfig struct {
	Enabled bool
	// LeaseRetry is how often a process without the watch lease tries to
	// take it (how long a leader change leaves no watcher at most).
	LeaseRetry time.Duration
	// WatchUnavailableRetry is how often Watch is tried again where SpiceDB
	// says it is unavailable (Postgres without track_commit_timestamp).
	WatchUnavailableRetry time.Duration
	// Freshness bounds how old a signed write may be when the watcher sees
	// it and still take it as Tether's (older: checked against Postgres).
	Freshness time.Duration
	// Holder names this process in spicedb_watch.holder.
	Holder string
	// WatchSilence: a Watch stream that has delivered nothing for this long
	// since a write of this process that it must deliver is taken for dead
	// (a connection that stopped answering without an error) and
	// reconnected, resuming from the last revision processed.
	WatchSilence time.Duration
}

// DefaultHealConfig are the production defaults.
func DefaultHealConfig() HealConfig {
	return HealConfig{Enabled: true, LeaseRetry: time.Second, WatchUnavailableRetry: time.Minute, Freshness: 2 * time.Minute,
		WatchSilence: 10 * time.Second}
}

func (c HealConfig) withDefaults() HealConfig {
	d := DefaultHealConfig()
	if c.LeaseRetry <= 0 {
		c.LeaseRetry = d.LeaseRetry
	}
	if c.WatchUnavailableRetry <= 0 {
		c.WatchUnavailableRetry = d.WatchUnavailableRetry
	}
	if c.Freshness <= 0 {
		c.Freshness = d.Freshness
	}
	if c.WatchSilence <= 0 {
		c.WatchSilence = d.WatchSilence
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		c.Holder = host + ":" + strconv.Itoa(os.Getpid())
	}
	return c
}

// Healer keeps SpiceDB equal to what Postgres implies without an operator.
type Healer struct {
	syncer     *Syncer
	enqueuer   *Enqueuer
	reconciler *Reconciler
	cfg        HealConfig

	mu       sync.Mutex
	pending  []string  // restore triggers not yet served, first first
	since    time.Time // when the oldest of them arrived
	restore  chan struct{}
	outage   chan struct{}
	stop     context.CancelFunc
	wg       sync.WaitGroup
	started  bool
	lastWarn map[string]bool // warnings logged once per process
	// down: the outage loop's probe found SpiceDB out of reach and has not
	// seen it answer since (see Syncer.retryAt). A failed write alone does
	// not set it: SpiceDB may answer and the write have failed on its own.
	down atomic.Bool
	// covered: every loss reported at or before it has been restored.
	covered time.Time
}

func newHealer(syncer *Syncer, enqueuer *Enqueuer, reconciler *Reconciler, cfg HealConfig) *Healer {
	return &Healer{syncer: syncer, enqueuer: enqueuer, reconciler: reconciler, cfg: cfg.withDefaults(),
		restore: make(chan struct{}, 1), outage: make(chan struct{}, 1), lastWarn: map[string]bool{}}
}

// StartHealing starts the process's healer, if its client works jobs and
// healing is enabled (else it does nothing). Call the returned function to
// stop it; it waits for the healer's goroutines.
func (s *Syncer) StartHealing(ctx context.Context) (stop func()) {
	h := s.healer
	if h == nil {
		return func() {}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started {
		return func() {}
	}
	h.started = true
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.stop = cancel
	s.SpiceDB.SetHooks(&spicedb.Hooks{
		StoreLost:   h.RequestRestore,
		Unreachable: h.signalOutage,
	})
	for _, loop := range []func(context.Context){h.restoreLoop, h.outageLoop, h.watchLoop} {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			loop(ctx)
		}()
	}
	// A process starting reschedules too, once SpiceDB answers: jobs that
	// failed during an outage wait outageRetry, and the processes whose
	// healers would have rescheduled them may be gone.
	h.signalOutage()
	return func() {
		s.SpiceDB.SetHooks(nil)
		cancel()
		h.wg.Wait()
	}
}

// RequestRestore asks for a full restore: the schema written back if
// needed, every relationship reconciled with Postgres, waiting jobs
// rescheduled. Requests coalesce; one already served by a restore that
// started after it arrived is not served again.
func (h *Healer) RequestRestore(trigger string) {
	h.mu.Lock()
	if len(h.pending) == 0 {
		h.since = time.Now()
	}
	h.pending = append(h.pending, trigger)
	h.mu.Unlock()
	select {
	case h.restore <- struct{}{}:
	default:
	}
}

func (h *Healer) restoreLoop(ctx context.Context) {
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.restore:
		}
		h.mu.Lock()
		triggers, since := h.pending, h.since
		h.pending = nil
		h.mu.Unlock()
		if len(triggers) == 0 {
			continue
		}
		err := h.runRestore(ctx, triggers, since)
		if err == nil {
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		h.syncer.Logger.WarnContext(ctx, "restoring SpiceDB failed; trying again", "trigger", triggers[0], "error", spicedb.ScrubError(err))
		// Try again after a pause that grows with repeated failures (SpiceDB
		// still away, say), unless a new trigger comes first.
		h.mu.Lock()
		if len(h.pending) == 0 {
			h.since = since
		}
		h.pending = append(triggers[:1:1], h.pending...)
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(Backoff(failures+3, 30*time.Second)):
		}
		select {
		case h.restore <- struct{}{}:
		default:
		}
	}
}

// runRestore reconciles everything, unless a successful reconcile started
// after since (it saw the loss already), then reschedules waiting jobs.
//
// Writes and probes that met a missing schema report the loss, but their
// report may arrive after someone already wrote the schema back: whoever did
// (the watcher on reconnect, a reconcile) also restores the data. So if all
// the triggers are of that kind and the schema is current now, only the
// waiting jobs are rescheduled.
func (h *Healer) runRestore(ctx context.Context, triggers []string, since time.Time) error {
	started := time.Now()
	trigger := triggers[0]
	if !slices.ContainsFunc(triggers, func(t string) bool { return t != TriggerWrite && t != TriggerProbe }) {
		if state, err := h.syncer.SpiceDB.CheckSchema(ctx); err == nil && state == spicedb.SchemaCurrent {
			_, err := h.reschedule(ctx)
			return err
		}
	}
	report, err := h.reconciler.Run(ctx, ReconcileOpts{Wait: true, UnlessRunSince: since})
	if err != nil {
		return err
	}
	if !report.Skipped {
		h.syncer.Metrics.observeRestore(trigger)
		h.syncer.Logger.InfoContext(ctx, "restored SpiceDB from Postgres", "trigger", trigger, "schema", report.Schema,
			"restored", report.Missing, "removed", report.Extra, "requeued", report.Requeued,
			"took", time.Since(started).Round(time.Millisecond).String())
	}
	h.mu.Lock()
	if since.After(h.covered) {
		h.covered = since
	}
	h.mu.Unlock()
	_, err = h.reschedule(ctx)
	return err
}

// restoredSince reports whether a restore covering losses reported at t
// has succeeded.
func (h *Healer) restoredSince(t time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.covered.Before(t)
}

// signalOutage wakes the outage loop. Signals coalesce and never block: a
// write failing while the loop probes (or the engine starting while it
// does) must not wait for SpiceDB to return.
func (h *Healer) signalOutage() {
	select {
	case h.outage <- struct{}{}:
	default:
	}
}

// outageLoop waits for a write that could not reach SpiceDB (or the process
// to start: see StartHealing), then probes until SpiceDB answers and makes
// every sync job waiting out a retry backoff available at once: the backlog
// drains at the speed of the workers, not of each job's backoff. A second
// reschedule a moment later catches the jobs that failed as SpiceDB came
// back, whose failure River recorded after the first (they wait outageRetry
// otherwise). A SpiceDB that answers probes but keeps failing writes would
// turn this into a busy loop (every reschedule runs every waiting job once
// more), so after three reschedules within 30 s the next ones are spaced
// out, 1 s doubling to the retry backoff's cap.
func (h *Healer) outageLoop(ctx context.Context) {
	var recent []time.Time // reschedules in the last 30 s
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.outage:
		}
		answered, wasDown := h.waitForSpiceDB(ctx)
		if !answered {
			return
		}
		recent = slices.DeleteFunc(recent, func(t time.Time) bool { return time.Since(t) > 30*time.Second })
		if n := len(recent); n >= 3 {
			spacing := min(time.Second<<min(n-3, 10), h.syncer.MaxBackoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(recent[n-1].Add(spacing))):
			}
		}
		recent = append(recent, time.Now())
		h.rescheduleLogged(ctx)
		if !wasDown {
			continue // no job waited outageRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(outageStragglers):
		}
		if !h.down.Load() { // else the next probe's success reschedules
			h.rescheduleLogged(ctx)
		}
	}
}

// outageStragglers is how long after SpiceDB answers again the outage loop
// reschedules a second time: well beyond River's completer batching a
// failure and a write in flight failing fast on a connection not yet back.
const outageStragglers = time.Second

// outageRetry is how long a sync job that fails while SpiceDB is out of
// reach waits before its next attempt (Syncer.retryAt).
const outageRetry = time.Minute

func (h *Healer) rescheduleLogged(ctx context.Context) {
	if _, err := h.reschedule(ctx); err != nil && ctx.Err() == nil {
		h.syncer.Logger.WarnContext(ctx, "error rescheduling sync jobs after an outage", "error", err)
	}
}

// waitForSpiceDB probes SpiceDB every 100 ms until it answers (answered
// is false only when ctx ends first); while it does not, the healer is
// down. wasDown says a probe failed.
func (h *Healer) waitForSpiceDB(ctx context.Context) (answered, wasDown bool) {
	for {
		probeCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := h.syncer.SpiceDB.CheckSchema(probeCtx)
		cancel()
		if err == nil {
			h.down.Store(false)
			return true, wasDown
		}
		h.down.Store(true)
		wasDown = true
		select {
		case <-ctx.Done():
			return false, wasDown
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// syncJobKinds are the kinds rescheduled after an outage.
var syncJobKinds = []string{SyncConnectionArgs{}.Kind(), SyncPoolArgs{}.Kind()}

func (h *Healer) reschedule(ctx context.Context) (int64, error) {
	n, err := dbsqlc.New().SyncJobsReschedule(ctx, h.syncer.DB, syncJobKinds)
	if err != nil {
		return 0, fmt.Errorf("error rescheduling sync jobs: %w", err)
	}
	h.syncer.Metrics.observeRescheduled(n)
	if n > 0 {
		h.syncer.Logger.InfoContext(ctx, "SpiceDB answers again: rescheduled waiting sync jobs", "jobs", n)
	}
	return n, nil
}

// warnOnce logs a warning the first time key is seen in this process.
func (h *Healer) warnOnce(ctx context.Context, key, msg string, args ...any) {
	h.mu.Lock()
	seen := h.lastWarn[key]
	h.lastWarn[key] = true
	h.mu.Unlock()
	if !seen {
		h.syncer.Logger.WarnContext(ctx, msg, args...)
	}
}

var errLeaseLost = errors.New("lost the watch lease (its database connection failed)")
