package e2e

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/oauthtest"
	"github.com/tetherhq/tether/internal/devtools/testenv"
)

// processEnv is what the tests' `tether serve` processes get: testenv's
// ServeEnv with this package's token secret and admin role, short retries,
// and no self-healing: these tests prove that the workers alone (and the
// periodic reconcile's leader) keep SpiceDB in step, so no watcher's restore
// (a reconcile) may run beside them. Self-healing is heal_test.go's.
func processEnv(tt *testenv.Tether) map[string]string {
	return with(tt.ServeEnv(), map[string]string{
		"TETHER_AUTH_HMAC_SECRET": testSecret, "TETHER_AUTH_ADMIN_ROLE": adminRole, "TETHER_RETRY_MAX_BACKOFF": "500ms",
		"TETHER_SELF_HEALING": "false",
	})
}

// with returns env with overrides applied (a copy).
func with(env map[string]string, overrides map[string]string) map[string]string {
	out := make(map[string]string, len(env)+len(overrides))
	for k, v := range env {
		out[k] = v
	}
	for k, v := range overrides {
		out[k] = v
	}
	return out
}

// freeAddr returns a loopback address nothing listens on (for a process
// whose public URL must be known before it starts).
func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("e2e: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// workerEnv tunes worker processes for a test: a job timeout and rescue
// horizon short enough that a SIGKILLed worker's jobs come back within
// seconds (production: 30 s and 2 min), a bounded drain on SIGTERM.
func workerEnv(base map[string]string) map[string]string {
	return with(base, map[string]string{
		"TETHER_MAX_WORKERS": "20", "TETHER_JOB_TIMEOUT": "5s", "TETHER_RESCUE_STUCK_JOBS_AFTER": "6s",
		"TETHER_SHUTDOWN_TIMEOUT": "10s",
	})
}

// stormSetup is one Postgres database and one SpiceDB store, a real OAuth2
// provider registered twice (providers dev and dev2, for relinks), four
// pools, and an API process (`tether serve --role api`) on a port fixed in
// advance (it is the provider's redirect URI).
type stormSetup struct {
	tt    *testenv.Tether
	env   map[string]string
	api   *testenv.ServeProcess
	op    *oauthtest.Provider
	pools []int64
}

func setupStorm(t *testing.T) *stormSetup {
	t.Helper()
	tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true}) // the stores, and helpers to read them
	addr := freeAddr(t)
	op := oauthtest.StartTB(t, "http://"+addr+app.CallbackPath)
	ctx := context.Background()
	kind, scope := "generic_oidc", "openid offline_access"
	for _, id := range []string{"dev", "dev2"} {
		name, clientID, secret := "Provider "+id, op.ClientID, op.ClientSecret
		_, err := tt.Service.ProviderCreate(ctx, &app.ProviderInput{ID: &id, Kind: &kind, DisplayName: &name,
			ClientID: &clientID, ClientSecret: &secret, Scope: &scope, IssuerURL: &op.Issuer})
		require.NoError(t, err)
	}
	s := &stormSetup{tt: tt, op: op, env: processEnv(tt)}
	for i, link := range []string{"dev", "dev2", "dev", ""} {
		s.pools = append(s.pools, tt.Pool(t, fmt.Sprintf("storm-%d", i), link, i == 3).ID)
	}
	s.api = testenv.StartServe(t, with(s.env, map[string]string{"TETHER_HTTP_ADDR": addr, "TETHER_PUBLIC_URL": "http://" + addr}),
		"--role", "api")
	return s
}

