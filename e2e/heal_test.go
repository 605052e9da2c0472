package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/devstack"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// repairDeadline is the contract's bound: while SpiceDB is reachable, any
// difference from what Postgres implies is gone within 15 s.
const repairDeadline = 15 * time.Second

// healBundle is an engine with self-healing on its own SpiceDB process.
type healBundle struct {
	tt      *testenv.Tether
	proc    *testenv.SpiceDBProcess
	metrics *jobs.Metrics
	logs    *testenv.Buffer
	foreign *spicedb.Client
	pools   map[string]*app.Pool
}

// setupHeal starts a SpiceDB (memory or Postgres datastore) and an engine
// with self-healing, and gives it a provider, a connected user (alice), a
// linked pool (gpu), an unlinked pool with a manual viewer (manual) and a
// public pool (public), all applied.
func setupHeal(t *testing.T, proc *testenv.SpiceDBProcess, tune func(*jobs.ClientConfig)) *healBundle {
	t.Helper()
	b := &healBundle{proc: proc, logs: &testenv.Buffer{}}
	b.tt = testenv.StartTether(t, testenv.TetherOpts{
		Heal: true, Client: tune,
		SpiceDB: func(c *spicedb.Config) { *c = proc.Config() },
		Logger:  newTestLogger(b.logs),
	})
	b.metrics = b.tt.Metrics
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("engine log:\n%s", b.logs.String())
		}
	})
	b.foreign = testenv.ForeignClient(t, proc.Config())
	tt := b.tt
	tt.Provider(t, providerID)
	b.pools = map[string]*app.Pool{
		"gpu":    tt.Pool(t, "gpu", providerID, false),
		"manual": tt.Pool(t, "manual", "", false),
		"public": tt.Pool(t, "public", "", true),
	}
	tt.Connect(t, "alice", providerID)
	_, err := tt.Service.PoolViewerAdd(context.Background(), b.pools["manual"].ID, []app.PoolViewer{{ID: "bob@example.org"}})
	require.NoError(t, err)
	tt.WaitConverged(t, repairDeadline)
	return b
}

func rel(resourceType string, resourceID any, relation, subjectType, subjectID string) spicedb.Relationship {
	return spicedb.Relationship{ResourceType: resourceType, ResourceID: fmt.Sprint(resourceID), Relation: relation,
		SubjectType: subjectType, SubjectID: subjectID}
}

// foreignWrites are the intrusions of the contract's examples, one
// transaction each, plus two on ids no Tether key owns.
func (b *healBundle) foreignWrites() []spicedb.Update {
	gpu, manual, public := b.pools["gpu"].ID, b.pools["manual"].ID, b.pools["public"].ID
	return []spicedb.Update{
		{Relationship: rel(spicedb.TypeResourcePool, gpu, spicedb.RelViewer, spicedb.TypeUser, "mallory")},                         // intruder viewer
		{Relationship: rel(spicedb.TypeOAuth2Client, providerID, spicedb.RelConnected, spicedb.TypeUser, "nobody")},                // no such connection (no sync_state row)
		{Relationship: rel(spicedb.TypeOAuth2Client, providerID, spicedb.RelConnected, spicedb.TypeUser, "alice"), Delete: true},   // a real connection
		{Relationship: rel(spicedb.TypeResourcePool, manual, spicedb.RelProvider, spicedb.TypeOAuth2Client, providerID)},           // link on an unlinked pool
		{Relationship: rel(spicedb.TypeResourcePool, public, spicedb.RelViewer, spicedb.TypeUser, spicedb.Wildcard), Delete: true}, // public pool's wildcard
		{Relationship: rel(spicedb.TypeResourcePool, "0042", spicedb.RelViewer, spicedb.TypeUser, "mallory")},                      // a pool id Tether never makes
		{Relationship: rel(spicedb.TypeOAuth2Client, providerID, spicedb.RelConnected, spicedb.TypeUser, "/bm90LWNhbm9uaWNhbA")},   // a non-canonical subject
	}
}

