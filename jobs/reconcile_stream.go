package jobs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// desiredPageRows is how many rows one read of a desired_relationships
// branch returns; pages of either side in flight between a reader and the
// merge hold at most exportPageRows relationships.
const desiredPageRows = 10_000

// outOfOrderError says a stream was not in the order the merge assumes
// (strictly increasing by spicedb.CompareRelationships). Nothing it found
// before is wrong (see mergeDrift), but the rest cannot be trusted: the run
// falls back to comparing in Postgres. It names no relationship: those are
// user ids.
type outOfOrderError struct {
	side string // "spicedb" or "postgres"
	row  int64  // 1-based position in that stream
}

func (e *outOfOrderError) Error() string {
	return fmt.Sprintf("the %s stream is not in byte order at row %d", e.side, e.row)
}

// sortedSource is one side of the merge: the pages its reader sends, each
// row checked to come strictly after the one before it when it is first
// looked at, so that no verdict ever rests on a row out of order.
type sortedSource struct {
	side    string
	pages   <-chan []spicedb.Relationship
	page    []spicedb.Relationship
	prev    spicedb.Relationship
	rows    int64 // rows taken
	checked bool  // page[0] has been checked against prev
	done    bool
}

// head returns the next row without taking it, waiting for its reader;
// ok is false at the end of the stream. A reader that fails never closes its
// channel (an early close would read as the end of the stream: all the rest
// drift); its failure cancels ctx instead.
func (s *sortedSource) head(ctx context.Context) (rel spicedb.Relationship, ok bool, err error) {
	for len(s.page) == 0 {
		if s.done {
			return spicedb.Relationship{}, false, nil
		}
		select {
		case p, open := <-s.pages:
			s.page, s.done, s.checked = p, !open, false
		case <-ctx.Done():
			return spicedb.Relationship{}, false, context.Cause(ctx)
		}
	}
	if !s.checked {
		if s.rows > 0 && spicedb.CompareRelationships(s.prev, s.page[0]) >= 0 {
			return spicedb.Relationship{}, false, &outOfOrderError{side: s.side, row: s.rows + 1}
		}
		s.checked = true
	}
	return s.page[0], true, nil
}

// take consumes the row head returned.
func (s *sortedSource) take() {
	s.prev, s.page, s.checked = s.page[0], s.page[1:], false
	s.rows++
}

// snapshot is the REPEATABLE READ transaction in which the desired
// relationships and the drift's key states are read (one snapshot, as the
// one statement of the table-based diff): the desired reader and the merge
// take turns on it.
type snapshot struct {
	mu sync.Mutex
	tx pgx.Tx
}

