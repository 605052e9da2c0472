package jobs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
	// Skipped: UnlessRunSince found the work done by another run.
	Skipped bool `json:"skipped,omitempty"`

	pendingTouches int64
}

// Drift is the number of relationships out of step on settled keys.
func (r *ReconcileReport) Drift() int64 { return r.Missing + r.Extra }

// Reconciler compares all of SpiceDB with the database and repairs the
// difference. It is the backstop for everything the workers cannot see: a
// wiped store, a manual edit, a job cancelled on a permanent error.
type Reconciler struct {
	*Syncer
	Enqueuer *Enqueuer
}

// Run reconciles once. Memory stays bounded: SpiceDB's relationships are
// streamed into an unlogged table, the difference is computed by Postgres,
// and repairs are read back a batch at a time.
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
	if !opts.UnlessRunSince.IsZero() {
		last, err := q.ReconcileRunLatestRepair(ctx, r.DB)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("error reading the last reconcile: %w", err)
		}
		if err == nil && !last.StartedAt.Before(opts.UnlessRunSince) {
			report.Skipped = true
			return report, nil
		}
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

func (r *Reconciler) run(ctx context.Context, report *ReconcileReport, dryRun bool, progress func(string, int64)) error {
	q := dbsqlc.New()
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

	if err := q.ReconcileClear(ctx, r.DB); err != nil {
		return fmt.Errorf("error clearing reconcile tables: %w", err)
	}
	if schema != spicedb.SchemaMissing {
		err := r.SpiceDB.Export(ctx, func(page []spicedb.Relationship) error {
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
		if err != nil {
			return err
		}
	}
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

	var afterID int64
	for {
		page, err := q.ReconcileDiffPage(ctx, r.DB, &dbsqlc.ReconcileDiffPageParams{AfterID: afterID, MaxRows: spicedb.MaxUpdatesPerWrite})
		if err != nil {
			return fmt.Errorf("error reading drift: %w", err)
		}
		if len(page) == 0 {
			break
		}
		afterID = page[len(page)-1].ID
		if err := r.repairPage(ctx, report, page, dryRun); err != nil {
			return err
		}
		progress("repair", report.Repaired+report.Missing+report.Extra+report.Pending)
	}
	if dryRun {
		return nil
	}
	return r.requeueStalled(ctx, report)
}

func (r *Reconciler) repairPage(ctx context.Context, report *ReconcileReport, page []*dbsqlc.ReconcileDiff, dryRun bool) error {
	updates := make([]spicedb.Update, 0, len(page))
	kinds := make([]string, 0, len(page))
	keyIDs := make([]string, 0, len(page))
	generations := make([]int64, 0, len(page))
	for _, d := range page {
		switch {
		case d.Pending:
			report.Pending++
			if d.Operation == "touch" {
				report.pendingTouches++
			}
		case d.Operation == "touch":
			report.Missing++
		default:
			report.Extra++
		}
		updates = append(updates, spicedb.Update{
			Relationship: spicedb.Relationship{ResourceType: d.ResourceType, ResourceID: d.ResourceID, Relation: d.Relation, SubjectType: d.SubjectType, SubjectID: d.SubjectID},
			Delete:       d.Operation == "delete",
		})
		kinds = append(kinds, d.KeyKind)
		keyIDs = append(keyIDs, d.KeyID)
		generations = append(generations, d.Generation)
	}
	if dryRun {
		return nil
	}
	if err := writeRetrying(ctx, r.SpiceDB, updates); err != nil {
		return err
	}
	report.Repaired += int64(len(updates))
	// The repair was computed from a snapshot. A key that changed since then
	// may have had its newer state written before this repair landed: give it
	// a sync job, which runs after this write and writes its newest state.
	changed, err := dbsqlc.New().SyncGenerationsChanged(ctx, r.DB, &dbsqlc.SyncGenerationsChangedParams{
		Kinds: kinds, KeyIds: keyIDs, Generations: generations,
	})
	if err != nil {
		return fmt.Errorf("error checking keys changed during repair: %w", err)
	}
	keys := make([]syncKey, 0, len(changed))
	for _, c := range changed {
		keys = append(keys, syncKey{c.Kind, c.KeyID})
	}
	return r.requeue(ctx, report, keys)
}

// writeRetrying writes updates, retrying transient failures a few times
// (TOUCH and DELETE are idempotent): one lost answer must not fail a whole
// reconcile or restore.
func writeRetrying(ctx context.Context, spice *spicedb.Client, updates []spicedb.Update) error {
	for attempt := 1; ; attempt++ {
		_, err := spice.Write(ctx, updates)
		if err == nil || attempt == 5 || !spicedb.IsTransient(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(Backoff(attempt, time.Second)):
		}
	}
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
	return r.requeue(ctx, report, keys)
}

func (r *Reconciler) requeue(ctx context.Context, report *ReconcileReport, keys []syncKey) error {
	if len(keys) == 0 {
		return nil
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
		return nil
	}
	tx, err := r.DB.Begin(ctx)
	if err != nil {
		return fmt.Errorf("error beginning requeue transaction: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := r.Enqueuer.River.InsertManyTx(ctx, tx, params); err != nil {
		return fmt.Errorf("error requeueing sync jobs: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("error committing requeued jobs: %w", err)
	}
	report.Requeued += int64(len(params))
	return nil
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
