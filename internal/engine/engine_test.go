package engine_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/internal/engine"
	"github.com/tetherhq/tether/jobs"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestParseRole(t *testing.T) {
	t.Parallel()
	for _, r := range []string{"all", "api", "worker"} {
		role, err := engine.ParseRole(r)
		require.NoError(t, err)
		require.Equal(t, engine.Role(r), role)
	}
	for _, r := range []string{"", "cli", "ALL", "workers"} {
		_, err := engine.ParseRole(r)
		require.Error(t, err, "role %q", r)
	}
}

// testConfig is a minimal configuration on the test's own stores.
func testConfig(t *testing.T) *config.Config {
	t.Helper()
	spice := testenv.SpiceDBConfig(t)
	cfg := config.Defaults()
	cfg.DatabaseURL = testenv.DatabaseURL(t)
	cfg.SpiceDBEndpoint, cfg.SpiceDBToken, cfg.SpiceDBInsecure = spice.Endpoint, spice.Token, true
	cfg.AuthHMACSecret = []byte(testenv.HMACSecret)
	cfg.ReconcileInterval = 0
	return &cfg
}

func get(t *testing.T, h http.Handler, path string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	_, _ = io.Copy(io.Discard, rec.Body)
	return rec.Code
}

// Each role builds what it runs: a worker serves probes and metrics but no
// API; the CLI no HTTP at all; api and all the API.
func TestRolesBuildWhatTheyRun(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	ctx := context.Background()
	for role, api := range map[engine.Role]bool{engine.RoleAll: true, engine.RoleAPI: true, engine.RoleWorker: false} {
		e, err := engine.New(ctx, cfg, engine.Options{Role: role})
		require.NoError(t, err, role)
		require.Equal(t, http.StatusOK, get(t, e.Handler(), "/healthz"), role)
		require.Equal(t, http.StatusOK, get(t, e.Handler(), "/metrics"), role)
		want := http.StatusNotFound
		if api {
			want = http.StatusUnauthorized
		}
		require.Equal(t, want, get(t, e.Handler(), "/api/data/resource_pools"), role)
		require.NotNil(t, e.Service)
		require.NotNil(t, e.Reconciler)
		stopCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		require.NoError(t, e.Stop(stopCtx))
		require.NoError(t, e.Stop(stopCtx), "Stop twice is safe")
		cancel()
	}
	cli, err := engine.New(ctx, cfg, engine.Options{Role: engine.RoleCLI})
	require.NoError(t, err)
	require.Nil(t, cli.Handler(), "the CLI serves no HTTP")
	require.NoError(t, cli.Stop(ctx))
}

// A worker engine started and stopped drains in order within its deadline,
// and its listener is closed afterwards.
func TestStartListenStop(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.HTTPAddr = "127.0.0.1:0"
	ctx := context.Background()
	e, err := engine.New(ctx, cfg, engine.Options{Role: engine.RoleAll, Listen: true})
	require.NoError(t, err)
	require.NoError(t, e.Start(ctx))
	url := "http://" + e.Addr().String() + "/healthz"
	resp, err := http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, e.Stop(stopCtx))
	_, err = http.Get(url)
	require.Error(t, err, "the listener is closed after Stop")
}

// Wrong stores fail New naming the variable, and nothing is left open.
func TestNewNamesTheBadVariable(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.DatabaseURL = "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"
	_, err := engine.New(context.Background(), cfg, engine.Options{Role: engine.RoleCLI})
	var cfgErr *config.Error
	require.ErrorAs(t, err, &cfgErr)
	require.Equal(t, "TETHER_DATABASE_URL", cfgErr.Variable)

	cfg = testConfig(t)
	cfg.SpiceDBEndpoint = "127.0.0.1:1"
	_, err = engine.New(context.Background(), cfg, engine.Options{Role: engine.RoleCLI, CheckSpiceDB: true})
	require.ErrorAs(t, err, &cfgErr)
	require.Equal(t, "TETHER_SPICEDB_ENDPOINT", cfgErr.Variable)
}

// The parts refuse to be built incomplete, naming what is missing, instead
// of leaving a nil field for the first job or request to trip on.
func TestPartsRefuseMissingDependencies(t *testing.T) {
	t.Parallel()
	_, err := jobs.NewSyncer(jobs.SyncerDeps{})
	require.EqualError(t, err, "jobs.NewSyncer: missing DB, Keys, Logger, MaxBackoff, Metrics, OAuth, SpiceDB")
	_, _, _, err = jobs.NewClient(nil, nil, jobs.DefaultClientConfig())
	require.EqualError(t, err, "jobs.NewClient: missing pool or syncer")
	_, err = app.NewService(app.ServiceDeps{})
	require.EqualError(t, err, "app.NewService: missing DB")
}

// Tracing off (no provider, no OTLP endpoint) installs no tracer anywhere;
// a provider given traces requests but not the probes.
func TestTracingIsOffUnlessAsked(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	ctx := context.Background()
	off, err := engine.New(ctx, cfg, engine.Options{Role: engine.RoleAll})
	require.NoError(t, err)
	require.Nil(t, off.Tracer)
	require.Nil(t, off.DB.Config().ConnConfig.Tracer, "no Postgres tracer when tracing is off")
	require.NoError(t, off.Stop(ctx))

	rec := testenv.NewSpanRecorder(t)
	on, err := engine.New(ctx, cfg, engine.Options{Role: engine.RoleAll, TracerProvider: rec})
	require.NoError(t, err)
	require.NotNil(t, on.DB.Config().ConnConfig.Tracer)
	require.Equal(t, http.StatusOK, get(t, on.Handler(), "/healthz"))
	require.Equal(t, http.StatusUnauthorized, get(t, on.Handler(), "/api/data/resource_pools"))
	require.NoError(t, on.Stop(ctx))
	var names []string
	for _, s := range rec.Spans() {
		names = append(names, s.Name)
	}
	require.Equal(t, []string{"GET /api/data/resource_pools"}, names, "probes are not traced; the API is")
}