// intrude makes every foreign write and returns when the last one landed.
func (b *healBundle) intrude(t *testing.T) time.Time {
	t.Helper()
	for _, u := range b.foreignWrites() {
		_, err := b.foreign.Write(context.Background(), []spicedb.Update{u})
		require.NoError(t, err)
	}
	return time.Now()
}

// TestForeignWritesUndone: writes and deletes behind Tether's back on its
// relations are undone within 15 s, with no command run, on the memory and
// on the Postgres datastore (track_commit_timestamp = on); every one is
// counted as a foreign change and as repaired.
func TestForeignWritesUndone(t *testing.T) {
	t.Parallel()
	for _, onPostgres := range []bool{false, true} {
		name := map[bool]string{false: "MemoryDatastore", true: "PostgresDatastore"}[onPostgres]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupHeal(t, testenv.StartSpiceDBProcess(t, onPostgres), nil)
			b.tt.WaitWatchMode(t, jobs.WatchModeWatch, repairDeadline)
			landed := b.intrude(t)
			took := b.tt.WaitConverged(t, repairDeadline)
			t.Logf("%d foreign writes undone %s after the last landed", len(b.foreignWrites()), took.Round(time.Millisecond))
			writes := float64(len(b.foreignWrites()))
			require.Eventually(t, func() bool { return testenv.Sum(b.metrics.Heal.ForeignRepaired) == writes },
				repairDeadline-time.Since(landed), 20*time.Millisecond, "every foreign change is counted repaired")
			require.Equal(t, writes, testenv.Sum(b.metrics.Heal.ForeignChanges))
			require.False(t, b.tt.CanView(t, "mallory", b.pools["gpu"].ID))
			require.True(t, b.tt.CanView(t, "alice", b.pools["gpu"].ID))
			require.False(t, b.tt.CanView(t, "alice", b.pools["manual"].ID))
			require.True(t, b.tt.CanView(t, "anyone", b.pools["public"].ID))
		})
	}
}

// TestOwnWritesAreNotForeign: in a steady run where only Tether writes, the
// watcher takes every change for Tether's own: the foreign-change counter
// stays 0 while the changes seen from Tether grow.
func TestOwnWritesAreNotForeign(t *testing.T) {
	t.Parallel()
	b := setupHeal(t, testenv.StartSpiceDBProcess(t, false), nil)
	b.tt.WaitWatchMode(t, jobs.WatchModeWatch, repairDeadline)
	// (At start the watcher may have found the new store without schema,
	// before the test wrote it: a restore then is right, and not counted.)
	lostBefore := testenv.Sum(b.metrics.Heal.Restores.WithLabelValues(jobs.TriggerWatchStore))
	w := newWorkload(t, serviceOps{svc: b.tt.Service}, []*app.Pool{b.pools["gpu"], b.pools["manual"], b.pools["public"]}, 4, 4, "steady")
	w.start()
	w.waitAcked(t, 200, "a steady run of Tether's own writes")
	w.halt()
	w.stats.checkNoViolations(t)
	b.tt.WaitConverged(t, repairDeadline)
	// One foreign write as a marker: the stream is ordered, so once the
	// watcher counted it, it has judged every write of Tether's before it.
	// It must be the only foreign change counted, then and after its repair.
	_, err := b.foreign.Write(context.Background(), []spicedb.Update{{Relationship: rel(spicedb.TypeResourcePool, b.pools["manual"].ID,
		spicedb.RelViewer, spicedb.TypeUser, "marker")}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return testenv.Sum(b.metrics.Heal.ForeignChanges) >= 1 }, repairDeadline, 20*time.Millisecond)
	b.tt.WaitConverged(t, repairDeadline)
	require.Eventually(t, func() bool { return testenv.Sum(b.metrics.Heal.ForeignRepaired) >= 1 }, repairDeadline, 20*time.Millisecond)
	require.Positive(t, testenv.Sum(b.metrics.Heal.WatchChanges.WithLabelValues("tether")))
	require.Equal(t, 1.0, testenv.Sum(b.metrics.Heal.ForeignChanges), "only Tether wrote (and the marker): no other change may count as foreign")
	require.Equal(t, 1.0, testenv.Sum(b.metrics.Heal.ForeignRepaired))
	require.Equal(t, lostBefore, testenv.Sum(b.metrics.Heal.Restores.WithLabelValues(jobs.TriggerWatchStore)), "the store was never lost")
}

