package jobs_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// The bad interleaving, forced: job J1 reads "connected" and stalls before its
// write; the user disconnects; job J2 reads "disconnected", deletes and
// fences; then J1's stale TOUCH lands. J1's fence must fail (the generation
// moved), so J1 reads again and deletes: the stale write is not the last one.
func TestStaleWriteNeverLandsLast(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt, g := startGated(t)
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	conn := tt.Connect(t, "alice", "gitlab")

	select {
	case <-g.entered: // J1 has read "connected" and is about to write
	case <-time.After(10 * time.Second):
		t.Fatal("the connect job never wrote")
	}
	require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: "alice"}, conn.ID))
	keyID := jobs.ConnectionKeyID("gitlab", "alice")
	require.Eventually(t, func() bool {
		st := tt.SyncState(t, jobs.KeyKindConnection, keyID)
		return st.AppliedGeneration == st.Generation
	}, 10*time.Second, 5*time.Millisecond, "J2 should apply the disconnect while J1 is held")
	require.False(t, tt.CanView(t, "alice", pool.ID))

	close(g.release) // J1's stale TOUCH lands now, after J2's DELETE
	testenv.Await(t, g.landed, 15*time.Second, "the held write lands")
	tt.WaitSynced(t, 15*time.Second)
	require.False(t, tt.CanView(t, "alice", pool.ID), "a stale write landed last")
	tt.RequireInSync(t)
	var fenceRetries int
	require.NoError(t, tt.DB.QueryRow(ctx,
		"SELECT count(*) FROM river_job WHERE kind = 'tether.sync_connection' AND state = 'completed'").Scan(&fenceRetries))
	require.Equal(t, 2, fenceRetries, "both jobs completed")
}

// SpiceDB (on its Postgres datastore) is stopped while 500 changes are made:
// every API call succeeds; after SpiceDB returns, every change is applied
// within 15 s, with the production backoff cap.
func TestSpiceDBOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	proc := testenv.StartSpiceDBProcess(t, true)
	tt := testenv.StartTether(t, testenv.TetherOpts{
		SpiceDB: func(c *spicedb.Config) { *c = proc.Config() },
		Client:  func(c *jobs.ClientConfig) { c.MaxWorkers = 50 },
		Config:  func(c *config.Config) { c.RetryMaxBackoff = 10 * time.Second }, // the production default
	})
	tt.Provider(t, "gitlab")
	tt.Provider(t, "github")
	pools := []*app.Pool{tt.Pool(t, "a", "gitlab", false), tt.Pool(t, "b", "github", false)}
	tt.WaitSynced(t, 15*time.Second)

	proc.Stop()
	rng := rand.New(rand.NewPCG(1, 2))
	conns := map[string]*app.Connection{}
	for i := range 500 {
		user := fmt.Sprintf("user%d", rng.IntN(120))
		provider := []string{"gitlab", "github"}[rng.IntN(2)]
		key := user + "/" + provider
		var err error
		switch c := conns[key]; {
		case c != nil && i%3 == 0:
			err = tt.Service.ConnectionDelete(ctx, &app.User{ID: user}, c.ID)
			delete(conns, key)
		case i%17 == 0:
			_, err = tt.Service.PoolViewerAdd(ctx, pools[rng.IntN(2)].ID, []app.PoolViewer{{ID: user}})
		default:
			conns[key], err = tt.Service.ConnectionSetStatus(ctx, user, provider, "connected")
		}
		require.NoError(t, err, "change %d must succeed while SpiceDB is down", i)
	}
	var pending int
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT count(*) FROM sync_state WHERE applied_generation < generation").Scan(&pending))
	require.Positive(t, pending, "nothing can be applied while SpiceDB is down")

	proc.Start()
	restarted := time.Now()
	tt.WaitSynced(t, 15*time.Second)
	t.Logf("all changes applied %s after SpiceDB returned", time.Since(restarted).Round(time.Millisecond))
	tt.RequireInSync(t)
	var discarded int
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE state IN ('discarded','cancelled')").Scan(&discarded))
	require.Zero(t, discarded)
}

