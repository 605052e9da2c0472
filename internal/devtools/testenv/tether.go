package testenv

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel/trace"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/engine"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// T is the part of testing.TB the engine helpers need; *rapid.T has it too.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// Tether is a whole engine, built as `tether serve` builds it, on the
// test's own database and SpiceDB store, with its HTTP API served on URL.
type Tether struct {
	*engine.Engine
	SpiceConfig spicedb.Config
	// URL is the base URL of the engine's HTTP server (TETHER_PUBLIC_URL).
	URL  string
	opts TetherOpts
}

// TetherOpts tune a test engine.
type TetherOpts struct {
	// NoWorkers builds an API-only engine (jobs stay queued).
	NoWorkers bool
	// DatabaseURL is the database to use; default: a fresh clone of the
	// migrated template.
	DatabaseURL string
	// Config adjusts the configuration (dev mode, origins, timings).
	Config func(*config.Config)
	// Client overrides parts of the River configuration.
	Client func(*jobs.ClientConfig)
	// SpiceDB adds dial options, e.g. fault injection.
	SpiceDB func(*spicedb.Config)
	// Logger receives the engine's logs (River's included); default: none.
	Logger *slog.Logger
	// NoBatching writes each job's updates on their own instead of group
	// committing them as production does.
	NoBatching bool
	// StateTTL, if set, bounds OAuth2 authorizations (default app.StateTTL):
	// tests see them expire.
	StateTTL time.Duration
	// TracerProvider traces the engine (an SDK provider with an in-memory
	// exporter: see NewSpanRecorder).
	TracerProvider trace.TracerProvider
	// Heal runs production's self-healing (watcher, restores, reschedules
	// after outages); off by default so that tests of the reconciler and
	// of stalls run alone.
	Heal bool
}

// TestKeyRing is a fixed key ring for tests.
const TestKeyRing = "test1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// HMACSecret signs the test engines' HS256 tokens.
const HMACSecret = "test-secret-test-secret-test-secret-0123"

// AdminRole is the test engines' admin role.
const AdminRole = "tether-admin"

