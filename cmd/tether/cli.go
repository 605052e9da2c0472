package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/engine"
	"github.com/tetherhq/tether/jobs/spicedb"
)

const usage = `usage: tether <command> [flags]

commands:
  serve [--role api|worker|all]   HTTP API and River workers
  migrate up|down|status          Postgres (Tether, River) and SpiceDB schema
  reconcile [--dry-run] [--output text|json]
                                  compare SpiceDB with the database and repair it
  status                          services, migrations, queue, failing jobs, unapplied changes, last reconcile;
                                  exit 3 when degraded (SpiceDB unreachable, schema or migrations behind),
                                  69 when Postgres cannot be reached
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
	var cfgErr *config.Error
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

// deps are what most commands need: the configuration, the pool and SpiceDB,
// from an engine built for the CLI.
type deps struct {
	cfg    *config.Config
	pool   *pgxpool.Pool
	spice  *spicedb.Client
	engine *engine.Engine
}

func (d *deps) close() { _ = d.engine.Stop(context.Background()) }

// open loads the configuration and builds a CLI engine, checking that
// Postgres and SpiceDB answer (so that a wrong URL or endpoint fails at start
// naming its variable). With migrated, it also refuses a database whose
// migrations are behind.
func open(ctx context.Context, getenv func(string) string, scope config.Scope, migrated bool, tune ...func(*engine.Options)) (*deps, error) {
	cfg, err := config.Load(getenv, scope)
	if err != nil {
		return nil, err
	}
	opts := engine.Options{Role: engine.RoleCLI, CheckMigrations: migrated, CheckSpiceDB: true}
	for _, f := range tune {
		f(&opts)
	}
	e, err := engine.New(ctx, cfg, opts)
	if err != nil {
		return nil, err
	}
	return &deps{cfg: cfg, pool: e.DB, spice: e.SpiceDB, engine: e}, nil
}