// TestWatchUnavailable: SpiceDB on a Postgres without
// track_commit_timestamp cannot watch. Tether says so once in its log,
// records the mode, stays ready, and the periodic reconcile still undoes
// foreign writes.
func TestWatchUnavailable(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "tether-nowatch-*")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755)) // Postgres runs as its own user when the tests run as root
	stack, err := devstack.Start(context.Background(), devstack.Options{Dir: dir, SkipSpiceDB: true, Fast: true, CommitTimestampsOff: true})
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	proc := testenv.StartSpiceDBProcessOn(t, stack.AdminURL)
	const interval = 3 * time.Second
	b := setupHeal(t, proc, func(c *jobs.ClientConfig) {
		c.ReconcileInterval = interval
		c.Heal.WatchUnavailableRetry = 200 * time.Millisecond // retried often: still one warning
	})
	b.tt.WaitWatchMode(t, jobs.WatchModePeriodic, repairDeadline)
	st := b.tt.WatchState(t)
	require.Contains(t, *st.ModeReason, "track_commit_timestamp")

	resp, err := http.Get(b.tt.URL + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	b.intrude(t)
	took := b.tt.WaitConverged(t, interval+repairDeadline)
	t.Logf("foreign writes undone by the periodic reconcile after %s", took.Round(time.Millisecond))
	require.Equal(t, 1, strings.Count(b.logs.String(), "SpiceDB Watch is unavailable"), "logged once:\n%s", b.logs.String())
	require.Zero(t, testenv.Sum(b.metrics.Heal.ForeignChanges), "no watcher saw them")
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// TestSpiceDBWipedUnderTraffic restarts an in-memory SpiceDB (schema and
// relationships gone) while actors change access. With no command run,
// within 15 s of SpiceDB's return the schema is back, a full
// ReadRelationships dump equals what Postgres implies, every acknowledged
// change is visible, and /readyz answers 200 again. ChangesDuringTheGap
// keeps changing access while SpiceDB is down.
func TestSpiceDBWipedUnderTraffic(t *testing.T) {
	t.Parallel()
	for _, gap := range []bool{false, true} {
		name := map[bool]string{false: "RestartedAtOnce", true: "ChangesDuringTheGap"}[gap]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			proc := testenv.StartSpiceDBProcess(t, false)
			b := setupHeal(t, proc, func(c *jobs.ClientConfig) { c.MaxWorkers = 16 })
			tt := b.tt
			url := tt.URL
			tt.WaitWatchMode(t, jobs.WatchModeWatch, repairDeadline)
			pools := []*app.Pool{b.pools["gpu"], b.pools["manual"], b.pools["public"]}
			w := newWorkload(t, serviceOps{svc: tt.Service}, pools, 6, 6, name)
			w.start()
			w.waitAcked(t, 20, "traffic flows before the wipe")
			proc.Stop()
			if gap {
				w.waitAcked(t, 40, "changes are accepted while SpiceDB is away")
				gapUser := "gap-user"
				tt.Connect(t, gapUser, providerID)
				_, err := tt.Service.PoolViewerAdd(context.Background(), b.pools["manual"].ID, []app.PoolViewer{{ID: "gap-viewer"}})
				require.NoError(t, err)
			}
			proc.Start() // empty: no schema, no relationships
			restarted := time.Now()
			w.waitAcked(t, 20, "changes are accepted after the wipe")
			w.halt()
			w.stats.checkNoViolations(t)
			require.Zero(t, w.stats.unavailable.Load(), "Postgres is up: no change may be refused")

			tt.WaitConverged(t, repairDeadline-time.Since(restarted))
			restoredAfter := time.Since(restarted)
			requireReady(t, url, repairDeadline-time.Since(restarted))
			t.Logf("traffic: %s; restored %s after SpiceDB returned (ready after %s); restores: %v",
				&w.stats, restoredAfter.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond),
				testenv.Sum(b.metrics.Heal.Restores))
			for _, line := range strings.Split(b.logs.String(), "\n") {
				if strings.Contains(line, "restored SpiceDB") || strings.Contains(line, "rescheduled") || strings.Contains(line, "watch") {
					t.Log(line)
				}
			}
			require.Positive(t, testenv.Sum(b.metrics.Heal.Restores))
			requireSpiceDB(t, tt, w.pools, w.requireDatabase(t, tt.DB))
			if gap {
				require.True(t, tt.CanView(t, "gap-user", b.pools["gpu"].ID))
				require.True(t, tt.CanView(t, "gap-viewer", b.pools["manual"].ID))
			}
		})
	}
}