func (s *snapshot) do(fn func(tx pgx.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn(s.tx)
}

// runStreamed compares SpiceDB's export with desired_relationships as two
// sorted streams, read concurrently a page at a time, and hands the drift to
// classify and applyPage as it is found. Memory stays bounded by a few pages
// per side plus the repair pages in flight. It returns an *outOfOrderError,
// having stopped, when either stream breaks the order.
func (r *Reconciler) runStreamed(ctx context.Context, report *ReconcileReport, dryRun, schemaMissing bool, progress func(string, int64)) error {
	mctx, stop := context.WithCancel(ctx)
	defer stop()
	readers, rctx := errgroup.WithContext(mctx)
	sides, err := r.openStreams(ctx, rctx, readers, schemaMissing)
	if err != nil {
		stop()
		return firstError(readers.Wait(), err)
	}
	actual, desired, snap, tx := sides.actual, sides.desired, sides.snap, sides.snap.tx

	bulk := sides.empty && !dryRun
	pageSize, workers := repairShape(bulk)
	writers, wctx := errgroup.WithContext(ctx) // not stopped with the readers: repairs under way finish
	writers.SetLimit(workers)
	context.AfterFunc(wctx, stop) // a failed repair stops the reading
	rp := &repairs{r: r, report: report, writers: writers, ctx: wctx, bulk: bulk, dryRun: dryRun, progress: progress}
	flush := func(drift []spicedb.Update) error {
		rows, err := driftRows(rctx, snap, drift)
		if err != nil {
			return err
		}
		rp.submit(rows)
		return nil
	}
	mergeErr := mergeDrift(rctx, report, actual, desired, pageSize, flush, progress)
	if mergeErr != nil {
		stop()
	}
	readErr := readers.Wait()
	_ = tx.Rollback(context.WithoutCancel(ctx)) // read-only: released before the last repairs land
	report.lap("compare")
	writeErr := writers.Wait()
	report.lap("repair")
	if writeErr != nil {
		return writeErr
	}
	if mergeErr != nil {
		return firstError(readErr, mergeErr)
	}
	return readErr
}

// streamSides are the two sorted sources of a streamed run and the
// snapshot the desired side is read in.
type streamSides struct {
	actual, desired *sortedSource
	snap            *snapshot
	empty           bool // SpiceDB holds no relationship
}

// openStreams starts the readers of both sides in readers, on rctx.
func (r *Reconciler) openStreams(ctx, rctx context.Context, readers *errgroup.Group, schemaMissing bool) (*streamSides, error) {
	actualPages := make(chan []spicedb.Relationship, 1)
	actual := &sortedSource{side: "spicedb", pages: actualPages}
	if schemaMissing {
		close(actualPages) // nothing to export from a store without the schema
	} else {
		readers.Go(func() error { return r.readActual(rctx, actualPages) })
	}
	// The first page (or the end) of the export comes once SpiceDB has fixed
	// its snapshot; Postgres's is taken after it, as the table-based diff
	// reads Postgres after the export: a change committed between the two
	// shows as drift on a key whose generation moved, which the repair then
	// requeues.
	_, nonEmpty, err := actual.head(rctx)
	if err != nil {
		return nil, err
	}
	tx, err := r.DB.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("error beginning the reconcile snapshot: %w", err)
	}
	snap := &snapshot{tx: tx}
	desiredPages := make(chan []spicedb.Relationship, 1)
	readers.Go(func() error { return readDesired(rctx, snap, desiredPages) })
	return &streamSides{actual: actual, desired: &sortedSource{side: "postgres", pages: desiredPages}, snap: snap, empty: !nonEmpty}, nil
}

// firstError prefers the cause over the cancellation it led to.
func firstError(cause, err error) error {
	if cause != nil && ctxErr(err) {
		return cause
	}
	return err
}

func ctxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// mergeDrift walks both sorted streams: a row on both is in step, one only
// in SpiceDB is extra (delete), one only in Postgres missing (touch). Every
// row is checked to come after its predecessor before any verdict uses it;
// then an "extra" verdict is sound whatever comes later (every desired row
// already passed is smaller or was matched, every one to come is larger),
// and a "missing" one can at worst be a TOUCH of a desired relationship
// SpiceDB already has, should SpiceDB's stream later break its order. Drift
// goes to flush a page at a time.
func mergeDrift(ctx context.Context, report *ReconcileReport, actual, desired *sortedSource, pageSize int,
	flush func([]spicedb.Update) error, progress func(string, int64)) error {
	drift := make([]spicedb.Update, 0, pageSize)
	for {
		a, aok, err := actual.head(ctx)
		if err != nil {
			return err
		}
		d, dok, err := desired.head(ctx)
		if err != nil {
			return err
		}
		if !aok && !dok {
			break
		}
		c := 0
		switch {
		case !dok:
			c = -1
		case !aok:
			c = 1
		default:
			c = spicedb.CompareRelationships(a, d)
		}
		if c <= 0 {
			actual.take()
			report.Actual++
			if report.Actual%exportPageRows == 0 {
				progress("compare", report.Actual)
			}
		}
		if c >= 0 {
			desired.take()
			report.Desired++
		}
		if c == 0 {
			continue
		}
		rel := d
		if c < 0 {
			rel = a
		}
		drift = append(drift, spicedb.Update{Relationship: rel, Delete: c < 0})
		if len(drift) == pageSize {
			if err := flush(drift); err != nil {
				return err
			}
			drift = make([]spicedb.Update, 0, pageSize)
		}
	}
	progress("compare", report.Actual)
	if len(drift) > 0 {
		return flush(drift)
	}
	return nil
}

