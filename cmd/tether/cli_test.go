package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/devtools/devstack"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const testSecret = "cli-test-secret-cli-test-secret-0123456789"

// env is a CLI environment; tests build it before running and never change
// it while a command runs.
type env map[string]string

func (e env) getenv(name string) string { return e[name] }

func (e env) spiceDB() spicedb.Config {
	return spicedb.Config{Endpoint: e["TETHER_SPICEDB_ENDPOINT"], Token: e["TETHER_SPICEDB_TOKEN"], Insecure: true}
}

// newEnv is a complete, valid configuration on dbURL and an empty SpiceDB
// store of the test's own.
func newEnv(dbURL string) env {
	return env{
		"TETHER_DATABASE_URL":     dbURL,
		"TETHER_SPICEDB_ENDPOINT": testenv.SpiceDBEndpoint(),
		"TETHER_SPICEDB_TOKEN":    "t" + devstack.RandomSecret(),
		"TETHER_SPICEDB_INSECURE": "true",
		"TETHER_ENCRYPTION_KEYS":  testenv.TestKeyRing,
		"TETHER_AUTH_HMAC_SECRET": testSecret,
		"TETHER_HTTP_ADDR":        "127.0.0.1:0",
		"TETHER_LOG_LEVEL":        "warn",
	}
}

// runCLI runs the program to completion with a deadline.
func runCLI(t *testing.T, e env, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut testenv.Buffer
	code = run(ctx, args, e.getenv, &out, &errOut)
	return code, out.String(), errOut.String()
}

// emptyDatabase creates a database with nothing in it, dropped at the end.
func emptyDatabase(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "e_" + strings.ToLower(strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, devstack.RandomSecret()[:20]))
	admin, err := pgx.Connect(ctx, testenv.AdminURL())
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, testenv.AdminURL())
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	adminURL := testenv.AdminURL()
	i := strings.LastIndex(adminURL, "/postgres")
	return adminURL[:i] + "/" + name + adminURL[i+len("/postgres"):]
}

// closedPort returns a localhost port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// schemaSnapshot describes every column and index, and counts the applied
// migrations, so that two snapshots differ if anything was (re)applied.
func schemaSnapshot(t *testing.T, dbURL string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var snap string
	err = conn.QueryRow(ctx, `
		SELECT string_agg(x, E'\n' ORDER BY x) FROM (
			SELECT format('column %s.%s.%s %s %s default=%s', table_schema, table_name, column_name,
			              data_type, is_nullable, coalesce(column_default, '')) AS x
			FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
			UNION ALL
			SELECT format('index %s.%s %s', schemaname, indexname, indexdef)
			FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
			UNION ALL
			SELECT format('tether_migrations rows=%s', count(*)) FROM tether_migrations
			UNION ALL
			SELECT format('river_migration rows=%s', count(*)) FROM river_migration
		) s`).Scan(&snap)
	require.NoError(t, err)
	return snap
}