// requireReady polls /readyz until it answers 200, for at most timeout.
func requireReady(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 within %s (last: %v %v)", timeout, resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutageHealsAtTheSpeedOfTheDrain: while SpiceDB is down, changes queue
// and their jobs, having failed once, wait for the healer (a minute, not
// their backoff: retrying meanwhile would only churn river_job). When
// SpiceDB returns, the healer sees it answer and makes every waiting job
// available at once: the backlog is applied in a fraction of the wait.
func TestOutageHealsAtTheSpeedOfTheDrain(t *testing.T) {
	t.Parallel()
	proc := testenv.StartSpiceDBProcess(t, true) // Postgres datastore: the data survives the restart
	logs := &testenv.Buffer{}
	tt := testenv.StartTether(t, testenv.TetherOpts{Heal: true, Logger: newTestLogger(logs),
		Config:  func(c *config.Config) { c.RetryMaxBackoff = 10 * time.Second }, // production's
		SpiceDB: func(c *spicedb.Config) { *c = proc.Config() }})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("engine log:\n%s", logs.String())
		}
	})
	metrics := tt.Metrics
	tt.Provider(t, providerID)
	pool := tt.Pool(t, "gpu", providerID, false)
	tt.WaitConverged(t, repairDeadline)

	proc.Stop()
	for i := range 40 {
		tt.Connect(t, fmt.Sprintf("outage-%d", i), providerID)
	}
	// The outage lasts until jobs wait out backoffs of seconds.
	const waitingJobs = `SELECT count(*) FROM river_job WHERE kind = 'tether.sync_connection'
		AND state IN ('retryable', 'available') AND scheduled_at > now() + interval '3 seconds'`
	require.Eventually(t, func() bool { return count(t, tt.DB, waitingJobs) >= 10 }, 30*time.Second, 50*time.Millisecond,
		"jobs back off while SpiceDB is away")
	waiting := count(t, tt.DB, waitingJobs)
	const mostAttempts = `SELECT COALESCE(max(attempt), 0) FROM river_job WHERE kind = 'tether.sync_connection'`
	require.LessOrEqual(t, count(t, tt.DB, mostAttempts), 2, "jobs wait for the healer while SpiceDB is down, not on their backoff")
	const latestRetry = `SELECT COALESCE(max(scheduled_at), now()) FROM river_job
		WHERE kind = 'tether.sync_connection' AND state IN ('retryable', 'available')`
	var ownBackoff time.Time // when the last waiting job would run on its own
	require.NoError(t, tt.DB.QueryRow(context.Background(), latestRetry).Scan(&ownBackoff))
	proc.Start()
	returned := time.Now()
	// Once SpiceDB answers, no job is left waiting out a backoff: the healer
	// made them all available. (How fast they then drain depends on the
	// machine; that they do is the contract's 15 s.)
	const backingOff = `SELECT count(*) FROM river_job WHERE kind = 'tether.sync_connection'
		AND state IN ('retryable', 'available') AND scheduled_at > now() + interval '1 second'`
	require.Eventually(t, func() bool { return count(t, tt.DB, backingOff) == 0 }, 5*time.Second, 20*time.Millisecond,
		"jobs still wait out their backoff after SpiceDB returned")
	rescheduledAfter := time.Since(returned)
	tt.WaitConverged(t, repairDeadline)
	t.Logf("%d jobs waiting out their backoff, the last due %s after SpiceDB returned; all available %s and all applied %s after it; %v rescheduled",
		waiting, ownBackoff.Sub(returned).Round(time.Millisecond), rescheduledAfter.Round(time.Millisecond),
		time.Since(returned).Round(time.Millisecond), testenv.Sum(metrics.Heal.Rescheduled))
	require.Positive(t, testenv.Sum(metrics.Heal.Rescheduled))
	require.True(t, tt.CanView(t, "outage-0", pool.ID))
}