// exportPageRows is the page size of SpiceDB's export (spicedb.Client.Export).
const exportPageRows = 10_000

// readActual sends SpiceDB's export a page at a time. It closes out only
// when the export has ended well (see sortedSource.head).
func (r *Reconciler) readActual(ctx context.Context, out chan<- []spicedb.Relationship) error {
	err := r.exportFunc()(ctx, func(page []spicedb.Relationship) error {
		select {
		case out <- slices.Clone(page): // Export reuses its page
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	})
	if err == nil {
		close(out)
	}
	return err
}

// keyOf is the sync key a relationship belongs to, by its shape: as
// desired_relationships assigns keys, and as ReconcileDiffBuild derives the
// key of a relationship SpiceDB holds.
func keyOf(rel spicedb.Relationship) syncKey {
	if rel.ResourceType == spicedb.TypeOAuth2Client {
		return syncKey{KeyKindConnection, rel.ResourceID + "/" + rel.SubjectID}
	}
	return syncKey{KeyKindPool, rel.ResourceID}
}

// driftRows gives a page of drift its keys and their generations and
// pending flags, read in the snapshot the desired side comes from.
func driftRows(ctx context.Context, snap *snapshot, drift []spicedb.Update) ([]*dbsqlc.ReconcileDiff, error) {
	params := &dbsqlc.ReconcileKeyStatesParams{Kinds: make([]string, len(drift)), KeyIds: make([]string, len(drift))}
	for i, u := range drift {
		k := keyOf(u.Relationship)
		params.Kinds[i], params.KeyIds[i] = k.kind, k.keyID
	}
	var states []*dbsqlc.ReconcileKeyStatesRow
	if err := snap.do(func(tx pgx.Tx) (err error) {
		states, err = dbsqlc.New().ReconcileKeyStates(ctx, tx, params)
		return err
	}); err != nil {
		return nil, fmt.Errorf("error reading the drift's key states: %w", err)
	}
	byKey := make(map[syncKey]*dbsqlc.ReconcileKeyStatesRow, len(states))
	for _, s := range states {
		byKey[syncKey{s.Kind, s.KeyID}] = s
	}
	rows := make([]*dbsqlc.ReconcileDiff, len(drift))
	for i, u := range drift {
		k := keyOf(u.Relationship)
		rel := u.Relationship
		row := &dbsqlc.ReconcileDiff{Operation: "touch", ResourceType: rel.ResourceType, ResourceID: rel.ResourceID, Relation: rel.Relation,
			SubjectType: rel.SubjectType, SubjectID: rel.SubjectID, KeyKind: k.kind, KeyID: k.keyID}
		if u.Delete {
			row.Operation = "delete"
		}
		if s := byKey[k]; s != nil {
			row.Generation, row.Pending = s.Generation, s.Pending
		}
		rows[i] = row
	}
	return rows, nil
}

// branch is one branch of desired_relationships read in order, a page at a
// time after the last row it returned (keyset paging through its index).
type branch struct {
	fetch func(ctx context.Context, tx pgx.Tx, after spicedb.Relationship) ([]spicedb.Relationship, error)
	buf   []spicedb.Relationship
	last  spicedb.Relationship
	more  bool
}

func (b *branch) head(ctx context.Context, snap *snapshot) (spicedb.Relationship, bool, error) {
	if len(b.buf) == 0 && b.more {
		err := snap.do(func(tx pgx.Tx) (err error) {
			b.buf, err = b.fetch(ctx, tx, b.last)
			return err
		})
		if err != nil {
			return spicedb.Relationship{}, false, fmt.Errorf("error reading desired relationships: %w", err)
		}
		// A branch's page may hold fewer relationships than rows (a pool
		// gives up to two), never more than 2 per row: ask again until a
		// page comes back empty.
		b.more = len(b.buf) > 0
		if b.more {
			b.last = b.buf[len(b.buf)-1]
		}
	}
	if len(b.buf) == 0 {
		return spicedb.Relationship{}, false, nil
	}
	return b.buf[0], true, nil
}

// readDesired merges the branches of desired_relationships, each in
// SpiceDB's order, into one stream, and sends it a page at a time. Like
// readActual it closes out only when it has read everything.
func readDesired(ctx context.Context, snap *snapshot, out chan<- []spicedb.Relationship) error {
	branches := desiredBranches()
	page := make([]spicedb.Relationship, 0, desiredPageRows)
	for {
		var next *branch
		var nextRel spicedb.Relationship
		for _, b := range branches {
			rel, ok, err := b.head(ctx, snap)
			if err != nil {
				return err
			}
			if ok && (next == nil || spicedb.CompareRelationships(rel, nextRel) < 0) {
				next, nextRel = b, rel
			}
		}
		if next == nil || len(page) == desiredPageRows {
			if len(page) > 0 {
				select {
				case out <- page:
				case <-ctx.Done():
					return context.Cause(ctx)
				}
				page = make([]spicedb.Relationship, 0, desiredPageRows)
			}
			if next == nil {
				close(out)
				return nil
			}
		}
		page = append(page, nextRel)
		next.buf = next.buf[1:]
	}
}

// desiredBranches are the branches of desired_relationships (migration
// 00002), each as a keyset-paged query in byte order.
func desiredBranches() []*branch {
	q := dbsqlc.New()
	connections := func(ctx context.Context, tx pgx.Tx, after spicedb.Relationship) ([]spicedb.Relationship, error) {
		rows, err := q.ReconcileDesiredConnectionsPage(ctx, tx, &dbsqlc.ReconcileDesiredConnectionsPageParams{
			AfterProvider: after.ResourceID, AfterSubject: after.SubjectID, MaxRows: desiredPageRows})
		rels := make([]spicedb.Relationship, len(rows))
		for i, row := range rows {
			rels[i] = spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client, ResourceID: row.ProviderID, Relation: spicedb.RelConnected,
				SubjectType: spicedb.TypeUser, SubjectID: row.SubjectID}
		}
		return rels, err
	}
	pools := func(ctx context.Context, tx pgx.Tx, after spicedb.Relationship) ([]spicedb.Relationship, error) {
		rows, err := q.ReconcileDesiredPoolsPage(ctx, tx, &dbsqlc.ReconcileDesiredPoolsPageParams{AfterID: after.ResourceID, MaxRows: desiredPageRows})
		rels := make([]spicedb.Relationship, 0, len(rows))
		for _, row := range rows {
			// provider < viewer: a pool's two relationships in order.
			if row.RemoteProviderID != nil {
				rels = append(rels, spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: row.ResourceID, Relation: spicedb.RelProvider,
					SubjectType: spicedb.TypeOAuth2Client, SubjectID: *row.RemoteProviderID})
			}
			if row.Public {
				rels = append(rels, spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: row.ResourceID, Relation: spicedb.RelViewer,
					SubjectType: spicedb.TypeUser, SubjectID: spicedb.Wildcard})
			}
		}
		return rels, err
	}
	viewers := func(ctx context.Context, tx pgx.Tx, after spicedb.Relationship) ([]spicedb.Relationship, error) {
		rows, err := q.ReconcileDesiredViewersPage(ctx, tx, &dbsqlc.ReconcileDesiredViewersPageParams{
			AfterPool: after.ResourceID, AfterSubject: after.SubjectID, MaxRows: desiredPageRows})
		rels := make([]spicedb.Relationship, len(rows))
		for i, row := range rows {
			rels[i] = spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: row.ResourceID, Relation: spicedb.RelViewer,
				SubjectType: spicedb.TypeUser, SubjectID: row.SubjectID}
		}
		return rels, err
	}
	return []*branch{{fetch: connections, more: true}, {fetch: pools, more: true}, {fetch: viewers, more: true}}
}

// repairShape is how many drift rows a repair page holds and how many pages
// are written at once: 1,000-update TOUCH writes one after another, or, into
// a store that held none of Tether's relationships, bulk imports of
// importPageSize, importWorkers at once.
func repairShape(bulk bool) (pageSize, workers int) {
	if bulk {
		return importPageSize, importWorkers
	}
	return spicedb.MaxUpdatesPerWrite, 1
}
