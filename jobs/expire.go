package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/riverqueue/river"

	"github.com/tetherhq/tether/db/dbsqlc"
)

// DefaultExpireInterval is how often the leader ends abandoned
// authorizations.
const DefaultExpireInterval = time.Minute

// ExpireArgs is the periodic job that ends authorizations whose state
// expired: their states go, a connection that was never connected goes, a
// connected one stops showing a re-authorization in flight. The API hides
// such rows from the moment they expire; this removes them.
type ExpireArgs struct{}

func (ExpireArgs) Kind() string { return "tether.expire_authorizations" }

func (ExpireArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, Priority: PriorityGrant}
}

// ExpireWorker works ExpireArgs.
type ExpireWorker struct {
	river.WorkerDefaults[ExpireArgs]
	*Syncer
}

func (w *ExpireWorker) Work(ctx context.Context, _ *river.Job[ExpireArgs]) error {
	_, err := ExpireAuthorizations(ctx, w.DB)
	return err
}

// ExpireAuthorizations ends every expired authorization and returns how
// many connections that were never connected it removed. None of it changes
// SpiceDB (only connected rows grant access), so no sync job is involved.
func ExpireAuthorizations(ctx context.Context, db dbsqlc.DBTX) (int64, error) {
	q := dbsqlc.New()
	if _, err := q.StateDeleteExpired(ctx, db); err != nil {
		return 0, fmt.Errorf("error deleting expired states: %w", err)
	}
	removed, err := q.ConnectionDeleteAbandoned(ctx, db)
	if err != nil {
		return 0, fmt.Errorf("error deleting abandoned connections: %w", err)
	}
	if _, err := q.ConnectionEndLapsedAuthorizing(ctx, db); err != nil {
		return 0, fmt.Errorf("error ending lapsed re-authorizations: %w", err)
	}
	return removed, nil
}