// SpiceDB is wiped (an in-memory server restarted: schema and data gone),
// here with self-healing off. The next writes fail on the missing schema:
// their jobs keep retrying (never pretending success, never given up), and
// `reconcile` writes the schema back and restores everything; the waiting
// job then applies, and a dry run finds nothing. (With self-healing on, the
// restore needs no command: e2e.TestSpiceDBWipedUnderTraffic.)
func TestSpiceDBWiped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	proc := testenv.StartSpiceDBProcess(t, false)
	tt := testenv.StartTether(t, testenv.TetherOpts{SpiceDB: func(c *spicedb.Config) { *c = proc.Config() }})
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	public := tt.Pool(t, "public", "", true)
	for i := range 20 {
		tt.Connect(t, fmt.Sprintf("user%d", i), "gitlab")
	}
	_, err := tt.Service.PoolViewerAdd(ctx, pool.ID, []app.PoolViewer{{ID: "manual@example.org"}})
	require.NoError(t, err)
	tt.WaitSynced(t, 15*time.Second)
	want := tt.DesiredRelationships(t)
	require.Equal(t, want, tt.Relationships(t))

	proc.Stop()
	proc.Start() // empty: no schema, no relationships
	state, err := tt.SpiceDB.CheckSchema(ctx)
	require.NoError(t, err)
	require.Equal(t, spicedb.SchemaMissing, state)

	tt.Connect(t, "late", "gitlab")
	keyID := jobs.ConnectionKeyID("gitlab", "late")
	require.Eventually(t, func() bool { return tt.SyncState(t, jobs.KeyKindConnection, keyID).LastError != nil },
		10*time.Second, 10*time.Millisecond, "a write into a wiped store must fail")
	st := tt.SyncState(t, jobs.KeyKindConnection, keyID)
	require.Less(t, st.AppliedGeneration, st.Generation, "a write into a wiped store must not be taken as applied")
	require.False(t, st.Stalled, "a wiped store is restored, not a reason to give the key up")

	dry, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	require.NoError(t, err)
	require.Equal(t, "missing", dry.Schema)
	require.EqualValues(t, len(want), dry.Missing, "the settled keys' relationships are all missing")

	report, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{})
	require.NoError(t, err)
	require.EqualValues(t, len(want)+1, report.Repaired)
	tt.WaitSynced(t, 15*time.Second) // the waiting key's job, on its next retry
	tt.RequireInSync(t)
	require.True(t, tt.CanView(t, "late", pool.ID))
	require.True(t, tt.CanView(t, "manual@example.org", pool.ID))
	require.True(t, tt.CanView(t, "nobody", public.ID))

	again, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	require.NoError(t, err)
	require.Zero(t, again.Drift())
	require.Equal(t, "current", again.Schema)
}

// A manual edit in SpiceDB (a grant nobody made, a link removed) is drift:
// a dry run reports exactly it, a real run repairs it.
func TestReconcileRepairsManualEdits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := testenv.StartTether(t, testenv.TetherOpts{})
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	tt.Connect(t, "alice", "gitlab")
	tt.WaitSynced(t, 15*time.Second)

	_, err := tt.SpiceDB.Write(ctx, []spicedb.Update{
		{Relationship: spicedb.Relationship{ResourceType: "resource_pool", ResourceID: fmt.Sprint(pool.ID), Relation: "viewer", SubjectType: "user", SubjectID: "mallory"}},
		{Relationship: spicedb.Relationship{ResourceType: "resource_pool", ResourceID: fmt.Sprint(pool.ID), Relation: "provider", SubjectType: "oauth2_client", SubjectID: "gitlab"}, Delete: true},
	})
	require.NoError(t, err)
	require.True(t, tt.CanView(t, "mallory", pool.ID))

	dry, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	require.NoError(t, err)
	require.EqualValues(t, 1, dry.Missing)
	require.EqualValues(t, 1, dry.Extra)
	require.Zero(t, dry.Repaired)
	require.False(t, tt.CanView(t, "alice", pool.ID), "a dry run changes nothing")

	report, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{})
	require.NoError(t, err)
	require.EqualValues(t, 2, report.Repaired)
	require.False(t, tt.CanView(t, "mallory", pool.ID))
	require.True(t, tt.CanView(t, "alice", pool.ID))
	tt.RequireInSync(t)
}

