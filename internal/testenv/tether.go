package testenv

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"sort"
	"strconv"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
	"github.com/tetherhq/tether/jobs"
)

// T is the part of testing.TB the engine helpers need; *rapid.T has it too.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// Tether is a whole sync engine on the test's own database and SpiceDB
// store: service, River client with workers, reconciler.
type Tether struct {
	DB          *pgxpool.Pool
	SpiceDB     *jobs.SpiceDB
	SpiceConfig jobs.SpiceDBConfig
	River       *river.Client[pgx.Tx]
	Enqueuer    *jobs.Enqueuer
	Syncer      *jobs.Syncer
	Service     *app.Service
	Keys        *keyring.Ring
	Reconciler  *jobs.Reconciler
}

// TetherOpts tune a test engine.
type TetherOpts struct {
	// NoWorkers builds an insert-only client (jobs stay queued).
	NoWorkers bool
	// Client overrides parts of the River configuration.
	Client func(*jobs.ClientConfig)
	// SpiceDB adds dial options, e.g. fault injection.
	SpiceDB func(*jobs.SpiceDBConfig)
	// Logger receives the engine's logs (River's included); default: none.
	Logger *slog.Logger
	// Metrics, if set, are recorded by the workers.
	Metrics *jobs.Metrics
	// NoBatching writes each job's updates on their own instead of group
	// committing them as production does.
	NoBatching bool
}

// TestKeyRing is a fixed key ring for tests.
const TestKeyRing = "test1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// StartTether starts an engine; it stops when the test ends.
func StartTether(tb testing.TB, opts TetherOpts) *Tether {
	tb.Helper()
	pool := Pool(tb)
	spiceCfg := SpiceDBConfig(tb)
	if opts.SpiceDB != nil {
		opts.SpiceDB(&spiceCfg)
	}
	spice := SpiceDB(tb, spiceCfg)
	keys, err := keyring.Parse(TestKeyRing)
	if err != nil {
		tb.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if opts.Logger != nil {
		logger = opts.Logger
	}
	oauth := oauthclient.New(5 * time.Second)
	syncer := &jobs.Syncer{DB: pool, SpiceDB: spice, Logger: logger, MaxBackoff: 200 * time.Millisecond, Keys: keys, OAuth: oauth,
		Metrics: opts.Metrics}
	if !opts.NoBatching {
		syncer.Batcher = jobs.NewBatcher(spice, pool, 4)
		tb.Cleanup(syncer.Batcher.Close)
	}
	client, enqueuer := startClient(tb, pool, syncer, func(cfg *jobs.ClientConfig) {
		cfg.Work = !opts.NoWorkers
		if opts.Client != nil {
			opts.Client(cfg)
		}
	})
	return &Tether{
		DB: pool, SpiceDB: spice, SpiceConfig: spiceCfg, River: client, Enqueuer: enqueuer, Syncer: syncer,
		Service: &app.Service{DB: pool, Enqueuer: enqueuer, Keys: keys, OAuth: &app.OAuthConfig{
			Client: oauth, PublicURL: &url.URL{Scheme: "http", Host: "127.0.0.1"},
		}},
		Keys:       keys,
		Reconciler: jobs.NewReconciler(syncer, enqueuer),
	}
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
	resp, err := tt.SpiceDB.Client().CheckPermission(context.Background(), &v1.CheckPermissionRequest{
		Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}},
		Resource:    &v1.ObjectReference{ObjectType: jobs.TypeResourcePool, ObjectId: strconv.FormatInt(poolID, 10)},
		Permission:  jobs.PermissionView,
		Subject:     &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: jobs.TypeUser, ObjectId: jobs.SubjectID(userID)}},
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
	err := tt.SpiceDB.Export(context.Background(), func(page []jobs.Relationship) error {
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
		var r jobs.Relationship
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

// AttachWorkers starts a River client with workers on an engine's database
// and SpiceDB (an engine started with NoWorkers, or a second worker process
// in spirit).
func AttachWorkers(tb testing.TB, tt *Tether, tune func(*jobs.ClientConfig)) *river.Client[pgx.Tx] {
	tb.Helper()
	client, _ := startClient(tb, tt.DB, tt.Syncer, tune)
	return client
}

// startClient builds a River client with the test defaults (8 workers, no
// periodic reconcile) and tune applied, starts it if it works jobs, and
// stops it when the test ends.
func startClient(tb testing.TB, pool *pgxpool.Pool, syncer *jobs.Syncer, tune func(*jobs.ClientConfig)) (*river.Client[pgx.Tx], *jobs.Enqueuer) {
	tb.Helper()
	cfg := jobs.DefaultClientConfig()
	cfg.MaxWorkers = 8
	cfg.ReconcileInterval = 0
	cfg.Logger = syncer.Logger
	if tune != nil {
		tune(&cfg)
	}
	client, enqueuer, err := jobs.NewClient(pool, syncer, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if cfg.Work {
		ctx, cancel := context.WithCancel(context.Background())
		if err := client.Start(ctx); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer stopCancel()
			_ = client.StopAndCancel(stopCtx)
			cancel()
		})
	}
	return client, enqueuer
}

// RunWorker runs a worker outside any test (a helper process a test kills).
func RunWorker(ctx context.Context, databaseURL string, spiceCfg jobs.SpiceDBConfig) (stop func(), err error) {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return nil, err
	}
	spice, err := jobs.NewSpiceDB(spiceCfg)
	if err != nil {
		return nil, err
	}
	syncer := &jobs.Syncer{DB: pool, SpiceDB: spice, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxBackoff: time.Second}
	cfg := jobs.DefaultClientConfig()
	cfg.ReconcileInterval = 0
	client, _, err := jobs.NewClient(pool, syncer, cfg)
	if err != nil {
		return nil, err
	}
	if err := client.Start(ctx); err != nil {
		return nil, err
	}
	return func() { _ = client.Stop(ctx); pool.Close() }, nil
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
