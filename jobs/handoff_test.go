package jobs_test

import (
	"context"
	"errors"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// startHandingOff starts Tether with the hand-off on (grace), its SpiceDB
// calls through dial options, and client changed by client.
func startHandingOff(t *testing.T, grace time.Duration, client func(*jobs.ClientConfig), dial ...func(*spicedb.Config)) *testenv.Tether {
	return testenv.StartTether(t, testenv.TetherOpts{
		Config: func(c *config.Config) { c.HandOffGrace = grace },
		Client: client,
		SpiceDB: func(c *spicedb.Config) {
			for _, d := range dial {
				d(c)
			}
		},
	})
}

func handOffs(tt *testenv.Tether, result string) float64 {
	return testutil.ToFloat64(tt.Metrics.HandOffs.WithLabelValues(result))
}

func connectionJobState(t *testing.T, tt *testenv.Tether, userID string) (int64, string) {
	var id int64
	var state string
	require.NoError(t, tt.DB.QueryRow(context.Background(), `SELECT id, state FROM river_job
		WHERE kind = 'tether.sync_connection' AND args->>'user_id' = $1 ORDER BY id DESC LIMIT 1`, userID).Scan(&id, &state))
	return id, state
}

// A change committed in a process that also works jobs is applied right after
// its commit, while its job — the outbox — still waits for its scheduled
// time; the fence that records the change applied deletes that job, which
// then never runs.
func TestHandOffAppliesBeforeItsJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := startHandingOff(t, time.Minute, nil)
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	tt.Connect(t, "alice", "gitlab")

	require.Eventually(t, func() bool { return tt.CanView(t, "alice", pool.ID) }, 10*time.Second, 5*time.Millisecond,
		"the hand-off applies the connect")
	tt.WaitSynced(t, 10*time.Second) // long before the job's time (a minute)
	var left int
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%'").Scan(&left))
	require.Zero(t, left, "the hand-offs' fences deleted their jobs (the pool's and the connection's)")
	require.Equal(t, 1.0, testutil.ToFloat64(tt.Metrics.SyncApplied.WithLabelValues(jobs.KeyKindConnection)))
	require.Equal(t, 2.0, handOffs(tt, "applied"), "the pool and the connection were handed off")
	tt.RequireInSync(t)
}

// A job whose time came while its hand-off was still writing runs (it may
// write too: both are fenced), and the hand-off's fence leaves it alone: only
// a job still waiting for its time is deleted, never one River has started.
func TestHandOffJobFindsKeyApplied(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	g := newGate(func(w *v1.WriteRelationshipsRequest) bool {
		for _, u := range w.GetUpdates() {
			if u.GetRelationship().GetRelation() == spicedb.RelConnected {
				return true
			}
		}
		return false
	})
	tt := startHandingOff(t, time.Minute, nil, func(c *spicedb.Config) { c.DialOptions = append(c.DialOptions, g.interceptor()) })
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	tt.Connect(t, "alice", "gitlab")
	testenv.Await(t, g.entered, 10*time.Second, "the hand-off writes")
	id, state := connectionJobState(t, tt, "alice")
	require.Equal(t, "scheduled", state)
	_, err := tt.River.JobRetry(ctx, id) // its time has come while the hand-off writes
	require.NoError(t, err)
	close(g.release)
	testenv.Await(t, g.landed, 10*time.Second, "the hand-off's write lands")
	require.NoError(t, g.err)

	tt.WaitSynced(t, 15*time.Second)
	require.True(t, tt.CanView(t, "alice", pool.ID))
	_, state = connectionJobState(t, tt, "alice")
	require.Equal(t, "completed", state, "the job ran to completion: the hand-off's fence did not delete a started job")
	require.Equal(t, 2.0, handOffs(tt, "applied"), "the pool's and the connection's hand-offs applied")
	tt.RequireInSync(t)
}

// The process dies between the commit and the hand-off (the hand-off is
// lost): the job, scheduled a grace ahead, applies the change — a grant and
// then a revocation.
func TestHandOffLostAfterCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := startHandingOff(t, 3*time.Second, func(c *jobs.ClientConfig) {
		c.HandOff.Drop = func(kind, _ string) bool { return kind == jobs.KeyKindConnection }
	})
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	conn := tt.Connect(t, "alice", "gitlab")
	_, state := connectionJobState(t, tt, "alice")
	require.Equal(t, "scheduled", state, "the outbox waits out its grace")
	require.False(t, tt.CanView(t, "alice", pool.ID), "nothing applied the lost hand-off yet")

	// Grace, plus River's scheduler (every 5 s), plus the job.
	tt.WaitSynced(t, 20*time.Second)
	require.True(t, tt.CanView(t, "alice", pool.ID), "the job applied the grant")

	require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, conn.ID))
	tt.WaitSynced(t, 20*time.Second)
	require.False(t, tt.CanView(t, "alice", pool.ID), "the job applied the revocation")
	require.Equal(t, 2.0, handOffs(tt, "dropped"))
	var lost int
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state <> 'completed'").Scan(&lost))
	require.Zero(t, lost, "every job completed")
	tt.RequireInSync(t)
}

// A hand-off whose write is held past its deadline (half the grace) never
// lands: its call ends there. Meanwhile the user disconnected, and that
// change's hand-off applied; the held grant must not land after it, and the
// jobs, when they run, leave the revocation in place.
func TestHandOffHeldPastItsDeadlineNeverLands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	g := newGate(func(w *v1.WriteRelationshipsRequest) bool {
		for _, u := range w.GetUpdates() {
			if u.GetOperation() == v1.RelationshipUpdate_OPERATION_TOUCH && u.GetRelationship().GetRelation() == spicedb.RelConnected {
				return true
			}
		}
		return false
	})
	const grace = 2 * time.Second
	tt := startHandingOff(t, grace, nil, func(c *spicedb.Config) { c.DialOptions = append(c.DialOptions, g.interceptor()) })
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	conn := tt.Connect(t, "alice", "gitlab")
	testenv.Await(t, g.entered, 10*time.Second, "the connect's hand-off writes")

	require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, conn.ID))
	testenv.Await(t, g.landed, 10*time.Second, "the held write ends at its deadline")
	// Its own deadline, or the shared call cut off when it ended.
	require.True(t, errors.Is(g.err, context.DeadlineExceeded) || errors.Is(g.err, context.Canceled),
		"the held write was cut off at its deadline, got %v", g.err)
	close(g.release)

	tt.WaitSynced(t, 20*time.Second)
	require.False(t, tt.CanView(t, "alice", pool.ID), "the held grant never landed after the revocation")
	require.Equal(t, 1.0, handOffs(tt, "left_to_job"), "the held hand-off left its change to its job")
	tt.RequireInSync(t)
}