// TestProcessStartReschedules: jobs that failed during an outage wait a
// minute, because the healer of the process that saw the outage makes them
// available the moment SpiceDB answers. Should that process be gone by
// then, the next one to start does it: the backlog is applied within the
// contract's 15 s, not when the minute is up.
func TestProcessStartReschedules(t *testing.T) {
	t.Parallel()
	proc := testenv.StartSpiceDBProcess(t, true) // Postgres datastore: the data survives the restart
	dbURL := testenv.DatabaseURL(t)
	spiceCfg := proc.Config()
	process := func() *testenv.Tether {
		return testenv.StartTether(t, testenv.TetherOpts{DatabaseURL: dbURL, Heal: true,
			Config:  func(c *config.Config) { c.RetryMaxBackoff = 10 * time.Second }, // production's
			SpiceDB: func(c *spicedb.Config) { *c = spiceCfg }})
	}
	a := process()
	a.Provider(t, providerID)
	pool := a.Pool(t, "gpu", providerID, false)
	a.WaitConverged(t, repairDeadline)
	require.Eventually(t, func() bool { return a.WatchState(t).Cursor != nil }, repairDeadline, 20*time.Millisecond,
		"the watcher records its progress (the next one resumes from it instead of restoring)")

	proc.Stop()
	const changes = 20
	for i := range changes {
		a.Connect(t, fmt.Sprintf("restart-%d", i), providerID)
	}
	const waitingForHealer = `SELECT count(*) FROM river_job WHERE kind = 'tether.sync_connection'
		AND state = 'retryable' AND scheduled_at > now() + interval '30 seconds'`
	require.Eventually(t, func() bool { return count(t, a.DB, waitingForHealer) == changes }, 30*time.Second, 20*time.Millisecond,
		"every job failed once and waits for the healer")
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, a.Engine.Stop(stopCtx))

	proc.Start()
	restarted := time.Now()
	b := process()
	b.WaitConverged(t, repairDeadline)
	t.Logf("applied %s after SpiceDB and a new process started", time.Since(restarted).Round(time.Millisecond))
	require.True(t, b.CanView(t, fmt.Sprintf("restart-%d", changes-1), pool.ID))
	require.Zero(t, testenv.Sum(b.Metrics.Heal.Restores), "B resumed A's watch: no restore rescheduled the jobs")
	require.Equal(t, float64(changes), testenv.Sum(b.Metrics.Heal.Rescheduled))
}

