package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/tetherhq/tether/db/dbsqlc"
)

// reclaimableKinds are the jobs taken over from dead workers at once rather
// than after River's rescue horizon (TETHER_RESCUE_STUCK_JOBS_AFTER, set for
// the slowest job): every change to access, and the token revocations at the
// provider. All of them may run twice: sync jobs are level-triggered and
// fenced, a token revocation is idempotent. The reconcile job keeps River's
// rescue.
var reclaimableKinds = []string{SyncConnectionArgs{}.Kind(), SyncPoolArgs{}.Kind(), RevokeTokenArgs{}.Kind()}

// reclaimedMetadataKey marks a job inserted to replace one taken over from a
// dead worker.
const reclaimedMetadataKey = "tether:reclaimed_from"

// reclaimedFrom is the job a replacement replaces.
type reclaimedFrom struct {
	JobID   int64  `json:"job_id"`
	Worker  string `json:"worker"`
	Attempt int    `json:"attempt"`
}

// reclaimed reports whether job replaces a job taken over from a dead worker.
// Such a job must always write, like a retry: the dead worker may have
// written an older state that landed after the key's newest fenced write.
func reclaimed(job *rivertype.JobRow) bool {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(job.Metadata, &m); err != nil {
		return true // unreadable metadata: writing is always safe
	}
	_, ok := m[reclaimedMetadataKey]
	return ok
}

// rawArgs inserts a job's stored arguments again, unchanged.
type rawArgs struct {
	kind string
	args json.RawMessage
}

func (a rawArgs) Kind() string { return a.kind }

func (a rawArgs) MarshalJSON() ([]byte, error) { return a.args, nil }

// reclaimBatch bounds the jobs taken over in one transaction.
const reclaimBatch = 1000

// staleLeaseAge is how long an expired lease that no running job names is
// kept (for River UI and operators) before it is deleted.
const staleLeaseAge = time.Hour

// reclaimer takes over the running jobs of worker processes whose lease
// expired. Every worker process runs one: whichever of them sees an expired
// lease first takes its jobs (row locks make that exactly one), so a dead
// River leader delays nothing.
type reclaimer struct {
	db      *pgxpool.Pool
	river   *river.Client[pgx.Tx]
	logger  *slog.Logger
	metrics *Metrics
}