// statusLine returns the `migrate status` row of component.
func statusLine(t *testing.T, stdout, component string) string {
	t.Helper()
	for _, line := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(line, component+" ") {
			return line
		}
	}
	t.Fatalf("no %q row in migrate status output:\n%s", component, stdout)
	return ""
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DatabaseURL(t)
	for _, tc := range []struct {
		name     string
		args     []string
		change   env // "" deletes the variable
		variable string
		code     int
	}{
		{"missing database URL", []string{"migrate", "status"},
			env{"TETHER_DATABASE_URL": ""}, "TETHER_DATABASE_URL", 78},
		{"encryption key not base64", []string{"serve"},
			env{"TETHER_ENCRYPTION_KEYS": "k1:notbase64"}, "TETHER_ENCRYPTION_KEYS", 78},
		{"encryption key without id", []string{"serve"},
			env{"TETHER_ENCRYPTION_KEYS": "nocolon"}, "TETHER_ENCRYPTION_KEYS", 78},
		{"encryption keys missing", []string{"serve"},
			env{"TETHER_ENCRYPTION_KEYS": ""}, "TETHER_ENCRYPTION_KEYS", 78},
		{"unreachable SpiceDB", []string{"migrate", "status"},
			env{"TETHER_SPICEDB_ENDPOINT": fmt.Sprintf("127.0.0.1:%d", closedPort(t))}, "TETHER_SPICEDB_ENDPOINT", 78},
		{"unreachable Postgres", []string{"migrate", "status"},
			env{"TETHER_DATABASE_URL": fmt.Sprintf("postgres://postgres:hunter2hunter2@127.0.0.1:%d/tether?sslmode=disable", closedPort(t))},
			"TETHER_DATABASE_URL", 78},
		{"unreachable Postgres (serve)", []string{"serve"},
			env{"TETHER_DATABASE_URL": fmt.Sprintf("postgres://postgres@127.0.0.1:%d/tether?sslmode=disable", closedPort(t))},
			"TETHER_DATABASE_URL", 78},
		{"serve without any auth", []string{"serve"},
			env{"TETHER_AUTH_HMAC_SECRET": ""}, "TETHER_AUTH_HMAC_SECRET", 78},
		{"worker lease not shorter than the rescue horizon", []string{"serve", "--role", "worker"},
			env{"TETHER_WORKER_LEASE_TTL": "2m"}, "TETHER_WORKER_LEASE_TTL", 78},
		{"dev mode on every interface", []string{"serve"},
			env{"TETHER_DEV_MODE": "true", "TETHER_HTTP_ADDR": "0.0.0.0:0"}, "TETHER_DEV_MODE", 78},
		{"HMAC secret next to an issuer", []string{"serve"},
			env{"TETHER_AUTH_ISSUER": "https://idp.example", "TETHER_AUTH_AUDIENCE": "tether"}, "TETHER_AUTH_HMAC_SECRET", 78},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(dbURL)
			for k, v := range tc.change {
				if v == "" {
					delete(e, k)
				} else {
					e[k] = v
				}
			}
			start := time.Now()
			code, stdout, stderr := runCLI(t, e, tc.args...)
			elapsed := time.Since(start)
			require.Equal(t, tc.code, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stderr, tc.variable)
			require.NotContains(t, stderr, "hunter2hunter2", "the password leaked")
			require.Less(t, elapsed, 5*time.Second, "bad configuration must fail fast")
			t.Logf("%s failed in %s: %s", tc.name, elapsed.Round(time.Millisecond), strings.TrimSpace(stderr))
		})
	}
}

func TestMigrateUpTwiceIsANoOp(t *testing.T) {
	t.Parallel()
	e := newEnv(emptyDatabase(t))

	code, stdout, stderr := runCLI(t, e, "migrate", "up")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "applied tether 00001")
	require.Contains(t, stdout, "applied river ")
	require.Contains(t, stdout, "applied spicedb schema")
	before := schemaSnapshot(t, e["TETHER_DATABASE_URL"])

	code, stdout, stderr = runCLI(t, e, "migrate", "up")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, before, schemaSnapshot(t, e["TETHER_DATABASE_URL"]))
	require.Equal(t, "everything is up to date\n", stdout, "the second run applied something")
}

func TestMigrateUpConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(emptyDatabase(t))

	type result struct {
		code           int
		stdout, stderr string
	}
	results := make([]result, 2)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			r := &results[i]
			r.code, r.stdout, r.stderr = runCLI(t, e, "migrate", "up")
		})
	}
	wg.Wait()
	all := ""
	for _, r := range results {
		require.Equal(t, 0, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
		all += r.stdout
	}
	// The advisory lock lets exactly one of them apply each migration.
	require.Equal(t, 1, strings.Count(all, "applied tether 00001"), all)
	require.Equal(t, 1, strings.Count(all, "applied river 001"), all)

	code, stdout, stderr := runCLI(t, e, "migrate", "status")
	require.Equal(t, 0, code, stderr)
	for _, c := range []string{"postgres: tether", "postgres: river", "spicedb: schema"} {
		require.Contains(t, statusLine(t, stdout, c), "up to date")
	}
}

func TestMigrateStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(emptyDatabase(t))

	code, stdout, stderr := runCLI(t, e, "migrate", "status")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "COMPONENT")
	require.Contains(t, statusLine(t, stdout, "postgres: tether"), "pending: run tether migrate up")
	require.Contains(t, statusLine(t, stdout, "postgres: river"), "pending: run tether migrate up")
	require.Contains(t, statusLine(t, stdout, "spicedb: schema"), "missing: run tether migrate up")

	code, _, stderr = runCLI(t, e, "migrate", "up")
	require.Equal(t, 0, code, stderr)
	code, stdout, stderr = runCLI(t, e, "migrate", "status")
	require.Equal(t, 0, code, stderr)
	for _, c := range []string{"postgres: tether", "postgres: river", "spicedb: schema"} {
		line := statusLine(t, stdout, c)
		require.Contains(t, line, "up to date")
		require.NotContains(t, line, "pending")
	}
}