// Under a backlog, revocations run before grants: River fetches by priority.
func TestRevocationsGoFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	queued := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	queued.Provider(t, "gitlab")
	for i := range 200 {
		queued.Connect(t, fmt.Sprintf("grant%d", i), "gitlab")
	}
	c, err := queued.Service.ConnectionSetStatus(ctx, "revoked", "gitlab", "error")
	require.NoError(t, err)
	require.Equal(t, app.StatusError, c.Status)

	var revokeAge float64
	require.NoError(t, queued.DB.QueryRow(ctx,
		"SELECT extract(epoch FROM now() - min(revoke_pending_since)) FROM sync_state").Scan(&revokeAge))
	require.GreaterOrEqual(t, revokeAge, 0.0, "the oldest unapplied revocation is known")

	// One worker drains the backlog; the revocation, inserted last, runs first.
	testenv.AttachWorkers(t, queued, func(cfg *jobs.ClientConfig) { cfg.MaxWorkers = 1 })
	queued.WaitSynced(t, 30*time.Second)
	var firstKind string
	require.NoError(t, queued.DB.QueryRow(ctx,
		"SELECT args->>'user_id' FROM river_job WHERE kind = 'tether.sync_connection' ORDER BY attempted_at LIMIT 1").Scan(&firstKind))
	require.Equal(t, "revoked", firstKind)
}

// A worker process is SIGKILLed while its job is between reading and writing.
// The job stays "running" under the dead process; once the process's lease
// has expired (DefaultWorkerLeaseTTL after its last renewal), a live worker
// cancels it and inserts it again, and the change applies — with River's
// rescue horizon at its production 2 minutes, so the rescuer plays no part.
func TestWorkerKilledMidJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	tt.Connect(t, "alice", "gitlab")

	marker := t.TempDir() + "/entered"
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperWorkerEnv+"=1",
		"HELPER_DATABASE_URL="+tt.DB.Config().ConnString(),
		"HELPER_SPICEDB_ENDPOINT="+tt.SpiceConfig.Endpoint, "HELPER_SPICEDB_TOKEN="+tt.SpiceConfig.Token,
		"HELPER_MARKER="+marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { _, err := os.Stat(marker); return err == nil }, 20*time.Second, 10*time.Millisecond,
		"the helper worker never reached its write; output: %s", out)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	killed := time.Now()

	var jobID int64
	var state string
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT id, state FROM river_job WHERE kind LIKE 'tether.sync_%' ORDER BY id LIMIT 1").Scan(&jobID, &state))
	require.Equal(t, "running", state, "the killed worker's job is left running")

	testenv.AttachWorkers(t, tt, func(cfg *jobs.ClientConfig) {
		require.Equal(t, 2*time.Minute, cfg.RescueStuckJobsAfter, "production rescue horizon")
	})
	tt.WaitSynced(t, 15*time.Second)
	t.Logf("applied %s after the kill", time.Since(killed).Round(time.Millisecond))
	require.True(t, tt.CanView(t, "alice", pool.ID))
	tt.RequireInSync(t)
	var replacedBy int64
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT state, (metadata->>'tether:replaced_by')::bigint FROM river_job WHERE id = $1",
		jobID).Scan(&state, &replacedBy))
	require.Equal(t, "cancelled", state, "the dead worker's job is cancelled")
	require.NoError(t, tt.DB.QueryRow(ctx, "SELECT state FROM river_job WHERE id = $1 AND (metadata->'tether:reclaimed_from'->>'job_id')::bigint = $2",
		replacedBy, jobID).Scan(&state))
	require.Equal(t, "completed", state, "its replacement applied the change")
	require.Zero(t, count(t, tt, "SELECT count(*) FROM river_job WHERE metadata ? 'river:rescue_count'"), "nothing was left to River's rescuer")
}