// reclaim takes over one batch: in one transaction, each held job is
// cancelled and inserted again with its arguments, priority and queue (it is
// available at once), and each dead worker's lease records the newest attempt
// taken from it. It returns how many jobs it took over.
func (r *reclaimer) reclaim(ctx context.Context) (int, error) {
	tx, err := r.db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("error beginning reclaim: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit: a no-op
	q := dbsqlc.New()
	held, err := q.WorkerLeaseHeldJobs(ctx, tx, &dbsqlc.WorkerLeaseHeldJobsParams{Kinds: reclaimableKinds, MaxJobs: reclaimBatch})
	if err != nil || len(held) == 0 {
		return 0, wrapErr("error finding jobs of dead workers", err)
	}
	params, err := replacements(held)
	if err != nil {
		return 0, err
	}
	inserted, err := r.river.InsertManyTx(ctx, tx, params)
	if err != nil {
		return 0, fmt.Errorf("error inserting replacement jobs: %w", err)
	}
	cancel := &dbsqlc.WorkerLeaseCancelReclaimedParams{}
	for _, res := range inserted {
		var m map[string]reclaimedFrom
		if err := json.Unmarshal(res.Job.Metadata, &m); err != nil {
			return 0, fmt.Errorf("error reading replacement metadata: %w", err)
		}
		cancel.Ids = append(cancel.Ids, m[reclaimedMetadataKey].JobID)
		cancel.ReplacedBy = append(cancel.ReplacedBy, res.Job.ID)
	}
	if err := q.WorkerLeaseCancelReclaimed(ctx, tx, cancel); err != nil {
		return 0, fmt.Errorf("error cancelling jobs of dead workers: %w", err)
	}
	// Each dead worker learns, when it renews again, the newest attempt taken
	// from it: from then on it writes for none of them.
	through, perWorker := map[string]time.Time{}, map[string]int{}
	for _, j := range held {
		if j.AttemptedAt != nil && j.AttemptedAt.After(through[j.ClientID]) {
			through[j.ClientID] = *j.AttemptedAt
		}
		perWorker[j.ClientID]++
	}
	mark := &dbsqlc.WorkerLeaseMarkReclaimedParams{}
	for worker, at := range through {
		mark.ClientIds, mark.Through = append(mark.ClientIds, worker), append(mark.Through, at)
	}
	if err := q.WorkerLeaseMarkReclaimed(ctx, tx, mark); err != nil {
		return 0, fmt.Errorf("error recording reclaimed jobs: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("error committing reclaim: %w", err)
	}
	for _, j := range held {
		r.metrics.observeReclaimed(j.Kind)
	}
	for worker, n := range perWorker {
		r.logger.InfoContext(ctx, "took over the running jobs of a worker that stopped renewing its lease", "worker", worker, "jobs", n)
	}
	return len(held), nil
}

// replacements are the jobs that replace held ones: the same arguments,
// priority, queue and attempt budget, marked with the job they replace.
func replacements(held []*dbsqlc.WorkerLeaseHeldJobsRow) ([]river.InsertManyParams, error) {
	params := make([]river.InsertManyParams, len(held))
	for i, j := range held {
		meta, err := json.Marshal(map[string]reclaimedFrom{reclaimedMetadataKey: {JobID: j.ID, Worker: j.ClientID, Attempt: int(j.Attempt)}})
		if err != nil {
			return nil, fmt.Errorf("error encoding reclaim metadata: %w", err)
		}
		params[i] = river.InsertManyParams{Args: rawArgs{kind: j.Kind, args: j.Args}, InsertOpts: &river.InsertOpts{
			MaxAttempts: int(j.MaxAttempts), Metadata: meta, Priority: int(j.Priority), Queue: j.Queue,
		}}
	}
	return params, nil
}

func wrapErr(msg string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// run reclaims every interval until ctx ends, and now and then forgets
// leases expired long ago.
func (r *reclaimer) run(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for tick := 0; ; tick++ {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		for {
			n, err := r.reclaim(ctx)
			if err != nil && ctx.Err() == nil {
				r.logger.WarnContext(ctx, "error taking over jobs of dead workers", "error", err)
			}
			if err != nil || n < reclaimBatch {
				break
			}
		}
		if tick%int(max(time.Minute/interval, 1)) == 0 {
			if _, err := dbsqlc.New().WorkerLeaseDeleteStale(ctx, r.db, staleLeaseAge.Seconds()); err != nil && ctx.Err() == nil {
				r.logger.WarnContext(ctx, "error deleting stale worker leases", "error", err)
			}
		}
	}
}

// workerRuntime is what a working client made by NewClient runs beside
// River: its lease and its reclaimer.
type workerRuntime struct {
	jobsDB    *pgxpool.Pool // the jobs' pool, whose configuration the lease's copies
	lease     *workerLease
	reclaimer *reclaimer
}

// startInsertOnly starts a client that only inserts (it takes no lease:
// it never holds a job).
func startInsertOnly(ctx context.Context, client *river.Client[pgx.Tx]) error {
	if err := client.Start(ctx); err != nil {
		return fmt.Errorf("error starting River: %w", err)
	}
	return nil
}

// start runs the lease and the reclaimer on a small pool of their own, so
// that a renewal never queues behind the jobs' queries for a connection.
func (w *workerRuntime) start(ctx context.Context, client *river.Client[pgx.Tx]) error {
	cfg := w.jobsDB.Config()
	cfg.MaxConns, cfg.MinConns = 2, 0
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("error creating the worker lease's pool: %w", err)
	}
	w.lease.db, w.reclaimer.db = pool, pool
	if err := w.lease.renew(ctx); err != nil {
		pool.Close()
		return err
	}
	if err := client.Start(ctx); err != nil {
		pool.Close()
		return fmt.Errorf("error starting River: %w", err)
	}
	// Renew while River drains running jobs too: until it has stopped, not
	// until ctx ends.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopped := client.Stopped()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); w.lease.keep(runCtx) }()
	go func() { defer wg.Done(); w.reclaimer.run(runCtx, w.lease.interval()) }()
	go func() {
		<-stopped
		cancel()
		wg.Wait()
		pool.Close()
	}()
	return nil
}