func TestServeRefusesABehindDatabase(t *testing.T) {
	t.Parallel()
	e := newEnv(emptyDatabase(t))
	code, stdout, stderr := runCLI(t, e, "serve")
	require.Equal(t, 1, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Contains(t, stderr, "behind")
	require.Contains(t, stderr, "`tether migrate up`")
}

func TestServe(t *testing.T) {
	t.Parallel()
	e := newEnv(testenv.DatabaseURL(t))
	e["TETHER_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	e["TETHER_LOG_LEVEL"] = "info"
	base := "http://" + e["TETHER_HTTP_ADDR"]
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testenv.Buffer
	exited := make(chan struct{})
	var exitCode int
	go func() {
		defer close(exited)
		exitCode = run(ctx, []string{"serve"}, e.getenv, &stdout, &stderr)
	}()
	t.Cleanup(func() { cancel(); testenv.Await(t, exited, 30*time.Second, "serve stops") }) // also when an assertion fails

	get := func(path, token string) (int, string, error) {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		require.NoError(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}

	// Wait until /healthz answers; serve must not exit meanwhile.
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("serve exited with %d before answering\nstdout: %s\nstderr: %s", exitCode, stdout.String(), stderr.String())
		default:
		}
		status, body, err := get("/healthz", "")
		if err == nil {
			require.Equal(t, http.StatusOK, status, body)
			break
		}
		require.True(t, time.Now().Before(deadline), "serve did not answer /healthz: %v\nstderr: %s", err, stderr.String())
		time.Sleep(20 * time.Millisecond)
	}

	// The store is empty: serve writes the schema itself (no migrate up, no
	// reconcile) and becomes ready within seconds.
	var status int
	var body string
	var err error
	require.Eventually(t, func() bool {
		status, body, err = get("/readyz", "")
		return err == nil && status == http.StatusOK
	}, 15*time.Second, 20*time.Millisecond, "not ready: %d %s %v", status, body, err)
	// Its watcher runs, and `tether status` says so.
	require.Eventually(t, func() bool {
		code, out, _ := runCLI(t, e, "status")
		return code == 0 && strings.Contains(out, "watch: foreign changes are undone within seconds")
	}, 15*time.Second, 100*time.Millisecond)

	// A token from `tether token` is accepted by the server.
	code, tok, errOut := runCLI(t, e, "token", "--sub", "alice")
	require.Equal(t, 0, code, errOut)
	status, body, err = get("/api/data/resource_pools", strings.TrimSpace(tok))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, body)
	status, _, err = get("/api/data/resource_pools", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, status)

	// Graceful shutdown when the context ends.
	cancel()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s of its context being cancelled")
	}
	require.Equal(t, 0, exitCode, "stderr: %s", stderr.String())
	require.Contains(t, stdout.String(), `"msg":"stopped"`)
	_, _, err = get("/healthz", "")
	require.Error(t, err, "serve still listens after it returned")
}

func TestToken(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runCLI(t, env{"TETHER_AUTH_HMAC_SECRET": testSecret}, "token", "--sub", "alice", "--admin")
	require.Equal(t, 0, code, stderr)
	parts := strings.Split(strings.TrimSpace(stdout), ".")
	require.Len(t, parts, 3, stdout)
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	require.NoError(t, err)
	var claims struct {
		Sub   string   `json:"sub"`
		Roles []string `json:"roles"`
		Exp   int64    `json:"exp"`
	}
	require.NoError(t, json.Unmarshal(payload, &claims), string(payload))
	require.Equal(t, "alice", claims.Sub)
	require.Contains(t, claims.Roles, "tether-admin")
	require.Greater(t, claims.Exp, time.Now().Unix())

	code, _, stderr = runCLI(t, env{}, "token", "--sub", "alice", "--admin")
	require.Equal(t, 78, code)
	require.Contains(t, stderr, "TETHER_AUTH_HMAC_SECRET")
}

