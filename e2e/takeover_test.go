package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/faultproxy"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
)

// revocationCase is a change that takes access away, made while a worker
// process holds its only job.
type revocationCase struct {
	name    string
	jobKind string
	// setup grants alice access; revoke takes it away; revoked says whether
	// SpiceDB (fully consistent) shows it taken away.
	setup   func(t *testing.T, tt *testenv.Tether) *revocationFixture
	revoke  func(t *testing.T, tt *testenv.Tether, f *revocationFixture)
	revoked func(t *testing.T, tt *testenv.Tether, f *revocationFixture) bool
}

type revocationFixture struct {
	pool       *app.Pool
	connection *app.Connection
}

func revocationCases() []revocationCase {
	linked := func(t *testing.T, tt *testenv.Tether) *revocationFixture {
		tt.Provider(t, providerID)
		pool := tt.Pool(t, "gpu", providerID, false)
		return &revocationFixture{pool: pool, connection: tt.Connect(t, "alice", providerID)}
	}
	cannotView := func(t *testing.T, tt *testenv.Tether, f *revocationFixture) bool {
		return !tt.CanView(t, "alice", f.pool.ID)
	}
	return []revocationCase{
		{
			name: "Disconnect", jobKind: jobs.SyncConnectionArgs{}.Kind(), setup: linked, revoked: cannotView,
			revoke: func(t *testing.T, tt *testenv.Tether, f *revocationFixture) {
				require.NoError(t, tt.Service.ConnectionDelete(context.Background(), &app.User{ID: "alice"}, f.connection.ID))
			},
		},
		{
			name: "PoolUnlink", jobKind: jobs.SyncPoolArgs{}.Kind(), setup: linked, revoked: cannotView,
			revoke: func(t *testing.T, tt *testenv.Tether, f *revocationFixture) {
				_, err := tt.Service.PoolUpdate(context.Background(), f.pool.ID, &app.PoolInput{Remote: app.Optional[app.Remote]{Set: true}})
				require.NoError(t, err)
			},
		},
		{
			// A provider no pool links any more: what is revoked is alice's
			// connected relationship, which would grant her every pool
			// linked to a provider of that id again.
			name: "ProviderDelete", jobKind: jobs.SyncConnectionArgs{}.Kind(),
			setup: func(t *testing.T, tt *testenv.Tether) *revocationFixture {
				tt.Provider(t, providerID)
				return &revocationFixture{connection: tt.Connect(t, "alice", providerID)}
			},
			revoke: func(t *testing.T, tt *testenv.Tether, _ *revocationFixture) {
				require.NoError(t, tt.Service.ProviderDelete(context.Background(), providerID))
			},
			revoked: func(t *testing.T, tt *testenv.Tether, _ *revocationFixture) bool {
				for _, rel := range tt.Relationships(t) {
					if rel == "oauth2_client:"+providerID+"#connected@user:alice" {
						return false
					}
				}
				return true
			},
		},
	}
}

