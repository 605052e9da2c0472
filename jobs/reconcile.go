package jobs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/riverqueue/river"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// reconcileLockID is the advisory lock that keeps reconciles (CLI and periodic
// job) one at a time; they share scratch tables. Chosen apart from River's
// lock space.
const reconcileLockID int64 = 0x7e7e_0001

// ErrReconcileBusy is returned when another reconcile is running.
var ErrReconcileBusy = errors.New("another reconcile is running")

// ReconcileOpts configures one reconcile.
type ReconcileOpts struct {
	DryRun bool
	// Wait for a reconcile that is running (the periodic one) to finish,
	// instead of returning ErrReconcileBusy.
	Wait bool
	// Progress, if set, is called as work advances (phase and count so far).
	Progress func(phase string, done int64)
	// UnlessRunSince, if set, skips the run when a repairing reconcile that
	// started at or after it has succeeded (it has seen what this run would
	// see): the healer's restores coalesce so.
	UnlessRunSince time.Time
}

// ReconcileReport is what a reconcile found and did.
type ReconcileReport struct {
	StartedAt time.Time     `json:"started_at"`
	Duration  time.Duration `json:"duration_ns"`
	DryRun    bool          `json:"dry_run"`
	Schema    string        `json:"schema"` // what the schema was before the run: current, missing, different
	// Desired and Actual count relationships in Postgres and in SpiceDB;
	// Checked counts both together (each relationship once).
	Desired int64 `json:"desired"`
	Actual  int64 `json:"actual"`
	Checked int64 `json:"checked"`
	// Missing and Extra count drift on settled keys: relationships SpiceDB
	// lacks or should not have although no change is waiting to be applied.
	Missing int64 `json:"missing"`
	Extra   int64 `json:"extra"`
	// Pending counts differences on keys whose change is still on its way.
	Pending int64 `json:"pending"`
	// Repaired counts relationships written; Requeued keys found changed
	// under the repair or stalled, whose sync job was inserted again.
	Repaired int64 `json:"repaired"`
	Requeued int64 `json:"requeued"`
	// Imported counts relationships restored by bulk import (into a store
	// that held none); ImportFallbacks pages that conflicted and were
	// written with TOUCH instead.
	Imported        int64 `json:"imported,omitempty"`
	ImportFallbacks int64 `json:"import_fallbacks,omitempty"`
	// PhaseSeconds is where the time went (export, diff, write, recheck,
	// requeue, ...).
	PhaseSeconds map[string]float64 `json:"phase_seconds,omitempty"`
	lapAt        time.Time
	// Skipped: UnlessRunSince found the work done by another run.
	Skipped bool `json:"skipped,omitempty"`
	// StreamFallback, if set, says why the run compared in Postgres (copying
	// SpiceDB's export into a table) instead of merging the two sorted
	// streams: a stream out of order. The findings are the fallback's;
	// Repaired, Requeued and Imported also count what the streamed pass wrote
	// before it stopped.
	StreamFallback string `json:"stream_fallback,omitempty"`

	pendingTouches int64
}

// lap adds the time since the previous lap to phase.
func (r *ReconcileReport) lap(phase string) {
	now := time.Now()
	if r.PhaseSeconds == nil {
		r.PhaseSeconds = map[string]float64{}
	}
	if !r.lapAt.IsZero() {
		r.PhaseSeconds[phase] += now.Sub(r.lapAt).Seconds()
	}
	r.lapAt = now
}

// Drift is the number of relationships out of step on settled keys.
func (r *ReconcileReport) Drift() int64 { return r.Missing + r.Extra }

// Reconciler compares all of SpiceDB with the database and repairs the
// difference. It is the backstop for everything the workers cannot see: a
// wiped store, a manual edit, a job cancelled on a permanent error.
type Reconciler struct {
	*Syncer
	Enqueuer *Enqueuer

	// export reads SpiceDB's relationships; nil: SpiceDB.Export. Tests
	// inject faults into the stream's order here (export_test.go).
	export func(ctx context.Context, fn func(page []spicedb.Relationship) error) error
	// tableOnly is set once a stream came out of order: the order is the
	// datastore's (its collation), so this process's later runs compare in
	// Postgres straight away instead of failing over again.
	tableOnly atomic.Bool
}

func (r *Reconciler) exportFunc() func(ctx context.Context, fn func(page []spicedb.Relationship) error) error {
	if r.export != nil {
		return r.export
	}
	return r.SpiceDB.Export
}