func TestReconcile(t *testing.T) {
	t.Parallel()
	e := newEnv(testenv.DatabaseURL(t))
	spice := testenv.SpiceDB(t, e.spiceDB())

	dryRun := func(wantCode int) jobs.ReconcileReport {
		t.Helper()
		code, stdout, stderr := runCLI(t, e, "reconcile", "--dry-run", "--output", "json")
		require.Equal(t, wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
		var report jobs.ReconcileReport
		require.NoError(t, json.Unmarshal([]byte(stdout), &report), stdout)
		require.True(t, report.DryRun)
		require.Equal(t, "current", report.Schema)
		return report
	}

	report := dryRun(0)
	require.Zero(t, report.Missing)
	require.Zero(t, report.Extra)

	stray := spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: "1", Relation: spicedb.RelViewer,
		SubjectType: spicedb.TypeUser, SubjectID: "mallory"}
	_, err := spice.Write(context.Background(), []spicedb.Update{{Relationship: stray}})
	require.NoError(t, err)

	report = dryRun(2)
	require.Zero(t, report.Missing)
	require.EqualValues(t, 1, report.Extra)
	require.EqualValues(t, 1, report.Actual)

	// The operator's screen shows the drift the dry run found.
	code, stdout, stderr := runCLI(t, e, "status")
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	for _, want := range []string{"MIGRATIONS", "JOBS BY STATE", "FAILING JOBS", "WORKERS", "(no worker has run)", "SYNC",
		"LAST RECONCILE", "0 missing, 1 extra", "dry run", "oldest unapplied revocation", "SPICEDB REPAIR", "starting: no watcher has run yet"} {
		require.Contains(t, stdout, want)
	}

	code, stdout, stderr = runCLI(t, e, "reconcile")
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	for _, want := range []string{"relationships checked", "missing", "extra", "repaired", "duration"} {
		require.Contains(t, stdout, want)
	}

	report = dryRun(0)
	require.Zero(t, report.Extra)
	require.Zero(t, report.Actual)
	rels, err := spice.ReadResource(context.Background(), spicedb.TypeResourcePool, "1")
	require.NoError(t, err)
	require.Empty(t, rels)
}

// With SpiceDB stopped, `tether status` still shows everything Postgres
// knows, marks SpiceDB unreachable and exits with the degraded code, fast.
// With Postgres unreachable there is nothing to show: exit 69.
func TestStatusWithSpiceDBDown(t *testing.T) {
	t.Parallel()
	e := newEnv(testenv.DatabaseURL(t))
	spice := testenv.StartSpiceDBProcess(t, false)
	cfg := spice.Config()
	e["TETHER_SPICEDB_ENDPOINT"], e["TETHER_SPICEDB_TOKEN"] = cfg.Endpoint, cfg.Token
	testenv.SpiceDB(t, cfg) // the schema
	// A change waiting to be applied: part of what Postgres knows.
	conn, err := pgx.Connect(context.Background(), e["TETHER_DATABASE_URL"])
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), `INSERT INTO sync_state (kind, key_id, resource_pool_id, generation, pending_since)
		VALUES ('pool', '7', 7, nextval('sync_generation_seq'), now() - interval '1 minute')`)
	require.NoError(t, err)

	code, stdout, stderr := runCLI(t, e, "status")
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Regexp(t, `spicedb\s+ok\s+`+regexp.QuoteMeta(cfg.Endpoint), stdout)
	require.Regexp(t, `OVERALL\n\s+ok`, stdout)

	spice.Stop()
	start := time.Now()
	code, stdout, stderr = runCLI(t, e, "status")
	elapsed := time.Since(start)
	require.Equal(t, 3, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Less(t, elapsed, 5*time.Second, "SpiceDB down must not hold up the report")
	require.Regexp(t, `postgres\s+ok\s+`, stdout)
	require.Regexp(t, `spicedb\s+unreachable\s+`+regexp.QuoteMeta(cfg.Endpoint)+`: Unavailable`, stdout)
	for _, want := range []string{"MIGRATIONS", "postgres: tether", "up to date", "spicedb: schema", "unknown (SpiceDB unreachable)",
		"JOBS BY STATE", "FAILING JOBS", "LAST RECONCILE", "never run", "degraded: SpiceDB unreachable"} {
		require.Contains(t, stdout, want)
	}
	require.Regexp(t, `keys with unapplied changes\s+1\n`, stdout)
	require.Regexp(t, `oldest unapplied change\s+1m`, stdout)
	require.Contains(t, stderr, "degraded: SpiceDB unreachable (exit 3)")
	t.Logf("status with SpiceDB stopped, in %s:\n%s", elapsed.Round(time.Millisecond), stdout)

	e["TETHER_DATABASE_URL"] = fmt.Sprintf("postgres://postgres:hunter2hunter2@127.0.0.1:%d/tether?sslmode=disable", closedPort(t))
	code, stdout, stderr = runCLI(t, e, "status")
	require.Equal(t, 69, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Contains(t, stderr, "TETHER_DATABASE_URL: cannot reach Postgres")
	require.NotContains(t, stderr, "hunter2hunter2")
}