// StartTether starts an engine; it stops when the test ends.
func StartTether(tb testing.TB, opts TetherOpts) *Tether {
	tb.Helper()
	if opts.DatabaseURL == "" {
		opts.DatabaseURL = DatabaseURL(tb)
	}
	spiceCfg := SpiceDBConfig(tb)
	if opts.SpiceDB != nil {
		opts.SpiceDB(&spiceCfg)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	cfg := testConfig(tb, opts, spiceCfg, "http://"+listener.Addr().String())
	role := engine.RoleAll
	if opts.NoWorkers {
		role = engine.RoleAPI
	}
	tt := &Tether{SpiceConfig: spiceCfg, URL: cfg.PublicURL.String(), opts: opts}
	tt.Engine = startEngine(tb, cfg, opts, role, spiceCfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tt.SpiceDB.WriteSchema(ctx); err != nil {
		tb.Fatalf("testenv: error writing the SpiceDB schema: %v", err)
	}
	server := &http.Server{Handler: tt.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = server.Serve(listener) }()
	tb.Cleanup(func() { _ = server.Close() })
	return tt
}

// testConfig is the configuration of a test engine: production's defaults,
// the test's stores, short backoffs, no periodic reconcile.
func testConfig(tb testing.TB, opts TetherOpts, spiceCfg spicedb.Config, publicURL string) *config.Config {
	tb.Helper()
	keys, err := keyring.Parse(TestKeyRing)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.DatabaseURL = opts.DatabaseURL
	cfg.SpiceDBEndpoint, cfg.SpiceDBToken, cfg.SpiceDBInsecure = spiceCfg.Endpoint, spiceCfg.Token, spiceCfg.Insecure
	cfg.EncryptionKeys = keys
	cfg.AuthHMACSecret = []byte(HMACSecret)
	cfg.AuthAdminRole = AdminRole
	cfg.DevMode = true
	cfg.MaxWorkers = 8
	cfg.ReconcileInterval = 0
	cfg.RetryMaxBackoff = 200 * time.Millisecond
	// Jobs carry every change, as from an API process or a worker: tests of
	// the hand-off (and half the model test's engines) turn it on.
	cfg.HandOffGrace = 0
	if opts.NoBatching {
		cfg.WriteFlushers = 0
	}
	if cfg.PublicURL, err = url.Parse(publicURL); err != nil {
		tb.Fatal(err)
	}
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	return &cfg
}

// startEngine builds and starts an engine for role; it stops when the test
// ends, cancelling running jobs.
func startEngine(tb testing.TB, cfg *config.Config, opts TetherOpts, role engine.Role, spiceCfg spicedb.Config) *engine.Engine {
	tb.Helper()
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if testing.Verbose() {
			logger = slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
	}
	e, err := engine.New(context.Background(), cfg, engine.Options{
		Role: role, Logger: logger, CancelJobsOnStop: true, OAuthTimeout: 5 * time.Second, TracerProvider: opts.TracerProvider,
		Client: func(c *jobs.ClientConfig) {
			c.Heal.Enabled = opts.Heal
			if opts.Client != nil {
				opts.Client(c)
			}
		},
		SpiceDB: func(c *spicedb.Config) { c.DialOptions = spiceCfg.DialOptions },
	})
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	if opts.StateTTL > 0 && e.Service != nil {
		e.Service.OAuth.StateTTL = opts.StateTTL // before anything serves
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		_ = e.Stop(ctx)
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() {
		stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer stopCancel()
		_ = e.Stop(stopCtx)
	})
	return e
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(p))
	return len(p), nil
}

// WaitSynced waits until every change is applied and no sync job is left.
func (tt *Tether) WaitSynced(tb T, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var pending, jobsLeft int64
		err := tt.DB.QueryRow(context.Background(), `
			SELECT (SELECT count(*) FROM sync_state WHERE applied_generation < generation),
			       (SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state IN ('available','running','retryable','scheduled','pending'))`).
			Scan(&pending, &jobsLeft)
		if err != nil {
			tb.Fatalf("error reading sync state: %v", err)
		}
		if pending == 0 && jobsLeft == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not synced after %s: %d keys pending, %d jobs left", timeout, pending, jobsLeft)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CanView asks SpiceDB, fully consistent, whether user may view pool.
func (tt *Tether) CanView(tb T, userID string, poolID int64) bool {
	tb.Helper()
	resp, err := tt.SpiceDB.Authzed().CheckPermission(context.Background(), &v1.CheckPermissionRequest{
		Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}},
		Resource:    &v1.ObjectReference{ObjectType: spicedb.TypeResourcePool, ObjectId: strconv.FormatInt(poolID, 10)},
		Permission:  spicedb.PermissionView,
		Subject:     &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: spicedb.TypeUser, ObjectId: spicedb.SubjectID(userID)}},
	})
	if err != nil {
		tb.Fatalf("error checking permission: %v", err)
	}
	return resp.GetPermissionship() == v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION
}