// Run reconciles once. Memory stays bounded: SpiceDB's export and the
// desired relationships are read as two sorted streams, a page at a time,
// and merged (runStreamed); should either come out of order, the run
// copies the export into an unlogged table, lets Postgres compute the
// difference and reads it back a batch at a time (runTable).
func (r *Reconciler) Run(ctx context.Context, opts ReconcileOpts) (*ReconcileReport, error) {
	report := &ReconcileReport{StartedAt: time.Now(), DryRun: opts.DryRun}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, int64) {}
	}
	q := dbsqlc.New()

	lockConn, err := r.DB.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("error acquiring connection: %w", err)
	}
	defer lockConn.Release()
	for {
		locked, err := q.ReconcileLock(ctx, lockConn, reconcileLockID)
		if err != nil {
			return nil, fmt.Errorf("error taking reconcile lock: %w", err)
		}
		if locked {
			break
		}
		if !opts.Wait {
			return nil, ErrReconcileBusy
		}
		progress("waiting for another reconcile", 0)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	report.StartedAt = time.Now()
	defer q.ReconcileUnlock(context.WithoutCancel(ctx), lockConn, reconcileLockID) //nolint:errcheck // released with the session anyway
	if done, err := r.doneSince(ctx, opts.UnlessRunSince); err != nil || done {
		report.Skipped = done
		return report, err
	}

	runErr := r.run(ctx, report, opts.DryRun, progress)
	report.Duration = time.Since(report.StartedAt)
	report.Checked = report.Actual + report.Missing + report.pendingTouches
	var errText *string
	if runErr != nil {
		s := spicedb.ScrubError(runErr)
		errText = &s
	}
	if _, err := q.ReconcileRunInsert(context.WithoutCancel(ctx), r.DB, &dbsqlc.ReconcileRunInsertParams{
		StartedAt: report.StartedAt, FinishedAt: time.Now(), DryRun: opts.DryRun,
		Checked: report.Actual + report.Missing + report.pendingTouches, Missing: report.Missing, Extra: report.Extra,
		Repaired: report.Repaired, Error: errText,
	}); err != nil && runErr == nil {
		runErr = fmt.Errorf("error recording reconcile run: %w", err)
	}
	return report, runErr
}

// exportActual copies SpiceDB's relationships into reconcile_actual.
func (r *Reconciler) exportActual(ctx context.Context, report *ReconcileReport, progress func(string, int64)) error {
	q := dbsqlc.New()
	return r.exportFunc()(ctx, func(page []spicedb.Relationship) error {
		rows := make([]*dbsqlc.ReconcileActualInsertParams, len(page))
		for i, rel := range page {
			rows[i] = &dbsqlc.ReconcileActualInsertParams{
				ResourceType: rel.ResourceType, ResourceID: rel.ResourceID, Relation: rel.Relation,
				SubjectType: rel.SubjectType, SubjectID: rel.SubjectID,
			}
		}
		n, err := q.ReconcileActualInsert(ctx, r.DB, rows)
		if err != nil {
			return fmt.Errorf("error copying SpiceDB relationships: %w", err)
		}
		report.Actual += n
		progress("export", report.Actual)
		return nil
	})
}

// doneSince reports whether a repairing reconcile that started at or after
// t has succeeded (never, for a zero t).
func (r *Reconciler) doneSince(ctx context.Context, t time.Time) (bool, error) {
	if t.IsZero() {
		return false, nil
	}
	last, err := dbsqlc.New().ReconcileRunLatestRepair(ctx, r.DB)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("error reading the last reconcile: %w", err)
	}
	return !last.StartedAt.Before(t), nil
}

func (r *Reconciler) run(ctx context.Context, report *ReconcileReport, dryRun bool, progress func(string, int64)) error {
	report.lap("")
	schema, err := r.SpiceDB.CheckSchema(ctx)
	if err != nil {
		return err
	}
	report.Schema = schema.String()
	if schema != spicedb.SchemaCurrent && !dryRun {
		// A wiped store (or a foreign schema) is put back before anything else.
		if err := r.SpiceDB.WriteSchema(ctx); err != nil {
			return err
		}
	}
	report.lap("schema")

	if err := r.compare(ctx, report, dryRun, schema, progress); err != nil || dryRun {
		return err
	}
	err = r.requeueStalled(ctx, report)
	report.lap("requeue stalled")
	return err
}

// compare finds and repairs the drift: by merging the two sorted streams,
// or — once a stream came out of order, in this run or an earlier one of
// this process — in Postgres.
func (r *Reconciler) compare(ctx context.Context, report *ReconcileReport, dryRun bool, schema spicedb.SchemaState, progress func(string, int64)) error {
	if r.tableOnly.Load() {
		report.StreamFallback = "an earlier run of this process found a stream out of byte order"
		return r.runTable(ctx, report, dryRun, schema, progress)
	}
	err := r.runStreamed(ctx, report, dryRun, schema == spicedb.SchemaMissing, progress)
	var order *outOfOrderError
	if !errors.As(err, &order) {
		return err
	}
	r.tableOnly.Store(true)
	r.Metrics.observeReconcileFallback()
	r.Logger.WarnContext(ctx, "reconcile: a stream is out of byte order; comparing in Postgres instead, in this run and the next ones of this process "+
		"(is SpiceDB's database collated other than C or C.UTF-8?)", "side", order.side, "row", order.row)
	report.StreamFallback = order.Error()
	report.Desired, report.Actual, report.Missing, report.Extra, report.Pending, report.pendingTouches = 0, 0, 0, 0, 0, 0
	return r.runTable(ctx, report, dryRun, schema, progress)
}

