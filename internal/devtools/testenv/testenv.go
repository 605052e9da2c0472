// Package testenv gives tests real services: a Postgres database of their own,
// cloned from a migrated template (about 10 ms), and an empty SpiceDB store of
// their own. `make test` starts one Postgres and one SpiceDB for the whole
// run (cmd/devstack --test); a package tested alone starts its own. Nothing
// is ever skipped: without Postgres or SpiceDB the tests fail.
package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/tetherhq/tether/internal/devtools/devstack"
	"github.com/tetherhq/tether/jobs/spicedb"
	"github.com/tetherhq/tether/migrations"
)

var (
	adminURL        string
	spiceDBEndpoint string
	templateOnce    sync.Once
	templateName    string
	templateErr     error
)

// Main runs a package's tests: it finds or starts the services, runs the
// tests, stops what it started and fails on leaked goroutines.
func Main(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	adminURL = os.Getenv("TETHER_TEST_ADMIN_URL")
	spiceDBEndpoint = os.Getenv("TETHER_TEST_SPICEDB_ENDPOINT")
	if adminURL == "" || spiceDBEndpoint == "" {
		dir, err := os.MkdirTemp("", "tether-pkgtest-*")
		if err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		_ = os.Chmod(dir, 0o755)
		stack, err := devstack.Start(context.Background(), devstack.Options{Dir: dir, SpiceDBMemory: true, Fast: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, "testenv: cannot start Postgres and SpiceDB for the tests:", err)
			return 1
		}
		defer stack.Stop()
		adminURL, spiceDBEndpoint = stack.AdminURL, stack.SpiceDBEndpoint
	}
	// Goroutines alive before the tests (the stack's, the runtime's) are
	// not leaks; taken now, not after m.Run.
	before := goleak.IgnoreCurrent()
	code := m.Run()
	removeBinary()
	if code == 0 {
		if err := goleak.Find(before,
			// gRPC and pgx keep these briefly after Close.
			goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "testenv: goroutines leaked:", err)
			return 1
		}
	}
	return code
}

// template returns the migrated template database, creating it once per
// migration set. Concurrent test processes serialize on an advisory lock.
func template(ctx context.Context) (string, error) {
	templateOnce.Do(func() {
		h := sha256.New()
		_ = fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				b, _ := fs.ReadFile(migrations.FS, path)
				h.Write([]byte(path))
				h.Write(b)
			}
			return nil
		})
		templateName = "tether_tpl_" + hex.EncodeToString(h.Sum(nil))[:16]
		templateErr = createTemplate(ctx, templateName)
	})
	return templateName, templateErr
}

func createTemplate(ctx context.Context, name string) error {
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("error connecting to the test Postgres: %w", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(7373)"); err != nil {
		return err
	}
	defer admin.Exec(ctx, "SELECT pg_advisory_unlock(7373)") //nolint:errcheck
	var ready bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)", name).Scan(&ready); err != nil {
		return err
	}
	if ready {
		return nil
	}
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, databaseURL(name))
	if err != nil {
		return err
	}
	m, err := migrations.New(pool)
	if err != nil {
		pool.Close()
		return err
	}
	_, err = m.Up(ctx)
	m.Close()
	pool.Close()
	if err != nil {
		return fmt.Errorf("error migrating the template database: %w", err)
	}
	_, err = admin.Exec(ctx, "ALTER DATABASE "+ident+" WITH IS_TEMPLATE true")
	return err
}

func databaseURL(name string) string {
	i := strings.LastIndex(adminURL, "/postgres")
	return adminURL[:i] + "/" + name + adminURL[i+len("/postgres"):]
}

// DatabaseURL returns the URL of a fresh, migrated database of the test's own,
// dropped when the test ends.
func DatabaseURL(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tpl, err := template(ctx)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	name := "t_" + strings.ToLower(devstack.RandomSecret()[:20])
	name = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, name)
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{tpl}.Sanitize()); err != nil {
		tb.Fatalf("testenv: error cloning the template: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return databaseURL(name)
}

// Pool returns a pool on a fresh database of the test's own.
func Pool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	return poolOn(tb, DatabaseURL(tb))
}

// poolOn returns a pool on url, closed when the test ends.
func poolOn(tb testing.TB, url string) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	cfg.MaxConns = 30
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// SpiceDBConfig returns the configuration of an empty SpiceDB store of the
// test's own (serve-testing keeps one store per bearer token).
func SpiceDBConfig(tb testing.TB) spicedb.Config {
	tb.Helper()
	return spicedb.Config{Endpoint: spiceDBEndpoint, Token: "t" + devstack.RandomSecret(), Insecure: true}
}

// SpiceDB returns a client of a fresh store with Tether's schema written.
func SpiceDB(tb testing.TB, cfg spicedb.Config) *spicedb.Client {
	tb.Helper()
	s, err := spicedb.New(cfg)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WriteSchema(ctx); err != nil {
		tb.Fatalf("testenv: error writing the SpiceDB schema: %v", err)
	}
	return s
}

// SpiceDBEndpoint is the shared SpiceDB's address.
func SpiceDBEndpoint() string { return spiceDBEndpoint }

// AdminURL is the test cluster's superuser URL.
func AdminURL() string { return adminURL }