// One API process and three worker processes on one Postgres and one
// SpiceDB, under a mixed storm from concurrent clients: first with no
// worker at all (the API keeps accepting changes; a worker started later
// applies them all), then a worker SIGKILLed mid-run and replaced, another
// stopped with SIGTERM and replaced, then every worker restarted one by one
// (a rolling deploy) while traffic goes on. Once drained, SpiceDB holds
// exactly what Postgres implies although no reconcile ever ran, no sync job
// was discarded, and none was cancelled but those taken over from the killed
// worker (worker leases), each replaced by a job that ran.
func TestScaleOutUnderStorm(t *testing.T) {
	t.Parallel()
	s := setupStorm(t)
	tt := s.tt
	st := newStorm(t, s.api.URL(), s.op, s.pools, []string{"dev", "dev2"})
	st.start(t, 6)
	defer st.halt()

	// No worker anywhere: every change is accepted and queued, none applied.
	st.waitAcked(t, 40, 60*time.Second, "API alone")
	require.Zero(t, count(t, tt.DB, "SELECT count(*) FROM river_job WHERE state = 'completed'"), "no worker, no completed job")
	pending := count(t, tt.DB, "SELECT count(*) FROM sync_state WHERE applied_generation < generation")
	require.Positive(t, pending)
	require.Empty(t, tt.Relationships(t), "nothing reached SpiceDB without a worker")
	t.Logf("API alone: %d changes acknowledged, %d keys pending", st.acked.Load(), pending)

	env := workerEnv(s.env)
	workers := []*testenv.ServeProcess{}
	for range 3 {
		workers = append(workers, testenv.StartServe(t, env, "--role", "worker"))
	}
	replace := func() *testenv.ServeProcess { return testenv.StartServe(t, env, "--role", "worker") }

	st.waitAcked(t, 80, 60*time.Second, "three workers")
	// Kill it mid-run: while it holds a running job.
	held := 0
	require.Eventually(t, func() bool {
		held = count(t, tt.DB, "SELECT count(*) FROM river_job WHERE state = 'running' AND attempted_by[array_length(attempted_by, 1)] = $1",
			workers[0].ClientID)
		return held > 0
	}, 20*time.Second, 2*time.Millisecond, "worker-0 never held a running job")
	workers[0].Kill(t)
	t.Logf("worker-0 SIGKILLed holding %d running jobs", held)
	workers[0] = replace()

	st.waitAcked(t, 80, 60*time.Second, "after the kill")
	workers[1].Stop(t, 20*time.Second)
	workers[1] = replace()

	// A rolling deploy: a new worker comes up before each old one stops.
	for i := range workers {
		st.waitAcked(t, 30, 60*time.Second, "rolling restart")
		fresh := replace()
		workers[i].Stop(t, 20*time.Second)
		workers[i] = fresh
	}
	st.waitAcked(t, 40, 60*time.Second, "after the rolling restart")
	st.halt()
	require.Empty(t, st.failures(), "every request of the storm succeeded")

	took := drain(t, tt, 90*time.Second)
	t.Logf("%d operations; drained %s after the storm; %d jobs taken over from the killed worker, %d rescued", st.acked.Load(),
		took.Round(time.Millisecond), count(t, tt.DB, "SELECT count(*) FROM river_job WHERE metadata ? 'tether:replaced_by'"),
		count(t, tt.DB, "SELECT count(*) FROM river_job WHERE (metadata->>'river:rescue_count')::int >= 1"))
	tt.RequireInSync(t)
	require.NotEmpty(t, tt.Relationships(t))
	// drain's check is a dry run (it repairs nothing); no other ran.
	require.Zero(t, count(t, tt.DB, "SELECT count(*) FROM reconcile_runs WHERE NOT dry_run")+
		count(t, tt.DB, "SELECT count(*) FROM river_job WHERE kind = 'tether.reconcile'"),
		"no reconcile ran: the workers alone kept SpiceDB in step")
	require.Zero(t, count(t, tt.DB, `SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'discarded'`),
		"no sync job was discarded")
	require.Zero(t, count(t, tt.DB, `SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'cancelled'
		AND NOT metadata ? 'tether:replaced_by'`), "no sync job was cancelled, but those taken over from the killed worker")
	require.Zero(t, count(t, tt.DB, `SELECT count(*) FROM river_job c WHERE c.state = 'cancelled' AND c.metadata ? 'tether:replaced_by'
		AND NOT EXISTS (SELECT 1 FROM river_job r WHERE r.id = (c.metadata->>'tether:replaced_by')::bigint
		                AND (r.state = 'completed' OR r.metadata ? 'tether:replaced_by'))`),
		"every job taken over was replaced by one that completed (or was itself taken over)")
	require.Zero(t, count(t, tt.DB, "SELECT count(*) FROM sync_state WHERE stalled"))
}