func count(t *testing.T, tt *testenv.Tether, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, tt.DB.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

const helperWorkerEnv = "TETHER_HELPER_WORKER"

// helperWorker is the process TestWorkerKilledMidJob kills: a worker whose
// every SpiceDB write blocks, after touching a marker file.
func helperWorker() int {
	ctx := context.Background()
	block := grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == writeMethod {
			_ = os.WriteFile(os.Getenv("HELPER_MARKER"), nil, 0o644)
			select {} // killed here
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	stop, err := testenv.RunWorker(ctx, os.Getenv("HELPER_DATABASE_URL"), spicedb.Config{
		Endpoint: os.Getenv("HELPER_SPICEDB_ENDPOINT"), Token: os.Getenv("HELPER_SPICEDB_TOKEN"), Insecure: true,
		DialOptions: []grpc.DialOption{block},
	}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper worker:", err)
		return 1
	}
	defer stop()
	select {}
}

// A fence never waits for a row lock: while a transaction holds the key's
// sync_state row (an API change in flight), a job's write lands but its
// fence skips the row, reports the key not applied, and the job retries
// later instead of blocking a batch of other keys behind that lock. Once the
// lock is gone, the retry applies the key.
func TestFenceSkipsLockedKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt, g := startGated(t)
	tt.Provider(t, "gitlab")
	pool := tt.Pool(t, "gpu", "gitlab", false)
	tt.Connect(t, "alice", "gitlab")
	keyID := jobs.ConnectionKeyID("gitlab", "alice")

	select {
	case <-g.entered: // the job read the key and is about to write
	case <-time.After(10 * time.Second):
		t.Fatal("the connect job never wrote")
	}
	tx, err := tt.DB.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, "SELECT 1 FROM sync_state WHERE kind = 'connection' AND key_id = $1 FOR UPDATE", keyID)
	require.NoError(t, err)
	close(g.release)
	testenv.Await(t, g.landed, 15*time.Second, "the held write lands")

	// With the lock still held, the job gives up on the key and is retryable;
	// a fence that waited would leave it running until the lock is released.
	var state string
	require.Eventually(t, func() bool {
		require.NoError(t, tt.DB.QueryRow(ctx,
			"SELECT state FROM river_job WHERE kind = 'tether.sync_connection' ORDER BY id DESC LIMIT 1").Scan(&state))
		return state == "retryable" || state == "available" || state == "scheduled"
	}, 10*time.Second, 5*time.Millisecond, "the job should give up on a locked key instead of waiting")
	st := tt.SyncState(t, jobs.KeyKindConnection, keyID)
	require.Less(t, st.AppliedGeneration, st.Generation, "the key must not be recorded as applied through a skipped fence")

	require.NoError(t, tx.Rollback(ctx))
	tt.WaitSynced(t, 15*time.Second)
	require.True(t, tt.CanView(t, "alice", pool.ID))
	tt.RequireInSync(t)
}

// startGated starts Tether with a gate on the first write that grants a
// connection.
func startGated(t *testing.T) (*testenv.Tether, *gate) {
	g := newGate(func(w *v1.WriteRelationshipsRequest) bool {
		for _, u := range w.GetUpdates() {
			if u.GetOperation() == v1.RelationshipUpdate_OPERATION_TOUCH && u.GetRelationship().GetRelation() == spicedb.RelConnected {
				return true
			}
		}
		return false
	})
	tt := testenv.StartTether(t, testenv.TetherOpts{SpiceDB: func(c *spicedb.Config) {
		c.DialOptions = append(c.DialOptions, g.interceptor())
	}})
	return tt, g
}