// TestWatcherLeaseChangesHands: two Tether processes, one watcher. When the
// one holding the watch lease stops, the other takes it over within a
// second or two and resumes from the revision the first one stored: a
// foreign write made while nobody watched is still undone, and no restore
// was needed to resume.
func TestWatcherLeaseChangesHands(t *testing.T) {
	t.Parallel()
	proc := testenv.StartSpiceDBProcess(t, false)
	dbURL := testenv.DatabaseURL(t)
	spiceCfg := proc.Config()
	heal := func(holder string) func(*jobs.ClientConfig) {
		return func(c *jobs.ClientConfig) {
			c.Heal.LeaseRetry, c.Heal.Holder = 500*time.Millisecond, holder
		}
	}
	process := func(holder string) *testenv.Tether {
		return testenv.StartTether(t, testenv.TetherOpts{DatabaseURL: dbURL, Heal: true, Client: heal(holder),
			SpiceDB: func(c *spicedb.Config) { *c = spiceCfg }})
	}
	a := process("process-a")
	ma := a.Metrics
	a.WaitWatchMode(t, jobs.WatchModeWatch, repairDeadline)
	require.Eventually(t, func() bool { return testenv.Sum(ma.Heal.Restores) >= 1 }, repairDeadline, 20*time.Millisecond,
		"the first watcher has no revision to resume from: it restores")
	b := process("process-b")
	mb := b.Metrics
	a.Provider(t, providerID)
	pool := a.Pool(t, "gpu", providerID, false)
	a.Connect(t, "alice", providerID)
	a.WaitConverged(t, repairDeadline)
	require.Eventually(t, func() bool { return a.WatchState(t).Cursor != nil }, repairDeadline, 20*time.Millisecond,
		"the watcher records its progress")
	require.Equal(t, "process-a", *a.WatchState(t).Holder)
	require.Zero(t, testenv.Sum(mb.Heal.Restores))

	a.StopHealing() // process A's watcher is gone, and its lease with its connection
	foreign := testenv.ForeignClient(t, spiceCfg)
	_, err := foreign.Write(context.Background(), []spicedb.Update{{Relationship: rel(spicedb.TypeResourcePool, pool.ID, spicedb.RelViewer, spicedb.TypeUser, "mallory")}})
	require.NoError(t, err)
	b.WaitConverged(t, repairDeadline)
	require.Equal(t, 1.0, testenv.Sum(mb.Heal.ForeignChanges), "B's watcher saw the write made before it took over")
	require.Eventually(t, func() bool { // by whichever process's worker ran the repair job
		return testenv.Sum(ma.Heal.ForeignRepaired)+testenv.Sum(mb.Heal.ForeignRepaired) == 1
	}, repairDeadline, 20*time.Millisecond)
	require.Zero(t, testenv.Sum(mb.Heal.Restores), "B resumed from A's revision: nothing to restore")
	require.Equal(t, "process-b", *b.WatchState(t).Holder)
	require.False(t, b.CanView(t, "mallory", pool.ID))
}

// TestReplayedMetadataIsForeign: anyone who can watch SpiceDB can read the
// metadata of Tether's writes. Copied onto an intruder's write it does not
// make the intruder Tether: the watcher accepts each signed nonce once, and
// the original came first, so the copy is foreign and undone.
func TestReplayedMetadataIsForeign(t *testing.T) {
	t.Parallel()
	b := setupHeal(t, testenv.StartSpiceDBProcess(t, false), nil)
	b.tt.WaitWatchMode(t, jobs.WatchModeWatch, repairDeadline)
	ctx, cancel := context.WithTimeout(context.Background(), repairDeadline)
	defer cancel()
	// The eavesdropper watches, Tether writes, the eavesdropper copies.
	stream, err := b.foreign.Watch(ctx, "")
	require.NoError(t, err)
	b.tt.Connect(t, "carol", providerID)
	var stolen *structpb.Struct
	for stolen == nil {
		m, err := stream.Recv()
		require.NoError(t, err)
		if len(m.Changes) > 0 && len(m.Metadata) == 1 {
			stolen = m.Metadata[0]
		}
	}
	key, err := b.tt.SpiceDB.WriteKey(ctx)
	require.NoError(t, err)
	_, signed := key.Verify(stolen)
	require.True(t, signed, "the copy is of genuine, signed metadata")
	_, err = b.foreign.Authzed().WriteRelationships(ctx, &v1.WriteRelationshipsRequest{
		Updates: []*v1.RelationshipUpdate{{Operation: v1.RelationshipUpdate_OPERATION_TOUCH, Relationship: &v1.Relationship{
			Resource: &v1.ObjectReference{ObjectType: spicedb.TypeResourcePool, ObjectId: fmt.Sprint(b.pools["gpu"].ID)},
			Relation: spicedb.RelViewer,
			Subject:  &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: spicedb.TypeUser, ObjectId: "mallory"}},
		}}},
		OptionalTransactionMetadata: stolen,
	})
	require.NoError(t, err)
	took := b.tt.WaitConverged(t, repairDeadline)
	t.Logf("the replay was undone %s after it landed", took.Round(time.Millisecond))
	require.Eventually(t, func() bool { return testenv.Sum(b.metrics.Heal.ForeignChanges) == 1 }, repairDeadline, 20*time.Millisecond)
	require.False(t, b.tt.CanView(t, "mallory", b.pools["gpu"].ID))
}
