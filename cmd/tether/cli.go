package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/migrations"
)

const usage = `usage: tether <command> [flags]

commands:
  serve [--role api|worker|all]   HTTP API and River workers
  migrate up|down|status          Postgres (Tether, River) and SpiceDB schema
  reconcile [--dry-run] [--output text|json]
                                  compare SpiceDB with the database and repair it
  status                          migrations, queue, failing jobs, unapplied changes, last reconcile
  keys rotate                     re-encrypt secrets at rest under the first key of TETHER_ENCRYPTION_KEYS
  token --sub ID [--admin] [--ttl 1h]
                                  print an HS256 JWT signed with TETHER_AUTH_HMAC_SECRET

Configuration comes from TETHER_* environment variables (see README.md).
`

// exitError carries a process exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

// run is the whole program, testable without a process.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], getenv, stdout, stderr)
	case "migrate":
		err = runMigrate(ctx, args[1:], getenv, stdout)
	case "reconcile":
		err = runReconcile(ctx, args[1:], getenv, stdout, stderr)
	case "status":
		err = runStatus(ctx, getenv, stdout)
	case "keys":
		err = runKeys(ctx, args[1:], getenv, stdout)
	case "token":
		err = runToken(args[1:], getenv, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "tether: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err == nil {
		return 0
	}
	var exitErr *exitError
	if errors.As(err, &exitErr) {
		if exitErr.err != nil && exitErr.err.Error() != "" {
			fmt.Fprintf(stderr, "tether: %v\n", exitErr.err)
		}
		return exitErr.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "tether %s: %v\n", args[0], err)
	var cfgErr *app.ConfigError
	if errors.As(err, &cfgErr) {
		return 78 // EX_CONFIG
	}
	return 1
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tether "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

func riverLogger(w io.Writer, level string) *slog.Logger {
	if level == "debug" {
		return newLogger(w, level)
	}
	return newLogger(w, "warn")
}

// deps are what most commands need: the configuration, the pool and SpiceDB.
type deps struct {
	cfg   *app.Config
	pool  *pgxpool.Pool
	spice *jobs.SpiceDB
}

func (d *deps) close() {
	d.spice.Close()
	d.pool.Close()
}

// open loads the configuration and connects. With migrated, it also refuses
// a database whose migrations are behind.
func open(ctx context.Context, getenv func(string) string, scope app.ConfigScope, migrated bool) (*deps, error) {
	cfg, err := app.LoadConfig(getenv, scope)
	if err != nil {
		return nil, err
	}
	pool, spice, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d := &deps{cfg: cfg, pool: pool, spice: spice}
	if migrated {
		if err := checkMigrations(ctx, pool); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

// connect opens the pool and the SpiceDB client, checking both answer, so
// that a wrong URL or endpoint fails at start naming its variable.
func connect(ctx context.Context, cfg *app.Config) (*pgxpool.Pool, *jobs.SpiceDB, error) {
	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, nil, &app.ConfigError{Variable: "TETHER_DATABASE_URL", Problem: "not a valid Postgres URL"}
	}
	if poolCfg.MaxConns < 20 {
		poolCfg.MaxConns = 20
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, nil, &app.ConfigError{Variable: "TETHER_DATABASE_URL", Problem: "not a valid Postgres URL"}
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, nil, &app.ConfigError{Variable: "TETHER_DATABASE_URL", Problem: "cannot reach Postgres: " + redactURLError(err, cfg.DatabaseURL)}
	}
	spice, err := jobs.NewSpiceDB(jobs.SpiceDBConfig{Endpoint: cfg.SpiceDBEndpoint, Token: cfg.SpiceDBToken, Insecure: cfg.SpiceDBInsecure})
	if err != nil {
		pool.Close()
		return nil, nil, &app.ConfigError{Variable: "TETHER_SPICEDB_ENDPOINT", Problem: err.Error()}
	}
	if _, err := spice.CheckSchema(pingCtx); err != nil {
		pool.Close()
		spice.Close()
		return nil, nil, &app.ConfigError{Variable: "TETHER_SPICEDB_ENDPOINT", Problem: "cannot reach SpiceDB at " + cfg.SpiceDBEndpoint + ": " + jobs.ScrubError(err)}
	}
	return pool, spice, nil
}

// redactURLError keeps a password in the URL out of messages.
func redactURLError(err error, rawURL string) string {
	msg := err.Error()
	if i := strings.Index(rawURL, "://"); i >= 0 {
		if at := strings.LastIndex(rawURL, "@"); at > i {
			if colon := strings.Index(rawURL[i+3:at], ":"); colon >= 0 {
				msg = strings.ReplaceAll(msg, rawURL[i+3+colon+1:at], "REDACTED")
			}
		}
	}
	return msg
}

// checkMigrations refuses to run on a database that is behind.
func checkMigrations(ctx context.Context, pool *pgxpool.Pool) error {
	m, err := migrations.New(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	status, err := m.Status(ctx)
	if err != nil {
		return err
	}
	for _, c := range status {
		if !c.UpToDate() {
			return fmt.Errorf("the database is behind (%s at version %d of %d): run `tether migrate up` first", c.Name, c.Current, c.Latest)
		}
	}
	return nil
}