// TestWorkerKilledHoldingRevocation runs two `tether serve --role worker`
// processes with the production defaults (worker lease 5 s, rescue horizon
// 2 min, job timeout 30 s) and no periodic reconcile, each talking to SpiceDB
// through a fault proxy. With both proxies stalled, a revocation is made; the
// process whose worker picked its only job up (the job row is running,
// attempted by it) is SIGKILLed mid-job; the other one's proxy resumes. The
// revocation must be visible in SpiceDB within 15 s of the kill, with no
// reconcile: the survivor takes the dead worker's job over when its lease
// expires, long before River's rescuer would.
func TestWorkerKilledHoldingRevocation(t *testing.T) {
	t.Parallel()
	for _, tc := range revocationCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
			workers := []*proxiedWorker{startProxiedWorker(t, tt), startProxiedWorker(t, tt)}
			f := tc.setup(t, tt)
			tt.WaitSynced(t, 15*time.Second)
			require.False(t, tc.revoked(t, tt, f), "alice must have access before the fault")

			for _, w := range workers {
				w.proxy.Stall()
			}
			tc.revoke(t, tt, f)
			require.Positive(t, revocationAge(t, workers[0]), "an unapplied revocation must show in the metric")
			holder, survivor, jobID, attempt := waitHeld(t, tt, tc.jobKind, workers)
			holder.process.Kill(t)
			killed := time.Now()
			var state, attemptedBy string
			var attemptNow int
			require.NoError(t, tt.DB.QueryRow(ctx, "SELECT state, attempt, attempted_by[cardinality(attempted_by)] FROM river_job WHERE id = $1",
				jobID).Scan(&state, &attemptNow, &attemptedBy))
			require.Equal(t, []any{"running", attempt, holder.process.ClientID}, []any{state, attemptNow, attemptedBy},
				"the kill must land while the dead process holds the job")
			// Nobody can write now: the revocation, held by a dead worker,
			// counts as unapplied.
			require.Positive(t, revocationAge(t, survivor))
			survivor.proxy.Resume()

			for !tc.revoked(t, tt, f) {
				require.Less(t, time.Since(killed), 15*time.Second, "the revocation is not in SpiceDB 15 s after the worker holding it died\nsurvivor's log:\n%s",
					survivor.process.Output())
				time.Sleep(10 * time.Millisecond)
			}
			took := time.Since(killed)
			t.Logf("%s: revocation visible in SpiceDB %s after the worker holding its job (#%d, attempt %d) was SIGKILLed",
				tc.name, took.Round(time.Millisecond), jobID, attempt)

			// It was taken over, not rescued: the dead worker's job is
			// cancelled, naming the replacement the survivor ran.
			var replacedBy int64
			require.NoError(t, tt.DB.QueryRow(ctx, "SELECT state, (metadata->>'tether:replaced_by')::bigint FROM river_job WHERE id = $1",
				jobID).Scan(&state, &replacedBy))
			require.Equal(t, "cancelled", state)
			var from int64
			var priority int
			require.Eventually(t, func() bool {
				require.NoError(t, tt.DB.QueryRow(ctx, `SELECT state, attempted_by[cardinality(attempted_by)], priority,
					(metadata->'tether:reclaimed_from'->>'job_id')::bigint FROM river_job WHERE id = $1`, replacedBy).Scan(&state, &attemptedBy, &priority, &from))
				return state == "completed"
			}, 10*time.Second, 10*time.Millisecond, "the replacement job must complete")
			require.Equal(t, survivor.process.ClientID, attemptedBy)
			require.Equal(t, jobID, from)
			require.Equal(t, jobs.PriorityRevoke, priority, "a revocation's replacement keeps its place ahead of grants")
			require.Zero(t, count(t, tt.DB, "SELECT count(*) FROM reconcile_runs"), "no reconcile may have run")
			// The operator's screen shows the dead worker.
			status, err := testenv.TetherCommand(t, tt.ServeEnv(), "status").CombinedOutput()
			require.NoError(t, err, "%s", status)
			require.Regexp(t, fmt.Sprintf(`pid %d\s+expired \(its jobs are taken over\)`, holder.process.Pid()), string(status))
			tt.WaitSynced(t, 15*time.Second)
			tt.RequireInSync(t)
			require.Eventually(t, func() bool { return revocationAge(t, survivor) == 0 }, 10*time.Second, 50*time.Millisecond)
		})
	}
}

// proxiedWorker is a `tether serve --role worker` process whose SpiceDB
// traffic goes through a fault proxy.
type proxiedWorker struct {
	process *testenv.ServeProcess
	proxy   *faultproxy.Proxy
}

func startProxiedWorker(t *testing.T, tt *testenv.Tether) *proxiedWorker {
	t.Helper()
	w := &proxiedWorker{}
	spice := tt.SpiceConfig
	throughProxy(t, &w.proxy)(&spice)
	env := tt.ServeEnv()
	env["TETHER_SPICEDB_ENDPOINT"] = spice.Endpoint
	// The revocation must reach SpiceDB through the takeover alone: no
	// watcher's restore, which is a reconcile, may run in between.
	env["TETHER_SELF_HEALING"] = "false"
	w.process = testenv.StartServe(t, env, "--role", "worker")
	return w
}

// waitHeld waits until a job of kind is running, attempted by one of the
// workers, and returns that worker, the other, the job and its attempt.
func waitHeld(t *testing.T, tt *testenv.Tether, kind string, workers []*proxiedWorker) (holder, other *proxiedWorker, jobID int64, attempt int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		var by string
		err := tt.DB.QueryRow(context.Background(), `SELECT id, attempt, attempted_by[cardinality(attempted_by)] FROM river_job
			WHERE kind = $1 AND state = 'running' ORDER BY id DESC LIMIT 1`, kind).Scan(&jobID, &attempt, &by)
		if err == nil {
			for i, w := range workers {
				if w.process.ClientID == by {
					return w, workers[1-i], jobID, attempt
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no worker picked the %s job up within 15 s", kind)
	return nil, nil, 0, 0
}

// revocationAge scrapes tether_sync_oldest_unapplied_revocation_age_seconds
// from a worker's /metrics.
func revocationAge(t *testing.T, w *proxiedWorker) float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + w.process.Addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	const name = "tether_sync_oldest_unapplied_revocation_age_seconds "
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name); ok {
			age, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return age
		}
	}
	require.NoError(t, sc.Err())
	t.Fatalf("no %s in /metrics", strings.TrimSpace(name))
	return 0
}
