package jobs

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// importPageSize is how many relationships one bulk import of a restore
// carries (one SpiceDB transaction); importWorkers how many pages are
// imported at once. Memory stays bounded by importWorkers+1 pages. Two,
// not four: the datastore's CPU is the limit (each row is six index
// inserts on SpiceDB's relation_tuple), and on two cores SpiceDB's own
// import of 110,000 relationships took 1.4–1.9 s with two streams against
// 2.0–2.2 s with four or eight (bench scenario 6).
const (
	importPageSize = 10_000
	importWorkers  = 2
)

// RestoreImportPageSize and RestoreImportWorkers are a restore's import pages
// and concurrency (the bench measures SpiceDB's own import with the same).
const RestoreImportPageSize, RestoreImportWorkers = importPageSize, importWorkers

// repairPage is one page of drift, classified: what to write and the keys'
// generations in the snapshot the diff was computed from.
type repairPage struct {
	updates       []spicedb.Update
	kinds, keyIDs []string
	generations   []int64
}

// repairAll reads the drift from reconcile_diff (the table-based path) a
// page at a time and repairs it. Into a store
// that held none of Tether's relationships (wiped, new) it restores at the
// speed of the datastore: bulk imports of importPageSize (one COPY each on
// SpiceDB's Postgres datastore), importWorkers at once, instead of TOUCH
// writes of 1,000 one after another.
func (r *Reconciler) repairAll(ctx context.Context, report *ReconcileReport, dryRun bool, progress func(string, int64)) error {
	bulk := report.Actual == 0 && !dryRun
	pageSize, workers := repairShape(bulk)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	rp := &repairs{r: r, report: report, writers: g, ctx: gctx, bulk: bulk, dryRun: dryRun, progress: progress}
	var afterID int64
	for gctx.Err() == nil {
		rows, err := dbsqlc.New().ReconcileDiffPage(gctx, r.DB, &dbsqlc.ReconcileDiffPageParams{AfterID: afterID, MaxRows: int32(pageSize)})
		if err != nil {
			_ = g.Wait()
			return fmt.Errorf("error reading drift: %w", err)
		}
		if len(rows) == 0 {
			break
		}
		afterID = rows[len(rows)-1].ID
		rp.submit(rows)
	}
	return g.Wait()
}

// repairs hand pages of drift, as they are found, to writers: counted in
// report at once, written (unless a dry run) writers' limit at a time.
type repairs struct {
	r        *Reconciler
	report   *ReconcileReport
	mu       sync.Mutex // guards report while pages are applied
	writers  *errgroup.Group
	ctx      context.Context // the writers'
	bulk     bool
	dryRun   bool
	progress func(string, int64)
}

// submit classifies one page of drift and starts its repair.
func (rp *repairs) submit(rows []*dbsqlc.ReconcileDiff) {
	rp.mu.Lock()
	page := classify(rp.report, rows)
	done := rp.report.Repaired + rp.report.Missing + rp.report.Extra + rp.report.Pending
	rp.mu.Unlock()
	if !rp.dryRun {
		rp.writers.Go(func() error { return rp.r.applyPage(rp.ctx, rp.report, &rp.mu, page, rp.bulk) })
	}
	rp.progress("repair", done)
}

// classify counts a page's drift in report and turns it into updates.
func classify(report *ReconcileReport, rows []*dbsqlc.ReconcileDiff) repairPage {
	p := repairPage{updates: make([]spicedb.Update, 0, len(rows)), kinds: make([]string, 0, len(rows)),
		keyIDs: make([]string, 0, len(rows)), generations: make([]int64, 0, len(rows))}
	for _, d := range rows {
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
		p.updates = append(p.updates, spicedb.Update{
			Relationship: spicedb.Relationship{ResourceType: d.ResourceType, ResourceID: d.ResourceID, Relation: d.Relation, SubjectType: d.SubjectType, SubjectID: d.SubjectID},
			Delete:       d.Operation == "delete",
		})
		p.kinds, p.keyIDs, p.generations = append(p.kinds, d.KeyKind), append(p.keyIDs, d.KeyID), append(p.generations, d.Generation)
	}
	return p
}

// applyPage writes one page, then requeues its keys that changed since the
// snapshot: a key that changed may have had its newer state written before
// this repair landed; its new job runs after this write and writes its
// newest state.
func (r *Reconciler) applyPage(ctx context.Context, report *ReconcileReport, mu *sync.Mutex, p repairPage, bulk bool) error {
	imported, err := r.write(ctx, p.updates, bulk)
	if err != nil {
		return err
	}
	changed, err := dbsqlc.New().SyncGenerationsChanged(ctx, r.DB, &dbsqlc.SyncGenerationsChangedParams{
		Kinds: p.kinds, KeyIds: p.keyIDs, Generations: p.generations,
	})
	if err != nil {
		return fmt.Errorf("error checking keys changed during repair: %w", err)
	}
	keys := make([]syncKey, 0, len(changed))
	for _, c := range changed {
		keys = append(keys, syncKey{c.Kind, c.KeyID})
	}
	requeued, err := r.requeue(ctx, keys)
	mu.Lock()
	defer mu.Unlock()
	report.Repaired += int64(len(p.updates))
	report.Requeued += requeued
	if bulk && imported {
		report.Imported += int64(len(p.updates))
	} else if bulk {
		report.ImportFallbacks++
	}
	return err
}

// write applies a page of repairs: a bulk import when restoring into an
// empty store (every update a TOUCH), falling back to TOUCH writes for a page
// that conflicts (a job wrote one of its relationships meanwhile: the import
// is create-only and all-or-nothing) or fails; TOUCH writes otherwise. It
// reports whether the page was imported.
func (r *Reconciler) write(ctx context.Context, updates []spicedb.Update, bulk bool) (bool, error) {
	if bulk {
		rels := make([]spicedb.Relationship, len(updates))
		for i, u := range updates {
			rels[i] = u.Relationship
		}
		err := r.SpiceDB.Import(ctx, rels)
		if err == nil {
			return true, nil
		}
		if ctx.Err() != nil || spicedb.IsSchemaMissing(err) {
			return false, err
		}
	}
	return false, writeRetrying(ctx, r.SpiceDB, updates)
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
