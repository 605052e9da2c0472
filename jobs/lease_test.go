package jobs_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/faultproxy"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// A worker that is alive but cut off from Postgres (a long pause, a
// partition) while its job's SpiceDB write is in flight loses its lease; a
// live worker takes the job over and applies it, and a later disconnect is
// applied too. When the cut-off worker's write finally goes on, it must not
// land — it would grant alice the access she just lost, and the job that
// made it was taken from its worker, so nothing would write after it. The
// write's deadline was the end of the lease it was made under: it is
// refused. When the worker reaches Postgres again it renews its lease,
// learns its job was taken over, and changes nothing.
func TestStalledWorkerLandsNoWriteAfterTakeover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const ttl = time.Second
	tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)

	dbURL, err := url.Parse(tt.DB.Config().ConnString())
	require.NoError(t, err)
	pgProxy, err := faultproxy.New(dbURL.Host)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pgProxy.Close() })
	dbURL.Host = pgProxy.Addr()
	g := newGate(func(w *v1.WriteRelationshipsRequest) bool {
		for _, u := range w.GetUpdates() {
			if u.GetOperation() == v1.RelationshipUpdate_OPERATION_TOUCH && u.GetRelationship().GetRelation() == spicedb.RelConnected {
				return true
			}
		}
		return false
	})
	stalled := testenv.StartTether(t, testenv.TetherOpts{
		DatabaseURL: dbURL.String(),
		SpiceDB: func(c *spicedb.Config) {
			*c = tt.SpiceConfig
			c.DialOptions = append(c.DialOptions, g.interceptor())
		},
		Client: func(c *jobs.ClientConfig) { c.WorkerLeaseTTL = ttl },
	})

	conn := tt.Connect(t, "alice", "gitlab")
	select {
	case <-g.entered: // the stalled worker's grant is in flight
	case <-time.After(10 * time.Second):
		t.Fatal("the connect job never wrote")
	}
	var jobID int64
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT id FROM river_job WHERE kind = 'tether.sync_connection' AND state = 'running'").Scan(&jobID))
	pgProxy.Stall()
	cut := time.Now()

	testenv.AttachWorkers(t, tt, func(c *jobs.ClientConfig) { c.WorkerLeaseTTL = ttl })
	require.Eventually(t, func() bool { return tt.CanView(t, "alice", pool.ID) }, 10*time.Second, 10*time.Millisecond,
		"the live worker must take the grant over")
	t.Logf("grant applied by the live worker %s after the other was cut off", time.Since(cut).Round(time.Millisecond))
	require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, conn.ID))
	tt.WaitSynced(t, 10*time.Second)
	require.False(t, tt.CanView(t, "alice", pool.ID))

	close(g.release)
	select {
	case <-g.landed:
	case <-time.After(10 * time.Second):
		t.Fatal("the cut-off worker's write neither ended nor went on")
	}
	require.Error(t, g.err, "the cut-off worker's write must end at its lease's end, never reach SpiceDB")
	require.False(t, tt.CanView(t, "alice", pool.ID), "a write of a job taken over landed after the takeover")
	t.Logf("the cut-off worker's write returned: %v", g.err)

	renewedAt := func() (at time.Time) {
		require.NoError(t, tt.DB.QueryRow(ctx, "SELECT renewed_at FROM worker_leases WHERE client_id = $1", stalled.River.ID()).Scan(&at))
		return at
	}
	lastRenewed := renewedAt()
	pgProxy.Resume()
	require.Eventually(t, func() bool {
		return renewedAt().After(lastRenewed) && count(t, tt, "SELECT count(*) FROM river_job WHERE state = 'running'") == 0
	}, 10*time.Second, 10*time.Millisecond, "the cut-off worker must renew its lease and end its job")
	var state string
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT state FROM river_job WHERE id = $1", jobID).Scan(&state))
	require.Equal(t, "cancelled", state, "the cut-off worker's River must not complete or retry a job taken from it")
	tt.WaitSynced(t, 10*time.Second)
	require.False(t, tt.CanView(t, "alice", pool.ID))
	tt.RequireInSync(t)
}

// A lease that expired long ago is deleted once no running job names its
// worker; one that a running job still names is kept (the job may still be
// taken over, or rescued).
func TestStaleWorkerLeasesAreForgotten(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	_, err := tt.DB.Exec(ctx, `INSERT INTO worker_leases (client_id, host, pid, expires_at, reclaimed_through)
		VALUES ('stale-idle', 'h', 1, now() - interval '2 hours', now()), ('stale-held', 'h', 2, now() - interval '2 hours', now()),
		       ('recent', 'h', 3, now() - interval '1 minute', now())`)
	require.NoError(t, err)
	// A running job of a kind that is not taken over (River's rescuer owns it).
	_, err = tt.DB.Exec(ctx, `INSERT INTO river_job (state, attempt, attempted_at, attempted_by, args, kind)
		VALUES ('running', 1, now(), ARRAY['stale-held'], '{}', 'tether.reconcile')`)
	require.NoError(t, err)

	testenv.AttachWorkers(t, tt, nil)
	leases := func() (ids []string) {
		rows, err := tt.DB.Query(ctx, "SELECT client_id FROM worker_leases WHERE host = 'h' ORDER BY client_id")
		require.NoError(t, err)
		defer rows.Close()
		for rows.Next() {
			var id string
			require.NoError(t, rows.Scan(&id))
			ids = append(ids, id)
		}
		require.NoError(t, rows.Err())
		return ids
	}
	require.Eventually(t, func() bool { return len(leases()) == 2 }, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, []string{"recent", "stale-held"}, leases())
}