// Relationships returns all of SpiceDB, as sorted strings.
func (tt *Tether) Relationships(tb T) []string {
	tb.Helper()
	var out []string
	err := tt.SpiceDB.Export(context.Background(), func(page []spicedb.Relationship) error {
		for _, r := range page {
			out = append(out, r.String())
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("error exporting SpiceDB: %v", err)
	}
	sort.Strings(out)
	return out
}

// DesiredRelationships returns what SpiceDB should hold per the database.
func (tt *Tether) DesiredRelationships(tb T) []string {
	tb.Helper()
	rows, err := tt.DB.Query(context.Background(),
		"SELECT resource_type, resource_id, relation, subject_type, subject_id FROM desired_relationships")
	if err != nil {
		tb.Fatalf("error reading desired relationships: %v", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var r spicedb.Relationship
		if err := rows.Scan(&r.ResourceType, &r.ResourceID, &r.Relation, &r.SubjectType, &r.SubjectID); err != nil {
			tb.Fatal(err)
		}
		out = append(out, r.String())
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// Provider creates a provider with defaults.
func (tt *Tether) Provider(tb T, id string) *app.Provider {
	tb.Helper()
	kind, name, clientID, secret, authURL, tokenURL := "generic_oauth2", "Provider "+id, "client-"+id, "secret-"+id, "https://idp.example/auth", "https://idp.example/token"
	p, err := tt.Service.ProviderCreate(context.Background(), &app.ProviderInput{
		ID: &id, Kind: &kind, DisplayName: &name, ClientID: &clientID, ClientSecret: &secret,
		AuthorizationURL: &authURL, TokenURL: &tokenURL,
	})
	if err != nil {
		tb.Fatalf("error creating provider: %v", err)
	}
	return p
}

// Pool creates a pool, linked to providerID unless it is empty.
func (tt *Tether) Pool(tb T, name, providerID string, public bool) *app.Pool {
	tb.Helper()
	in := &app.PoolInput{Name: &name, Public: &public}
	if providerID != "" {
		in.Remote = app.Optional[app.Remote]{Set: true, Value: &app.Remote{ProviderID: providerID}}
	}
	p, err := tt.Service.PoolCreate(context.Background(), in)
	if err != nil {
		tb.Fatalf("error creating pool: %v", err)
	}
	return p
}

// Connect marks userID connected to providerID, as the OAuth2 callback does.
func (tt *Tether) Connect(tb T, userID, providerID string) *app.Connection {
	tb.Helper()
	c, err := tt.Service.ConnectionSetStatus(context.Background(), userID, providerID, "connected")
	if err != nil {
		tb.Fatalf("error connecting: %v", err)
	}
	return c
}

// SyncState reads a key's sync state.
func (tt *Tether) SyncState(tb T, kind, keyID string) *dbsqlc.SyncState {
	tb.Helper()
	st, err := dbsqlc.New().SyncGet(context.Background(), tt.DB, &dbsqlc.SyncGetParams{Kind: kind, KeyID: keyID})
	if err != nil {
		tb.Fatalf("error reading sync state: %v", err)
	}
	return st
}

// AttachWorkers starts a worker engine on an engine's database and SpiceDB
// store (a second worker process in spirit), with the same SpiceDB dial
// options and tune applied to its River client.
func AttachWorkers(tb testing.TB, tt *Tether, tune func(*jobs.ClientConfig)) *river.Client[pgx.Tx] {
	tb.Helper()
	opts := tt.opts
	opts.Client = func(c *jobs.ClientConfig) {
		if tt.opts.Client != nil {
			tt.opts.Client(c)
		}
		if tune != nil {
			tune(c)
		}
	}
	return startEngine(tb, tt.Config, opts, engine.RoleWorker, tt.SpiceConfig).River
}

// RunWorker runs a worker engine outside any test (a helper process a test
// kills): production's wiring, batching on, with spiceCfg's dial options.
func RunWorker(ctx context.Context, databaseURL string, spiceCfg spicedb.Config, tune func(*config.Config)) (stop func(), err error) {
	cfg := config.Defaults()
	cfg.DatabaseURL = databaseURL
	cfg.SpiceDBEndpoint, cfg.SpiceDBToken, cfg.SpiceDBInsecure = spiceCfg.Endpoint, spiceCfg.Token, spiceCfg.Insecure
	if cfg.EncryptionKeys, err = keyring.Parse(TestKeyRing); err != nil {
		return nil, err
	}
	cfg.ReconcileInterval = 0
	cfg.RetryMaxBackoff = time.Second
	if tune != nil {
		tune(&cfg)
	}
	e, err := engine.New(ctx, &cfg, engine.Options{Role: engine.RoleWorker,
		SpiceDB: func(c *spicedb.Config) { c.DialOptions = spiceCfg.DialOptions }})
	if err != nil {
		return nil, err
	}
	if err := e.Start(ctx); err != nil {
		_ = e.Stop(ctx)
		return nil, err
	}
	return func() { _ = e.Stop(ctx) }, nil
}

// RequireInSync fails, naming the differences, unless SpiceDB holds exactly
// the relationships the database derives.
func (tt *Tether) RequireInSync(tb T) {
	tb.Helper()
	want, got := tt.DesiredRelationships(tb), tt.Relationships(tb)
	missing, extra := diffSorted(want, got), diffSorted(got, want)
	if len(missing) > 0 || len(extra) > 0 {
		tb.Fatalf("SpiceDB is out of step with Postgres: missing %v, extra %v", missing, extra)
	}
}

// diffSorted returns the elements of a not in b (both sorted).
func diffSorted(a, b []string) []string {
	var out []string
	j := 0
	for _, s := range a {
		for j < len(b) && b[j] < s {
			j++
		}
		if j >= len(b) || b[j] != s {
			out = append(out, s)
		}
	}
	return out
}

// Await waits for a value (or the close) of ch for at most d, failing the
// test with what otherwise: no bare receive can hang a test.
func Await[V any](tb T, ch <-chan V, d time.Duration, what string) V {
	tb.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		tb.Fatalf("%s: nothing after %s", what, d)
		var zero V
		return zero
	}
}