// runTable is the table-based comparison: SpiceDB's export copied into
// reconcile_actual, the drift computed by one statement into reconcile_diff
// and repaired from there. It relies on no order.
func (r *Reconciler) runTable(ctx context.Context, report *ReconcileReport, dryRun bool, schema spicedb.SchemaState, progress func(string, int64)) error {
	q := dbsqlc.New()
	var err error
	if err := q.ReconcileClear(ctx, r.DB); err != nil {
		return fmt.Errorf("error clearing reconcile tables: %w", err)
	}
	if schema != spicedb.SchemaMissing {
		if err := r.exportActual(ctx, report, progress); err != nil {
			return err
		}
	}
	report.lap("export")
	if _, err := r.DB.Exec(ctx, "ANALYZE reconcile_actual"); err != nil {
		return fmt.Errorf("error analyzing reconcile table: %w", err)
	}
	if report.Desired, err = q.ReconcileDesiredCount(ctx, r.DB); err != nil {
		return fmt.Errorf("error counting desired relationships: %w", err)
	}
	if _, err := q.ReconcileDiffBuild(ctx, r.DB); err != nil {
		return fmt.Errorf("error computing drift: %w", err)
	}
	progress("diff", report.Desired)
	report.lap("diff")

	err = r.repairAll(ctx, report, dryRun, progress)
	report.lap("repair")
	return err
}

// requeueStalled inserts a job again for keys whose job was cancelled on a
// permanent error, or whose change has waited unusually long.
func (r *Reconciler) requeueStalled(ctx context.Context, report *ReconcileReport) error {
	rows, err := dbsqlc.New().SyncStalledList(ctx, r.DB, &dbsqlc.SyncStalledListParams{
		OlderThan: pgIntervalFromDuration(10 * time.Minute), MaxRows: 100_000,
	})
	if err != nil {
		return fmt.Errorf("error listing stalled keys: %w", err)
	}
	keys := make([]syncKey, 0, len(rows))
	for _, row := range rows {
		keys = append(keys, syncKey{row.Kind, row.KeyID})
	}
	n, err := r.requeue(ctx, keys)
	report.Requeued += n
	return err
}

// requeue inserts a sync job for each key, and says how many.
func (r *Reconciler) requeue(ctx context.Context, keys []syncKey) (int64, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	seen := map[syncKey]bool{}
	params := []river.InsertManyParams{}
	for _, k := range keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		args, err := argsForKey(k)
		if err != nil {
			// Not a key Tether makes (a foreign relationship): its repair
			// above already removed it.
			continue
		}
		params = append(params, river.InsertManyParams{Args: args, InsertOpts: &river.InsertOpts{Priority: PriorityRevoke}})
	}
	if len(params) == 0 {
		return 0, nil
	}
	tx, err := r.DB.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("error beginning requeue transaction: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := r.Enqueuer.River.InsertManyTx(ctx, tx, params); err != nil {
		return 0, fmt.Errorf("error requeueing sync jobs: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("error committing requeued jobs: %w", err)
	}
	return int64(len(params)), nil
}

func argsForKey(k syncKey) (river.JobArgs, error) {
	switch k.kind {
	case KeyKindConnection:
		providerID, subjectID, ok := strings.Cut(k.keyID, "/")
		if !ok {
			return nil, fmt.Errorf("malformed connection key %q", k.keyID)
		}
		userID, err := spicedb.UserIDFromSubjectID(subjectID)
		if err != nil {
			return nil, err
		}
		return SyncConnectionArgs{ProviderID: providerID, UserID: userID}, nil
	case KeyKindPool:
		id, err := strconv.ParseInt(k.keyID, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed pool key %q: %w", k.keyID, err)
		}
		return SyncPoolArgs{ResourcePoolID: id}, nil
	}
	return nil, fmt.Errorf("unknown key kind %q", k.kind)
}

// ReconcileArgs is the periodic reconcile job.
type ReconcileArgs struct{}

func (ReconcileArgs) Kind() string { return "tether.reconcile" }

func (ReconcileArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, Priority: PriorityGrant}
}

// ReconcileWorker runs the reconciler on River's leader schedule.
type ReconcileWorker struct {
	river.WorkerDefaults[ReconcileArgs]
	Reconciler *Reconciler
}

func (w *ReconcileWorker) Timeout(*river.Job[ReconcileArgs]) time.Duration { return 30 * time.Minute }

func (w *ReconcileWorker) Work(ctx context.Context, job *river.Job[ReconcileArgs]) error {
	report, err := w.Reconciler.Run(ctx, ReconcileOpts{})
	if errors.Is(err, ErrReconcileBusy) {
		return nil // one running is as good as this one
	}
	if err != nil {
		return fmt.Errorf("error reconciling: %w", err)
	}
	if report.Drift() > 0 {
		w.Reconciler.Logger.WarnContext(ctx, "reconcile repaired drift",
			"missing", report.Missing, "extra", report.Extra, "schema", report.Schema)
	}
	return nil
}

func pgIntervalFromDuration(d time.Duration) pgtype.Interval {
	return pgtype.Interval{Microseconds: d.Microseconds(), Valid: true}
}
