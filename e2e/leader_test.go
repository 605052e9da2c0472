package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/devtools/testenv"
)

// The periodic reconcile runs on River's leader only, so with three worker
// processes it still runs once per interval, never twice at once — also
// when the leader is stopped (SIGTERM: it resigns) and when it is killed
// (SIGKILL: its leadership expires). Every run on the settled data finds
// nothing to repair.
func TestPeriodicReconcileOnOneLeader(t *testing.T) {
	t.Parallel()
	const interval = time.Second
	tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	setupPools(t, tt)
	for i := range 20 {
		tt.Connect(t, fmt.Sprintf("leader-%d", i), providerID)
	}
	env := with(workerEnv(processEnv(tt)), map[string]string{"TETHER_RECONCILE_INTERVAL": interval.String()})
	workers := map[string]*testenv.ServeProcess{}
	names := map[string]string{} // client id → worker-N, for the log
	start := func() {
		p := testenv.StartServe(t, env, "--role", "worker")
		names[p.ClientID] = fmt.Sprintf("worker-%d", len(names))
		workers[p.ClientID] = p
	}
	for range 3 {
		start()
	}
	tt.WaitSynced(t, 30*time.Second)
	since := time.Now()

	waitRuns := func(n int, why string) {
		t.Helper()
		require.Eventually(t, func() bool { return count(t, tt.DB, "SELECT count(*) FROM reconcile_runs") >= n },
			40*time.Second, 50*time.Millisecond, "%d reconcile runs (%s)", n, why)
	}
	leader := func() *testenv.ServeProcess {
		t.Helper()
		var id string
		require.Eventually(t, func() bool {
			err := tt.DB.QueryRow(context.Background(), "SELECT leader_id FROM river_leader").Scan(&id)
			p := workers[id]
			return err == nil && p != nil && !p.Exited()
		}, 40*time.Second, 50*time.Millisecond, "a live worker leads")
		return workers[id]
	}
	waitRuns(3, "three workers")
	first := leader()
	first.Stop(t, 20*time.Second)
	delete(workers, first.ClientID)
	start()
	second := leader()
	require.NotEqual(t, first.ClientID, second.ClientID)
	waitRuns(count(t, tt.DB, "SELECT count(*) FROM reconcile_runs")+2, "after the leader resigned")
	second.Kill(t)
	delete(workers, second.ClientID)
	start()
	third := leader()
	waitRuns(count(t, tt.DB, "SELECT count(*) FROM reconcile_runs")+2, "after the leader was killed")
	elapsed := time.Since(since)

	// One at a time: no two runs overlap, and the periodic job was inserted
	// at most once per interval (three enqueuers would insert three).
	rows, err := tt.DB.Query(context.Background(),
		"SELECT started_at, finished_at, dry_run, missing + extra, error IS NULL FROM reconcile_runs ORDER BY started_at")
	require.NoError(t, err)
	var last time.Time
	runs := 0
	for rows.Next() {
		var s, f time.Time
		var dry, ok bool
		var drift int64
		require.NoError(t, rows.Scan(&s, &f, &dry, &drift, &ok))
		require.False(t, s.Before(last), "reconcile runs overlap: one started at %s before the previous finished at %s", s, last)
		require.False(t, dry)
		require.Zero(t, drift, "the run at %s found drift on settled data", s)
		require.True(t, ok, "the run at %s failed", s)
		last, runs = f, runs+1
	}
	require.NoError(t, rows.Err())
	inserted := count(t, tt.DB, "SELECT count(*) FROM river_job WHERE kind = 'tether.reconcile'")
	require.LessOrEqual(t, inserted, int(elapsed/interval)+3, "periodic reconcile jobs inserted by more than one leader")
	require.Zero(t, count(t, tt.DB, `SELECT count(*) FROM (SELECT created_at - lag(created_at) OVER (ORDER BY created_at) AS gap
		FROM river_job WHERE kind = 'tether.reconcile') g WHERE gap < $1::interval`, (interval/2).String()),
		"two reconcile jobs inserted within half an interval: two leaders at once")
	t.Logf("%d runs, %d periodic jobs in %s; leaders %s → %s → %s", runs, inserted, elapsed.Round(time.Millisecond),
		names[first.ClientID], names[second.ClientID], names[third.ClientID])
	tt.RequireInSync(t)
}
